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

Any model of the one interface (lm.prefill / lm.step / lm.select, see lm.py) works: our Model (wrapped in
lm.ModelLM to choose each row's prefix), and Hugging Face causal LMs whose cache keeps left pads out
of the state (hf.HFLM: Transformers such as GPT-2 and Llama, Mamba, Falcon-Mamba, Mamba-2). A chunk is read
once: the states of the speculative prefill are the ones decoded from.

Symbols: b chunks, L chunk length, V vocabulary, B rows of one prefill group.

The harnesses (long MQAR, LongBench, your own .jsonl) and their CLI are in evaluate.py:

    python evaluate.py oprm --task mqar_long --ckpt out/ckpt.pt   # full context vs OPRM, MQAR with more pairs
    python experiments.py overflow             # trains Based, JRT-RNN and a Transformer, then the same test
    python evaluate.py oprm --hf tiiuae/falcon-mamba-7b-instruct --task longbench:hotpotqa   # GPU, internet
"""
import copy
import math
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lm import ModelLM, left_pad
from lm import decode as greedy_decode
from model import Model

SELECTIONS = ("entropy", "entropy_non_idk", "likelihood")
MODES = ("select", "summarize", "last")


def as_lm(lm):
    """Our Model behind a ModelLM (to choose each row's prefix); anything else is taken to offer the
    interface already. A model that cannot keep left pads out of its state is refused: OPRM's chunks
    differ in length, and a pad in a state would change the answer silently."""
    if isinstance(lm, Model):
        return ModelLM(lm)
    if not getattr(lm, "supports_padding", True):
        raise ValueError(f"{type(lm).__name__} (mode {getattr(lm, 'mode', '?')!r}) cannot keep left pads out "
                         f"of its state, which OPRM's chunks of unequal length need; "
                         f"supported: {type(lm).PADDED}")
    return lm


def _encoder_model(lm, chunk_prefix):
    """The Model whose pla layers read each row's [P, C_i] as their prefix (JRT-RNN), or None."""
    model = lm.model if isinstance(lm, ModelLM) else None
    has_pla = model is not None and "pla" in model.config.layers
    if chunk_prefix is None:  # default: yes for JRT-RNN, unless the caller's ModelLM fixes a prefix_len
        chunk_prefix = has_pla and lm.prefix_len is None
    _check(not chunk_prefix or has_pla, "chunk_prefix", chunk_prefix,
           "True needs our Model (or a ModelLM) with pla layers (JRT-RNN); use None or False for other "
           "models")
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
    _check_chunk_len(chunk_len, n)
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


def prefill_chunks(lm, seqs, prefix_lens, *, max_batch_tokens, pad_id, encoder):
    """Prefill token lists in groups of consecutive rows with rows × longest ≤ max_batch_tokens (a row
    longer than the budget runs alone). encoder: JRT-RNN's Model, whose pla layers then read the first
    prefix_lens[r] tokens of row r non-causally. Returns [(rows, cache)] and the logits (b, V)."""
    V = lm.vocab_size
    _check(isinstance(pad_id, int) and 0 <= pad_id < V, "pad_id", pad_id,
           f"expected a token id in [0, vocab_size = {V}) (pads are masked out of every state, but must be "
           "ids)")
    device, groups, logits, i = getattr(lm, "device", torch.device("cpu")), [], [], 0
    while i < len(seqs):
        j, longest = i + 1, len(seqs[i])
        while j < len(seqs) and (j + 1 - i) * max(longest, len(seqs[j])) <= max_batch_tokens:
            longest, j = max(longest, len(seqs[j])), j + 1
        idx, pad = left_pad(seqs[i:j], pad_id, device)                       # (B, T), (B, T)
        reader = lm
        if encoder is not None:  # prefix_len counts real tokens from the row's first one: pads are no prefix
            reader = ModelLM(encoder, torch.tensor(prefix_lens[i:j], device=device))
        lg, cache = reader.prefill(idx, pad_mask=pad if pad.any() else None)  # (B, V)
        groups.append((torch.arange(i, j, device=device), cache))
        logits.append(lg.float())
        i = j
    return groups, torch.cat(logits)                                         # [(rows, cache)], (b, V)


def chunk_heads(prefix, context, suffix, spans, read_twice):
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
    heads = chunk_heads(prefix, context, suffix, spans, read_twice)
    kw = dict(max_batch_tokens=max_batch_tokens, pad_id=pad_id, encoder=encoder)
    prefix_lens = [len(h) for h in heads]  # JRT-RNN: the head is the prefix, S after it causal (as data.py)
    if step_suffix:
        groups, logits = prefill_chunks(lm, heads, prefix_lens, **kw)
        return read_suffix(lm, ChunkStates(spans, groups, logits, None), suffix, keep=False)
    groups, logits = prefill_chunks(lm, [h + suffix for h in heads], prefix_lens, **kw)
    return ChunkStates(spans, groups, logits, None)


def cache_context(lm, prefix, context, chunk_len, *, align=1, max_batch_tokens=120_000, pad_id=0,
                  chunk_prefix=None):
    """The states after [P, C_i] for every chunk, read once for any number of questions: pass the
    result as `cache=` to oprm_generate, which then reads only S on (copies of) these states."""
    lm = as_lm(lm)
    prefix, context = _tokens("prefix", prefix, lm.vocab_size), _tokens("context", context, lm.vocab_size)
    encoder = _encoder_model(lm, chunk_prefix)
    spans = chunk_spans(len(context), chunk_len, align)
    heads = chunk_heads(prefix, context, [], spans, read_twice=False)
    groups, logits = prefill_chunks(lm, heads, [len(h) for h in heads], max_batch_tokens=max_batch_tokens,
                              pad_id=pad_id, encoder=encoder)
    key = (prefix, context, chunk_len, align, encoder is not None)
    return ChunkStates(spans, groups, logits, None, key=key)


# ----------------------------------------------------------------------------- 3. selection

def entropy(logits, exclude=None):
    """H = -Σ p log p of each row, (..., V) -> (...), in fp32 (OPRM paper: in bf16 near-ties between chunks
    blur).
    exclude: a token id left out, the others renormalised (the entropy of the answer given it is not that
    token): the "entropy_non_idk" selection leaves out the IDK token."""
    logits = logits.float()
    if exclude is not None:
        logits = logits.index_fill(-1, torch.tensor([exclude], device=logits.device), float("-inf"))
    logp = F.log_softmax(logits, dim=-1).clamp(min=torch.finfo(torch.float32).min)  # exclude: 0·(-big) = 0
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
        _check(idk_token is not None, "idk_token", idk_token,
               "selection='entropy_non_idk' needs the IDK token id")
        scores = entropy(states.logits, exclude=idk_token)
        goodness = -scores
    else:
        _check(states.loglik is not None, "selection", selection,
               "needs S read token by token (step_suffix=True)")
        scores, goodness = states.loglik, states.loglik
    kept = torch.ones_like(ent, dtype=torch.bool)
    if idk_token is not None and idk_filter:
        kept = states.logits.argmax(-1) != idk_token                  # IDK: "the answer is not in this chunk"
    if kept.any():
        chosen = int(goodness.masked_fill(~kept, float("-inf")).argmax())
    else:
        chosen = int(ent.argmin())
    return chosen, scores, kept


# ----------------------------------------------------------------------------- 4. decoding

def decode(lm, states, chunks, max_new_tokens=48, stop_token=None):
    """Step 4: greedy answers from the states of the given chunks only (each group batched once)."""
    lm = as_lm(lm)
    stop = () if stop_token is None else (stop_token,)
    answers = {}
    for rows, cache in states.groups:
        mine = [i for i in chunks if int(rows[0]) <= i <= int(rows[-1])]
        if not mine:
            continue
        local = torch.tensor([i - int(rows[0]) for i in mine], device=rows.device)
        sub = lm.select(cache, local)                                         # only these chunks' states
        for i, (answer, _) in zip(mine, greedy_decode(lm, states.logits[mine], sub, max_new_tokens, stop)):
            answers[i] = answer
    return [answers[i] for i in chunks]


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
    prefix, context, suffix = _check_oprm(lm, prefix, context, suffix, chunk_len, selection, idk_token, mode,
                                          max_new_tokens, stop_token, max_batch_tokens, read_twice)
    if mode == "last":  # code completion: what matters is right before the cursor
        context, chunk_len = context[-chunk_len:], min(chunk_len, len(context))

    if cache is not None:
        _check_cache(cache, (prefix, context, chunk_len, align, _encoder_model(lm, chunk_prefix) is not None),
                     read_twice)
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


# ----------------------------------------------------------------------------- OPRM's prompts for long texts
# OPRM's LongBench layout: P = chat opening + the task's instruction, C = the context, S = the question +
# answer cue + chat closing; the QA sets' suffix adds the IDK sentence, and chunks whose top first token is
# that of "Error" are dropped. The instructions below are our own, one per kind of set, with LongBench's
# {context} and {input} slots: pass --prompts with LongBench's config/dataset2prompt.json for its wording.

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
        chat = tok.apply_chat_template([{"role": "user", "content": mark}], tokenize=False,
                                       add_generation_prompt=True)
        opening, closing = chat.split(mark)
    enc = tokenizer.encode_ordinary
    return enc(opening + before), enc(str(row["context"])), enc(after + closing)


def text_rows(lm, tokenizer, rows, *, chunk_lens, kind=None, template=None, max_new_tokens=None,
              max_batch_tokens=120_000):
    """Full context vs OPRM on long-context text rows: yields (row, full-context answer, {L: OPRM answer})."""
    idk = tokenizer.encode_ordinary("Error")[0]                  # the IDK token: the first token of "Error"
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


# ----------------------------------------------------------------------------- input checks

def _check(ok, name, value, allowed):
    if not ok:
        raise ValueError(f"{name}={value!r}: {allowed}")


def _check_chunk_len(chunk_len, n):
    _check(isinstance(chunk_len, int) and 1 <= chunk_len <= n, "chunk_len", chunk_len,
           f"expected an int in [1, len(context) = {n}]")


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
        raise ValueError(f"{name}: token id {bad[0]} is outside the vocabulary; ids must be in "
                         f"[0, vocab_size={V})")
    return ids


def _check_oprm(lm, prefix, context, suffix, chunk_len, selection, idk_token, mode, max_new_tokens,
                stop_token, max_batch_tokens, read_twice):
    """oprm_generate's arguments, each in one line naming it; returns the token lists."""
    V = lm.vocab_size
    _check(selection in SELECTIONS, "selection", selection, f"expected one of {SELECTIONS}")
    _check(mode in MODES, "mode", mode, f"expected one of {MODES}")
    prefix, context, suffix = (_tokens(name, ids, V) for name, ids in
                               (("prefix", prefix), ("context", context), ("suffix", suffix)))
    _check(len(context) > 0, "context", context, "expected at least one token")
    _check_chunk_len(chunk_len, len(context))
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
               f"{' x 2' if read_twice else ''} = {need} tokens, but the model takes at most "
               f"max_seq_len = {limit}")
    return prefix, context, suffix


def _check_cache(cache, key, read_twice):
    """A cache_context result serves only the call whose prefix, context and chunking built it."""
    _check(not read_twice, "read_twice", read_twice, "cannot use a cache: the state after [P, C_i, S, C_i] "
           "depends on the question")
    _check(cache.key == key, "cache", "ChunkStates", "was built from another prefix, context, chunk_len, "
           "align or chunk_prefix than this call's (in mode='last', build it from context[-chunk_len:])")
