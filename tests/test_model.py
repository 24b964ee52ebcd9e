"""The math of kernels.py against its quadratic reference, and model.py's parallel vs recurrent forms."""
import math

import pytest
import torch

from kernels import feature_map, pla, pla_reference, pla_step
import torch.nn.functional as F

from model import PRESETS, Config, Model, window_attention

F64 = torch.float64


def rand(*shape, scale=1.0):
    return torch.randn(*shape, dtype=F64) * scale


# ----------------------------------------------------------------------------- kernels.py (torch backend)

@pytest.mark.parametrize("f", [4, 16])
def test_feature_map_gives_taylor_kernel(f):
    q, k = rand(64, f), rand(64, f)  # unit scale: the s² term matters
    s = (q * k).sum(-1) / math.sqrt(f)
    assert feature_map(q).shape == (64, 1 + f + f * f)
    torch.testing.assert_close((feature_map(q) * feature_map(k)).sum(-1), 1 + s + s * s / 2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T,M,f,dv,scale", [(1, 0, 16, 16, 1.0), (7, 1, 4, 3, 1.0), (130, 37, 16, 20, 1.0),
                                            (64, 64, 8, 7, 1.0), (150, 150, 16, 5, 1 / 16), (200, 0, 16, 33, 1.0)])
@pytest.mark.parametrize("with_state", [False, True])
def test_pla_torch_equals_quadratic_reference(T, M, f, dv, scale, with_state):
    B, H, D = 2, 2, 1 + f + f * f
    q, k, v = rand(B, H, T, f, scale=scale), rand(B, H, T, f, scale=scale), rand(B, H, T, dv)
    ke, ve = (rand(B, H, M, f, scale=scale), rand(B, H, M, dv)) if M else (None, None)
    state = (rand(B, H, D, dv), torch.rand(B, H, D, dtype=F64) * 3) if with_state else None
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, : T // 3] = True                                     # one row left-padded
    enc_pad = pad[:, :M].clone() if M else None
    y, (S, z) = pla(q, k, v, ke, ve, state=state, pad_mask=pad, enc_pad_mask=enc_pad, return_state=True,
                    backend="torch")
    y_ref, (S_ref, z_ref) = pla_reference(q, k, v, ke, ve, state=state, pad_mask=pad, enc_pad_mask=enc_pad)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    # the final state is the sum definition: S = S0 + Σ_real φ(k) vᵀ + Σ_prefix φ(ke) veᵀ
    keep = (~pad)[:, None, :, None].to(F64)
    S_def = (feature_map(k) * keep).transpose(-1, -2) @ v + (0 if state is None else state[0])
    if M:
        S_def = S_def + (feature_map(ke) * keep[:, :, :M]).transpose(-1, -2) @ ve
    torch.testing.assert_close(S, S_def, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(S, S_ref, rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(z, z_ref, rtol=1e-10, atol=1e-9)


def test_pla_step_continues_prefill():
    B, H, T, f, dv, M = 2, 2, 40, 16, 6, 25
    q, k, v = rand(B, H, T, f), rand(B, H, T, f), rand(B, H, T, dv)
    ke, ve = rand(B, H, M, f), rand(B, H, M, dv)
    y_all = pla_reference(q, k, v, ke, ve)[0]
    y, state = pla(q[:, :, :30], k[:, :, :30], v[:, :, :30], ke, ve, return_state=True, backend="torch")
    for t in range(30, T):
        y_t, state = pla_step(q[:, :, t], k[:, :, t], v[:, :, t], state)
        torch.testing.assert_close(y_t, y_all[:, :, t], rtol=1e-10, atol=1e-10)


def test_pla_keeps_low_precision_dtype_and_fp32_state():
    q, k, v = (torch.randn(1, 2, 70, 16, dtype=torch.bfloat16) for _ in range(3))
    y, (S, z) = pla(q, k, v, return_state=True, backend="torch")
    y_ref = pla_reference(q.double(), k.double(), v.double())[0]
    assert y.dtype == torch.bfloat16 and S.dtype == torch.float32 and z.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_ref, rtol=2e-2, atol=2e-2)


def test_pla_bad_shapes_raise_clear_errors():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="v must be"):
        pla(q, q, torch.randn(1, 2, 7, 4))
    with pytest.raises(ValueError, match="M <= T"):
        pla(q, q, torch.randn(1, 2, 8, 4), torch.randn(1, 2, 9, 16), torch.randn(1, 2, 9, 4))
    with pytest.raises(ValueError, match="together"):
        pla(q, q, torch.randn(1, 2, 8, 4), torch.randn(1, 2, 3, 16))
    with pytest.raises(ValueError, match="backend"):
        pla(q, q, torch.randn(1, 2, 8, 4), backend="cuda")


# ----------------------------------------------------------------------------- model.py

HYBRID = dict(layers=("conv", "pla", "swa", "la", "attn"), window=5)  # every mixer, a window shorter than T
FAMILIES = ["jrt-tiny", "based-tiny", "transformer-tiny", "hybrid"]


def tiny(name, **kw):
    cfg = Config.from_preset("jrt-tiny", **HYBRID, **kw) if name == "hybrid" else Config.from_preset(name, **kw)
    torch.manual_seed(0)
    return Model(cfg).double().eval()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("prompt_len", [5, 19])  # shorter and longer than the prefix M = 12
def test_prefill_then_step_equals_forward(family, prompt_len):
    model, M, n_new = tiny(family, prefix_len=12), 12, 9
    idx = torch.randint(0, model.config.vocab_size, (2, prompt_len + n_new))
    logits_ref, _ = model(idx, prefix_len=min(M, prompt_len))  # a short prompt is its own prefix
    logits, cache = model.prefill(idx[:, :prompt_len])
    torch.testing.assert_close(logits, logits_ref[:, prompt_len - 1], rtol=1e-9, atol=1e-9)
    for t in range(prompt_len, prompt_len + n_new):
        logits, cache = model.step(idx[:, t], cache)
        torch.testing.assert_close(logits, logits_ref[:, t], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_equals_each_prompt_alone(family):
    model = tiny(family, prefix_len=10)
    V, lens, T, n_new = model.config.vocab_size, [16, 7, 12], 16, 4
    prompts = [torch.randint(1, V, (n,)) for n in lens]
    idx = torch.zeros(len(lens), T, dtype=torch.long)
    pad = torch.ones(len(lens), T, dtype=torch.bool)
    for b, p in enumerate(prompts):
        idx[b, T - len(p):], pad[b, T - len(p):] = p, False
    logits, _ = model(idx, pad_mask=pad)
    last, cache = model.prefill(idx, pad_mask=pad)
    nxt = torch.randint(1, V, (len(lens), n_new))
    steps = []
    for t in range(n_new):
        out, cache = model.step(nxt[:, t], cache)
        steps.append(out)
    for b, p in enumerate(prompts):
        alone, _ = model(p[None])
        torch.testing.assert_close(logits[b, T - len(p):], alone[0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(last[b], alone[0, -1], rtol=1e-9, atol=1e-9)
        full, _ = model(torch.cat([p, nxt[b]])[None], prefix_len=min(10, len(p)))
        for t in range(n_new):
            torch.testing.assert_close(steps[t][b], full[0, len(p) + t], rtol=1e-9, atol=1e-9)


def moved(model, idx, j, prefix_len):
    """Which output positions change when token j changes."""
    a, _ = model(idx, prefix_len=prefix_len)
    idx2 = idx.clone()
    idx2[0, j] = (idx2[0, j] + 1) % model.config.vocab_size
    b, _ = model(idx2, prefix_len=prefix_len)
    return ((a - b).abs().amax(-1)[0] > 1e-9).nonzero().flatten().tolist()


def test_pla_is_noncausal_in_the_prefix_and_causal_after():
    model, T, M = tiny("jrt-tiny"), 20, 8
    idx = torch.randint(0, model.config.vocab_size, (1, T))
    assert moved(model, idx, 3, M) == list(range(T))         # a prefix token reaches every position
    assert moved(model, idx, 12, M) == list(range(12, T))    # after the prefix: causal
    assert moved(model, idx, 3, 0) == list(range(3, T))      # M = 0: plain causal Based


def test_la_is_causal_everywhere():
    model, T = tiny("based-tiny"), 20
    idx = torch.randint(0, model.config.vocab_size, (1, T))
    for j in (0, 3, 12):
        assert moved(model, idx, j, 8) == list(range(j, T))


def test_generate_greedy_batched_and_stop_token():
    model = tiny("jrt-tiny")
    idx = torch.randint(1, 512, (3, 6))
    out = model.generate(idx, 5, temperature=0)
    assert out.shape == (3, 11) and torch.equal(out[:, :6], idx)
    for b in range(3):
        assert torch.equal(model.generate(idx[b:b + 1], 5, temperature=0)[0], out[b])
    stop = int(out[0, 6])  # the first generated token of row 0: that row stops at once
    out2 = model.generate(idx, 5, temperature=0, stop_token=stop)
    assert (out2[0, 6:] == stop).all()


def test_360m_parameters_and_state_size():
    with torch.device("meta"):
        model = Model(Config.from_preset("jrt-360m"))
    assert abs(model.num_params() / 356e6 - 1) < 0.02
    cfg = Config.from_preset("jrt-tiny", layers=("pla",))
    H, dv, D = cfg.n_head, cfg.d_model // cfg.n_head, 1 + cfg.feature_dim ** 2 + cfg.feature_dim
    assert Model(cfg).state_size() == {"pla": H * (D * dv + D), "total": H * (D * dv + D)}
    assert Model(Config.from_preset("transformer-tiny")).state_size(100)["total"] == 2 * 2 * 64 * 100


@pytest.mark.parametrize("T,W", [(1, 4), (30, 4), (33, 8), (5, 128)])
def test_blockwise_window_attention_equals_full_mask(T, W):
    q, k, v = rand(2, 3, T, 6), rand(2, 3, T, 6), rand(2, 3, T, 6)
    pad = torch.zeros(2, T, dtype=torch.bool)
    pad[1, : T // 2] = True
    i, j = torch.arange(T)[:, None], torch.arange(T)[None]
    allowed = (j <= i) & (i - j <= W) & (~pad[:, None, :] | (i == j))  # the window, no pad keys, written out
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
    torch.testing.assert_close(window_attention(q, k, v, W, pad), ref, rtol=1e-12, atol=1e-12)


def test_layer_layouts_of_presets():
    jrt = PRESETS["jrt-360m"].layers
    assert [i for i, m in enumerate(jrt) if m == "pla"] == [1, 6, 11, 16, 21]
    assert [i for i, m in enumerate(jrt) if m == "swa"] == [2, 7, 12, 17, 22] and jrt.count("conv") == 16
    assert PRESETS["based-360m"].layers.count("la") == 5 and len(PRESETS["based-360m"].layers) == 27


def test_bad_input_raises_clear_errors():
    model = tiny("jrt-tiny")
    idx = torch.randint(0, 512, (2, 10))
    with pytest.raises(ValueError, match="prefix_len"):
        model(idx, prefix_len=11)
    with pytest.raises(ValueError, match="prefix_len"):
        model(idx, prefix_len=-1)
    with pytest.raises(ValueError, match="vocab_size"):
        model(idx + 600)
    right_pad = torch.zeros(2, 10, dtype=torch.bool)
    right_pad[0, -2:] = True
    with pytest.raises(ValueError, match="left padding"):
        model(idx, pad_mask=right_pad)
    with pytest.raises(ValueError, match="unknown preset"):
        Config.from_preset("jrt-7b")
    with pytest.raises(ValueError, match="mixer"):
        Config.from_preset("jrt-tiny", layers=("conv", "mamba"))
    with pytest.raises(ValueError, match="divisible"):
        Config.from_preset("jrt-tiny", n_head=5)
    with pytest.raises(ValueError, match="unknown Config field"):
        Config.from_preset("jrt-tiny", n_heads=4)
    with pytest.raises(ValueError, match="seq_len"):
        Model(Config.from_preset("transformer-tiny")).state_size()
    with pytest.raises(ValueError, match="tie_embeddings"):
        Config.from_preset("jrt-tiny", tie_embeddings="no")


def test_tied_and_untied_output_layer():
    tied, untied = Model(Config.from_preset("jrt-tiny")), Model(Config.from_preset("jrt-tiny", tie_embeddings=False))
    assert tied.lm_head.weight is tied.wte.weight and untied.lm_head.weight is not untied.wte.weight
    V, d = untied.config.vocab_size, untied.config.d_model
    assert untied.num_params() - tied.num_params() == V * d
    assert untied.flops_per_token(64) == tied.flops_per_token(64)     # the extra matrix replaces a lookup


def test_resolve_device_names_what_is_missing():
    from model import resolve_device
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    for bad in ("gpu", "cuda:x"):
        with pytest.raises(ValueError, match="device="):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
