"""
JRT-Prompt: show the context twice before the question (Arora et al. 2024, arXiv 2407.05483).

A recurrent LM reads with a fixed-size state, so it must decide what to keep before it knows the
question. Showing (context, question, context, question) lets the second pass be read with the
question already in view: for set disjointness the state needed drops from Ω(size of the set seen
first) to Ω(min(|A|, |B|) / p) for p passes (JRT paper). No training, any model.

The file, top to bottom:
    1. text prompts      extraction_prompt, qa_prompt, read_twice, cut_around (the 950-token budget)
    2. token prompts     jrt_tokens, jrt_examples (JR-p for data.py's synthetic tasks)
    3. Table 1           the six recall-intensive tasks' rows (TABLE1, table1_example, load_table1) and the
                         official task code's prompts for them, byte for byte (official_prompt, official_cut)
The harness that scores these prompts (greedy decoding, "contains", MQAR shown p times) and its command
line are in evaluate.py; the synthetic experiments behind them (set order, MQAR read twice) in experiments.py.
"""
import bisect
import os
import re

import torch

import data
import hf


# ----------------------------------------------------------------------------- 1. text prompts (JRT paper)

BUDGET = 950      # documents are cut to this many tokens around the answer, as in the JRT paper


def _join(*parts):
    """Join with single spaces, dropping empty parts: an empty question leaves no stray space."""
    return " ".join(p for p in parts if p)


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
    _check_text("qa_prompt", required=(("context", context),),
                optional=(("cloze", cloze), ("question", question)))
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
        ctx = cut_around(ctx, answers_of(ex)[0], tokenizer, budget)
    if ex["kind"] == "extraction":
        return extraction_prompt(ctx, ex["key"], repeats)
    if ex["kind"] == "qa":
        return qa_prompt(ctx, ex.get("cloze", ""), ex.get("question", ""), repeats)
    raise ValueError(f"example kind must be 'extraction' or 'qa'; got {ex['kind']!r}")


def answers_of(ex):
    """The gold answers of a text example: a list of non-empty strings, or one ValueError line."""
    if "answers" not in ex and "answer" not in ex:
        raise ValueError(f"an example needs its gold answers (field 'answers': a string or a list of "
                         f"strings); it has {sorted(ex)}")
    a = ex["answers"] if "answers" in ex else ex["answer"]
    a = [a] if isinstance(a, str) else list(a) if isinstance(a, (list, tuple)) else [a]
    if not a or not all(isinstance(s, str) and s.strip() for s in a):
        raise ValueError(f"an example needs non-empty gold answer strings; got {a!r}")
    return a


# ----------------------------------------------------------------------------- 2. token prompts (synthetic)

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
        xr, yr = ex.x[r, T - L:], ex.y[r, T - L:]                    # (n, L): the real tokens, at the right
        x[r, T2 - repeats * L:] = xr.repeat(1, repeats)
        y[r, T2 - L:] = yr
        pad[r, T2 - repeats * L:] = False
        M[r] = (repeats - 1) * L + ex.prefix_len[r].clamp(max=L)
    groups = [g + f" x{repeats}" for g in ex.groups]
    return data.Examples(x, y, M, pad, ex.group.clone(), groups, ex.vocab_size)


FORMATS = {"default": 1, "jrt": 2}   # format name -> repeats; "jr3", "jr4", ... mean JR-p with p copies


def repeats_of(fmt):
    if fmt in FORMATS:
        return FORMATS[fmt]
    if re.fullmatch(r"jr\d+", fmt) and int(fmt[2:]) >= 1:
        return int(fmt[2:])
    raise ValueError(f"unknown prompt format {fmt!r}: use 'default', 'jrt' or 'jr<p>' (p copies, e.g. 'jr3')")


# ----------------------------------------------------------------------------- 3. Table 1 (JRT paper)
# The paper's six recall-intensive tasks (TABLE1), as the hazyresearch data sets store them, in two styles:
#   official  the strings of the official task code (the lm-eval-harness fork in the JRT repository,
#             lm_eval/tasks/based_*/task.py, `doc_to_text` of each task and of its "twice" variant), byte for
#             byte, quirks included, after the official cut (`official_cut`). The paper's numbers used these.
#   clean     the same rows through `extraction_prompt` / `qa_prompt` (clean_example): the paper's
#             Table-of-formats strings, without the quirks (FDA's ". ." where a trailing key was removed,
#             SQuAD's space before "\n").

SUMMARY = "Summary of information above..."   # SWDE's text: the page, this marker, then a summary


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


QA_FIELDS = ("context", "question", "orig_question", "answers")   # question: the cloze; orig_question: the q.
TABLE1 = {  # task -> (data set on the hub, its config name, split, the fields its official prompt reads)
    "swde": ("hazyresearch/based-swde-v2", "default", "validation", ("text", "key", "value")),
    "fda": ("hazyresearch/based-fda", "default", "validation", ("text", "key", "value")),
    "squad": ("hazyresearch/based-squad", "default", "validation", ("text", "context", "question", "value")),
    "nq": ("hazyresearch/based_nq_1024", None, "validation", QA_FIELDS),    # Table 1 uses the 1024-token NQ
    "triviaqa": ("hazyresearch/based_triviaqa", None, "validation", QA_FIELDS),
    "drop": ("hazyresearch/based_drop", None, "validation", QA_FIELDS),
}
STYLES = ("official", "clean")


def official_answer_fields(task):
    """The fields whose first match places the official cut (SQuAD: the answer; else key and answer), as the
    official launcher for the released Hazy models passes them (its launcher for Hugging Face models leaves
    key and answer for SQuAD too). The official runs read them from NQ, TriviaQA and Drop rows as well."""
    return ("value",) if task == "squad" else ("key", "value")


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


# The JRT paper gives its Table 1 averages over the six tasks (default -> JRT-Prompt) for these models only;
# no per-task numbers are quoted here.
PAPER_AVERAGE = {"mamba2-1.3b": (46.7, 55.6), "based-1b-50b": (40.3, 51.8), "mamba-130m": (24.7, 36.5)}


def table1(summary, model_name=""):
    """Table 1's layout: a row per task with default and JRT-Prompt accuracy ("contains", %) and their
    average over the tasks, the paper's average beside ours when it reports this model (PAPER_AVERAGE)."""
    tasks = list(dict.fromkeys(t for t, _ in summary))
    paper = PAPER_AVERAGE.get(os.path.basename(model_name.rstrip("/")).lower().removesuffix("-hf"))
    lines = ["| task | n | default | JRT-Prompt |", "|---|---|---|---|"]
    for t in tasks:
        default, jrt = summary[(t, "default")], summary[(t, "jrt")]
        lines.append(f"| {t} | {default['n']} | {100 * default['accuracy']:.1f} | "
                     f"{100 * jrt['accuracy']:.1f} |")
    avg = [100 * sum(summary[(t, f)]["accuracy"] for t in tasks) / len(tasks) for f in ("default", "jrt")]
    cells = [f"{v:.1f}" + (f" (paper {p})" if paper and len(tasks) == len(TABLE1) else "") for v, p in
             zip(avg, paper or (None, None))]
    lines.append(f"| average | | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- input checks

def _check_repeats(repeats):
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1 (1: the default prompt, 2: JRT-Prompt); "
                         f"got {repeats!r}")


def _check_text(fn, required=(), optional=()):
    """Builders take strings: the required ones non-empty, the optional ones possibly empty, never None."""
    for name, value in required:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{fn}: {name} must be a non-empty string; got {value!r}")
    for name, value in optional:
        if not isinstance(value, str):
            raise ValueError(f"{fn}: {name} must be a string (empty allowed); got {value!r}")
