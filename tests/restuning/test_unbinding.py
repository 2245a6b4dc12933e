"""Paper §2.2 / appendix A: the original and the unbinding forms are the same function."""
import pytest
import torch

from restuning import unbinding
from restuning.tuners import ResAdapter

B, N, D, P = 3, 9, 24, 5


def _weights(seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g, dtype=torch.float64)
    w_q, w_k, w_v = (torch.randn(D, D, generator=g, dtype=torch.float64) / D**0.5 for _ in range(3))
    return g, x, w_q, w_k, w_v


@pytest.mark.parametrize("num_heads", [1, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_prefix_tuning_equals_unbound_form(num_heads, seed):
    g, x, w_q, w_k, w_v = _weights(seed)
    k_pre = torch.randn(P, D, generator=g, dtype=torch.float64)
    v_pre = torch.randn(P, D, generator=g, dtype=torch.float64)
    original = unbinding.prefix_attention_original(x, w_q, w_k, w_v, k_pre, v_pre, num_heads)
    unbound = unbinding.prefix_attention_unbound(x, w_q, w_k, w_v, k_pre, v_pre, num_heads)
    assert original.shape == (B, N, D)
    assert (original - unbound).abs().max().item() <= 1e-9


def test_prefix_lambda_is_not_trivial():
    """λ genuinely mixes the two attentions (neither 0 nor 1), so the test above has teeth."""
    g, x, w_q, w_k, _ = _weights(2)
    k_pre = torch.randn(P, D, generator=g, dtype=torch.float64)
    q = unbinding.split_heads(x @ w_q, 4)
    lam = unbinding.mixing_weight(q, unbinding.split_heads(x @ w_k, 4), unbinding.split_heads(k_pre.expand(B, -1, -1), 4))
    assert 0.05 < lam.mean().item() < 0.95
    assert lam.std().item() > 1e-3  # data-dependent, different per query


def test_dropping_lambda_breaks_equivalence():
    """A plain sum of the two attentions (λ ignored) is not prefix tuning: the check can fail."""
    g, x, w_q, w_k, w_v = _weights(3)
    k_pre = torch.randn(P, D, generator=g, dtype=torch.float64)
    v_pre = torch.randn(P, D, generator=g, dtype=torch.float64)
    original = unbinding.prefix_attention_original(x, w_q, w_k, w_v, k_pre, v_pre, 2)
    q, k, v = (unbinding.split_heads(x @ w, 2) for w in (w_q, w_k, w_v))
    kp, vp = (unbinding.split_heads(t.expand(B, -1, -1), 2) for t in (k_pre, v_pre))
    wrong = unbinding.merge_heads(0.5 * unbinding.attention(q, k, v) + 0.5 * unbinding.attention(q, kp, vp))
    assert (original - wrong).abs().max().item() > 1e-3


@pytest.mark.parametrize("num_heads", [1, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_prompt_tuning_equals_unbound_form_with_disposable_part(num_heads, seed):
    g, x, w_q, w_k, w_v = _weights(seed)
    x_pro = torch.randn(P, D, generator=g, dtype=torch.float64)
    original = unbinding.prompt_attention_original(x, w_q, w_k, w_v, x_pro, num_heads)
    unbound = unbinding.prompt_attention_unbound(x, w_q, w_k, w_v, x_pro, num_heads)
    assert original.shape == unbound.shape == (B, N + P, D)
    # the token rows (Eq. 5) and the disposable rows D (Eq. 11, β from Eq. 13) both match
    assert (original[:, :N] - unbound[:, :N]).abs().max().item() <= 1e-9
    assert (original[:, N:] - unbound[:, N:]).abs().max().item() <= 1e-9


def test_adapter_sequential_equals_parallel():
    torch.manual_seed(0)
    ffn = torch.nn.Sequential(torch.nn.Linear(D, 4 * D), torch.nn.GELU(), torch.nn.Linear(4 * D, D)).double()
    adapter = ResAdapter(D, 10).double()
    x = torch.randn(B, N, D, dtype=torch.float64)
    seq = unbinding.adapter_sequential(ffn, adapter, x)
    par = unbinding.adapter_parallel(ffn, adapter, x)
    assert (seq - par).abs().max().item() <= 1e-9
    assert (seq - ffn(x)).abs().max().item() > 1e-3  # the adapter does something
