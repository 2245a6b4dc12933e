"""Triton kernels of the multi-task bypass fan-out (jit code only; launchers live in the op modules).

This file is loaded twice by `_runtime.kernel_module`: once compiled (`triton.jit`) and once
under Triton's interpreter, each copy with its own globals, so one process can run the
native kernels on CUDA and the interpreted ones on CPU tensors (tests) without the
`TRITON_INTERPRET` setting leaking from one to the other.

Conventions (shared by every kernel):
- the last dimension of every tensor argument is contiguous; other strides are passed;
- activations: ACT 0 = no tuner, 1 = GELU (exact erf), 2 = softmax over the valid slots;
- arithmetic in fp32: loads are cast to fp32 before any math; GEMM operands stay in the
  storage dtype (fp16/bf16 tensor cores, fp32 accumulation) unless DOT_F32, which upcasts
  them (fp32 inputs, and always under the interpreter: it multiplies bf16 bit patterns);
- hidden sizes r are padded to R = max(16, next power of 2) slots in registers and masked.

Each kernel names the reference function in `restuning/kernels/reference.py` it must match.
"""
import triton
import triton.language as tl

NO_ACT = 0
GELU = 1
SOFTMAX = 2


# Only Triton *builtins* below, plus these two reductions: Triton's standard-library functions
# (tl.sum, tl.max, tl.zeros, …) are themselves @jit functions, compiled or interpreted
# depending on TRITON_INTERPRET when `triton` was first imported, so calling them would tie
# both copies of this module to that one setting. tl.reduce with the standard combine
# functions is what tl.sum / tl.max do, and the interpreter maps these to numpy reductions.


@triton.jit
def _sum(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._sum_combine)


@triton.jit
def _max(x, axis: tl.constexpr):
    return tl.reduce(x, axis, tl.standard._elementwise_max)


@triton.jit
def _gelu(h):
    # exact GELU, as torch.nn.functional.gelu(approximate="none")
    return 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))


@triton.jit
def _activate(h, slot_ok, ACT: tl.constexpr):
    """h [BLOCK_M, R] fp32 pre-activation; slot_ok [R]: slot < r (register padding)."""
    if ACT == 1:
        out = _gelu(h)  # padded slots hold 0 and GELU(0) = 0
    else:
        h = tl.where(slot_ok[None, :], h, float("-inf"))
        row_max = _max(h, 1)
        e = tl.exp(h - row_max[:, None])
        out = e / _sum(e, 1)[:, None]
    return out


@triton.jit
def _mm(a, b, acc, DOT_F32: tl.constexpr, PREC: tl.constexpr):
    """acc += a @ b with fp32 accumulation."""
    if DOT_F32:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision=PREC)
    else:
        acc = tl.dot(a.to(b.dtype), b, acc, input_precision=PREC)
    return acc


@triton.jit
def _bypass_rows(
    x_ptr,  # x_l rows of this block's source, row stride `stride_m`
    b_ptr,  # b_{l-1} rows of head t
    out_ptr,  # b_l rows of head t (written when STORE)
    stride_m,  # row stride of x, b and out (elements)
    hw_ptr, stride_hw,  # h_down_w[s][:, t*r_h:(t+1)*r_h]   [D, r_h], row stride stride_hw
    hb_ptr,  # h_down_b[s][t*r_h:]                         [r_h]
    vw_ptr, stride_vw,  # v_down_w[s, t]                       [D, r_v]
    vb_ptr,  # v_down_b[s, t]                                  [r_v]
    uw_ptr, stride_uw,  # up_w[s, t]                           [r_h + r_v, D]
    ub_ptr,  # up_b[s, t]                                      [D]
    lam,  # fp32 scalar λ[s, t]
    pool_ptr, stride_pb,  # POOL: per-sample sums of b_l for head t, [B, D] fp32
    row0, rows, row_ok, M, D, r_h, r_v, n_tok,
    H_ACT: tl.constexpr, V_ACT: tl.constexpr, STORE: tl.constexpr, POOL: tl.constexpr,
    BLOCK_M: tl.constexpr, R_H: tl.constexpr, R_V: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
):
    """One bypass stage of one head on BLOCK_M rows (reference.bypass_stage, one head's slice):

    b_l = [act_h(x·A_h + a_h) | act_v(b·A_v + a_v)] · up_w + up_b + λ·x + (1 − λ)·b
    """
    rh = tl.arange(0, R_H)
    rv = tl.arange(0, R_V)
    # -- shrink: both down-projections share one pass over D -------------------------------
    acc_h = tl.full((BLOCK_M, R_H), 0.0, tl.float32)
    acc_v = tl.full((BLOCK_M, R_V), 0.0, tl.float32)
    if H_ACT != 0 or V_ACT != 0:
        for k0 in range(0, D, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < D
            a_mask = row_ok[:, None] & k_ok[None, :]
            if H_ACT != 0:
                xa = tl.load(x_ptr + rows[:, None] * stride_m + rk[None, :], mask=a_mask, other=0.0)
                wa = tl.load(hw_ptr + rk[:, None] * stride_hw + rh[None, :],
                             mask=k_ok[:, None] & (rh[None, :] < r_h), other=0.0)
                acc_h = _mm(xa, wa, acc_h, DOT_F32, PREC)
            if V_ACT != 0:
                ba = tl.load(b_ptr + rows[:, None] * stride_m + rk[None, :], mask=a_mask, other=0.0)
                wv = tl.load(vw_ptr + rk[:, None] * stride_vw + rv[None, :],
                             mask=k_ok[:, None] & (rv[None, :] < r_v), other=0.0)
                acc_v = _mm(ba, wv, acc_v, DOT_F32, PREC)
    if H_ACT != 0:
        hb = tl.load(hb_ptr + rh, mask=rh < r_h, other=0.0).to(tl.float32)
        # rounded to the storage dtype like the reference's hidden activations
        g_h = _activate(acc_h + hb[None, :], rh < r_h, H_ACT).to(uw_ptr.dtype.element_ty)
    if V_ACT != 0:
        vb = tl.load(vb_ptr + rv, mask=rv < r_v, other=0.0).to(tl.float32)
        g_v = _activate(acc_v + vb[None, :], rv < r_v, V_ACT).to(uw_ptr.dtype.element_ty)
    # -- expand + residuals + λ mix, BLOCK_N output columns at a time -----------------------
    if POOL:
        first = row0 // n_tok
        last = (tl.minimum(row0 + BLOCK_M, M) - 1) // n_tok
        sample = rows // n_tok
    for n0 in range(0, D, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        n_ok = rn < D
        acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
        if H_ACT != 0:
            u = tl.load(uw_ptr + rh[:, None] * stride_uw + rn[None, :],
                        mask=(rh[:, None] < r_h) & n_ok[None, :], other=0.0)
            acc = _mm(g_h, u, acc, DOT_F32, PREC)
        if V_ACT != 0:
            u = tl.load(uw_ptr + (r_h + rv)[:, None] * stride_uw + rn[None, :],
                        mask=(rv[:, None] < r_v) & n_ok[None, :], other=0.0)
            acc = _mm(g_v, u, acc, DOT_F32, PREC)
        mask = row_ok[:, None] & n_ok[None, :]
        ub = tl.load(ub_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + rows[:, None] * stride_m + rn[None, :], mask=mask, other=0.0).to(tl.float32)
        bv = tl.load(b_ptr + rows[:, None] * stride_m + rn[None, :], mask=mask, other=0.0).to(tl.float32)
        y = acc + ub[None, :] + lam * xv + (1.0 - lam) * bv
        if STORE:
            tl.store(out_ptr + rows[:, None] * stride_m + rn[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)
        if POOL:
            # mean pooling, first half: per-sample column sums of b_L (a block spans ≥ 1 samples)
            for j in range(first, last + 1):
                part = _sum(tl.where((sample == j)[:, None] & mask, y, 0.0), 0)
                tl.atomic_add(pool_ptr + j * stride_pb + rn, part, mask=n_ok)


@triton.jit(do_not_specialize=["M", "r_h", "r_v"])  # sizes: one compile per tile shape, not per size
def _bypass_stage_kernel(
    x_ptr,  # [M, D]       x_l, shared by every head
    b_ptr, stride_bt,  # [T_b, M, D]  b_{l-1}; stride_bt = 0 when T_b = 1 (b_0 = x_0 for all heads)
    out_ptr, stride_ot,  # [T, M, D]    b_l
    stride_m,  # row stride of x, b and out
    hw_ptr, stride_hw,  # [D, T*r_h]   h_down_w[s]
    hb_ptr,  # [T*r_h]      h_down_b[s]
    vw_ptr, stride_vw_t, stride_vw,  # [T, D, r_v]  v_down_w[s]
    vb_ptr, stride_vb_t,  # [T, r_v]     v_down_b[s]
    uw_ptr, stride_uw_t, stride_uw,  # [T, r_h + r_v, D] up_w[s]
    ub_ptr, stride_ub_t,  # [T, D]       up_b[s]
    lam_ptr,  # [T]          λ[s]
    M, D, r_h, r_v,
    H_ACT: tl.constexpr, V_ACT: tl.constexpr, BLOCK_M: tl.constexpr, R_H: tl.constexpr, R_V: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
):
    """One stage for all T heads; grid (T, cdiv(M, BLOCK_M)). Matches reference.bypass_stage.

    Program (t, m) computes head t's columns of the stacked horizontal GEMM x_l·[A_1 … A_T]
    straight from the shared x_l rows (no gather; neighbouring programs read the same rows),
    head t's vertical down-projection, both activations, the concatenated up-projection
    (λ folded in), the bias and both residuals, in one pass.
    """
    t = tl.program_id(0).to(tl.int64)
    row0 = tl.program_id(1) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    lam = tl.load(lam_ptr + t).to(tl.float32)
    _bypass_rows(
        x_ptr, b_ptr + t * stride_bt, out_ptr + t * stride_ot, stride_m,
        hw_ptr + t * r_h, stride_hw, hb_ptr + t * r_h,
        vw_ptr + t * stride_vw_t, stride_vw, vb_ptr + t * stride_vb_t,
        uw_ptr + t * stride_uw_t, stride_uw, ub_ptr + t * stride_ub_t, lam,
        out_ptr, 0,
        row0, rows, row_ok, M, D, r_h, r_v, 1,
        H_ACT, V_ACT, True, False, BLOCK_M, R_H, R_V, BLOCK_K, BLOCK_N, DOT_F32, PREC,
    )


@triton.jit
def _layer_norm_rows(v, d_ok, D, w_ptr, b_ptr, eps, rd):
    """torch LayerNorm of every row of v [BLOCK_R, BLOCK_D] fp32 (biased variance), affine w, b [D]."""
    mean = _sum(tl.where(d_ok[None, :], v, 0.0), 1) / D
    xc = tl.where(d_ok[None, :], v - mean[:, None], 0.0)
    var = _sum(xc * xc, 1) / D
    w = tl.load(w_ptr + rd, mask=d_ok, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + rd, mask=d_ok, other=0.0).to(tl.float32)
    return xc * tl.rsqrt(var + eps)[:, None] * w[None, :] + b[None, :]


@triton.jit
def _head_rows(
    p, rr, r_ok, rd, d_ok,  # p [BLOCK_R, BLOCK_D] fp32 pooled (normalised) features of BLOCK_R samples
    scr_ptr,  # [BLOCK_R, D] fp32 scratch rows of this program (row stride D): p is read back in chunks
    hw_ptr, stride_hw_d,  # head_w[t]  [D, C]
    hb_ptr,  # head_b[t]  [C]
    out_ptr, stride_out,  # logits[:, t]  rows of stride stride_out, [C] each
    D, C, BLOCK_R: tl.constexpr, HEAD_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """logits = p · head_w[t] + head_b[t] for BLOCK_R samples (reference.heads_logits for one head).

    p is whole rows in registers; the GEMV reads them back in HEAD_K chunks so its tiles stay
    [BLOCK_R, HEAD_K, BLOCK_C] whatever D is.
    """
    tl.store(scr_ptr + rr[:, None] * D + rd[None, :], p, mask=r_ok[:, None] & d_ok[None, :])
    tl.debug_barrier()
    for c0 in range(0, C, BLOCK_C):
        rc = c0 + tl.arange(0, BLOCK_C)
        c_ok = rc < C
        acc = tl.full((BLOCK_R, BLOCK_C), 0.0, tl.float32)
        for k0 in range(0, D, HEAD_K):
            rk = k0 + tl.arange(0, HEAD_K)
            k_ok = rk < D
            pk = tl.load(scr_ptr + rr[:, None] * D + rk[None, :], mask=r_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(hw_ptr + rk[:, None] * stride_hw_d + rc[None, :], mask=k_ok[:, None] & c_ok[None, :],
                        other=0.0).to(tl.float32)
            acc += _sum(pk[:, :, None] * w[None, :, :], 1)
        logit = acc + tl.load(hb_ptr + rc, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rr[:, None] * stride_out + rc[None, :], logit.to(out_ptr.dtype.element_ty),
                 mask=r_ok[:, None] & c_ok[None, :])
    tl.debug_barrier()  # the scratch rows are read before they are reused


@triton.jit(do_not_specialize=["M", "S", "r_h", "r_v", "n_tok", "C"])  # sizes: one compile per tile shape, not per size
def _bypass_stack_kernel(
    xs_ptr, stride_xs,  # [S+1, M, D]  x_0, then x_{layers[s]} for every stage s
    st_ptr, stride_sb, stride_st,  # [2, T, M, D] ping-pong state b_s (storage dtype); b_L ends in slot (S−1) % 2
    stride_m,  # row stride of xs and state (= D)
    hw_ptr, stride_hw_s, stride_hw,  # [S, D, T*r_h]
    hb_ptr, stride_hb_s,  # [S, T*r_h]
    vw_ptr, stride_vw_s, stride_vw_t, stride_vw,  # [S, T, D, r_v]
    vb_ptr, stride_vb_s, stride_vb_t,  # [S, T, r_v]
    uw_ptr, stride_uw_s, stride_uw_t, stride_uw,  # [S, T, r_h + r_v, D]
    ub_ptr, stride_ub_s, stride_ub_t,  # [S, T, D]
    lam_ptr, stride_lam_s,  # [S, T]
    pool_ptr, stride_pt, stride_pb,  # EPI 2: [T, B, D] fp32 zero-initialised per-sample sums of b_L
    logit_ptr, stride_lb, stride_lt,  # EPI 1: [B, T, C] logits
    n1w_ptr, n1b_ptr, eps1,  # EPI 1: final norm (LayerNorm weight, bias [D]) when NORM1
    n2w_ptr, n2b_ptr, eps2,  # EPI 1: post-pool norm when NORM2
    headw_ptr, stride_headw_t, stride_headw_d,  # EPI 1: [T, D, C]
    headb_ptr, stride_headb_t,  # EPI 1: [T, C]
    scr_ptr, stride_scr_t,  # EPI 1: [T, M, D] fp32 scratch rows for the head GEMV
    M, D, S, r_h, r_v, n_tok, C,
    H_ACT: tl.constexpr, V_ACT: tl.constexpr,
    EPI: tl.constexpr,  # 0: b_L stays in the state; 1: + norms and heads (class token); 2: + pooled sums
    NORM1: tl.constexpr, NORM2: tl.constexpr,
    BLOCK_M: tl.constexpr, R_H: tl.constexpr, R_V: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_K: tl.constexpr, BLOCK_C: tl.constexpr,
    DOT_F32: tl.constexpr, PREC: tl.constexpr,
):
    """The whole layer stack of T heads in one launch; grid (T, cdiv(M, BLOCK_M)).

    Matches reference.bypass_group (EPI 0), reference.norm_pool_logits ∘ bypass_group with
    one token per sample (EPI 1: class-token heads, the logits come out of this launch), or
    the per-sample sums that reference.norm_pool_logits averages (EPI 2, mean pooling with an
    identity final norm). Program (t, m) owns rows m of head t through every stage; its
    state ping-pongs between two buffers, so a stage never overwrites rows it still reads.
    """
    t = tl.program_id(0).to(tl.int64)
    row0 = tl.program_id(1) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    state_t = st_ptr + t * stride_st
    for s in range(0, S - 1):
        # stage s reads b_{s} (x_0 for s = 0, shared by every head) and writes slot s % 2
        s64 = tl.cast(s, tl.int64)  # slot and stage offsets can pass 2^31 elements
        src = tl.where(s == 0, xs_ptr, state_t + ((s64 + 1) % 2) * stride_sb)
        lam = tl.load(lam_ptr + s * stride_lam_s + t).to(tl.float32)
        _bypass_rows(
            xs_ptr + (s64 + 1) * stride_xs, src, state_t + (s64 % 2) * stride_sb, stride_m,
            hw_ptr + s * stride_hw_s + t * r_h, stride_hw, hb_ptr + s * stride_hb_s + t * r_h,
            vw_ptr + s * stride_vw_s + t * stride_vw_t, stride_vw, vb_ptr + s * stride_vb_s + t * stride_vb_t,
            uw_ptr + s * stride_uw_s + t * stride_uw_t, stride_uw, ub_ptr + s * stride_ub_s + t * stride_ub_t, lam,
            pool_ptr, 0,
            row0, rows, row_ok, M, D, r_h, r_v, n_tok,
            H_ACT, V_ACT, True, False, BLOCK_M, R_H, R_V, BLOCK_K, BLOCK_N, DOT_F32, PREC,
        )
        tl.debug_barrier()  # this stage's rows are written before the next one reads them
    sl = tl.cast(S - 1, tl.int64)  # the last stage, with the epilogue
    src_l = tl.where(sl == 0, xs_ptr, state_t + ((sl + 1) % 2) * stride_sb)
    dst = state_t + (sl % 2) * stride_sb
    lam_l = tl.load(lam_ptr + sl * stride_lam_s + t).to(tl.float32)
    _bypass_rows(
        xs_ptr + (sl + 1) * stride_xs, src_l, dst, stride_m,
        hw_ptr + sl * stride_hw_s + t * r_h, stride_hw, hb_ptr + sl * stride_hb_s + t * r_h,
        vw_ptr + sl * stride_vw_s + t * stride_vw_t, stride_vw, vb_ptr + sl * stride_vb_s + t * stride_vb_t,
        uw_ptr + sl * stride_uw_s + t * stride_uw_t, stride_uw, ub_ptr + sl * stride_ub_s + t * stride_ub_t, lam_l,
        pool_ptr + t * stride_pt, stride_pb,
        row0, rows, row_ok, M, D, r_h, r_v, n_tok,
        H_ACT, V_ACT, EPI != 2, EPI == 2, BLOCK_M, R_H, R_V, BLOCK_K, BLOCK_N, DOT_F32, PREC,
    )
    if EPI == 1:
        # class token (one row per sample): final norm, post-pool norm and the task head, BLOCK_R rows at a time
        tl.debug_barrier()
        rd = tl.arange(0, BLOCK_D)
        d_ok = rd < D
        for r0 in range(0, BLOCK_M, BLOCK_R):
            rr = r0 + tl.arange(0, BLOCK_R)  # rows of this block
            r_ok = (row0 + rr) < M
            p = tl.load(dst + (row0 + rr)[:, None] * stride_m + rd[None, :], mask=r_ok[:, None] & d_ok[None, :],
                        other=0.0).to(tl.float32)
            if NORM1:
                p = _layer_norm_rows(p, d_ok, D, n1w_ptr, n1b_ptr, eps1, rd)
            if NORM2:
                p = _layer_norm_rows(p, d_ok, D, n2w_ptr, n2b_ptr, eps2, rd)
            _head_rows(p, rr, r_ok, rd, d_ok, scr_ptr + t * stride_scr_t + row0 * D, headw_ptr + t * stride_headw_t,
                       stride_headw_d, headb_ptr + t * stride_headb_t, logit_ptr + row0 * stride_lb + t * stride_lt,
                       stride_lb, D, C, BLOCK_R, HEAD_K, BLOCK_C)


@triton.jit(do_not_specialize=["B", "N", "C"])  # sizes: one compile per tile shape, not per size
def _norm_pool_head_kernel(
    b_ptr, stride_bt, stride_bb, stride_bn,  # [T, B, N, D]  b_L (or per-sample sums with N = 1)
    out_ptr, stride_ob, stride_ot,  # [B, T, C]     logits
    n1w_ptr, n1b_ptr, eps1,  # final norm, per token, when NORM1
    n2w_ptr, n2b_ptr, eps2,  # post-pool norm when NORM2
    headw_ptr, stride_headw_t, stride_headw_d,  # [T, D, C]
    headb_ptr, stride_headb_t,  # [T, C]
    scr_ptr, stride_scr_t,  # [T, B, D] fp32 scratch rows for the head GEMV
    B, N, D, C, scale,  # pooled = scale · Σ_n norm1(b[t, b, n])
    NORM1: tl.constexpr, NORM2: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    HEAD_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Final norm + pooling + post-pool norm + task head; grid (T, cdiv(B, BLOCK_R)).

    Matches reference.norm_pool_logits. Program (t, j) handles samples j·BLOCK_R … of head t.
    """
    t = tl.program_id(0).to(tl.int64)
    row0 = tl.program_id(1) * BLOCK_R
    rr = tl.arange(0, BLOCK_R)
    r_ok = (row0 + rr) < B
    rd = tl.arange(0, BLOCK_D)
    d_ok = rd < D
    mask = r_ok[:, None] & d_ok[None, :]
    base = b_ptr + t * stride_bt + (row0 + rr)[:, None].to(tl.int64) * stride_bb + rd[None, :]
    p = tl.full((BLOCK_R, BLOCK_D), 0.0, tl.float32)
    for n in range(0, N):
        v = tl.load(base + n * stride_bn, mask=mask, other=0.0).to(tl.float32)
        if NORM1:
            v = _layer_norm_rows(v, d_ok, D, n1w_ptr, n1b_ptr, eps1, rd)
        p += v
    p = p * scale
    if NORM2:
        p = _layer_norm_rows(p, d_ok, D, n2w_ptr, n2b_ptr, eps2, rd)
    _head_rows(p, rr, r_ok, rd, d_ok, scr_ptr + t * stride_scr_t + row0 * D, headw_ptr + t * stride_headw_t,
               stride_headw_d, headb_ptr + t * stride_headb_t, out_ptr + row0 * stride_ob + t * stride_ot, stride_ob,
               D, C, BLOCK_R, HEAD_K, BLOCK_C)


@triton.jit(do_not_specialize=["r"])  # sizes: one compile per tile shape, not per size
def _routed_adapter_kernel(
    x_ptr, stride_xm,  # [M, D]  rows of several samples
    out_ptr, stride_om,  # [M, D]
    perm_ptr,  # [M]     row indices sorted by tuner (passthrough rows first)
    seg_start_ptr, seg_count_ptr,  # [T + 1] segment 0: passthrough rows, segment 1 + t: rows of tuner t
    dw_ptr, stride_dw_t, stride_dw,  # [T, D, r]
    db_ptr, stride_db_t,  # [T, r]
    uw_ptr, stride_uw_t, stride_uw,  # [T, r, D]
    ub_ptr, stride_ub_t,  # [T, D]
    D, r,
    ACT: tl.constexpr, BLOCK_M: tl.constexpr, R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_F32: tl.constexpr, PREC: tl.constexpr,
):
    """Per-row tuner routing, SGMV style; grid (T + 1, cdiv(M, BLOCK_M)). Matches reference.routed_adapter.

    Rows are grouped by tuner (a sort on the host side of the launch, no sync), so every
    program multiplies a block of rows of ONE tuner: shrink, activation, expand and the
    residual in one pass. Programs past the end of their segment exit at once.
    """
    seg = tl.program_id(0)
    pid_m = tl.program_id(1)
    count = tl.load(seg_count_ptr + seg)
    if pid_m * BLOCK_M >= count:
        return
    start = tl.load(seg_start_ptr + seg)
    idx = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = idx < count
    rows = tl.load(perm_ptr + start + idx, mask=row_ok, other=0)
    if seg == 0:
        for n0 in range(0, D, BLOCK_N):  # passthrough rows: out = x
            rn = n0 + tl.arange(0, BLOCK_N)
            mask = row_ok[:, None] & (rn[None, :] < D)
            v = tl.load(x_ptr + rows[:, None] * stride_xm + rn[None, :], mask=mask, other=0.0)
            tl.store(out_ptr + rows[:, None] * stride_om + rn[None, :], v, mask=mask)
    else:
        t = (seg - 1).to(tl.int64)
        rr = tl.arange(0, R)
        acc_h = tl.full((BLOCK_M, R), 0.0, tl.float32)
        for k0 in range(0, D, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < D
            xa = tl.load(x_ptr + rows[:, None] * stride_xm + rk[None, :], mask=row_ok[:, None] & k_ok[None, :],
                         other=0.0)
            wa = tl.load(dw_ptr + t * stride_dw_t + rk[:, None] * stride_dw + rr[None, :],
                         mask=k_ok[:, None] & (rr[None, :] < r), other=0.0)
            acc_h = _mm(xa, wa, acc_h, DOT_F32, PREC)
        bias = tl.load(db_ptr + t * stride_db_t + rr, mask=rr < r, other=0.0).to(tl.float32)
        g = _activate(acc_h + bias[None, :], rr < r, ACT).to(uw_ptr.dtype.element_ty)
        for n0 in range(0, D, BLOCK_N):
            rn = n0 + tl.arange(0, BLOCK_N)
            n_ok = rn < D
            u = tl.load(uw_ptr + t * stride_uw_t + rr[:, None] * stride_uw + rn[None, :],
                        mask=(rr[:, None] < r) & n_ok[None, :], other=0.0)
            acc = _mm(g, u, tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32), DOT_F32, PREC)
            mask = row_ok[:, None] & n_ok[None, :]
            ub = tl.load(ub_ptr + t * stride_ub_t + rn, mask=n_ok, other=0.0).to(tl.float32)
            xv = tl.load(x_ptr + rows[:, None] * stride_xm + rn[None, :], mask=mask, other=0.0).to(tl.float32)
            tl.store(out_ptr + rows[:, None] * stride_om + rn[None, :], (xv + acc + ub[None, :]).to(
                out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["rh", "rv"])  # sizes: one compile per tile shape, not per size
def _routed_bypass_stage_kernel(
    x_ptr, stride_xm,  # [B·N, D]  this stage's backbone tokens x_l, every image
    xrow_ptr,  # [M] int32: the row of x each routed row reads (its pair's image, its token)
    b_ptr, stride_bm,  # [M, D]   bypass state b_{l-1}, N rows per (image, task) pair
    out_ptr, stride_om,  # [M, D]
    perm_ptr,  # [M]     rows sorted by slot
    seg_start_ptr, seg_count_ptr, seg_slot_ptr,  # [G]   segment g: the rows of slot seg_slot[g]
    hw_ptr, stride_hw_k, stride_hw_d,  # [K, D, r_h]  horizontal down, this stage
    hb_ptr, stride_hb_k,  # [K, r_h]
    vw_ptr, stride_vw_k, stride_vw_d,  # [K, D, r_v]  vertical down
    vb_ptr, stride_vb_k,  # [K, r_v]
    uw_ptr, stride_uw_k, stride_uw_r,  # [K, r_h + r_v, D]  up, λ folded in
    ub_ptr, stride_ub_k,  # [K, D]
    lam_ptr,  # [K]
    D, rh, rv,
    H_ACT: tl.constexpr, V_ACT: tl.constexpr, BLOCK_M: tl.constexpr, RH: tl.constexpr, RV: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, DOT_F32: tl.constexpr, PREC: tl.constexpr,
):
    """One routed bypass stage, SGMV style; grid (G, cdiv(M, BLOCK_M)). Matches reference.routed_bypass_stage.

    Every program multiplies a block of rows of ONE slot (rows sorted by slot on the host side of the
    launch): both down-projections, their activations, the joint up-projection and the λ-mixed residual in
    one pass; x is read through the row index, so pairs of one image share its tokens without a copy.
    """
    seg = tl.program_id(0)
    pid_m = tl.program_id(1)
    count = tl.load(seg_count_ptr + seg)
    if pid_m * BLOCK_M >= count:
        return
    start = tl.load(seg_start_ptr + seg)
    k = tl.load(seg_slot_ptr + seg).to(tl.int64)
    idx = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = idx < count
    rows = tl.load(perm_ptr + start + idx, mask=row_ok, other=0).to(tl.int64)
    xrows = tl.load(xrow_ptr + rows, mask=row_ok, other=0).to(tl.int64)
    rrh = tl.arange(0, RH)
    rrv = tl.arange(0, RV)
    if H_ACT != 0:
        acc_h = tl.full((BLOCK_M, RH), 0.0, tl.float32)
        for k0 in range(0, D, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < D
            xa = tl.load(x_ptr + xrows[:, None] * stride_xm + rk[None, :], mask=row_ok[:, None] & k_ok[None, :],
                         other=0.0)
            wa = tl.load(hw_ptr + k * stride_hw_k + rk[:, None] * stride_hw_d + rrh[None, :],
                         mask=k_ok[:, None] & (rrh[None, :] < rh), other=0.0)
            acc_h = _mm(xa, wa, acc_h, DOT_F32, PREC)
        hbias = tl.load(hb_ptr + k * stride_hb_k + rrh, mask=rrh < rh, other=0.0).to(tl.float32)
        g_h = _activate(acc_h + hbias[None, :], rrh < rh, H_ACT).to(uw_ptr.dtype.element_ty)
    if V_ACT != 0:
        acc_v = tl.full((BLOCK_M, RV), 0.0, tl.float32)
        for k0 in range(0, D, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            k_ok = rk < D
            ba = tl.load(b_ptr + rows[:, None] * stride_bm + rk[None, :], mask=row_ok[:, None] & k_ok[None, :],
                         other=0.0)
            wa = tl.load(vw_ptr + k * stride_vw_k + rk[:, None] * stride_vw_d + rrv[None, :],
                         mask=k_ok[:, None] & (rrv[None, :] < rv), other=0.0)
            acc_v = _mm(ba, wa, acc_v, DOT_F32, PREC)
        vbias = tl.load(vb_ptr + k * stride_vb_k + rrv, mask=rrv < rv, other=0.0).to(tl.float32)
        g_v = _activate(acc_v + vbias[None, :], rrv < rv, V_ACT).to(uw_ptr.dtype.element_ty)
    lam = tl.load(lam_ptr + k).to(tl.float32)
    for n0 in range(0, D, BLOCK_N):
        rn = n0 + tl.arange(0, BLOCK_N)
        n_ok = rn < D
        acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
        if H_ACT != 0:
            u = tl.load(uw_ptr + k * stride_uw_k + rrh[:, None] * stride_uw_r + rn[None, :],
                        mask=(rrh[:, None] < rh) & n_ok[None, :], other=0.0)
            acc = _mm(g_h, u, acc, DOT_F32, PREC)
        if V_ACT != 0:
            u = tl.load(uw_ptr + k * stride_uw_k + (rh + rrv[:, None]) * stride_uw_r + rn[None, :],
                        mask=(rrv[:, None] < rv) & n_ok[None, :], other=0.0)
            acc = _mm(g_v, u, acc, DOT_F32, PREC)
        mask = row_ok[:, None] & n_ok[None, :]
        ub = tl.load(ub_ptr + k * stride_ub_k + rn, mask=n_ok, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + xrows[:, None] * stride_xm + rn[None, :], mask=mask, other=0.0).to(tl.float32)
        bv = tl.load(b_ptr + rows[:, None] * stride_bm + rn[None, :], mask=mask, other=0.0).to(tl.float32)
        res = acc + ub[None, :] + lam * xv + (1.0 - lam) * bv
        tl.store(out_ptr + rows[:, None] * stride_om + rn[None, :], res.to(out_ptr.dtype.element_ty), mask=mask)
