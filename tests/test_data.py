"""Generators (MQAR, set disjointness) and text (bytes tokenizer, memmap, gpt2 offline error)."""
import os

import numpy as np
import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry
import torch

import data


def kv_lookup(x_row, C):
    """{key: value} of one pass's context region x_row[:C], read back from the input."""
    return {int(x_row[i]): int(x_row[i + 1]) for i in range(0, C, 2) if x_row[i] != 0}


def test_mqar_shapes_labels_and_distinct_pairs():
    V, T, k = 512, 128, 8
    ex = data.mqar(64, vocab_size=V, seq_len=T, num_pairs=k)
    assert ex.x.shape == ex.y.shape == ex.pad.shape == (64, T) and len(ex) == 64
    assert ex.x.dtype == ex.y.dtype == ex.prefix_len.dtype == torch.int64 and not ex.pad.any()
    assert (ex.prefix_len == 2 * k).all() and ex.vocab_size == V
    for x, y in zip(ex.x, ex.y):
        keys, values = x[0:2 * k:2], x[1:2 * k:2]
        assert len(set(keys.tolist())) == k and len(set(values.tolist())) == k
        assert ((keys >= 1) & (keys < V // 2)).all() and ((values >= V // 2) & (values < V - 1)).all()
        pairs = kv_lookup(x, 2 * k)
        (pos,) = torch.nonzero(y != -100, as_tuple=True)
        assert len(pos) == k and (pos >= 2 * k).all() and ((pos - 2 * k) % 2 == 0).all()
        assert sorted(x[pos].tolist()) == sorted(pairs)                  # every key queried once
        assert all(int(y[p]) == pairs[int(x[p])] for p in pos)           # label = the value paired with the key
        assert (x[pos + 1] == 0).all()                                   # the value is never shown after the key
        rest = torch.ones(T, dtype=torch.bool)
        rest[:2 * k] = False
        rest[pos] = False
        assert (x[rest] == 0).all()                                      # filler everywhere else


def test_mqar_queries_bunch_early():
    ex = data.mqar(2000, vocab_size=512, seq_len=128, num_pairs=8)
    scored = (ex.y != -100)[:, 16::2].float().mean(0)                   # (S,) how often each query slot is used
    assert scored[:4].mean() > 2 * scored[-4:].mean()


def test_mqar_seeds_reproducible_and_splits_disjoint():
    a = data.mqar(200, vocab_size=512, seq_len=64, num_pairs=4, seed=3)
    b = data.mqar(200, vocab_size=512, seq_len=64, num_pairs=4, seed=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    other = data.mqar(200, vocab_size=512, seq_len=64, num_pairs=4, seed=4)
    test = data.mqar(200, vocab_size=512, seq_len=64, num_pairs=4, seed=3, split="test")
    assert not torch.equal(a.x, other.x) and not torch.equal(a.x, test.x)
    assert not set(map(tuple, a.x.tolist())) & set(map(tuple, test.x.tolist()))


def test_mqar_read_twice_scores_only_the_last_query_block():
    T, k = 128, 8
    ex = data.mqar(32, vocab_size=512, seq_len=T, num_pairs=k, read_twice=True)
    P = T // 2
    assert torch.equal(ex.x[:, :P], ex.x[:, P:])                          # kv, queries, kv, queries
    assert (ex.y[:, :P] == -100).all() and ((ex.y[:, P:] != -100).sum(1) == k).all()
    assert (ex.prefix_len == P + 2 * k).all()                             # everything before the scored block
    for x, y in zip(ex.x, ex.y):
        pairs = kv_lookup(x[P:], 2 * k)
        (pos,) = torch.nonzero(y != -100, as_tuple=True)
        assert (pos >= P + 2 * k).all() and all(int(y[p]) == pairs[int(x[p])] for p in pos)


def test_mqar_idk_queries_ask_for_absent_keys():
    V, k = 512, 8
    ex = data.mqar(200, vocab_size=V, seq_len=128, num_pairs=k, idk_frac=0.5)
    idk = data.idk_token(V)
    n_idk = 0
    for x, y in zip(ex.x, ex.y):
        pairs = kv_lookup(x, 2 * k)
        assert idk not in pairs.values()
        (pos,) = torch.nonzero(y != -100, as_tuple=True)
        assert len(set(x[pos].tolist())) == k                           # queried keys distinct
        for p in pos.tolist():
            key, target = int(x[p]), int(y[p])
            assert 1 <= key < V // 2
            assert target == (pairs[key] if key in pairs else idk)
            n_idk += key not in pairs
    assert 0.4 < n_idk / (200 * k) < 0.6
    all_idk = data.mqar(50, vocab_size=V, seq_len=128, num_pairs=k, idk_frac=1.0)
    assert (all_idk.y[all_idk.y != -100] == idk).all()


def test_mqar_context_length_independent_of_pairs():
    C = 200
    ex = data.mqar(300, vocab_size=512, seq_len=256, num_pairs=2, num_queries=1, context_len=C)
    assert (ex.prefix_len == C).all() and ((ex.y != -100).sum(1) == 1).all()
    ctx = ex.x[:, :C]
    assert ((ctx != 0).sum(1) == 4).all()                                  # 2 pairs, filler between
    key_pos = torch.nonzero((ctx > 0) & (ctx < 256))[:, 1]
    assert (key_pos % 2 == 0).all() and len(set(key_pos.tolist())) > 50  # spread over the context
    for x, y in zip(ex.x, ex.y):
        (p,) = torch.nonzero(y != -100, as_tuple=True)[0].tolist()
        assert p >= C and int(y[p]) == kv_lookup(x, C)[int(x[p])]


def test_disjoint_sets_one_shared_token_is_the_target():
    shapes = [(4, 16), (16, 4), (1, 32)]
    ex = data.disjoint_sets(50, shapes=shapes)
    T = 1 + 32 + 3
    assert ex.x.shape == (150, T) and (ex.prefix_len == T).all() and ex.vocab_size == 2048
    assert ex.groups == ["|A|=4 |B|=16", "|A|=16 |B|=4", "|A|=1 |B|=32"]
    assert ((ex.y != -100).sum(1) == 1).all() and (ex.y[:, :-1] == -100).all()
    for x, y, pad, g in zip(ex.x, ex.y, ex.pad, ex.group):
        a, b = shapes[g]
        L = a + b + 3
        assert (pad == (torch.arange(T) < T - L)).all() and (x[pad] == data.SD_MASK).all()
        row = x[T - L:]
        assert row[0] == data.SD_START and row[a + 1] == data.SD_SEP and row[-1] == data.SD_CUE
        A, B = set(row[1:a + 1].tolist()), set(row[a + 2:-1].tolist())
        assert len(A) == a and len(B) == b and A & B == {int(y[-1])}
        assert max(A) < 4 + 1022 and min(B - A) >= 4 + 1022              # A and B from different halves
    free = data.disjoint_sets(50, shapes=[(8, 8)], halves=False)
    for x, y in zip(free.x, free.y):
        assert set(x[1:9].tolist()) & set(x[10:18].tolist()) == {int(y[-1])}


def test_disjoint_sets_mixtures_have_both_orders():
    for shapes in (data.SD_TRAIN_SHAPES, data.SD_TEST_SHAPES):
        assert all((b, a) in shapes for a, b in shapes)
    assert set(data.SD_TRAIN_SHAPES) < set(data.SD_TEST_SHAPES) and len(data.SD_TRAIN_SHAPES) == 12
    a = data.disjoint_sets(20, shapes=[(4, 16)], seed=1)
    assert torch.equal(a.x, data.disjoint_sets(20, shapes=[(4, 16)], seed=1).x)
    assert not torch.equal(a.x, data.disjoint_sets(20, shapes=[(4, 16)], seed=1, split="test").x)


def test_bytes_tokenizer_round_trips_any_utf8():
    enc = data.get_tokenizer("bytes")
    rng = np.random.default_rng(0)
    code_points = np.concatenate([rng.integers(0, 0xD800, 500), rng.integers(0xE000, 0x110000, 500)])
    texts = ["", "hello\n\tworld\x00", "héllo wörld — 你好, мир 🙂👍🏽", "".join(map(chr, code_points))]
    for s in texts:
        ids = enc.encode_ordinary(s)
        assert ids == list(s.encode("utf-8")) and enc.decode(ids) == s
    assert enc.n_vocab == data.TEXT_VOCAB["bytes"][0]


def test_text_memmap_written_once_and_reused(tmp_path, monkeypatch):
    src = tmp_path / "tiny.txt"
    src.write_text("Just read twice. Ünïcödé too. " * 100, encoding="utf-8")
    td = data.text(str(src), tokenizer="bytes")
    assert td.bin_path == str(src) + ".bytes.bin" and os.path.exists(td.bin_path)
    tokens = np.fromfile(td.bin_path, dtype=np.uint16)
    assert bytes(tokens.astype(np.uint8)).decode("utf-8") == src.read_text(encoding="utf-8")
    assert td.n_train + td.n_val == len(tokens) and td.n_val == int(0.1 * len(tokens))
    x, y = td.get_batch("train", 4, 16, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    xv, _ = td.get_batch("val", 2, 8)
    assert xv.shape == (2, 8)

    def no_tokenizing(name):
        raise AssertionError("the .bin file should have been reused")
    monkeypatch.setattr(data, "get_tokenizer", no_tokenizing)
    mtime = os.path.getmtime(td.bin_path)
    assert data.text(str(src), tokenizer="bytes") == td and os.path.getmtime(td.bin_path) == mtime
    monkeypatch.undo()
    src.write_text("changed", encoding="utf-8")                             # a newer source is tokenised again
    os.utime(src, (mtime + 10, mtime + 10))
    assert data.text(str(src), tokenizer="bytes").n_train + data.text(str(src), tokenizer="bytes").n_val == 7


def test_gpt2_offline_gives_a_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))
    monkeypatch.setattr(tiktoken.load, "read_file", offline)               # never touch the network
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})                # forget a gpt2 loaded earlier
    with pytest.raises(RuntimeError, match="TIKTOKEN_CACHE_DIR") as err:
        data.get_tokenizer("gpt2")
    assert "--tokenizer=bytes" in str(err.value) and "internet" in str(err.value)
    src = tmp_path / "t.txt"
    src.write_text("hello", encoding="utf-8")
    with pytest.raises(RuntimeError, match="bytes"):
        data.text(str(src), tokenizer="gpt2")


@pytest.mark.parametrize("call, name", [
    (lambda: data.mqar(4, seq_len=30, num_pairs=16), "seq_len"),
    (lambda: data.mqar(4, seq_len=65), "seq_len"),
    (lambda: data.mqar(4, seq_len=66, num_pairs=4, read_twice=True), "seq_len"),
    (lambda: data.mqar(4, vocab_size=20, num_pairs=16), "vocab_size"),
    (lambda: data.mqar(4, num_pairs=0), "num_pairs"),
    (lambda: data.mqar(4, num_pairs=4, num_queries=5), "num_queries"),
    (lambda: data.mqar(4, num_pairs=4, context_len=7), "context_len"),
    (lambda: data.mqar(4, idk_frac=1.5), "idk_frac"),
    (lambda: data.mqar(4, split="val"), "split"),
    (lambda: data.disjoint_sets(4, shapes=[(0, 4)]), "shapes"),
    (lambda: data.disjoint_sets(4, shapes=[(2000, 4)]), "shapes"),
    (lambda: data.get_tokenizer("llama"), "tokenizer"),
    (lambda: data.text("x.txt", tokenizer="bytes", val_frac=0.0), "val_frac"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=f"^{name}="):
        call()
