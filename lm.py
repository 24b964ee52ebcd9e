"""
The decode interface the harnesses (evaluate.py, OPRM in chunked.py) read every model through, and the
one greedy decoder.

    lm.vocab_size                          int
    lm.prefill(idx, pad_mask=None)         idx (B, T) int64, left-padded where pad_mask (B, T) is True
                                           -> (logits (B, V) for the next token, cache)
    lm.step(idx_t, cache)                  idx_t (B,) -> (logits (B, V), cache): one more token per row
    lm.select(cache, rows)                 the cache of batch rows `rows` (indices), in that order

Our `Model` meets it itself; `ModelLM` fixes its prefill options (each row's prefix M);
`hf.OfficialLM` decodes it with the released code's padding, and `hf.HFLM` puts a Hugging Face
causal LM behind it. Tokenisation is not part of it: the harnesses take a tokenizer.

This file imports nothing of the project: model.py builds on it (select, generate), not the reverse.
"""
import copy

import torch


def map_tensors(obj, fn):
    """A copy of a cache tree with fn applied to every tensor inside lists, tuples, dicts and plain objects
    (transformers' cache classes). Ints and other leaves are shared; the tree given is left as it was."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return type(obj)((k, map_tensors(v, fn)) for k, v in obj.items())
    if hasattr(obj, "__dict__") and not isinstance(obj, (torch.nn.Module, type)):
        new = copy.copy(obj)
        for k, v in vars(obj).items():
            setattr(new, k, map_tensors(v, fn))
        return new
    return obj


def select_rows(cache, rows, batch_size=None):
    """The cache of batch rows `rows` (indices, in that order), e.g. to drop rows that finished decoding
    or to decode one OPRM chunk. Every tensor is indexed on its first dim, or with batch_size given only
    those whose first dim is batch_size (a foreign cache may hold shared tensors)."""
    rows = torch.as_tensor(rows, dtype=torch.long)

    def pick(t):
        if batch_size is not None and not (t.dim() and t.shape[0] == batch_size):
            return t
        return t.index_select(0, rows.to(t.device))
    return map_tensors(cache, pick)


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


def argmax(logits):
    return logits.argmax(-1)


@torch.no_grad()
def decode(lm, logits, cache, max_new_tokens, stop=(), pick=argmax):
    """The decoder: from every row's next-token logits (B, V) and its cache, emit pick(logits) per row
    until it is one of `stop` or max_new_tokens are out. A row that stops leaves the batch through
    `lm.select`, so the rest decode without it. Returns, per row, (tokens before the stop, whether it
    stopped). pick: greedy by default; Model.generate passes its sampler."""
    stop_t = torch.tensor(sorted(stop), dtype=torch.long, device=logits.device)
    out = [[] for _ in range(len(logits))]
    stopped = [False] * len(logits)
    alive = list(range(len(logits)))                                  # the row each batch row decodes
    for t in range(max_new_tokens):
        nxt = pick(logits)                                            # (b,)
        go = ~torch.isin(nxt, stop_t)                                 # (b,) rows that did not stop
        for r, tok, g in zip(alive, nxt.tolist(), go.tolist()):
            if g:
                out[r].append(tok)
            else:
                stopped[r] = True
        if t == max_new_tokens - 1 or not bool(go.any()):
            break
        if not bool(go.all()):                                        # drop the finished rows
            keep = go.nonzero()[:, 0]
            cache, nxt = lm.select(cache, keep), nxt[keep]
            alive = [alive[j] for j in keep.tolist()]
        logits, cache = lm.step(nxt, cache)
    return list(zip(out, stopped))


@torch.no_grad()
def greedy(lm, prompts, max_new_tokens=48, stop=(), batch_size=16, pad_id=0, device="cpu"):
    """Batched greedy decoding of token-id prompts through the interface. Returns, per prompt, the
    generated ids up to (not including) the first stop token, at most max_new_tokens of them.

    Prompts are sorted by length so a batch holds similar lengths (less padding). A model whose adapter
    says `supports_padding = False` only gets batches of equal-length prompts."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an int >= 1")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("greedy: every prompt needs at least one token")
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    exact = getattr(lm, "supports_padding", True)
    batches, cur = [], []
    for i in order:                                                   # cut the sorted list into batches
        if cur and (len(cur) == batch_size or (not exact and len(prompts[i]) != len(prompts[cur[0]]))):
            batches.append(cur)
            cur = []
        cur.append(i)
    batches += [cur] if cur else []
    out = [None] * len(prompts)
    for rows in batches:
        idx, pad = left_pad([prompts[i] for i in rows], pad_id, device)          # (b, T)
        logits, cache = lm.prefill(idx, pad_mask=pad if bool(pad.any()) else None)
        for i, (tokens, _) in zip(rows, decode(lm, logits, cache, max_new_tokens, stop)):
            out[i] = tokens
    return out


class ModelLM:
    """Our Model with the prefix M of its pla layers fixed, behind the interface: prefix_len None (the
    config's), an int, or a tensor (B,) with one per row (OPRM: each chunk's [P, C_i])."""

    def __init__(self, model, prefix_len=None):
        self.model, self.prefix_len = model, prefix_len
        self.vocab_size = model.config.vocab_size

    @property
    def device(self):
        return next(self.model.parameters()).device

    def prefill(self, idx, pad_mask=None):
        logits, cache = self.model.prefill(idx, prefix_len=self.prefix_len, pad_mask=pad_mask)
        return logits.float(), cache

    def step(self, idx_t, cache):
        logits, cache = self.model.step(idx_t, cache)
        return logits.float(), cache

    def select(self, cache, rows):
        return select_rows(cache, rows)


DEVICES = "use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"


def resolve_device(name="auto"):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' | 'mps' -> torch.device, with a one-line error when that device
    is absent (every CLI's --device goes through here). 'auto' is CUDA when available, else the CPU."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device={name!r} is not a device; {DEVICES}")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here; use device='cpu' (or 'auto')")
    if kind == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device={name!r} but MPS is not available here; use device='cpu' (or 'auto')")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a device; {DEVICES}") from None
