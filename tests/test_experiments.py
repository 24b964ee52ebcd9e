"""experiments.py: the shared training loop, relabelled set disjointness, and each experiment end to end at a toy size."""
import importlib.util

import pytest
import torch

import data
import experiments
from chunked import mqar_long
from experiments import GRIDS, LAYERS, fit, fit_mqar, main, make_model, relabel
from checkpoint import load_checkpoint
from prompt import accuracy



def test_relabel_keeps_set_disjointness_structure():
    ex = data.disjoint_sets(20, shapes=[(3, 9), (9, 3)], halves=False, seed=0)
    small = relabel(ex, 32, seed=1)
    assert small.vocab_size == 32 and small.x.max() < 32 and torch.equal(small.pad, ex.pad)
    for r in range(len(ex)):
        row = small.x[r][~small.pad[r]].tolist()
        sep = row.index(data.SD_SEP)
        A, B = row[1:sep], row[sep + 1:-1]
        assert row[0] == data.SD_START and row[-1] == data.SD_CUE and len(A) == len(set(A)) and len(B) == len(set(B))
        assert set(A) & set(B) == {int(small.y[r, -1])} and min(A + B) >= 4
        assert len(A) == ex.x[r].tolist().index(data.SD_SEP) - ex.x[r].tolist().index(data.SD_START) - 1


def test_fit_learns_a_small_mqar():
    ex = data.mqar(512, vocab_size=16, seq_len=8, num_pairs=2, seed=0)
    model = make_model(LAYERS["based"], vocab_size=16, d_model=16, n_head=2, feature_dim=4, prefix_len=8,
                       init_std=0.12, device="cpu")
    before = accuracy(model, ex)[1]
    fit(model, ex, iters=150, lr=1e-2, batch_size=32, log_every=0)
    assert model.lm_head.weight is not model.wte.weight                 # the experiments' models are untied
    assert accuracy(model, ex)[1] > max(0.6, before + 0.3)


def tiny_grid(name, **kw):
    return {**GRIDS[name]["cpu"], "n_train": 32, "n_test": 8, "iters": 2, "batch_size": 8, **kw}


def cells(table):
    """The markdown body rows of a table, split into cells (header, rule and the timing line dropped)."""
    rows = [r for r in table.splitlines() if r.startswith("|")][2:]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows]


def test_set_order_and_read_twice_tables(tmp_path):
    table, records = experiments.set_order(tiny_grid("set-order", widths=[(8, 2)]))
    rows = cells(table)
    assert [r[0] for r in rows] == ["Based", "JRT-RNN"]
    for r in rows:                                                   # "short first / last" per shape pair
        for c in r[4:-1]:
            first, last = (float(v) for v in c.split(" / "))
            assert 0 <= first <= 100 and 0 <= last <= 100
    assert [r["model"] for r in records] == ["Based", "JRT-RNN"] and set(records[0]["acc"]) == {(4, 16), (4, 32)}
    table, records = experiments.read_twice(tiny_grid("read-twice", widths=[(8, 2)]))
    rows = cells(table)
    assert len(rows) == 1 and [float(v) for v in rows[0][6:10]] == [
        round(100 * records[0][c], 1) for c in experiments.READ_TWICE_CELLS]
    if importlib.util.find_spec("matplotlib"):                     # optional: figures only when it is installed
        experiments.save_plot(experiments.plot_read_twice, records, tmp_path / "rt.png")
        assert (tmp_path / "rt.png").stat().st_size > 0


def test_overflow_trains_saves_reuses_and_scores(tmp_path, capsys):
    g = tiny_grid("overflow", models=("jrt",), test_pairs=(8,), chunk_lens=(8,), n_test=3)
    model, c = fit_mqar("jrt", g, tmp_path / "jrt.pt", device="cpu")
    loaded, c2 = load_checkpoint(tmp_path / "jrt.pt")
    assert c2["model"] == "JRT-RNN" and loaded.lm_head.weight is not loaded.wte.weight   # the untied head survives
    x = torch.randint(1, g["vocab_size"], (2, 12))
    torch.testing.assert_close(loaded(x)[0], model(x)[0])
    assert (c2["context_len"], c2["seq_len"]) == (32, 40)                 # the test's shape: the longest context
    acc = mqar_long(loaded, num_pairs=8, context_len=32, seq_len=40, vocab_size=g["vocab_size"], chunk_lens=[8], n=3)
    assert set(acc) == {"full", 8} and set(acc[8]) == {"entropy", "entropy+idk", "likelihood", "oracle"}
    assert all(0 <= v <= 1 for v in [acc["full"], *acc[8].values()])
    table, records = experiments.overflow(g, out_dir=str(tmp_path))   # reuses jrt.pt: no training
    assert "reusing" in capsys.readouterr().out and [r[:3] for r in cells(table)] == [["JRT-RNN", "8", "8"]]
    assert records[0]["pairs"] == 8 and 0 <= records[0]["entropy+idk"] <= 1


@pytest.mark.parametrize("argv, message", [
    (["set-order", "--widths", "32"], "d_model:f pairs"),
    (["read-twice", "--widths", "32:0"], "d_model:f pairs"),
    (["overflow", "--widths", "32:4"], "--widths is for"),
    (["overflow", "--models", "mamba"], "allowed: based,jrt,transformer"),
    (["set-order", "--models", "jrt"], "--models is for"),
    (["read-twice", "--iters", "0"], "--iters=0: expected an int >= 1"),
    (["read-twice", "--n_train", "0"], "--n_train=0: expected an int >= 1"),
    (["set-order", "--vocab_size", "20", "--iters", "1"], "more than vocab_size - 4 = 16"),
])
def test_cli_errors_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
