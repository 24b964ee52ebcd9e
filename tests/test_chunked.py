"""chunked.py (OPRM): chunking, batched speculative prefill, selection, IDK filter, cache, modes, bad input."""
import re

import pytest
import torch

from chunked import cache_context, chunk_spans, entropy, oprm_generate, speculative_prefill
from lm import ModelLM
from model import Config, Model

PRESETS = ("based-tiny", "jrt-tiny", "transformer-tiny")


def tiny(preset, seed=0):
    torch.manual_seed(seed)
    return Model(Config.from_preset(preset, vocab_size=64, d_model=32, n_head=2, feature_dim=4)).eval()


def rand_tokens(n, seed, low=1, high=64):
    return torch.randint(low, high, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


class NeedleLM:
    """A stub of lm.py's interface that knows one fact: once `needle` has been read, the next token
    is `answer` (logit `sure`); before that it is unsure, or says `idk` with logit `idk_sure`.
    It records every row it prefills, so tests can see what was read and how often."""
    vocab_size = 16

    def __init__(self, needle=5, answer=9, idk=None, sure=6.0, idk_sure=12.0):
        self.needle, self.answer, self.idk, self.sure, self.idk_sure = needle, answer, idk, sure, idk_sure
        self.rows = []

    def _logits(self, has):
        logits = torch.zeros(len(has), self.vocab_size)
        logits[has, self.answer] = self.sure
        if self.idk is not None:
            logits[~has, self.idk] = self.idk_sure
        return logits

    def prefill(self, idx, pad_mask=None):
        pad = torch.zeros_like(idx, dtype=torch.bool) if pad_mask is None else pad_mask
        self.rows += [r[~p].tolist() for r, p in zip(idx, pad)]
        has = ((idx == self.needle) & ~pad).any(1)
        return self._logits(has), {"has": has}

    def step(self, idx_t, cache):
        has = cache["has"] | (idx_t == self.needle)
        return self._logits(has), {"has": has}

    def select(self, cache, rows):
        return {"has": cache["has"].index_select(0, rows)}


# ----------------------------------------------------------------------------- chunking

@pytest.mark.parametrize("n,L,align", [(1, 1, 1), (10, 4, 1), (100, 30, 1), (100, 100, 1), (101, 7, 1),
                                       (128, 32, 2), (130, 16, 2), (131, 16, 2), (64, 6, 2), (7, 2, 2)])
def test_chunks_cover_every_token_once_and_are_balanced(n, L, align):
    spans = chunk_spans(n, L, align)
    covered = [t for a, e in spans for t in range(a, e)]
    assert covered == list(range(n))                                 # contiguous, in order, each token once
    sizes = [e - a for a, e in spans]
    assert min(sizes) >= 1
    assert all(a % align == 0 for a, _ in spans)                     # no key cut from its value (align 2)
    assert max(sizes) - min(sizes) <= align + n % align              # balanced: no stub at the end
    assert all(s <= L for s in sizes[:-1]) and sizes[-1] <= L + n % align
    assert chunk_spans(10, 4) == [(0, 3), (3, 6), (6, 10)]           # 4 tokens a chunk → 3 chunks, not 4, 4, 2


# ----------------------------------------------------------------------------- speculative prefill

@pytest.mark.parametrize("preset", PRESETS)
def test_batched_left_padded_prefill_equals_each_chunk_alone(preset):
    model = tiny(preset)
    P, C, S = [1, 2], rand_tokens(50, 1), [3, 4, 5]
    states = speculative_prefill(model, P, C, S, 16)                 # 4 chunks of 12-13 tokens: padding
    assert len(states.groups) == 1 and [e - a for a, e in states.spans] == [12, 13, 12, 13]
    for i, (a, e) in enumerate(states.spans):
        head = P + C[a:e]
        alone, _ = model.prefill(torch.tensor([head + S]), prefix_len=len(head) if preset == "jrt-tiny" else None)
        torch.testing.assert_close(states.logits[i], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset", PRESETS)
def test_token_budget_changes_grouping_not_the_result(preset):
    model = tiny(preset)
    P, C, S = [1], rand_tokens(61, 2), [3, 4]
    big = speculative_prefill(model, P, C, S, 10)
    small = speculative_prefill(model, P, C, S, 10, max_batch_tokens=30)  # rows of ≤ 13 tokens: 2 per group
    one = speculative_prefill(model, P, C, S, 10, max_batch_tokens=1)     # a row longer than the budget runs alone
    assert (len(big.groups), len(small.groups), len(one.groups)) == (1, 4, 7)
    for other in (small, one):
        torch.testing.assert_close(other.logits, big.logits, rtol=1e-5, atol=1e-5)
    answers = [oprm_generate(model, P, C, S, 10, max_new_tokens=4, max_batch_tokens=m).answer for m in (10**6, 30, 1)]
    assert answers[0] == answers[1] == answers[2]


def test_a_chunk_is_prefilled_once_and_decoding_reads_only_its_state():
    lm = NeedleLM()
    C = [1] * 40
    C[27] = lm.needle
    r = oprm_generate(lm, [2], C, [3], 10, max_new_tokens=3)
    assert len(lm.rows) == 4                                         # b rows, nothing read twice
    assert lm.rows == [[2] + C[a:e] + [3] for a, e in r.spans]       # X_i = [P, C_i, S]


# ----------------------------------------------------------------------------- selection

@pytest.mark.parametrize("where", [0, 13, 39])
def test_the_chunk_holding_the_answer_is_selected(where):
    lm = NeedleLM()
    C = [1] * 40
    C[where] = lm.needle
    r = oprm_generate(lm, [], C, [3], 10, max_new_tokens=2)
    a, e = r.spans[r.chunk]
    assert a <= where < e and r.answer == [lm.answer] * 2
    assert r.scores[r.chunk] < r.scores.max()                        # the peaked chunk has the lowest entropy
    torch.testing.assert_close(r.scores, entropy(torch.stack([lm._logits(torch.tensor([a <= where < e]))[0]
                                                              for a, e in r.spans])))


def test_likelihood_selection_picks_the_chunk_under_which_the_question_is_likely():
    lm = NeedleLM(needle=5, answer=7)                                # after the needle, 7 is likely: ask "7"
    C = [1] * 30
    C[17] = 5
    r = oprm_generate(lm, [], C, [7], 10, selection="likelihood", max_new_tokens=1)
    assert r.spans[r.chunk] == (10, 20) and r.scores.argmax() == r.chunk


def test_idk_filter_and_its_fallback():
    lm = NeedleLM(idk=15)                                            # chunks without the needle say IDK, surely
    C = [1] * 40
    C[25] = lm.needle
    plain = oprm_generate(lm, [], C, [3], 10, max_new_tokens=1)
    assert plain.answer == [15]                                      # lowest entropy is a confident "not here"
    filtered = oprm_generate(lm, [], C, [3], 10, idk_token=15, max_new_tokens=1)
    assert filtered.answer == [lm.answer] and filtered.kept.tolist() == [False, False, True, False]
    nowhere = oprm_generate(lm, [], [1] * 40, [3], 10, idk_token=15, max_new_tokens=1)
    assert not nowhere.kept.any() and nowhere.answer == [15]         # all dropped: fall back to lowest entropy
    assert nowhere.chunk == int(nowhere.entropy.argmin())


# ----------------------------------------------------------------------------- cache and modes

@pytest.mark.parametrize("preset", PRESETS)
def test_cached_context_answers_equal_uncached_ones(preset):
    model = tiny(preset)
    P, C = [1, 2], rand_tokens(45, 3)
    cache = cache_context(model, P, C, 12)
    for S in ([3, 4, 5], [6]):                                       # several questions, one reading of the context
        for selection in ("entropy", "likelihood"):
            kw = dict(selection=selection, max_new_tokens=3)
            fresh, cached = oprm_generate(model, P, C, S, 12, **kw), oprm_generate(model, P, C, S, 12, cache=cache, **kw)
            assert (cached.answer, cached.chunk) == (fresh.answer, fresh.chunk)
            torch.testing.assert_close(cached.scores, fresh.scores, rtol=1e-5, atol=1e-5)


def test_cache_reads_the_context_once_and_only_the_suffix_per_question():
    lm = NeedleLM()
    C = [1] * 40
    C[3] = lm.needle
    cache = cache_context(lm, [2], C, 10)
    for _ in range(3):
        assert oprm_generate(lm, [2], C, [3, 4], 10, cache=cache, max_new_tokens=1).chunk == 0
    assert len(lm.rows) == 4                                         # the 4 chunks, once


def test_summarize_mode_decodes_every_chunk():
    model = tiny("based-tiny")
    P, C, S = [1], rand_tokens(40, 4), [2, 3]
    r = oprm_generate(model, P, C, S, 10, mode="summarize", max_new_tokens=3, join=[63])
    assert r.chunk == -1 and len(r.answers) == 4 and all(len(a) == 3 for a in r.answers)
    assert r.answer == r.answers[0] + [63] + r.answers[1] + [63] + r.answers[2] + [63] + r.answers[3]
    for (a, e), ans in zip(r.spans, r.answers):                      # each is that chunk's own greedy answer
        alone = model.generate(torch.tensor([P + C[a:e] + S]), 3, temperature=0)
        assert alone[0, -3:].tolist() == ans


def test_last_mode_reads_only_the_last_chunk():
    lm = NeedleLM()
    C = [1] * 40
    C[35] = lm.needle
    r = oprm_generate(lm, [2], C, [3], 8, mode="last", max_new_tokens=1)
    assert lm.rows == [[2] + C[-8:] + [3]] and r.answer == [lm.answer]


def test_read_twice_and_chunk_prefix_options():
    lm = NeedleLM()
    oprm_generate(lm, [2], [1] * 20, [3], 10, read_twice=True, max_new_tokens=1)
    assert lm.rows == [[2] + [1] * 10 + [3] + [1] * 10 + [3]] * 2   # X_i = [P, C_i, S, C_i, S]
    model = tiny("jrt-tiny")                                         # JRT-RNN: [P, C_i] is the prefix of each row
    P, C, S = [1], rand_tokens(30, 5), [2, 3]
    on = speculative_prefill(model, P, C, S, 10)
    off = speculative_prefill(ModelLM(model, prefix_len=0), P, C, S, 10)
    for i, (a, e) in enumerate(on.spans):
        ref = model.prefill(torch.tensor([P + C[a:e] + S]), prefix_len=1 + e - a)[0][0].float()
        torch.testing.assert_close(on.logits[i], ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(on.logits, off.logits)


# ----------------------------------------------------------------------------- bad input

def test_bad_inputs_say_what_is_allowed():
    lm = NeedleLM()
    cases = [
        (dict(context=[]), "context"),
        (dict(chunk_len=0), r"chunk_len=0.*\[1, len\(context\) = 20\]"),
        (dict(chunk_len=-3), "chunk_len=-3"),
        (dict(chunk_len=21), "chunk_len=21"),
        (dict(chunk_len=2.5), "chunk_len=2.5"),
        (dict(idk_token=16), r"idk_token=16.*\[0, vocab_size = 16\)"),
        (dict(idk_token=-1), "idk_token=-1"),
        (dict(context=[1] * 19 + [99]), r"context: token id 99.*\[0, vocab_size=16\)"),
        (dict(suffix=[3.0]), "suffix=.*ints"),
        (dict(selection="max"), "selection='max'"),
        (dict(mode="all"), "mode='all'"),
        (dict(selection="likelihood", suffix=[]), "suffix"),
        (dict(max_new_tokens=0), "max_new_tokens=0"),
        (dict(max_batch_tokens=0), "max_batch_tokens=0"),
        (dict(pad_id=16), r"pad_id=16: expected a token id in \[0, vocab_size = 16\)"),
        (dict(pad_id=-1), "pad_id=-1"),
    ]
    for kw, msg in cases:
        args = dict(prefix=[2], context=[1] * 20, suffix=[3], chunk_len=5) | kw
        with pytest.raises(ValueError, match=msg):
            oprm_generate(lm, **args)
    lm.max_seq_len = 12                                              # a model with a length limit
    with pytest.raises(ValueError, match=r"suffix=.* = 14 tokens.*max_seq_len = 12"):
        oprm_generate(lm, [2], [1] * 20, [3] * 8, 5)                 # 1 + 5 + 8 = 14 > 12
    assert oprm_generate(lm, [2], [1] * 20, [3] * 6, 5, max_new_tokens=1).answer == [0]   # 12 fits
    with pytest.raises(ValueError, match="chunk_prefix"):            # JRT-RNN's prefix needs pla layers
        oprm_generate(tiny("transformer-tiny"), [], [1] * 20, [3], 5, chunk_prefix=True)
    cache = cache_context(NeedleLM(), [2], [1] * 20, 5)
    with pytest.raises(ValueError, match="cache"):
        oprm_generate(NeedleLM(), [2], [1] * 19 + [4], [3], 5, cache=cache)
    with pytest.raises(ValueError, match="read_twice"):
        oprm_generate(NeedleLM(), [2], [1] * 20, [3], 5, cache=cache, read_twice=True)


def test_cli_bad_input_is_one_line_naming_what_is_wrong(tmp_path, capsys):
    from dataclasses import asdict

    from evaluate import main
    model = tiny("jrt-tiny")
    text = tmp_path / "text.pt"
    torch.save(dict(model=model.state_dict(), model_args=asdict(model.config), config=dict(task="text")), text)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 10)
    cases = [((), r"--task mqar_long needs --ckpt.*python experiments.py overflow --quick --models based"),
             (("--ckpt", str(tmp_path / "absent.pt")), r"absent.pt"),
             (("--ckpt", str(junk)), r"junk.pt"),
             (("--ckpt", str(text)), r"needs a checkpoint trained on MQAR.*task='text'"),
             (("--ckpt", str(text), "--n", "0"), r"--n=0: expected positive ints"),
             (("--ckpt", str(text), "--chunk_len", "8,x"), r"--chunk_len=8,x"),
             (("--ckpt", str(text), "--device", "cuda:9" if torch.cuda.is_available() else "cuda"), r"device='cuda"),
             (("--task", "nope.jsonl"), r"needs --hf NAME")]
    rows, latin = tmp_path / "rows.jsonl", tmp_path / "latin.jsonl"
    rows.write_text('{"context": "c", "input": "q", "answers": ["a"]}\n')
    latin.write_bytes('{"context": "caf\u00e9", "input": "q", "answers": ["a"]}\n'.encode("latin-1"))
    (tmp_path / "bad.json").write_text("{oops")
    cases += [(("--hf", "x/y", "--task", str(latin)), r"latin.jsonl line 1: not UTF-8 text"),
              (("--hf", "x/y", "--task", str(rows), "--prompts", str(tmp_path / "bad.json")),
               r"--prompts .*bad.json: not valid JSON"),
              (("--hf", "x/y", "--task", str(rows), "--prompts", str(tmp_path / "no.json")),
               r"--prompts .*no such file"),
              (("--ckpt", str(text), "--out", str(tmp_path)), r"--out .*: is a folder")]
    for argv, msg in cases:
        with pytest.raises(SystemExit) as e:
            main(["oprm", *argv])
        err = capsys.readouterr().err
        assert e.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, (argv, err)
        assert re.search(msg, err), (argv, err)


def test_cli_out_creates_its_folder_first(tmp_path, capsys):
    from dataclasses import asdict

    from evaluate import main
    model = tiny("based-tiny")
    ckpt = tmp_path / "mqar.pt"
    config = dict(task="mqar", vocab_size=64, seq_len=24, num_pairs=4, context_len=16, model="tiny")
    torch.save(dict(model=model.state_dict(), model_args=asdict(model.config), config=config), ckpt)
    out = tmp_path / "new" / "acc.md"
    main(["oprm", "--ckpt", str(ckpt), "--num_pairs", "4", "--chunk_len", "8", "--n", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "| tiny | 4 | 8 |" in printed and out.read_text() == printed


def test_f1_score():
    from evaluate import f1_score
    assert f1_score("The Red door", ["red door"]) == 1.0                 # case, articles, punctuation ignored
    assert f1_score("red, blue", ["red"]) == pytest.approx(2 / 3)        # precision 1/2, recall 1
    assert f1_score("green", ["red", "green light"]) == pytest.approx(2 / 3)  # the best gold answer
    assert f1_score("", ["red"]) == 0.0


def test_mqar_long_default_pairs_fit_context_and_vocabulary():
    from evaluate import default_pairs
    import data
    assert default_pairs(4, 32, 64) == [1, 2, 4, 6, 8, 16]     # trained with 4 pairs in 32 tokens
    assert default_pairs(16, 64, 64) == [4, 8, 16, 24]         # 32 pairs would need 32 keys in [1, 32)
    for k in default_pairs(16, 64, 64):                        # every default is a task data.mqar can build
        data.mqar(2, vocab_size=64, seq_len=80, num_pairs=k, num_queries=min(k, 8), context_len=64)
