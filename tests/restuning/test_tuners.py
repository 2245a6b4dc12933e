import math

import pytest
import torch

from restuning.errors import ConfigError
from restuning.tuners import TUNER_TYPES, apply_activation, build_tuner, tuner_param_count

D = 16


@pytest.mark.parametrize("kind", ["adapter", "prefix", "prompt"])
def test_tuner_is_token_wise(kind):
    torch.manual_seed(0)
    tuner = build_tuner(kind, D, 5).double()
    x = torch.randn(2, 7, D, dtype=torch.float64)
    y = tuner(x)
    x2 = x.clone()
    x2[:, 3] += 1.0
    y2 = tuner(x2)
    changed = (y2 - y).abs().amax(dim=(0, 2))
    assert changed[3] > 1e-6
    assert torch.all(changed[[0, 1, 2, 4, 5, 6]] == 0)


@pytest.mark.parametrize("kind", ["adapter", "prefix", "prompt"])
def test_two_layer_form_matches_forward(kind):
    torch.manual_seed(1)
    tuner = build_tuner(kind, D, 4).double()
    x = torch.randn(3, 5, D, dtype=torch.float64)
    f = tuner.two_layer_form()
    alt = apply_activation(x @ f.down_weight + f.down_bias, f.activation) @ f.up_weight + f.up_bias
    assert (alt - tuner(x)).abs().max().item() < 1e-12


@pytest.mark.parametrize("kind", ["adapter", "prefix", "prompt", "none"])
def test_param_count_formula(kind):
    tuner = build_tuner(kind, 768, 10)
    assert sum(p.numel() for p in tuner.parameters()) == tuner_param_count(kind, 768, 10)


def test_adapter_matches_paper_count():
    # paper Table 3b: every adapter is 768 -> 10 -> 768 with biases
    assert tuner_param_count("adapter", 768, 10) == 16138


def test_none_is_identity_in_bypass():
    x = torch.randn(2, 3, D)
    assert torch.equal(build_tuner("none", D, 0).residual(x), x)


def test_prefix_attends_only_learned_tokens():
    tuner = build_tuner("prefix", D, 3).double()
    x = torch.randn(1, 4, D, dtype=torch.float64)
    weights = torch.softmax(x @ tuner.prefix_keys.t() / math.sqrt(D), dim=-1)
    assert torch.allclose(tuner(x), weights @ tuner.prefix_values)


def test_bad_tuner_type_and_dim_reported_together():
    with pytest.raises(ConfigError) as err:
        build_tuner("lora", D, 0)
    msg = str(err.value)
    assert "'lora'" in msg and all(repr(t) in msg for t in TUNER_TYPES)
    assert "dim must be a positive integer, got 0" in msg
