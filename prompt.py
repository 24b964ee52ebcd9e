"""
JRT-Prompt: show the context twice before the question (JRT paper, SPEC §1, §5), and its evaluation
harness. The synthetic experiments behind it (set order, MQAR read twice) are in experiments.py.

A recurrent LM reads with a fixed-size state, so it must decide what to keep before it knows the
question. Showing (context, question, context, question) lets the second pass be read with the
question already in view: for set disjointness the state needed drops from Ω(size of the set seen
first) to Ω(min(|A|, |B|) / p) for p passes (SPEC §1). No training, any model.

The interface every evaluated model offers (our `Model` through `ModelLM`; others through adapters):

    lm.vocab_size                      int
    lm.prefill(idx, pad_mask=None)     idx (B, T) int64, left-padded where pad_mask (B, T) is True
                                       -> (logits (B, V) fp32 for the next token, cache)
    lm.step(idx_t, cache)              idx_t (B,) -> (logits (B, V), cache): one more token per row
    lm.select(cache, rows)             the cache of the given batch rows (a LongTensor of indices), in order

Tokenisation is not part of it: builders work on strings or on token ids, and the harness takes a
tokenizer (a tiktoken Encoding, or `HFTokenizer`) where text is involved.

The rest of the file, top to bottom:
    1. text prompts      extraction_prompt, qa_prompt, read_twice, cut_around (the 950-token budget)
    2. token prompts     jrt_tokens, jrt_examples (JR-p for data.py's synthetic tasks)
    3. harness           greedy, contains, error_mode, evaluate, results_table, accuracy (teacher-forced)
    4. HF adapter        HFLM, HFTokenizer (transformers imported lazily, never required)
    5. CLI               python prompt.py --ckpt out/ckpt.pt --task mqar
"""
import argparse
import bisect
import copy
import json
import re

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map

import data
from model import load_checkpoint


class ModelLM:
    """Our `Model` behind the interface above: parallel prefill, then constant-size recurrent steps."""

    def __init__(self, model, prefix_len=None):
        self.model, self.prefix_len = model, prefix_len  # prefix_len: M for pla layers (None: the config's)
        self.vocab_size = model.config.vocab_size

    def prefill(self, idx, pad_mask=None):
        logits, cache = self.model.prefill(idx, prefix_len=self.prefix_len, pad_mask=pad_mask)
        return logits.float(), cache

    def step(self, idx_t, cache):
        logits, cache = self.model.step(idx_t, cache)
        return logits.float(), cache

    def select(self, cache, rows):
        # every tensor in the cache has the batch first; ints (positions) are shared by all rows
        return tree_map(lambda t: t.index_select(0, rows) if isinstance(t, torch.Tensor) else t, cache)


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


# ----------------------------------------------------------------------------- 1. text prompts (SPEC §5)

BUDGET = 950      # documents are cut to this many tokens around the answer, as in the paper (SPEC §5)
MAX_NEW = 48      # greedy decoding stops at a newline or after this many tokens (SPEC §5)


def _join(*parts):
    """Join with single spaces, dropping empty parts: an empty question leaves no stray space."""
    return " ".join(p for p in parts if p)


def _check_repeats(repeats):
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1 (1: the default prompt, 2: JRT-Prompt); got {repeats!r}")


def extraction_prompt(doc, key, repeats=1):
    """Information extraction (SWDE, FDA). repeats=1: `{doc} {key}:`; repeats=2 (JRT-Prompt):
    `Information about {key}. {doc}\\n{doc} {key}:`; JR-p puts p copies of doc between, joined by newlines.
    The document is used as given (the official harness also strips a trailing "." and capitalises the
    key; we leave cleaning to the caller so the formats stay exactly the paper's table)."""
    _check_repeats(repeats)
    if not key:
        raise ValueError("extraction_prompt: key must be a non-empty string (the attribute to extract)")
    if repeats == 1:
        return f"{doc} {key}:"
    return f"Information about {key}. " + "\n".join([doc] * repeats) + f" {key}:"


def qa_prompt(context, cloze, question="", repeats=1):
    """Question answering (NQ, TriviaQA, Drop). repeats=1: `{context} {cloze}` (the question is not
    shown: the cloze is the question rewritten as a sentence to complete); repeats=2 (JRT-Prompt):
    `{question} {context}\\n{context} {cloze}`. An empty question or cloze leaves no stray space."""
    _check_repeats(repeats)
    if repeats == 1:
        return _join(context, cloze)
    return _join(question, "\n".join([context] * repeats), cloze)


def read_twice(context, question, repeats=2):
    """The generic form of SPEC §5: (context, question) shown `repeats` times, one per line:
    `{context} {question}\\n{context} {question}`. The token-level `jrt_tokens` is the same layout."""
    _check_repeats(repeats)
    return "\n".join([_join(context, question)] * repeats)


def cut_around(doc, answer, tokenizer, budget=BUDGET):
    """A document longer than `budget` tokens -> the `budget` tokens centred on the answer's first
    (case-insensitive) occurrence, clamped to the document's ends (SPEC §5: 950 tokens around the answer).
    Shorter documents come back unchanged; without the answer in the doc, its first `budget` tokens."""
    ids = tokenizer.encode_ordinary(doc)
    if len(ids) <= budget:
        return doc
    answer = answer.strip()
    found = re.search(re.escape(answer), doc, re.IGNORECASE) if answer else None
    if found is None:
        start = 0
    else:
        _, offsets = tokenizer.decode_with_offsets(ids)              # character where each token starts
        first = bisect.bisect_right(offsets, found.start()) - 1      # token holding the answer's first char
        last = bisect.bisect_right(offsets, found.end() - 1) - 1     # ... and its last char
        start = min(max(0, (first + last + 1) // 2 - budget // 2), len(ids) - budget)
    return tokenizer.decode(ids[start:start + budget])


def text_prompt(ex, repeats=1, tokenizer=None, budget=BUDGET):
    """The prompt of one text example (a dict, see `evaluate`) with its document cut to the budget."""
    ctx = ex["context"]
    if tokenizer is not None and budget:
        ctx = cut_around(ctx, _answers(ex)[0], tokenizer, budget)
    if ex["kind"] == "extraction":
        return extraction_prompt(ctx, ex["key"], repeats)
    if ex["kind"] == "qa":
        return qa_prompt(ctx, ex.get("cloze", ""), ex.get("question", ""), repeats)
    raise ValueError(f"example kind must be 'extraction' or 'qa'; got {ex['kind']!r}")


# ----------------------------------------------------------------------------- 2. token prompts (synthetic tasks)

def jrt_tokens(context, question, repeats=2):
    """Token ids: [context, question] * repeats, the layout of data.mqar(read_twice=True)."""
    _check_repeats(repeats)
    return (list(context) + list(question)) * repeats


def jrt_examples(ex, repeats=2):
    """data.Examples -> JR-p: each row's real tokens (pads dropped) shown `repeats` times, only the last
    copy scored, rows left-padded again. The prefix M (the context JRT-RNN reads non-causally, counted from
    a row's first real token as Model reads it) moves into the last copy: M' = (p-1)·L + min(M, L) for a
    row of L real tokens. With repeats=2 an MQAR row becomes `kv, queries, kv, queries`, exactly
    data.mqar(read_twice=True) with the same seed; a set-disjointness row stays all prefix."""
    _check_repeats(repeats)
    N, T = ex.x.shape
    real = (~ex.pad).sum(1)                                          # (N,) real tokens per row
    T2 = repeats * int(real.max()) if N else 0
    x = torch.zeros(N, T2, dtype=ex.x.dtype)                         # 0 pads, as data.py
    y = torch.full((N, T2), -100, dtype=ex.y.dtype)
    pad = torch.ones(N, T2, dtype=torch.bool)
    M = torch.zeros(N, dtype=ex.prefix_len.dtype)
    for L in real.unique().tolist():                                 # rows of one length move together
        r = (real == L).nonzero()[:, 0]
        xr, yr = ex.x[r, T - L:], ex.y[r, T - L:]                    # (n, L): the real tokens sit at the right
        x[r, T2 - repeats * L:] = xr.repeat(1, repeats)
        y[r, T2 - L:] = yr
        pad[r, T2 - repeats * L:] = False
        M[r] = (repeats - 1) * L + ex.prefix_len[r].clamp(max=L)
    return data.Examples(x, y, M, pad, ex.group.clone(), [g + f" x{repeats}" for g in ex.groups], ex.vocab_size)


# ----------------------------------------------------------------------------- 3. the harness

def newline_tokens(tokenizer):
    """Ids whose text holds a newline: generation stops at any of them (SPEC §5: stop at newline)."""
    return {i for i in range(tokenizer.n_vocab) if "\n" in _decode(tokenizer, [i])}


def _decode(tokenizer, ids):
    V = tokenizer.n_vocab                     # a model's vocabulary can be padded past the tokenizer's (50264 > 50257)
    return tokenizer.decode([i for i in ids if i < V])


@torch.no_grad()
def greedy(lm, prompts, max_new_tokens=MAX_NEW, stop=(), batch_size=16, pad_id=0, device="cpu"):
    """Batched greedy decoding through the interface. prompts: lists of token ids. Returns, per prompt,
    the generated ids up to (not including) the first stop token, at most max_new_tokens of them.

    Prompts are sorted by length so a batch holds similar lengths (less padding); a row that stops
    leaves the batch through `lm.select`, so the rest decode without it. A model whose adapter says
    `supports_padding = False` only gets batches of equal-length prompts."""
    stop_t = torch.tensor(sorted(stop), dtype=torch.long, device=device)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches, cur = [], []
    exact = getattr(lm, "supports_padding", True)
    for i in order:                                                   # cut the sorted list into batches
        if cur and (len(cur) == batch_size or (not exact and len(prompts[i]) != len(prompts[cur[0]]))):
            batches.append(cur)
            cur = []
        cur.append(i)
    batches += [cur] if cur else []
    out = [None] * len(prompts)
    for rows in batches:
        if any(len(prompts[i]) == 0 for i in rows):
            raise ValueError("greedy: every prompt needs at least one token")
        idx, pad = left_pad([prompts[i] for i in rows], pad_id, device)          # (b, T)
        logits, cache = lm.prefill(idx, pad if bool(pad.any()) else None)
        alive = list(rows)                                            # prompt index of each batch row
        for i in rows:
            out[i] = []
        for t in range(max_new_tokens):
            nxt = logits.argmax(-1)                                   # (b,)
            go = ~torch.isin(nxt, stop_t)                             # (b,) rows that did not stop
            for i, tok, g in zip(alive, nxt.tolist(), go.tolist()):
                if g:
                    out[i].append(tok)
            if t == max_new_tokens - 1 or not bool(go.any()):
                break
            if not bool(go.all()):                                   # drop the finished rows from the batch
                keep = go.nonzero()[:, 0]
                cache, nxt = lm.select(cache, keep), nxt[keep]
                alive = [alive[j] for j in keep.tolist()]
            logits, cache = lm.step(nxt, cache)
    return out


def _answers(ex):
    a = ex["answers"] if "answers" in ex else ex["answer"]
    a = [a] if isinstance(a, str) else list(a)
    if not a or not all(isinstance(s, str) and s.strip() for s in a):
        raise ValueError(f"an example needs non-empty gold answer strings; got {a!r}")
    return a


def contains(output, answers):
    """The paper's metric: some gold answer is a case-insensitive substring of the output. Answers are
    stripped of surrounding whitespace (the official harness does not strip; " Paris" would then miss
    "Paris." at the start of an output)."""
    answers = [answers] if isinstance(answers, str) else answers
    return any(re.search(re.escape(a.strip()), output, re.IGNORECASE) is not None for a in answers if a.strip())


def _words(s):
    return re.findall(r"\w+", s.lower())


def _ngrams(words, n):
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def error_mode(output, answers, prompt):
    """None for a correct output (`contains`), else one of the error modes we count:

    empty       the output has no non-space character: the model ended the line at once (or only
                emitted spaces), i.e. it gave no answer at all.
    repetition  the output repeats instead of answering: either it loops (some run of 3 words occurs
                twice in it), or it copies the prompt back (it holds a run of 6 consecutive words that
                also occurs in the prompt), the failure that a prompt shown twice invites. Words are
                lower-cased runs of letters, digits and underscores.
    irrelevant  any other wrong output: an answer, but not the gold one.
    """
    if contains(output, answers):
        return None
    if not output.strip():
        return "empty"
    w = _words(output)
    tri = _ngrams(w, 3)
    if len(set(tri)) < len(tri) or set(_ngrams(w, 6)) & set(_ngrams(_words(prompt), 6)):
        return "repetition"
    return "irrelevant"


FORMATS = {"default": 1, "jrt": 2}   # format name -> repeats; "jr3", "jr4", ... mean JR-p with p copies


def _repeats_of(fmt):
    if fmt in FORMATS:
        return FORMATS[fmt]
    if re.fullmatch(r"jr\d+", fmt) and int(fmt[2:]) >= 1:
        return int(fmt[2:])
    raise ValueError(f"unknown prompt format {fmt!r}: use 'default', 'jrt' or 'jr<p>' (p copies, e.g. 'jr3')")


def evaluate(lm, tokenizer, examples, formats=("default", "jrt"), batch_size=16, max_new_tokens=MAX_NEW,
             budget=BUDGET, device="cpu"):
    """Zero-shot evaluation of text examples in each prompt format (SPEC §5: greedy, stop at newline or
    48 tokens, metric "contains").

    examples: dicts with "task" (a name), "kind" ("extraction" or "qa"), "context", "answers" (a string
    or a list of accepted strings), and "key" (extraction) or "cloze" and optionally "question" (qa).
    Returns (summary, records): summary[(task, format)] = {"n", "accuracy", "empty", "repetition",
    "irrelevant"} (the last three are fractions of all examples); records hold each prompt and output.
    """
    stop = newline_tokens(tokenizer)
    summary, records = {}, []
    for fmt in formats:
        p = _repeats_of(fmt)
        prompts = [text_prompt(ex, p, tokenizer, budget) for ex in examples]
        outs = greedy(lm, [tokenizer.encode_ordinary(s) for s in prompts], max_new_tokens, stop, batch_size,
                      device=device)
        for ex, prompt, ids in zip(examples, prompts, outs):
            text = _decode(tokenizer, ids)
            mode = error_mode(text, _answers(ex), prompt)
            records.append({"task": ex.get("task", "task"), "format": fmt, "prompt": prompt, "output": text,
                            "correct": mode is None, "error": mode})
    for r in records:
        s = summary.setdefault((r["task"], r["format"]), {"n": 0, "accuracy": 0, "empty": 0, "repetition": 0,
                                                          "irrelevant": 0})
        s["n"] += 1
        s["accuracy"] += r["correct"]
        if r["error"]:
            s[r["error"]] += 1
    for s in summary.values():
        for k in ("accuracy", "empty", "repetition", "irrelevant"):
            s[k] /= s["n"]
    return summary, records


def results_table(summary):
    """A markdown table, one row per task: accuracy (and error modes) per format."""
    tasks = list(dict.fromkeys(t for t, _ in summary))
    fmts = list(dict.fromkeys(f for _, f in summary))
    head = "| task | n | " + " | ".join(f"{f} acc | {f} empty / rep. / irrel." for f in fmts) + " |"
    lines = [head, "|" + "---|" * (2 + 2 * len(fmts))]
    for t in tasks:
        cells = []
        for f in fmts:
            s = summary.get((t, f))
            cells += ["" , ""] if s is None else [f"{100 * s['accuracy']:.1f}", f"{100 * s['empty']:.0f} / "
                                                 f"{100 * s['repetition']:.0f} / {100 * s['irrelevant']:.0f}"]
        n = next(summary[(t, f)]["n"] for f in fmts if (t, f) in summary)
        lines.append(f"| {t} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def answer_logits(model, x, y, prefix_len=None, pad_mask=None):
    """Model.forward with the output head applied only where an answer is scored: logits (n, V) and
    targets (n,). Set disjointness scores one position of ~75 over a 2048-token vocabulary, so the
    head on every position would be most of a CPU training step."""
    enc_end = model._enc_end(x, prefix_len, pad_mask)                # where each row's prefix M ends
    h = model.wte(x)                                                 # (B, T, d)
    for block in model.blocks:
        h = block(h, pad_mask, enc_end)
    keep = y != -100                                                 # (B, T)
    return model.lm_head(model.norm_f(h[keep])), y[keep]             # (n, V), (n,)


@torch.no_grad()
def accuracy(model, ex, batch_size=256):
    """Teacher-forced accuracy on data.Examples (MQAR, set disjointness): the argmax at every scored
    position, per group (ex.groups) and overall. Each row's prefix M is passed to pla layers."""
    model.eval()
    dev = next(model.parameters()).device
    hit, tot = torch.zeros(len(ex.groups)), torch.zeros(len(ex.groups))
    for s in range(0, len(ex), batch_size):
        b = ex[slice(s, s + batch_size)]
        pad = b.pad.to(dev) if bool(b.pad.any()) else None
        logits, y = answer_logits(model, b.x.to(dev), b.y.to(dev), b.prefix_len.to(dev), pad)
        group = b.group[:, None].expand_as(b.y)[b.y != -100]             # (n,) the group of each answer
        hit.index_add_(0, group, (logits.argmax(-1) == y).float().cpu())
        tot.index_add_(0, group, torch.ones(len(group)))
    per = {g: (hit[i] / tot[i]).item() for i, g in enumerate(ex.groups) if tot[i] > 0}
    return per, (hit.sum() / tot.sum()).item()


# ----------------------------------------------------------------------------- 4. Hugging Face adapter (optional)

def _select_rows(obj, rows, B):
    """A copy of a cache object keeping batch rows `rows`: every tensor whose first dim is the batch
    size B is indexed, inside lists, tuples, dicts and plain objects (HF cache classes); the rest is
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
    """A Hugging Face causal LM behind the interface; `transformers` is imported only when one is built.

    mode "cache"  (Mamba, Falcon-Mamba, Mamba-2): prefill, then one token per step from the model's own
                  cache object (`cache_params`); rows are selected by indexing its batch-first tensors.
                  Left padding is exact: these models take attention_mask and zero the pads' inputs.
    mode "rerun"  (RWKV, RecurrentGemma, anything else): the "cache" is the token ids so far, and each
                  step re-reads the whole sequence: O(T) work per token, slow but correct for any model.
                  We do not continue from RWKV's `state` or RecurrentGemma's cache: with transformers 5.23
                  neither reproduced the full forward pass in our check (RecurrentGemma keeps its cache
                  inside the model, so rows cannot be selected), and neither masks left padding exactly,
                  so `supports_padding` is False and `greedy` batches only prompts of equal length.
    Checked (tiny random models, transformers 5.23): Mamba, Falcon-Mamba and Mamba-2 step and select
    match the full forward pass to 1e-6; older transformers versions may name the cache differently.
    """
    CACHED = ("mamba", "falcon_mamba", "mamba2")

    def __init__(self, model, mode="auto"):
        if mode not in ("auto", "cache", "rerun"):
            raise ValueError(f"mode must be 'auto', 'cache' or 'rerun'; got {mode!r}")
        self.model = model.eval()
        kind = model.config.model_type
        self.mode = ("cache" if kind in self.CACHED else "rerun") if mode == "auto" else mode
        self.supports_padding = kind in self.CACHED
        self.vocab_size = model.get_output_embeddings().weight.shape[0]

    @classmethod
    def from_pretrained(cls, name, mode="auto", **kwargs):
        """e.g. HFLM.from_pretrained("state-spaces/mamba-130m-hf") (downloads the weights once)."""
        try:
            from transformers import AutoModelForCausalLM
        except ImportError as e:
            raise ImportError("HFLM needs `pip install transformers` (optional; nothing else here needs it)") from e
        return cls(AutoModelForCausalLM.from_pretrained(name, **kwargs), mode)

    @torch.no_grad()
    def prefill(self, idx, pad_mask=None):
        am = None if pad_mask is None else (~pad_mask).long()
        if self.mode == "rerun":
            out = self.model(input_ids=idx, attention_mask=am)
            return out.logits[:, -1].float(), {"idx": idx, "pad": pad_mask}
        out = self.model(input_ids=idx, attention_mask=am, use_cache=True)
        return out.logits[:, -1].float(), {"hf": out.cache_params, "B": idx.shape[0]}

    @torch.no_grad()
    def step(self, idx_t, cache):
        if self.mode == "rerun":
            idx = torch.cat([cache["idx"], idx_t[:, None]], 1)
            pad = None if cache["pad"] is None else F.pad(cache["pad"], (0, 1), value=False)
            return self.prefill(idx, pad)
        out = self.model(input_ids=idx_t[:, None], cache_params=cache["hf"], use_cache=True)
        return out.logits[:, -1].float(), {"hf": out.cache_params, "B": idx_t.shape[0]}

    def select(self, cache, rows):
        if self.mode == "rerun":
            return {"idx": cache["idx"][rows], "pad": None if cache["pad"] is None else cache["pad"][rows]}
        return {"hf": _select_rows(cache["hf"], rows, cache["B"]), "B": len(rows)}


class HFTokenizer:
    """A Hugging Face tokenizer with the three methods the harness uses (tiktoken's names)."""

    def __init__(self, tok):
        self.tok, self.n_vocab = tok, len(tok)

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


# ----------------------------------------------------------------------------- 5. CLI

def synthetic_table(model, ex, formats):
    """Teacher-forced accuracy of one test set shown in each format (default = once, jrt = twice, jr<p>)."""
    cells = {g: [] for g in ex.groups}
    for f in formats:
        p = _repeats_of(f)
        per, _ = accuracy(model, jrt_examples(ex, p) if p > 1 else ex)     # groups in order, renamed "... x2"
        for g, acc in zip(ex.groups, per.values()):
            cells[g].append(f"{100 * acc:.1f}")
    lines = ["| task | n | " + " | ".join(f"{f} acc" for f in formats) + " |", "|---" * (2 + len(formats)) + "|"]
    for i, g in enumerate(ex.groups):
        lines.append(f"| {g} | {int((ex.group == i).sum())} | " + " | ".join(cells[g]) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="JRT-Prompt: default vs read-twice accuracy of a model",
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ckpt", help="a train.py checkpoint, e.g. out/ckpt.pt")
    ap.add_argument("--hf", help="a Hugging Face causal LM name or path (needs transformers), e.g. "
                                 "state-spaces/mamba-130m-hf")
    ap.add_argument("--task", help="mqar | sets (synthetic, settings from the checkpoint's training config) |\n"
                                   "a .jsonl file of text examples (see `evaluate` for the fields)")
    ap.add_argument("--formats", default="default,jrt", help="comma-separated: default, jrt, jr3, ...")
    ap.add_argument("--n", type=int, default=500, help="synthetic: test examples per slice")
    ap.add_argument("--batch_size", type=int, default=16, help="text: prompts decoded together")
    ap.add_argument("--budget", type=int, default=BUDGET, help="text: cut documents to this many tokens")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", help="also write the table (markdown) to this file")
    a = ap.parse_args(argv)
    formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    for f in formats:
        _repeats_of(f)                                              # a bad name fails here, with the allowed ones
    if bool(a.ckpt) == bool(a.hf) or not a.task:
        ap.error("give --task and exactly one of --ckpt or --hf")
    if a.hf:
        from transformers import AutoTokenizer              # optional: only this path needs it
        lm, tok = HFLM.from_pretrained(a.hf), HFTokenizer(AutoTokenizer.from_pretrained(a.hf))
        lm.model.to(a.device)
        model, cfg = None, {}
    else:
        model, cfg = load_checkpoint(a.ckpt, a.device)
        lm = ModelLM(model)
    if a.task in ("mqar", "sets"):
        if model is None:
            ap.error("--task mqar/sets needs --ckpt (a model trained on that task's token ids)")
        if a.task == "mqar":
            P = cfg.get("seq_len", 64) // (2 if cfg.get("read_twice") else 1)    # one pass
            ex = data.mqar(a.n, vocab_size=cfg.get("vocab_size", 128), seq_len=P,
                           num_pairs=cfg.get("num_pairs", 8), context_len=cfg.get("context_len") or None,
                           seed=cfg.get("data_seed", 0), split="test")
        else:
            ex = data.disjoint_sets(a.n, halves=cfg.get("sd_halves", True), seed=cfg.get("data_seed", 0),
                                    split="test")
        table = synthetic_table(model, ex, formats)
    else:
        with open(a.task) as fh:
            examples = [json.loads(line) for line in fh if line.strip()]
        if model is not None:
            tok = data.get_tokenizer(cfg.get("tokenizer", "gpt2"))
        summary, _ = evaluate(lm, tok, examples, formats, a.batch_size, budget=a.budget, device=a.device)
        table = results_table(summary)
    print(table)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(table + "\n")
    return table


if __name__ == "__main__":
    main()
