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
    y_only = pla(q, k, v, ke, ve, state=state, pad_mask=pad, enc_pad_mask=enc_pad, backend="torch")
    torch.testing.assert_close(y_only, y_ref, rtol=1e-10, atol=1e-10)   # no state wanted: the last chunk's skipped


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
    from lm import resolve_device
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    for bad in ("gpu", "cuda:x"):
        with pytest.raises(ValueError, match="device="):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


# ----------------------------------------------------------------------------- caches are values, not state

def test_step_leaves_the_cache_it_was_given_unchanged():
    model = tiny("hybrid", prefix_len=6)                        # conv, pla, swa (window 5 < T), la, attn
    V = model.config.vocab_size
    idx = torch.randint(0, V, (2, 11))
    _, cache = model.prefill(idx)
    before = [tuple(t.clone() for t in leaves(c)) for c in cache]
    a, b = torch.randint(0, V, (2, 8)), torch.randint(0, V, (2, 8))
    first = continuation(model, cache, a)
    continuation(model, cache, b)                              # a different branch from the same cache
    again = continuation(model, cache, a)
    for x, y in zip(first, again):
        assert torch.equal(x, y)                               # bit for bit: nothing leaked between branches
    for c, old in zip(cache, before):
        assert all(torch.equal(t, o) for t, o in zip(leaves(c), old))
    full, _ = model(torch.cat([idx, a], 1), prefix_len=6)      # and each branch is the right one
    torch.testing.assert_close(again[-1], full[:, -1], rtol=1e-9, atol=1e-9)


def leaves(c):
    if isinstance(c, dict):
        return [c["k"], c["v"], c["valid"], torch.tensor(c["pos"])]
    return list(c) if isinstance(c, (tuple, list)) else [c]


def continuation(model, cache, tokens):
    out = []
    for t in range(tokens.shape[1]):
        logits, cache = model.step(tokens[:, t], cache)
        out.append(logits)
    return out


def test_step_refuses_a_cache_of_another_shape():
    model = tiny("hybrid", prefix_len=6)
    idx = torch.randint(0, 512, (2, 7))
    _, cache = model.prefill(idx)
    for bad, message in [(cache[:-1], r"cache must be the list of 5 per-layer entries \(n_layer = 5\).*got 4"),
                         (cache + [cache[0]], "got 6 entries"), (cache[0], "got a Tensor"),
                         ([cache[1]] + cache[1:], r"cache\[0\] \(conv\)"),
                         ]:
        with pytest.raises(ValueError, match=message):
            model.step(idx[:, 0], bad)
    _, one = model.prefill(idx[:1])
    with pytest.raises(ValueError, match=r"cache\[0\] \(conv\) must be that layer's cache for B = 2 rows.*B = 1"):
        model.step(idx[:, 0], one)
    with pytest.raises(ValueError, match="idx_t must be"):
        model.step(idx, cache)


# ----------------------------------------------------------------------------- silently accepted before

@pytest.mark.parametrize("kwargs,message", [
    (dict(temperature=-1.0), r"temperature must be a number >= 0 \(0 = greedy\); got -1.0"),
    (dict(top_k=0), r"top_k must be None \(no cut\) or an int >= 1; got 0"),
    (dict(top_k=2.5), r"top_k must be .*; got 2.5"),
    (dict(max_new_tokens=-1), r"max_new_tokens must be an int >= 0; got -1"),
    (dict(stop_token=512), r"stop_token must be None or a token id in \[0, vocab_size = 512\); got 512"),
    (dict(stop_token=-1), r"stop_token must be .*; got -1"),
])
def test_generate_bad_arguments(kwargs, message):
    model = tiny("jrt-tiny")
    args = dict(max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=message):
        model.generate(torch.randint(0, 512, (2, 5)), **args)


def test_generate_zero_new_tokens_returns_the_prompt():
    model, idx = tiny("jrt-tiny"), torch.randint(0, 512, (2, 5))
    assert torch.equal(model.generate(idx, 0), idx)


@pytest.mark.parametrize("field,value,message", [
    ("rope_base", 0.0, r"rope_base must be a number > 0; got 0.0"),
    ("rope_base", -5, r"rope_base must be a number > 0"),
    ("norm_eps", 0.0, r"norm_eps must be a number > 0; got 0.0"),
    ("norm_eps", float("nan"), r"norm_eps must be a number > 0; got nan"),
    ("mlp_hidden", -8, r"mlp_hidden must be an int >= 0; got -8"),
    ("mlp_hidden", 12.5, r"mlp_hidden must be an int >= 0; got 12.5"),
    ("prefix_len", 3.5, r"prefix_len must be an int >= 0; got 3.5"),
    ("d_model", True, r"d_model must be a positive int; got True"),
    ("init_std", -0.1, r"init_std must be a number >= 0"),
])
def test_config_refuses_values_that_give_nan_or_are_floored(field, value, message):
    with pytest.raises(ValueError, match=message):
        Config.from_preset("jrt-tiny", **{field: value})


@pytest.mark.parametrize("prefix_len,message", [
    (3.5, r"prefix_len must be an int in \[0, T = 10\] or an int tensor of shape \(B,\) = \(2,\).*; got 3.5"),
    ("3", r"prefix_len must be an int in .*; got '3'"),
    (torch.tensor([1, 2, 3]), r"prefix_len must be .*got a torch.int64 tensor of shape \(3,\)"),
    (torch.tensor([1.0, 2.0]), r"prefix_len must be .*got a torch.float32 tensor"),
    (torch.tensor([1, 11]), r"prefix_len must be an int in \[0, T = 10\]"),
])
def test_prefix_len_must_be_an_int_or_one_per_row(prefix_len, message):
    model = tiny("jrt-tiny")
    with pytest.raises(ValueError, match=message):
        model(torch.randint(0, 512, (2, 10)), prefix_len=prefix_len)


def test_prefix_len_per_row_tensor_equals_each_row_alone():
    model, idx = tiny("jrt-tiny"), torch.randint(0, 512, (2, 10))
    logits, _ = model(idx, prefix_len=torch.tensor([3, 7]))
    torch.testing.assert_close(logits[0], model(idx[:1], prefix_len=3)[0][0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logits[1], model(idx[1:], prefix_len=7)[0][0], rtol=1e-9, atol=1e-9)


def test_forward_input_checks():
    model = tiny("jrt-tiny")
    idx = torch.randint(0, 512, (2, 10))
    with pytest.raises(ValueError, match=r"idx must hold at least one row .*got \(B, T\) = \(0, 10\)"):
        model(idx[:0])
    with pytest.raises(ValueError, match=r"pad_mask must be a bool tensor \(B, T\) = \(2, 10\).*got torch.float32"):
        model(idx, pad_mask=torch.zeros(2, 10))
    with pytest.raises(ValueError, match=r"pad_mask must be a bool tensor .*got list"):
        model(idx, pad_mask=[[False] * 10] * 2)
    for bad, got in [(idx[:, :9], r"torch.int64 \(2, 9\)"), (idx.float(), r"torch.float32 \(2, 10\)")]:
        with pytest.raises(ValueError, match=r"targets must be an int64 tensor \(B, T\) = \(2, 10\) like idx; got " + got):
            model(idx, targets=bad)
    for value in (512, -1, -99):
        bad = idx.clone()
        bad[1, 3] = value
        with pytest.raises(ValueError, match=rf"targets must be token ids in \[0, vocab_size = 512\) or -100 .*got {value}"):
            model(idx, targets=bad)


def test_loss_is_the_mean_over_scored_positions_and_zero_when_none_are():
    model = tiny("jrt-tiny")
    idx, targets = torch.randint(0, 512, (2, 10)), torch.randint(0, 512, (2, 10))
    targets[0, :4] = -100
    logits, loss = model(idx, targets=targets)
    keep = targets != -100
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep].float(), targets[keep]))
    model.train()
    _, loss = model(idx, targets=torch.full_like(targets, -100))
    assert loss.item() == 0.0                                   # not NaN
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())   # no update at all


# ----------------------------------------------------------------------------- checkpoints load no code

class RunsCode:
    """A pickle that calls a function when loaded: touch(path)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import pathlib
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def good_checkpoint(path):
    from dataclasses import asdict
    m = tiny("jrt-tiny")
    torch.save(dict(model=m.state_dict(), model_args=asdict(m.config), config=dict(task="mqar")), path)
    return m


def test_load_checkpoint_round_trip(tmp_path):
    from checkpoint import load_checkpoint
    m = good_checkpoint(tmp_path / "ok.pt")
    loaded, cfg = load_checkpoint(tmp_path / "ok.pt")
    assert cfg == {"task": "mqar"} and not loaded.training
    x = torch.randint(0, 512, (1, 6))
    torch.testing.assert_close(loaded.double()(x)[0], m(x)[0])


def test_load_checkpoint_never_runs_pickled_code(tmp_path):
    from dataclasses import asdict
    from checkpoint import load_checkpoint
    ran = tmp_path / "ran"
    m = tiny("jrt-tiny")
    torch.save(dict(model=m.state_dict(), model_args=asdict(m.config), config={"x": RunsCode(ran)}), tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil.pt: refused: it holds a Python object \(\S+\), and loading that "
                                         r"could run code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not ran.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)       # the file really does run code when trusted
    assert ran.exists()


def test_load_checkpoint_bad_files_give_one_line_errors(tmp_path):
    from dataclasses import asdict
    from checkpoint import load_checkpoint
    good_checkpoint(tmp_path / "ok.pt")
    whole = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "half.pt").write_bytes(whole[:len(whole) // 2])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    torch.save([1, 2], tmp_path / "list.pt")
    m = tiny("based-tiny")
    torch.save(dict(model=m.state_dict(), model_args=asdict(tiny("jrt-tiny").config)), tmp_path / "mixed.pt")
    torch.save(dict(model={}, model_args=dict(d_model=-1)), tmp_path / "args.pt")
    cases = [("missing.pt", FileNotFoundError, "checkpoint .*missing.pt not found"),
             ("half.pt", ValueError, "half.pt is not a readable checkpoint"),
             ("empty.pt", ValueError, "empty.pt is not a readable checkpoint"),
             ("notes.txt", ValueError, "notes.txt is not a readable checkpoint"),
             ("list.pt", ValueError, "list.pt is not a train.py checkpoint"),
             ("mixed.pt", ValueError, r"mixed.pt: its weights do not fit its model_args: missing \[.*k_enc"),
             ("args.pt", ValueError, "args.pt: its model_args do not make a Config: d_model must be"),
             (".", ValueError, "is a directory")]
    for name, kind, message in cases:
        with pytest.raises(kind, match=message) as err:
            load_checkpoint(tmp_path / name)
        assert "\n" not in str(err.value)
