import torch

from restuning.kernels.reference import routed_adapter


def test_routed_adapter_equals_per_row_adapters():
    g = torch.Generator().manual_seed(0)
    t, d, r, m = 3, 8, 4, 10
    x = torch.randn(m, d, generator=g, dtype=torch.float64)
    down_w, up_w = torch.randn(t, d, r, generator=g, dtype=torch.float64), torch.randn(t, r, d, generator=g, dtype=torch.float64)
    down_b, up_b = torch.randn(t, r, generator=g, dtype=torch.float64), torch.randn(t, d, generator=g, dtype=torch.float64)
    route = torch.tensor([0, 2, -1, 1, 0, 0, 2, -1, 1, 1])
    out = routed_adapter(x, route, down_w, down_b, up_w, up_b)
    for i in range(m):
        k = int(route[i])
        if k < 0:
            assert torch.equal(out[i], x[i])
        else:
            ref = x[i] + torch.nn.functional.gelu(x[i] @ down_w[k] + down_b[k]) @ up_w[k] + up_b[k]
            assert torch.allclose(out[i], ref, atol=1e-12)
