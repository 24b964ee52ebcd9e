"""
JRT-Prompt: show the context twice before the question (Arora et al. 2024, arXiv 2407.05483), and its evaluation
harness. The synthetic experiments behind it (set order, MQAR read twice) are in experiments.py.

A recurrent LM reads with a fixed-size state, so it must decide what to keep before it knows the
question. Showing (context, question, context, question) lets the second pass be read with the
question already in view: for set disjointness the state needed drops from Ω(size of the set seen
first) to Ω(min(|A|, |B|) / p) for p passes (JRT paper). No training, any model.

Every evaluated model offers one interface, `lm.prefill(idx, pad_mask=None)`, `lm.step(idx_t, cache)`,
`lm.select(cache, rows)` and `lm.vocab_size` (described in hf.py): our `Model` meets it itself,
`model.ModelLM` fixes its prefill options (prefix length, the released code's padding), and
`hf.HFLM` wraps a Hugging Face causal LM. Tokenisation is not part of it: builders work on strings or on
token ids, and the harness takes a tokenizer (a tiktoken Encoding, or `hf.HFTokenizer`) where text is
involved.

The rest of the file, top to bottom:
    1. text prompts      extraction_prompt, qa_prompt, read_twice, cut_around (the 950-token budget)
    2. token prompts     jrt_tokens, jrt_examples (JR-p for data.py's synthetic tasks)
    3. harness           greedy, contains, error_mode, evaluate, results_table, accuracy (teacher-forced)
    4. Table 1 tasks     SWDE, FDA, SQuAD, NQ, TriviaQA, Drop from the hazyresearch data sets on the hub,
                         prompted as the official task code does (official_prompt, official_cut)
    5. CLI               python prompt.py --ckpt out/ckpt.pt --task mqar
"""
import argparse
import bisect
import json
import os
import re
import sys

import torch

import data
import hf
from hf import HFLM, HFTokenizer  # noqa: F401  (their home is hf.py; imported here for `from prompt import HFLM`)
from checkpoint import load_checkpoint
from model import Model, ModelLM, left_pad, resolve_device  # noqa: F401  (ModelLM, left_pad: idem)


# ----------------------------------------------------------------------------- 1. text prompts (JRT paper)

BUDGET = 950      # documents are cut to this many tokens around the answer, as in the JRT paper
MAX_NEW = 48      # greedy decoding stops at a newline or after this many tokens (JRT paper)


def _join(*parts):
    """Join with single spaces, dropping empty parts: an empty question leaves no stray space."""
    return " ".join(p for p in parts if p)


def _check_repeats(repeats):
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1 (1: the default prompt, 2: JRT-Prompt); got {repeats!r}")


def _check_text(fn, required=(), optional=()):
    """Builders take strings: the required ones non-empty, the optional ones possibly empty, never None."""
    for name, value in required:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{fn}: {name} must be a non-empty string; got {value!r}")
    for name, value in optional:
        if not isinstance(value, str):
            raise ValueError(f"{fn}: {name} must be a string (empty allowed); got {value!r}")


def extraction_prompt(doc, key, repeats=1):
    """Information extraction (SWDE, FDA). repeats=1: `{doc} {key}:`; repeats=2 (JRT-Prompt):
    `Information about {key}. {doc}\\n{doc} {key}:`; JR-p puts p copies of doc between, joined by newlines.
    The document is used as given (the official harness also strips a trailing "." and capitalises the
    key; we leave cleaning to the caller so the formats stay exactly the paper's table)."""
    _check_repeats(repeats)
    _check_text("extraction_prompt", required=(("doc", doc), ("key", key)))
    if repeats == 1:
        return f"{doc} {key}:"
    return f"Information about {key}. " + "\n".join([doc] * repeats) + f" {key}:"


def qa_prompt(context, cloze, question="", repeats=1):
    """Question answering (NQ, TriviaQA, Drop). repeats=1: `{context} {cloze}` (the question is not
    shown: the cloze is the question rewritten as a sentence to complete); repeats=2 (JRT-Prompt):
    `{question} {context}\\n{context} {cloze}`. An empty question or cloze leaves no stray space."""
    _check_repeats(repeats)
    _check_text("qa_prompt", required=(("context", context),), optional=(("cloze", cloze), ("question", question)))
    if repeats == 1:
        return _join(context, cloze)
    return _join(question, "\n".join([context] * repeats), cloze)


def read_twice(context, question, repeats=2):
    """The generic form of JRT-Prompt: (context, question) shown `repeats` times, one per line:
    `{context} {question}\\n{context} {question}`. The token-level `jrt_tokens` is the same layout."""
    _check_repeats(repeats)
    _check_text("read_twice", required=(("context", context),), optional=(("question", question),))
    return "\n".join([_join(context, question)] * repeats)


def cut_around(doc, answer, tokenizer, budget=BUDGET):
    """A document longer than `budget` tokens -> the `budget` tokens centred on the answer's first
    (case-insensitive) occurrence, clamped to the document's ends (JRT paper: 950 tokens around the answer).
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
    """The prompt of one text example (a dict, see `evaluate`) with its document cut to the budget; a Table 1
    example of the official style gets the official cut and strings (`official_text_prompt`)."""
    if ex.get("kind") == "official":
        return official_text_prompt(ex, repeats, tokenizer, budget)
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
    for name, ids in (("context", context), ("question", question)):
        if isinstance(ids, (str, bytes)) or not all(isinstance(t, int) for t in ids):
            raise ValueError(f"jrt_tokens: {name} must be a list of token ids (ints); got {str(ids)[:40]!r} "
                             "(for text, use read_twice or the prompt builders)")
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
    """Ids whose text holds a newline: generation stops at any of them (JRT paper: stop at newline)."""
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
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected an int >= 1")
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
        logits, cache = lm.prefill(idx, pad_mask=pad if bool(pad.any()) else None)
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
    if "answers" not in ex and "answer" not in ex:
        raise ValueError(f"an example needs its gold answers (field 'answers': a string or a list of strings); "
                         f"it has {sorted(ex)}")
    a = ex["answers"] if "answers" in ex else ex["answer"]
    a = [a] if isinstance(a, str) else list(a) if isinstance(a, (list, tuple)) else [a]
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
    """Zero-shot evaluation of text examples in each prompt format (JRT paper: greedy, stop at newline or
    48 tokens, metric "contains").

    examples: dicts with "task" (a name), "kind" ("extraction" or "qa"), "context", "answers" (a string
    or a list of accepted strings), and "key" (extraction) or "cloze" and optionally "question" (qa); or
    Table 1 examples of kind "official" (`table1_example`), which carry their data set row.
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


# ----------------------------------------------------------------------------- 4. Table 1 tasks (JRT paper, Table 1)
# The paper's six recall-intensive tasks, as the hazyresearch data sets store them. Two styles of prompt:
#   official  the strings of the official task code (the lm-eval-harness fork in the JRT repository,
#             lm_eval/tasks/based_*/task.py, `doc_to_text` of each task and of its "twice" variant), byte for
#             byte, quirks included, after the official cut (`official_cut`). The paper's numbers used these.
#   clean     the same rows through `extraction_prompt` / `qa_prompt`: the paper's Table-of-formats strings,
#             without the quirks (FDA's ". ." where a trailing key was removed, SQuAD's space before "\n").

QA_FIELDS = ("context", "question", "orig_question", "answers")   # question: the cloze; orig_question: the question
TABLE1 = {  # task -> (data set on the hub, its config name, split, the fields its official prompt reads)
    "swde": ("hazyresearch/based-swde-v2", "default", "validation", ("text", "key", "value")),
    "fda": ("hazyresearch/based-fda", "default", "validation", ("text", "key", "value")),
    "squad": ("hazyresearch/based-squad", "default", "validation", ("text", "context", "question", "value")),
    "nq": ("hazyresearch/based_nq_1024", None, "validation", QA_FIELDS),    # Table 1 uses the 1024-token NQ
    "triviaqa": ("hazyresearch/based_triviaqa", None, "validation", QA_FIELDS),
    "drop": ("hazyresearch/based_drop", None, "validation", QA_FIELDS),
}
STYLES = ("official", "clean")
SUMMARY = "Summary of information above..."   # SWDE's text: the page, this marker, then a summary
# The JRT paper gives its Table 1 averages over the six tasks (default -> JRT-Prompt) for these models only;
# no per-task numbers are quoted here.
PAPER_AVERAGE = {"mamba2-1.3b": (46.7, 55.6), "based-1b-50b": (40.3, 51.8), "mamba-130m": (24.7, 36.5)}


def _drop_suffix(text, suffix):
    """Remove `suffix` from the end of `text` as often as it is there, ignoring case (the official loop)."""
    while suffix and text.lower().endswith(suffix.lower()):
        text = text[:-len(suffix)]
    return text


def _upper_first(key):
    return key[0].upper() + key[1:]


def official_prompt(task, row, repeats=1):
    """The prompt the official task code builds from one data set row: repeats=1 is the task's `doc_to_text`,
    repeats=2 its "twice" variant (JRT-Prompt). Every strip below is the official one, in its order: they
    differ between the default and the twice variant, and between tasks (e.g. NQ's default removes the cloze
    from the end of the context once and case-sensitively, its twice variant as often as it is there and
    ignoring case). The row is checked by `table1_example`; the official cut (`official_cut`) comes first."""
    if repeats not in (1, 2):
        raise ValueError(f"the official Table 1 prompts have two formats, default (1) and jrt (2); "
                         f"got {repeats!r}")
    twice = repeats == 2
    if task in ("swde", "fda"):
        text, key = row["text"], row["key"]
        if task == "swde":
            text = text.split(SUMMARY)[0]
        text = _drop_suffix(text, key + ":")
        if task == "fda":           # ".strip('.')" after removing " key:" leaves "... . " alone: FDA's ". ."
            text = text.strip("\n").strip(".")
            out = text if text.endswith(".") else text + "."
        elif twice:
            out = text.strip("\n").strip(".").strip()
            out = out if out.endswith(".") else out + "."
        else:
            out = text.strip().strip(".") + "."
        question = _upper_first(key) + ":"
        if not twice:
            return out + " " + question
        return f"Information about {question.strip(':')}. {out}\n{out} {question}"
    if task == "squad":             # text: the passage and its cloze; context: the passage, "Question: ..."
        if not twice:
            return row["text"].strip()
        return row["question"] + " " + row["context"].split("Question:")[0] + "\n" + row["text"].strip()
    context, cloze = row["context"].strip(), row["question"].strip()      # NQ, TriviaQA, Drop
    if task == "triviaqa":
        context = re.sub(r"\[PAR\]|\[DOC\]|\[TLE\]", "", context)
    if task == "nq" and not twice:
        context = context[:-len(cloze)] if context.endswith(cloze) else context
    else:
        context = _drop_suffix(context, cloze)
    if not twice:
        return context.strip().strip(".") + ". " + cloze
    out = context.strip().strip(".").strip() + "."
    out = out + "\n" + out + " " + cloze
    intro = row["orig_question"] if task == "triviaqa" else row["orig_question"].strip(":")
    return intro + " " + out


def official_answer_fields(task):
    """The fields whose first match places the official cut (SQuAD: the answer; else key and answer), as the
    official launcher for the released Hazy models passes them (its launcher for Hugging Face models leaves
    key and answer for SQuAD too). The official runs read them from NQ, TriviaQA and Drop rows as well."""
    return ("value",) if task == "squad" else ("key", "value")


def official_cut(text, answers, tokenizer, budget=BUDGET):
    """The official harness's cut of a document (`truncate_context`, with its Table 1 settings: context
    length 1000 minus 50 for the answer = 950 tokens). The text is stripped and tokenised; the earliest
    case-insensitive match of any of `answers` sits at token a = len(tokens of the text before it); tokens
    from a - budget/2 are kept, budget of them when the start is clamped at 0, fewer when the end runs out
    (the window is not moved back). A document shorter than the budget is cut too when its answer lies
    past budget/2 tokens. Without a match, a is taken from text[:-1], as the official code does, which
    keeps the last budget/2 tokens."""
    text = text.strip()
    ids = tokenizer.encode_ordinary(text)
    pos = -1
    for a in answers:
        found = re.search(re.escape(a), text, re.IGNORECASE)
        if found and (pos == -1 or found.start() < pos):
            pos = found.start()
    at = len(tokenizer.encode_ordinary(text[:pos]))
    start = max(0, at - budget // 2)
    end = min(len(ids), at + budget - (at - start))
    return tokenizer.decode(ids[start:end])


def _sentence(text):  # "... text" -> "... text." (the clean style ends every context with one period)
    return text.strip().strip(".").strip() + "."


def clean_example(task, row, where=""):
    """One row -> an example for `extraction_prompt` / `qa_prompt` (the clean style): the same fields and
    cleaning as the official code, without its stray spaces and doubled periods."""
    if task in ("swde", "fda"):     # "{doc}. {Key}:"; SWDE's text may carry a summary after the doc
        key = row["key"]
        doc = _drop_suffix(row["text"].split(SUMMARY)[0].strip(), key + ":")
        return {"task": task, "kind": "extraction", "context": _sentence(doc), "key": _upper_first(key),
                "answers": [row["value"]]}
    if task == "squad":             # text = the passage, then the question as a cloze
        passage, text = row["context"].split("Question:")[0].strip(), row["text"].strip()
        if not text.startswith(passage):
            raise ValueError(f"squad row{where}: its text does not start with its passage (the context "
                             "before 'Question:'), so --style clean cannot split it into context and cloze")
        return {"task": task, "kind": "qa", "context": passage, "cloze": text[len(passage):].strip(),
                "question": row["question"].strip(), "answers": [row["value"]]}
    context = row["context"]        # NQ, TriviaQA, Drop: "question" is the cloze, "orig_question" the q.
    if task == "triviaqa":
        context = re.sub(r"\[PAR\]|\[DOC\]|\[TLE\]", "", context)
    cloze = row["question"].strip()
    return {"task": task, "kind": "qa", "context": _sentence(_drop_suffix(context.strip(), cloze)),
            "cloze": cloze, "question": row["orig_question"].strip().strip(":"), "answers": row["answers"]}


def table1_example(task, row, where="", style="official"):
    """One data set row (a dict in the data set's own schema) -> an example for `evaluate`, or None for a row
    the official harness skips (a gold answer or key of at most one character: its cut returns no request).
    Rows the official code would crash on (a missing or non-string field, an empty key, an SWDE text without
    its summary marker) or loop on forever (an empty cloze) are refused in one line."""
    if style not in STYLES:
        raise ValueError(f"--style {style!r}: expected one of {', '.join(STYLES)}")
    fields = TABLE1[task][3]
    for f in fields:
        if f not in row:
            raise ValueError(f"{task} row{where}: missing field {f!r} (a {task} row has "
                             f"{', '.join(fields)}); it has {sorted(row)}")
        answers_ok = isinstance(row[f], list) and row[f] and all(isinstance(s, str) for s in row[f])
        if f == "answers" and not answers_ok:
            raise ValueError(f"{task} row{where}: field 'answers' must be a non-empty list of strings; "
                             f"got {row[f]!r:.60}")
        if f != "answers" and not isinstance(row[f], str):
            raise ValueError(f"{task} row{where}: field {f!r} must be a string; got {row[f]!r:.60}")
    if task in ("swde", "fda") and not row["key"]:
        raise ValueError(f"{task} row{where}: field 'key' is empty (the prompt ends with the key)")
    if task == "swde" and row["text"].count(SUMMARY) != 1:
        raise ValueError(f"swde row{where}: text must hold {SUMMARY!r} once (the official task splits the "
                         f"page from its summary there); it holds it {row['text'].count(SUMMARY)} times")
    if task in ("nq", "triviaqa", "drop") and not row["question"].strip():
        raise ValueError(f"{task} row{where}: field 'question' (the cloze) is empty")
    if style == "clean":
        return clean_example(task, row, where)
    for f in official_answer_fields(task):      # NQ, TriviaQA and Drop rows: where they have the fields
        a = row.get(f)
        a = a[0] if isinstance(a, list) and a else a
        if isinstance(a, str) and len(a) <= 1:
            return None
    answers = row["answers"] if "answers" in fields else [row["value"]]
    return {"task": task, "kind": "official", "row": dict(row), "answers": answers}


def official_text_prompt(ex, repeats=1, tokenizer=None, budget=BUDGET):
    """The official prompt of a Table 1 example: the official cut applied to the `text` field (the field the
    official Table 1 runs cut; NQ, TriviaQA and Drop build their prompt from `context`, which it leaves
    whole), then `official_prompt`."""
    row, task = ex["row"], ex["task"]
    if tokenizer is not None and budget and task in ("swde", "fda", "squad"):
        # SWDE: the cut sees the whole text, summary included. The official loader splits the summary off,
        # but into rows that its second pass over the data set reads afresh, so the split is lost; the
        # prompt then drops what follows the marker, if the window still holds all of it.
        answers = [row[f] for f in official_answer_fields(task)]
        row = dict(row, text=official_cut(row["text"], answers, tokenizer, budget))
    return official_prompt(task, row, repeats)


def load_table1(task, n=None, style="official"):
    """The validation rows of one Table 1 task as examples (downloads the data set once; needs `datasets`).
    n counts the rows read; rows the official harness skips are left out of them."""
    path, name, split, _ = TABLE1[task]
    rows = hf.load_dataset(path, name, split)
    n = len(rows) if n is None else min(n, len(rows))
    examples = [table1_example(task, dict(rows[i]), f" {i}", style) for i in range(n)]
    return [ex for ex in examples if ex is not None]


def table1(summary, model_name=""):
    """Table 1's layout: a row per task with default and JRT-Prompt accuracy ("contains", %) and their
    average over the tasks, the paper's average beside ours when it reports this model (PAPER_AVERAGE)."""
    tasks = list(dict.fromkeys(t for t, _ in summary))
    paper = PAPER_AVERAGE.get(os.path.basename(model_name.rstrip("/")).lower().removesuffix("-hf"))
    lines = ["| task | n | default | JRT-Prompt |", "|---|---|---|---|"]
    for t in tasks:
        lines.append(f"| {t} | {summary[(t, 'default')]['n']} | {100 * summary[(t, 'default')]['accuracy']:.1f} | "
                     f"{100 * summary[(t, 'jrt')]['accuracy']:.1f} |")
    avg = [100 * sum(summary[(t, f)]["accuracy"] for t in tasks) / len(tasks) for f in ("default", "jrt")]
    cells = [f"{v:.1f}" + (f" (paper {p})" if paper and len(tasks) == len(TABLE1) else "") for v, p in
             zip(avg, paper or (None, None))]
    lines.append(f"| average | | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


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


def read_utf8(path):
    """A text file's contents; a file that is not UTF-8 is one ValueError line naming it and the line."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line}: not UTF-8 text (byte "
                         f"0x{raw[e.start]:02x} at offset {e.start}); save it as UTF-8") from None


def check_out(path):
    """--out, checked before any work: its folder is created now, so a long run cannot fail at the end."""
    if os.path.isdir(path):
        raise ValueError(f"--out {path}: is a folder; give a file name such as {os.path.join(path, 'x.md')}")
    folder = os.path.dirname(path) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {path}: cannot create its folder {folder} ({e.strerror})") from None
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"--out {path}: not writable")


def jsonl_objects(path, choices):
    """(line number, JSON object) of each non-empty line of a .jsonl file. A missing file, bad JSON, a line
    that is not an object, or no lines at all is one ValueError line; `choices` (what --task takes) goes
    into the missing-file message."""
    if not os.path.isfile(path):
        raise ValueError(f"--task {path}: no such file; use {choices}")
    objects = []
    for i, line in enumerate(read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {i}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path} line {i}: expected a JSON object, got {type(obj).__name__}")
        objects.append((i, obj))
    if not objects:
        raise ValueError(f"{path}: no rows (one JSON object per line)")
    return objects


def read_jsonl(path):
    """A .jsonl file of text examples (see `evaluate` for the fields) -> the examples, each checked."""
    examples = []
    for i, ex in jsonl_objects(path, f"mqar, sets, a Table 1 task ({', '.join(TABLE1)}, table1) or a .jsonl file"):
        need = {"extraction": ("context", "key"), "qa": ("context", "cloze")}.get(ex.get("kind"))
        if need is None:
            raise ValueError(f"{path} line {i}: field 'kind' must be 'extraction' or 'qa'; got {ex.get('kind')!r}")
        for f in need + ("answers",):
            if f not in ex and not (f == "answers" and "answer" in ex):
                raise ValueError(f"{path} line {i}: missing field {f!r} (an example of kind {ex['kind']!r} has "
                                 f"{', '.join(need)}, answers{', and optionally question' * (ex['kind'] == 'qa')})")
        _answers(ex)                                                 # non-empty strings
        examples.append(ex)
    return examples


def _check_kind(task, cfg, model):
    """A train.py checkpoint records the task it was trained on: refuse a task it cannot do."""
    need = {"mqar": "mqar", "sets": "disjoint_sets"}.get(task, "text")
    trained = cfg.get("task")
    if trained is not None and trained != need:
        raise ValueError(f"--task {task} needs a model trained on {need} (train.py --task={need}); this checkpoint "
                         f"was trained on task={trained!r}")
    if need == "disjoint_sets" and model.vocab_size < data.SD_VOCAB:
        raise ValueError(f"--task sets needs a model whose vocabulary holds the {data.SD_VOCAB} set-disjointness ids; "
                         f"this checkpoint's vocab_size is {model.vocab_size}")


def run(a):
    formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    if not formats:
        raise ValueError(f"--formats {a.formats!r}: name at least one format (default, jrt, jr3, ...)")
    for f in formats:
        _repeats_of(f)                                              # a bad name fails here, with the allowed ones
    for name, low in (("n", 1), ("batch_size", 1), ("budget", 0)):
        if getattr(a, name) is not None and getattr(a, name) < low:
            raise ValueError(f"--{name}={getattr(a, name)}: expected an int >= {low}")
    if sum(map(bool, (a.ckpt, a.hf, a.official))) != 1 or not a.task:
        raise ValueError("give --task and exactly one of --ckpt, --hf or --official")
    if a.official_pads and a.hf:
        raise ValueError("--official_pads is the released JRT-RNN code's padding: it applies to our Model "
                         "(--official or --ckpt), not to --hf")
    device = resolve_device(a.device)
    synthetic = a.task in ("mqar", "sets")
    table1_tasks = list(TABLE1) if a.task == "table1" else [t for t in a.task.split(",") if t in TABLE1]
    if a.style is not None and (not table1_tasks or a.style not in STYLES):
        raise ValueError(f"--style {a.style}: " + (f"expected one of {', '.join(STYLES)}" if table1_tasks else
                         f"applies to the Table 1 tasks ({', '.join(TABLE1)}, table1) only"))
    if synthetic and not a.ckpt:
        raise ValueError(f"--task {a.task} needs --ckpt (a model trained on that task's token ids)")
    partly = table1_tasks and a.task != "table1" and len(table1_tasks) != len(a.task.split(","))
    if partly or (table1_tasks and formats != ["default", "jrt"]):
        raise ValueError(f"--task {a.task}: Table 1 tasks are {', '.join(TABLE1)} (comma-separated) or table1, "
                         "with the formats default,jrt")
    examples = None if synthetic or table1_tasks else read_jsonl(a.task)   # bad rows fail before a model loads
    model, cfg = None, {}
    if a.hf:
        lm, tok = hf.load(a.hf, device)
    else:
        model, cfg = (load_checkpoint(a.ckpt, device) if a.ckpt else (Model.from_pretrained(a.official, device), {}))
        lm = ModelLM(model, official_pads=a.official_pads)
        if a.ckpt:
            _check_kind(a.task, cfg, model)
    if synthetic:
        n = a.n or 500
        if a.task == "mqar":
            P = cfg.get("seq_len", 64) // (2 if cfg.get("read_twice") else 1)    # one pass
            ex = data.mqar(n, vocab_size=cfg.get("vocab_size", 128), seq_len=P,
                           num_pairs=cfg.get("num_pairs", 8), context_len=cfg.get("context_len") or None,
                           seed=cfg.get("data_seed", 0), split="test")
        else:  # train.py's default layout is a fresh random split of the ids per example (halves=False)
            ex = data.disjoint_sets(n, halves=cfg.get("sd_halves", False), seed=cfg.get("data_seed", 0), split="test")
        return synthetic_table(model, ex, formats)
    if model is not None:
        try:
            tok = data.get_tokenizer(cfg.get("tokenizer", "gpt2"))
        except RuntimeError as e:                                    # gpt2's files cannot be fetched offline
            raise ValueError(str(e)) from None
        if tok.n_vocab > model.vocab_size:
            raise ValueError(f"the {cfg.get('tokenizer', 'gpt2')} tokenizer has {tok.n_vocab} ids but the model's "
                             f"vocab_size is {model.vocab_size}: --task {a.task} needs a text model")
    if table1_tasks:
        examples = [ex for t in table1_tasks for ex in load_table1(t, a.n, a.style or "official")]
    summary, _ = evaluate(lm, tok, examples, formats, a.batch_size, budget=a.budget, device=device)
    return table1(summary, a.hf or a.official or "") if table1_tasks else results_table(summary)


def main(argv=None):
    ap = argparse.ArgumentParser(description="JRT-Prompt: default vs read-twice accuracy of a model",
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ckpt", help="a train.py checkpoint, e.g. out/ckpt.pt")
    ap.add_argument("--hf", help="a Hugging Face causal LM name or path (needs transformers), e.g. "
                                 "state-spaces/mamba-130m-hf")
    ap.add_argument("--official", help="a released JRT-RNN / Based checkpoint, e.g. hazyresearch/JRT-360M-30B\n"
                                       "(a hub name, needs huggingface_hub; or a local directory with config.json)")
    ap.add_argument("--official_pads", action="store_true", help="decode our Model with the released code's padding "
                    "(left-pad to M = 1024 with token 220,\npads count in PLA's sums) to match its numbers; "
                    "default: exact padding")
    ap.add_argument("--task", help="mqar | sets (synthetic, settings from the checkpoint's training config) |\n"
                                   f"{' | '.join(TABLE1)} (comma-separated) | table1 (all six; needs datasets) |\n"
                                   "a .jsonl file of text examples (see `evaluate` for the fields)")
    ap.add_argument("--formats", default="default,jrt", help="comma-separated: default, jrt, jr3, ...")
    ap.add_argument("--n", type=int, default=None, help="synthetic: test examples per slice (default 500); "
                                                         "Table 1: at most n rows per task (default all)")
    ap.add_argument("--batch_size", type=int, default=16, help="text: prompts decoded together (the paper: 32)")
    ap.add_argument("--budget", type=int, default=BUDGET, help="text: cut documents to this many tokens "
                    "(0: no cut);\nTable 1 (official): the official cut, 950 tokens from 475 before the "
                    "answer")
    ap.add_argument("--style", default=None, help="Table 1 prompts: official (default; the official task "
                    "code's strings,\nwhich the paper's numbers used) | clean (the same without its stray "
                    "spaces)")
    ap.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N | mps")
    ap.add_argument("--out", help="also write the table (markdown) to this file (its folder is created)")
    a = ap.parse_args(argv)
    try:
        if a.out:
            check_out(a.out)
        table = run(a)
    except (ValueError, ImportError, FileNotFoundError) as e:       # a user's mistake: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(table)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(table + "\n")
    return table


if __name__ == "__main__":
    main()
