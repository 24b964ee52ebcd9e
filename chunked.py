"""
OPRM: overflow prevention by chunked inference (Ben-Kish et al. 2025, arXiv 2505.07793).

A recurrent LM reads a long context into a fixed-size state, and overflows: once the context holds
more facts than the state can keep, later ones overwrite earlier ones. OPRM never asks one state to
hold the whole context:

    prompt = P (prefix: instruction) + C (context) + S (suffix: question and answer cue)
    1. split C into b contiguous chunks C_1 .. C_b of at most L = chunk_len tokens
    2. speculative prefill: read X_i = [P, C_i, S] for every chunk, in batches of at most
       max_batch_tokens tokens, left-padded (pads never enter a state); keep every state and the
       distribution of the first answer token
    3. selection: the chunk whose first-token distribution has the lowest entropy, H_i = -Σ p log p
       in fp32, or the one under which the question is most likely, log p(S | P, C_i); optionally drop
       the chunks whose top token is the IDK token ("not in this chunk"), and if that drops them all,
       fall back to the lowest entropy
    4. selective decoding: decode greedily from the chosen chunk's state alone

Each state now holds about L/|C| of the facts, and the question itself picks the chunk to trust.
With one chunk (chunk_len = len(context)) this is ordinary full-context inference: the baseline.

Variants (the official code's, then ours):
    mode="summarize"   decode every chunk and join the answers (for summarisation)
    mode="last"        read only the last chunk_len tokens (for code completion)
    cache_context()    the state after [P, C_i] does not depend on the question: read the context once,
                       then each question runs only S on every cached state (the official code re-reads
                       the context for every question)
    chunk_prefix       JRT-RNN: [P, C_i] is the prefix that pla layers read non-causally (JRT paper),
                       with a prefix length per row; the default for our Model when it has pla layers
    read_twice         JRT-Prompt inside each chunk: X_i = [P, C_i, S, C_i, S] (JRT paper)

Any model of the one interface (lm.prefill / lm.step / lm.select, see hf.py) works: our Model (wrapped in
model.ModelLM to choose each row's prefix), and Hugging Face causal LMs whose cache keeps left pads out
of the state (hf.HFLM: Transformers such as GPT-2 and Llama, Mamba, Falcon-Mamba, Mamba-2). A chunk is read
once: the states of the speculative prefill are the ones decoded from.

Symbols: b chunks, L chunk length, V vocabulary, B rows of one prefill group.

    python chunked.py --task mqar_long --ckpt out/ckpt.pt   # full context vs OPRM on MQAR with more pairs
    python chunked.py --task cost              # prefill time and peak memory vs context length
    python experiments.py overflow             # trains Based, JRT-RNN and a Transformer, then the same test
    python chunked.py --hf tiiuae/falcon-mamba-7b-instruct --task longbench:hotpotqa   # a real LM (GPU, internet)
"""
import argparse
import copy
import ctypes
import json
import math
import operator
import os
import re
import string
import sys
import time
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import data
import hf
from checkpoint import load_checkpoint
from model import Config, Model, ModelLM, left_pad, resolve_device
from prompt import check_out, jsonl_objects, read_utf8

SELECTIONS = ("entropy", "entropy_non_idk", "likelihood")
MODES = ("select", "summarize", "last")


def _check(ok, name, value, allowed):
    if not ok:
        raise ValueError(f"{name}={value!r}: {allowed}")


def _tokens(name, ids, V):
    """A token sequence (list, tuple or 1-D tensor of ints) as a list, every id inside the vocabulary."""
    if isinstance(ids, torch.Tensor):
        _check(ids.dim() == 1 and not ids.is_floating_point(), name, f"tensor {tuple(ids.shape)} {ids.dtype}",
               "expected a 1-D integer tensor or a list of ints")
        ids = ids.tolist()
    try:
        ids = [operator.index(t) for t in ids]
    except TypeError:
        raise ValueError(f"{name}={list(ids)[:8]!r}...: expected token ids (ints)") from None
    bad = [t for t in ids if not 0 <= t < V]
    if bad:
        raise ValueError(f"{name}: token id {bad[0]} is outside the vocabulary; ids must be in [0, vocab_size={V})")
    return ids


def as_lm(lm):
    """Our Model behind a ModelLM (to choose each row's prefix); anything else is taken to offer the
    interface already. A model that cannot keep left pads out of its state is refused: OPRM's chunks
    differ in length, and a pad in a state would change the answer silently."""
    if isinstance(lm, Model):
        return ModelLM(lm)
    if not getattr(lm, "supports_padding", True):
        raise ValueError(f"{type(lm).__name__} (mode {getattr(lm, 'mode', '?')!r}) cannot keep left pads out of its "
                         f"state, which OPRM's chunks of unequal length need; supported: {hf.HFLM.PADDED}")
    return lm


def _device(lm):
    if isinstance(lm, ModelLM):
        return next(lm.model.parameters()).device
    return getattr(lm, "device", torch.device("cpu"))


def _encoder_model(lm, chunk_prefix):
    """The Model whose pla layers read each row's [P, C_i] as their prefix (JRT-RNN), or None."""
    model = lm.model if isinstance(lm, ModelLM) else None
    has_pla = model is not None and "pla" in model.config.layers
    if chunk_prefix is None:  # default: yes for JRT-RNN, unless the caller's ModelLM fixes a prefix_len
        chunk_prefix = has_pla and lm.prefix_len is None
    _check(not chunk_prefix or has_pla, "chunk_prefix", chunk_prefix,
           "True needs our Model (or a ModelLM) with pla layers (JRT-RNN); use None or False for other models")
    return model if chunk_prefix else None


# ----------------------------------------------------------------------------- 1. chunks

def chunk_spans(n, chunk_len, align=1):
    """Cut n context tokens into b = ceil(n / chunk_len) contiguous chunks of near-equal length.

    Balanced: 10 tokens at chunk_len 4 give 4, 3, 3 rather than 4, 4, 2, so the last chunk is never a
    stub with too little in it to answer from. Boundaries fall on multiples of `align` (2 for MQAR, so
    a key is never cut from its value); n % align leftover tokens join the last chunk.
    Returns [(start, end), ...] covering 0..n exactly once, in order.
    """
    _check(isinstance(n, int) and n >= 1, "context length", n, "the context must hold at least one token")
    _check(isinstance(align, int) and align >= 1, "align", align, "expected an int >= 1")
    _check(isinstance(chunk_len, int) and 1 <= chunk_len <= n, "chunk_len", chunk_len,
           f"expected an int in [1, len(context) = {n}]")
    _check(chunk_len % align == 0 or chunk_len == n, "chunk_len", chunk_len,
           f"expected a multiple of align = {align} (or the whole context, {n})")
    units = n // align                                   # whole align-blocks
    b = max(1, min(math.ceil(n / chunk_len), units))     # never more chunks than blocks
    starts = [align * (i * units // b) for i in range(b)] + [n]
    return list(zip(starts[:-1], starts[1:]))


# ----------------------------------------------------------------------------- 2. speculative prefill

@dataclass
class ChunkStates:
    """Every chunk's state and next-token distribution: after [P, C_i] (a cache) or [P, C_i, S]."""
    spans: list            # b (start, end): where each chunk lies in the context
    groups: list           # [(rows LongTensor, cache)]: chunks prefilled together and their batched cache
    logits: torch.Tensor   # (b, V) fp32: next-token logits after each chunk's input (first answer token)
    loglik: torch.Tensor   # (b,) log p(S | P, C_i) when S was read token by token, else None
    key: tuple = None      # what a cache was built from, so that it is never used with another context


def _prefill(lm, seqs, prefix_lens, *, max_batch_tokens, pad_id, encoder):
    """Prefill token lists in groups of consecutive rows with rows × longest ≤ max_batch_tokens (a row
    longer than the budget runs alone). encoder: JRT-RNN's Model, whose pla layers then read the first
    prefix_lens[r] tokens of row r non-causally. Returns [(rows, cache)] and the logits (b, V)."""
    V = lm.vocab_size
    _check(isinstance(pad_id, int) and 0 <= pad_id < V, "pad_id", pad_id,
           f"expected a token id in [0, vocab_size = {V}) (pads are masked out of every state, but must be ids)")
    device, groups, logits, i = _device(lm), [], [], 0
    while i < len(seqs):
        j, longest = i + 1, len(seqs[i])
        while j < len(seqs) and (j + 1 - i) * max(longest, len(seqs[j])) <= max_batch_tokens:
            longest, j = max(longest, len(seqs[j])), j + 1
        idx, pad = left_pad(seqs[i:j], pad_id, device)                       # (B, T), (B, T)
        reader = lm
        if encoder is not None:  # prefix_len counts real tokens from the row's first one, so pads are no prefix
            reader = ModelLM(encoder, torch.tensor(prefix_lens[i:j], device=device))
        lg, cache = reader.prefill(idx, pad_mask=pad if pad.any() else None)  # (B, V)
        groups.append((torch.arange(i, j, device=device), cache))
        logits.append(lg.float())
        i = j
    return groups, torch.cat(logits)                                         # [(rows, cache)], (b, V)


def _heads(prefix, context, suffix, spans, read_twice):
    """[P, C_i] per chunk, or [P, C_i, S, C_i] with JRT-Prompt: everything before the final S."""
    return [prefix + context[a:e] + (suffix + context[a:e] if read_twice else []) for a, e in spans]


def read_suffix(lm, states, suffix, keep=True):
    """Read S token by token on every chunk's state: the states after [P, C_i, S], the first-answer
    logits, and log p(S | P, C_i) = Σ_j log p(S_j | P, C_i, S_<j). keep: leave `states` untouched (a
    cache for the next question) by stepping copies."""
    lm = as_lm(lm)
    groups, logits, loglik = [], [], []
    for rows, cache in states.groups:
        lg = states.logits[rows]                                             # (B, V)
        ll = torch.zeros(len(rows), device=lg.device)                        # (B,)
        cache = copy.deepcopy(cache) if keep else cache
        for t in suffix:
            ll = ll + F.log_softmax(lg.float(), -1)[:, t]
            lg, cache = lm.step(torch.full((len(rows),), t, dtype=torch.long, device=rows.device), cache)
        groups.append((rows, cache))
        logits.append(lg.float())
        loglik.append(ll)
    return ChunkStates(states.spans, groups, torch.cat(logits), torch.cat(loglik))


def speculative_prefill(lm, prefix, context, suffix, chunk_len, *, align=1, max_batch_tokens=120_000,
                        pad_id=0, read_twice=False, chunk_prefix=None, step_suffix=False):
    """Steps 1-2: every chunk's state after X_i and the distribution of its first answer token.
    step_suffix: prefill [P, C_i] and read S token by token (gives log p(S | P, C_i), needed for the
    likelihood selection); otherwise X_i = [P, C_i, S] is one parallel prefill, as in the paper."""
    lm = as_lm(lm)
    encoder = _encoder_model(lm, chunk_prefix)
    spans = chunk_spans(len(context), chunk_len, align)
    heads = _heads(prefix, context, suffix, spans, read_twice)
    kw = dict(max_batch_tokens=max_batch_tokens, pad_id=pad_id, encoder=encoder)
    prefix_lens = [len(h) for h in heads]  # JRT-RNN: the head is the prefix, S after it causal (data.py: M = C)
    if step_suffix:
        groups, logits = _prefill(lm, heads, prefix_lens, **kw)
        return read_suffix(lm, ChunkStates(spans, groups, logits, None), suffix, keep=False)
    groups, logits = _prefill(lm, [h + suffix for h in heads], prefix_lens, **kw)
    return ChunkStates(spans, groups, logits, None)


def cache_context(lm, prefix, context, chunk_len, *, align=1, max_batch_tokens=120_000, pad_id=0,
                  chunk_prefix=None):
    """The states after [P, C_i] for every chunk, read once for any number of questions: pass the
    result as `cache=` to oprm_generate, which then reads only S on (copies of) these states."""
    lm = as_lm(lm)
    prefix, context = _tokens("prefix", prefix, lm.vocab_size), _tokens("context", context, lm.vocab_size)
    encoder = _encoder_model(lm, chunk_prefix)
    spans = chunk_spans(len(context), chunk_len, align)
    heads = _heads(prefix, context, [], spans, read_twice=False)
    groups, logits = _prefill(lm, heads, [len(h) for h in heads], max_batch_tokens=max_batch_tokens,
                              pad_id=pad_id, encoder=encoder)
    return ChunkStates(spans, groups, logits, None, key=(prefix, context, chunk_len, align, encoder is not None))


# ----------------------------------------------------------------------------- 3. selection

def entropy(logits, exclude=None):
    """H = -Σ p log p of each row, in fp32 (OPRM paper: in bf16 near-ties between chunks blur). (..., V) -> (...)
    exclude: a token id left out, the others renormalised (the entropy of the answer given it is not that
    token): the "entropy_non_idk" selection leaves out the IDK token."""
    logits = logits.float()
    if exclude is not None:
        logits = logits.index_fill(-1, torch.tensor([exclude], device=logits.device), float("-inf"))
    logp = F.log_softmax(logits, dim=-1).clamp(min=torch.finfo(torch.float32).min)  # -inf at exclude: 0·(-big) = 0
    return -(logp.exp() * logp).sum(-1)


def select_chunk(states, selection="entropy", idk_token=None, idk_filter=True):
    """Step 3 -> (chosen chunk, scores (b,), kept (b,) bool).

    selection        scores, per chunk
      entropy          H of the first answer token (lower is better): the paper's default
      entropy_non_idk  H over every token but idk_token, renormalised (lower is better): no filter and no new
                       parameter, but a confident "not here" no longer looks like a confident answer
      likelihood       log p(S | P, C_i) (higher is better; needs S read token by token)
    idk_token: the IDK id; with idk_filter, drop the chunks whose top first token is IDK, and if none is
    left, fall back to the lowest entropy (OPRM paper)."""
    _check(selection in SELECTIONS, "selection", selection, f"expected one of {SELECTIONS}")
    ent = entropy(states.logits)                                              # (b,)
    if selection == "entropy":
        scores, goodness = ent, -ent
    elif selection == "entropy_non_idk":
        _check(idk_token is not None, "idk_token", idk_token, "selection='entropy_non_idk' needs the IDK token id")
        scores = entropy(states.logits, exclude=idk_token)
        goodness = -scores
    else:
        _check(states.loglik is not None, "selection", selection, "needs S read token by token (step_suffix=True)")
        scores, goodness = states.loglik, states.loglik
    kept = torch.ones_like(ent, dtype=torch.bool)
    if idk_token is not None and idk_filter:
        kept = states.logits.argmax(-1) != idk_token                          # "the answer is not in this chunk"
    if kept.any():
        chosen = int(goodness.masked_fill(~kept, float("-inf")).argmax())
    else:
        chosen = int(ent.argmin())
    return chosen, scores, kept


# ----------------------------------------------------------------------------- 4. decoding

def _greedy(lm, logits, cache, max_new_tokens, stop_token):
    """Greedy decoding of every row of a batched cache; a row stops at stop_token (not included)."""
    out = [[] for _ in range(len(logits))]
    done = torch.zeros(len(logits), dtype=torch.bool)
    for i in range(max_new_tokens):
        tok = logits.argmax(-1)                                               # (B,)
        for r, t in enumerate(tok.tolist()):
            if not done[r]:
                done[r] = t == stop_token
                if not done[r]:
                    out[r].append(t)
        if bool(done.all()) or i == max_new_tokens - 1:
            break
        logits, cache = lm.step(tok, cache)
    return out


def decode(lm, states, chunks, max_new_tokens=48, stop_token=None):
    """Step 4: greedy answers from the states of the given chunks only (each group batched once)."""
    lm = as_lm(lm)
    answers = {}
    for rows, cache in states.groups:
        mine = [c for c in chunks if int(rows[0]) <= c <= int(rows[-1])]
        if not mine:
            continue
        local = torch.tensor([c - int(rows[0]) for c in mine], device=rows.device)
        sub = lm.select(cache, local)                                         # only these chunks' states
        for c, a in zip(mine, _greedy(lm, states.logits[mine], sub, max_new_tokens, stop_token)):
            answers[c] = a
    return [answers[c] for c in chunks]


# ----------------------------------------------------------------------------- all four steps

@dataclass
class OPRMResult:
    answer: list           # generated token ids (summarize: the chunks' answers joined)
    chunk: int             # the chosen chunk (-1 in summarize mode, where all are decoded)
    scores: torch.Tensor   # (b,) entropy (lower is better) or log p(S | P, C_i) (higher is better)
    entropy: torch.Tensor  # (b,) entropy of every chunk's first-token distribution
    top: torch.Tensor      # (b,) every chunk's top first token
    kept: torch.Tensor     # (b,) bool: chunks left after the IDK filter
    spans: list            # b (start, end) in the context
    answers: list = None   # summarize: every chunk's answer


def oprm_generate(lm, prefix, context, suffix, chunk_len, *, selection="entropy", idk_token=None,
                  mode="select", max_new_tokens=48, stop_token=None, join=(), cache=None, align=1,
                  max_batch_tokens=120_000, pad_id=0, read_twice=False, chunk_prefix=None):
    """Answer [prefix, context, suffix] (token ids) by OPRM. Knobs, with their defaults:

    chunk_len         L: chunk length in tokens (the paper sweeps 1000-3000); len(context) = full context
    selection         "entropy" (the paper's default) or "likelihood" of the suffix given [P, C_i]
    idk_token         None; the id the prompt asks for when the answer is absent ("Error" in the paper)
    mode              "select" (one chunk), "summarize" (every chunk, answers joined by `join`),
                      "last" (only the last chunk_len tokens of the context: code completion)
    max_new_tokens    48 and stop_token None: greedy decoding stops there (JRT paper)
    cache             None, or cache_context(lm, prefix, context, chunk_len, ...) for this very context:
                      then the context is not read again, only the suffix
    align             1; chunk boundaries on multiples of it (2 for MQAR's key-value pairs)
    max_batch_tokens  120k tokens per prefill batch, padding included (the paper's ~120k)
    pad_id            0; any id, pads are masked out of every state
    read_twice        False; JRT-Prompt in every chunk: X_i = [P, C_i, S, C_i, S]
    chunk_prefix      None = JRT-RNN reads each [P, C_i] as its prefix when our Model has pla layers
    """
    lm = as_lm(lm)
    V = lm.vocab_size
    _check(selection in SELECTIONS, "selection", selection, f"expected one of {SELECTIONS}")
    _check(mode in MODES, "mode", mode, f"expected one of {MODES}")
    prefix, context, suffix = _tokens("prefix", prefix, V), _tokens("context", context, V), _tokens("suffix", suffix, V)
    _check(len(context) > 0, "context", context, "expected at least one token")
    _check(isinstance(chunk_len, int) and 1 <= chunk_len <= len(context), "chunk_len", chunk_len,
           f"expected an int in [1, len(context) = {len(context)}]")
    _check(idk_token is None or (isinstance(idk_token, int) and 0 <= idk_token < V), "idk_token", idk_token,
           f"expected None or a token id in [0, vocab_size = {V})")
    _check(stop_token is None or (isinstance(stop_token, int) and 0 <= stop_token < V), "stop_token",
           stop_token, f"expected None or a token id in [0, vocab_size = {V})")
    _check(isinstance(max_new_tokens, int) and max_new_tokens >= 1, "max_new_tokens", max_new_tokens,
           "expected an int >= 1")
    _check(isinstance(max_batch_tokens, int) and max_batch_tokens >= 1, "max_batch_tokens", max_batch_tokens,
           "expected an int >= 1 (a chunk longer than the budget is prefilled alone)")
    _check(selection != "likelihood" or suffix, "suffix", suffix, "the likelihood selection needs a question")
    limit = getattr(lm, "max_seq_len", None)  # models with absolute positions say how much they take
    if limit is not None:
        need = len(prefix) + (2 if read_twice else 1) * (min(chunk_len, len(context)) + len(suffix))
        _check(need <= limit, "suffix", f"{len(suffix)} tokens", f"prefix + (chunk + suffix)"
               f"{' x 2' if read_twice else ''} = {need} tokens, but the model takes at most max_seq_len = {limit}")
    if mode == "last":  # code completion: what matters is right before the cursor
        context, chunk_len = context[-chunk_len:], min(chunk_len, len(context))

    if cache is not None:
        _check(not read_twice, "read_twice", read_twice, "cannot use a cache: the state after [P, C_i, S, C_i] "
               "depends on the question")
        _check(cache.key == (prefix, context, chunk_len, align, _encoder_model(lm, chunk_prefix) is not None),
               "cache", "ChunkStates", "was built from another prefix, context, chunk_len, align or chunk_prefix "
               "than this call's (in mode='last', build it from context[-chunk_len:])")
        states = read_suffix(lm, cache, suffix, keep=True)
    else:
        states = speculative_prefill(lm, prefix, context, suffix, chunk_len, align=align,
                                     max_batch_tokens=max_batch_tokens, pad_id=pad_id, read_twice=read_twice,
                                     chunk_prefix=chunk_prefix, step_suffix=selection == "likelihood")
    ent, top = entropy(states.logits), states.logits.argmax(-1)
    if mode == "summarize":
        answers = decode(lm, states, list(range(len(states.spans))), max_new_tokens, stop_token)
        joined = [t for i, a in enumerate(answers) for t in (list(join) if i else []) + a]
        kept = torch.ones_like(ent, dtype=torch.bool)
        return OPRMResult(joined, -1, ent, ent, top, kept, states.spans, answers)
    chosen, scores, kept = select_chunk(states, selection, idk_token)
    answer = decode(lm, states, [chosen], max_new_tokens, stop_token)[0]
    return OPRMResult(answer, chosen, scores, ent, top, kept, states.spans)


# ----------------------------------------------------------------------------- OPRM on long MQAR

RULES = {  # the selectors mqar_long compares: name -> (selection, IDK filter on)
    "entropy": ("entropy", False), "entropy+idk": ("entropy", True),
    "entropy_non_idk": ("entropy_non_idk", False), "likelihood": ("likelihood", False)}


@torch.no_grad()
def mqar_long(lm, *, num_pairs, context_len, seq_len, vocab_size, chunk_lens, n=200, seed=0):
    """n test examples with num_pairs facts spread over context_len tokens and one query whose key is
    present. Accuracy of the full context (one chunk) and, per chunk length L, of OPRM with each selector
    of RULES; `oracle` reads the chunk that holds the key, i.e. what OPRM would score with a perfect
    selection. Returns {"full": acc, L: {rule: acc, ..., "oracle": acc, "holds": {rule: share of examples
    whose chosen chunk holds the key}}}: a selector can fail by choosing the wrong chunk (holds) or by the
    right chunk answering wrongly (oracle)."""
    ex = data.mqar(n, vocab_size=vocab_size, seq_len=seq_len, num_pairs=num_pairs, num_queries=1,
                   context_len=context_len, seed=seed, split="test")
    idk = data.idk_token(vocab_size)
    hits = {"full": 0, **{L: dict.fromkeys([*RULES, "oracle"], 0) for L in chunk_lens}}
    holds = {L: dict.fromkeys(RULES, 0) for L in chunk_lens}
    for x, y in zip(ex.x.tolist(), ex.y.tolist()):
        q = next(i for i, t in enumerate(y) if t != -100)                # the query: key x[q], value y[q]
        context, suffix, gold = x[:context_len], x[context_len:q + 1], y[q]
        full = speculative_prefill(lm, [], context, suffix, context_len, align=2)
        hits["full"] += int(full.logits[0].argmax()) == gold
        for L in chunk_lens:
            states = speculative_prefill(lm, [], context, suffix, L, align=2, step_suffix=True)
            top = states.logits.argmax(-1)                               # (b,) every chunk's answer
            key_at = context.index(x[q])
            holder = next(i for i, (a, e) in enumerate(states.spans) if a <= key_at < e)
            for name, (selection, idk_filter) in RULES.items():
                chosen = select_chunk(states, selection, idk, idk_filter)[0]
                hits[L][name] += int(top[chosen]) == gold
                holds[L][name] += chosen == holder
            hits[L]["oracle"] += int(top[holder]) == gold
    return {"full": hits["full"] / n, **{L: {**{r: v / n for r, v in hits[L].items()},
                                             "holds": {r: v / n for r, v in holds[L].items()}} for L in chunk_lens}}


ACC_COLUMNS = ("full", "entropy", "entropy+idk", "entropy_non_idk", "likelihood", "oracle")


def accuracy_rows(model, c, pairs, chunk_lens, n, seed=0):
    """Full context vs OPRM for a model trained on MQAR, one record per (pairs, L) as each is measured:
    {"model", "pairs", "L", "full", every rule of RULES, "oracle", "holds": {rule: share}, "seconds"}; c is
    the model's training config (vocab_size, seq_len, context_len, num_pairs, model)."""
    C = c["context_len"] or 2 * c["num_pairs"]
    for k in pairs:
        t0 = time.time()
        acc = mqar_long(model, num_pairs=k, context_len=C, seq_len=c["seq_len"], vocab_size=c["vocab_size"],
                        chunk_lens=chunk_lens, n=n, seed=seed)
        for L in chunk_lens:
            yield dict(model=c["model"], pairs=k, L=L, full=acc["full"], **acc[L], seconds=time.time() - t0)


def markdown_row(r):
    """One record of accuracy_rows as a row under ACC_HEADER: accuracy, and in brackets how often the
    chosen chunk held the key."""
    cells = [f"{r['full']:.3f}"] + [f"{r[k]:.3f} ({r['holds'][k]:.2f})" for k in RULES] + [f"{r['oracle']:.3f}"]
    return f"| {r['model']} | {r['pairs']} | {r['L']} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |"


ACC_HEADER = ("| model | pairs | L | full context | OPRM entropy | OPRM entropy + IDK | OPRM entropy over non-IDK | "
              "OPRM likelihood | oracle chunk | eval s |\n|---|---|---|---|---|---|---|---|---|---|")


def _rss_follows_tensors():
    """glibc keeps freed blocks under its mmap threshold resident (the threshold grows up to 32 MB), so the
    peak resident size would miss memory reused from earlier calls. A fixed 64 KB threshold (mallopt
    M_MMAP_THRESHOLD = -3) maps every tensor on its own and unmaps it when freed. Linux/glibc only."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)
    except (OSError, AttributeError):
        pass


def _memory_mark(device):
    """Start measuring peak memory: CUDA's allocator statistics, or on Linux the process's peak resident
    size (VmHWM), which writing 5 to /proc/self/clear_refs resets. Returns the baseline in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status("VmRSS:")
    except OSError:
        return None


def _proc_status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def _memory_peak(device, base):
    if base is None:
        return float("nan")
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() - base
    return _proc_status("VmHWM:") - base


@torch.no_grad()
def prefill_cost(lm, context_len, chunk_len, *, max_batch_tokens=120_000, suffix_len=8, reps=3, seed=0):
    """Seconds (best of reps) and peak memory above the start (bytes) of the speculative prefill of a
    random context: one chunk (full context) vs OPRM's chunks. The states are kept, as OPRM keeps them."""
    lm = as_lm(lm)
    device = _device(lm)
    g = torch.Generator().manual_seed(seed)
    context = torch.randint(1, lm.vocab_size, (context_len,), generator=g).tolist()
    suffix = torch.randint(1, lm.vocab_size, (suffix_len,), generator=g).tolist()
    out = {}
    for name, L in (("full", context_len), ("oprm", chunk_len)):
        speculative_prefill(lm, [], context, suffix, L, max_batch_tokens=max_batch_tokens)  # warm-up, not measured
        best, peak = float("inf"), 0
        for _ in range(reps):
            base = _memory_mark(device)
            t0 = time.perf_counter()
            states = speculative_prefill(lm, [], context, suffix, L, max_batch_tokens=max_batch_tokens)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
            peak = max(peak, _memory_peak(device, base))
            del states
        out[name] = (best, peak)
    return out


# ----------------------------------------------------------------------------- OPRM on text: LongBench, your own .jsonl
# OPRM's LongBench layout: P = chat opening + the task's instruction, C = the context, S = the question + answer cue + chat
# closing; the QA sets' suffix adds the IDK sentence, and chunks whose top first token is that of "Error"
# are dropped. The instructions below are our own, one per kind of set, with LongBench's {context} and
# {input} slots: pass --prompts with LongBench's config/dataset2prompt.json for its exact wording.

IDK_SENTENCE = 'If the answer does not exist in the passages, return "Error".'
LONGBENCH = {  # the 16 English sets -> kind
    **dict.fromkeys(("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique"), "qa"),
    **dict.fromkeys(("gov_report", "qmsum", "multi_news"), "summary"),
    **dict.fromkeys(("trec", "triviaqa", "samsum"), "fewshot"),
    **dict.fromkeys(("passage_count", "passage_retrieval_en"), "synthetic"),
    **dict.fromkeys(("lcc", "repobench-p"), "code"),
}
KINDS = {  # kind -> (our instruction template, OPRM mode, max new tokens: 20 for QA, as OPRM's code)
    "qa": ("Answer the question from the passages below, as briefly as you can.\n\n{context}\n\n"
           "Question: {input}\nAnswer:", "select", 20),
    "summary": ("Summarise the text below.\n\n{context}\n\n{input}\nSummary:", "summarize", 500),
    "fewshot": ("Complete the last case the way the examples below are completed.\n\n{context}\n\n{input}",
                "select", 20),
    "synthetic": ("Read the paragraphs below, then answer.\n\n{context}\n\n{input}\nAnswer:", "select", 20),
    "code": ("Complete the code below.\n{context}{input}Next line of code:\n", "last", 64),
}


def text_parts(template, row, kind, tokenizer):
    """(P, C, S) token ids of one row: the template split at {context}, the chat template around it."""
    if template.count("{context}") != 1:
        raise ValueError(f"a prompt template needs exactly one {{context}} slot; got {template[:60]!r}...")
    before, after = template.split("{context}")
    question = str(row.get("input", ""))
    after = after.replace("{input}", question + (" " + IDK_SENTENCE if kind == "qa" else ""))
    opening = closing = ""
    tok = getattr(tokenizer, "tok", None)                            # a Hugging Face tokenizer may chat
    if getattr(tok, "chat_template", None):
        mark = "\x00CONTENT\x00"
        chat = tok.apply_chat_template([{"role": "user", "content": mark}], tokenize=False, add_generation_prompt=True)
        opening, closing = chat.split(mark)
    enc = tokenizer.encode_ordinary
    return enc(opening + before), enc(str(row["context"])), enc(after + closing)


def _normalize(s):  # SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces
    s = "".join(ch for ch in s.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def f1_score(prediction, answers):
    """Token F1 of the prediction against the best gold answer (LongBench's QA metric)."""
    best, pred = 0.0, _normalize(prediction).split()
    for gold in answers:
        g = _normalize(gold).split()
        common = sum((Counter(pred) & Counter(g)).values())
        if common:
            p, r = common / len(pred), common / len(g)
            best = max(best, 2 * p * r / (p + r))
    return best


def read_rows(path):
    """A .jsonl file of long-context rows: context, input (the question), answers (a list of strings), and
    optionally kind (qa, summary, fewshot, synthetic, code; default qa) and prompt (a template)."""
    rows = []
    for i, row in jsonl_objects(path, "mqar_long, cost, longbench:SET or a .jsonl file"):
        for f in ("context", "input", "answers"):
            if f not in row:
                raise ValueError(f"{path} line {i}: missing field {f!r} (a row has context, input, answers, "
                                 "and optionally kind and prompt)")
        if isinstance(row["answers"], str):
            row["answers"] = [row["answers"]]
        if not row["answers"] or not all(isinstance(s, str) for s in row["answers"]):
            raise ValueError(f"{path} line {i}: answers must be a non-empty list of strings")
        if row.get("kind", "qa") not in KINDS:
            raise ValueError(f"{path} line {i}: kind={row['kind']!r}; expected one of {sorted(KINDS)}")
        rows.append(row)
    return rows


def text_rows(lm, tokenizer, rows, *, chunk_lens, kind=None, template=None, max_new_tokens=None,
              max_batch_tokens=120_000):
    """Full context vs OPRM on long-context text rows: yields (row, full-context answer, {L: OPRM answer})."""
    idk = tokenizer.encode_ordinary("Error")[0]                      # the IDK token: the first token of "Error"
    eos = getattr(getattr(tokenizer, "tok", None), "eos_token_id", None)
    for row in rows:
        k = kind or row.get("kind", "qa")
        tmpl, mode, max_new = KINDS[k]
        P, C, S = text_parts(row.get("prompt") or template or tmpl, row, k, tokenizer)
        if not C:
            raise ValueError(f"a row's context is empty (input {str(row.get('input'))[:40]!r})")
        kw = dict(max_new_tokens=max_new_tokens or max_new, stop_token=eos, max_batch_tokens=max_batch_tokens,
                  join=tokenizer.encode_ordinary("\n"))
        full = oprm_generate(lm, P, C, S, len(C), **kw).answer        # one chunk: ordinary inference
        oprm = {L: oprm_generate(lm, P, C, S, min(L, len(C)), mode=mode, idk_token=idk if k == "qa" else None,
                                 **kw).answer for L in chunk_lens}
        yield row, tokenizer.decode(full), {L: tokenizer.decode(a) for L, a in oprm.items()}


def text_table(lm, tokenizer, rows, name, chunk_lens, **kw):
    """Mean token F1 (%) of full-context inference and of OPRM at each chunk length L: one markdown row per L."""
    full, oprm = 0.0, dict.fromkeys(chunk_lens, 0.0)
    for row, a_full, a_oprm in text_rows(lm, tokenizer, rows, chunk_lens=chunk_lens, **kw):
        full += f1_score(a_full, row["answers"])
        for L in chunk_lens:
            oprm[L] += f1_score(a_oprm[L], row["answers"])
    return "\n".join(f"| {name} | {len(rows)} | {L} | {100 * full / len(rows):.1f} | {100 * oprm[L] / len(rows):.1f} |"
                     for L in chunk_lens)


TEXT_HEADER = "| task | n | L | full context F1 | OPRM F1 |\n|---|---|---|---|---|"

OVERFLOW_RECIPE = ("a checkpoint that overflows: python experiments.py overflow --quick --models based (tiny Based "
                   "trained on MQAR with 1 to 16 pairs in contexts of up to 32 tokens, saved to "
                   "out/oprm-quick/based_d32.pt), then python chunked.py --ckpt out/oprm-quick/based_d32.pt --task "
                   "mqar_long --chunk_len 8 (4, 8 and 16 pairs in 32 tokens)")


def default_pairs(n, context_len, vocab_size):
    """The pair counts mqar_long tests by default: from a quarter of the n pairs the model was trained with
    (at most) to four times as many, as far as the context (2 tokens a pair) and the vocabulary (keys in
    [1, V/2), values in [V/2, V-1)) leave room."""
    room = min(context_len // 2, vocab_size // 2 - 1, vocab_size - 1 - vocab_size // 2)
    return sorted({k for k in (n // 4, n // 2, n, n * 3 // 2, 2 * n, 4 * n) if 1 <= k <= room})


def _mqar_config(path, c):
    """The training config of an MQAR checkpoint, or a one-line error saying what --task mqar_long needs."""
    if c.get("task", "mqar") != "mqar" or not all(k in c for k in ("num_pairs", "seq_len", "vocab_size")):
        raise ValueError(f"--ckpt {path}: --task mqar_long needs a checkpoint trained on MQAR (train.py --task=mqar); "
                         f"this one was trained on task={c.get('task')!r}")
    return dict(c, context_len=c.get("context_len") or 0, model=c.get("model", os.path.basename(path)))


def read_templates(path, name):
    """--prompts: a JSON object of set -> template, read before any model loads; one line for each mistake."""
    if not os.path.isfile(path):
        raise ValueError(f"--prompts {path}: no such file (a JSON object of set -> template, e.g. "
                         "LongBench's config/dataset2prompt.json)")
    try:
        templates = json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise ValueError(f"--prompts {path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(templates, dict) or not isinstance(templates.get(name, ""), str):
        raise ValueError(f"--prompts {path}: expected a JSON object of set -> template string")
    return templates.get(name)


def run(p, a, say=print):
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    ints = lambda s: [int(v) for v in s.split(",") if v]
    for name in ("num_pairs", "chunk_len", "context_lens", "n", "max_batch_tokens", "max_new_tokens"):
        value = "" if getattr(a, name) is None else str(getattr(a, name))
        try:
            bad = any(v < 1 for v in ints(value))
        except ValueError:
            bad = True
        if bad:
            raise ValueError(f"--{name}={getattr(a, name)}: expected positive ints, comma-separated")
    if a.task == "mqar_long":
        if not a.ckpt or a.hf:
            raise ValueError("--task mqar_long needs --ckpt (train.py checkpoints, comma-separated; " + OVERFLOW_RECIPE
                             + ")")
        say(ACC_HEADER)
        for path in a.ckpt.split(","):
            model, c = load_checkpoint(path, device)
            c = _mqar_config(path, c)
            C = c["context_len"] or 2 * c["num_pairs"]
            pairs = ints(a.num_pairs) or default_pairs(c["num_pairs"], C, c["vocab_size"])
            for r in accuracy_rows(model, c, pairs, ints(a.chunk_len) or [C // 4], a.n or 200):
                say(markdown_row(r))
    elif a.task == "cost":
        if device.type == "cpu":
            _rss_follows_tensors()
        say(f"device {device}; prefill of [C_i, S] with |S| = 8, max_batch_tokens {a.max_batch_tokens}; "
            "seconds (best of 3) and peak memory above the start (MB)\n")
        say("| model | context | L | full s | OPRM s | full MB | OPRM MB |\n|---|---|---|---|---|---|---|")
        for name in a.models.split(","):
            torch.manual_seed(0)
            model = Model(Config.from_preset(name)).to(device).eval()
            for N in ints(a.context_lens):
                L = min((ints(a.chunk_len) or [512])[0], N)
                r = prefill_cost(model, N, L, max_batch_tokens=a.max_batch_tokens)
                say(f"| {name} | {N} | {L} | {r['full'][0]:.3f} | {r['oprm'][0]:.3f} | "
                    f"{r['full'][1] / 2**20:.1f} | {r['oprm'][1] / 2**20:.1f} |")
    else:  # text: a LongBench set or a .jsonl file, on a Hugging Face recurrent LM
        if not a.hf:
            raise ValueError(f"--task {a.task} needs --hf NAME (a Hugging Face recurrent LM, e.g. "
                             "state-spaces/mamba-130m-hf); --ckpt models take --task mqar_long")
        if a.task.startswith("longbench:"):
            name = a.task.split(":", 1)[1]
            if name not in LONGBENCH:
                raise ValueError(f"--task {a.task}: unknown LongBench set; the English sets are {', '.join(LONGBENCH)}")
            kind, rows = LONGBENCH[name], None
        else:
            name, kind, rows = os.path.basename(a.task), None, read_rows(a.task)   # bad rows fail before loading
        template = read_templates(a.prompts, name) if a.prompts else None
        lm, tok = hf.load(a.hf, device, mode="cache")               # refuses a family that cannot keep pads out
        if rows is None:
            data_rows = hf.load_dataset("THUDM/LongBench", name, "test")
            rows = [dict(data_rows[i]) for i in range(min(a.n or len(data_rows), len(data_rows)))]
        say(TEXT_HEADER)
        say(text_table(lm, tok, rows, name, ints(a.chunk_len) or [2000], kind=kind, template=template,
                       max_new_tokens=a.max_new_tokens, max_batch_tokens=a.max_batch_tokens))


def main(argv=None):
    p = argparse.ArgumentParser(description="OPRM: full context vs chunked inference (Ben-Kish et al. 2025); the overflow "
                                "experiment that trains its own models is `python experiments.py overflow`",
                                epilog="Overflow on MQAR: " + OVERFLOW_RECIPE + ".")
    p.add_argument("--task", default="mqar_long",
                   help="mqar_long: test MQAR checkpoints with more pairs than they were trained on; "
                   "cost: prefill time and memory vs context length; longbench:SET (e.g. longbench:hotpotqa; "
                   "needs --hf and datasets) or a .jsonl file of long-context rows (context, input, answers): "
                   "token F1 of full context vs OPRM")
    p.add_argument("--ckpt", default="", help="mqar_long: checkpoints, comma-separated")
    p.add_argument("--hf", default="", help="text tasks: a Hugging Face recurrent LM (Mamba, Falcon-Mamba, Mamba-2)")
    p.add_argument("--prompts", default="", help="text tasks: a JSON file of set -> template with {context} and "
                   "{input} (LongBench's config/dataset2prompt.json); default: our own instruction per kind of set")
    p.add_argument("--num_pairs", default="", help="mqar_long: pair counts; default n/4 to 4n for n trained, as room allows")
    p.add_argument("--chunk_len", default="", help="L, comma-separated; default context_len // 4 (mqar_long), "
                   "512 (cost), 2000 (text; the paper sweeps 1000, 2000, 3000)")
    p.add_argument("--n", type=int, default=None, help="mqar_long: test examples per pair count (default 200); "
                   "text: at most n rows (default all)")
    p.add_argument("--max_new_tokens", type=int, default=None, help="text: default 20 (QA), 500 (summaries), 64 (code)")
    p.add_argument("--models", default="based-tiny,jrt-tiny,transformer-tiny",
                   help="cost: model.py presets, random weights")
    p.add_argument("--context_lens", default="1024,2048,4096,8192,16384", help="cost: context lengths")
    p.add_argument("--max_batch_tokens", type=int, default=120_000, help="tokens per prefill batch (paper ~120k)")
    p.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N | mps")
    p.add_argument("--threads", type=int, default=1, help="CPU threads; tiny models run fastest on one (more "
                   "threads only wait for each other, 10x slower on a busy CPU); 0 = torch's default")
    p.add_argument("--out", help="also write the printed table(s) to this file (its folder is created)")
    a = p.parse_args(argv)
    lines = []

    def say(line):                                                   # print now, and keep for --out
        print(line, flush=True)
        lines.append(line)
    try:
        if a.out:
            check_out(a.out)
        run(p, a, say)
    except (ValueError, ImportError, FileNotFoundError) as e:       # a user's mistake: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if a.out:
        with open(a.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
