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


def sets(ex, shapes):
    """Per row: (A, B, answer) read back from the input."""
    T = ex.x.shape[1]
    for x, y, g in zip(ex.x, ex.y, ex.group):
        a, b = shapes[g]
        row = x[T - (a + b + 3):]
        yield set(row[1:a + 1].tolist()), set(row[a + 2:-1].tolist()), int(y[-1])


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
    for (A, B, answer), g in zip(sets(ex, shapes), ex.group):
        assert (len(A), len(B)) == shapes[g] and A & B == {answer} and min(A | B) >= 4 and max(A | B) < 2048


def test_disjoint_sets_default_is_a_fresh_split_without_the_halves_shortcut():
    shapes = [(8, 8)]
    rows = list(sets(data.disjoint_sets(400, shapes=shapes, seed=2), shapes))
    assert all(len(A) == 8 and len(B) == 8 and A & B == {ans} for A, B, ans in rows)
    H = 4 + 1022                                                     # where fixed halves of the ids would meet
    assert any(max(A) >= H for A, _, _ in rows) and any(min(B) < H for _, B, _ in rows)
    smallest = sum(ans == min(B) for _, B, ans in rows) / len(rows)  # by chance: 1 in |B| = 8
    assert 0.05 < smallest < 0.25, smallest
    # the shortcut layout, only on request: the answer is then always B's smallest token
    halves = list(sets(data.disjoint_sets(100, shapes=shapes, halves=True), shapes))
    assert all(max(A) < H and min(B - A) >= H and ans == min(B) for A, B, ans in halves)
    assert data.disjoint_sets.__kwdefaults__["halves"] is False


def test_mqar_random_filler_keeps_the_task_and_fills_the_gaps():
    opts = dict(vocab_size=64, seq_len=64, num_pairs=4, context_len=16, seed=5)
    zero, rand = data.mqar(300, **opts), data.mqar(300, random_filler=True, **opts)
    assert torch.equal(zero.y, rand.y) and torch.equal(zero.prefix_len, rand.prefix_len)
    real = zero.x != 0                                               # pairs and queries: unchanged
    assert torch.equal(rand.x[real], zero.x[real])
    filler = rand.x[~real]                                           # between pairs (context_len > 2k) and queries
    assert len(filler) > 300 * 30 and filler.max() < 63 and set(filler.tolist()) == set(range(63))
    assert data.mqar.__kwdefaults__["random_filler"] is False        # filler 0 stays the default
    twice = data.mqar(50, random_filler=True, read_twice=True, **opts)
    assert torch.equal(twice.x[:, :32], twice.x[:, 32:])             # the same prompt, shown twice


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


def test_text_cache_follows_the_content_not_the_mtime(tmp_path):
    """A file replaced by other text with an older mtime (`cp -p`, `touch -d`) is tokenised again."""
    src = tmp_path / "tiny.txt"
    src.write_text("first text, " * 50, encoding="utf-8")
    old = data.text(str(src), tokenizer="bytes")
    src.write_text("second, other text: " * 50, encoding="utf-8")
    os.utime(src, (1e9, 1e9))                                                # 2001: older than the cache
    new = data.text(str(src), tokenizer="bytes")
    tokens = np.fromfile(new.bin_path, dtype=np.uint16)
    assert bytes(tokens.astype(np.uint8)).decode("utf-8") == "second, other text: " * 50
    assert new.n_train + new.n_val == 1000 != old.n_train + old.n_val


def test_text_that_is_not_utf8_names_the_file_and_the_parameter(tmp_path):
    src = tmp_path / "latin1.txt"
    src.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(ValueError, match=rf"^data_path='{src}': not UTF-8 text \(invalid continuation byte "
                                         r"at byte 3\); the text task needs a UTF-8 file"):
        data.text(str(src), tokenizer="bytes")
    with pytest.raises(ValueError, match=r"^data_path='.*missing.txt': not found; expected a UTF-8 text"):
        data.text(str(tmp_path / "missing.txt"), tokenizer="bytes")


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
    (lambda: data.disjoint_sets(4, shapes=[(2000, 45)]), "shapes"),
    (lambda: data.disjoint_sets(4, shapes=[(2000, 4)], halves=True), "shapes"),
    (lambda: data.get_tokenizer("llama"), "tokenizer"),
    (lambda: data.text("x.txt", tokenizer="bytes", val_frac=0.0), "val_frac"),
])
def test_bad_input_names_the_parameter(call, name):
    with pytest.raises(ValueError, match=f"^{name}="):
        call()
