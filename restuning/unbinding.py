"""The unbinding algebra of paper §2.2 and appendix A, as plain functions.

Prefix and prompt tuning in their original form (prefix keys/values or prompt
tokens concatenated into the frozen attention) equal a weighted sum of the
original attention and an attention onto the learned tokens alone, with
data-dependent weights λ (Eq. 10, 12) and β (Eq. 13). These functions compute
both sides so the tests can show the two are the same number.

Shapes: x [B, N, D]; projections [D, D]; learned tokens [P, D]; H heads of size D / H.
"""
from __future__ import annotations

import torch
from torch import Tensor


def split_heads(t: Tensor, num_heads: int) -> Tensor:
    """[B, N, D] -> [B, H, N, D/H]."""
    b, n, d = t.shape
    return t.reshape(b, n, num_heads, d // num_heads).transpose(1, 2)


def merge_heads(t: Tensor) -> Tensor:
    """[B, H, N, Dh] -> [B, N, H*Dh]."""
    b, h, n, dh = t.shape
    return t.transpose(1, 2).reshape(b, n, h * dh)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Eq. 1 per head: softmax(Q K^T / sqrt(d)) V; q [.., Nq, d], k, v [.., Nk, d]."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return torch.softmax(scores, dim=-1) @ v


def _mass(q: Tensor, k: Tensor) -> Tensor:
    """Σ_i exp(q k_i^T / sqrt(d)) per query, [.., Nq, 1] (the softmax normaliser of one key set)."""
    scores = q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5
    return torch.exp(scores).sum(dim=-1, keepdim=True)


def mixing_weight(q: Tensor, k_own: Tensor, k_other: Tensor) -> Tensor:
    """Share of softmax mass that q puts on k_other: Eq. 10 / 12 (λ) and Eq. 13 (β)."""
    other = _mass(q, k_other)
    return other / (_mass(q, k_own) + other)


# -- prefix tuning -------------------------------------------------------------------------------


def prefix_attention_original(
    x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, k_pre: Tensor, v_pre: Tensor, num_heads: int
) -> Tensor:
    """Eq. 2: Attn(x W_q, [K_pre; x W_k], [V_pre; x W_v]) with the prefix concatenated."""
    b = x.shape[0]
    q = split_heads(x @ w_q, num_heads)
    k = split_heads(torch.cat([k_pre.expand(b, -1, -1), x @ w_k], dim=1), num_heads)
    v = split_heads(torch.cat([v_pre.expand(b, -1, -1), x @ w_v], dim=1), num_heads)
    return merge_heads(attention(q, k, v))


def prefix_attention_unbound(
    x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, k_pre: Tensor, v_pre: Tensor, num_heads: int
) -> Tensor:
    """Eq. 3: (1 − λ) Attn(Q, K, V) + λ Attn(Q, K_pre, V_pre), λ from Eq. 10."""
    b = x.shape[0]
    q = split_heads(x @ w_q, num_heads)
    k = split_heads(x @ w_k, num_heads)
    v = split_heads(x @ w_v, num_heads)
    kp = split_heads(k_pre.expand(b, -1, -1), num_heads)
    vp = split_heads(v_pre.expand(b, -1, -1), num_heads)
    lam = mixing_weight(q, k, kp)
    return merge_heads((1 - lam) * attention(q, k, v) + lam * attention(q, kp, vp))


# -- prompt tuning -------------------------------------------------------------------------------


def prompt_attention_original(
    x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, x_pro: Tensor, num_heads: int
) -> Tensor:
    """Eq. 4: Attn over [x; x_pro] for all N + P tokens; returns [B, N + P, D]."""
    xx = torch.cat([x, x_pro.expand(x.shape[0], -1, -1)], dim=1)
    q, k, v = (split_heads(xx @ w, num_heads) for w in (w_q, w_k, w_v))
    return merge_heads(attention(q, k, v))


def prompt_attention_unbound(
    x: Tensor, w_q: Tensor, w_k: Tensor, w_v: Tensor, x_pro: Tensor, num_heads: int
) -> Tensor:
    """Eq. 5 / 11: [(1 − λ) Attn(Q, K, V) + λ Attn(Q, K_pro, V_pro); D] with λ, β from Eq. 12–13.

    D = (1 − β) Attn(Q_pro, K_pro, V_pro) + β Attn(Q_pro, K, V) is the disposable
    part: the rows of the prompt tokens themselves.
    """
    xp = x_pro.expand(x.shape[0], -1, -1)
    q, k, v = (split_heads(x @ w, num_heads) for w in (w_q, w_k, w_v))
    q_pro, k_pro, v_pro = (split_heads(xp @ w, num_heads) for w in (w_q, w_k, w_v))
    lam = mixing_weight(q, k, k_pro)
    beta = mixing_weight(q_pro, k_pro, k)
    tokens = (1 - lam) * attention(q, k, v) + lam * attention(q, k_pro, v_pro)
    disposable = (1 - beta) * attention(q_pro, k_pro, v_pro) + beta * attention(q_pro, k, v)
    return merge_heads(torch.cat([tokens, disposable], dim=2))


# -- adapter tuning ------------------------------------------------------------------------------


def adapter_sequential(ffn, adapter, x: Tensor) -> Tensor:
    """Houlsby-style adapter inserted in series after the FFN, with its own skip connection."""
    return adapter.residual(ffn(x))


def adapter_parallel(ffn, adapter, x: Tensor) -> Tensor:
    """Eq. 6: FFN(x) + φ(FFN(x) W_down) W_up, the adapter as a Res-Tuner beside the FFN."""
    original = ffn(x)
    return original + adapter(original)
