"""
Prefix linear attention (PLA), the mixer of JRT-RNN, and its special case causal Based linear attention.

Symbols (../README.md has the glossary): B batch, H heads, T sequence length, M prefix (encoder)
length, f feature dim of q and k, D = 1 + f + f² the Taylor feature dim, dv value dim per head,
s = q·k/√f, φ the Taylor feature map, C the chunk length of the chunked forms.

The math (JRT paper, eq. for PLA; SPEC §2-3):

    φ(x) = [1, x / f^¼, vec(x ⊗ x) / (√2·√f)]            so  φ(q)·φ(k) = 1 + s + s²/2

    y_i = φ(q_i)·(S0 + Σ_{j≤i} φ(k_j) v_jᵀ + Σ_{j<M} φ(ke_j) ve_jᵀ)
          ------------------------------------------------------------
          φ(q_i)·(z0 + Σ_{j≤i} φ(k_j)      + Σ_{j<M} φ(ke_j))

The encoder sums (over the M prefix positions, read non-causally) are just a starting state
S_e, z_e for ordinary causal linear attention. So PLA = "reduce the prefix into a state, then run
causal Based attention from it". With M = 0 and no starting state this is plain Based attention.

The Triton algorithm (backend="triton", f = 16), per head:
  1. encoder: S_e, z_e = Σ_j φ(ke_j)[ve_j, 1]ᵀ, a parallel reduction: the M keys are cut into
     segments, one program per segment, and the partial states are summed.
  2. decoder: T/C chunks in order, carrying the state as three pieces, Σ v (dv), Σ k vᵀ (f×dv) and
     Σ (k⊗k) vᵀ (f²×dv), with φ's scalings folded into q and k, so no D-dim feature ever reaches
     memory. Inside a chunk the scores come from s = q·kᵀ as 1 + s + s²/2 (causal); across chunks
     from φ(q)·state. The normaliser is the same attention applied to a column of ones; a padded key
     gets weight 0 on its value and on that ones column, so it adds nothing anywhere.
  3. backward: the same two sweeps run again, one forward for dq (re-building the state), one in
     reverse for dk, dv (carrying dS = Σ_{later i} φ(q_i) dnum_iᵀ), then the encoder keys read dS.
FLOP per head: forward ≈ T·(4·D·dv + 2·C·(f + dv)) + M·2·D·dv (read and update the state for every
decoder token, C×C scores and values inside a chunk, one state update per prefix key); backward ≈
2.5× that. At SPEC §9's shape (B = H = 16, T = 32768, M = 16384, dv = 64, C = 64): ≈ 0.82 TFLOP.

Public API (layout (B, H, T, ·) everywhere):
    feature_map(x)                       (..., f) -> (..., D)
    pla(q, k, v, k_enc, v_enc, ...)      the parallel (prefill / training) form; backend torch or triton
    pla_step(q, k, v, state)             one decode token
    pla_reference(...)                   the quadratic form written straight from the equation (tests)

Padding: `pad_mask` (B, T) and `enc_pad_mask` (B, M) are True where a key is padding. Padded keys
add nothing to any sum. (Zeroing k is not enough: φ(0) = [1, 0, ...] still adds 1 to the
normaliser, which is what the official code does; SPEC §3.)
"""
import math
import os

import torch

EPS = 1e-12  # added to the normaliser, as in the official code; it only matters for rows with no keys
CHUNK = 64   # chunk length of the chunked torch form: T/CHUNK serial steps, CHUNK² work per chunk
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (tests); read at import

try:
    import triton
    import triton.language as tl
    _NO_TRITON = None
except ImportError as err:  # Triton is optional: without it pla runs on the torch backend
    _NO_TRITON = f"triton is not importable ({err})"

    class triton:  # stand-ins so that the kernel definitions below still parse; they are never launched
        jit = staticmethod(lambda fn: fn)
        autotune = staticmethod(lambda **kw: (lambda fn: fn))

    class tl:
        constexpr = None


# ----------------------------------------------------------------------------- Triton kernels

def _configs():
    """Chunk length BT and warps. The interpreter cannot benchmark configs, so it gets one."""
    if _NO_TRITON:
        return []
    if INTERPRET:
        return [triton.Config({"BT": 64}, num_warps=4)]
    return [triton.Config({"BT": bt}, num_warps=nw, num_stages=1) for bt, nw in ((16, 4), (32, 4), (64, 8))]


@triton.jit
def _tile(P, t, T, col, NC):
    """Rows t (< T), columns col (< NC) of a row-major (T, NC) matrix, as fp32; zeros outside."""
    return tl.load(P + t[:, None] * NC + col[None, :], mask=(t[:, None] < T) & (col[None, :] < NC),
                   other=0.).to(tl.float32)


@triton.jit
def _put(P, t, T, col, NC, x):
    tl.store(P + t[:, None] * NC + col[None, :], x.to(P.dtype.element_ty),
             mask=(t[:, None] < T) & (col[None, :] < NC))


@triton.jit
def _weight(W, t, T, HAS_W: tl.constexpr):
    """Per-key weight (BT,): 1 for a real key, 0 for padding and for rows past the end."""
    if HAS_W:
        return tl.load(W + t, mask=t < T, other=0.)
    return (t < T).to(tl.float32)


@triton.jit
def _sq(x, BT: tl.constexpr, F: tl.constexpr):
    """(BT, f) -> (BT, f²): vec(x ⊗ x)/√2, the quadratic piece of φ (x is pre-scaled by f^-¼)."""
    return tl.reshape(x[:, :, None] * x[:, None, :], (BT, F * F)) * 0.7071067811865476


@triton.jit
def _load_state(S, Z, e, DV, F: tl.constexpr, zw):
    """One head's state in the D layout [1, x (f), vec(x⊗x) (f²)] -> its three pieces, columns e
    (and z times zw: 1, or 0 where this block of columns must not count the normaliser again)."""
    c, cc = tl.arange(0, F), tl.arange(0, F * F)
    m = e < DV
    s0 = tl.load(S + e, mask=m, other=0.)                                                   # (BV,)
    s1 = tl.load(S + (1 + c)[:, None] * DV + e[None, :], mask=m[None, :], other=0.)          # (f, BV)
    s2 = tl.load(S + (1 + F + cc)[:, None] * DV + e[None, :], mask=m[None, :], other=0.)     # (f², BV)
    return s0, s1, s2, tl.load(Z) * zw, tl.load(Z + 1 + c) * zw, tl.load(Z + 1 + F + cc) * zw  # (), (f,), (f²,)


@triton.jit
def _store_state(S, Z, s0, s1, s2, z0, z1, z2, e, DV, F: tl.constexpr, has_z):
    c, cc = tl.arange(0, F), tl.arange(0, F * F)
    m = e < DV
    tl.store(S + e, s0, mask=m)
    tl.store(S + (1 + c)[:, None] * DV + e[None, :], s1, mask=m[None, :])
    tl.store(S + (1 + F + cc)[:, None] * DV + e[None, :], s2, mask=m[None, :])
    if has_z:
        tl.store(Z, z0)
        tl.store(Z + 1 + c, z1)
        tl.store(Z + 1 + F + cc, z2)


@triton.jit
def _add(s0, s1, s2, z0, z1, z2, x, x2, g, h, PREC: tl.constexpr):
    """state += φ(x)ᵀ [g, h], piece by piece: x (BT, f), x2 = _sq(x), g (BT, BV), h (BT,).

    Forward: x = k, g = w·v, h = w (the ones column). Backward: x = q, g = dnum, h = dden.
    """
    s1 += tl.dot(tl.trans(x), g, input_precision=PREC)
    s2 += tl.dot(tl.trans(x2), g, input_precision=PREC)
    return (s0 + tl.sum(g, 0), s1, s2,
            z0 + tl.sum(h, 0), z1 + tl.sum(x * h[:, None], 0), z2 + tl.sum(x2 * h[:, None], 0))


@triton.jit
def _read(x, x2, s0, s1, s2, PREC: tl.constexpr):
    """φ(x)·S for every row: (BT, BV)."""
    return s0[None, :] + tl.dot(x, s1, input_precision=PREC) + tl.dot(x2, s2, input_precision=PREC)


@triton.jit
def _grad_phi(x, g, h, s1, s2, z1, z2, BT: tl.constexpr, F: tl.constexpr, PREC: tl.constexpr):
    """∂/∂x of φ(x)·(S g + z h) for every row (x pre-scaled): the across-chunk part of dq and dk.

    φ(x)·r = r0 + x·r1 + vec(x⊗x)·r2/√2, whose gradient is r1 + (R2 + R2ᵀ) x/√2 with R2 = r2 as f×f.
    """
    r1 = tl.dot(g, tl.trans(s1), input_precision=PREC) + h[:, None] * z1[None, :]          # (BT, f)
    r2 = tl.dot(g, tl.trans(s2), input_precision=PREC) + h[:, None] * z2[None, :]          # (BT, f²)
    r2 = tl.reshape(r2, (BT, F, F))
    return r1 + (tl.sum(r2 * x[:, None, :], 2) + tl.sum(r2 * x[:, :, None], 1)) * 0.7071067811865476


@triton.autotune(configs=_configs(), key=["DV", "HAS_W"])
@triton.jit
def _enc_fwd_kernel(KE, VE, W, S_part, Z_part, M, H, DV, SEG, scale,
                    F: tl.constexpr, BV: tl.constexpr, HAS_W: tl.constexpr, PREC: tl.constexpr,
                    BT: tl.constexpr):
    """Step 1: the state of one segment of prefix keys, for one (b, h) and one block of BV columns."""
    iv, sg, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    D = 1 + F + F * F
    t, c, e = tl.arange(0, BT), tl.arange(0, F), iv * BV + tl.arange(0, BV)
    KE, VE, W = KE + bh * M * F, VE + bh * M * DV, W + (bh // H) * M
    s0, s1, s2 = tl.zeros([BV], tl.float32), tl.zeros([F, BV], tl.float32), tl.zeros([F * F, BV], tl.float32)
    z0 = tl.sum(tl.zeros([BT], tl.float32), 0)             # a 0-d fp32 zero: loop-carried values keep their type
    z1, z2 = tl.zeros([F], tl.float32), tl.zeros([F * F], tl.float32)
    for m0 in range(0, SEG, BT):  # rows past M are masked
        tt = sg * SEG + m0 + t
        k = _tile(KE, tt, M, c, F) * scale                  # (BT, f), scaled so that q·k = s
        w = _weight(W, tt, M, HAS_W)                        # (BT,)
        v = _tile(VE, tt, M, e, DV) * w[:, None]            # (BT, BV): a padded key carries nothing
        s0, s1, s2, z0, z1, z2 = _add(s0, s1, s2, z0, z1, z2, k, _sq(k, BT, F), v, w, PREC)
    part = bh * tl.num_programs(1) + sg                     # partial states (B·H, nseg, D, dv), summed by torch
    _store_state(S_part + part * D * DV, Z_part + part * D, s0, s1, s2, z0, z1, z2, e, DV, F, iv == 0)


@triton.autotune(configs=_configs(), key=["DV", "HAS_W"])
@triton.jit
def _fwd_kernel(Q, K, V, W, S_in, Z_in, Y, RDEN, S_out, Z_out, T, H, DV, scale, eps,
                F: tl.constexpr, BV: tl.constexpr, HAS_W: tl.constexpr, PREC: tl.constexpr,
                BT: tl.constexpr):
    """Step 2: causal Based attention from the starting state, for one (b, h) and BV value columns."""
    iv, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    D = 1 + F + F * F
    t, c, e = tl.arange(0, BT), tl.arange(0, F), iv * BV + tl.arange(0, BV)
    causal = t[:, None] >= t[None, :]
    Q, K, W = Q + bh * T * F, K + bh * T * F, W + (bh // H) * T    # this head's rows (pads: its batch row)
    V, Y, RDEN = V + bh * T * DV, Y + bh * T * DV, RDEN + bh * T
    s0, s1, s2, z0, z1, z2 = _load_state(S_in + bh * D * DV, Z_in + bh * D, e, DV, F, 1.)
    for t0 in range(0, T, BT):
        tt = t0 + t
        q, k = _tile(Q, tt, T, c, F) * scale, _tile(K, tt, T, c, F) * scale    # (BT, f)
        w = _weight(W, tt, T, HAS_W)                                            # (BT,)
        v = _tile(V, tt, T, e, DV) * w[:, None]                                 # (BT, BV)
        q2, k2 = _sq(q, BT, F), _sq(k, BT, F)                                   # (BT, f²)
        s = tl.dot(q, tl.trans(k), input_precision=PREC)                       # (BT, BT) = q·k/√f
        a = tl.where(causal, 1 + s + 0.5 * s * s, 0.) * w[None, :]              # φ(q_i)·φ(k_j), j ≤ i
        num = tl.dot(a, v, input_precision=PREC) + _read(q, q2, s0, s1, s2, PREC)               # (BT, BV)
        den = tl.sum(a, 1) + z0 + tl.sum(q * z1[None, :], 1) + tl.sum(q2 * z2[None, :], 1)     # (BT,)
        rden = 1 / (den + eps)
        _put(Y, tt, T, e, DV, num * rden[:, None])
        if iv == 0:
            tl.store(RDEN + tt, rden, mask=tt < T)  # kept for the backward
        s0, s1, s2, z0, z1, z2 = _add(s0, s1, s2, z0, z1, z2, k, k2, v, w, PREC)
    _store_state(S_out + bh * D * DV, Z_out + bh * D, s0, s1, s2, z0, z1, z2, e, DV, F, iv == 0)


# The backward. With dnum_i = dy_i/den_i and dden_i = -(dy_i·y_i)/den_i, PLA's gradient is that of
# unnormalised linear attention on values [w·v, w] with output gradient [dnum, dden]. The dden
# column is the same for every block of value columns: only block 0 adds it (the others load zeros).

@triton.autotune(configs=_configs(), key=["DV", "HAS_W"])
@triton.jit
def _bwd_dq_kernel(Q, K, V, W, S_in, Z_in, DY, RDEN, DDEN, DQ, T, H, DV, scale,
                   F: tl.constexpr, BV: tl.constexpr, HAS_W: tl.constexpr, PREC: tl.constexpr,
                   BT: tl.constexpr):
    """dq: chunks in order, re-building the state; partial over BV columns (summed by torch)."""
    iv, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    first = (iv == 0).to(tl.float32)  # 1 for the block of columns that adds the normaliser's gradient
    D = 1 + F + F * F
    t, c, e = tl.arange(0, BT), tl.arange(0, F), iv * BV + tl.arange(0, BV)
    causal = t[:, None] >= t[None, :]
    Q, K, W = Q + bh * T * F, K + bh * T * F, W + (bh // H) * T
    V, DY, RDEN, DDEN = V + bh * T * DV, DY + bh * T * DV, RDEN + bh * T, DDEN + bh * T
    DQ += (iv * tl.num_programs(1) + bh) * T * F
    s0, s1, s2, z0, z1, z2 = _load_state(S_in + bh * D * DV, Z_in + bh * D, e, DV, F, first)
    for t0 in range(0, T, BT):
        tt = t0 + t
        q, k = _tile(Q, tt, T, c, F) * scale, _tile(K, tt, T, c, F) * scale
        w = _weight(W, tt, T, HAS_W)
        v = _tile(V, tt, T, e, DV) * w[:, None]
        dnum = _tile(DY, tt, T, e, DV) * tl.load(RDEN + tt, mask=tt < T, other=0.)[:, None]  # (BT, BV)
        dden = tl.load(DDEN + tt, mask=tt < T, other=0.) * first                                # (BT,)
        s = tl.dot(q, tl.trans(k), input_precision=PREC)
        ds = tl.dot(dnum, tl.trans(v), input_precision=PREC) + dden[:, None] * w[None, :]     # ∂L/∂a_ij
        ds = tl.where(causal, ds * (1 + s), 0.)                                                # ∂L/∂s_ij
        dq = tl.dot(ds, k, input_precision=PREC) + _grad_phi(q, dnum, dden, s1, s2, z1, z2, BT, F, PREC)
        _put(DQ, tt, T, c, F, dq * scale)
        s0, s1, s2, z0, z1, z2 = _add(s0, s1, s2, z0, z1, z2, k, _sq(k, BT, F), v, w, PREC)


@triton.autotune(configs=_configs(), key=["DV", "HAS_W"])
@triton.jit
def _bwd_dkv_kernel(Q, K, V, W, DY, RDEN, DDEN, dS_in, dZ_in, DK, DVAL, dS_out, dZ_out, T, H, DV, scale,
                    F: tl.constexpr, BV: tl.constexpr, HAS_W: tl.constexpr, PREC: tl.constexpr,
                    BT: tl.constexpr):
    """dk (partial over BV columns) and dv: chunks in reverse, carrying dS = Σ_{later i} φ(q_i) dnum_iᵀ.

    Starts from the gradient of the final state; ends with the gradient of the starting state.
    """
    iv, bh = tl.program_id(0), tl.program_id(1).to(tl.int64)
    first = (iv == 0).to(tl.float32)  # 1 for the block of columns that adds the normaliser's gradient
    D = 1 + F + F * F
    t, c, e = tl.arange(0, BT), tl.arange(0, F), iv * BV + tl.arange(0, BV)
    causal = t[:, None] >= t[None, :]
    Q, K, W = Q + bh * T * F, K + bh * T * F, W + (bh // H) * T
    V, DY, RDEN, DDEN = V + bh * T * DV, DY + bh * T * DV, RDEN + bh * T, DDEN + bh * T
    DK, DVAL = DK + (iv * tl.num_programs(1) + bh) * T * F, DVAL + bh * T * DV
    d0, d1, d2, y0, y1, y2 = _load_state(dS_in + bh * D * DV, dZ_in + bh * D, e, DV, F, first)
    n = tl.cdiv(T, BT)
    for i in range(0, n):
        tt = (n - 1 - i) * BT + t
        q, k = _tile(Q, tt, T, c, F) * scale, _tile(K, tt, T, c, F) * scale
        w = _weight(W, tt, T, HAS_W)
        v = _tile(V, tt, T, e, DV) * w[:, None]
        dnum = _tile(DY, tt, T, e, DV) * tl.load(RDEN + tt, mask=tt < T, other=0.)[:, None]
        dden = tl.load(DDEN + tt, mask=tt < T, other=0.) * first
        q2, k2 = _sq(q, BT, F), _sq(k, BT, F)
        s = tl.dot(q, tl.trans(k), input_precision=PREC)
        a = tl.where(causal, 1 + s + 0.5 * s * s, 0.)
        ds = tl.dot(dnum, tl.trans(v), input_precision=PREC) + dden[:, None] * w[None, :]
        ds = tl.where(causal, ds * (1 + s), 0.)
        dk = tl.dot(tl.trans(ds), q, input_precision=PREC) + _grad_phi(k, v, w, d1, d2, y1, y2, BT, F, PREC)
        dv = tl.dot(tl.trans(a), dnum, input_precision=PREC) + _read(k, k2, d0, d1, d2, PREC)
        _put(DK, tt, T, c, F, dk * scale)
        _put(DVAL, tt, T, e, DV, dv * w[:, None])
        d0, d1, d2, y0, y1, y2 = _add(d0, d1, d2, y0, y1, y2, q, q2, dnum, dden, PREC)
    _store_state(dS_out + bh * D * DV, dZ_out + bh * D, d0, d1, d2, y0, y1, y2, e, DV, F, iv == 0)


@triton.autotune(configs=_configs(), key=["DV", "HAS_W"])
@triton.jit
def _enc_bwd_kernel(KE, VE, W, dS, dZ, DKE, DVE, M, H, DV, SEG, scale,
                    F: tl.constexpr, BV: tl.constexpr, HAS_W: tl.constexpr, PREC: tl.constexpr,
                    BT: tl.constexpr):
    """Step 3: the prefix keys read the gradient of the starting state; no order, segments in parallel."""
    iv, sg, bh = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    first = (iv == 0).to(tl.float32)
    D = 1 + F + F * F
    t, c, e = tl.arange(0, BT), tl.arange(0, F), iv * BV + tl.arange(0, BV)
    KE, VE, W, DVE = KE + bh * M * F, VE + bh * M * DV, W + (bh // H) * M, DVE + bh * M * DV
    DKE += (iv * tl.num_programs(2) + bh) * M * F
    d0, d1, d2, y0, y1, y2 = _load_state(dS + bh * D * DV, dZ + bh * D, e, DV, F, first)
    for m0 in range(0, SEG, BT):  # rows past M are masked
        tt = sg * SEG + m0 + t
        k = _tile(KE, tt, M, c, F) * scale
        w = _weight(W, tt, M, HAS_W)
        v = _tile(VE, tt, M, e, DV) * w[:, None]
        _put(DKE, tt, M, c, F, _grad_phi(k, v, w, d1, d2, y1, y2, BT, F, PREC) * scale)
        _put(DVE, tt, M, e, DV, _read(k, _sq(k, BT, F), d0, d1, d2, PREC) * w[:, None])


# ----------------------------------------------------------------------------- autograd and dispatch

def _blocks(dv, M, BH, device):
    """BV value columns per program (the f²×BV fp32 state piece must fit in registers: 32 KB at 32, as
    in fla's fused_chunk_based), and the prefix segment per program: enough programs to fill the GPU,
    no more, since each one writes a D×dv partial state."""
    BV = 16 if dv <= 16 else 32
    NV = triton.cdiv(dv, BV)
    want = 8 if INTERPRET else 4 * torch.cuda.get_device_properties(device).multi_processor_count
    nseg = max(1, min(triton.cdiv(M, 64), want // (BH * NV)))
    seg = max(64, triton.cdiv(triton.cdiv(M, nseg), 64) * 64)  # a multiple of every BT in _configs
    return BV, NV, seg, triton.cdiv(M, seg)


class _PLA(torch.autograd.Function):
    """y, S, z = PLA(q, k, v, k_enc, v_enc, S0, z0) with the Triton kernels; keep / keep_enc are the
    (B, T) / (B, M) fp32 key weights (1 real, 0 pad) or None, and get no gradient."""

    @staticmethod
    def forward(ctx, q, k, v, k_enc, v_enc, S0, z0, keep, keep_enc):
        B, H, T, f = q.shape
        dv, D, M = v.shape[-1], 1 + f + f * f, 0 if k_enc is None else k_enc.shape[2]
        BV, NV, seg, nseg = _blocks(dv, M, B * H, q.device)
        kw = dict(F=f, BV=BV, PREC="ieee" if q.dtype == v.dtype == torch.float32 else "tf32")  # 16-bit in: TF32 dots
        dummy = q  # pointer for an absent pad mask (HAS_W=False: never read)
        S = q.new_zeros(B, H, D, dv, dtype=torch.float32) if S0 is None else S0.float().contiguous()
        z = q.new_zeros(B, H, D, dtype=torch.float32) if z0 is None else z0.float().contiguous()
        if M > 0:  # 1. the prefix, reduced into partial states in parallel
            S_part = q.new_empty(B * H, nseg, D, dv, dtype=torch.float32)
            z_part = q.new_empty(B * H, nseg, D, dtype=torch.float32)
            _enc_fwd_kernel[(NV, nseg, B * H)](k_enc, v_enc, dummy if keep_enc is None else keep_enc, S_part,
                                               z_part, M, H, dv, seg, f ** -0.25, HAS_W=keep_enc is not None, **kw)
            S = S + S_part.sum(1).view(B, H, D, dv)
            z = z + z_part.sum(1).view(B, H, D)
        y, rden = torch.empty_like(v), q.new_empty(B, H, T, dtype=torch.float32)
        S_out, z_out = torch.empty_like(S), torch.empty_like(z)
        _fwd_kernel[(NV, B * H)](q, k, v, dummy if keep is None else keep, S, z, y, rden, S_out, z_out,
                                 T, H, dv, f ** -0.25, EPS, HAS_W=keep is not None, **kw)
        ctx.save_for_backward(q, k, v, k_enc, v_enc, keep, keep_enc, S, z, y, rden)
        ctx.has_state, ctx.blocks, ctx.kw = S0 is not None, (BV, NV, seg, nseg), kw
        return y, S_out, z_out

    @staticmethod
    def backward(ctx, dy, dS_out, dz_out):
        q, k, v, k_enc, v_enc, keep, keep_enc, S, z, y, rden = ctx.saved_tensors
        B, H, T, f = q.shape
        dv, M = v.shape[-1], 0 if k_enc is None else k_enc.shape[2]
        (_, NV, seg, nseg), kw, dummy = ctx.blocks, ctx.kw, q
        dy = dy.contiguous()
        dden = -(dy.float() * y.float()).sum(-1) * rden      # (B, H, T): ∂L/∂den, the ones column's gradient
        dS_out = torch.zeros_like(S) if dS_out is None else dS_out.float().contiguous()
        dz_out = torch.zeros_like(z) if dz_out is None else dz_out.float().contiguous()
        dq = q.new_empty(NV, B, H, T, f, dtype=torch.float32)
        dk, dv_ = torch.empty_like(dq), torch.empty_like(v)
        dS, dz = torch.empty_like(S), torch.empty_like(z)    # gradient of the starting state (prefix included)
        w = dummy if keep is None else keep
        _bwd_dq_kernel[(NV, B * H)](q, k, v, w, S, z, dy, rden, dden, dq, T, H, dv, f ** -0.25,
                                    HAS_W=keep is not None, **kw)
        _bwd_dkv_kernel[(NV, B * H)](q, k, v, w, dy, rden, dden, dS_out, dz_out, dk, dv_, dS, dz,
                                     T, H, dv, f ** -0.25, HAS_W=keep is not None, **kw)
        dke = dve = None
        if M > 0:
            dke, dve = k_enc.new_empty(NV, B, H, M, f, dtype=torch.float32), torch.empty_like(v_enc)
            _enc_bwd_kernel[(NV, nseg, B * H)](k_enc, v_enc, dummy if keep_enc is None else keep_enc, dS, dz,
                                               dke, dve, M, H, dv, seg, f ** -0.25,
                                               HAS_W=keep_enc is not None, **kw)
            dke = dke.sum(0).to(k_enc.dtype)
        state_grads = (dS, dz) if ctx.has_state else (None, None)
        return dq.sum(0).to(q.dtype), dk.sum(0).to(k.dtype), dv_, dke, dve, *state_grads, None, None


def _why_not_triton(q, k, v, k_enc, v_enc):
    """None if the Triton kernels can run on these tensors, else the reason."""
    if _NO_TRITON:
        return _NO_TRITON
    if not (q.is_cuda or INTERPRET):
        return f"the tensors are on {q.device}; the kernels need CUDA (or TRITON_INTERPRET=1 to run on CPU)"
    if q.shape[-1] != 16:  # f² = 256 rows of the state piece Σ (k⊗k) vᵀ sit in registers; other f use torch
        return f"f = {q.shape[-1]}, but the kernels are written for f = 16 (the papers' value)"
    dtypes = {x.dtype for x in (q, k, v, k_enc, v_enc) if x is not None}
    if not dtypes <= {torch.float32, torch.bfloat16, torch.float16}:  # loaded as is, computed in fp32
        return f"dtypes {sorted(map(str, dtypes))}: the kernels take float32, bfloat16 and float16"
    return None


def pla(q, k, v, k_enc=None, v_enc=None, *, state=None, pad_mask=None, enc_pad_mask=None,
        return_state=False, backend="auto"):
    """Prefix linear attention. q, k (B,H,T,f); v (B,H,T,dv); k_enc (B,H,M,f); v_enc (B,H,M,dv).

    state: optional starting (S (B,H,D,dv), z (B,H,D)), e.g. the state of an earlier prefill.
    Returns y (B,H,T,dv) in v's dtype, and with return_state also the fp32 state after the last token.
    backend: "torch" (chunked, O(T)), "triton" (the kernels above), "auto" (Triton for CUDA tensors when
    it can run, else torch). pad_mask / enc_pad_mask: True where a key is padding; not differentiable.
    """
    _check(q, k, v, k_enc, v_enc, state, pad_mask, enc_pad_mask)
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton'; got {backend!r}")
    why = _why_not_triton(q, k, v, k_enc, v_enc)
    if backend == "triton" and why:
        raise ValueError(f"backend='triton' cannot run: {why}. Use backend='torch' or 'auto'.")
    if why or backend == "torch" or (backend == "auto" and not q.is_cuda):  # interpreted kernels only on request
        return _pla_torch(q, k, v, k_enc, v_enc, state, pad_mask, enc_pad_mask, return_state)
    return _pla_triton(q, k, v, k_enc, v_enc, state, pad_mask, enc_pad_mask, return_state)


@torch.compiler.disable  # torch.compile runs around the kernels (a graph break), not through them
def _pla_triton(q, k, v, k_enc, v_enc, state, pad_mask, enc_pad_mask, return_state):
    if k_enc is not None and k_enc.shape[2] == 0:  # M = 0: plain Based attention
        k_enc = v_enc = enc_pad_mask = None
    keep = None if pad_mask is None else (~pad_mask).float().contiguous()              # (B, T)
    keep_enc = None if enc_pad_mask is None else (~enc_pad_mask).float().contiguous()  # (B, M)
    enc = (None, None) if k_enc is None else (k_enc.contiguous(), v_enc.contiguous())
    S0, z0 = (None, None) if state is None else state
    y, S, z = _PLA.apply(q.contiguous(), k.contiguous(), v.contiguous(), *enc, S0, z0, keep, keep_enc)
    return (y, (S, z)) if return_state else y


# ----------------------------------------------------------------------------- the torch forms

def feature_map(x):
    """Taylor (2nd order) feature map φ: (..., f) -> (..., 1 + f + f²)."""
    f = x.shape[-1]
    x2 = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)  # (..., f²), full outer product, duplicates kept
    return torch.cat([torch.ones_like(x[..., :1]), x / f ** 0.25, x2 / (math.sqrt(2) * math.sqrt(f))], dim=-1)


def _taylor(s):
    return 1 + s + 0.5 * s * s  # = φ(q)·φ(k) given s = q·k/√f; ≥ 1/2, so the normaliser never vanishes


def _check(q, k, v, k_enc, v_enc, state, pad_mask, enc_pad_mask):
    """Clear errors for shapes a user can get wrong (instead of a broadcast error deep inside torch)."""
    if q.dim() != 4 or k.shape != q.shape:
        raise ValueError(f"q and k must both be (B, H, T, f); got q {tuple(q.shape)}, k {tuple(k.shape)}")
    B, H, T, f = q.shape
    if v.dim() != 4 or v.shape[:3] != (B, H, T):
        raise ValueError(f"v must be (B, H, T, dv) = ({B}, {H}, {T}, dv); got {tuple(v.shape)}")
    dv, D = v.shape[-1], 1 + f + f * f
    if (k_enc is None) != (v_enc is None):
        raise ValueError("k_enc and v_enc must be given together (or both None)")
    if k_enc is not None:
        M = k_enc.shape[2] if k_enc.dim() == 4 else -1
        if k_enc.shape != (B, H, M, f) or v_enc.shape != (B, H, M, dv) or M > T:
            raise ValueError(f"k_enc must be (B, H, M, f) and v_enc (B, H, M, dv) with M <= T = {T}; "
                             f"got k_enc {tuple(k_enc.shape)}, v_enc {tuple(v_enc.shape)}")
        if enc_pad_mask is not None and enc_pad_mask.shape != (B, M):
            raise ValueError(f"enc_pad_mask must be (B, M) = ({B}, {M}); got {tuple(enc_pad_mask.shape)}")
    elif enc_pad_mask is not None:
        raise ValueError("enc_pad_mask was given without k_enc / v_enc")
    if pad_mask is not None and pad_mask.shape != (B, T):
        raise ValueError(f"pad_mask must be (B, T) = ({B}, {T}); got {tuple(pad_mask.shape)}")
    if state is not None:
        S, z = state
        if S.shape != (B, H, D, dv) or z.shape != (B, H, D):
            raise ValueError(f"state must be (S (B, H, D, dv), z (B, H, D)) with D = 1+f+f² = {D}; "
                             f"got S {tuple(S.shape)}, z {tuple(z.shape)}")


def _keep(mask, like):
    """(B, N) True-where-padding mask -> (B, 1, N, 1) float weight, 1 for real keys (None if no mask)."""
    return None if mask is None else (~mask)[:, None, :, None].to(like.dtype)


def _pla_torch(q, k, v, k_enc, v_enc, state, pad_mask, enc_pad_mask, return_state, chunk=CHUNK):
    """Chunked O(T) form: encoder reduction into a state, then causal chunks carrying the state.

    Inside a chunk the scores come from s = q·kᵀ/√f as 1 + s + s²/2 (no D-dim features needed);
    across chunks through the state S = Σ φ(k) vᵀ, z = Σ φ(k). Accumulation in fp32 (fp64 stays fp64).
    """
    B, H, T, f = q.shape
    dv, D = v.shape[-1], 1 + f + f * f
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    if state is None:
        S = q.new_zeros(B, H, D, dv)
        z = q.new_zeros(B, H, D)
    else:
        S, z = state[0].to(acc), state[1].to(acc)
    if k_enc is not None:  # 1. the encoder: a parallel reduction over the M prefix keys, in chunks
        w = _keep(enc_pad_mask, q)
        for c in range(0, k_enc.shape[2], chunk):
            phi = feature_map(k_enc[:, :, c:c + chunk].to(acc))  # (B, H, C, D)
            ve = v_enc[:, :, c:c + chunk].to(acc)                # (B, H, C, dv)
            if w is not None:
                phi = phi * w[:, :, c:c + chunk]
            S = S + phi.transpose(-1, -2) @ ve                    # (B, H, D, dv)
            z = z + phi.sum(2)                                    # (B, H, D)
    w = _keep(pad_mask, q)
    ys = []
    for c in range(0, T, chunk):  # 2. causal Based attention from that state
        qc, kc, vc = q[:, :, c:c + chunk], k[:, :, c:c + chunk], v[:, :, c:c + chunk]
        n = qc.shape[2]
        a = _taylor(qc @ kc.transpose(-1, -2) / math.sqrt(f))             # (B, H, C, C)
        a = a * torch.ones(n, n, dtype=torch.bool, device=q.device).tril()  # causal inside the chunk
        if w is not None:
            a = a * w[:, :, c:c + chunk].transpose(-1, -2)                 # padded keys count zero
        phq = feature_map(qc)                                              # (B, H, C, D)
        num = phq @ S + a @ vc                                             # (B, H, C, dv)
        den = phq @ z.unsqueeze(-1) + a.sum(-1, keepdim=True)              # (B, H, C, 1)
        ys.append(num / (den + EPS))
        phk = feature_map(kc)
        if w is not None:
            phk = phk * w[:, :, c:c + chunk]
        S = S + phk.transpose(-1, -2) @ vc
        z = z + phk.sum(2)
    y = torch.cat(ys, dim=2).to(out_dtype) if ys else v.new_zeros(B, H, 0, dv, dtype=out_dtype)
    return (y, (S, z)) if return_state else y


def pla_step(q, k, v, state):
    """One decode token: q, k (B,H,f), v (B,H,dv), state (S (B,H,D,dv), z (B,H,D)) -> (y (B,H,dv), state).

    Decoding is plain causal linear attention with the decoder projections (the prefix is already
    inside S, z). The new key is added before reading, as in the parallel form (j ≤ i).

    This stays PyTorch on CUDA too (issue 3: a fused kernel only if it measurably beats PyTorch). A
    fused step would read and write S once where this moves it about five times (the outer-product
    temporary included): worth trying where decode is memory-bound (large batch), but no GPU was at
    hand to measure it when the kernels were written.
    """
    S, z = state
    acc = S.dtype
    phq, phk = feature_map(q.to(acc)), feature_map(k.to(acc))  # (B, H, D)
    S = S + phk.unsqueeze(-1) * v.to(acc).unsqueeze(-2)         # (B, H, D, dv)
    z = z + phk
    num = (phq.unsqueeze(-2) @ S).squeeze(-2)                   # (B, H, dv)
    den = (phq * z).sum(-1, keepdim=True)                       # (B, H, 1)
    return (num / (den + EPS)).to(v.dtype), (S, z)


def pla_reference(q, k, v, k_enc=None, v_enc=None, *, state=None, pad_mask=None, enc_pad_mask=None):
    """The quadratic form, straight from the equation: materialises φ and the T×T and T×M scores.

    Ground truth for the tests only (memory O(T·(T + M + D))). Returns y and the final state.
    """
    B, H, T, f = q.shape
    phq, phk = feature_map(q), feature_map(k)                                   # (B, H, T, D)
    a = (phq @ phk.transpose(-1, -2)).tril()                                    # (B, H, T, T), j ≤ i
    keep = torch.ones(B, 1, T, 1, dtype=q.dtype) if pad_mask is None else _keep(pad_mask, q)
    a = a * keep.transpose(-1, -2)
    num, den = a @ v, a.sum(-1)
    S = (phk * keep).transpose(-1, -2) @ v                                      # (B, H, D, dv)
    z = (phk * keep).sum(2)                                                     # (B, H, D)
    if k_enc is not None:
        phe = feature_map(k_enc)                                                # (B, H, M, D)
        if enc_pad_mask is not None:
            phe = phe * _keep(enc_pad_mask, q)
        ae = phq @ phe.transpose(-1, -2)                                        # (B, H, T, M), no mask: non-causal
        num, den = num + ae @ v_enc, den + ae.sum(-1)
        S, z = S + phe.transpose(-1, -2) @ v_enc, z + phe.sum(2)
    if state is not None:
        num, den = num + phq @ state[0], den + (phq @ state[1].unsqueeze(-1)).squeeze(-1)
        S, z = S + state[0], z + state[1]
    return num / (den.unsqueeze(-1) + EPS), (S, z)


def pla_flop(T, M, f=16, dv=64, C=64):
    """Forward FLOP of PLA per head with C-token chunks, D = 1 + f + f². Per query/key (= 81.7k at f 16, dv 64):
         2C(f + dv) + 4C    inside its chunk: s = q·kᵀ and a·v, then 1 + s + s²/2 and the row sum
         2·D·dv + 2·D       read the state: φ(q)·S, φ(q)·z
         2·D·dv + D         write the state: S += φ(k) vᵀ, z += φ(k)
         2·f²               the outer products of φ(q) and φ(k)
       per prefix key (= 35.5k): 2·D·dv + D + f², the encoder's reduction into S, z.
    So SPEC §9's ≈ 81.7k·T + 35.5k·M; at T = 32k, M = 16k, B·H = 256 that is 0.83 TFLOP."""
    D = 1 + f + f * f
    return (2 * C * (f + dv) + 4 * C + 4 * D * dv + 3 * D + 2 * f * f) * T + (2 * D * dv + D + f * f) * M
