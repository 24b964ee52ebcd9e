"""
JRT-RNN, its Based baseline and a Transformer++ baseline, in one file.

A model is a stack of pre-norm blocks, x + mixer(norm(x)) then x + SwiGLU(norm(x)), whose mixers are
named per layer in `Config.layers` (JRT paper):
    pla   prefix linear attention: the JRT-RNN mixer (reads the first M tokens non-causally)
    la    causal Based linear attention (Taylor feature map)
    swa   sliding-window softmax attention with rotary
    conv  BaseConv, a gated short causal convolution
    attn  full causal softmax attention with rotary (Transformer++)
Every mixer has a parallel form (`forward`, for training and prefill) and a recurrent form (`step`,
one token from a cache). The cache is constant-size for all but `attn`, whose KV cache grows.

Padding is on the left and marked by `pad_mask` (B, T), True at pads. Padded positions contribute
nothing to any mixer: no key, no sum, no conv input (unlike the official code), so a batch of
left-padded prompts gives the same outputs as each prompt alone.
"""
import math
import os
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels import pla, pla_flop, pla_step

MIXERS = ("pla", "la", "swa", "conv", "attn")
OFFICIAL_PAD_ID = 220   # GPT-2's " ": the token the released code pads prompts with


@dataclass
class Config:
    vocab_size: int = 50264        # GPT-2's 50257 padded to a multiple of 8 (JRT paper); the last id is [MASK]
    d_model: int = 1024            # width of the residual stream
    layers: tuple = ("conv", "pla", "swa", "conv")  # one mixer name per layer: the visible layer layout
    n_head: int = 16               # heads of every attention-like mixer; dv = head dim = d_model / n_head
    feature_dim: int = 16          # f: q/k dim per head of pla/la before the Taylor map, D = 1 + f + f²
    window: int = 128              # swa: each token sees itself and this many previous tokens
    conv_kernel: int = 3           # BaseConv: causal depthwise kernel length
    mlp_hidden: int = 0            # SwiGLU hidden width; 0 means 2·d_model (Based / JRT-RNN)
    prefix_len: int = 1024         # M: default prefix of pla layers, clipped to the sequence (paper: 1024 of 2048)
    rope_base: float = 10000.0     # rotary base of swa/attn
    norm_eps: float = 1e-5         # RMSNorm epsilon
    init_std: float = 0.02         # N(0, 0.02) init; output projections get 0.02/√(2·n_layer)
    tie_embeddings: bool = True    # the output layer is the input embedding (JRT paper); False: its own matrix
    backend: str = "auto"          # pla/la kernels: "auto" (Triton on CUDA, torch elsewhere), "torch", "triton"

    def __post_init__(self):
        self.layers = tuple(self.layers)
        bad = [m for m in self.layers if m not in MIXERS]
        if bad or not self.layers:
            raise ValueError(f"layers must be a non-empty list of mixer names from {MIXERS}; got {list(self.layers)}")
        for name in ("vocab_size", "d_model", "n_head", "feature_dim", "window", "conv_kernel"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int; got {getattr(self, name)!r}")
        for name in ("prefix_len", "mlp_hidden"):  # 0 is meaningful for these: no prefix / 2·d_model
            if not _is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be an int >= 0; got {getattr(self, name)!r}")
        for name in ("rope_base", "norm_eps"):     # 0 or less gives NaN or inf in the forward pass
            if not _is_number(getattr(self, name)) or not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a number > 0; got {getattr(self, name)!r}")
        if not _is_number(self.init_std) or not self.init_std >= 0:
            raise ValueError(f"init_std must be a number >= 0; got {self.init_std!r}")
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head})")
        if ({"swa", "attn"} & set(self.layers)) and (self.d_model // self.n_head) % 2:
            raise ValueError(f"rotary needs an even head dim; d_model / n_head = {self.d_model // self.n_head}")
        if not isinstance(self.tie_embeddings, bool):
            raise ValueError(f"tie_embeddings must be True or False; got {self.tie_embeddings!r}")
        if self.backend not in ("auto", "torch", "triton"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'triton'; got {self.backend!r}")

    @property
    def n_layer(self):
        return len(self.layers)

    @property
    def mask_token_id(self):
        return self.vocab_size - 1  # [MASK] of the prefix-LM objective: 50263 for the GPT-2 vocabulary

    @classmethod
    def from_preset(cls, name, **overrides):
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise ValueError(f"unknown Config field(s) {unknown}; allowed: {sorted(allowed)}")
        return replace(PRESETS[name], **overrides)


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def hybrid(n_layer, mixer_at, default="conv"):
    """A layer layout: `mixer_at` maps layer index -> mixer name, the rest are `default`."""
    return tuple(mixer_at.get(i, default) for i in range(n_layer))


def _jrt_layout(n_layer, places, linear):  # linear attention at `places`, swa right after, conv elsewhere
    return hybrid(n_layer, {**{i: linear for i in places}, **{i + 1: "swa" for i in places}})


PRESETS = {  # the paper's models (JRT paper), then CPU-sized ones for tests and synthetic tasks
    "jrt-360m": Config(d_model=1024, layers=_jrt_layout(26, (1, 6, 11, 16, 21), "pla")),
    "jrt-1.3b": Config(d_model=1792, layers=_jrt_layout(36, (1, 6, 11, 16, 21, 27, 33), "pla")),
    "based-360m": Config(d_model=1024, layers=_jrt_layout(27, (1, 6, 11, 16, 21), "la")),
    # Transformer++: SwiGLU of width 8d/3 rounded up to 256, as in the baseline's code: 360M parameters
    "transformer-360m": Config(d_model=1024, layers=("attn",) * 24, mlp_hidden=2816),
    # Zoology-style recall models: conv + mixer, no sliding window (a window as long as the input is attention)
    "jrt-tiny": Config(vocab_size=512, d_model=64, n_head=4, layers=("conv", "pla") * 2, prefix_len=64),
    "based-tiny": Config(vocab_size=512, d_model=64, n_head=4, layers=("conv", "la") * 2, prefix_len=64),
    "transformer-tiny": Config(vocab_size=512, d_model=64, n_head=4, layers=("attn",) * 2, prefix_len=64),
}


# ----------------------------------------------------------------------------- mixers

class LinearAttention(nn.Module):
    """`pla` (prefix=True, JRT-RNN, JRT paper) and `la` (prefix=False, causal Based)."""

    def __init__(self, cfg, prefix):
        super().__init__()
        d, H, f = cfg.d_model, cfg.n_head, cfg.feature_dim
        self.H, self.f, self.prefix, self.backend = H, f, prefix, cfg.backend
        self.q = nn.Linear(d, H * f, bias=False)
        self.k = nn.Linear(d, H * f, bias=False)      # decoder keys: every position, causal
        self.v = nn.Linear(d, d, bias=False)
        if prefix:                                     # encoder keys/values: the first M positions only
            self.k_enc = nn.Linear(d, H * f, bias=False)
            self.v_enc = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def heads(self, x, n):  # (B, T, H·n) -> (B, H, T, n)
        return x.view(*x.shape[:2], self.H, n).transpose(1, 2)

    def forward(self, x, pad_mask, enc_end, want_cache=False):
        B, T, d = x.shape
        dv = d // self.H
        q, k, v = self.heads(self.q(x), self.f), self.heads(self.k(x), self.f), self.heads(self.v(x), dv)
        k_enc = v_enc = enc_pad = None
        if self.prefix and enc_end is not None and int(enc_end.max()) > 0:
            Me = int(enc_end.max())                    # rows end their prefix at different places when padded
            xe = x[:, :Me]                             # (B, Me, d)
            k_enc, v_enc = self.heads(self.k_enc(xe), self.f), self.heads(self.v_enc(xe), dv)
            enc_pad = torch.arange(Me, device=x.device) >= enc_end[:, None]  # (B, Me): past this row's prefix
            if pad_mask is not None:
                enc_pad = enc_pad | pad_mask[:, :Me]
        y = pla(q, k, v, k_enc, v_enc, pad_mask=pad_mask, enc_pad_mask=enc_pad,
                return_state=want_cache, backend=self.backend)
        y, state = y if want_cache else (y, None)
        y = self.out(y.transpose(1, 2).reshape(B, T, d))
        return (y, state) if want_cache else y

    def step(self, x, state):  # x (B, d); state (S (B,H,D,dv), z (B,H,D))
        B, d = x.shape
        q, k = self.q(x).view(B, self.H, self.f), self.k(x).view(B, self.H, self.f)
        y, state = pla_step(q, k, self.v(x).view(B, self.H, d // self.H), state)  # decoder projections only
        return self.out(y.reshape(B, d)), state


def rotary(x, pos, base):
    """Rotate pairs (x_i, x_{i+hd/2}) by angle pos·base^(-2i/hd). x (B, H, T, hd); pos (T,)."""
    half = x.shape[-1] // 2
    dt = torch.promote_types(x.dtype, torch.float32)
    inv = base ** (-torch.arange(half, device=x.device, dtype=dt) / half)
    ang = pos.to(dt)[:, None] * inv                          # (T, hd/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def window_attention(q, k, v, W, pad_mask):
    """Causal softmax attention where query i sees keys i-W..i, in blocks of W queries: each block reads
    only itself and the block before, so time and memory are O(T·W), not O(T²). q, k, v (B, H, T, hd)."""
    B, H, T, hd = q.shape
    n = -(-T // W)                                                           # blocks of W positions
    blocks = lambda t: F.pad(t, (0, 0, 0, n * W - T)).view(B, H, n, W, hd).transpose(1, 2)  # (B, n, H, W, hd)
    qb, kb, vb = blocks(q), blocks(k), blocks(v)
    two = lambda t: torch.cat([F.pad(t, (0, 0, 0, 0, 0, 0, 1, 0))[:, :n], t], dim=3)       # (B, n, H, 2W, hd)
    kb, vb = two(kb), two(vb)
    start = torch.arange(n, device=q.device)[:, None, None] * W             # (n, 1, 1) first query of a block
    i = start + torch.arange(W, device=q.device)[:, None]                   # (n, W, 1) query positions
    j = start - W + torch.arange(2 * W, device=q.device)                    # (n, 1, 2W) key positions
    keep = torch.ones(B, T, dtype=torch.bool, device=q.device) if pad_mask is None else ~pad_mask
    keep = F.pad(keep, (W, n * W - T), value=False).unfold(1, 2 * W, W)     # (B, n, 2W): real keys
    # a pad (or past-the-end) query sees itself only, so that no row is empty (NaN)
    allowed = (j <= i) & (i - j <= W) & (keep[:, :, None, :] | (i == j))    # (B, n, W, 2W)
    y = F.scaled_dot_product_attention(qb.flatten(0, 1), kb.flatten(0, 1), vb.flatten(0, 1),
                                       attn_mask=allowed.flatten(0, 1)[:, None])  # (B·n, H, W, hd)
    return y.view(B, n, H, W, hd).transpose(1, 2).reshape(B, H, n * W, hd)[:, :, :T]


class SoftmaxAttention(nn.Module):
    """`attn` (window=None: full causal) and `swa` (each token sees itself and `window` previous ones)."""

    def __init__(self, cfg, window):
        super().__init__()
        d, self.H, self.window, self.base = cfg.d_model, cfg.n_head, window, cfg.rope_base
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)

    def forward(self, x, pad_mask, enc_end, want_cache=False):
        B, T, d = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.H, d // self.H).permute(2, 0, 3, 1, 4)  # 3 × (B, H, T, hd)
        pos = torch.arange(T, device=x.device)
        q, k = rotary(q, pos, self.base), rotary(k, pos, self.base)
        if self.window is not None:
            y = window_attention(q, k, v, self.window, pad_mask)
        elif pad_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # pads are never keys; a pad query sees itself only, so that no row is empty (NaN)
            i, j = pos[:, None], pos[None, :]
            allowed = (j <= i) & (~pad_mask[:, None, :] | (i == j))                        # (B, T, T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        y = self.out(y.transpose(1, 2).reshape(B, T, d))
        if not want_cache:
            return y
        valid = torch.ones(B, T, dtype=torch.bool, device=x.device) if pad_mask is None else ~pad_mask
        if self.window is None:  # attn: a KV cache that grows by one entry per token
            return y, {"k": k, "v": v, "valid": valid, "pos": T}
        W = self.window          # swa: a ring buffer of the last W keys, position p in slot p % W
        idx = torch.arange(max(0, T - W), T, device=x.device)
        kb, vb = k.new_zeros(B, self.H, W, k.shape[-1]), v.new_zeros(B, self.H, W, v.shape[-1])
        vld = torch.zeros(B, W, dtype=torch.bool, device=x.device)
        kb[:, :, idx % W], vb[:, :, idx % W], vld[:, idx % W] = k[:, :, idx], v[:, :, idx], valid[:, idx]
        return y, {"k": kb, "v": vb, "valid": vld, "pos": T}

    def step(self, x, cache):  # x (B, d)
        B, d = x.shape
        t = cache["pos"]
        q, k, v = self.qkv(x).view(B, 3, self.H, 1, d // self.H).unbind(1)  # 3 × (B, H, 1, hd)
        pos = torch.tensor([t], device=x.device)
        q, k = rotary(q, pos, self.base), rotary(k, pos, self.base)
        ks, vs = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)         # past keys + this one
        valid = torch.cat([cache["valid"], cache["valid"].new_ones(B, 1)], 1)          # (B, n + 1)
        y = F.scaled_dot_product_attention(q, ks, vs, attn_mask=valid[:, None, None, :])
        if self.window is None:
            cache = {"k": ks, "v": vs, "valid": valid, "pos": t + 1}
        else:  # the new key takes the slot of the one that now leaves the window, in a copy: the cache
            # given stays as it was, so several continuations can start from one cache (beam search, OPRM)
            slot = torch.tensor([t % self.window], device=x.device)
            cache = {"k": cache["k"].index_copy(2, slot, k), "v": cache["v"].index_copy(2, slot, v),
                     "valid": cache["valid"].index_fill(1, slot, True), "pos": t + 1}
        return self.out(y.reshape(B, d)), cache


class BaseConv(nn.Module):
    """Gated short convolution (JRT paper): y = out(SiLU(conv(u1)) · u2), [u1, u2] = in(x)."""

    def __init__(self, cfg):
        super().__init__()
        d, self.K = cfg.d_model, cfg.conv_kernel
        self.inp = nn.Linear(d, 4 * d)
        self.conv = nn.Conv1d(2 * d, 2 * d, self.K, groups=2 * d, bias=False)  # depthwise, causal by left pad
        self.out = nn.Linear(2 * d, d)

    def forward(self, x, pad_mask, enc_end, want_cache=False):
        u1, u2 = self.inp(x).chunk(2, dim=-1)                                   # 2 × (B, T, 2d)
        if pad_mask is not None:
            u1 = u1.masked_fill(pad_mask[..., None], 0.0)                       # pads are no conv input
        u1 = u1.transpose(1, 2)                                                 # (B, 2d, T)
        h = self.conv(F.pad(u1, (self.K - 1, 0))).transpose(1, 2)               # (B, T, 2d)
        y = self.out(F.silu(h) * u2)
        if not want_cache:
            return y
        padded = F.pad(u1, (self.K - 1, 0))                                     # zeros before the first token
        return y, padded[..., padded.shape[-1] - (self.K - 1):]                 # (B, 2d, K-1): the last inputs

    def step(self, x, tail):  # x (B, d)
        u1, u2 = self.inp(x).chunk(2, dim=-1)
        window = torch.cat([tail, u1[..., None]], dim=-1)                       # (B, 2d, K)
        h = (window * self.conv.weight[:, 0]).sum(-1)                           # (B, 2d)
        return self.out(F.silu(h) * u2), window[..., 1:]


def make_mixer(name, cfg):
    if name in ("pla", "la"):
        return LinearAttention(cfg, prefix=name == "pla")
    if name in ("swa", "attn"):
        return SoftmaxAttention(cfg, window=cfg.window if name == "swa" else None)
    return BaseConv(cfg)


class SwiGLU(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        hidden = cfg.mlp_hidden or 2 * cfg.d_model
        self.fc1 = nn.Linear(cfg.d_model, 2 * hidden, bias=False)
        self.fc2 = nn.Linear(hidden, cfg.d_model, bias=False)

    def forward(self, x):
        a, g = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(a * F.silu(g))


class Block(nn.Module):
    def __init__(self, cfg, name):
        super().__init__()
        self.name = name
        self.norm1, self.norm2 = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps), nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mixer, self.mlp = make_mixer(name, cfg), SwiGLU(cfg)

    def forward(self, x, pad_mask, enc_end, want_cache=False):
        h = self.mixer(self.norm1(x), pad_mask, enc_end, want_cache)
        h, cache = h if want_cache else (h, None)
        x = x + h
        x = x + self.mlp(self.norm2(x))
        return (x, cache) if want_cache else x

    def step(self, x, cache):
        h, cache = self.mixer.step(self.norm1(x), cache)
        x = x + h
        return x + self.mlp(self.norm2(x)), cache


# ----------------------------------------------------------------------------- the model

def masked_ce(logits, targets):
    """Mean cross-entropy over positions whose target is not -100; 0 when there are none."""
    n = (targets != -100).sum()
    ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
    return ce / n.clamp(min=1)


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = cfg = config
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, name) for name in cfg.layers)
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():  # JRT paper init; the depthwise conv keeps PyTorch's default
            if p.dim() == 2:
                small = name.endswith(("mixer.out.weight", "mlp.fc2.weight"))
                nn.init.normal_(p, 0.0, cfg.init_std / math.sqrt(2 * cfg.n_layer) if small else cfg.init_std)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    # -- input checks: a user's mistake gets a message, not a traceback from inside torch
    def _check(self, idx, prefix_len, pad_mask):
        V = self.config.vocab_size
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.long, torch.int):
            raise ValueError(f"idx must be an int64 tensor (B, T); got {getattr(idx, 'dtype', type(idx))} "
                             f"{tuple(getattr(idx, 'shape', ()))}")
        B, T = idx.shape
        if B == 0 or T == 0:
            raise ValueError(f"idx must hold at least one row and one token per row; got (B, T) = ({B}, {T})")
        if ((idx < 0) | (idx >= V)).any():
            raise ValueError(f"token ids must be in [0, vocab_size = {V}); got min {int(idx.min())}, max {int(idx.max())}")
        if pad_mask is not None:
            if not isinstance(pad_mask, torch.Tensor) or pad_mask.shape != (B, T) or pad_mask.dtype != torch.bool:
                raise ValueError(f"pad_mask must be a bool tensor (B, T) = ({B}, {T}), True at pads; got "
                                 f"{getattr(pad_mask, 'dtype', type(pad_mask).__name__)} {tuple(getattr(pad_mask, 'shape', ()))}")
            if (pad_mask[:, 1:] & ~pad_mask[:, :-1]).any() or pad_mask[:, -1].any():
                raise ValueError("pad_mask must mark left padding: each row True...True then False...False, "
                                 "with at least one real token")
        if prefix_len is not None:
            allowed = f"an int in [0, T = {T}] or an int tensor of shape (B,) = ({B},) with values in it"
            if isinstance(prefix_len, torch.Tensor):
                if prefix_len.dtype not in (torch.long, torch.int) or prefix_len.shape not in ((), (B,)):
                    raise ValueError(f"prefix_len must be {allowed}; got a {prefix_len.dtype} tensor "
                                     f"of shape {tuple(prefix_len.shape)}")
                bad = bool(((prefix_len < 0) | (prefix_len > T)).any())
            elif _is_int(prefix_len):
                bad = not 0 <= prefix_len <= T
            else:                                     # 3.5 or "3" would be floored or fail deep inside torch
                raise ValueError(f"prefix_len must be {allowed}; got {prefix_len!r}")
            if bad:
                raise ValueError(f"prefix_len must be {allowed}; got {prefix_len}")

    def _check_targets(self, targets, B, T):
        V = self.config.vocab_size
        if not isinstance(targets, torch.Tensor) or targets.shape != (B, T) \
                or targets.dtype not in (torch.long, torch.int):
            raise ValueError(f"targets must be an int64 tensor (B, T) = ({B}, {T}) like idx; got "
                             f"{getattr(targets, 'dtype', type(targets).__name__)} {tuple(getattr(targets, 'shape', ()))}")
        bad = (targets != -100) & ((targets < 0) | (targets >= V))
        if bad.any():
            raise ValueError(f"targets must be token ids in [0, vocab_size = {V}) or -100 (not scored); "
                             f"got {int(targets[bad][0])}")

    def _enc_end(self, idx, prefix_len, pad_mask):
        """Where each row's prefix ends, in padded coordinates: pads + min(M, real length). None: no pla."""
        if "pla" not in self.config.layers:
            return None
        B, T = idx.shape
        M = self.config.prefix_len if prefix_len is None else prefix_len
        M = torch.as_tensor(M, device=idx.device).expand(B)
        pads = pad_mask.sum(1) if pad_mask is not None else torch.zeros(B, dtype=torch.long, device=idx.device)
        return pads + torch.minimum(M, T - pads)  # a prompt shorter than M is its own prefix

    def forward(self, idx, targets=None, prefix_len=None, pad_mask=None):
        """idx (B, T) -> logits (B, T, V); loss if targets (B, T) are given (-100 = ignored).

        The loss is the mean cross-entropy over the scored positions, and 0 (with zero gradient) when
        every target is -100: a batch with nothing to score then leaves the weights as they are, where
        the mean over no positions would be NaN and poison every weight at the next update."""
        self._check(idx, prefix_len, pad_mask)
        if targets is not None:
            self._check_targets(targets, *idx.shape)
        enc_end = self._enc_end(idx, prefix_len, pad_mask)
        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, pad_mask, enc_end)
        logits = self.lm_head(self.norm_f(x))
        loss = None
        if targets is not None:
            ce = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
            loss = ce / (targets != -100).sum().clamp(min=1)
        return logits, loss

    @torch.no_grad()
    def prefill(self, idx, prefix_len=None, pad_mask=None):
        """Read a prompt in parallel; return the last position's logits (B, V) and the decode cache."""
        self._check(idx, prefix_len, pad_mask)
        enc_end = self._enc_end(idx, prefix_len, pad_mask)
        x, caches = self.wte(idx), []
        for block in self.blocks:
            x, c = block(x, pad_mask, enc_end, want_cache=True)
            caches.append(c)
        return self.lm_head(self.norm_f(x[:, -1])), caches

    @torch.no_grad()
    def step(self, idx_t, cache):
        """One token per row: idx_t (B,) -> logits (B, V), updated cache (constant size but for attn)."""
        if isinstance(idx_t, torch.Tensor) and idx_t.dim() == 2 and idx_t.shape[1] == 1:
            idx_t = idx_t[:, 0]
        if not isinstance(idx_t, torch.Tensor) or idx_t.dim() != 1:
            raise ValueError(f"idx_t must be an int64 tensor (B,) or (B, 1), one token per row; got "
                             f"{getattr(idx_t, 'dtype', type(idx_t).__name__)} {tuple(getattr(idx_t, 'shape', ()))}")
        self._check(idx_t[:, None], None, None)
        self._check_cache(cache, len(idx_t))
        x, new = self.wte(idx_t), []
        for block, c in zip(self.blocks, cache):
            x, c = block.step(x, c)
            new.append(c)
        return self.lm_head(self.norm_f(x)), new

    def _check_cache(self, cache, B):
        """A cache from prefill/step of this model, for B rows: zip would silently drop missing layers."""
        L = self.config.n_layer
        if not isinstance(cache, (list, tuple)) or len(cache) != L:
            got = f"{len(cache)} entries" if isinstance(cache, (list, tuple)) else f"a {type(cache).__name__}"
            raise ValueError(f"cache must be the list of {L} per-layer entries (n_layer = {L}) that prefill or "
                             f"step of this model returned; got {got}")
        kinds = {"swa": dict, "attn": dict, "pla": (tuple, list), "la": (tuple, list), "conv": torch.Tensor}
        for i, (name, c) in enumerate(zip(self.config.layers, cache)):
            rows = c.get("k") if isinstance(c, dict) else c[0] if isinstance(c, (tuple, list)) and c else c
            if not isinstance(c, kinds[name]) or not isinstance(rows, torch.Tensor) or rows.dim() == 0 \
                    or rows.shape[0] != B:
                got = f"B = {rows.shape[0]}" if isinstance(rows, torch.Tensor) and rows.dim() else type(c).__name__
                raise ValueError(f"cache[{i}] ({name}) must be that layer's cache for B = {B} rows, as prefill "
                                 f"returned it; got {got}")

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, stop_token=None, prefix_len=None,
                 pad_mask=None):
        """Batched sampling (temperature 0: greedy). Rows that emit stop_token keep emitting it.
        Returns (B, T + n) with n ≤ max_new_tokens (fewer when every row has stopped)."""
        V = self.config.vocab_size
        if not _is_int(max_new_tokens) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0; got {max_new_tokens!r}")
        if not _is_number(temperature) or not temperature >= 0:   # < 0 would favour the least likely tokens
            raise ValueError(f"temperature must be a number >= 0 (0 = greedy); got {temperature!r}")
        if top_k is not None and (not _is_int(top_k) or top_k < 1):
            raise ValueError(f"top_k must be None (no cut) or an int >= 1; got {top_k!r}")
        if stop_token is not None and (not _is_int(stop_token) or not 0 <= stop_token < V):
            raise ValueError(f"stop_token must be None or a token id in [0, vocab_size = {V}); got {stop_token!r}")
        logits, cache = self.prefill(idx, prefix_len, pad_mask)
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        out = []
        for i in range(max_new_tokens):
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                logits = logits.float() / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1)[:, 0]
            if stop_token is not None:
                nxt = torch.where(done, torch.full_like(nxt, stop_token), nxt)
                done = done | (nxt == stop_token)
            out.append(nxt)
            if i == max_new_tokens - 1 or bool(done.all()):
                break
            logits, cache = self.step(nxt, cache)
        return torch.cat([idx, torch.stack(out, 1)], 1) if out else idx

    def flops_per_token(self, T):
        """Training FLOP per token at length T, forward + backward = 3 × forward. 6 per weight used in a
        matmul (all but the lookup of an untied embedding; k_enc/v_enc see only the prefix, so ~1% high for
        JRT-RNN), plus each layer's mixing: attn 3·4·d·T/2 (a causal query sees T/2 keys on average), swa
        3·4·d·(W+1), pla/la 3·H·pla_flop/T (kernels.pla_flop); conv's work is in its weights."""
        c = self.config
        d, dv = c.d_model, c.d_model // c.n_head
        matmul_params = self.num_params() - (0 if c.tie_embeddings else self.wte.weight.numel())
        mix = {"attn": 6 * d * T, "swa": 12 * d * (c.window + 1), "conv": 0,
               "pla": 3 * c.n_head * pla_flop(T, min(c.prefix_len, T), c.feature_dim, dv) / T,
               "la": 3 * c.n_head * pla_flop(T, 0, c.feature_dim, dv) / T}
        return 6 * matmul_params + sum(mix[m] for m in c.layers)

    def state_size(self, seq_len=None):
        """Numbers of state one sequence carries while decoding, per mixer kind and in total.

        pla/la: H·(D·dv + D) (JRT paper); swa: keys and values of the window; conv: the last K-1 inputs;
        attn: keys and values of every token so far, so it needs seq_len (it is unbounded).
        """
        c = self.config
        H, dv, D = c.n_head, c.d_model // c.n_head, 1 + c.feature_dim + c.feature_dim ** 2
        if "attn" in c.layers and seq_len is None:
            raise ValueError("state_size: a model with attn layers needs seq_len (its KV cache grows with it)")
        per = {"pla": H * (D * dv + D), "la": H * (D * dv + D), "swa": 2 * c.window * c.d_model,
               "conv": 2 * c.d_model * (c.conv_kernel - 1), "attn": 2 * c.d_model * (seq_len or 0)}
        sizes = {}
        for m in c.layers:
            sizes[m] = sizes.get(m, 0) + per[m]
        sizes["total"] = sum(sizes.values())
        return sizes


    # -- the interface prompt.py and chunked.py decode through (prefill / step / select), besides forward

    @property
    def vocab_size(self):
        return self.config.vocab_size

    @staticmethod
    def select(cache, rows):
        """The cache of batch rows `rows` (indices, in that order), e.g. to drop rows that finished decoding
        or to decode one OPRM chunk. Every tensor of a cache has the batch first; ints (positions) are shared.
        The cache given is left unchanged."""
        rows = torch.as_tensor(rows, dtype=torch.long)

        def pick(c):
            if isinstance(c, torch.Tensor):
                return c.index_select(0, rows.to(c.device))
            if isinstance(c, dict):
                return {k: pick(v) for k, v in c.items()}
            if isinstance(c, (list, tuple)):
                return type(c)(pick(v) for v in c)
            return c
        return pick(cache)

    @torch.no_grad()
    def prefill_official(self, idx, pad_mask=None, pad_id=OFFICIAL_PAD_ID):
        """`prefill` as the released JRT-RNN code runs at inference, to reproduce its reported
        numbers; our exact padding (`prefill`) stays the default everywhere else. Differences:

        - rows shorter than M = config.prefix_len (1024) are left-padded to M with token `pad_id` (220, " "),
          and the pads already in idx (pad_mask) become `pad_id` too;
        - pads are ordinary tokens to conv, swa, la and the MLPs, and lie inside the prefix, which is the
          first min(M, T) positions of the padded row;
        - pla layers zero the pads' k and k_enc before φ, but only when T <= M (the official code masks
          only then): φ(0) = [1, 0, ..., 0], so each pad still adds 1 to both normalisers and its v, v_enc
          to the numerators.
        Decode with `step` as usual. Returns (logits (B, V), cache)."""
        V, M = self.config.vocab_size, self.config.prefix_len
        if not (isinstance(pad_id, int) and 0 <= pad_id < V):
            raise ValueError(f"pad_id={pad_id!r}: expected a token id in [0, vocab_size = {V})")
        self._check(idx, None, pad_mask)
        real = torch.ones_like(idx, dtype=torch.bool) if pad_mask is None else ~pad_mask   # (B, T)
        idx = idx.masked_fill(~real, pad_id)
        if idx.shape[1] < M:                                                    # left-pad to M
            idx, real = F.pad(idx, (M - idx.shape[1], 0), value=pad_id), F.pad(real, (M - idx.shape[1], 0))
        hooks = []
        if idx.shape[1] <= M and not bool(real.all()):
            keep = real[..., None]                                              # (B, T, 1)

            def zero_pad_keys(linear, inputs, k):                              # k (B, T or M, H·f)
                return k * keep[:, :k.shape[1]].to(k.dtype)
            hooks = [lin.register_forward_hook(zero_pad_keys) for b in self.blocks if b.name == "pla"
                     for lin in (b.mixer.k, b.mixer.k_enc)]
        try:
            return self.prefill(idx)
        finally:
            for h in hooks:
                h.remove()

    @classmethod
    def from_pretrained(cls, name_or_dir, device="cpu"):
        """A released checkpoint -> Model in eval mode. name_or_dir: a local directory with the
        official config.json and pytorch_model.bin or *.safetensors, or a hub name such as
        "hazyresearch/JRT-360M-30B" (downloaded through huggingface_hub, an optional extra). The weights are
        read without running pickled code. The key mapping lives in hf.py (`hf.from_official`)."""
        import hf  # hf.py imports this file: imported here, when a released checkpoint is asked for
        return hf.from_pretrained(name_or_dir, device)


# ----------------------------------------------------------------------------- one interface for the harnesses

def left_pad(seqs, pad_id=0, device=None):
    """Token lists of any lengths -> idx (B, T) and pad_mask (B, T), padded on the left."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long, device=device)
    pad = torch.ones(len(seqs), T, dtype=torch.bool, device=device)
    for b, s in enumerate(seqs):
        if len(s):
            idx[b, T - len(s):] = torch.as_tensor(s, dtype=torch.long)
            pad[b, T - len(s):] = False
    return idx, pad


class ModelLM:
    """Our Model with its prefill options fixed, behind the same interface (prefill / step / select):
    prefix_len, M for pla layers (None: the config's; a tensor: one per row); official_pads, the released
    code's padding (`Model.prefill_official`) instead of ours. The Model itself meets the interface too."""

    def __init__(self, model, prefix_len=None, official_pads=False):
        if official_pads and prefix_len is not None:
            raise ValueError("official_pads=True reads the first M = config.prefix_len positions as the prefix; "
                             f"it takes no prefix_len (got {prefix_len!r})")
        self.model, self.prefix_len, self.official_pads = model, prefix_len, official_pads
        self.vocab_size = model.config.vocab_size

    def prefill(self, idx, pad_mask=None):
        if self.official_pads:
            logits, cache = self.model.prefill_official(idx, pad_mask)
        else:
            logits, cache = self.model.prefill(idx, prefix_len=self.prefix_len, pad_mask=pad_mask)
        return logits.float(), cache

    def step(self, idx_t, cache):
        logits, cache = self.model.step(idx_t, cache)
        return logits.float(), cache

    def select(self, cache, rows):
        return Model.select(cache, rows)


def resolve_device(name="auto"):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' -> torch.device, with a one-line error when that device
    is absent (every CLI's --device goes through here). 'auto' is CUDA when available, else the CPU."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={name!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device='cpu' (or 'auto')")
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device={name!r} but MPS is not available here; use device='cpu' (or 'auto')")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'") from None
