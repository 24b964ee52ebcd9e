"""hf.py: Hugging Face causal LMs (GPT-2, Llama, the Mamba family) behind the interface, on tiny random
models built here (no download): left-padded batched prefill equals each prompt alone, steps and row
selection match full forward passes and leave the cache they are given alone, OPRM runs end to end, and
families that cannot keep pads out of their state are refused."""
import json

import pytest
import torch

pytest.importorskip("transformers", reason="optional extra (requirements-extra.txt)")

import data  # noqa: E402
import hf  # noqa: E402

transformers = hf.import_transformers("the tests")
from chunked import oprm_generate, speculative_prefill  # noqa: E402
from evaluate import main as evaluate_main  # noqa: E402
from hf import HFLM  # noqa: E402
from lm import greedy, map_tensors  # noqa: E402

V = 64


TINY = {  # family: (config class, model class, settings): two layers of width 16 or 32
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",                                # learned positions
             dict(n_embd=16, n_layer=2, n_head=2, n_positions=128, bos_token_id=0, eos_token_id=0)),
    "llama": ("LlamaConfig", "LlamaForCausalLM",                             # rotary, grouped-query attention
              dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=1, bos_token_id=0, eos_token_id=0)),
    "rwkv": ("RwkvConfig", "RwkvForCausalLM",
             dict(hidden_size=16, num_hidden_layers=2, attention_hidden_size=16, intermediate_size=32,
                  context_length=64)),
    "mamba": ("MambaConfig", "MambaForCausalLM",
              dict(hidden_size=16, state_size=4, num_hidden_layers=2, conv_kernel=3)),
    "falcon_mamba": ("FalconMambaConfig", "FalconMambaForCausalLM",
                     dict(hidden_size=16, state_size=4, num_hidden_layers=2, conv_kernel=3)),
    "mamba2": ("Mamba2Config", "Mamba2ForCausalLM",
               dict(hidden_size=32, state_size=8, num_hidden_layers=2, conv_kernel=3, num_heads=4,
                    head_dim=16, n_groups=1, expand=2, chunk_size=8)),
}


def tiny(family, seed=0, vocab=V):
    torch.manual_seed(seed)
    config, model, settings = TINY[family]
    model = getattr(transformers, model)(getattr(transformers, config)(vocab_size=vocab, **settings))
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20)                     # varied greedy outputs
    return model.eval()


def full_greedy(model, prompt, n):
    """Greedy decoding by full forward passes over the whole sequence: the reference."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt):]


FAMILIES = ["gpt2", "llama", "mamba", "falcon_mamba", "mamba2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_left_padded_prefill_equals_one_by_one(family):
    model = tiny(family)
    lm = HFLM(model)
    assert lm.mode == "cache" and lm.supports_padding and lm.vocab_size == V
    prompts = [[3, 4, 5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17, 18]]
    with torch.no_grad():                                                # a padded row: the model alone
        alone = model(torch.tensor([prompts[1]])).logits[0, -1]
    torch.testing.assert_close(lm.prefill(*hf_left_pad(prompts))[0][1], alone, rtol=1e-4, atol=1e-4)
    idx, pad = hf_left_pad(prompts)
    logits, cache = lm.prefill(idx, pad_mask=pad)
    nxt = torch.tensor([20, 21, 22])
    for t in range(4):                                                   # the pads stayed out of every state
        for b, p in enumerate(prompts):
            alone, c1 = lm.prefill(torch.tensor([p]))
            for tok in [20, 21, 22][b:b + 1] * t:
                alone, c1 = lm.step(torch.tensor([tok]), c1)
            torch.testing.assert_close(logits[b], alone[0], rtol=1e-4, atol=1e-4)
        logits, cache = lm.step(nxt, cache)
    sub = lm.select(cache, torch.tensor([2, 0]))                         # rows leave; the rest go on
    l_sub, _ = lm.step(nxt[[2, 0]], sub)
    l_all, _ = lm.step(nxt, cache)
    torch.testing.assert_close(l_sub, l_all[[2, 0]], rtol=1e-5, atol=1e-5)


def hf_left_pad(prompts):
    from lm import left_pad
    return left_pad(prompts)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_through_the_cache_equals_full_forward(family):
    model = tiny(family)
    prompts = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]
    ref = [full_greedy(model, p, 6) for p in prompts]
    assert greedy(HFLM(model), prompts, max_new_tokens=6, batch_size=3) == ref   # left-padded, cache steps
    assert greedy(HFLM(model, mode="rerun"), prompts, max_new_tokens=6, batch_size=3) == ref
    stop = ref[0][2]
    got = greedy(HFLM(model), prompts, max_new_tokens=6, stop={stop}, batch_size=3)  # rows leave via select
    assert got == [r[:r.index(stop)] if stop in r else r for r in ref]


@pytest.mark.parametrize("family", ["llama", "mamba", "mamba2"])
def test_oprm_end_to_end_on_a_hf_model(family):
    model = tiny(family)
    lm = HFLM(model)
    g = torch.Generator().manual_seed(0)
    P, C, S = [1, 2], torch.randint(3, V, (45,), generator=g).tolist(), [5, 6]
    states = speculative_prefill(lm, P, C, S, 12)                        # 4 chunks of 11-12 tokens: padding
    assert len(states.groups) == 1
    for i, (a, e) in enumerate(states.spans):
        with torch.no_grad():
            alone = model(torch.tensor([P + C[a:e] + S])).logits[0, -1]
        torch.testing.assert_close(states.logits[i], alone, rtol=1e-4, atol=1e-4)
    for selection in ("entropy", "likelihood"):
        r = oprm_generate(lm, P, C, S, 12, selection=selection, max_new_tokens=4)
        a, e = r.spans[r.chunk]
        assert r.answer == full_greedy(model, P + C[a:e] + S, 4)        # from that chunk's state alone
    summ = oprm_generate(lm, P, C, S, 12, mode="summarize", max_new_tokens=3)
    assert summ.answers == [full_greedy(model, P + C[a:e] + S, 3) for a, e in summ.spans]


def snapshot(obj):
    """Every tensor reachable from a cache, cloned, in a fixed order."""
    out = []
    map_tensors(obj, lambda t: out.append(t.clone()) or t)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_step_and_select_leave_the_cache_they_are_given_alone(family):
    lm = HFLM(tiny(family))
    idx, pad = hf_left_pad([[3, 4, 5, 6], [7, 8]])
    _, cache = lm.prefill(idx, pad_mask=pad)
    before = snapshot(cache)
    first, _ = lm.step(torch.tensor([9, 10]), cache)
    lm.select(cache, [1])
    again, _ = lm.step(torch.tensor([9, 10]), cache)                     # the same cache, used twice
    after = snapshot(cache)
    assert len(after) == len(before) > 2 and all(torch.equal(a, b) for a, b in zip(after, before))
    torch.testing.assert_close(again, first, rtol=0, atol=0)


def test_a_learned_position_table_is_not_read_past_its_end():
    lm = HFLM(tiny("gpt2"))                                              # n_positions = 128
    _, cache = lm.prefill(torch.ones(2, 128, dtype=torch.long))
    with pytest.raises(ValueError, match=r"need 129 positions, but this 'gpt2' model has n_positions = 128"):
        lm.step(torch.tensor([1, 2]), cache)


def test_families_that_cannot_keep_pads_out_are_refused():
    rwkv = tiny("rwkv")
    with pytest.raises(ValueError, match=r"'rwkv' model cannot be decoded.*supported: Transformers with a KV "
                                         r"cache "
                                         r"\(GPT-2, Llama, ...\), mamba, falcon_mamba, mamba2"):
        HFLM(rwkv, mode="cache")
    rerun = HFLM(rwkv)                                                   # JRT-Prompt still works, unpadded
    assert rerun.mode == "rerun" and not rerun.supports_padding
    prompts = [[3, 4, 5], [6, 7, 8]]
    want = [full_greedy(rwkv, p, 3) for p in prompts]
    assert greedy(rerun, prompts, max_new_tokens=3, batch_size=2) == want
    with pytest.raises(ValueError, match=r"cannot keep left pads out of its state.*supported: Transformers"):
        oprm_generate(rerun, [1], [2] * 20, [3], 5)


def test_oprm_cli_on_a_hf_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hf, "load", lambda name, device, mode="auto": (HFLM(tiny("mamba", vocab=258), mode),
                                                                       data.get_tokenizer("bytes")))
    rows = [{"context": "The key is blue. " * 6 + "The door is red.", "input": "What colour is the door?",
             "answers": ["red"]}, {"context": "Ships sail. " * 10, "input": "Who sails?", "answers": "Ships",
                                   "kind": "fewshot"}]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))

    def cli(*argv):
        try:
            evaluate_main(["oprm", *argv])
            code = 0
        except SystemExit as e:
            code = e.code
        return (code, *capsys.readouterr())
    code, out, err = cli("--hf", "tiny", "--task", str(path), "--chunk_len", "40,80", "--max_new_tokens", "3")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("| task | n | L | full context F1 | OPRM F1 |") and len(lines) == 4
    assert lines[2].startswith("| rows.jsonl | 2 | 40 |") and lines[3].startswith("| rows.jsonl | 2 | 80 |")
    bad = tmp_path / "bad.jsonl"
    for body, msg in [('{"context": "c", "input": "q"}', "line 1: missing field 'answers'"),
                      ("{oops", "line 1: not valid JSON"), ("", "no rows"),
                      ('{"context": "c", "input": "q", "answers": ["a"], "kind": "poem"}', "kind='poem'")]:
        bad.write_text(body)
        code, out, err = cli("--hf", "tiny", "--task", str(bad))
        assert code == 2 and err.startswith("error: ") and msg in err, err
    for argv, msg in [(("--hf", "tiny", "--task", "longbench:nope"), "unknown LongBench set"),
                      (("--task", str(path)), "needs --hf NAME"),
                      (("--hf", "tiny", "--task", "mqar_long"), "--task mqar_long needs --ckpt"),
                      (("--hf", "tiny", "--task", str(path), "--chunk_len", "0"), "--chunk_len=0"),
                      (("--hf", "tiny", "--task", str(path), "--n", "-1"), "--n=-1")]:
        code, out, err = cli(*argv)
        assert code == 2 and msg in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_text_parts_follow_the_longbench_layout():
    from chunked import IDK_SENTENCE, KINDS, text_parts
    tok = data.get_tokenizer("bytes")
    P, C, S = text_parts(KINDS["qa"][0], {"context": "CTX", "input": "Q?"}, "qa", tok)
    assert tok.decode(C) == "CTX" and tok.decode(P).endswith("\n\n")
    assert tok.decode(S) == f"\n\nQuestion: Q? {IDK_SENTENCE}\nAnswer:"     # the IDK sentence on QA sets only
    _, _, S = text_parts(KINDS["summary"][0], {"context": "CTX", "input": ""}, "summary", tok)
    assert IDK_SENTENCE not in tok.decode(S)
    with pytest.raises(ValueError, match="exactly one"):
        text_parts("no slot", {"context": "c"}, "qa", tok)


def test_text_rows_answer_from_the_full_context_and_from_the_chosen_chunk():
    from chunked import KINDS, text_parts, text_rows
    tok = data.get_tokenizer("bytes")
    model = tiny("mamba", vocab=258)
    row = {"context": "The key is blue. " * 4 + "The door is red.", "input": "Door?", "answers": ["red"]}
    P, C, S = text_parts(KINDS["qa"][0], row, "qa", tok)
    (_, full, oprm), = text_rows(HFLM(model), tok, [row], chunk_lens=[30], max_new_tokens=4)
    assert full == tok.decode(full_greedy(model, P + C + S, 4))       # one chunk = ordinary greedy decoding
    r = oprm_generate(HFLM(model), P, C, S, 30, idk_token=tok.encode_ordinary("Error")[0], max_new_tokens=4)
    a, e = r.spans[r.chunk]
    assert oprm[30] == tok.decode(full_greedy(model, P + C[a:e] + S, 4))



def test_evaluate_cli_runs_a_saved_transformer_from_the_repository_root(tmp_path):
    """`python evaluate.py prompt --hf DIR` puts the repository first on sys.path, where our kernels.py would stand in
    for the `kernels` package transformers imports: the command must still load and decode the model."""
    import os
    import subprocess
    import sys
    tokenizers = pytest.importorskip("tokenizers")
    words = ["[UNK]", "[PAD]", "the", "door", "is", "red", "key", "blue", "colour", ":", "of"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    folder = tmp_path / "tiny-gpt2"
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.save_pretrained(folder)
    tiny("gpt2", vocab=len(words)).save_pretrained(folder)
    rows = tmp_path / "rows.jsonl"
    row = {"kind": "qa", "cloze": "the door is", "answers": ["red"]}
    rows.write_text("\n".join(json.dumps({**row, "context": c})
                              for c in ("the door is red", "the key is blue the door is red")))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    argv = [sys.executable, "evaluate.py", "prompt", "--hf", str(folder), "--task", str(rows), "--device", "cpu"]
    r = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.splitlines()[2].startswith("| task | 2 | "), r.stdout            # both rows decoded
