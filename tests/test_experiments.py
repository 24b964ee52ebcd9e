"""experiments.py and sweep.py: the shared training loop, relabelled set disjointness, each experiment end to end
at a toy size, and the sweep's statistics and processes."""
import importlib.util
import re

import pytest
import torch

import data
import experiments
from evaluate import accuracy, mqar_long
from experiments import GRIDS, LAYERS, fit, fit_mqar, main, make_model
from sweep import points
from checkpoint import load_checkpoint



def test_relabel_keeps_set_disjointness_structure():
    ex = data.disjoint_sets(20, shapes=[(3, 9), (9, 3)], halves=False, seed=0)
    small = data.relabel(ex, 32, seed=1)
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
    return {**GRIDS[name]["cpu"], "n_train": 32, "n_test": 8, "iters": 2, "batch_size": 8, "lrs": (1e-3, 1e-2),
            "seeds": (0, 1), **kw}


def cells(table):
    """The markdown body rows of a table, split into cells (header, rule and the timing line dropped)."""
    rows = [r for r in table.splitlines() if r.startswith("|")][2:]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows]


def test_points_take_max_over_rates_and_seeds_and_mean_at_best_rate():
    runs = [dict(model="m", lr=lr, seed=s, state=10, seconds=1.0, a=a, b=b)
            for lr, s, a, b in [(1e-3, 0, 0.2, 0.9), (1e-3, 1, 0.4, 0.1), (1e-2, 0, 0.5, 0.3), (1e-2, 1, 0.3, 0.6),
                                (3e-3, 0, 0.1, 0.0), (3e-3, 1, 0.1, 0.0)]]
    p, = points(runs, ("model",), ("a", "b"), score=lambda r: r["a"] + r["b"])
    assert p["lr"] == 1e-2 and p["edge"] and p["seeds"] == [0, 1]          # mean score 0.85, vs 0.8 and 0.1
    assert p["max"] == {"a": 0.5, "b": 0.9} and p["each"] == {"a": [0.5, 0.3], "b": [0.3, 0.6]}
    assert p["mean"] == pytest.approx({"a": 0.4, "b": 0.45}) and p["seconds"] == 6.0
    tie, = points(runs[2:4] + [dict(r, lr=1e-3, a=0.4) for r in runs[:2]], ("model",), ("a",),
                  score=lambda r: r["a"])                             # 0.4 at both rates: the lower one
    assert tie["lr"] == 1e-3 and tie["mean"]["a"] == pytest.approx(0.4)


def test_set_order_and_read_twice_tables(tmp_path):
    g = tiny_grid("set-order", widths=[(8, 2), (12, 2)])
    table, pts = experiments.set_order(g)
    main_rows = cells(table.split("\n\n")[0])
    assert [r[:3] for r in main_rows] == [["Based", "8", "2"], ["Based", "12", "2"], ["JRT-RNN", "8", "2"],
                                          ["JRT-RNN", "12", "2"]]
    runs = cells(table.split("<summary>every run</summary>")[1])
    assert len(runs) == 2 * 2 * 2 * 2                                # models x widths x rates x seeds
    for row, p in zip(main_rows, pts):                               # `max · mean (seed 0, seed 1)` in %
        assert row[4].split(" ")[0] == f"{p['lr']:g}"
        for cell, c in zip(row[5:], p["max"]):
            top, rest = cell.split(" · ")
            assert float(top) == round(100 * p["max"][c], 1) and 0 <= p["mean"][c] <= p["max"][c] <= 1
            assert [float(v) for v in rest.split(" (")[1].rstrip(")").split(", ")] == [round(100 * v, 1)
                                                                                      for v in p["each"][c]]
            mine = [float(r[5 + list(p["max"]).index(c)]) for r in runs if r[:3] == row[:3]]
            assert float(top) == max(mine)
    g = tiny_grid("read-twice", widths=[(8, 2)], tasks=[(16, 4, 2)])
    table, pts = experiments.read_twice(g)
    assert [(p["model"], p["trained"]) for p in pts] == [("Based", "once"), ("Based", "twice"), ("JRT-RNN", "once"),
                                                         ("JRT-RNN", "twice")]
    gain = cells(table.split("\n\n")[0])
    assert [r[0] for r in gain] == ["Based", "JRT-RNN"]
    for row, (once, twice) in zip(gain, (pts[:2], pts[2:])):         # twice − once at each side's best rate
        each = [t - o for t, o in zip(twice["each"]["tested twice"], once["each"]["tested once"])]
        assert row[-1].split(" · ")[1].split(" ")[0] == f"{100 * sum(each) / 2:+.1f}"
    if importlib.util.find_spec("matplotlib"):                     # optional: figures only when it is installed
        experiments.save_plot(experiments.plot_read_twice, pts, tmp_path / "rt.png")
        experiments.save_plot(experiments.plot_set_order, experiments.set_order(
            tiny_grid("set-order", widths=[(8, 2), (12, 2)], shapes=[(4, 16), (16, 4)], seeds=(0,)))[1],
            tmp_path / "so.png")
        assert (tmp_path / "rt.png").stat().st_size > 0 and (tmp_path / "so.png").stat().st_size > 0


def test_jobs_do_not_change_the_numbers():
    """Each run seeds its own model, data and batches: 2 processes print what 1 does."""
    g = tiny_grid("set-order", widths=[(8, 2)], shapes=[(4, 16), (16, 4)], lrs=(1e-3, 3e-2), seeds=(0, 1),
                  iters=3)
    one, two = experiments.set_order(g, jobs=1)[0], experiments.set_order(g, jobs=2)[0]
    drop_time = lambda t: [r[:-1] for r in cells(t.split("<summary>every run</summary>")[1])]
    assert one.split("<details>")[0] == two.split("<details>")[0] and drop_time(one) == drop_time(two)


def test_saved_runs_are_reused_and_a_wider_sweep_trains_only_the_new_rates(tmp_path, capsys):
    g = tiny_grid("set-order", widths=[(8, 2)], shapes=[(4, 16), (16, 4)], lrs=(1e-3,), seeds=(0,), iters=3)
    first = experiments.set_order(g, saved=str(tmp_path))[0]
    assert "reusing" not in capsys.readouterr().out and len(list(tmp_path.glob("*.json"))) == 2
    wider = experiments.set_order({**g, "lrs": (1e-3, 1e-2)}, saved=str(tmp_path))[0]
    out = capsys.readouterr().out
    assert "reusing 2 of 4 runs" in out and out.count("set order: Based, d_model 8, f 2, lr 0.01") == 1
    assert "lr 0.001, seed 0\n" not in out                         # not trained again
    rows = lambda t: [r[:-1] for r in cells(t.split("<summary>every run</summary>")[1])]
    assert all(r in rows(wider) for r in rows(first))
    assert len(list(tmp_path.glob("*.json"))) == 4 and not list(tmp_path.glob("*.tmp"))


def test_overflow_trains_saves_reuses_only_the_same_settings_and_scores(tmp_path, capsys):
    g = tiny_grid("overflow", runs=[("jrt", 8)], train_contexts=(8, 32), train_pairs=(1, 2, 4), test_pairs=(8,),
                  chunk_lens=(8,), n_test=3, n_head=2, lrs=(1e-3,), seeds=(0,), lr=1e-3)
    model, c = fit_mqar("jrt", 8, g, tmp_path / "jrt_d8_lr0.001_s0.pt", device="cpu")
    loaded, c2 = load_checkpoint(tmp_path / "jrt_d8_lr0.001_s0.pt")
    assert c2["model"] == "JRT-RNN d8" and loaded.lm_head.weight is not loaded.wte.weight   # the untied head survives
    x = torch.randint(1, g["vocab_size"], (2, 12))
    torch.testing.assert_close(loaded(x)[0], model(x)[0])
    assert (c2["context_len"], c2["seq_len"]) == (32, 48)                 # the test's shape: the longest context
    acc = mqar_long(loaded, num_pairs=8, context_len=32, seq_len=48, vocab_size=g["vocab_size"], chunk_lens=[8], n=3)
    rules = {"entropy", "entropy+idk", "entropy_non_idk", "likelihood"}
    assert set(acc) == {"full", 8} and set(acc[8]) == rules | {"oracle", "holds"} and set(acc[8]["holds"]) == rules
    assert all(0 <= v <= 1 for v in [acc["full"], *acc[8]["holds"].values()] + [acc[8][r] for r in rules])
    table, records = experiments.overflow(g, out_dir=str(tmp_path))  # the same settings: reused, no training
    out = capsys.readouterr().out
    assert "reusing" in out and "training" not in out
    detail = table.split("held the key):\n\n")[1]
    assert [r[:3] for r in cells(detail)][0] == ["JRT-RNN d8, lr 0.001, seed 0", "8", "8"]
    assert records[0]["pairs"] == 8 and 0 <= records[0]["entropy+idk"] <= 1 and set(records[0]["holds"]) == rules
    best, _ = load_checkpoint(tmp_path / "jrt_d8.pt")                 # the best rate's model, for evaluate.py
    torch.testing.assert_close(best(x)[0], model(x)[0])
    for change in (dict(iters=3), dict(seeds=(1,))):                  # another setting: trained again, and said so
        experiments.overflow({**g, **change}, out_dir=str(tmp_path))
        out = capsys.readouterr().out
        if "iters" in change:
            assert "trained with other settings" in out and "iters 2 -> 3" in out and "reusing" not in out
        else:                                                         # another seed is another file
            assert "training JRT-RNN, d_model 8, lr 0.001, seed 1" in out and "reusing" not in out


def test_entropy_over_non_idk_tokens_ignores_a_confident_not_here():
    from chunked import ChunkStates, entropy, select_chunk
    idk = 7
    logits = torch.tensor([[0.0] * 7 + [9.0],                     # chunk 0: a confident IDK, the rest flat
                           [0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0],  # chunk 1: an answer, less confident
                           [0.0] * 8])                             # chunk 2: no idea
    p = logits[:, :idk].softmax(-1)                               # renormalised over the non-IDK tokens
    torch.testing.assert_close(entropy(logits, exclude=idk), -(p * p.log()).sum(-1))
    states = ChunkStates([(0, 2), (2, 4), (4, 6)], [], logits, None)
    assert select_chunk(states, "entropy")[0] == 0                 # plain entropy trusts the "not here"
    assert select_chunk(states, "entropy_non_idk", idk, idk_filter=False)[0] == 1
    assert select_chunk(states, "entropy", idk)[0] == 1            # the IDK filter drops chunk 0
    with pytest.raises(ValueError, match="idk_token"):
        select_chunk(states, "entropy_non_idk")


@pytest.mark.parametrize("name", list(GRIDS))
def test_quick_selects_the_quick_grid(name, monkeypatch):
    seen = {}
    monkeypatch.setitem(experiments.EXPERIMENTS, name, (lambda g, **kw: (seen.update(g) or "| t |", []), None))
    assert "s wall" in main([name, "--quick"]) and seen == GRIDS[name]["quick"]
    assert set(GRIDS[name]["quick"]) == set(GRIDS[name]["cpu"])   # the same knobs, smaller values


@pytest.mark.parametrize("argv, message", [
    (["set-order", "--widths", "32"], "d_model:f pairs"),
    (["read-twice", "--widths", "32:0"], "d_model:f pairs"),
    (["overflow", "--widths", "32:4"], "--widths is for"),
    (["overflow", "--models", "mamba"], "allowed: based,jrt,transformer"),
    (["read-twice", "--models", "transformer"], "allowed: based,jrt"),
    (["set-order", "--models", "jrt"], "--models is for"),
    (["read-twice", "--seeds", "0,x"], "--seeds=0,x"),
    (["set-order", "--seed", "1", "--seeds", "0,1"], "give one of them"),
    (["set-order", "--lrs", "1e-3,0"], "--lrs=1e-3,0: expected comma-separated positive numbers"),
    (["set-order", "--lrs", "fast"], "--lrs=fast"),
    (["overflow", "--jobs", "0"], "--jobs=0: expected an int >= 1"),
    (["read-twice", "--iters", "0"], "--iters=0: expected an int >= 1"),
    (["read-twice", "--n_train", "0"], "--n_train=0: expected an int >= 1"),
    (["set-order", "--vocab_size", "20", "--iters", "1"], "more than vocab_size - 4 = 16"),
    (["overflow", "--quick", "--grid", "gpu"], "--quick"),
    (["overflow", "--device", "tpu"], "--device='tpu' is not a device"),
])
def test_cli_errors_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["overflow", "--device=cuda"])
    err = capsys.readouterr().err.strip().splitlines()
    assert "CUDA is not available" in err[-1] and "--device='cuda'" in err[-1]


def test_plot_without_matplotlib_fails_before_any_training(monkeypatch, capsys):
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else find(name, *a))
    monkeypatch.setattr(experiments, "fit", lambda *a, **k: pytest.fail("trained before checking --plot"))
    with pytest.raises(SystemExit):
        main(["set-order", "--plot", "x.png"])
    assert "needs matplotlib" in capsys.readouterr().err


def fake_matplotlib(monkeypatch):
    """Where matplotlib is not installed, a stand-in that answers what --plot's check asks: the formats."""
    if importlib.util.find_spec("matplotlib"):
        return
    import sys
    import types
    canvas = types.SimpleNamespace(get_supported_filetypes=lambda: {"png": "PNG", "pdf": "PDF", "svg": "SVG"})
    figure = types.ModuleType("matplotlib.figure")
    figure.Figure = lambda: types.SimpleNamespace(canvas=canvas)
    monkeypatch.setitem(sys.modules, "matplotlib", types.ModuleType("matplotlib"))
    monkeypatch.setitem(sys.modules, "matplotlib.figure", figure)
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "matplotlib" else find(name, *a))


@pytest.mark.parametrize("flag, name, message", [
    ("--out", "missing/t.md", r"--out=.*missing/t.md: the folder .*missing does not exist; create it first"),
    ("--out", ".", r"--out=.*: is a folder; expected a file name"),
    ("--plot", "missing/f.png", r"--plot=.*missing/f.png: the folder .*missing does not exist"),
    ("--plot", "f.xyz", r"--plot=.*f.xyz: unknown image format 'xyz'; expected one of .*pdf.*png"),
    ("--plot", "f", r"--plot=.*f: unknown image format '\(no extension\)'"),
])
def test_out_and_plot_that_cannot_be_written_fail_before_training(tmp_path, monkeypatch, capsys, flag, name,
                                                                  message):
    fake_matplotlib(monkeypatch)
    monkeypatch.setattr(experiments, "fit", lambda *a, **k: pytest.fail(f"trained before checking {flag}"))
    with pytest.raises(SystemExit) as e:
        main(["set-order", "--quick", flag, str(tmp_path / name)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and re.search(message, err[-1]) and "Traceback" not in "\n".join(err)
