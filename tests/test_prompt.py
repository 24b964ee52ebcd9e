"""prompt.py: the exact prompt formats, the budget cut, JR-p token builders, Table 1's rows; and its harness
in evaluate.py: the metric and error modes, greedy decoding through lm.py's interface, the CLI."""
import re

import pytest
import torch

import data
from evaluate import accuracy, contains, error_mode, evaluate
from lm import ModelLM, greedy
from model import Config, Model
from prompt import cut_around, extraction_prompt, jrt_examples, jrt_tokens, qa_prompt, read_twice, text_prompt

BYTES = data.get_tokenizer("bytes")  # built in code: no download


def tiny(layers=("conv", "la"), vocab=258, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = Config(vocab_size=vocab, d_model=32, n_head=2, feature_dim=4, layers=layers, prefix_len=32,
                 init_std=0.2, **kw)  # a large init: varied greedy outputs from a random model
    return Model(cfg).eval()


# ----------------------------------------------------------------------------- prompt strings (JRT paper)

def test_extraction_formats_are_exact():
    doc = "Name: Ada Lovelace\nBorn: 1815\nField: mathematics"
    assert extraction_prompt(doc, "born") == "Name: Ada Lovelace\nBorn: 1815\nField: mathematics born:"
    assert extraction_prompt(doc, "born", repeats=2) == (
        "Information about born. Name: Ada Lovelace\nBorn: 1815\nField: mathematics\n"
        "Name: Ada Lovelace\nBorn: 1815\nField: mathematics born:")
    assert extraction_prompt("d", "k", repeats=3) == "Information about k. d\nd\nd k:"
    with pytest.raises(ValueError, match="key"):
        extraction_prompt(doc, "")


def test_qa_formats_are_exact():
    ctx, q, cloze = "Paris is the capital of France.", "What is the capital of France?", "The capital of France is"
    assert qa_prompt(ctx, cloze, q) == "Paris is the capital of France. The capital of France is"
    assert qa_prompt(ctx, cloze, q, repeats=2) == (
        "What is the capital of France? Paris is the capital of France.\n"
        "Paris is the capital of France. The capital of France is")
    assert qa_prompt(ctx, cloze, "", repeats=2) == (                      # empty question: no stray space
        "Paris is the capital of France.\nParis is the capital of France. The capital of France is")
    assert qa_prompt("a\nb", "c", "q?", repeats=3) == "q? a\nb\na\nb\na\nb c"
    with pytest.raises(ValueError, match="repeats"):
        qa_prompt(ctx, cloze, q, repeats=0)


def test_read_twice_generic():
    assert read_twice("ctx", "q?") == "ctx q?\nctx q?"
    assert read_twice("ctx", "") == "ctx\nctx"
    assert read_twice("c", "q", repeats=3) == "c q\nc q\nc q"
    assert read_twice("c", "q", repeats=1) == "c q"


def test_cut_around_keeps_the_answer_in_budget():
    filler = "".join(f"w{i:03d} " for i in range(200))                  # 1000 bytes, 1000 byte tokens
    doc = filler[:500] + "ANSWER" + filler[500:]
    cut = cut_around(doc, "answer", BYTES, budget=100)
    assert len(BYTES.encode_ordinary(cut)) == 100 and "ANSWER" in cut and cut in doc
    mid = cut.index("ANSWER") + 3
    assert abs(mid - 50) <= 1                                              # centred on the answer
    assert cut_around("ANSWER " + filler, "answer", BYTES, budget=100) == ("ANSWER " + filler)[:100]
    assert cut_around(filler + "ANSWER", "answer", BYTES, budget=100) == (filler + "ANSWER")[-100:]
    assert cut_around(filler, "absent", BYTES, budget=100) == filler[:100]  # no answer: the start
    assert cut_around("short doc", "x", BYTES, budget=100) == "short doc"
    ex = {"kind": "extraction", "context": doc, "key": "k", "answers": ["answer"]}
    p = text_prompt(ex, 2, BYTES, budget=100)
    assert p == f"Information about k. {cut}\n{cut} k:"


# ----------------------------------------------------------------------------- metric and error modes

def test_contains_metric():
    assert contains(" paris, France", "Paris")
    assert contains("It is LONDON.", ["Paris", "london"])
    assert contains("Paris", " Paris ")                                   # gold stripped
    assert not contains("3050", "3.5")                                    # a regex character is literal
    assert not contains("", "Paris")
    assert not contains("Pari", ["Paris"])


def test_error_modes():
    prompt = "the quick brown fox jumps over the lazy dog today. Animal:"
    assert error_mode("a fox", ["fox"], prompt) is None
    assert error_mode("   ", ["fox"], prompt) == "empty"
    assert error_mode("cat dog bird cat dog bird", ["fox"], prompt) == "repetition"      # it loops
    assert error_mode("quick brown fox jumps over the lazy", ["wolf"], prompt) == "repetition"  # copies prompt
    assert error_mode("a cat", ["fox"], prompt) == "irrelevant"


# ----------------------------------------------------------------------------- JR-p token builders

@pytest.mark.parametrize("p", [1, 2, 3])
def test_jrt_tokens_repeat_p_times(p):
    ctx, q = [5, 6, 7], [9]
    out = jrt_tokens(ctx, q, repeats=p)
    assert out == [5, 6, 7, 9] * p and len(out) == 4 * p


@pytest.mark.parametrize("p", [1, 2, 3])
def test_jrt_examples_mqar(p):
    ex = data.mqar(6, vocab_size=128, seq_len=32, num_pairs=4, seed=1, split="test")
    jr = jrt_examples(ex, p)
    assert jr.x.shape == (6, 32 * p) and not jr.pad.any()
    assert torch.equal(jr.x, ex.x.repeat(1, p))                            # exactly p copies
    assert (jr.y[:, :32 * (p - 1)] == -100).all() and torch.equal(jr.y[:, 32 * (p - 1):], ex.y)
    assert (jr.prefix_len == 32 * (p - 1) + ex.prefix_len).all()
    if p == 2:                                                             # = data.py's own read-twice rows
        twice = data.mqar(6, vocab_size=128, seq_len=64, num_pairs=4, read_twice=True, seed=1, split="test")
        assert torch.equal(jr.x, twice.x) and torch.equal(jr.y, twice.y)
        assert torch.equal(jr.prefix_len, twice.prefix_len)


@pytest.mark.parametrize("p", [2, 3])
def test_jrt_examples_set_disjointness_with_padding(p):
    ex = data.disjoint_sets(3, shapes=[(2, 5), (6, 3)], halves=False, seed=0)
    jr = jrt_examples(ex, p)
    T = p * 12                                                             # the longest row: 6 + 3 + 3 tokens
    assert jr.x.shape == (6, T)
    for r in range(6):
        real = ex.x[r][~ex.pad[r]]
        assert jr.prefix_len[r] == p * len(real)                           # the prefix is the whole input
        assert torch.equal(jr.x[r][~jr.pad[r]], real.repeat(p))
        assert (jr.x[r][jr.pad[r]] == 0).all() and jr.pad[r].sum() == T - p * len(real)
        assert jr.y[r, -1] == ex.y[r, -1] and (jr.y[r, :-1] == -100).all()


# ----------------------------------------------------------------------------- greedy decoding and the harness

@pytest.mark.parametrize("layers", [("conv", "la"), ("conv", "pla")])
def test_greedy_stops_at_stop_token_and_matches_generate(layers):
    model = tiny(layers, vocab=64)
    prompts = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15, 16], [3, 4, 5, 6, 7]]
    free = greedy(ModelLM(model), prompts, max_new_tokens=12, batch_size=4)
    assert all(len(g) == 12 for g in free)                                # no stop token: the full length
    g = free[0]
    j = next((i for i in range(2, 12) if g[i] not in g[:i]), 1 if g[1] != g[0] else 0)
    stop = g[j]
    got = greedy(ModelLM(model), prompts, max_new_tokens=12, stop={stop}, batch_size=3)
    for p, full, out in zip(prompts, free, got):
        want = full[:full.index(stop)] if stop in full else full
        assert out == want                                                 # stops before the stop token
        ref = model.generate(torch.tensor([p]), 12, temperature=0, stop_token=stop)[0, len(p):].tolist()
        assert out == (ref[:ref.index(stop)] if stop in ref else ref)      # = Model.generate, greedy
    assert got[0] == g[:j] and stop not in got[0]


def _text_examples():
    docs = ["name: ada\ncity: paris\nyear: 1815", "name: bob\ncity: rome\nyear: 1990 and more text here",
            "the cat sat on the mat.", "q"]
    exs = [{"task": "extract", "kind": "extraction", "context": d, "key": "city", "answers": [a]}
           for d, a in zip(docs, ["e", "o", "a", "x"])]
    exs += [{"task": "qa", "kind": "qa", "context": d, "question": "What?", "cloze": "It is", "answers": a}
            for d, a in zip(docs, ["i", "e", "t", "z"])]
    return exs


def test_harness_same_accuracy_batched_and_one_by_one():
    lm = ModelLM(tiny(("conv", "la", "conv", "pla")))
    exs = _text_examples()
    s1, r1 = evaluate(lm, BYTES, exs, formats=("default", "jr3"), batch_size=1, max_new_tokens=6)
    s8, r8 = evaluate(lm, BYTES, exs, formats=("default", "jr3"), batch_size=8, max_new_tokens=6)
    assert s1 == s8 and [r["output"] for r in r1] == [r["output"] for r in r8]
    assert set(s1) == {(t, f) for t in ("extract", "qa") for f in ("default", "jr3")}
    assert all(s["n"] == 4 for s in s1.values())
    for s in s1.values():                                                  # every example is right or one error
        assert s["accuracy"] + s["empty"] + s["repetition"] + s["irrelevant"] == pytest.approx(1.0)
    assert all("\n" not in r["output"] for r in r1)                       # stopped at the newline


def test_teacher_forced_accuracy_matches_forward():
    model = tiny(("conv", "pla"), vocab=128)
    ex = data.mqar(8, vocab_size=128, seq_len=32, num_pairs=4, seed=0, split="test")
    per, total = accuracy(model, ex, batch_size=3)
    logits, _ = model(ex.x, prefix_len=ex.prefix_len)
    m = ex.y != -100
    assert total == pytest.approx((logits.argmax(-1)[m] == ex.y[m]).float().mean().item())
    assert list(per) == ex.groups


# ----------------------------------------------------------------------------- CLI

def _save(path, model, **config):
    from dataclasses import asdict
    torch.save(dict(model=model.state_dict(), model_args=asdict(model.config), config=config), path)
    return str(path)


def _cli(capsys, *argv):
    """`evaluate.py prompt` on argv: (exit code, what it printed on stdout, on stderr)."""
    from evaluate import main
    try:
        main(["prompt", *argv])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_on_a_checkpoint(tmp_path, capsys):
    import json

    from evaluate import main
    model = tiny(("conv", "pla"), vocab=258)
    mqar = _save(tmp_path / "mqar.pt", model, task="mqar", vocab_size=128, seq_len=32, num_pairs=4)
    text = _save(tmp_path / "text.pt", model, task="text", tokenizer="bytes")
    table = main(["prompt", "--ckpt", mqar, "--task", "mqar", "--n", "8"])
    assert table.splitlines()[0] == "| task | n | default acc | jrt acc |" and "| T=32 k=4 | 8 |" in table
    jsonl = tmp_path / "ex.jsonl"
    jsonl.write_text("\n".join(json.dumps(e) for e in _text_examples()[:2]))
    table = main(["prompt", "--ckpt", text, "--task", str(jsonl), "--formats", "default,jrt"])
    assert "| extract | 2 |" in table and "jrt acc" in table
    code, out, err = _cli(capsys, "--ckpt", mqar, "--task", "mqar", "--formats", "twice")
    assert code == 2 and err.startswith("error: unknown prompt format 'twice'") and "Traceback" not in err


def test_cli_bad_input_is_one_line_naming_what_is_wrong(tmp_path, capsys):
    import json
    model = tiny(("conv", "pla"), vocab=258)
    mqar = _save(tmp_path / "mqar.pt", model, task="mqar", vocab_size=128, seq_len=32, num_pairs=4)
    text = _save(tmp_path / "text.pt", model, task="text", tokenizer="bytes")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    ok = json.dumps(_text_examples()[0])
    files = {"bad.jsonl": ok + "\n{oops\n", "none.jsonl": "\n\n", "noans.jsonl": json.dumps(
        {"kind": "qa", "context": "c", "cloze": "It is"}), "nokey.jsonl": json.dumps(
        {"kind": "extraction", "context": "c", "answers": ["x"]}), "list.jsonl": "[1, 2]", "good.jsonl": ok}
    for name, body in files.items():
        (tmp_path / name).write_text(body)
    latin1 = ok + "\n" + ok.replace("ada", "caf\u00e9") + "\n"
    (tmp_path / "latin1.jsonl").write_bytes(latin1.encode("latin-1"))
    cases = [
        (("--ckpt", mqar, "--task", "mqar", "--n", "0"), r"--n=0: expected an int >= 1"),
        (("--ckpt", mqar, "--task", "mqar", "--n", "-3"), r"--n=-3"),
        (("--ckpt", text, "--task", "x.jsonl", "--batch_size", "0"), r"--batch_size=0"),
        (("--ckpt", mqar, "--task", "mqar", "--device", "cuda:7" if torch.cuda.is_available() else "cuda"),
         r"device='cuda"),
        (("--ckpt", mqar, "--task", "mqar", "--device", "tpu"), r"device='tpu'"),
        (("--ckpt", text, "--task", str(tmp_path / "bad.jsonl")), r"bad.jsonl line 2: not valid JSON"),
        (("--ckpt", text, "--task", str(tmp_path / "none.jsonl")), r"none.jsonl: no rows"),
        (("--ckpt", text, "--task", str(tmp_path / "noans.jsonl")), r"line 1: missing field 'answers'"),
        (("--ckpt", text, "--task", str(tmp_path / "nokey.jsonl")), r"line 1: missing field 'key'"),
        (("--ckpt", text, "--task", str(tmp_path / "list.jsonl")), r"line 1: expected a JSON object"),
        (("--ckpt", text, "--task", str(tmp_path / "absent.jsonl")), r"absent.jsonl: no such file"),
        (("--ckpt", text, "--task", "mqar"), r"--task mqar needs a model trained on mqar.*task='text'"),
        (("--ckpt", mqar, "--task", "sets"), r"--task sets needs a model trained on disjoint_sets.*task='mqar'"),
        (("--ckpt", mqar, "--task", str(tmp_path / "good.jsonl")), r"needs a model trained on text"),
        (("--hf", "x/y", "--task", "mqar"), r"--task mqar needs --ckpt"),
        (("--ckpt", text, "--task", "swde", "--formats", "jr3"), r"Table 1 tasks are swde, fda"),
        (("--task", "mqar"), r"exactly one of --ckpt, --hf or --official"),
        (("--official", str(tmp_path), "--task", str(tmp_path / "nokey.jsonl")), r"missing field 'key'"),
        (("--official", str(tmp_path), "--task", "table1"), r"no config.json in this directory"),
        (("--ckpt", text, "--task", str(tmp_path / "latin1.jsonl")), r"latin1.jsonl line 2: not UTF-8 text"),
        (("--ckpt", text, "--task", str(tmp_path / "good.jsonl"), "--style", "clean"),
         r"--style clean: applies to"),
        (("--ckpt", text, "--task", "swde", "--style", "fancy"), r"--style fancy: expected one of official"),
        (("--ckpt", mqar, "--task", "mqar", "--out", str(tmp_path)), r"--out .*: is a folder"),
        (("--ckpt", mqar, "--task", "mqar", "--formats", " , "), r"--formats ' , ': name at least one format"),
        (("--ckpt", mqar, "--task", "mqar", "--out", str(tmp_path / "good.jsonl" / "t.md")),
         r"--out .*cannot create"),
    ]
    # a missing or non-checkpoint --ckpt: checkpoint.load_checkpoint's one-line message, as "error: ..."
    cases += [(("--ckpt", str(tmp_path / "absent.pt"), "--task", "mqar"), r"absent.pt"),
              (("--ckpt", str(junk), "--task", "mqar"), r"junk.pt")]
    for argv, msg in cases:
        code, out, err = _cli(capsys, *argv)
        assert code == 2, (argv, out, err)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert re.search(msg, err), (argv, err)


def test_cli_out_creates_its_folder_first(tmp_path, capsys):
    model = tiny(("conv", "pla"), vocab=258)
    mqar = _save(tmp_path / "mqar.pt", model, task="mqar", vocab_size=128, seq_len=32, num_pairs=4)
    out = tmp_path / "new" / "deeper" / "table.md"
    code, printed, err = _cli(capsys, "--ckpt", mqar, "--task", "mqar", "--n", "4", "--out", str(out))
    assert code == 0, err
    assert out.read_text() == printed


def test_builders_refuse_none_empty_and_strings():
    for call, msg in [(lambda: extraction_prompt(None, "k"), "doc must be a non-empty string"),
                      (lambda: extraction_prompt("  ", "k"), "doc"),
                      (lambda: extraction_prompt("d", None), "key"),
                      (lambda: qa_prompt("", "It is"), "context must be a non-empty string"),
                      (lambda: qa_prompt(None, "It is"), "context"),
                      (lambda: qa_prompt("c", None), "cloze must be a string"),
                      (lambda: qa_prompt("c", "x", question=None, repeats=2), "question must be a string"),
                      (lambda: read_twice(None, "q"), "context"),
                      (lambda: read_twice("c", None), "question"),
                      (lambda: jrt_tokens("abc", [1]), "context must be a list of token ids"),
                      (lambda: jrt_tokens([1, 2], "q"), "question must be a list of token ids"),
                      (lambda: greedy(ModelLM(tiny(vocab=64)), [[1, 2]], batch_size=0), "batch_size=0"),
                      (lambda: greedy(ModelLM(tiny(vocab=64)), [[1, 2]], batch_size=1.5), "batch_size=1.5")]:
        with pytest.raises(ValueError, match=msg):
            call()
    assert qa_prompt("c", "", "") == "c"                                   # empty optional parts are fine


def test_our_model_meets_the_interface_itself():
    model = tiny(("conv", "pla", "conv", "la"), vocab=64)
    prompts = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
    assert greedy(model, prompts, max_new_tokens=5, batch_size=3) == greedy(ModelLM(model), prompts, 5, batch_size=3)


# ----------------------------------------------------------------------------- Table 1 tasks (fixture rows)

TABLE1_DIR = __import__("os").path.join(__import__("os").path.dirname(__file__), "fixtures", "table1")


def table1_rows(task):
    import json
    with open(f"{TABLE1_DIR}/{task}.jsonl") as f:
        return [json.loads(line) for line in f]


# The official prompts, written out by hand from the official task code (the lm-eval-harness fork in the JRT
# repository, lm_eval/tasks/based_*/task.py: doc_to_text of each task class and of its "Twice" subclass)
# applied to the fixture rows. Each comment names the quirk the string shows.
OFFICIAL = {
    ("swde", 0): (  # the page before the summary, stripped, one period, the key capitalised
        "Title: The Quiet Harbor\nDirector: Mara Lindqvist\nYear: 1998\nGenre: drama. Director:",
        "Information about Director. Title: The Quiet Harbor\nDirector: Mara Lindqvist\nYear: 1998\n"
        "Genre: drama.\nTitle: The Quiet Harbor\nDirector: Mara Lindqvist\nYear: 1998\nGenre: drama. "
        "Director:"),
    ("swde", 1): (
        "University of Elmsworth. Location: Elmsworth, Oregon. Founded: 1871. Enrollment: 12,400. "
        "Founded:",
        "Information about Founded. University of Elmsworth. Location: Elmsworth, Oregon. Founded: "
        "1871. Enrollment: 12,400.\nUniversity of Elmsworth. Location: Elmsworth, Oregon. Founded: "
        "1871. Enrollment: 12,400. Founded:"),
    ("fda", 0): (  # removing "purpose of submission:" leaves "K912345. ", which .strip(".") keeps: ". ."
        "510(k) SUMMARY. Device name: FlowSure catheter. Applicant: Meridian Medical Inc. Predicate "
        "device: K912345. . Purpose of submission:",
        "Information about Purpose of submission. 510(k) SUMMARY. Device name: FlowSure catheter. "
        "Applicant: Meridian Medical Inc. Predicate device: K912345. .\n510(k) SUMMARY. Device name: "
        "FlowSure catheter. Applicant: Meridian Medical Inc. Predicate device: K912345. . Purpose of "
        "submission:"),
    ("fda", 1): (
        "Applicant: Coastal Diagnostics. Device: RapidStrep test kit. Classification: Class II. "
        "Applicant:",
        "Information about Applicant. Applicant: Coastal Diagnostics. Device: RapidStrep test kit. "
        "Classification: Class II.\nApplicant: Coastal Diagnostics. Device: RapidStrep test kit. "
        "Classification: Class II. Applicant:"),
    ("squad", 0): (  # default: `text` as stored; twice: question, the context up to "Question:" unstripped
        "The Amazon river carries more water than any other river. It flows through Brazil, Peru and "
        "Colombia. The river that carries the most water is the",
        "Which river carries the most water? The Amazon river carries more water than any other river. "
        "It flows through Brazil, Peru and Colombia. \nThe Amazon river carries more water than any "
        "other river. It flows through Brazil, Peru and Colombia. The river that carries the most water "
        "is the"),
    ("squad", 1): (
        "Marie Curie won two Nobel prizes, in physics and in chemistry. Curie won Nobel prizes in",
        "In which fields did Curie win Nobel prizes? Marie Curie won two Nobel prizes, in physics and "
        "in chemistry. \nMarie Curie won two Nobel prizes, in physics and in chemistry. Curie won Nobel "
        "prizes in"),
    ("nq", 0): (  # the cloze at the end of the context is not shown twice
        "The Eiffel Tower was completed in 1889 for the World's Fair in Paris. The Eiffel Tower was "
        "completed in",
        "when was the eiffel tower completed The Eiffel Tower was completed in 1889 for the World's "
        "Fair in Paris.\nThe Eiffel Tower was completed in 1889 for the World's Fair in Paris. The "
        "Eiffel Tower was completed in"),
    ("nq", 1): (  # default removes the cloze only case-sensitively, twice ignoring case
        "Mount Kilimanjaro is the highest mountain in Africa, rising 5,895 metres in Tanzania. the "
        "highest mountain in Africa is. The highest mountain in Africa is",
        "what is the highest mountain in africa Mount Kilimanjaro is the highest mountain in Africa, "
        "rising 5,895 metres in Tanzania.\nMount Kilimanjaro is the highest mountain in Africa, rising "
        "5,895 metres in Tanzania. The highest mountain in Africa is"),
    ("triviaqa", 0): (  # the markers go after the strip: their spaces stay
        "Penguins  Emperor penguins breed during the Antarctic winter. Emperor penguins breed during "
        "the Antarctic",
        "In which season do emperor penguins breed? Penguins  Emperor penguins breed during the "
        "Antarctic winter.\nPenguins  Emperor penguins breed during the Antarctic winter. Emperor "
        "penguins breed during the Antarctic"),
    ("triviaqa", 1): (
        "Jazz  Louis Armstrong was a trumpeter from New Orleans. Louis Armstrong played the",
        "Which instrument did Louis Armstrong play? Jazz  Louis Armstrong was a trumpeter from New "
        "Orleans.\nJazz  Louis Armstrong was a trumpeter from New Orleans. Louis Armstrong played the"),
    ("drop", 0): (
        "In the first quarter the Bears scored 7 points, and in the second quarter they scored 10 more. "
        "In the first two quarters the Bears scored",
        "How many points did the Bears score in the first half? In the first quarter the Bears scored 7 "
        "points, and in the second quarter they scored 10 more.\nIn the first quarter the Bears scored "
        "7 points, and in the second quarter they scored 10 more. In the first two quarters the Bears "
        "scored"),
    ("drop", 1): (  # default: .strip(".") leaves "town " before ". "; twice strips again
        "The census counted 4,200 men and 4,500 women in the town . The census counted more",
        "Were there more men or women? The census counted 4,200 men and 4,500 women in the town.\nThe "
        "census counted 4,200 men and 4,500 women in the town. The census counted more"),
}


def test_table1_fixture_rows_give_the_official_strings():
    import copy

    from prompt import TABLE1, official_prompt, table1_example
    assert {t for t, _ in OFFICIAL} == set(TABLE1)
    for (task, i), (default, twice) in OFFICIAL.items():
        row = table1_rows(task)[i]
        before = copy.deepcopy(row)
        assert official_prompt(task, row, 1) == default, (task, i)
        assert official_prompt(task, row, 2) == twice, (task, i)
        assert row == before                                               # the row is not changed
        ex = table1_example(task, row)                                     # the harness's path, no cut
        assert (text_prompt(ex, 1), text_prompt(ex, 2)) == (default, twice)


def _reference(task, row, twice):
    """The official doc_to_text, step by step in the official order, on a copy of the row (the official
    methods write into the row they are given)."""
    d = dict(row)
    if task == "swde":
        while d["text"].find("Summary of information above...") >= 0:
            d["text"] = d["text"].split("Summary of information above...")[0]
        q = d["key"] + ":"
        while d["text"].lower().endswith(q.lower()):
            d["text"] = d["text"][:-len(q)]
        q = d["key"][0].upper() + d["key"][1:] + ":"
        if not twice:
            return d["text"].strip("\n").strip().strip("\n").strip().strip(".") + "." + " " + q
        out = d["text"].strip("\n").strip(".").strip().strip("\n").strip()
        if not out.endswith("."):
            out += "."
        return "Information about " + q.strip(":") + ". " + out + "\n" + out + " " + q
    if task == "fda":
        q = d["key"] + ":"
        while d["text"].lower().endswith(q.lower()):
            d["text"] = d["text"][:-len(q)]
        q = d["key"][0].upper() + d["key"][1:] + ":"
        d["text"] = d["text"].strip("\n").strip(".")
        out = d["text"]
        if not out.endswith("."):
            out += "."
        if not twice:
            return out + " " + q
        return "Information about " + q.strip(":") + ". " + out + "\n" + out + " " + q
    if task == "squad":
        if not twice:
            return d["text"].strip()
        return d["question"] + " " + d["context"].split("Question:")[0] + "\n" + d["text"].strip()
    c = d["context"].strip()
    if task == "triviaqa":
        c = re.sub(r"\[PAR\]|\[DOC\]|\[TLE\]", "", c)
    q = d["question"].strip()
    if task == "nq" and not twice:
        if c.endswith(q):
            c = c[:-len(q)]
        return c.strip().strip(".") + ". " + d["question"].strip()
    while c.lower().endswith(q.lower()):
        c = c[:-len(q)]
    if not twice:
        return c.strip().strip(".") + ". " + q
    out = c.strip().strip(".").strip() + "."
    out += "\n" + out + " " + q
    return (d["orig_question"] if task == "triviaqa" else d["orig_question"].strip(":")) + " " + out


def _perturb(task, row, rng):
    """The row with random whitespace and punctuation around its fields, the key or cloze repeated (in another
    case) at the end of the document, and stray markers: the places where the official strips differ."""
    pick = lambda *xs: xs[rng.randrange(len(xs))]
    around = lambda s: (pick("", " ", "\n", "  ", " \n", "\n\n") + s
                        + pick("", " ", "\n", ".", "..", ". ", " .", ".\n", ". \n", " . ", ":"))
    r = dict(row)
    if task in ("swde", "fda"):
        page = r["text"].split("Summary of information above...")[0] if task == "swde" else r["text"]
        tail = pick("", " " + r["key"] + ":", " " + r["key"].upper() + ":", r["key"] + ":" + r["key"] + ":")
        page = around(page) + tail + pick("", " ", "\n")
        if task == "swde":
            page += "Summary of information above..." + around(" " + r["key"] + ":")
        r["text"] = page
        r["key"] = pick(r["key"], r["key"].lower(), r["key"].title(), r["key"] + ":")
    elif task == "squad":
        passage = r["context"].split("Question:")[0].strip()
        r["context"] = around(passage) + pick("", " ", "\n") + "Question: " + around(r["question"])
        r["question"] = around(r["question"])
        r["text"] = around(r["text"])
    else:
        q = r["question"]
        r["context"] = around(pick("", "[DOC] ", "[TLE] [PAR] ") + r["context"].strip()) + pick(
            "", " " + q, " " + q.lower(), " " + q + " " + q, "[PAR]", " " + q + ".")
        r["question"], r["orig_question"] = around(q), around(r["orig_question"])
    return r


def test_table1_perturbed_rows_give_the_official_strings():
    import random

    from prompt import TABLE1, clean_example, official_prompt, table1_example
    rng = random.Random(0)
    n = differ = 0
    for task in TABLE1:
        for row in table1_rows(task):
            for _ in range(14):                                            # 12 rows x 14 = 168 rows
                r = _perturb(task, row, rng)
                for twice in (False, True):
                    want = _reference(task, r, twice)
                    assert official_prompt(task, r, 1 + twice) == want, (task, r, twice)
                    n += 1
                    try:
                        differ += text_prompt(clean_example(task, r), 1 + twice) != want
                    except ValueError:                                     # clean SQuAD cannot split this row
                        differ += 1
                assert table1_example(task, r) is not None
    assert n == 2 * 168 and differ > n // 4                              # the clean style is not the official


def test_official_cut_is_the_official_window():
    from prompt import official_cut
    abc = "0123456789ABCDEFGHIJanswerKLMNOPQRSTUVWXYZ"                      # one byte, one token
    cut = lambda text, answers: official_cut(text, answers, BYTES, budget=10)
    assert cut("\n " + abc + " \n", ["answer"]) == "FGHIJanswe"     # stripped; a = 20: tokens [15, 25)
    assert cut(abc, ["zzz", "answer", "234"]) == "0123456789"        # the earliest match, a = 2: [0, 10)
    assert cut(abc, ["XYZ"]) == "STUVWXYZ"                           # a = 39: [34, 42), not moved back
    assert cut("abcdefgKEY", ["key"]) == "cdefgKEY"                  # shorter than the budget, still cut
    assert cut(abc, ["absent"]) == "UVWXYZ"                          # no match: a from text[:-1] = 41
    assert cut("short doc", ["short"]) == "short doc"


def test_official_pipeline_cuts_the_text_field_first():
    from prompt import table1_example
    # The cut strips the text before doc_to_text: a trailing newline then no longer hides the key.
    row = {"text": "Applicant: Ortho Inc. purpose of submission:\n", "key": "purpose of submission",
           "value": "new device"}
    ex = table1_example("fda", row)
    assert text_prompt(ex, 1) == "Applicant: Ortho Inc. purpose of submission:. Purpose of submission:"
    assert text_prompt(ex, 1, BYTES, budget=950) == "Applicant: Ortho Inc. . Purpose of submission:"
    # SWDE: the key "founded" (token 25) comes before the value (token 34): tokens [20, 30) are kept.
    row = {"text": "University of Elmsworth. Founded: 1871.\nSummary of information above... founded:",
           "key": "founded", "value": "1871"}
    assert text_prompt(table1_example("swde", row), 1, BYTES, budget=10) == "rth. Found. Founded:"
    # ... and the cut sees the summary too: a window that ends inside its marker keeps that part of it.
    assert text_prompt(table1_example("swde", row), 1, BYTES, budget=40) == (
        "rsity of Elmsworth. Founded: 1871.\nSumma. Founded:")                 # tokens [5, 45)
    # SQuAD: only `text` is cut; the twice prompt's passage comes from the uncut `context`.
    row = dict(table1_rows("squad")[1])
    cut = text_prompt(table1_example("squad", row), 2, BYTES, budget=20)
    passage = row["context"].split("Question:")[0]
    i = row["text"].index("physics")
    assert cut == f"{row['question']} {passage}\n{row['text'][i - 10:i + 10].strip()}"
    # a gold answer or key of one character: the official harness makes no request for the row
    assert table1_example("fda", dict(row, text="x", key="k", value="yes")) is None
    assert table1_example("squad", dict(row, value="7")) is None
    nq = table1_rows("nq")[0]
    assert table1_example("nq", dict(nq, key="q", value="1889")) is None
    assert table1_example("nq", nq) is not None


def test_table1_clean_style_is_a_named_option():
    from prompt import TABLE1, table1_example
    ex = {t: [table1_example(t, r, style="clean") for r in table1_rows(t)] for t in TABLE1}
    assert text_prompt(ex["fda"][0], 1).endswith("Predicate device: K912345. Purpose of submission:")
    squad = table1_rows("squad")[0]
    passage = squad["context"].split("Question:")[0].strip()
    assert text_prompt(ex["squad"][0], 2) == f"{squad['question']} {passage}\n{squad['text']}"
    with pytest.raises(ValueError, match="--style clean cannot split"):
        table1_example("squad", dict(squad, text="Something else."), style="clean")
    with pytest.raises(ValueError, match="--style 'fancy': expected one of official, clean"):
        table1_example("squad", squad, style="fancy")


def test_table1_rows_the_official_code_cannot_read_are_one_line_errors():
    from prompt import table1_example
    for task, change, msg in [
            ("swde", {"value": None}, "missing field 'value'"),
            ("nq", {"answers": None}, "missing field 'answers'"),
            ("squad", {"context": None}, "missing field 'context'"),
            ("drop", {"orig_question": None}, "missing field .orig_question."),
            ("fda", {"key": ""}, "field 'key' is empty"),
            ("fda", {"text": 3}, "field 'text' must be a string"),
            ("swde", {"text": "page"}, "holds it 0 times"),
            ("nq", {"question": "  "}, "'question' .the cloze. is empty"),
            ("triviaqa", {"answers": []}, "'answers' must be a non-empty list"),
            ("drop", {"answers": "17"}, "'answers' must be a non-empty list")]:
        row = dict(table1_rows(task)[0], **change)
        row = {k: v for k, v in row.items() if v is not None}
        with pytest.raises(ValueError, match=f"{task} row 3: .*{msg}"):
            table1_example(task, row, " 3")


def test_table1_cli_on_fixture_rows(tmp_path, capsys, monkeypatch):
    import hf
    from prompt import PAPER_AVERAGE, TABLE1, table1
    monkeypatch.setattr(hf, "load_dataset", lambda path, name, split: table1_rows(
        next(t for t, spec in TABLE1.items() if spec[0] == path)))
    text = _save(tmp_path / "text.pt", tiny(("conv", "pla"), vocab=258), task="text", tokenizer="bytes")
    code, out, err = _cli(capsys, "--ckpt", text, "--task", "table1", "--batch_size", "4")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == "| task | n | default | JRT-Prompt |" and len(lines) == 2 + 6 + 1
    assert [line.split(" | ")[0][2:] for line in lines[2:8]] == list(TABLE1) and lines[-1].startswith("| average | |")
    assert all(line.split(" | ")[1] == "2" for line in lines[2:8])      # every fixture row evaluated
    code, out, err = _cli(capsys, "--ckpt", text, "--task", "nq,drop", "--n", "1")
    assert code == 0 and len(out.strip().splitlines()) == 5 and "| nq | 1 |" in out
    code, out, err = _cli(capsys, "--ckpt", text, "--task", "fda,squad", "--style", "clean", "--budget", "0")
    assert code == 0 and "| fda | 2 |" in out and "| squad | 2 |" in out
    summary = {(t, f): {"n": 2, "accuracy": 0.5} for t in TABLE1 for f in ("default", "jrt")}
    assert table1(summary, "state-spaces/mamba-130m-hf").splitlines()[-1] == (
        f"| average | | 50.0 (paper {PAPER_AVERAGE['mamba-130m'][0]}) | 50.0 (paper {PAPER_AVERAGE['mamba-130m'][1]}) |")
    assert "paper" not in table1(summary, "my-model")


def test_table1_without_datasets_says_what_to_install(tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "datasets", None)
    text = _save(tmp_path / "text.pt", tiny(("conv", "pla"), vocab=258), task="text", tokenizer="bytes")
    code, out, err = _cli(capsys, "--ckpt", text, "--task", "swde")
    assert code == 2 and "needs the optional package `datasets`" in err and "requirements-extra.txt" in err


def test_table1_offline_says_so(tmp_path, capsys, monkeypatch):
    datasets = pytest.importorskip("datasets", reason="optional extra (requirements-extra.txt)")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'hazyresearch/based-fda' on the Hub (LocalEntryNotFoundError)")
    monkeypatch.setattr(datasets, "load_dataset", offline)
    text = _save(tmp_path / "text.pt", tiny(("conv", "pla"), vocab=258), task="text", tokenizer="bytes")
    code, out, err = _cli(capsys, "--ckpt", text, "--task", "fda")
    assert code == 2 and "could not load the data set hazyresearch/based-fda/default (ConnectionError" in err
    assert len(err.strip().splitlines()) == 1
