"""prompt.py: the exact prompt formats, the budget cut, the metric and error modes, JR-p token builders,
greedy decoding through the interface, and the optional Hugging Face adapter."""
import re

import pytest
import torch

import data
from model import Config, Model
from model import ModelLM
from prompt import (accuracy, contains, cut_around, error_mode, evaluate, extraction_prompt,
                    greedy, jrt_examples, jrt_tokens, qa_prompt, read_twice, text_prompt)

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
    """prompt.main on argv: (exit code, what it printed on stdout, on stderr)."""
    from prompt import main
    try:
        main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_on_a_checkpoint(tmp_path, capsys):
    import json

    from prompt import main
    model = tiny(("conv", "pla"), vocab=258)
    mqar = _save(tmp_path / "mqar.pt", model, task="mqar", vocab_size=128, seq_len=32, num_pairs=4)
    text = _save(tmp_path / "text.pt", model, task="text", tokenizer="bytes")
    table = main(["--ckpt", mqar, "--task", "mqar", "--n", "8"])
    assert table.splitlines()[0] == "| task | n | default acc | jrt acc |" and "| T=32 k=4 | 8 |" in table
    jsonl = tmp_path / "ex.jsonl"
    jsonl.write_text("\n".join(json.dumps(e) for e in _text_examples()[:2]))
    table = main(["--ckpt", text, "--task", str(jsonl), "--formats", "default,jrt"])
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
    ]
    # a missing or non-checkpoint --ckpt: checkpoint.load_checkpoint's one-line message, as "error: ..."
    cases += [(("--ckpt", str(tmp_path / "absent.pt"), "--task", "mqar"), r"absent.pt"),
              (("--ckpt", str(junk), "--task", "mqar"), r"junk.pt")]
    for argv, msg in cases:
        code, out, err = _cli(capsys, *argv)
        assert code == 2, (argv, out, err)
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert re.search(msg, err), (argv, err)


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


def test_table1_rows_give_the_official_prompts():
    from prompt import TABLE1, table1_example
    ex = {t: [table1_example(t, r) for r in table1_rows(t)] for t in TABLE1}
    doc = "Title: The Quiet Harbor\nDirector: Mara Lindqvist\nYear: 1998\nGenre: drama."
    assert text_prompt(ex["swde"][0], 1) == doc + " Director:"          # summary cut off, key capitalised
    assert text_prompt(ex["swde"][0], 2) == f"Information about Director. {doc}\n{doc} Director:"
    assert text_prompt(ex["swde"][1], 1).endswith("Enrollment: 12,400. Founded:")
    assert text_prompt(ex["fda"][0], 1).endswith("Predicate device: K912345. Purpose of submission:")
    ctx = "The Eiffel Tower was completed in 1889 for the World's Fair in Paris."
    assert text_prompt(ex["nq"][0], 1) == ctx + " The Eiffel Tower was completed in"   # trailing cloze not doubled
    assert text_prompt(ex["nq"][0], 2) == (f"when was the eiffel tower completed {ctx}\n{ctx} "
                                           "The Eiffel Tower was completed in")
    assert "[PAR]" not in text_prompt(ex["triviaqa"][0], 2) and text_prompt(ex["triviaqa"][0], 1) == (
        "Penguins  Emperor penguins breed during the Antarctic winter. Emperor penguins breed during the Antarctic")
    passage = "The Amazon river carries more water than any other river. It flows through Brazil, Peru and Colombia."
    squad = table1_rows("squad")[0]
    assert text_prompt(ex["squad"][0], 1) == squad["text"]                # the official default prompt
    assert text_prompt(ex["squad"][0], 2) == f"{squad['question']} {passage}\n{squad['text']}"
    assert ex["nq"][1]["answers"] == ["Mount Kilimanjaro", "Kilimanjaro"] and ex["drop"][0]["answers"] == ["17"]


def test_table1_rows_without_their_fields_are_one_line_errors():
    from prompt import table1_example
    for task, drop, msg in [("swde", "value", "missing field 'value'"), ("nq", "answers", "missing field 'answers'"),
                            ("squad", "context", "missing field 'context'"), ("drop", "orig_question", "missing field .orig_question.")]:
        row = dict(table1_rows(task)[0])
        del row[drop]
        with pytest.raises(ValueError, match=f"{task} row 3: {msg}"):
            table1_example(task, row, " 3")
    with pytest.raises(ValueError, match="does not start with its passage"):
        table1_example("squad", dict(table1_rows("squad")[0], text="Something else."))
    ex = __import__("prompt").table1_example("nq", dict(table1_rows("nq")[0], answers=[]))
    with pytest.raises(ValueError, match="non-empty gold answer"):
        text_prompt(ex, 1, BYTES)


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
