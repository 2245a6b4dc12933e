"""Per-style grouped routing equals running each sample through its own tuner, one at a time."""
from __future__ import annotations

import pytest
import torch

from restuning import kernels
from restuning.diffusion.bypass import UNetBypassConfig, build_unet_bypass
from restuning.diffusion.routing import RoutedBypass
from restuning.errors import ConfigError, InputError

TAPS = [64, 64, 64, 64, 64, 32]
SIZES = [2, 2, 4, 8, 16, 16]


def nonzero_tuner(config, seed):
    tuner = build_unet_bypass(config, seed=seed).double()
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in tuner.parameters():
            if not p.any():  # the zero-initialised weights: make them random so each tuner matters
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.05)
    return tuner.eval()


@pytest.mark.parametrize("backend, routing", [
    ("torch", [2, -1, 0, 3, 0, 1, -1, 3, 2]),  # arbitrary order, base (−1) rows mixed in, both banks
    ("auto", [2, -1, 0, 3, 0, 1, -1, 3, 2]),
    ("torch", [1, 0, 0, 2, 1]),  # every row styled, one bank: the gather/scatter-free path
    ("torch", [3, 3]),  # one style only
])
def test_routed_equals_per_sample_loop(backend, routing):
    # Three tuners of one structure and one of another (8 groups, hidden 1x): two banks.
    configs = [UNetBypassConfig.create(TAPS)] * 3 + [UNetBypassConfig.create(TAPS, groups=8, scale_factor=1)]
    tuners = [nonzero_tuner(c, seed) for seed, c in enumerate(configs)]
    gen = torch.Generator().manual_seed(0)
    taps = [torch.randn(len(routing), c, s, s, generator=gen, dtype=torch.float64) for c, s in zip(TAPS, SIZES)]
    routed = RoutedBypass(tuners).plan(routing, device="cpu", kernel_backend=backend)
    with torch.no_grad():
        out = routed(taps)
        for b, t in enumerate(routing):
            alone = [x[b:b + 1] for x in taps]
            expected = alone[-1] if t < 0 else tuners[t](alone)
            torch.testing.assert_close(out[b:b + 1], expected, rtol=0, atol=1e-10)
    for b in (b for b, t in enumerate(routing) if t < 0):
        assert torch.equal(out[b], taps[-1][b])  # base rows are the U-Net's own feature map, untouched


def test_routing_plan_checks_its_inputs():
    tuner = nonzero_tuner(UNetBypassConfig.create(TAPS), 0)
    routed = RoutedBypass([tuner])
    with pytest.raises(InputError, match=r"sample_tuner values must be in \[-1, 0\]"):
        routed.plan([0, 1])
    plan = routed.plan([0, -1])
    taps = [torch.randn(3, c, s, s, dtype=torch.float64) for c, s in zip(TAPS, SIZES)]
    with pytest.raises(InputError, match="for a batch of 2, got 3"):
        plan(taps)


def test_routed_adapter_dispatch_is_what_runs(monkeypatch):
    """The multi-style path goes through restuning.kernels.routed_adapter (where the Triton kernel plugs in)."""
    calls = []
    original = kernels.routed_adapter

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        backends.append(kwargs.get("backend"))
        return original(*args, **kwargs)

    backends = []

    monkeypatch.setattr(kernels, "routed_adapter", spy)
    tuner = nonzero_tuner(UNetBypassConfig.create(TAPS), 0)
    taps = [torch.randn(2, c, s, s, dtype=torch.float64) for c, s in zip(TAPS, SIZES)]
    RoutedBypass([tuner]).plan([0, 0])(taps)
    assert len(calls) == 2 * 5  # H and V at each of the 5 stages
    assert calls[-1] == (2 * 16 * 16 * 4, 8)  # last stage: B·H·W·groups rows of 32/4 channels
    assert backends == [None] * 10  # hidden sizes 32 and 16: the process-wide dispatch decides

    # SD-sized group adapters (rows of 320/4 = 80 channels, hidden 160) are wider than the routed
    # Triton kernel's register tile is built for: they take the PyTorch path unless Triton is forced.
    wide = [320, 320, 320]
    tuner = nonzero_tuner(UNetBypassConfig.create(wide), 0)
    taps = [torch.randn(2, c, 2, 2, dtype=torch.float64) for c in wide]
    backends.clear()
    RoutedBypass([tuner]).plan([0, 0])(taps)
    assert backends == ["torch"] * 4
    backends.clear()
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="Triton"):  # forced on CPU tensors: the kernels package's clear error
        RoutedBypass([tuner]).plan([0, 0], kernel_backend="triton")(taps)
    assert backends == ["triton"]
