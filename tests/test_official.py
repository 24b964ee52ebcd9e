"""The loaders of the released checkpoints (hf.from_official, hf.from_pretrained) and the official
inference quirks (hf.prefill_official), against a float64 forward pass of the official architecture
written here from the official modules' definitions, on the official key names."""
import json
import math
import os
import re
import sys

import pytest
import torch
import torch.nn.functional as F

from hf import from_official, from_pretrained, official_config, prefill_official
from lm import left_pad
from model import PRESETS, Model

F64 = torch.float64
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "official")
TARGET = {"conv": "based.models.mixers.convolution.BaseConv",
          "pla": "based.models.mixers.prefix_linear_attention.PrefixLinearAttention",
          "la": "based.models.mixers.linear_attention.LinearAttention",
          "swa": "based.models.mixers.slide_attention.SlidingAttention"}


def official_conf(linear="pla", vocab=60, d=32, H=2, f=4, enc=8, window_size=8):
    """A tiny config.json in the official layout: conv, linear, swa, linear, conv."""
    return {"vocab_size": vocab, "pad_vocab_size_multiple": 8, "n_embd": d, "n_layer": 5, "n_head": H,
            "n_inner": 2 * d, "rms_norm": True, "activation_function": "swiglu", "rotary_emb_fraction": 1,
            "layer_norm_epsilon": 1e-5, "alt_mixer_layers": [1, 3], "alt_mixer_2_layers": [2],
            "mlp_fc1_bias": False, "mlp_fc2_bias": False, "qkv_proj_bias": False, "out_proj_bias": False,
            "mixer": {"_target_": TARGET["conv"], "expand_proj": 4, "kernel_sizes": [3], "use_bias": True},
            "alt_mixer": {"_target_": TARGET[linear], "feature_dim": f, "num_heads": H, "enc_length": enc},
            "alt_mixer_2": {"_target_": TARGET["swa"], "window_size": window_size, "num_heads": H}}


def official_state_dict(conf, seed=0, scale=0.3):
    """Random weights under the official key names and shapes (written out here, not taken from model.py)."""
    g = torch.Generator().manual_seed(seed)
    d, H, n_inner = conf["n_embd"], conf["n_head"], -(-conf["n_inner"] // 256) * 256  # GatedMlp rounds to 256
    f, V = conf["alt_mixer"]["feature_dim"], -(-conf["vocab_size"] // 8) * 8
    rnd = lambda *shape: torch.randn(*shape, generator=g) * scale
    sd = {"transformer.embeddings.word_embeddings.weight": rnd(V, d) * 3,
          "transformer.ln_f.weight": 1 + rnd(d)}
    sd["lm_head.weight"] = sd["transformer.embeddings.word_embeddings.weight"]       # tied, stored twice
    for i in range(conf["n_layer"]):
        p = f"transformer.layers.{i}."
        sd.update({p + "norm1.weight": 1 + rnd(d), p + "norm2.weight": 1 + rnd(d),
                   p + "mlp.fc1.weight": rnd(2 * n_inner, d), p + "mlp.fc2.weight": rnd(d, n_inner)})
        m = p + "mixer."
        if i in conf["alt_mixer_2_layers"]:
            hd = d // H
            sd.update({m + "Wqkv.weight": rnd(3 * d, d), m + "out_proj.weight": rnd(d, d),
                       m + "rotary_emb.inv_freq": 1.0 / 10000 ** (torch.arange(0, hd, 2, dtype=F64) / hd)})
        elif i in conf["alt_mixer_layers"]:
            names = ["proj_q", "proj_k", "proj_v", "out_proj"]
            if conf["alt_mixer"]["_target_"] == TARGET["pla"]:
                names += ["proj_k_enc", "proj_v_enc"]
            for n in names:
                sd[m + n + ".weight"] = rnd(H * f if n in ("proj_q", "proj_k", "proj_k_enc") else d, d) * 2
        else:
            sd.update({m + "in_proj.weight": rnd(4 * d, d), m + "in_proj.bias": rnd(4 * d),
                       m + "conv.conv.weight": rnd(2 * d, 1, 3), m + "out_proj.weight": rnd(d, 2 * d),
                       m + "out_proj.bias": rnd(d)})
    return sd


# ------------------------------------------------------------------------- the official forward, in float64

def rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def taylor(x):  # TaylorExp: [1, x / f^(1/4), vec(x x^T) / (sqrt(2) sqrt(f))]
    f = x.shape[-1]
    x2 = (x[..., :, None] * x[..., None, :]).flatten(-2) / math.sqrt(2)
    return torch.cat([torch.ones_like(x[..., :1]), x / f ** 0.25, x2 / math.sqrt(f)], -1)


def official_forward(sd, conf, idx, kmask=None):
    """Logits (B, T, V) of the official model; kmask (B, T) bool: the PLA layers zero k and k_enc where it
    is False, before the feature map (the official inference path's masking of left pads)."""
    sd = {k: v.to(F64) for k, v in sd.items()}
    d, H, f = conf["n_embd"], conf["n_head"], conf["alt_mixer"]["feature_dim"]
    B, T = idx.shape
    emb = sd["transformer.embeddings.word_embeddings.weight"]
    x = emb[idx]
    heads = lambda t, n: t.view(B, -1, H, n).transpose(1, 2)                 # (B, H, T, n)
    for i in range(conf["n_layer"]):
        p, m = f"transformer.layers.{i}.", f"transformer.layers.{i}.mixer."
        h = rms(x, sd[p + "norm1.weight"])
        if i in conf["alt_mixer_2_layers"]:                                   # SlidingAttention
            hd, w = d // H, conf["alt_mixer_2"]["window_size"] // 2
            qkv = (h @ sd[m + "Wqkv.weight"].T).view(B, T, 3, H, hd)          # "(three h d)"
            ang = torch.arange(T, dtype=F64)[:, None] * sd[m + "rotary_emb.inv_freq"][None]   # (T, hd/2)
            cos, sin, r = ang.cos()[:, None], ang.sin()[:, None], hd // 2                   # rotate halves
            rot = lambda t: torch.cat([t[..., :r] * cos - t[..., r:] * sin,
                                       t[..., r:] * cos + t[..., :r] * sin], -1)
            q, k, v = rot(qkv[:, :, 0]), rot(qkv[:, :, 1]), qkv[:, :, 2]        # (B, T, H, hd)
            s = torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(hd)
            i_, j_ = torch.arange(T)[:, None], torch.arange(T)[None]
            s = s.masked_fill(~((j_ <= i_) & (i_ - j_ <= w)), float("-inf"))
            y = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v).reshape(B, T, d)
            h = y @ sd[m + "out_proj.weight"].T
        elif i in conf["alt_mixer_layers"]:                                   # PrefixLinearAttention / Based
            q, k = heads(h @ sd[m + "proj_q.weight"].T, f), heads(h @ sd[m + "proj_k.weight"].T, f)
            v = heads(h @ sd[m + "proj_v.weight"].T, d // H)
            pla = m + "proj_k_enc.weight" in sd
            if pla:
                M = min(conf["alt_mixer"]["enc_length"], T)
                ke = heads(h[:, :M] @ sd[m + "proj_k_enc.weight"].T, f)
                ve = heads(h[:, :M] @ sd[m + "proj_v_enc.weight"].T, d // H)
                if kmask is not None:
                    k, ke = k * kmask[:, None, :, None], ke * kmask[:, None, :M, None]
            q, k = taylor(q), taylor(k)
            num = torch.tril(q @ k.transpose(-1, -2)) @ v
            den = (q * k.cumsum(2)).sum(-1)
            if pla:
                ke = taylor(ke)
                num, den = num + (q @ ke.transpose(-1, -2)) @ ve, den + (q * ke.sum(2, keepdim=True)).sum(-1)
            y = (num / (den[..., None] + 1e-12)).transpose(1, 2).reshape(B, T, d)
            h = y @ sd[m + "out_proj.weight"].T
        else:                                                                 # BaseConv
            u = h @ sd[m + "in_proj.weight"].T + sd[m + "in_proj.bias"]
            u1, u2 = u.split(2 * d, -1)
            c = F.conv1d(u1.transpose(1, 2), sd[m + "conv.conv.weight"], padding=2, groups=2 * d)[..., :T]
            h = (F.silu(c.transpose(1, 2)) * u2) @ sd[m + "out_proj.weight"].T + sd[m + "out_proj.bias"]
        x = x + h
        fc1 = rms(x, sd[p + "norm2.weight"]) @ sd[p + "mlp.fc1.weight"].T
        val, gate = fc1.chunk(2, -1)                                                      # [value, gate]
        x = x + (val * F.silu(gate)) @ sd[p + "mlp.fc2.weight"].T
    return rms(x, sd["transformer.ln_f.weight"]) @ emb.T


# ----------------------------------------------------------------------------- from_official

@pytest.mark.parametrize("linear", ["pla", "la"])
def test_from_official_gives_the_official_logits(linear):
    conf = official_conf(linear)
    sd = official_state_dict(conf)
    model = from_official(sd, conf).double()
    assert model.config.layers == ("conv", linear, "swa", linear, "conv")
    assert model.config.vocab_size == 64 and model.config.window == 4
    assert model.config.mlp_hidden == 256                            # n_inner 64, rounded up to 256
    idx = torch.randint(0, 60, (2, 20), generator=torch.Generator().manual_seed(1))
    want = official_forward(sd, conf, idx)
    got, _ = model(idx)
    assert want.abs().max() > 1                                      # not a trivially small output
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    # the recurrent form from the loaded weights continues the official parallel logits
    logits, cache = model.prefill(idx[:, :12])
    for t in range(12, 20):
        torch.testing.assert_close(logits, want[:, t - 1], rtol=1e-9, atol=1e-9)
        logits, cache = model.step(idx[:, t], cache)


def test_from_official_drops_what_the_official_loader_drops():
    conf = official_conf()
    sd = official_state_dict(conf)
    wrapped = {"model." + k: v for k, v in sd.items() if k != "lm_head.weight"}   # the embedding stored once
    wrapped["train_metrics.num-tokens.count"] = torch.tensor(3)
    idx = torch.randint(0, 60, (1, 10))
    torch.testing.assert_close(from_official(wrapped, conf)(idx)[0], from_official(sd, conf)(idx)[0])


def test_from_official_names_what_does_not_fit():
    conf = official_conf()
    sd = official_state_dict(conf)
    cases = [({k: v for k, v in sd.items() if k != "transformer.layers.1.mixer.proj_k_enc.weight"},
              r"missing \['transformer.layers.1.mixer.proj_k_enc.weight'\]"),
             ({**sd, "transformer.layers.2.mixer.Wqkv.bias": torch.zeros(96)},
              r"unknown \['transformer.layers.2.mixer.Wqkv.bias'\]"),
             ({**sd, "transformer.layers.0.mlp.fc2.weight": torch.zeros(32, 64)},
              r"transformer.layers.0.mlp.fc2.weight: shape \(32, 64\), but the config gives \(32, 256\)"),
             ({**sd, "transformer.layers.2.mixer.rotary_emb.inv_freq": torch.ones(8)},
              r"rotary_emb.inv_freq"),
             ({**sd, "lm_head.weight": sd["lm_head.weight"] + 1}, r"lm_head.weight differs")]
    for bad, msg in cases:
        with pytest.raises(ValueError, match=msg):
            from_official(bad, conf)


def test_official_config_refuses_what_we_do_not_have():
    pla, conv = {"_target_": TARGET["pla"], "num_heads": 2}, {"_target_": TARGET["conv"], "expand_proj": 4}
    cases = [({"mixer": {"_target_": "based.models.mixers.mamba.Mamba"}},
              r"mixer is .*Mamba.*supported: \['BaseConv'"),
             ({"alt_mixer_2": None}, r"layer 2 uses alt_mixer_2, which the config does not define"),
             ({"rms_norm": False}, r"rms_norm = False; supported: True"),
             ({"activation_function": "gelu"}, r"activation_function = 'gelu'"),
             ({"alt_mixer": {"_target_": TARGET["pla"], "num_heads": 4}}, r"alt_mixer.num_heads = 4 differs"),
             # options the official code reads that would build another model (train/src/models/gpt.py)
             ({"scale_attn_by_inverse_layer_idx": True},
              r"^config: scale_attn_by_inverse_layer_idx = True; supported: False \(one softmax scale in "
              r"every layer\)$"),
             ({"scale_attn_weights": False}, r"scale_attn_weights = False; supported: True"),
             ({"mlp_type": "alt"}, r"mlp_type = 'alt'; supported: 'base'"),
             ({"mlp_fc1_bias": True}, r"mlp_fc1_bias = True; supported: False"),
             ({"n_head_kv": 1}, r"n_head_kv = 1; supported: None"),
             ({"rotary_emb_scale_base": 512}, r"rotary_emb_scale_base = 512"),
             ({"parallel_block": True}, r"parallel_block = True"),
             ({"fixed_decay": True}, r"fixed_decay = True"),
             ({"word_embed_proj_dim": 16}, r"word_embed_proj_dim = 16"),
             ({"lm_head_bias": True}, r"lm_head_bias = True"),
             ({"alt_mixer_2": {"_target_": TARGET["swa"], "window_size": 8, "num_heads": 2, "causal": False}},
              r"alt_mixer_2.causal = False; supported: True"),
             ({"alt_mixer": {**pla, "scale_dim": 7}}, r"alt_mixer.scale_dim = 7"),
             ({"alt_mixer": {**pla, "use_mask": False}}, r"alt_mixer.use_mask"),
             ({"alt_mixer": {"_target_": TARGET["pla"]}}, r"alt_mixer.num_heads = None \(the default\)"),
             ({"mixer": {**conv, "use_bias": False}}, r"mixer.use_bias = False"),
             ({"mixer": {"_target_": TARGET["conv"]}}, r"mixer.expand_proj = 2 \(the default\); supported"),
             # wrongly typed values: one line naming the option
             ({"rms_norm": "true"}, r"rms_norm = 'true'; supported: True"),
             ({"rotary_emb_fraction": True}, r"rotary_emb_fraction = True; supported: 1"),
             ({"n_embd": 32.0}, r"n_embd = 32.0; expected a positive int"),
             ({"n_layer": "5"}, r"n_layer = '5'; expected a positive int"),
             ({"n_embd": 31}, r"n_embd = 31; expected a multiple of n_head = 2"),
             ({"n_embd": 30}, r"n_embd / n_head = 15; the sliding-window layers' rotary needs an even head"),
             ({"vocab_size": -1}, r"vocab_size = -1; expected a positive int"),
             ({"n_inner": "64"}, r"n_inner = '64'; expected a positive int or null"),
             ({"layer_norm_epsilon": "1e-5"}, r"layer_norm_epsilon = '1e-5'; expected a number > 0"),
             ({"tie_word_embeddings": 1}, r"tie_word_embeddings = 1; expected true or false"),
             ({"alt_mixer_layers": [1.0, 3]}, r"alt_mixer_layers = \[1.0, 3\]; expected a list of layer"),
             ({"alt_mixer_2_layers": [5]}, r"alt_mixer_2_layers = \[5\]; expected a list of layer indices in "
                                           r"\[0, n_layer = 5\)"),
             ({"mixer": "BaseConv"}, r"mixer = 'BaseConv'; expected an object with a `_target_`"),
             ({"alt_mixer_2": {"_target_": TARGET["swa"], "num_heads": 2, "window_size": "8"}},
              r"alt_mixer_2.window_size = '8'; expected an int >= 2"),
             ({"alt_mixer": {"_target_": TARGET["la"], "num_heads": 2, "feature_dim": 0}},
              r"alt_mixer.feature_dim = 0; expected an int >= 1"),
             ({"alt_mixer": {**pla, "_target_": TARGET["la"], "feature_map": {"_target_": "m.PosELU"}}},
              r"alt_mixer.feature_map = .*PosELU.*supported: TaylorExp")]
    for change, msg in cases:
        with pytest.raises(ValueError, match=msg) as e:
            official_config({**official_conf(), **change})
        assert len(str(e.value).splitlines()) == 1, str(e.value)
    conf = official_conf()
    del conf["n_embd"]
    with pytest.raises(ValueError, match=r"missing \['n_embd'\]"):
        official_config(conf)
    with pytest.raises(ValueError, match=r"config: expected a JSON object \(the official config.json\)"):
        official_config(None)
    conv_only = {**official_conf(), "alt_mixer_layers": [], "alt_mixer_2_layers": [], "qkv_proj_bias": True}
    assert official_config(conv_only).layers == ("conv",) * 5          # attention options: swa only


def test_every_option_the_loader_fixes_is_refused_when_changed():
    from hf import FIXED, FIXED_MIXER, FIXED_SWA

    def other(want):  # a value of the option that the loader does not implement
        if want is None or isinstance(want, bool):
            return 3 if want is None else not want
        return want + "2" if isinstance(want, str) else 2 * want
    for name, (want, _, _) in {**FIXED, **FIXED_SWA}.items():
        with pytest.raises(ValueError, match=rf"^config: {name} = {re.escape(repr(other(want)))}; supported"):
            official_config({**official_conf(), name: other(want)})
    keys = {"conv": "mixer", "pla": "alt_mixer", "swa": "alt_mixer_2"}
    for linear in ("pla", "la"):
        for m, options in FIXED_MIXER.items():
            key = keys.get(m, "alt_mixer")
            if m in ("pla", "la") and m != linear:
                continue
            for name, (want, _, _) in options.items():
                conf = official_conf(linear)
                conf[key] = {**conf[key], name: other(want)}
                with pytest.raises(ValueError, match=rf"^config: {key}.{name} = "):
                    official_config(conf)


@pytest.mark.parametrize("name,preset,millions",
                         [("jrt-360m", "jrt-360m", 356.6), ("jrt-1.3b", "jrt-1.3b", 1375.1)])
def test_released_configs_give_the_papers_models(name, preset, millions):
    with open(os.path.join(FIXTURES, name, "config.json")) as f:
        cfg = official_config(json.load(f))
    assert cfg == PRESETS[preset]                                     # the layout, widths and M of the preset
    with torch.device("meta"):                                        # no memory: only the shapes are counted
        n = Model(cfg).num_params()
    assert round(n / 1e6, 1) == millions


# ----------------------------------------------------------------------------- hf.from_pretrained

def _write(folder, conf, sd, fmt="bin"):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(conf, f)
    if fmt == "bin":
        torch.save(sd, os.path.join(folder, "pytorch_model.bin"))
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in sd.items() if k != "lm_head.weight"},
                  os.path.join(folder, "model.safetensors"))
    return str(folder)


def test_from_pretrained_reads_a_local_directory(tmp_path):
    conf = official_conf()
    sd = official_state_dict(conf)
    idx = torch.randint(0, 60, (2, 14))
    want = official_forward(sd, conf, idx)
    model = from_pretrained(_write(tmp_path / "bin", conf, sd))
    assert not model.training
    torch.testing.assert_close(model.double()(idx)[0], want, rtol=1e-9, atol=1e-9)
    pytest.importorskip("safetensors", reason="optional extra (requirements-extra.txt)")
    model = from_pretrained(_write(tmp_path / "st", conf, sd, fmt="safetensors"))
    torch.testing.assert_close(model.double()(idx)[0], want, rtol=1e-9, atol=1e-9)


class Evil:  # a pickled object whose loading would run code
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_from_pretrained_bad_input_is_one_line(tmp_path, monkeypatch):
    conf = official_conf()
    sd = official_state_dict(conf)
    (tmp_path / "empty").mkdir()
    evil = _write(tmp_path / "evil", conf, sd)
    torch.save({"x": Evil()}, os.path.join(evil, "pytorch_model.bin"))
    mamba = _write(tmp_path / "mamba", {**conf, "mixer": {"_target_": "based.models.mixers.mamba.Mamba"}}, sd)
    cases = [(str(tmp_path / "empty"), r"no config.json in this directory"),
             (evil, r"refused: it holds a Python object \(posix.system\)"),
             (mamba, r"a mixer we do not have; supported"),
             (str(tmp_path / "nothing" / "here" / "x"), r"neither a directory nor a hub name")]
    for where, msg in cases:
        with pytest.raises(ValueError, match=msg):
            from_pretrained(where)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)       # not installed
    with pytest.raises(ValueError, match=r"needs `pip install huggingface_hub.*or pass a local directory"):
        from_pretrained("hazyresearch/JRT-360M-30B")


def test_from_pretrained_offline_says_so(monkeypatch):
    hub = pytest.importorskip("huggingface_hub", reason="optional extra (requirements-extra.txt)")

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to the hub")
    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(ValueError, match=r"could not download 'hazyresearch/JRT-360M-30B'.*local directory"):
        from_pretrained("hazyresearch/JRT-360M-30B")


# ----------------------------------------------------------------------------- the official inference quirks

def test_prefill_official_pads_count_as_the_official_code_lets_them():
    conf = official_conf(enc=16)                                     # M = 16
    sd = official_state_dict(conf)
    model = from_official(sd, conf).double()
    prompts = [[5, 6, 7, 8, 9], list(range(20, 31))]
    idx, pad = left_pad(prompts)
    logits, cache = prefill_official(model, idx, pad, pad_id=3)
    # the reference: each row left-padded with token 3 to M, pads' k zeroed in PLA only
    full = torch.full((2, 16), 3)
    kmask = torch.zeros(2, 16, dtype=torch.bool)
    for b, p in enumerate(prompts):
        full[b, 16 - len(p):], kmask[b, 16 - len(p):] = torch.tensor(p), True
    want = official_forward(sd, conf, full, kmask)
    torch.testing.assert_close(logits, want[:, -1], rtol=1e-9, atol=1e-9)
    exact, _ = model.prefill(idx, pad_mask=pad)                      # ours: pads count for nothing
    assert (exact - logits).abs().max() > 1e-3                       # so the quirk changes the answer
    for t, tok in enumerate([40, 41, 42]):                           # decoding continues the padded prefill
        logits, cache = model.step(torch.tensor([tok, tok]), cache)
        full = torch.cat([full, torch.tensor([[tok], [tok]])], 1)
        kmask = torch.cat([kmask, torch.ones(2, 1, dtype=bool)], 1)
        want = official_forward(sd, conf, full, kmask)
        torch.testing.assert_close(logits, want[:, -1], rtol=1e-9, atol=1e-9)


def test_prefill_official_masks_nothing_past_M_and_equals_prefill_without_pads():
    conf = official_conf(enc=8)
    sd = official_state_dict(conf)
    model = from_official(sd, conf).double()
    idx, pad = left_pad([[5, 6, 7], list(range(20, 32))])             # T = 12 > M = 8: no mask officially
    logits, _ = prefill_official(model, idx, pad, pad_id=3)
    want = official_forward(sd, conf, idx.masked_fill(pad, 3))
    torch.testing.assert_close(logits, want[:, -1], rtol=1e-9, atol=1e-9)
    full = torch.randint(0, 60, (2, 8))                               # T = M, no pads: the same as prefill
    torch.testing.assert_close(prefill_official(model, full, pad_id=3)[0], model.prefill(full)[0])
    with pytest.raises(ValueError, match=r"pad_id=220: expected a token id in \[0, vocab_size = 64\)"):
        prefill_official(model, idx, pad)                              # 220 is outside this tiny vocabulary



def test_official_lm_decodes_the_released_padding_through_the_interface():
    from hf import OfficialLM
    from lm import greedy
    conf = official_conf(enc=16)                                     # M = 16: both rows get padded to it
    model = from_official(official_state_dict(conf), conf).double()
    prompts = [[5, 6, 7, 8, 9], list(range(20, 31))]
    got = greedy(OfficialLM(model, pad_id=3), prompts, max_new_tokens=3, batch_size=2)
    for p, out in zip(prompts, got):                                  # each row alone: prefill_official, steps
        logits, cache = prefill_official(model, torch.tensor([p]), pad_id=3)
        want = []
        for _ in range(3):
            want.append(int(logits.argmax(-1)))
            logits, cache = model.step(torch.tensor(want[-1:]), cache)
        assert out == want
    with pytest.raises(ValueError, match=r"pad_id=220"):              # the released pad id, outside this vocab
        OfficialLM(model).prefill(*left_pad(prompts))


def test_select_keeps_rows_and_leaves_the_cache_alone():
    import copy
    model = from_official(official_state_dict(official_conf()), official_conf()).double()
    idx = torch.randint(0, 60, (3, 10))
    _, cache = model.prefill(idx)
    before = copy.deepcopy(cache)
    l_sub, _ = model.step(torch.tensor([4, 5]), Model.select(cache, torch.tensor([2, 0])))
    flat = lambda c: [t for layer in c for t in (layer.values() if isinstance(layer, dict) else
                                                  layer if isinstance(layer, tuple) else [layer])]
    same = lambda a, b: torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    assert all(same(a, b) for a, b in zip(flat(cache), flat(before)))
    l_all, _ = model.step(torch.tensor([5, 9, 4]), cache)
    torch.testing.assert_close(l_sub, l_all[[2, 0]])


# ----------------------------------------------------------------------------- damaged files

def test_from_pretrained_names_a_damaged_file_in_one_line(tmp_path):
    pytest.importorskip("safetensors", reason="optional extra (requirements-extra.txt)")
    conf, sd = official_conf(), official_state_dict(official_conf())
    folder = _write(tmp_path / "st", conf, sd, fmt="safetensors")
    weights, config = os.path.join(folder, "model.safetensors"), os.path.join(folder, "config.json")
    data = open(weights, "rb").read()
    cases = [(config, b"null", r"config.json: expected a JSON object \(the official config\), got null"),
             (config, b"\xff\xfe{", r"config.json: not valid JSON"),
             (config, json.dumps({**conf, "scale_attn_by_inverse_layer_idx": True}).encode(),
              r"config.json: scale_attn_by_inverse_layer_idx = True; supported: False"),
             (weights, data[:len(data) // 2],
              r"model.safetensors: not a readable safetensors file, truncated or damaged"),
             (weights, data[:5], r"model.safetensors: not a readable safetensors file")]
    good = open(config, "rb").read()
    for path, body, msg in cases:
        with open(path, "wb") as f:
            f.write(body)
        with pytest.raises(ValueError, match=msg) as e:
            from_pretrained(folder)
        assert len(str(e.value).splitlines()) == 1
        with open(path, "wb") as f:
            f.write(good if path == config else data)
    from_pretrained(folder)                                    # restored: loads again


def _hub_cache(tmp_path, conf, sd):
    """A folder laid out as huggingface_hub's cache: snapshots/<commit>/<file> links to blobs/<etag>, the
    etag of the LFS weights being their sha256."""
    import hashlib
    src = _write(tmp_path / "src", conf, sd, fmt="safetensors")
    blobs, snap = tmp_path / "hub" / "blobs", tmp_path / "hub" / "snapshots" / "0123abc"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        data = open(os.path.join(src, name), "rb").read()
        lfs = name.endswith(".safetensors")                            # config.json: a 40-hex name
        etag = hashlib.sha256(data).hexdigest() if lfs else hashlib.sha1(data).hexdigest()
        (blobs / etag).write_bytes(data)
        os.symlink(os.path.join("..", "..", "blobs", etag), snap / name)
    return str(snap), str(blobs / os.path.basename(os.readlink(snap / "model.safetensors")))


def test_a_hub_download_whose_bytes_changed_is_refused(tmp_path, monkeypatch):
    hub = pytest.importorskip("huggingface_hub", reason="optional extra (requirements-extra.txt)")
    pytest.importorskip("safetensors", reason="optional extra (requirements-extra.txt)")
    conf, sd = official_conf(), official_state_dict(official_conf())
    snap, blob = _hub_cache(tmp_path, conf, sd)
    monkeypatch.setattr(hub, "snapshot_download", lambda *args, **kwargs: snap)
    idx = torch.randint(0, 60, (1, 9))
    want = official_forward(sd, conf, idx)
    torch.testing.assert_close(from_pretrained("hazyresearch/JRT-360M-30B").double()(idx)[0], want,
                               rtol=1e-9, atol=1e-9)
    data = bytearray(open(blob, "rb").read())
    data[-3] ^= 0x40                                                 # one flipped bit in a weight...
    with open(blob, "wb") as f:
        f.write(data)
    from safetensors.torch import load_file
    assert load_file(blob)                                           # ...loads, as safetensors sees it
    with pytest.raises(ValueError, match=r"model.safetensors: damaged: its sha256 is [0-9a-f]{12}\.\.\., the "
                                         r"hub recorded [0-9a-f]{12}\.\.\.; delete .* and load again") as e:
        from_pretrained("hazyresearch/JRT-360M-30B")
    assert len(str(e.value).splitlines()) == 1
