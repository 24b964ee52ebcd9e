"""
Hugging Face models behind the interface of prompt.py and chunked.py, and the optional extras' imports.

The interface (our `Model` meets it itself; `model.ModelLM` fixes its prefill options):

    lm.vocab_size                          int
    lm.prefill(idx, pad_mask=None)         idx (B, T) int64, left-padded where pad_mask (B, T) is True
                                           -> (logits (B, V) for the next token, cache)
    lm.step(idx_t, cache)                  idx_t (B,) -> (logits (B, V), cache): one more token per row
    lm.select(cache, rows)                 the cache of batch rows `rows` (indices), in that order

`HFLM` puts a transformers causal LM behind it. Nothing here is imported by the rest of the project
unless a Hugging Face model, tokenizer or dataset is asked for: transformers, huggingface_hub, datasets
and safetensors are optional (requirements-extra.txt), and each is imported only where it is used.
"""
import copy
import inspect

import torch
import torch.nn.functional as F

EXTRAS = "pip install -r requirements-extra.txt"


def require(module, what):
    """Import an optional extra, or raise one ImportError line that says what needs it and how to install it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise ImportError(f"{what} needs the optional package `{module.split('.')[0]}` "
                          f"({EXTRAS}; nothing else here needs it)") from None


def _select_rows(obj, rows, B):
    """A copy of a cache object keeping batch rows `rows`: every tensor whose first dim is the batch size B
    is indexed, inside lists, tuples, dicts and plain objects (transformers' cache classes); the rest is
    shared. The original is left as it was."""
    if isinstance(obj, torch.Tensor):
        return obj.index_select(0, rows.to(obj.device)) if obj.dim() and obj.shape[0] == B else obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(_select_rows(o, rows, B) for o in obj)
    if isinstance(obj, dict):
        return {k: _select_rows(v, rows, B) for k, v in obj.items()}
    if hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
        new = copy.copy(obj)
        for k, v in vars(obj).items():
            setattr(new, k, _select_rows(v, rows, B))
        return new
    return obj


class HFLM:
    """A Hugging Face causal LM behind the interface.

    mode "cache"  (Mamba, Falcon-Mamba, Mamba-2): prefill, then one token per step from the model's own
                  cache object; rows are selected by indexing its batch-first tensors. Left padding is
                  exact: these models take attention_mask and zero the pads' inputs before and after
                  their convolution, so a pad never enters the conv or SSM state (tested: a left-padded
                  batch gives the logits and states of each row alone). OPRM needs this mode.
    mode "rerun"  (RWKV, RecurrentGemma, anything else): the "cache" is the token ids so far, and each
                  step re-reads the whole sequence: O(T) work per token, slow but correct for any model.
                  Neither masks left padding exactly, so `supports_padding` is False and prompt.greedy
                  batches only prompts of equal length; chunked.py refuses these families.
    Checked on tiny random models with transformers 5.24 (Mamba, Falcon-Mamba, Mamba-2: step and select
    match the full forward pass); other versions may name or lay out the cache differently.
    """
    CACHED = ("mamba", "falcon_mamba", "mamba2")

    def __init__(self, model, mode="auto"):
        if mode not in ("auto", "cache", "rerun"):
            raise ValueError(f"mode must be 'auto', 'cache' or 'rerun'; got {mode!r}")
        kind = model.config.model_type
        if mode == "cache" and kind not in self.CACHED:
            raise ValueError(f"a {kind!r} model cannot be decoded from a selectable cache that keeps left pads out "
                             f"of its state; supported families: {', '.join(self.CACHED)} (others run in "
                             "mode='rerun', exact only for batches of equal-length prompts)")
        self.model = model.eval()
        self.mode = ("cache" if kind in self.CACHED else "rerun") if mode == "auto" else mode
        self.supports_padding = kind in self.CACHED
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        # transformers >= 5.2x names the recurrent cache `cache`; earlier versions `cache_params`
        self._cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "cache_params"

    @property
    def device(self):
        return next(self.model.parameters()).device

    @classmethod
    def from_pretrained(cls, name, mode="auto", **kwargs):
        """e.g. HFLM.from_pretrained("state-spaces/mamba-130m-hf") (downloads the weights once)."""
        transformers = require("transformers", f"the Hugging Face model {name!r}")
        return cls(transformers.AutoModelForCausalLM.from_pretrained(name, **kwargs), mode)

    def _out_cache(self, out):
        return out.get("cache", None) if out.get("cache", None) is not None else out.get("cache_params", None)

    @torch.no_grad()
    def prefill(self, idx, pad_mask=None):
        am = None if pad_mask is None else (~pad_mask).long()
        if self.mode == "rerun":
            out = self.model(input_ids=idx, attention_mask=am)
            return out.logits[:, -1].float(), {"idx": idx, "pad": pad_mask}
        out = self.model(input_ids=idx, attention_mask=am, use_cache=True)
        return out.logits[:, -1].float(), {"hf": self._out_cache(out), "B": idx.shape[0]}

    @torch.no_grad()
    def step(self, idx_t, cache):
        if self.mode == "rerun":
            idx = torch.cat([cache["idx"], idx_t[:, None]], 1)
            pad = None if cache["pad"] is None else F.pad(cache["pad"], (0, 1), value=False)
            return self.prefill(idx, pad)
        out = self.model(input_ids=idx_t[:, None], use_cache=True, **{self._cache_arg: cache["hf"]})
        return out.logits[:, -1].float(), {"hf": self._out_cache(out), "B": idx_t.shape[0]}

    def select(self, cache, rows):
        rows = torch.as_tensor(rows, dtype=torch.long)
        if self.mode == "rerun":
            return {"idx": cache["idx"][rows], "pad": None if cache["pad"] is None else cache["pad"][rows]}
        return {"hf": _select_rows(cache["hf"], rows, cache["B"]), "B": len(rows)}


class HFTokenizer:
    """A Hugging Face tokenizer with the methods the harnesses use (tiktoken's names)."""

    def __init__(self, tok):
        self.tok, self.n_vocab = tok, len(tok)

    @classmethod
    def from_pretrained(cls, name):
        transformers = require("transformers", f"the tokenizer of {name!r}")
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
    require("transformers", f"--hf {name}")
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
        raise ValueError(f"could not load the data set {path}{'/' + name if name else ''} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); a machine with internet downloads it once "
                         "(then it is cached), or pass your own rows as a .jsonl file") from None
