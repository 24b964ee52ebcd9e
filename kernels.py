"""
Prefix linear attention (PLA), the mixer of JRT-RNN, and its special case causal Based linear attention.

Symbols (../README.md has the glossary): B batch, H heads, T sequence length, M prefix (encoder)
length, f feature dim of q and k, D = 1 + f + f² the Taylor feature dim, dv value dim per head,
s = q·k/√f, φ the Taylor feature map.

The math (JRT paper, eq. for PLA; SPEC §2-3):

    φ(x) = [1, x / f^¼, vec(x ⊗ x) / (√2·√f)]            so  φ(q)·φ(k) = 1 + s + s²/2

    y_i = φ(q_i)·(S0 + Σ_{j≤i} φ(k_j) v_jᵀ + Σ_{j<M} φ(ke_j) ve_jᵀ)
          ------------------------------------------------------------
          φ(q_i)·(z0 + Σ_{j≤i} φ(k_j)      + Σ_{j<M} φ(ke_j))

The encoder sums (over the M prefix positions, read non-causally) are just a starting state
S_e, z_e for ordinary causal linear attention. So PLA = "reduce the prefix into a state, then run
causal Based attention from it". With M = 0 and no starting state this is plain Based attention.

Public API (layout (B, H, T, ·) everywhere):
    feature_map(x)                       (..., f) -> (..., D)
    pla(q, k, v, k_enc, v_enc, ...)      the parallel (prefill / training) form
    pla_step(q, k, v, state)             one decode token
    pla_reference(...)                   the quadratic form written straight from the equation (tests)

Padding: `pad_mask` (B, T) and `enc_pad_mask` (B, M) are True where a key is padding. Padded keys
add nothing to any sum. (Zeroing k is not enough: φ(0) = [1, 0, ...] still adds 1 to the
normaliser, which is what the official code does; SPEC §3.)
"""
import math

import torch

EPS = 1e-12  # added to the normaliser, as in the official code; it only matters for rows with no keys
CHUNK = 64   # chunk length of the chunked torch form: T/CHUNK serial steps, CHUNK² work per chunk


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


def pla(q, k, v, k_enc=None, v_enc=None, *, state=None, pad_mask=None, enc_pad_mask=None,
        return_state=False, backend="auto"):
    """Prefix linear attention. q, k (B,H,T,f); v (B,H,T,dv); k_enc (B,H,M,f); v_enc (B,H,M,dv).

    state: optional starting (S (B,H,D,dv), z (B,H,D)), e.g. the state of an earlier prefill.
    Returns y (B,H,T,dv) in v's dtype, and with return_state also the fp32 state after the last token.
    backend: "torch" (chunked, O(T)), "triton" (CUDA kernels), "auto" (Triton on CUDA, else torch).
    """
    _check(q, k, v, k_enc, v_enc, state, pad_mask, enc_pad_mask)
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton'; got {backend!r}")
    if backend == "triton":
        raise ValueError("backend='triton' is not available yet; use 'torch' or 'auto'")
    return _pla_torch(q, k, v, k_enc, v_enc, state, pad_mask, enc_pad_mask, return_state)


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
    dv, D = v.shape[-1], 1 + f + f * f
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
