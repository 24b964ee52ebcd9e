"""
Models from the Hugging Face hub: the released JRT-RNN / Based checkpoints mapped into our `Model`
(HazyResearch/prefix-linear-attention; `from_official`, `from_pretrained`, and `OfficialLM` to decode
with the released code's padding), and transformers' causal LMs behind lm.py's interface (`HFLM`).
transformers, huggingface_hub, datasets and safetensors are optional (requirements-extra.txt), each
imported only where it is used; a local checkpoint directory needs none of them.
"""
import hashlib
import importlib.machinery
import importlib.util
import inspect
import json
import os
import re
import sys

import torch
import torch.nn.functional as F

from checkpoint import read_checkpoint
from lm import ModelLM, map_tensors, select_rows
from model import Config, Model, _is_int, _is_number, check_tokens

EXTRAS = "pip install -r requirements-extra.txt"


def require(module, what):
    """Import an optional extra, or raise one ImportError line: what needs it and how to install it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ImportError(f"{what} needs the optional package `{module.split('.')[0]}` "
                          f"({EXTRAS}; nothing else here needs it)") from None


def import_transformers(what):
    """transformers, with its hub-kernels integration bound to the installed `kernels` package.

    transformers (>= 5.2x) imports the Hugging Face package `kernels` when its model code loads, and a
    script run from this folder finds our kernels.py under that name first (the script's folder leads
    sys.path). So the installed package stands under the name while that code imports, and ours is put
    back after. USE_HUB_KERNELS=NO, transformers' own switch, keeps it from asking for the package later
    (hub kernels are CUDA builds downloaded on request; nothing here uses them)."""
    transformers = require("transformers", what)
    if "transformers.integrations.hub_kernels" in sys.modules:
        return transformers
    os.environ.setdefault("USE_HUB_KERNELS", "NO")
    path = [p for p in sys.path if not os.path.isfile(os.path.join(p or ".", "kernels.py"))]  # skip our file
    spec = importlib.machinery.PathFinder.find_spec("kernels", path)
    if spec is None:  # not installed: transformers sees no hub kernels and uses its own stubs
        import transformers.integrations.hub_kernels  # noqa: F401
        return transformers
    ours = sys.modules.get("kernels")
    try:
        sys.modules["kernels"] = theirs = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(theirs)
        import transformers.integrations.hub_kernels  # noqa: F401  (the modules that import `kernels`)
        import transformers.modeling_utils  # noqa: F401
    finally:
        if ours is None:
            sys.modules.pop("kernels", None)  # a later `import kernels` finds our file again
        else:
            sys.modules["kernels"] = ours
    return transformers


# ---------------------------------------------------------------- the released checkpoints (official code)
# The official code (HazyResearch/prefix-linear-attention, train/src/models/gpt.py) builds a GPT-2 style
# config whose layer layout is alt_mixer_2_layers (sliding window), alt_mixer_layers (PLA or Based linear
# attention), and `mixer` (BaseConv) everywhere else. Its weights are those of our mixers under other names.

OFFICIAL_MIXERS = {"PrefixLinearAttention": "pla", "LinearAttention": "la", "SlidingAttention": "swa",
                   "BaseConv": "conv"}  # the official mixer class (the end of `_target_`) -> ours
OFFICIAL_NAMES = {  # ours -> the official module name inside transformer.layers.i.mixer
    "pla": {"q": "proj_q", "k": "proj_k", "v": "proj_v", "k_enc": "proj_k_enc", "v_enc": "proj_v_enc",
            "out": "out_proj"},
    "la": {"q": "proj_q", "k": "proj_k", "v": "proj_v", "out": "out_proj"},
    "swa": {"qkv": "Wqkv", "out": "out_proj"},  # Wqkv's rows are [q, k, v], each (heads, head dim): ours too
    "conv": {"inp": "in_proj", "conv": "conv.conv", "out": "out_proj"},  # in_proj: [u1 (conv), u2 (gate)]
}


# Official options that change the function the model computes, each with the one value our Model implements
# and the official default (train/src/models/gpt.py, flash-attn's GatedMlp, based/models/mixers/*). A config
# that sets another value, or leaves a key out whose default differs, is refused: it builds another model.
# Options for speed or training only (dropouts, init, fused_dropout_add_ln, fused_bias_fc, use_flash_attn,
# residual_in_fp32, l_max, implementation, feature_name, num_key_value_heads, kernel_sizes) are not read.
FIXED = {  # option: (what we implement, the official default, what it means)
    "rms_norm": (True, False, "RMSNorm blocks"),
    "activation_function": ("swiglu", "gelu_new", "the gated SiLU MLP"),
    "mlp_type": ("base", "base", "GatedMlp with fc1 -> [value, gate]"),
    "mlp_fc1_bias": (False, True, "MLP without bias"),
    "mlp_fc2_bias": (False, True, "MLP without bias"),
    "fused_mlp": (False, False, "the gated MLP"),
    "fused_dense_sqrelu_dense": (False, False, "the gated MLP"),
    "prenorm": (True, True, "pre-norm blocks"),
    "parallel_block": (False, False, "the MLP after the mixer"),
    "word_embed_proj_dim": (None, None, "no projection between embedding and width"),
    "lm_head_bias": (False, False, "an output layer without bias"),
    "fixed_decay": (False, False, "no decay in linear attention"),
}
FIXED_SWA = {  # read for sliding-window layers only (sliding_window_additions)
    "qkv_proj_bias": (False, True, "Wqkv without bias"),
    "out_proj_bias": (False, True, "out_proj without bias"),
    "rotary_emb_fraction": (1, 0.0, "rotary over the full head dim"),
    "rotary_emb_interleaved": (False, False, "rotation of halves"),
    "rotary_emb_scale_base": (None, None, "plain rotary, no XPos"),
    "scale_attn_weights": (True, True, "softmax scale 1/sqrt(head dim)"),
    "scale_attn_by_inverse_layer_idx": (False, False, "one softmax scale in every layer"),
    "n_head_kv": (None, None, "as many key/value heads as query heads"),
    "num_head_kv": (None, None, "as many key/value heads as query heads"),
}
FIXED_MIXER = {  # our mixer: {option of its spec: (what we implement, the official default, what it means)}
    "conv": {"use_bias": (True, True, "in_proj and out_proj with bias"),
             "expand_proj": (4, 2, "in_proj d -> 4d"),
             "use_cuda": (False, False, "a conv without bias (causal-conv1d's adds one)")},
    "pla": {"eps": (1e-12, 1e-12, "the normaliser's epsilon"),
            "scale_dim": (None, None, "the Taylor map scaled by f"),
            "use_mask": (True, True, "the pads' keys zeroed in prefill_official")},
    "la": {"eps": (1e-12, 1e-12, "the normaliser's epsilon"), "use_decay_proj": (False, False, "no decay"),
           "head_dim": (None, None, "head dim d_model / n_head")},
    "swa": {"causal": (True, True, "a causal window")},
}


def _same(got, want):
    """got is want's value with want's type (True is not 1, 1.0 is 1)."""
    if want is None or isinstance(want, (bool, str)):
        return got is want if want is None or isinstance(want, bool) else got == want
    return isinstance(got, (int, float)) and not isinstance(got, bool) and got == want


def official_config(config):
    """The official config.json (a dict) -> our Config. An option, mixer or value that we do not implement,
    or a value of the wrong type, is a ValueError that names it and says what is supported."""
    if not isinstance(config, dict):
        raise ValueError(f"config: expected a JSON object (the official config.json), "
                         f"got {type(config).__name__}")
    c = dict(config)
    missing = [k for k in ("n_embd", "n_layer", "n_head", "vocab_size") if k not in c]
    if missing:
        raise ValueError(f"config: missing {missing}; a released config.json has n_embd, n_layer, n_head, "
                         "vocab_size, alt_mixer_layers, alt_mixer_2_layers and the mixer settings")

    def need(where, name, got, ok, what):  # one line naming the option, its value and what is allowed
        if not ok(got):
            raise ValueError(f"config: {where}{name} = {got!r}; expected {what}")
        return got
    pos_int = lambda x: _is_int(x) and x >= 1
    for k in ("n_embd", "n_layer", "n_head", "vocab_size"):
        need("", k, c[k], pos_int, "a positive int")
    d, n_layer, H = c["n_embd"], c["n_layer"], c["n_head"]
    need("", "n_embd", d, lambda x: x % H == 0, f"a multiple of n_head = {H}")
    need("", "pad_vocab_size_multiple", c.get("pad_vocab_size_multiple", 1), pos_int, "a positive int")
    for k in ("n_inner", "enc_length"):
        need("", k, c.get(k), lambda x: x is None or pos_int(x), "a positive int or null")
    for k in ("layer_norm_epsilon", "rotary_emb_base"):
        need("", k, c.get(k, 1.0), lambda x: _is_number(x) and x > 0, "a number > 0")
    need("", "tie_word_embeddings", c.get("tie_word_embeddings", True), lambda x: isinstance(x, bool),
         "true or false")
    indices = lambda x: x is None or isinstance(x, list) and all(_is_int(i) and 0 <= i < n_layer for i in x)
    for k in ("alt_mixer_layers", "alt_mixer_2_layers"):
        need("", k, c.get(k), indices, f"a list of layer indices in [0, n_layer = {n_layer})")
    spec_ok = lambda x: x is None or isinstance(x, dict) and isinstance(x.get("_target_"), str)
    for k in ("mixer", "alt_mixer", "alt_mixer_2"):
        need("", k, c.get(k), spec_ok, "an object with a `_target_` class name, or null")

    def kind(key):  # the mixer a config entry builds: None when absent (the official code then uses MHA)
        spec = c.get(key)
        if spec is None:
            return None
        target = spec["_target_"].rsplit(".", 1)[-1]
        if target not in OFFICIAL_MIXERS:
            raise ValueError(f"config: {key} is {spec['_target_']!r}, a mixer we do not have; "
                             f"supported: {sorted(OFFICIAL_MIXERS)}")
        return OFFICIAL_MIXERS[target]
    layers = []
    for i in range(n_layer):
        key = ("alt_mixer_2" if i in (c.get("alt_mixer_2_layers") or []) else
               "alt_mixer" if i in (c.get("alt_mixer_layers") or []) else "mixer")
        if kind(key) is None:
            raise ValueError(f"config: layer {i} uses {key}, which the config does not define (the official "
                             f"code then builds full attention, which this loader does not map); supported "
                             f"mixers: {sorted(OFFICIAL_MIXERS)}")
        layers.append(kind(key))
    if "swa" in layers and (d // H) % 2:
        raise ValueError(f"config: n_embd / n_head = {d // H}; the sliding-window layers' rotary needs an "
                         "even head dim")
    fixed = {**FIXED, **(FIXED_SWA if "swa" in layers else {})}
    for name, (want, default, why) in fixed.items():
        got = c.get(name, default)
        if not _same(got, want):
            raise ValueError(f"config: {name} = {got!r}{' (the default)' * (name not in c)}; "
                             f"supported: {want!r} ({why})")
    specs = {key: c[key] for key in ("mixer", "alt_mixer", "alt_mixer_2") if kind(key) in layers}
    for key, spec in specs.items():
        m = kind(key)
        for name, (want, default, why) in FIXED_MIXER[m].items():
            got = spec.get(name, default)
            spelled_out = {"scale_dim": spec.get("feature_dim", 16), "head_dim": d // H}  # None's meaning
            if name in spelled_out and got == spelled_out[name]:
                continue
            if not _same(got, want):
                raise ValueError(f"config: {key}.{name} = {got!r}{' (the default)' * (name not in spec)}; "
                                 f"supported: {want!r} ({why})")
        heads = spec.get("num_heads", 16 if m == "la" else None)  # LinearAttention's default is 16 heads
        if m != "conv" and heads != H:
            default = " (the default)" * ("num_heads" not in spec)
            raise ValueError(f"config: {key}.num_heads = {heads!r}{default} differs from n_head = {H}; our "
                             "Config has one head count for every mixer")
        sizes = {"conv": {"kernel_size": 3}, "la": {"feature_dim": 16}, "swa": {"window_size": 256},
                 "pla": {"feature_dim": 16, "enc_length": c.get("enc_length") or 1024}}[m]
        for name, default in sizes.items():
            low = 2 if name == "window_size" else 1                 # a window of w looks w/2 back
            need(f"{key}.", name, spec.get(name, default), lambda x: _is_int(x) and x >= low,
                 f"an int >= {low}")
        fmap, f = spec.get("feature_map"), spec.get("feature_dim", 16)
        taylor = isinstance(fmap, dict) and str(fmap.get("_target_", "")).endswith("TaylorExp")
        if m == "la" and fmap is not None and not (taylor and fmap.get("input_dim", f) == f):
            raise ValueError(f"config: {key}.feature_map = {fmap!r}; supported: TaylorExp over feature_dim "
                             "(the Based feature map)")
    swa = c.get("alt_mixer_2") or {}
    if swa.get("window_size") == 4096 and {7, 17} & {i for i, m in enumerate(layers) if m == "swa"}:
        raise ValueError("config: alt_mixer_2.window_size = 4096; the official SlidingAttention then uses "
                         "256 at layers 7 and 17 only, and our Config has one window for every layer")
    la, conv = c.get("alt_mixer") or {}, c.get("mixer") or {}
    multiple = c.get("pad_vocab_size_multiple", 1)
    hidden = -(-(c.get("n_inner") or int(8 * d / 3)) // 256) * 256  # GatedMlp rounds up to a multiple of 256
    return Config(vocab_size=-(-c["vocab_size"] // multiple) * multiple, d_model=d, layers=tuple(layers),
                  n_head=H, feature_dim=la.get("feature_dim", 16),
                  window=swa.get("window_size", 256) // 2,                  # a window w looks w/2 back
                  conv_kernel=conv.get("kernel_size", 3), mlp_hidden=0 if hidden == 2 * d else hidden,
                  prefix_len=la.get("enc_length") or c.get("enc_length") or 1024,
                  rope_base=float(c.get("rotary_emb_base", 10000.0)),
                  norm_eps=c.get("layer_norm_epsilon", 1e-5),
                  tie_embeddings=c.get("tie_word_embeddings", True))


def _official_keys(cfg):
    """Our parameter name -> the official key, for every parameter of Model(cfg)."""
    keys = {"wte.weight": "transformer.embeddings.word_embeddings.weight",
            "norm_f.weight": "transformer.ln_f.weight"}
    if not cfg.tie_embeddings:
        keys["lm_head.weight"] = "lm_head.weight"
    for i, m in enumerate(cfg.layers):
        ours, theirs = f"blocks.{i}", f"transformer.layers.{i}"
        for p in ("norm1.weight", "norm2.weight", "mlp.fc1.weight", "mlp.fc2.weight"):
            keys[f"{ours}.{p}"] = f"{theirs}.{p}"
        for mine, official in OFFICIAL_NAMES[m].items():
            for p in ("weight", "bias") if m == "conv" and mine != "conv" else ("weight",):
                keys[f"{ours}.mixer.{mine}.{p}"] = f"{theirs}.mixer.{official}.{p}"
    return keys


def from_official(state_dict, config):
    """A state dict in the official key layout (HazyResearch's train/src/models/gpt.py) -> our Model
    (eval mode) with the same logits. config: the official config.json as a dict, or our Config. Keys the
    official loader drops are dropped too (a leading "model.", Lightning's "*metrics*" counters);
    rotary_emb.inv_freq buffers are checked against our rotary, then ignored; any other unknown key, a
    missing key or a wrong shape is a ValueError naming them."""
    cfg = config if isinstance(config, Config) else official_config(config)
    sd = {re.sub(r"^model\.", "", k): v for k, v in state_dict.items() if "metrics" not in k}
    sd = {k.replace("conv1", "conv"): v for k, v in sd.items()}    # older checkpoints name the conv `conv1`
    hd = cfg.d_model // cfg.n_head
    for k in [k for k in sd if k.endswith("rotary_emb.inv_freq")]:
        want = cfg.rope_base ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        got = sd.pop(k)
        if tuple(got.shape) != (hd // 2,) or not torch.allclose(got.double().cpu(), want, rtol=1e-3, atol=0):
            raise ValueError(f"{k}: not the rotary of base {cfg.rope_base} over head dim {hd} that this "
                             "config gives")
    if "lm_head.weight" in sd and cfg.tie_embeddings:              # tied: one matrix, stored once or twice
        head = sd.pop("lm_head.weight")
        emb = sd.setdefault("transformer.embeddings.word_embeddings.weight", head)
        if emb.shape != head.shape or not torch.equal(emb, head):
            raise ValueError("lm_head.weight differs from transformer.embeddings.word_embeddings.weight, but "
                             "the config ties them (tie_word_embeddings); set tie_word_embeddings=false for "
                             "untied weights")
    keys = _official_keys(cfg)
    missing = sorted(set(keys.values()) - set(sd))
    unknown = sorted(set(sd) - set(keys.values()))
    if missing or unknown:
        show = lambda ks: f"{ks[:4]}" + (f" and {len(ks) - 4} more" if len(ks) > 4 else "")
        what = "; ".join(f"{w} {show(ks)}" for w, ks in (("missing", missing), ("unknown", unknown)) if ks)
        raise ValueError(f"the state dict does not fit the config's layout "
                         f"({', '.join(cfg.layers[:3])}, ...): {what}")
    model = Model(cfg)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for mine, theirs in keys.items():
            if tuple(sd[theirs].shape) != tuple(params[mine].shape):
                raise ValueError(f"{theirs}: shape {tuple(sd[theirs].shape)}, but the config gives "
                                 f"{tuple(params[mine].shape)}")
            params[mine].copy_(sd[theirs])
    return model.eval()


def from_pretrained(name_or_dir, device="cpu"):
    """config.json and the weights of a released checkpoint -> Model in eval mode.
    Weights from huggingface_hub's cache are checked against the sha256 the hub recorded for them; a damaged,
    truncated or malformed file is one ValueError line that names it."""
    config_path, weight_paths = _pretrained_files(name_or_dir)
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object (the official config), "
                         f"got {json.dumps(config)[:40]}")
    try:
        cfg = official_config(config)
    except ValueError as e:
        raise ValueError(f"{config_path}: {str(e).removeprefix('config: ')}") from None
    state_dict = {}
    for path in weight_paths:
        _check_hub_blob(path)
        state_dict.update(_load_weights(path))
    return from_official(state_dict, cfg).to(device).eval()


def _check_hub_blob(path):
    """huggingface_hub keeps each downloaded file as blobs/<etag> and links to it from the snapshot folder;
    for LFS files (the weights) the etag is the sha256 of the content. A file that no longer hashes to its
    name was cut short or damaged after the download: refused in one line. Files elsewhere (a local
    directory) and small git files such as config.json have no sha256 to compare; JSON and the safetensors
    header catch what they can."""
    blob = os.path.realpath(path)
    sha = os.path.basename(blob)
    if not os.path.islink(path) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        return
    h = hashlib.sha256()
    with open(blob, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    if h.hexdigest() != sha:
        raise ValueError(f"{path}: damaged: its sha256 is {h.hexdigest()[:12]}..., the hub recorded "
                         f"{sha[:12]}...; delete {blob} and load again to download it anew")


def _pretrained_files(name_or_dir):
    """(config.json, [weight files]) of a local directory, or of a hub repository downloaded once."""
    if os.path.isdir(name_or_dir):
        folder = name_or_dir
    elif os.path.exists(name_or_dir) or not re.fullmatch(r"[\w.-]+/[\w.-]+", str(name_or_dir)):
        raise ValueError(f"name_or_dir={name_or_dir!r}: neither a directory nor a hub name like "
                         "'hazyresearch/JRT-360M-30B'")
    else:
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise ValueError(f"{name_or_dir!r} is a hub name: downloading it needs `pip install "
                             "huggingface_hub safetensors` (see requirements-extra.txt); or pass a local "
                             "directory holding config.json and the weights") from None
        try:
            folder = snapshot_download(name_or_dir, allow_patterns=["config.json", "*.safetensors"])
            if not any(f.endswith(".safetensors") for f in os.listdir(folder)):
                folder = snapshot_download(name_or_dir, allow_patterns=["config.json", "pytorch_model*.bin"])
        except Exception as e:  # offline, unknown repository, no access: one line, whatever the hub raised
            raise ValueError(f"could not download {name_or_dir!r} from the Hugging Face hub "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                             "pass a local directory holding config.json and the weights instead") from None
    files = sorted(os.listdir(folder))
    weights = ([f for f in files if f.endswith(".safetensors")]
               or [f for f in files if re.fullmatch(r"pytorch_model.*\.bin", f)])
    if "config.json" not in files or not weights:
        what = "config.json" if "config.json" not in files else "weights (pytorch_model.bin or *.safetensors)"
        raise ValueError(f"{folder}: no {what} in this directory; a released checkpoint directory holds the "
                         "official config.json and pytorch_model.bin or *.safetensors")
    return os.path.join(folder, "config.json"), [os.path.join(folder, f) for f in weights]


def _load_weights(path):
    """A weight file -> state dict of tensors; never runs pickled code."""
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ValueError(f"{path}: reading *.safetensors needs `pip install safetensors`") from None
        try:
            return load_file(path)
        except Exception as e:  # safetensors checks the header and the byte ranges: a cut or garbled file
            raise ValueError(f"{path}: not a readable safetensors file, truncated or damaged "
                             f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})") from None
    sd = read_checkpoint(path)  # weights_only=True: a file that would run code is refused, in one line
    sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd  # Lightning keeps it one level down
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict of tensors")
    return sd


# ---------------------------------------------------------------- the released code's padding at inference
OFFICIAL_PAD_ID = 220   # GPT-2's " ": the token the released code pads prompts with


@torch.no_grad()
def prefill_official(model, idx, pad_mask=None, pad_id=OFFICIAL_PAD_ID):
    """`Model.prefill` as the released JRT-RNN code runs at inference, to reproduce its reported numbers
    (our exact padding, `prefill`, stays the default everywhere else); decode with `model.step` as usual:
    - rows shorter than M = config.prefix_len (1024) are left-padded to M with token `pad_id` (220, " "),
      and the pads already in idx (pad_mask) become `pad_id` too;
    - pads are ordinary tokens to conv, swa, la and the MLPs, and lie inside the prefix, which is the
      first min(M, T) positions of the padded row;
    - pla layers zero the pads' k and k_enc before φ, but only when T <= M (the official code masks
      only then): φ(0) = [1, 0, ..., 0], so each pad still adds 1 to both normalisers and its v, v_enc
      to the numerators."""
    V, M = model.config.vocab_size, model.config.prefix_len
    if not (isinstance(pad_id, int) and 0 <= pad_id < V):
        raise ValueError(f"pad_id={pad_id!r}: expected a token id in [0, vocab_size = {V})")
    check_tokens(model.config, idx, None, pad_mask)
    real = torch.ones_like(idx, dtype=torch.bool) if pad_mask is None else ~pad_mask   # (B, T)
    idx = idx.masked_fill(~real, pad_id)
    if idx.shape[1] < M:                                                    # left-pad to M
        idx, real = F.pad(idx, (M - idx.shape[1], 0), value=pad_id), F.pad(real, (M - idx.shape[1], 0))
    hooks = []
    if idx.shape[1] <= M and not bool(real.all()):
        keep = real[..., None]                                              # (B, T, 1)

        def zero_pad_keys(linear, inputs, k):                              # k (B, T or M, H·f)
            return k * keep[:, :k.shape[1]].to(k.dtype)
        hooks = [lin.register_forward_hook(zero_pad_keys) for b in model.blocks if b.name == "pla"
                 for lin in (b.mixer.k, b.mixer.k_enc)]
    try:
        return model.prefill(idx)
    finally:
        for h in hooks:
            h.remove()


class OfficialLM(ModelLM):
    """Our Model behind the interface, prefilled with the released code's padding (`prefill_official`)."""

    def __init__(self, model, pad_id=OFFICIAL_PAD_ID):
        super().__init__(model)
        self.pad_id = pad_id

    def prefill(self, idx, pad_mask=None):
        logits, cache = prefill_official(self.model, idx, pad_mask, self.pad_id)
        return logits.float(), cache


# ------------------------------------------------------------ transformers' models behind the interface

class HFLM:
    """A Hugging Face causal LM behind the interface.

    mode "cache"  (any model that returns a transformers `Cache`: GPT-2, Llama and other Transformers,
                  Mamba, Falcon-Mamba, Mamba-2): prefill, then one token per step from the model's own
                  cache; rows are selected by indexing its batch-first tensors. The model writes into the
                  cache it is given, so `step` hands it a copy: the caller's cache stays as it was, as with
                  our Model.
    mode "rerun"  (RWKV, RecurrentGemma: no `Cache` object): the "cache" is the token ids so far, and each
                  step re-reads the whole sequence: O(T) work per token, slow but correct.

    `supports_padding`: left padding is exact, i.e. a padded row gives the logits of the row alone, for
      - Transformers whose every cached layer is attention and that take position_ids: the pads are
        masked out of every softmax and each row's positions count from its first real token;
      - the Mamba family (CACHED): it zeroes the pads' inputs before and after its convolution, so a pad
        never enters the conv or SSM state.
    Elsewhere (RWKV, RecurrentGemma, hybrids with other recurrent layers) pads would enter the state:
    the prompt harness then batches only prompts of equal length, and OPRM refuses the model.
    Checked on tiny random GPT-2, Llama, Mamba, Falcon-Mamba and Mamba-2 models with transformers 5.24 and
    5.25. Import transformers through `import_transformers` (below) when running from this folder.
    """
    CACHED = ("mamba", "falcon_mamba", "mamba2")  # recurrent families whose cache keeps left pads out
    PADDED = "Transformers with a KV cache (GPT-2, Llama, ...), " + ", ".join(CACHED)

    def __init__(self, model, mode="auto"):
        if mode not in ("auto", "cache", "rerun"):
            raise ValueError(f"mode must be 'auto', 'cache' or 'rerun'; got {mode!r}")
        self.model = model.eval()
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        args = inspect.signature(model.forward).parameters
        # transformers 5.24+ names every cache `cache`; earlier versions past_key_values or cache_params
        self._cache_arg = next((a for a in ("cache", "past_key_values", "cache_params") if a in args), None)
        cache = self._probe() if self._cache_arg else None
        Cache = import_transformers("HFLM").Cache
        linear = any(getattr(cache, "is_linear", []))            # a recurrent layer in the cache
        attention = isinstance(cache, Cache) and not linear and "position_ids" in args
        kind = model.config.model_type
        self._positions = attention  # pass position_ids counted from each row's first real token
        self.supports_padding = attention or (isinstance(cache, Cache) and kind in self.CACHED)
        if mode == "cache" and not self.supports_padding:
            raise ValueError(f"a {kind!r} model cannot be decoded from a selectable cache that keeps left "
                             f"pads out of its state; supported: {self.PADDED} (others run in mode='rerun', "
                             "exact only for batches of equal-length prompts)")
        self.mode = "cache" if isinstance(cache, Cache) and mode != "rerun" else "rerun"

    @torch.no_grad()
    def _probe(self):
        """The cache the model returns for one token: its kind sets the mode and whether padding is exact."""
        out = self.model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=self.device), use_cache=True)
        return self._out_cache(out)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(cls, name, mode="auto", **kwargs):
        """e.g. HFLM.from_pretrained("state-spaces/mamba-130m-hf") (downloads the weights once)."""
        transformers = import_transformers(f"the Hugging Face model {name!r}")
        return cls(transformers.AutoModelForCausalLM.from_pretrained(name, **kwargs), mode)

    @staticmethod
    def _out_cache(out):
        names = ("cache", "past_key_values", "cache_params")
        return next((out[k] for k in names if out.get(k) is not None), None)

    def _forward(self, idx, mask, pos, cache=None):
        """logits (B, V) of the last position, and the model's new cache. mask (B, T) long: 1 = real token;
        pos (B, idx's T): each token's position."""
        kw = {"position_ids": pos} if self._positions else {}
        limit = getattr(self.model.config, "n_positions", None)  # a learned position table (GPT-2) ends there
        if self._positions and isinstance(limit, int) and pos.max() >= limit:
            raise ValueError(f"the prompt and answer need {int(pos.max()) + 1} positions, but this "
                             f"{self.model.config.model_type!r} model has n_positions = {limit}: shorten the "
                             "input or the answer (max_new_tokens)")
        if cache is not None:
            kw[self._cache_arg] = cache
        if cache is None or self._positions:  # the Mamba family reads the mask only while the pads go by
            kw["attention_mask"] = mask
        out = self.model(input_ids=idx, use_cache=self.mode == "cache", **kw)
        return out.logits[:, -1].float(), self._out_cache(out)

    @torch.no_grad()
    def prefill(self, idx, pad_mask=None):
        mask = torch.ones_like(idx) if pad_mask is None else (~pad_mask).long()   # (B, T)
        pos = (mask.cumsum(1) - 1).clamp(min=0)                                    # a row starts at 0
        logits, hf = self._forward(idx, mask, pos)
        if self.mode == "rerun":
            return logits, {"idx": idx, "mask": mask}
        return logits, {"hf": hf, "B": idx.shape[0], "mask": mask, "pos": mask.sum(1)}  # pos: the next one

    @torch.no_grad()
    def step(self, idx_t, cache):
        if self.mode == "rerun":
            idx, mask = torch.cat([cache["idx"], idx_t[:, None]], 1), F.pad(cache["mask"], (0, 1), value=1)
            logits, _ = self._forward(idx, mask, (mask.cumsum(1) - 1).clamp(min=0))
            return logits, {"idx": idx, "mask": mask}
        hf = map_tensors(cache["hf"], torch.clone)   # the model writes into the cache it gets: a copy
        mask = F.pad(cache["mask"], (0, 1), value=1)
        logits, hf = self._forward(idx_t[:, None], mask, cache["pos"][:, None], hf)
        return logits, {"hf": hf, "B": idx_t.shape[0], "mask": mask, "pos": cache["pos"] + 1}

    def select(self, cache, rows):
        rows = torch.as_tensor(rows, dtype=torch.long)
        if self.mode == "rerun":
            return {"idx": cache["idx"][rows], "mask": cache["mask"][rows]}
        return {"hf": select_rows(cache["hf"], rows, cache["B"]), "B": len(rows),
                "mask": cache["mask"][rows], "pos": cache["pos"][rows]}


class HFTokenizer:
    """A Hugging Face tokenizer with the methods the harnesses use (tiktoken's names)."""

    def __init__(self, tok):
        self.tok, self.n_vocab = tok, len(tok)

    @classmethod
    def from_pretrained(cls, name):
        transformers = import_transformers(f"the tokenizer of {name!r}")
        return cls(transformers.AutoTokenizer.from_pretrained(name))

    def encode_ordinary(self, s):
        return self.tok.encode(s, add_special_tokens=False)

    def decode(self, ids):
        return self.tok.decode(ids)

    def decode_with_offsets(self, ids):  # character offset of each token, as tiktoken gives it
        offsets, n = [], 0
        for i in ids:
            offsets.append(n)
            n += len(self.tok.decode([i]))
        return self.tok.decode(ids), offsets


def load(name, device="cpu", mode="auto"):
    """A hub name or local path -> (HFLM on `device`, HFTokenizer). One ValueError line when it cannot load
    (no such model, offline, a family transformers does not know)."""
    import_transformers(f"--hf {name}")
    try:
        lm, tok = HFLM.from_pretrained(name, mode), HFTokenizer.from_pretrained(name)
    except (OSError, ValueError, KeyError) as e:  # what from_pretrained raises for a missing or unknown model
        raise ValueError(f"--hf {name}: could not load it with transformers ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    lm.model.to(device)
    return lm, tok


def load_dataset(path, name=None, split="test"):
    """datasets.load_dataset, with one line when the package is missing or the hub cannot be reached."""
    datasets = require("datasets", f"the data set {path}")
    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as e:  # offline, unknown set, no access: whatever datasets raised, in one line
        raise ValueError(f"could not load the data set {path}{'/' + name if name else ''} "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); a machine with "
                         "internet downloads it once (then it is cached), or pass your own rows as a .jsonl "
                         "file") from None
