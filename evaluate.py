"""
The harnesses that score JRT-Prompt (prompt.py) and OPRM (chunked.py), and their command line:

    python evaluate.py prompt --ckpt out/ckpt.pt --task mqar --formats default,jrt,jr3  # teacher-forced
    python evaluate.py prompt --hf state-spaces/mamba-130m-hf --task table1             # JRT paper, Table 1
    python evaluate.py oprm --ckpt out/ckpt.pt --task mqar_long          # full context vs OPRM, more pairs
    python evaluate.py oprm --hf state-spaces/mamba-130m-hf --task longbench:hotpotqa    # OPRM on LongBench

Models are read through lm.py's interface: `lm.ModelLM`, `hf.OfficialLM` (the released code's padding) or
`hf.HFLM` (a Hugging Face causal LM).
"""
import argparse
import json
import os
import re
import string
import sys
import time
from collections import Counter

import torch

import data
import hf
from checkpoint import load_checkpoint
from chunked import KINDS, LONGBENCH, select_chunk, speculative_prefill, text_rows
from lm import ModelLM, greedy, resolve_device
from prompt import (BUDGET, STYLES, TABLE1, answers_of, jrt_examples, load_table1, repeats_of, table1,
                    text_prompt)

MAX_NEW = 48      # greedy decoding stops at a newline or after this many tokens (JRT paper)


# ----------------------------------------------------------------------------- 1. JRT-Prompt on text

def newline_tokens(tokenizer):
    """Ids whose text holds a newline: generation stops at any of them (JRT paper: stop at newline)."""
    return {i for i in range(tokenizer.n_vocab) if "\n" in _decode(tokenizer, [i])}


def _decode(tokenizer, ids):
    V = tokenizer.n_vocab          # a model's vocabulary can be padded past the tokenizer's (50264 > 50257)
    return tokenizer.decode([i for i in ids if i < V])


def contains(output, answers):
    """The paper's metric: some gold answer is a case-insensitive substring of the output. Answers are
    stripped of surrounding whitespace (the official harness does not strip; " Paris" would then miss
    "Paris." at the start of an output)."""
    answers = [answers] if isinstance(answers, str) else answers
    return any(re.search(re.escape(a.strip()), output, re.IGNORECASE) is not None
               for a in answers if a.strip())


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
        p = repeats_of(fmt)
        prompts = [text_prompt(ex, p, tokenizer, budget) for ex in examples]
        outs = greedy(lm, [tokenizer.encode_ordinary(s) for s in prompts], max_new_tokens, stop, batch_size,
                      device=device)
        for ex, prompt, ids in zip(examples, prompts, outs):
            text = _decode(tokenizer, ids)
            mode = error_mode(text, answers_of(ex), prompt)
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


# ----------------------------------------------------------------------------- 2. synthetic tasks

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
        x, y = b.x.to(dev), b.y.to(dev)
        logits, _ = model(x, y, b.prefix_len.to(dev), pad, scored_only=True)   # (n, V): scored positions
        group = b.group[:, None].expand_as(b.y)[b.y != -100]             # (n,) the group of each answer
        hit.index_add_(0, group, (logits.argmax(-1) == y[y != -100]).float().cpu())
        tot.index_add_(0, group, torch.ones(len(group)))
    per = {g: (hit[i] / tot[i]).item() for i, g in enumerate(ex.groups) if tot[i] > 0}
    return per, (hit.sum() / tot.sum()).item()


def synthetic_table(model, ex, formats):
    """Teacher-forced accuracy of one test set shown in each format (default = once, jrt = twice, jr<p>)."""
    cells = {g: [] for g in ex.groups}
    for f in formats:
        p = repeats_of(f)
        per, _ = accuracy(model, jrt_examples(ex, p) if p > 1 else ex)     # groups in order, renamed "... x2"
        for g, acc in zip(ex.groups, per.values()):
            cells[g].append(f"{100 * acc:.1f}")
    lines = ["| task | n | " + " | ".join(f"{f} acc" for f in formats) + " |",
             "|---" * (2 + len(formats)) + "|"]
    for i, g in enumerate(ex.groups):
        lines.append(f"| {g} | {int((ex.group == i).sum())} | " + " | ".join(cells[g]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 3. OPRM on long MQAR

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
    share = lambda counts: {r: v / n for r, v in counts.items()}  # noqa: E731
    return {"full": hits["full"] / n, **{L: {**share(hits[L]), "holds": share(holds[L])} for L in chunk_lens}}


def accuracy_rows(model, cfg, pairs, chunk_lens, n, seed=0):
    """Full context vs OPRM for a model trained on MQAR, one record per (pairs, L) as each is measured:
    {"model", "pairs", "L", "full", every rule of RULES, "oracle", "holds": {rule: share}, "seconds"}; cfg
    is the model's training config (vocab_size, seq_len, context_len, num_pairs, model)."""
    C = cfg["context_len"] or 2 * cfg["num_pairs"]
    for k in pairs:
        t0 = time.time()
        acc = mqar_long(model, num_pairs=k, context_len=C, seq_len=cfg["seq_len"],
                        vocab_size=cfg["vocab_size"], chunk_lens=chunk_lens, n=n, seed=seed)
        for L in chunk_lens:
            yield dict(model=cfg["model"], pairs=k, L=L, full=acc["full"], **acc[L], seconds=time.time() - t0)


def markdown_row(r):
    """One record of accuracy_rows as a row under ACC_HEADER: accuracy, and in brackets how often the
    chosen chunk held the key."""
    cells = ([f"{r['full']:.3f}"] + [f"{r[k]:.3f} ({r['holds'][k]:.2f})" for k in RULES]
             + [f"{r['oracle']:.3f}"])
    return f"| {r['model']} | {r['pairs']} | {r['L']} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |"


ACC_HEADER = ("| model | pairs | L | full context | OPRM entropy | OPRM entropy + IDK | "
              "OPRM entropy over non-IDK | OPRM likelihood | oracle chunk | eval s |\n"
              "|---|---|---|---|---|---|---|---|---|---|")


# ----------------------------------------------------------------------------- 4. OPRM on long texts

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


def text_table(lm, tokenizer, rows, name, chunk_lens, **kw):
    """Mean token F1 (%) of full-context inference and of OPRM at each chunk length L: a row per L."""
    full, oprm = 0.0, dict.fromkeys(chunk_lens, 0.0)
    for row, a_full, a_oprm in text_rows(lm, tokenizer, rows, chunk_lens=chunk_lens, **kw):
        full += f1_score(a_full, row["answers"])
        for L in chunk_lens:
            oprm[L] += f1_score(a_oprm[L], row["answers"])
    n = len(rows)
    return "\n".join(f"| {name} | {n} | {L} | {100 * full / n:.1f} | {100 * oprm[L] / n:.1f} |"
                     for L in chunk_lens)


TEXT_HEADER = "| task | n | L | full context F1 | OPRM F1 |\n|---|---|---|---|---|"


# ----------------------------------------------------------------------------- 5. command line

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
    choices = f"mqar, sets, a Table 1 task ({', '.join(TABLE1)}, table1) or a .jsonl file"
    for i, ex in jsonl_objects(path, choices):
        need = {"extraction": ("context", "key"), "qa": ("context", "cloze")}.get(ex.get("kind"))
        if need is None:
            raise ValueError(f"{path} line {i}: field 'kind' must be 'extraction' or 'qa'; "
                             f"got {ex.get('kind')!r}")
        for f in need + ("answers",):
            if f not in ex and not (f == "answers" and "answer" in ex):
                optional = ", and optionally question" * (ex["kind"] == "qa")
                raise ValueError(f"{path} line {i}: missing field {f!r} (an example of kind {ex['kind']!r} "
                                 f"has {', '.join(need)}, answers{optional})")
        answers_of(ex)                                                 # non-empty strings
        examples.append(ex)
    return examples


def read_rows(path):
    """A .jsonl file of long-context rows: context, input (the question), answers (a list of strings), and
    optionally kind (qa, summary, fewshot, synthetic, code; default qa) and prompt (a template)."""
    rows = []
    for i, row in jsonl_objects(path, "mqar_long, longbench:SET or a .jsonl file"):
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


def _check_kind(task, cfg, model):
    """A train.py checkpoint records the task it was trained on: refuse a task it cannot do."""
    need = {"mqar": "mqar", "sets": "disjoint_sets"}.get(task, "text")
    trained = cfg.get("task")
    if trained is not None and trained != need:
        raise ValueError(f"--task {task} needs a model trained on {need} (train.py --task={need}); "
                         f"this checkpoint was trained on task={trained!r}")
    if need == "disjoint_sets" and model.vocab_size < data.SD_VOCAB:
        raise ValueError(f"--task sets needs a model whose vocabulary holds the {data.SD_VOCAB} "
                         f"set-disjointness ids; this checkpoint's vocab_size is {model.vocab_size}")


OVERFLOW_RECIPE = ("a checkpoint that overflows: python experiments.py overflow --quick --models based "
                   "(tiny Based trained on MQAR with 1 to 16 pairs in contexts of up to 32 tokens, saved to "
                   "out/oprm-quick/based_d32.pt), then python evaluate.py oprm --ckpt "
                   "out/oprm-quick/based_d32.pt --task mqar_long --chunk_len 8 (4, 8 and 16 pairs in 32 "
                   "tokens)")


def default_pairs(n, context_len, vocab_size):
    """The pair counts mqar_long tests by default: from a quarter of the n pairs the model was trained with
    (at most) to four times as many, as far as the context (2 tokens a pair) and the vocabulary (keys in
    [1, V/2), values in [V/2, V-1)) leave room."""
    room = min(context_len // 2, vocab_size // 2 - 1, vocab_size - 1 - vocab_size // 2)
    return sorted({k for k in (n // 4, n // 2, n, n * 3 // 2, 2 * n, 4 * n) if 1 <= k <= room})


def _mqar_config(path, cfg):
    """The training config of an MQAR checkpoint, or a one-line error saying what --task mqar_long needs."""
    if cfg.get("task", "mqar") != "mqar" or not all(k in cfg for k in ("num_pairs", "seq_len", "vocab_size")):
        raise ValueError(f"--ckpt {path}: --task mqar_long needs a checkpoint trained on MQAR "
                         f"(train.py --task=mqar); this one was trained on task={cfg.get('task')!r}")
    return dict(cfg, context_len=cfg.get("context_len") or 0, model=cfg.get("model", os.path.basename(path)))


def run_prompt(a, say):
    """`python evaluate.py prompt ...`: one table of accuracy per prompt format."""
    formats = [f.strip() for f in a.formats.split(",") if f.strip()]
    if not formats:
        raise ValueError(f"--formats {a.formats!r}: name at least one format (default, jrt, jr3, ...)")
    for f in formats:
        repeats_of(f)                                       # a bad name fails here, with the allowed ones
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
        raise ValueError(f"--task {a.task}: Table 1 tasks are {', '.join(TABLE1)} (comma-separated) or "
                         "table1, with the formats default,jrt")
    examples = None if synthetic or table1_tasks else read_jsonl(a.task)   # bad rows fail before loading
    model, cfg = None, {}
    if a.hf:
        lm, tok = hf.load(a.hf, device)
    else:
        model, cfg = (load_checkpoint(a.ckpt, device) if a.ckpt
                      else (hf.from_pretrained(a.official, device), {}))
        lm = hf.OfficialLM(model) if a.official_pads else ModelLM(model)
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
            ex = data.disjoint_sets(n, halves=cfg.get("sd_halves", False), seed=cfg.get("data_seed", 0),
                                    split="test")
        return say(synthetic_table(model, ex, formats))
    if model is not None:
        try:
            tok = data.get_tokenizer(cfg.get("tokenizer", "gpt2"))
        except RuntimeError as e:                                    # gpt2's files cannot be fetched offline
            raise ValueError(str(e)) from None
        if tok.n_vocab > model.vocab_size:
            raise ValueError(f"the {cfg.get('tokenizer', 'gpt2')} tokenizer has {tok.n_vocab} ids but the "
                             f"model's vocab_size is {model.vocab_size}: --task {a.task} needs a text model")
    if table1_tasks:
        examples = [ex for t in table1_tasks for ex in load_table1(t, a.n, a.style or "official")]
    summary, _ = evaluate(lm, tok, examples, formats, a.batch_size, budget=a.budget, device=device)
    say(table1(summary, a.hf or a.official or "") if table1_tasks else results_table(summary))


def run_oprm(a, say):
    """`python evaluate.py oprm ...`: full context vs OPRM, printed row by row as each is measured."""
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    ints = lambda s: [int(v) for v in s.split(",") if v]
    for name in ("num_pairs", "chunk_len", "n", "max_batch_tokens", "max_new_tokens"):
        value = "" if getattr(a, name) is None else str(getattr(a, name))
        try:
            bad = any(v < 1 for v in ints(value))
        except ValueError:
            bad = True
        if bad:
            raise ValueError(f"--{name}={getattr(a, name)}: expected positive ints, comma-separated")
    if a.task == "mqar_long":
        if not a.ckpt or a.hf:
            raise ValueError("--task mqar_long needs --ckpt (train.py checkpoints, comma-separated; "
                             + OVERFLOW_RECIPE + ")")
        say(ACC_HEADER)
        for path in a.ckpt.split(","):
            model, cfg = load_checkpoint(path, device)
            cfg = _mqar_config(path, cfg)
            C = cfg["context_len"] or 2 * cfg["num_pairs"]
            pairs = ints(a.num_pairs) or default_pairs(cfg["num_pairs"], C, cfg["vocab_size"])
            for r in accuracy_rows(model, cfg, pairs, ints(a.chunk_len) or [C // 4], a.n or 200):
                say(markdown_row(r))
    else:  # text: a LongBench set or a .jsonl file, on a Hugging Face recurrent LM
        if not a.hf:
            raise ValueError(f"--task {a.task} needs --hf NAME (a Hugging Face recurrent LM, e.g. "
                             "state-spaces/mamba-130m-hf); --ckpt models take --task mqar_long")
        if a.task.startswith("longbench:"):
            name = a.task.split(":", 1)[1]
            if name not in LONGBENCH:
                raise ValueError(f"--task {a.task}: unknown LongBench set; the English sets are "
                                 f"{', '.join(LONGBENCH)}")
            kind, rows = LONGBENCH[name], None
        else:
            name, kind, rows = os.path.basename(a.task), None, read_rows(a.task)   # fail before loading
        template = read_templates(a.prompts, name) if a.prompts else None
        lm, tok = hf.load(a.hf, device, mode="cache")       # refuses a family that cannot keep pads out
        if rows is None:
            data_rows = hf.load_dataset("THUDM/LongBench", name, "test")
            rows = [dict(data_rows[i]) for i in range(min(a.n or len(data_rows), len(data_rows)))]
        say(TEXT_HEADER)
        say(text_table(lm, tok, rows, name, ints(a.chunk_len) or [2000], kind=kind, template=template,
                       max_new_tokens=a.max_new_tokens, max_batch_tokens=a.max_batch_tokens))


def main(argv=None):
    ap = argparse.ArgumentParser(description="The harnesses of JRT-Prompt (prompt) and OPRM (oprm)")
    sub = ap.add_subparsers(dest="harness", required=True)
    pr = sub.add_parser("prompt", formatter_class=argparse.RawTextHelpFormatter,
                        description="JRT-Prompt: default vs read-twice accuracy of a model")
    pr.add_argument("--ckpt", help="a train.py checkpoint, e.g. out/ckpt.pt")
    pr.add_argument("--hf", help="a Hugging Face causal LM name or path (needs transformers), e.g. "
                    "state-spaces/mamba-130m-hf")
    pr.add_argument("--official", help="a released JRT-RNN / Based checkpoint, e.g. "
                    "hazyresearch/JRT-360M-30B\n(a hub name, needs huggingface_hub; or a local directory "
                    "with config.json)")
    pr.add_argument("--official_pads", action="store_true", help="decode our Model with the released code's "
                    "padding (left-pad to M = 1024 with token 220,\npads count in PLA's sums) to match its "
                    "numbers; default: exact padding")
    pr.add_argument("--task", help="mqar | sets (synthetic, settings from the checkpoint's training config)"
                    " |\n"
                    f"{' | '.join(TABLE1)} (comma-separated) | table1 (all six; needs datasets) |\n"
                    "a .jsonl file of text examples (see `evaluate` for the fields)")
    pr.add_argument("--formats", default="default,jrt", help="comma-separated: default, jrt, jr3, ...")
    pr.add_argument("--n", type=int, default=None, help="synthetic: test examples per slice (default 500); "
                    "Table 1: at most n rows per task (default all)")
    pr.add_argument("--batch_size", type=int, default=16, help="text: prompts decoded together (the paper: "
                    "32)")
    pr.add_argument("--budget", type=int, default=BUDGET, help="text: cut documents to this many tokens "
                    "(0: no cut);\nTable 1 (official): the official cut, 950 tokens from 475 before the "
                    "answer")
    pr.add_argument("--style", default=None, help="Table 1 prompts: official (default; the official task "
                    "code's strings,\nwhich the paper's numbers used) | clean (the same without its stray "
                    "spaces)")
    op = sub.add_parser("oprm", epilog="Overflow on MQAR: " + OVERFLOW_RECIPE + ".",
                        description="OPRM: full context vs chunked inference (Ben-Kish et al. 2025); the "
                        "overflow experiment that trains its own models is `python experiments.py overflow`")
    op.add_argument("--task", default="mqar_long", help="mqar_long: test MQAR checkpoints with more pairs "
                    "than they were trained on; longbench:SET (e.g. longbench:hotpotqa; needs --hf and "
                    "datasets) or a .jsonl file of long-context rows (context, input, answers): token F1 of "
                    "full context vs OPRM")
    op.add_argument("--ckpt", default="", help="mqar_long: checkpoints, comma-separated")
    op.add_argument("--hf", default="", help="text tasks: a Hugging Face recurrent LM (Mamba, Falcon-Mamba, "
                    "Mamba-2)")
    op.add_argument("--prompts", default="", help="text tasks: a JSON file of set -> template with {context} "
                    "and {input} (LongBench's config/dataset2prompt.json); default: our own instruction per "
                    "kind of set")
    op.add_argument("--num_pairs", default="", help="mqar_long: pair counts; default n/4 to 4n for n "
                    "trained, as room allows")
    op.add_argument("--chunk_len", default="", help="L, comma-separated; default context_len // 4 "
                    "(mqar_long), 2000 (text; the paper sweeps 1000, 2000, 3000)")
    op.add_argument("--n", type=int, default=None, help="mqar_long: test examples per pair count (default "
                    "200); text: at most n rows (default all)")
    op.add_argument("--max_new_tokens", type=int, default=None, help="text: default 20 (QA), 500 "
                    "(summaries), 64 (code)")
    op.add_argument("--max_batch_tokens", type=int, default=120_000, help="tokens per prefill batch (paper "
                    "~120k)")
    op.add_argument("--threads", type=int, default=1, help="CPU threads; tiny models run fastest on one "
                    "(more threads only wait for each other, 10x slower on a busy CPU); 0 = torch's default")
    for parser in (pr, op):
        parser.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N "
                            "| mps")
        parser.add_argument("--out", help="also write what is printed to this file (its folder is created)")
    a = ap.parse_args(argv)
    lines = []

    def say(text):                                                   # print now, and keep for --out
        print(text, flush=True)
        lines.append(text)
    try:
        if a.out:
            check_out(a.out)
        (run_prompt if a.harness == "prompt" else run_oprm)(a, say)
    except (ValueError, ImportError, FileNotFoundError) as e:       # a user's mistake: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if a.out:
        with open(a.out, "w") as fh:
            fh.write("\n".join(lines) + "\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
