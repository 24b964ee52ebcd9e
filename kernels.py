"""
Prefix linear attention (PLA), the mixer of JRT-RNN, and its special case causal Based linear attention.

Symbols (../README.md has the glossary): B batch, H heads, T sequence length, M prefix (encoder)
length, f feature dim of q and k, D = 1 + f + f² the Taylor feature dim, dv value dim per head,
s = q·k/√f, φ the Taylor feature map, C the chunk length of the chunked forms.

The math (JRT paper, PLA equations):

    φ(x) = [1, x / f^¼, vec(x ⊗ x) / (√2·√f)]            so  φ(q)·φ(k) = 1 + s + s²/2

    y_i = φ(q_i)·(S0 + Σ_{j≤i} φ(k_j) v_jᵀ + Σ_{j<M} φ(ke_j) ve_jᵀ)
          ------------------------------------------------------------
          φ(q_i)·(z0 + Σ_{j≤i} φ(k_j)      + Σ_{j<M} φ(ke_j))

The encoder sums (over the M prefix positions, read non-causally) are just a starting state
S_e, z_e for ordinary causal linear attention. So PLA = "reduce the prefix into a state, then run
causal Based attention from it". With M = 0 and no starting state this is plain Based attention.

The Triton algorithm (backend="triton", f = 16), per head; the state [S, z] is one (D, dv + 1) fp32
matrix, z its last column, and w = 0 marks a pad:
  1. encoder: S_e = Σ_j w_j φ(ke_j) ve_jᵀ, z_e = Σ_j w_j φ(ke_j), a parallel reduction: the M keys are cut
     into segments, one program per segment and block of value columns; torch sums the partial states.
  2. decoder: T/C chunks in order, carrying the state, one program per block of value columns. Inside a
     chunk the scores come from s = q·kᵀ as 1 + s + s²/2 (causal); across chunks from φ(q)·state. φ is
     never stored: its f² piece is built where it is used, f²/NS rows at a time. The normaliser comes
     out of the same pass: z's f² piece is kept as an f×f matrix Z, so φ(q)·z = z₀ + q̃·z₁ + q̃ᵀZq̃/√2
     costs two f-wide products a chunk, and every block computes it.
  3. backward: the normaliser is one more value column (values g = w·[v, 1], output gradient
     G = [dy/den, dden]). The gradient inside each chunk (chunks in parallel; it also computes dden),
     then two sweeps through the state, one forward for dq (re-building the state), one in reverse for
     dk, dv (carrying dS = Σ_{later i} φ(q_i) G_iᵀ); the encoder keys then read dS. A sweep program owns
     16 columns and writes its own partial of dq, dk: no atomics, summed in a fixed order.
bf16 products (fp32 sums) for 16-bit inputs, fp32 products for fp32 inputs. For bf16 a program is one
warpgroup (4 warps): a 64-row MMA tile belongs to one warpgroup, and a second one would repeat it. The
next chunk's loads are in flight while a chunk computes (num_stages 2). Compiled for an H100 or an A100,
no kernel spills registers (triton 3.9; 3.6 spills a few bytes with pad masks) and each fits at least
twice on an SM; `python bench.py --suite compile` shows it, no GPU needed. FLOP: pla_flop.

Public API (layout (B, H, T, ·) everywhere):
    feature_map(x)                       (..., f) -> (..., D)
    pla(q, k, v, k_enc, v_enc, ...)      the parallel (prefill / training) form; backend torch or triton
    pla_step(q, k, v, state)             one decode token
    pla_reference(...)                   the quadratic form written straight from the equation (tests)

Padding: `pad_mask` (B, T) and `enc_pad_mask` (B, M) are True where a key is padding. Padded keys
add nothing to any sum. (Zeroing k is not enough: φ(0) = [1, 0, ...] still adds 1 to the
normaliser, which is what the official code does.)
"""

import math
import os

import torch

EPS = 1e-12  # added to the normaliser, as in the official code; it only matters for rows with no keys

CHUNK = 64   # chunk length of the chunked torch form: T/CHUNK serial steps, CHUNK² work per chunk

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (tests); read at import


# ----------------------------------------------------------------------------- the feature map

def feature_map(x):
    """Taylor (2nd order) feature map φ: (..., f) -> (..., 1 + f + f²)."""
    f = x.shape[-1]
    x2 = (x.unsqueeze(-1) * x.unsqueeze(-2)).flatten(-2)  # (..., f²), full outer product, duplicates kept
    return torch.cat([torch.ones_like(x[..., :1]), x / f ** 0.25, x2 / (math.sqrt(2) * math.sqrt(f))], dim=-1)


def _taylor(s):
    return 1 + s + 0.5 * s * s  # = φ(q)·φ(k) given s = q·k/√f; ≥ 1/2, so the normaliser never vanishes


# ----------------------------------------------------------------------------- the quadratic reference

def _keep(mask, like):
    """(B, N) True-where-padding mask -> (B, 1, N, 1) float weight, 1 for real keys (None if no mask)."""
    return None if mask is None else (~mask)[:, None, :, None].to(like.dtype)


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
        ae = phq @ phe.transpose(-1, -2)                         # (B, H, T, M), no mask: non-causal
        num, den = num + ae @ v_enc, den + ae.sum(-1)
        S, z = S + phe.transpose(-1, -2) @ v_enc, z + phe.sum(2)
    if state is not None:
        num, den = num + phq @ state[0], den + (phq @ state[1].unsqueeze(-1)).squeeze(-1)
        S, z = S + state[0], z + state[1]
    return num / (den.unsqueeze(-1) + EPS), (S, z)


# ----------------------------------------------------------------------------- the chunked PyTorch form

def _pla_torch(q, k, v, k_enc, v_enc, state, pad_mask, enc_pad_mask, return_state, chunk=CHUNK):
    """Chunked O(T) form: encoder reduction into a state, then causal chunks carrying the state.

    Inside a chunk the scores come from s = q·kᵀ/√f as 1 + s + s²/2 (no D-dim features needed);
    across chunks through the state S = Σ φ(k) vᵀ, z = Σ φ(k). Accumulation in fp32 (fp64 stays fp64).
    """
    B, H, T, f = q.shape
    dv, D = v.shape[-1], 1 + f + f * f
    out_dtype, acc = v.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v = q.to(acc), k.to(acc), v.to(acc)
    if state is None:  # an empty state (read below only once a key has been added: `empty`)
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
    empty = state is None and k_enc is None    # S = z = 0 until the first chunk's keys are added
    ys = []
    for c in range(0, T, chunk):  # 2. causal Based attention from that state
        qc, kc, vc = q[:, :, c:c + chunk], k[:, :, c:c + chunk], v[:, :, c:c + chunk]
        n = qc.shape[2]
        a = _taylor(qc @ kc.transpose(-1, -2) / math.sqrt(f))             # (B, H, C, C)
        a = a * torch.ones(n, n, dtype=torch.bool, device=q.device).tril()  # causal inside the chunk
        if w is not None:
            a = a * w[:, :, c:c + chunk].transpose(-1, -2)                 # padded keys count zero
        num, den = a @ vc, a.sum(-1, keepdim=True)                         # (B, H, C, dv), (B, H, C, 1)
        if not empty:                                                      # the state of the earlier keys
            phq = feature_map(qc)                                          # (B, H, C, D)
            num, den = num + phq @ S, den + phq @ z.unsqueeze(-1)
        ys.append(num / (den + EPS))
        if c + chunk >= T and not return_state:  # the last chunk: its keys go into a state no one reads
            break
        empty = False
        phk = feature_map(kc)
        if w is not None:
            phk = phk * w[:, :, c:c + chunk]
        S = S + phk.transpose(-1, -2) @ vc
        z = z + phk.sum(2)
    y = torch.cat(ys, dim=2).to(out_dtype) if ys else v.new_zeros(B, H, 0, dv, dtype=out_dtype)
    return (y, (S, z)) if return_state else y


def pla_flop(T, M, f=16, dv=64, C=64):
    """Forward FLOP of PLA per head with C-token chunks, D = 1 + f + f². Per query/key (81.7k at f 16, dv 64):
         2C(f + dv) + 4C    inside its chunk: s = q·kᵀ and a·v, then 1 + s + s²/2 and the row sum
         2·D·dv + 2·D       read the state: φ(q)·S, φ(q)·z
         2·D·dv + D         write the state: S += φ(k) vᵀ, z += φ(k)
         2·f²               the outer products of φ(q) and φ(k)
       per prefix key (= 35.5k): 2·D·dv + D + f², the encoder's reduction into S, z.
    So ≈ 81.7k·T + 35.5k·M; at the JRT paper's throughput shape (Table 5: T = 32k, M = 16k, B·H = 256)
    that is 0.83 TFLOP."""
    D = 1 + f + f * f
    return (2 * C * (f + dv) + 4 * C + 4 * D * dv + 3 * D + 2 * f * f) * T + (2 * D * dv + D + f * f) * M


# ----------------------------------------------------------------------------- the decode step

def pla_step(q, k, v, state):
    """One decode token: q, k (B,H,f), v (B,H,dv), state (S (B,H,D,dv), z (B,H,D)) -> (y (B,H,dv), state).

    Decoding is plain causal linear attention with the decoder projections (the prefix is already
    inside S, z). The new key is added before reading, as in the parallel form (j ≤ i).

    This stays PyTorch on CUDA too: a fused step would move S once where this moves it about five times,
    worth trying where decode is memory-bound (large batch), once a GPU can measure it.
    """
    if q.dim() != 3 or k.shape != q.shape:
        raise ValueError(f"q and k must both be (B, H, f), one token; "
                         f"got q {tuple(q.shape)}, k {tuple(k.shape)}")
    B, H, f = q.shape
    if v.dim() != 3 or v.shape[:2] != (B, H):
        raise ValueError(f"v must be (B, H, dv) = ({B}, {H}, dv); got {tuple(v.shape)}")
    _check_state(state, B, H, 1 + f + f * f, v.shape[-1])
    S, z = state
    acc = S.dtype
    phq, phk = feature_map(q.to(acc)), feature_map(k.to(acc))  # (B, H, D)
    S = S + phk.unsqueeze(-1) * v.to(acc).unsqueeze(-2)         # (B, H, D, dv)
    z = z + phk
    num = (phq.unsqueeze(-2) @ S).squeeze(-2)                   # (B, H, dv)
    den = (phq * z).sum(-1, keepdim=True)                       # (B, H, 1)
    return (num / (den + EPS)).to(v.dtype), (S, z)


# ----------------------------------------------------------------------------- dispatch

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
    for name, m in (("pad_mask", pad_mask), ("enc_pad_mask", enc_pad_mask)):
        if m is not None and m.dtype != torch.bool:  # a float 0/1 mask would be read the wrong way round
            raise ValueError(f"{name} must be a bool tensor (True where a key is padding); "
                             f"got dtype {m.dtype}")
    if state is not None:
        _check_state(state, B, H, D, dv)


def _check_state(state, B, H, D, dv):
    S, z = state
    if S.shape != (B, H, D, dv) or z.shape != (B, H, D):
        raise ValueError(f"state must be (S (B, H, D, dv), z (B, H, D)) = "
                         f"(({B}, {H}, {D}, {dv}), ({B}, {H}, {D})) "
                         f"with D = 1+f+f²; got S {tuple(S.shape)}, z {tuple(z.shape)}")


def _why_not_triton(q, k, v, k_enc, v_enc):
    """None if the Triton kernels can run on these tensors, else the reason."""
    if _NO_TRITON:
        return _NO_TRITON
    if not (q.is_cuda or INTERPRET):
        return f"the tensors are on {q.device}; the kernels need CUDA (or TRITON_INTERPRET=1 to run on CPU)"
    if q.shape[-1] != 16:  # the kernels' tiles are sized for f² = 256 rows of state; other f use torch
        return f"f = {q.shape[-1]}, but the kernels are written for f = 16 (the papers' value)"
    dtypes = {x.dtype for x in (q, k, v, k_enc, v_enc) if x is not None}
    if not dtypes <= {torch.float32, torch.bfloat16, torch.float16}:
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
    if why or backend == "torch" or (backend == "auto" and not q.is_cuda):  # interpreter only on request
        return _pla_torch(q, k, v, k_enc, v_enc, state, pad_mask, enc_pad_mask, return_state)
    return _pla_triton(q, k, v, k_enc, v_enc, state, pad_mask, enc_pad_mask, return_state)


# ----------------------------------------------------------------------------- the Triton kernels

try:
    import triton
    import triton.language as tl
    _NO_TRITON = None
except ImportError as err:  # Triton is optional: without it pla runs on the torch backend
    _NO_TRITON = f"triton is not importable ({err})"

    class triton:  # stand-ins so that the kernel definitions below still parse; they are never launched
        jit = staticmethod(lambda fn: fn)

    class tl:
        constexpr = None


# Inside the kernels (f = 16): x̃ = x·f^-¼ (exact in bf16: f^-¼ = 1/2), so s = q̃·k̃ and φ(x) = [1, x̃, P(x)]
# with P(x) = vec(x̃ ⊗ x̃)/√2; the state's rows [1, x̃, P(x)] are S₀, S₁, S₂. A program owns BV columns of
# the state, S₂ as NS slices of f²/NS rows; no tile is larger than BT × f²/NS. With 16-bit inputs the
# products' operands are bf16 (q̃, k̃, v, the chunk's scores, P(x), the fp32 state where it is read).


def _tiles(low):
    """Chunk length BT, value columns BV a program, the f² rows' slice count NS and warps, for bf16 (low) or
    fp32 products: tiles that compile without register spills for sm_90 and sm_80 (bench.py --suite
    compile). bf16: 4 warps, one warpgroup, since a 64-row wgmma tile belongs to one warpgroup and an 8-warp
    CTA issues every MMA twice. BV 16: the f²×BV fp32 state leaves registers for the chunk's tiles."""
    if low:
        return dict(BT=64, BV=16, NS=4, num_warps=4, num_stages=2)
    return dict(BT=16, BV=16, NS=8, num_warps=8, num_stages=1)  # fp32: no wgmma, 8 warps share the work


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
    tl.store(P + t[:, None] * NC + col[None, :], x.to(P.dtype.element_ty),
             mask=(t[:, None] < T) & (col[None, :] < NC))


@triton.jit
def _x(X, t, T, scale, F: tl.constexpr):
    """x̃ = x·f^-¼ at rows t: (BT, f) fp32; the φ slices of _P and _PT are built from it in registers."""
    return _load(X, t, T, tl.arange(0, F), F).to(tl.float32) * scale


@triton.jit
def _cols(x, p, A: tl.constexpr, F: tl.constexpr):
    """Columns [pA, pA + A) of a (BT, f) register tile: (BT, A), picked in registers, not re-read."""
    x3 = tl.reshape(x, (x.shape[0], F // A, A))                                               # (BT, NS, A)
    return tl.sum(tl.where((tl.arange(0, F // A) == p)[None, :, None], x3, 0.), 1)


@triton.jit
def _P(x, p, A: tl.constexpr, F: tl.constexpr):
    """Slice p of P(x) from x̃ (BT, f): (BT, A·f) fp32, the products x̃_a x̃_b/√2 for a in [pA, pA + A)."""
    xa = _cols(x, p, A, F) * 0.7071067811865476
    return tl.reshape(xa[:, :, None] * x[:, None, :], (x.shape[0], A * F))


@triton.jit
def _PT(xt, p, A: tl.constexpr, F: tl.constexpr):
    """The same slice transposed, (A·f, BT), from x̃ᵀ (f, BT)."""
    x3 = tl.reshape(xt, (F // A, A, xt.shape[1]))                                             # (NS, A, BT)
    xa = tl.sum(tl.where((tl.arange(0, F // A) == p)[:, None, None], x3, 0.), 0) * 0.7071067811865476
    return tl.reshape(xa[:, None, :] * xt[None, :, :], (A * F, xt.shape[1]))


@triton.jit
def _P_load(X, t, T, scale, p, A: tl.constexpr, F: tl.constexpr):
    """_P from memory: x̃'s rows t are loaded again for this slice (the cache has them). _fwd_kernel uses
    _P_load and _PT_load: slicing x̃ in registers there costs the registers it does not have."""
    xa = _load(X, t, T, p * A + tl.arange(0, A), F).to(tl.float32) * (scale * 0.7071067811865476)
    xb = _load(X, t, T, tl.arange(0, F), F).to(tl.float32) * scale
    return tl.reshape(xa[:, :, None] * xb[:, None, :], (t.shape[0], A * F))


@triton.jit
def _PT_load(X, t, T, scale, p, A: tl.constexpr, F: tl.constexpr):
    """_PT from memory, x̃'s rows t loaded transposed for this slice."""
    xa = _loadT(X, t, T, p * A + tl.arange(0, A), F).to(tl.float32) * (scale * 0.7071067811865476)
    xb = _loadT(X, t, T, tl.arange(0, F), F).to(tl.float32) * scale
    return tl.reshape(xa[:, None, :] * xb[None, :, :], (A * F, t.shape[0]))


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
def _load_state(S, e, NC, LD, F: tl.constexpr, NS: tl.constexpr):
    """Columns e (< NC) of one head's (D, LD) state -> (S₂ as NS slices (f²/NS, BV), S₁ read transposed
    (BV, f), S₀ (BV,))."""
    R: tl.constexpr = F * F // NS
    m = e < NC
    s2 = ()
    for p in tl.static_range(NS):
        rows = 1 + F + p * R + tl.arange(0, R)
        s2 = s2 + (tl.load(S + rows[:, None] * LD + e[None, :], mask=m[None, :], other=0.),)
    s1 = tl.load(S + (1 + tl.arange(0, F))[None, :] * LD + e[:, None], mask=m[:, None], other=0.)
    return s2, s1, tl.load(S + e, mask=m, other=0.)


@triton.jit
def _store_state(S, s2, s1, s0, e, NC, LD, F: tl.constexpr):
    R: tl.constexpr = F * F // len(s2)
    m = e < NC
    for p in tl.static_range(len(s2)):
        rows = 1 + F + p * R + tl.arange(0, R)
        tl.store(S + rows[:, None] * LD + e[None, :], s2[p], mask=m[None, :])
    tl.store(S + (1 + tl.arange(0, F))[None, :] * LD + e[:, None], s1, mask=m[:, None])
    tl.store(S + e, s0, mask=m)


@triton.jit
def _load_s1z(S, e, DV, F: tl.constexpr):
    """The forward's S₁ᵀ (f, BV) at columns e and the normaliser's z, column dv of one head's (D, dv + 1)
    state: (S₁ᵀ, Z (f, f), z₁ (f,), z₀), z's f² piece as an f×f matrix Z, so that φ(x)·z = z₀ + x̃·z₁ +
    x̃ᵀ Z x̃/√2 is two small products."""
    r = tl.arange(0, F)
    s1t = tl.load(S + (1 + r)[:, None] * (DV + 1) + e[None, :], mask=(e < DV)[None, :], other=0.)
    Z = tl.load(S + (1 + F + r[:, None] * F + r[None, :]) * (DV + 1) + DV)
    return s1t, Z, tl.load(S + (1 + r) * (DV + 1) + DV), tl.load(S + DV)


@triton.jit
def _store_z(S, Z, z1, z0, DV, F: tl.constexpr):
    r = tl.arange(0, F)
    tl.store(S + (1 + F + r[:, None] * F + r[None, :]) * (DV + 1) + DV, Z)
    tl.store(S + (1 + r) * (DV + 1) + DV, z1)
    tl.store(S + DV, z0)


@triton.jit
def _add2(xt, g, s2, F: tl.constexpr, DT: tl.constexpr):
    """S₂ += P(x)ᵀ g, slice by slice; xt = x̃ᵀ (f, BT) fp32, g (BT, BV) in DT."""
    A: tl.constexpr = F // len(s2)
    out = ()
    for p in tl.static_range(len(s2)):
        out = out + (_dot(_PT(xt, p, A, F).to(DT), g, s2[p]),)
    return out


@triton.jit
def _add(xt, x, g, s2, s1, s0, F: tl.constexpr, DT: tl.constexpr):
    """S += φ(x)ᵀ g; xt = x̃ᵀ (f, BT) fp32, x = x̃ (BT, f) and g (BT, BV) in DT. The backward's: x = k,
    g = w·[v, 1] (dq's sweep) or x = q, g = [dnum, dden] (dk's)."""
    return _add2(xt, g, s2, F, DT), _dot(tl.trans(g), x, s1), s0 + tl.sum(g.to(tl.float32), 0)


@triton.jit
def _add_s1z(k, kf, w, g, s1t, Z, s0, z1, z0, DT: tl.constexpr, WGMMA: tl.constexpr):
    """The forward's state but S₂: S₁ᵀ += k̃ᵀ g, S₀ += Σ_j g_j and z += Σ_j w_j φ(k_j), from k̃ (BT, f) in
    DT and fp32, the weights w (BT,) and g = w·v (BT, BV = f). S₁ᵀ and Z have 16 rows, which all four
    warps would compute; for sm_90 (WGMMA) they are one (f, 2f) product k̃ᵀ [g, w·k̃/√2], interleaved, whose
    2f columns the four warps share. An A100's MMAs all share one layout, there made for the 64-row ones."""
    kw = (kf * (w * 0.7071067811865476)[:, None]).to(DT)
    if WGMMA:
        BT: tl.constexpr = k.shape[0]
        F: tl.constexpr = k.shape[1]
        tl.static_assert(g.shape[1] == F, "S₁ᵀ (f, BV) and Z (f, f) are joined: BV = f")
        gk = tl.reshape(tl.join(g, kw), (BT, 2 * F))                                     # (BT, 2f)
        s1t, Z = tl.split(tl.reshape(_dot(tl.trans(k), gk, tl.reshape(tl.join(s1t, Z), (F, 2 * F))),
                                     (F, F, 2)))
    else:
        s1t, Z = _dot(tl.trans(k), g, s1t), _dot(tl.trans(k), kw, Z)
    return s1t, Z, s0 + tl.sum(g.to(tl.float32), 0), z1 + tl.sum(kf * w[:, None], 0), z0 + tl.sum(w, 0)


@triton.jit
def _read(xf, s2, s1, s0, F: tl.constexpr, DT: tl.constexpr):
    """φ(x)·S for every row, from x̃ (BT, f) fp32: (BT, BV) fp32 = S₀ + x̃·S₁ + Σ_slices P(x)·S₂."""
    A: tl.constexpr = F // len(s2)
    r = _dot(xf.to(DT), tl.trans(s1.to(DT)))
    for p in tl.static_range(len(s2)):
        r = _dot(_P(xf, p, A, F).to(DT), s2[p].to(DT), r)
    return r + s0[None, :]


@triton.jit
def _grad_read(xf, g, s2, s1, F: tl.constexpr, DT: tl.constexpr):
    """∂/∂x̃ of Σ_e g_e (φ(x)·S)_e for every row (BT, f) fp32, for S₂ symmetric in its f×f row index
    (see _sym): r = S g, then ∂/∂x̃_c = r₁_c + √2 Σ_b x̃_b r₂[(b, c)], one contraction per slice of b."""
    A: tl.constexpr = F // len(s2)
    BT: tl.constexpr = xf.shape[0]
    d = _dot(g, s1.to(DT))                                              # (BT, f)
    E = ((tl.arange(0, A * F) % F)[:, None] == tl.arange(0, F)[None, :]).to(DT)              # (A·f, f)
    for p in tl.static_range(len(s2)):
        r = _dot(g, tl.trans(s2[p].to(DT)))                           # (BT, A·f)
        xb = tl.reshape(tl.broadcast_to(_cols(xf, p, A, F)[:, :, None] * 1.4142135623730951, (BT, A, F)),
                        (BT, A * F))
        d = _dot((r * xb).to(DT), E, d)
    return d


@triton.jit
def _enc_fwd_kernel(KE, VE, W, S_part, M, H, DV, SEG, scale, F: tl.constexpr, NS: tl.constexpr,
                    BV: tl.constexpr, HAS_W: tl.constexpr, DT: tl.constexpr, BT: tl.constexpr,
                    WGMMA: tl.constexpr):
    """Step 1: the state of one segment of prefix keys, for one (b, h) and BV value columns, and the
    normaliser's z (f×f, cheap)."""
    sg, bh = tl.program_id(1), tl.program_id(2).to(tl.int64)
    e, D = tl.program_id(0) * BV + tl.arange(0, BV), 1 + F + F * F
    KE, VE, W = KE + bh * M * F, VE + bh * M * DV, W + (bh // H) * M
    s2 = ()
    for p in tl.static_range(NS):
        s2 = s2 + (tl.zeros([F * F // NS, BV], tl.float32),)
    s1t, Z, s0 = tl.zeros([F, BV], tl.float32), tl.zeros([F, F], tl.float32), tl.zeros([BV], tl.float32)
    z1, z0 = tl.zeros([F], tl.float32), 0.
    for m0 in tl.range(0, SEG, BT):  # rows past M are masked
        t = sg * SEG + m0 + tl.arange(0, BT)
        kf, w = _x(KE, t, M, scale, F), _weight(W, t, M, HAS_W)
        g = (_load(VE, t, M, e, DV).to(tl.float32) * w[:, None]).to(DT)  # (BT, BV): a pad adds nothing
        s1t, Z, s0, z1, z0 = _add_s1z(kf.to(DT), kf, w, g, s1t, Z, s0, z1, z0, DT, WGMMA)
        s2 = _add2(tl.trans(kf), g, s2, F, DT)
    S_part += (bh * tl.num_programs(1) + sg) * D * (DV + 1)  # the partial states are summed by torch
    _store_state(S_part, s2, tl.trans(s1t), s0, e, DV, DV + 1, F)
    _store_z(S_part, Z, z1, z0, DV, F)  # every block writes the same z


@triton.jit
def _fwd_kernel(Q, K, V, W, S_in, Y, RDEN, S_out, T, H, DV, scale, eps, F: tl.constexpr, NS: tl.constexpr,
                BV: tl.constexpr, HAS_W: tl.constexpr, DT: tl.constexpr, BT: tl.constexpr,
                WGMMA: tl.constexpr):
    """Step 2: causal Based attention from the starting state, for one (b, h) and BV value columns. Each
    program also carries the normaliser's z (Z f×f, z₁, z₀: two small products a chunk) and divides by its
    own den. Every block computes the same den and z, bit for bit, and writes them: a branch for "the
    first block only" costs registers that sm_80 does not have."""
    bh = tl.program_id(1).to(tl.int64)
    e, D = tl.program_id(0) * BV + tl.arange(0, BV), 1 + F + F * F
    A: tl.constexpr = F // NS
    Q, K, W = Q + bh * T * F, K + bh * T * F, W + (bh // H) * T    # this head's rows (pads: its batch row)
    V, Y, RDEN = V + bh * T * DV, Y + bh * T * DV, RDEN + bh * T
    S_in, S_out = S_in + bh * D * (DV + 1), S_out + bh * D * (DV + 1)
    s2, _, s0 = _load_state(S_in, e, DV, DV + 1, F, NS)
    s1t, Z, z1, z0 = _load_s1z(S_in, e, DV, F)
    for t0 in tl.range(0, T, BT):  # num_stages 2: the next chunk's loads are issued before this one's MMAs
        t = t0 + tl.arange(0, BT)
        qf, kf = _x(Q, t, T, scale, F), _x(K, t, T, scale, F)           # (BT, f) fp32
        q, k, w = qf.to(DT), kf.to(DT), _weight(W, t, T, HAS_W)
        g = (_load(V, t, T, e, DV).to(tl.float32) * w[:, None]).to(DT)  # (BT, BV): a pad adds nothing
        num = _dot(q, s1t.to(DT)) + s0[None, :]  # (BT, BV), den (BT,): φ(q)·[S, z], the earlier chunks
        den = tl.sum((_dot(q, Z.to(DT)) * 0.7071067811865476 + z1[None, :]) * qf, 1) + z0
        for p in tl.static_range(NS):
            num = _dot(_P_load(Q, t, T, scale, p, A, F).to(DT), s2[p].to(DT), num)
        s = _dot(q, tl.trans(k))                                          # (BT, BT) = q·k/√f
        a = tl.where(t[:, None] >= t[None, :], 1 + s + 0.5 * s * s, 0.).to(DT)  # φ(q_i)·φ(k_j), j ≤ i
        num = _dot(a, g, num)                                             # + this chunk
        rden = 1 / (den + tl.sum(a.to(tl.float32) * w[None, :], 1) + eps)  # den from the a that num uses
        tl.store(RDEN + t, rden, mask=t < T)
        _put(Y, t, T, e, DV, num * rden[:, None])
        for p in tl.static_range(NS):
            s2 = s2[:p] + (_dot(_PT_load(K, t, T, scale, p, A, F).to(DT), g, s2[p]),) + s2[p + 1:]
        s1t, Z, s0, z1, z0 = _add_s1z(k, kf, w, g, s1t, Z, s0, z1, z0, DT, WGMMA)
    _store_state(S_out, s2, tl.trans(s1t), s0, e, DV, DV + 1, F)
    _store_z(S_out, Z, z1, z0, DV, F)


# The backward. With dnum_i = dy_i/den_i and dden_i = -(dy_i·y_i)/den_i, PLA's gradient is that of
# unnormalised linear attention on values g = w·[v, 1] with output gradient G = [dnum, dden]. It is cut in
# two: inside each chunk (_bwd_chunk_kernel, chunks in parallel: it computes dden and writes dv), and
# through the state (two sweeps, one program per block of 16 columns). A sweep carries the f²×16 state
# but no BT×BT tile. dq and dk get a term from every block of columns: each writes its own fp32 partial
# (no atomics), and torch sums them in a fixed order, so the result does not change between runs.

@triton.jit
def _bwd_chunk_kernel(Q, K, V, W, Y, DY, RDEN, DDEN, DQ, DK, DVAL, T, H, DV, scale, F: tl.constexpr,
                      BV: tl.constexpr, HAS_W: tl.constexpr, DT: tl.constexpr, BT: tl.constexpr):
    """dden = -(dy·y)/den, then the gradient through the scores inside one chunk: a_ij = 1 + s + s²/2 for
    j ≤ i, s = q̃_i·k̃_j. Writes dden, the chunk's part of dq and dk (partial 0) and of dv."""
    bh = tl.program_id(1).to(tl.int64)
    Q, K, W, Y, DY = Q + bh * T * F, K + bh * T * F, W + (bh // H) * T, Y + bh * T * DV, DY + bh * T * DV
    V, RDEN, DDEN, DVAL = V + bh * T * DV, RDEN + bh * T, DDEN + bh * T, DVAL + bh * T * DV
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    rden, dyy = tl.load(RDEN + t, mask=t < T, other=0.), tl.zeros([BT], tl.float32)
    for c0 in range(0, DV, BV):
        e = c0 + tl.arange(0, BV)
        dyy += tl.sum(_load(DY, t, T, e, DV).to(tl.float32) * _load(Y, t, T, e, DV).to(tl.float32), 1)
    tl.store(DDEN + t, -dyy * rden, mask=t < T)
    qf, kf = _x(Q, t, T, scale, F), _x(K, t, T, scale, F)                         # (BT, f)
    q, k = qf.to(DT), kf.to(DT)
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
    """dq's partial for one block of columns, ∂/∂q of φ(q_i)·S_i G_i: chunks in order, re-building the
    state (symmetrised, _sym)."""
    bh = tl.program_id(1).to(tl.int64)
    e, D = tl.program_id(0) * BV + tl.arange(0, BV), 1 + F + F * F
    Q, K, W = Q + bh * T * F, K + bh * T * F, W + (bh // H) * T
    DQ += ((1 + tl.program_id(0)) * tl.num_programs(1) + bh) * T * F  # partial 1 + block (0: the chunks')
    V, DY, RDEN, DDEN = V + bh * T * DV, DY + bh * T * DV, RDEN + bh * T, DDEN + bh * T
    s2, s1, s0 = _load_state(S_in + bh * D * (DV + 1), e, DV + 1, DV + 1, F, NS)
    for t0 in tl.range(0, T, BT):
        t = t0 + tl.arange(0, BT)
        qf, kf = _x(Q, t, T, scale, F), _x(K, t, T, scale, F)
        w = _weight(W, t, T, HAS_W)
        dq = _grad_read(qf, _grads(DY, RDEN, DDEN, t, T, e, DV, DT), s2, s1, F, DT)
        _put(DQ, t, T, tl.arange(0, F), F, dq * scale)
        s2, s1, s0 = _add(tl.trans(kf), kf.to(DT), _vals(V, w, t, T, e, DV, DT), s2, s1, s0, F, DT)


@triton.jit
def _bwd_dkv_kernel(Q, K, V, W, DY, RDEN, DDEN, dS_in, DK, DVAL, dS_out, T, H, DV, scale, F: tl.constexpr,
                    NS: tl.constexpr, BV: tl.constexpr, HAS_W: tl.constexpr, DT: tl.constexpr,
                    BT: tl.constexpr):
    """dk's partial and dv's part for one block of columns, through dS = Σ_{later i} φ(q_i) G_iᵀ
    (symmetric in its f² rows): chunks in reverse, from the gradient of the final state to that of the
    starting state (stored in dS_out)."""
    bh = tl.program_id(1).to(tl.int64)
    e, D = tl.program_id(0) * BV + tl.arange(0, BV), 1 + F + F * F
    Q, K, W = Q + bh * T * F, K + bh * T * F, W + (bh // H) * T
    DK += ((1 + tl.program_id(0)) * tl.num_programs(1) + bh) * T * F
    V, DY, DVAL = V + bh * T * DV, DY + bh * T * DV, DVAL + bh * T * DV
    RDEN, DDEN = RDEN + bh * T, DDEN + bh * T
    d2, d1, d0 = _load_state(dS_in + bh * D * (DV + 1), e, DV + 1, DV + 1, F, NS)
    n = tl.cdiv(T, BT)
    for i in tl.range(0, n):
        t = (n - 1 - i) * BT + tl.arange(0, BT)
        qf, kf = _x(Q, t, T, scale, F), _x(K, t, T, scale, F)
        w = _weight(W, t, T, HAS_W)
        dg = _read(kf, d2, d1, d0, F, DT)                                    # φ(k_j)·dS: (BT, BV)
        _put(DVAL, t, T, e, DV, _load(DVAL, t, T, e, DV).to(tl.float32) + dg * w[:, None])  # + the chunk's
        dk = _grad_read(kf, _vals(V, w, t, T, e, DV, DT), d2, d1, F, DT)              # (BT, f)
        _put(DK, t, T, tl.arange(0, F), F, dk * scale)
        d2, d1, d0 = _add(tl.trans(qf), qf.to(DT), _grads(DY, RDEN, DDEN, t, T, e, DV, DT), d2, d1, d0, F, DT)
    _store_state(dS_out + bh * D * (DV + 1), d2, d1, d0, e, DV + 1, DV + 1, F)


@triton.jit
def _enc_bwd_kernel(KE, VE, W, dS, DKE, DVE, M, H, DV, SEG, scale, F: tl.constexpr, NS: tl.constexpr,
                    BV: tl.constexpr, HAS_W: tl.constexpr, DT: tl.constexpr, BT: tl.constexpr):
    """Step 3: the prefix keys read the gradient of the starting state; no order, segments in parallel.
    dk_e's partial for this block of columns, dv_e's columns."""
    sg, bh = tl.program_id(1), tl.program_id(2).to(tl.int64)
    e, D = tl.program_id(0) * BV + tl.arange(0, BV), 1 + F + F * F
    KE, VE, W, DVE = KE + bh * M * F, VE + bh * M * DV, W + (bh // H) * M, DVE + bh * M * DV
    DKE += (tl.program_id(0) * tl.num_programs(2) + bh) * M * F
    d2, d1, d0 = _load_state(dS + bh * D * (DV + 1), e, DV + 1, DV + 1, F, NS)
    for m0 in tl.range(0, SEG, BT):  # rows past M are masked
        t = sg * SEG + m0 + tl.arange(0, BT)
        kf, w = _x(KE, t, M, scale, F), _weight(W, t, M, HAS_W)
        dk = _grad_read(kf, _vals(VE, w, t, M, e, DV, DT), d2, d1, F, DT)
        _put(DKE, t, M, tl.arange(0, F), F, dk * scale)
        _put(DVE, t, M, e, DV, _read(kf, d2, d1, d0, F, DT) * w[:, None])


# ----------------------------------------------------------------------------- autograd and launches

def _blocks(dv, M, BH, device, BV=16):
    """Blocks of BV columns and prefix segments. The forward cuts the dv value columns into NV blocks (the
    last one masked where dv is not a multiple of BV), each carrying the normaliser itself; the backward
    cuts the dv + 1 columns [v, 1] into NB. The prefix is cut into segments, enough programs to fill the
    GPU, no more, since each one writes a partial state."""
    NV = triton.cdiv(dv, BV)
    want = 16 if INTERPRET else 4 * torch.cuda.get_device_properties(device).multi_processor_count
    nseg = max(1, min(triton.cdiv(M, 64), want // max(1, BH * NV)))
    seg = max(64, triton.cdiv(triton.cdiv(M, nseg), 64) * 64)  # a multiple of every BT of _tiles
    return dict(NV=NV, NB=triton.cdiv(dv + 1, BV), seg=seg, nseg=triton.cdiv(M, seg))


def _wgmma(low, device):
    """Whether the bf16 forward kernels are compiled for sm_90's warpgroup MMAs (_add_s1z)."""
    return low and torch.cuda.get_device_properties(device).major >= 9


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
        blocks, wg = _blocks(dv, M, B * H, q.device, kw["BV"]), _wgmma(low, q.device)
        S = (q.new_zeros(B, H, D, dv + 1, dtype=torch.float32) if S0 is None
             else torch.cat([S0.float(), z0.float()[..., None]], -1))
        if M > 0:  # 1. the prefix, reduced into partial states in parallel
            S_part = q.new_empty(B * H, blocks["nseg"], D, dv + 1, dtype=torch.float32)
            _enc_fwd_kernel[(blocks["NV"], blocks["nseg"], B * H)](
                k_enc, v_enc, q if keep_enc is None else keep_enc, S_part, M, H, dv, SEG=blocks["seg"],
                HAS_W=keep_enc is not None, WGMMA=wg, **kw)
            S = S + S_part.sum(1).view(B, H, D, dv + 1)
        y, rden, S_out = torch.empty_like(v), q.new_empty(B, H, T, dtype=torch.float32), torch.empty_like(S)
        _fwd_kernel[(blocks["NV"], B * H)](q, k, v, q if keep is None else keep, S, y, rden, S_out, T, H, dv,
                                           eps=EPS, HAS_W=keep is not None, WGMMA=wg, **kw)
        ctx.save_for_backward(q, k, v, k_enc, v_enc, keep, keep_enc, S, y, rden)
        ctx.has_state, ctx.blocks, ctx.kw, ctx.low = S0 is not None, blocks, kw, low
        return y, S_out[..., :dv], S_out[..., dv]

    @staticmethod
    def backward(ctx, dy, dS_out, dz_out):
        q, k, v, k_enc, v_enc, keep, keep_enc, S, y, rden = ctx.saved_tensors
        B, H, T, f = q.shape
        dv, M = v.shape[-1], 0 if k_enc is None else k_enc.shape[2]
        nb, kw = ctx.blocks["NB"], ctx.kw
        dy = dy.contiguous()
        dden = torch.empty_like(rden)  # (B, H, T): ∂L/∂den, the ones column's gradient (_bwd_chunk_kernel)
        dS_end = torch.cat([torch.zeros_like(S[..., :dv]) if dS_out is None else dS_out.float(),
                            torch.zeros_like(S[..., dv:]) if dz_out is None else dz_out.float()[..., None]],
                           -1)
        dS_sym = _sym(dS_end, f)
        # dq, dk: one fp32 partial for the chunks and one per block of columns, summed in order below
        dq, dk = (q.new_empty(nb + 1, B * H, T, f, dtype=torch.float32) for _ in range(2))
        dv_, dS = torch.empty_like(v), torch.empty_like(S)  # dS: the gradient of the starting state
        w, kw_w = q if keep is None else keep, dict(kw, HAS_W=keep is not None)
        _bwd_chunk_kernel[(triton.cdiv(T, kw["BT"]), B * H)](  # the sweeps' chunks: the same BT
            q, k, v, w, y, dy, rden, dden, dq, dk, dv_, T, H, dv,
            **{n: x for n, x in kw_w.items() if n != "NS"})
        _bwd_dq_kernel[(nb, B * H)](q, k, v, w, _sym(S, f), dy, rden, dden, dq, T, H, dv, **kw_w)
        _bwd_dkv_kernel[(nb, B * H)](q, k, v, w, dy, rden, dden, dS_sym, dk, dv_, dS, T, H, dv, **kw_w)
        dke = dve = None
        if M > 0:
            dke, dve = k_enc.new_empty(nb, B * H, M, f, dtype=torch.float32), torch.empty_like(v_enc)
            seg = ctx.blocks["seg"]
            _enc_bwd_kernel[(nb, triton.cdiv(M, seg), B * H)](
                k_enc, v_enc, q if keep_enc is None else keep_enc, dS, dke, dve, M, H, dv, seg,
                HAS_W=keep_enc is not None, **dict(kw, NS=kw["NS"] if ctx.low else 16))  # fp32: 8 would spill
            dke = dke.sum(0).view(B, H, M, f).to(k_enc.dtype)
        dS = dS + dS_end - dS_sym  # the non-symmetric part of dS_end (no output reads it) goes to the start
        state_grads = (dS[..., :dv], dS[..., dv]) if ctx.has_state else (None, None)
        dq, dk = (x.sum(0).view(B, H, T, f) for x in (dq, dk))
        return dq.to(q.dtype), dk.to(k.dtype), dv_, dke, dve, *state_grads, None, None


@torch.compiler.disable  # torch.compile runs around the kernels (a graph break), not through them
def _pla_triton(q, k, v, k_enc, v_enc, state, pad_mask, enc_pad_mask, return_state):
    if 0 in q.shape[:3]:  # no (b, h) or no token: nothing to launch, the torch form gives the empty result
        return _pla_torch(q, k, v, k_enc, v_enc, state, pad_mask, enc_pad_mask, return_state)
    if k_enc is not None and k_enc.shape[2] == 0:  # M = 0: plain Based attention
        k_enc = v_enc = enc_pad_mask = None
    keep = None if pad_mask is None else (~pad_mask).float().contiguous()              # (B, T)
    keep_enc = None if enc_pad_mask is None else (~enc_pad_mask).float().contiguous()  # (B, M)
    enc = (None, None) if k_enc is None else (k_enc.contiguous(), v_enc.contiguous())
    S0, z0 = (None, None) if state is None else state
    y, S, z = _PLA.apply(q.contiguous(), k.contiguous(), v.contiguous(), *enc, S0, z0, keep, keep_enc)
    return (y, (S, z)) if return_state else y

