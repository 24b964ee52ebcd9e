"""
The previous design of the Triton PLA kernels, frozen: a verbatim copy of the Triton part of kernels.py as
of commit 1a42602, the design before the current kernels.py. It is kept only so that `bash bench/gpu.sh`
can time it side by side with kernels.pla in the same run; only bench/gpu.py (and its test) load it, and it
is not maintained. kernels.py holds the algorithm and its docs.

    pla(q, k, v, k_enc=None, v_enc=None, *, state=None, pad_mask=None, enc_pad_mask=None, return_state=False)

takes CUDA tensors (or any tensors under TRITON_INTERPRET=1) with f = 16 in the layout of kernels.pla and
does no input checks: bench/gpu.py passes it valid inputs only.
"""
import os

import torch
import triton
import triton.language as tl

EPS = 1e-12  # added to the normaliser, as in kernels.py
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter; read at import


# ----------------------------------------------------------------------------- Triton kernels
#
# Inside the kernels (f = 16): x̃ = x·f^-¼ (exact in bf16: f^-¼ = 1/2), so s = q̃·k̃ and φ(x) = [1, x̃, P(x)]
# with P(x) = vec(x̃ ⊗ x̃)/√2; the state's rows [1, x̃, P(x)] are S₀, S₁, S₂. A program owns BV columns of
# the state, S₂ as NS slices of f²/NS rows; no tile is larger than BT × f²/NS. With 16-bit inputs the
# products' operands are bf16 (q̃, k̃, v, the chunk's scores, P(x), the fp32 state where it is read).

def _tiles(low):
    """Chunk length BT, the f² rows' slice count NS and warps, for bf16 (low) or fp32 products: tiles that
    compile without register spills for sm_90 and sm_80 (bench.py --suite compile)."""
    return dict(BT=64, NS=4, num_warps=8, num_stages=1) if low else dict(BT=16, NS=8, num_warps=8, num_stages=1)


@triton.jit
def _dot(a, b, acc=None):
    """a @ b (+ acc) in fp32; fp32 operands multiply as fp32 (no TF32), 16-bit ones on the tensor cores."""
    return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _load(P, t, T, col, NC):
    """Rows t (< T), columns col (< NC) of a row-major (T, NC) matrix, as (BT, ·); zeros outside."""
    return tl.load(P + t[:, None] * NC + col[None, :], mask=(t[:, None] < T) & (col[None, :] < NC), other=0.)


@triton.jit
def _loadT(P, t, T, col, NC):
    """The same tile transposed, (·, BT)."""
    return tl.load(P + t[None, :] * NC + col[:, None], mask=(t[None, :] < T) & (col[:, None] < NC), other=0.)


@triton.jit
def _put(P, t, T, col, NC, x):
    tl.store(P + t[:, None] * NC + col[None, :], x.to(P.dtype.element_ty), mask=(t[:, None] < T) & (col[None, :] < NC))


@triton.jit
def _x(X, t, T, scale, F: tl.constexpr, DT: tl.constexpr):
    """x̃ = x·f^-¼ at rows t: (BT, f) in DT."""
    return (_load(X, t, T, tl.arange(0, F), F).to(tl.float32) * scale).to(DT)


@triton.jit
def _P(X, t, T, scale, p, A: tl.constexpr, F: tl.constexpr, DT: tl.constexpr):
    """Slice p of P(x) at rows t: (BT, A·f) in DT, the products x̃_a x̃_b/√2 for a in [pA, pA + A)."""
    xa = _load(X, t, T, p * A + tl.arange(0, A), F).to(tl.float32) * (scale * 0.7071067811865476)  # (BT, A)
    xb = _load(X, t, T, tl.arange(0, F), F).to(tl.float32) * scale                                  # (BT, f)
    return tl.reshape(xa[:, :, None] * xb[:, None, :], (t.shape[0], A * F)).to(DT)


@triton.jit
def _PT(X, t, T, scale, p, A: tl.constexpr, F: tl.constexpr, DT: tl.constexpr):
    """The same slice transposed, (A·f, BT): loaded transposed, so that no tile is transposed in registers."""
    xa = _loadT(X, t, T, p * A + tl.arange(0, A), F).to(tl.float32) * (scale * 0.7071067811865476)  # (A, BT)
    xb = _loadT(X, t, T, tl.arange(0, F), F).to(tl.float32) * scale                                  # (f, BT)
    return tl.reshape(xa[:, None, :] * xb[None, :, :], (A * F, t.shape[0])).to(DT)


@triton.jit
def _weight(W, t, T, HAS_W: tl.constexpr):
    """Per-key weight w (BT,): 1 for a real key, 0 for a pad or a row past the end."""
    if HAS_W:
        return tl.load(W + t, mask=t < T, other=0.)
    return (t < T).to(tl.float32)


@triton.jit
def _vals(V, w, t, T, e, DV, DT: tl.constexpr):
    """g = w·[v, 1] at rows t, columns e: (BT, BV) in DT. A pad adds nothing to the state, the normaliser
    included."""
    v = tl.where((e == DV)[None, :], 1., _load(V, t, T, e, DV).to(tl.float32))
    return (v * w[:, None]).to(DT)


@triton.jit
def _grads(DY, RDEN, DDEN, t, T, e, DV, DT: tl.constexpr):
    """The output gradient of [num, den] at rows t, columns e: [dy/den, dden] (BT, BV) in DT."""
    dnum = _load(DY, t, T, e, DV).to(tl.float32) * tl.load(RDEN + t, mask=t < T, other=0.)[:, None]
    return tl.where((e == DV)[None, :], tl.load(DDEN + t, mask=t < T, other=0.)[:, None], dnum).to(DT)


@triton.jit
def _atomic_add(P, t, T, x, F: tl.constexpr):
    """P[t] += x for the (BT, f) rows t < T: fp32 sums that several programs add to (see the backward)."""
    tl.atomic_add(P + t[:, None] * F + tl.arange(0, F)[None, :], x, mask=(t < T)[:, None], sem="relaxed")


@triton.jit
def _load_state(S, e, DV, F: tl.constexpr, NS: tl.constexpr):
    """One head's (D, dv + 1) state at columns e -> (S₂ as NS slices (f²/NS, BV), S₁ (f, BV), S₀ (BV,))."""
    R: tl.constexpr = F * F // NS
    m = e < DV + 1
    s2 = ()
    for p in tl.static_range(NS):
        rows = 1 + F + p * R + tl.arange(0, R)
        s2 = s2 + (tl.load(S + rows[:, None] * (DV + 1) + e[None, :], mask=m[None, :], other=0.),)
    s1 = tl.load(S + (1 + tl.arange(0, F))[None, :] * (DV + 1) + e[:, None], mask=m[:, None], other=0.)
    return s2, s1, tl.load(S + e, mask=m, other=0.)


@triton.jit
def _store_state(S, s2, s1, s0, e, DV, F: tl.constexpr):
    R: tl.constexpr = F * F // len(s2)
    m = e < DV + 1
    for p in tl.static_range(len(s2)):
        rows = 1 + F + p * R + tl.arange(0, R)
        tl.store(S + rows[:, None] * (DV + 1) + e[None, :], s2[p], mask=m[None, :])
    tl.store(S + (1 + tl.arange(0, F))[None, :] * (DV + 1) + e[:, None], s1, mask=m[:, None])
    tl.store(S + e, s0, mask=m)


@triton.jit
def _add(X, t, T, scale, x, g, s2, s1, s0, F: tl.constexpr, DT: tl.constexpr):
    """S += φ(x)ᵀ g, slice by slice; x = x̃ (BT, f) at rows t of X, g (BT, BV), both in DT.
    Forward: x = k, g = w·[v, 1]. Backward: x = q, g = [dnum, dden]."""
    A: tl.constexpr = F // len(s2)
    out = ()
    for p in tl.static_range(len(s2)):
        out = out + (_dot(_PT(X, t, T, scale, p, A, F, DT), g, s2[p]),)
    return out, _dot(tl.trans(g), x, s1), s0 + tl.sum(g.to(tl.float32), 0)


@triton.jit
def _read(X, t, T, scale, x, s2, s1, s0, F: tl.constexpr, DT: tl.constexpr):
    """φ(x)·S for every row: (BT, BV) fp32 = S₀ + x̃·S₁ + Σ_slices P(x)·S₂."""
    A: tl.constexpr = F // len(s2)
    r = _dot(x, tl.trans(s1.to(DT)))
    for p in tl.static_range(len(s2)):
        r = _dot(_P(X, t, T, scale, p, A, F, DT), s2[p].to(DT), r)
    return r + s0[None, :]


@triton.jit
def _grad_read(X, t, T, scale, x, g, s2, s1, F: tl.constexpr, DT: tl.constexpr):
    """∂/∂x̃ of Σ_e g_e (φ(x)·S)_e for every row (BT, f) fp32, for S₂ symmetric in its f×f row index
    (see _sym): r = S g, then ∂/∂x̃_c = r₁_c + √2 Σ_b x̃_b r₂[(b, c)], one contraction per slice of b."""
    A: tl.constexpr = F // len(s2)
    d = _dot(g, s1.to(DT))                                              # (BT, f)
    for p in tl.static_range(len(s2)):
        r = _dot(g, tl.trans(s2[p].to(DT)))                           # (BT, A·f)
        xb = _load(X, t, T, p * A + tl.arange(0, A), F).to(tl.float32) * (scale * 1.4142135623730951)
        xb = tl.reshape(tl.broadcast_to(xb[:, :, None], (t.shape[0], A, F)), (t.shape[0], A * F))
        E = ((tl.arange(0, A * F) % F)[:, None] == tl.arange(0, F)[None, :]).to(DT)          # (A·f, f)
        d = _dot((r * xb).to(DT), E, d)
    return d


@triton.jit
def _enc_fwd_kernel(KE, VE, W, S_part, M, H, DV, C0, SEG, scale, F: tl.constexpr, NS: tl.constexpr,
                    BV: tl.constexpr, HAS_W: tl.constexpr, DT: tl.constexpr, BT: tl.constexpr):
    """Step 1: the state of one segment of prefix keys, for one (b, h) and one block of columns."""
    sg, bh = tl.program_id(1), tl.program_id(2).to(tl.int64)
    e, D = C0 + tl.program_id(0) * BV + tl.arange(0, BV), 1 + F + F * F
    KE, VE, W = KE + bh * M * F, VE + bh * M * DV, W + (bh // H) * M
    s2 = ()
    for p in tl.static_range(NS):
        s2 = s2 + (tl.zeros([F * F // NS, BV], tl.float32),)
    s1, s0 = tl.zeros([BV, F], tl.float32), tl.zeros([BV], tl.float32)
    for m0 in range(0, SEG, BT):  # rows past M are masked
        t = sg * SEG + m0 + tl.arange(0, BT)
        w = _weight(W, t, M, HAS_W)
        g = _vals(VE, w, t, M, e, DV, DT)
        s2, s1, s0 = _add(KE, t, M, scale, _x(KE, t, M, scale, F, DT), g, s2, s1, s0, F, DT)
    _store_state(S_part + (bh * tl.num_programs(1) + sg) * D * (DV + 1), s2, s1, s0, e, DV, F)  # summed by torch


@triton.jit
def _fwd_kernel(Q, K, V, W, S_in, Y, RDEN, S_out, T, H, DV, C0, scale, eps, F: tl.constexpr, NS: tl.constexpr,
                BV: tl.constexpr, NORM: tl.constexpr, HAS_W: tl.constexpr, DT: tl.constexpr,
                BT: tl.constexpr):
    """Step 2: causal Based attention from the starting state, for one (b, h) and one block of columns.
    NORM: this block holds the ones column; it stores 1/den in RDEN for the other blocks."""
    bh = tl.program_id(1).to(tl.int64)
    e, D = C0 + tl.program_id(0) * BV + tl.arange(0, BV), 1 + F + F * F
    Q, K, W = Q + bh * T * F, K + bh * T * F, W + (bh // H) * T    # this head's rows (pads: its batch row)
    V, Y, RDEN = V + bh * T * DV, Y + bh * T * DV, RDEN + bh * T
    s2, s1, s0 = _load_state(S_in + bh * D * (DV + 1), e, DV, F, NS)
    for t0 in range(0, T, BT):
        t = t0 + tl.arange(0, BT)
        q, k = _x(Q, t, T, scale, F, DT), _x(K, t, T, scale, F, DT)                 # (BT, f)
        w = _weight(W, t, T, HAS_W)
        g = _vals(V, w, t, T, e, DV, DT)                                   # (BT, BV)
        num = _read(Q, t, T, scale, q, s2, s1, s0, F, DT)                     # (BT, BV): the chunks before
        s = _dot(q, tl.trans(k))                             # (BT, BT) = q·k/√f
        a = tl.where(t[:, None] >= t[None, :], 1 + s + 0.5 * s * s, 0.)              # φ(q_i)·φ(k_j), j ≤ i
        num = _dot(a.to(DT), g, num)                         # + this chunk
        if NORM:
            rden = 1 / (tl.sum(tl.where((e == DV)[None, :], num, 0.), 1) + eps)
            tl.store(RDEN + t, rden, mask=t < T)
        else:
            rden = tl.load(RDEN + t, mask=t < T, other=0.)
        _put(Y, t, T, e, DV, num * rden[:, None])
        s2, s1, s0 = _add(K, t, T, scale, k, g, s2, s1, s0, F, DT)
    _store_state(S_out + bh * D * (DV + 1), s2, s1, s0, e, DV, F)


# The backward. With dnum_i = dy_i/den_i and dden_i = -(dy_i·y_i)/den_i, PLA's gradient is that of
# unnormalised linear attention on values g = w·[v, 1] with output gradient G = [dnum, dden]. It is cut in
# two: inside each chunk (_bwd_chunk_kernel, chunks in parallel: it writes dq, dk, dv first), and through
# the state (two sweeps, one program per block of columns, which add to them). A sweep carries the f²×BV
# state but no BT×BT tile. dq and dk get a term from every block of columns: they are fp32 sums, added to
# atomically (in an order that may differ between runs, by fp32 rounding).

@triton.jit
def _bwd_chunk_kernel(Q, K, V, W, DY, RDEN, DDEN, DQ, DK, DVAL, T, H, DV, scale, F: tl.constexpr,
                      BV: tl.constexpr, HAS_W: tl.constexpr, DT: tl.constexpr, BT: tl.constexpr):
    """The gradient through the scores inside one chunk: a_ij = 1 + s + s²/2 for j ≤ i, s = q̃_i·k̃_j."""
    bh = tl.program_id(1).to(tl.int64)
    Q, K, W = Q + bh * T * F, K + bh * T * F, W + (bh // H) * T
    V, DY, RDEN, DDEN, DVAL = V + bh * T * DV, DY + bh * T * DV, RDEN + bh * T, DDEN + bh * T, DVAL + bh * T * DV
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    q, k = _x(Q, t, T, scale, F, DT), _x(K, t, T, scale, F, DT)                         # (BT, f)
    s = _dot(q, tl.trans(k))                                     # (BT, BT)
    causal, w = t[:, None] >= t[None, :], _weight(W, t, T, HAS_W)
    da = tl.zeros([BT, BT], tl.float32)
    for c0 in range(0, DV + 1, BV):  # ∂L/∂a_ij = G_i·g_j, over all dv + 1 columns
        e = c0 + tl.arange(0, BV)
        g = _vals(V, w, t, T, e, DV, DT)
        da = _dot(_grads(DY, RDEN, DDEN, t, T, e, DV, DT), tl.trans(g), da)
    ds = tl.where(causal, da * (1 + s), 0.).to(DT)                                        # ∂L/∂s_ij
    _put(DQ + bh * T * F, t, T, tl.arange(0, F), F, _dot(ds, k) * scale)
    _put(DK + bh * T * F, t, T, tl.arange(0, F), F, _dot(tl.trans(ds), q) * scale)
    at = tl.trans(tl.where(causal, 1 + s + 0.5 * s * s, 0.)).to(DT)                      # a_ij at [j, i]
    for c0 in range(0, DV, BV):  # dg_j = Σ_i a_ij G_i; dv = w·dg
        e = c0 + tl.arange(0, BV)
        dg = _dot(at, _grads(DY, RDEN, DDEN, t, T, e, DV, DT))
        _put(DVAL, t, T, e, DV, dg * w[:, None])


@triton.jit
def _bwd_dq_kernel(Q, K, V, W, S_in, DY, RDEN, DDEN, DQ, T, H, DV, scale, F: tl.constexpr, NS: tl.constexpr,
                   BV: tl.constexpr, HAS_W: tl.constexpr, DT: tl.constexpr, BT: tl.constexpr):
    """dq += ∂/∂q of φ(q_i)·S_i G_i: chunks in order, re-building the state (symmetrised, _sym)."""
    bh = tl.program_id(1).to(tl.int64)
    e, D = tl.program_id(0) * BV + tl.arange(0, BV), 1 + F + F * F
    Q, K, W, DQ = Q + bh * T * F, K + bh * T * F, W + (bh // H) * T, DQ + bh * T * F
    V, DY, RDEN, DDEN = V + bh * T * DV, DY + bh * T * DV, RDEN + bh * T, DDEN + bh * T
    s2, s1, s0 = _load_state(S_in + bh * D * (DV + 1), e, DV, F, NS)
    for t0 in range(0, T, BT):
        t = t0 + tl.arange(0, BT)
        q, k = _x(Q, t, T, scale, F, DT), _x(K, t, T, scale, F, DT)
        w = _weight(W, t, T, HAS_W)
        g = _vals(V, w, t, T, e, DV, DT)
        dq = _grad_read(Q, t, T, scale, q, _grads(DY, RDEN, DDEN, t, T, e, DV, DT), s2, s1, F, DT)
        _atomic_add(DQ, t, T, dq * scale, F)
        s2, s1, s0 = _add(K, t, T, scale, k, g, s2, s1, s0, F, DT)


@triton.jit
def _bwd_dkv_kernel(Q, K, V, W, DY, RDEN, DDEN, dS_in, DK, DVAL, dS_out, T, H, DV, scale, F: tl.constexpr,
                    NS: tl.constexpr, BV: tl.constexpr, HAS_W: tl.constexpr, DT: tl.constexpr,
                    BT: tl.constexpr):
    """dk, dv += the terms through dS = Σ_{later i} φ(q_i) G_iᵀ (symmetric in its f² rows): chunks in
    reverse, from the gradient of the final state to that of the starting state (stored in dS_out)."""
    bh = tl.program_id(1).to(tl.int64)
    e, D = tl.program_id(0) * BV + tl.arange(0, BV), 1 + F + F * F
    Q, K, W, DK = Q + bh * T * F, K + bh * T * F, W + (bh // H) * T, DK + bh * T * F
    V, DY, RDEN, DDEN, DVAL = V + bh * T * DV, DY + bh * T * DV, RDEN + bh * T, DDEN + bh * T, DVAL + bh * T * DV
    d2, d1, d0 = _load_state(dS_in + bh * D * (DV + 1), e, DV, F, NS)
    n = tl.cdiv(T, BT)
    for i in range(0, n):
        t = (n - 1 - i) * BT + tl.arange(0, BT)
        q, k = _x(Q, t, T, scale, F, DT), _x(K, t, T, scale, F, DT)
        w = _weight(W, t, T, HAS_W)
        g = _vals(V, w, t, T, e, DV, DT)
        dg = _read(K, t, T, scale, k, d2, d1, d0, F, DT)                        # φ(k_j)·dS: (BT, BV)
        _put(DVAL, t, T, e, DV, _load(DVAL, t, T, e, DV).to(tl.float32) + dg * w[:, None])  # the chunk's part
        dk = _grad_read(K, t, T, scale, k, g, d2, d1, F, DT)                          # (BT, f)
        _atomic_add(DK, t, T, dk * scale, F)
        d2, d1, d0 = _add(Q, t, T, scale, q, _grads(DY, RDEN, DDEN, t, T, e, DV, DT), d2, d1, d0, F, DT)
    _store_state(dS_out + bh * D * (DV + 1), d2, d1, d0, e, DV, F)


@triton.jit
def _enc_bwd_kernel(KE, VE, W, dS, DKE, DVE, M, H, DV, SEG, scale, F: tl.constexpr, NS: tl.constexpr,
                    BV: tl.constexpr, HAS_W: tl.constexpr, DT: tl.constexpr, BT: tl.constexpr):
    """Step 3: the prefix keys read the gradient of the starting state; no order, segments in parallel."""
    sg, bh = tl.program_id(1), tl.program_id(2).to(tl.int64)
    e, D = tl.program_id(0) * BV + tl.arange(0, BV), 1 + F + F * F
    KE, VE, W, DVE, DKE = KE + bh * M * F, VE + bh * M * DV, W + (bh // H) * M, DVE + bh * M * DV, DKE + bh * M * F
    d2, d1, d0 = _load_state(dS + bh * D * (DV + 1), e, DV, F, NS)
    for m0 in range(0, SEG, BT):  # rows past M are masked
        t = sg * SEG + m0 + tl.arange(0, BT)
        k = _x(KE, t, M, scale, F, DT)
        w = _weight(W, t, M, HAS_W)
        g = _vals(VE, w, t, M, e, DV, DT)
        dk = _grad_read(KE, t, M, scale, k, g, d2, d1, F, DT)
        _atomic_add(DKE, t, M, dk * scale, F)
        _put(DVE, t, M, e, DV, _read(KE, t, M, scale, k, d2, d1, d0, F, DT) * w[:, None])


# ----------------------------------------------------------------------------- autograd and dispatch

def _blocks(dv, M, BH, low, device):
    """Column blocks and prefix segments. The forward cuts the dv + 1 columns [v, 1] into NV blocks of BV
    value columns and the block that holds the rest and the ones column (BVL wide: the narrowest power of
    two ≥ 16 that fits); the backward's sweeps into NB blocks of 16, so that the f²×16 fp32 state leaves
    registers for the gradient's tiles. The prefix is cut into segments, enough programs to fill the GPU,
    no more, since each one writes a partial state."""
    BV = 32 if low and dv >= 32 else 16  # fp32: BV 16, a smaller f²×BV state (_tiles)
    NV = dv // BV
    BVL = max(16, triton.next_power_of_2(dv + 1 - NV * BV))
    want = 16 if INTERPRET else 4 * torch.cuda.get_device_properties(device).multi_processor_count
    nseg = max(1, min(triton.cdiv(M, 64), want // max(1, BH * (NV + 1))))
    seg = max(64, triton.cdiv(triton.cdiv(M, nseg), 64) * 64)  # a multiple of every BT of _tiles
    return dict(BV=BV, NV=NV, BVL=BVL, NB=triton.cdiv(dv + 1, 16), seg=seg, nseg=triton.cdiv(M, seg))


def _launch(kernel, grid, blocks, *args, **kw):
    """The forward's two launches: the block with the ones column first (NORM: the others divide by its
    result), then the NV blocks of value columns. C0 is a launch's first column."""
    norm = {"NORM": True} if "NORM" in kernel.arg_names else {}
    kernel[(1, *grid)](*args, C0=blocks["NV"] * blocks["BV"], BV=blocks["BVL"], **norm, **kw)
    if blocks["NV"]:
        kernel[(blocks["NV"], *grid)](*args, C0=0, BV=blocks["BV"], **{n: False for n in norm}, **kw)


def _sym(S, f):
    """S (B, H, D, ·) with its f² rows symmetrised, (X + Xᵀ)/2 over the f×f index pair. φ(x)'s f² piece
    is symmetric, so φ(x)·S and every gradient through it are unchanged, and the backward kernels need
    one contraction where a general state needs two (_grad_read). States pla makes are symmetric already."""
    B, H, D, n = S.shape
    S2 = S[:, :, 1 + f:].view(B, H, f, f, n)
    return torch.cat([S[:, :, :1 + f], ((S2 + S2.transpose(2, 3)) / 2).flatten(2, 3)], 2)


class _PLA(torch.autograd.Function):
    """y, S, z = PLA(q, k, v, k_enc, v_enc, S0, z0) with the Triton kernels; keep / keep_enc are the
    (B, T) / (B, M) fp32 key weights (1 real, 0 pad) or None, and get no gradient. Inside, the state is
    [S, z] as one (B, H, D, dv + 1) tensor."""

    @staticmethod
    def forward(ctx, q, k, v, k_enc, v_enc, S0, z0, keep, keep_enc):
        B, H, T, f = q.shape
        dv, D, M = v.shape[-1], 1 + f + f * f, 0 if k_enc is None else k_enc.shape[2]
        # bf16 products for 16-bit inputs (fp16 too: the state rounded to fp16 could overflow), fp32 for
        # fp32 inputs. The interpreter computes a bf16 tl.dot wrongly: there everything is fp32.
        low = not INTERPRET and {q.dtype, v.dtype} != {torch.float32}
        kw = dict(F=f, DT=tl.bfloat16 if low else tl.float32, scale=f ** -0.25, **_tiles(low))
        blocks = _blocks(dv, M, B * H, low, q.device)
        S = (q.new_zeros(B, H, D, dv + 1, dtype=torch.float32) if S0 is None
             else torch.cat([S0.float(), z0.float()[..., None]], -1))
        if M > 0:  # 1. the prefix, reduced into partial states in parallel
            S_part = q.new_empty(B * H, blocks["nseg"], D, dv + 1, dtype=torch.float32)
            _launch(_enc_fwd_kernel, (blocks["nseg"], B * H), blocks, k_enc, v_enc,
                    q if keep_enc is None else keep_enc, S_part, M, H, dv, SEG=blocks["seg"],
                    HAS_W=keep_enc is not None, **kw)
            S = S + S_part.sum(1).view(B, H, D, dv + 1)
        y, rden, S_out = torch.empty_like(v), q.new_empty(B, H, T, dtype=torch.float32), torch.empty_like(S)
        _launch(_fwd_kernel, (B * H,), blocks, q, k, v, q if keep is None else keep, S, y, rden, S_out, T, H, dv,
                eps=EPS, HAS_W=keep is not None, **kw)
        ctx.save_for_backward(q, k, v, k_enc, v_enc, keep, keep_enc, S, y, rden)
        ctx.has_state, ctx.blocks, ctx.kw, ctx.low = S0 is not None, blocks, kw, low
        return y, S_out[..., :dv], S_out[..., dv]

    @staticmethod
    def backward(ctx, dy, dS_out, dz_out):
        q, k, v, k_enc, v_enc, keep, keep_enc, S, y, rden = ctx.saved_tensors
        B, H, T, f = q.shape
        dv, M = v.shape[-1], 0 if k_enc is None else k_enc.shape[2]
        nb, kw = ctx.blocks["NB"], dict(ctx.kw, BV=16)
        dy = dy.contiguous()
        dden = -(dy.float() * y.float()).sum(-1) * rden      # (B, H, T): ∂L/∂den, the ones column's gradient
        dS_end = torch.cat([torch.zeros_like(S[..., :dv]) if dS_out is None else dS_out.float(),
                            torch.zeros_like(S[..., dv:]) if dz_out is None else dz_out.float()[..., None]], -1)
        dS_sym = _sym(dS_end, f)
        dq, dk = q.new_empty(B, H, T, f, dtype=torch.float32), k.new_empty(B, H, T, f, dtype=torch.float32)
        dv_, dS = torch.empty_like(v), torch.empty_like(S)  # dS: the gradient of the starting state
        w, kw_w = q if keep is None else keep, dict(kw, HAS_W=keep is not None)
        _bwd_chunk_kernel[(triton.cdiv(T, kw["BT"]), B * H)](  # the sweeps' chunks: the same BT
            q, k, v, w, dy, rden, dden, dq, dk, dv_, T, H, dv, **{n: x for n, x in kw_w.items() if n != "NS"})
        _bwd_dq_kernel[(nb, B * H)](q, k, v, w, _sym(S, f), dy, rden, dden, dq, T, H, dv, **kw_w)
        _bwd_dkv_kernel[(nb, B * H)](q, k, v, w, dy, rden, dden, dS_sym, dk, dv_, dS, T, H, dv, **kw_w)
        dke = dve = None
        if M > 0:
            dke, dve = k_enc.new_zeros(B, H, M, f, dtype=torch.float32), torch.empty_like(v_enc)
            seg = ctx.blocks["seg"]
            _enc_bwd_kernel[(nb, triton.cdiv(M, seg), B * H)](
                k_enc, v_enc, q if keep_enc is None else keep_enc, dS, dke, dve, M, H, dv, seg,
                HAS_W=keep_enc is not None, **dict(kw, NS=kw["NS"] if ctx.low else 16))  # fp32: 8 would spill
            dke = dke.to(k_enc.dtype)
        dS = dS + dS_end - dS_sym  # the final state passes its non-symmetric part (no output reads it) to the start
        state_grads = (dS[..., :dv], dS[..., dv]) if ctx.has_state else (None, None)
        return dq.to(q.dtype), dk.to(k.dtype), dv_, dke, dve, *state_grads, None, None


@torch.compiler.disable
def pla(q, k, v, k_enc=None, v_enc=None, *, state=None, pad_mask=None, enc_pad_mask=None, return_state=False):
    """kernels.pla(..., backend="triton") as it was (its _pla_triton, less the fallback for empty shapes)."""
    if k_enc is not None and k_enc.shape[2] == 0:  # M = 0: plain Based attention
        k_enc = v_enc = enc_pad_mask = None
    keep = None if pad_mask is None else (~pad_mask).float().contiguous()              # (B, T)
    keep_enc = None if enc_pad_mask is None else (~enc_pad_mask).float().contiguous()  # (B, M)
    enc = (None, None) if k_enc is None else (k_enc.contiguous(), v_enc.contiguous())
    S0, z0 = (None, None) if state is None else state
    y, S, z = _PLA.apply(q.contiguous(), k.contiguous(), v.contiguous(), *enc, S0, z0, keep, keep_enc)
    return (y, (S, z)) if return_state else y
