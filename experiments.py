"""
The synthetic experiments of both papers, each training its small models from scratch at every rate of
a learning-rate sweep and every seed (sweep.py): minutes (--quick), under an hour on 2 cores (--grid cpu,
the default, with --jobs 2), or closer to the papers' sizes on a GPU (--grid gpu).

    python experiments.py set-order    JRT paper, Figure 2: causal Based vs JRT-RNN on set disjointness,
                                       the shorter set first vs last, against state size
    python experiments.py read-twice   JRT paper: Based and JRT-RNN on MQAR read once vs twice (kv,
                                       queries, kv, queries) at the same state size, with few or all pairs
                                       queried; each model on the other layout zero-shot
    python experiments.py overflow     OPRM paper: Based and JRT-RNN at two state sizes and a Transformer,
                                       trained on 1..K facts at one context length, tested on 1..K and more:
                                       full context vs OPRM's chunks with each selector, and the oracle chunk

Models as in the papers' synthetic studies: BaseConv + mixer stacks without a sliding window (a window
as long as the input is full attention and would hide the effect), with an output layer of their own
(`tie_embeddings=False`: tied, these tiny models sat on MQAR's plateau, accuracy ~1/k). All train with
`fit`, on train.py's loop and recipe, the loss on the answer positions only. Each prints markdown tables
with its wall and CPU time (--plot draws them); results/ holds what we measured, one file per experiment.
"""
import argparse
import importlib.util
import os
import shutil
import sys
import time
from dataclasses import asdict
from types import SimpleNamespace

import torch

import data
import train
from checkpoint import load_checkpoint, save_checkpoint
from evaluate import ACC_HEADER, accuracy, accuracy_rows, markdown_row
from lm import resolve_device
from model import Config, Model
from prompt import jrt_examples
from sweep import (cached, collapsible, diff_cell, mean, pct_each, points, points_table, rate, runs_table,
                   save_plot, spread, sweep)

LAYERS = {  # name -> layer layout: Zoology-style conv + mixer stacks
    "based": ("conv", "la") * 2,          # causal Based
    "jrt": ("conv", "pla") * 2,           # JRT-RNN: reads its prefix non-causally (each row's prefix_len)
    "transformer": ("conv", "attn") * 2,  # the ceiling: a KV cache holds every token
}
NAMES = {"based": "Based", "jrt": "JRT-RNN", "transformer": "Transformer"}

LRS = (1e-3, 3e-3, 1e-2)  # every grid's learning-rate sweep: each point trains at each rate and seed
POINTS = ("lrs", "seeds", "widths", "tasks", "models", "runs")  # what a grid enumerates, not what a run reads


def run_grid(g):  # the grid's settings that one run reads: its job, and what its saved result is found by
    return {k: v for k, v in g.items() if k not in POINTS}


GRIDS = {
    # set disjointness: (|A|, |B|) shapes in both orders; sets relabelled onto vocab_size ids (data.relabel).
    # CPU: 252 set ids (among 60, a set of 32 is cheap to hold: no order effect can show); 4 & 16 only, 6,000
    # steps (at 3,000 Based d32 sat at 20-40% at every rate; sets of 32 as well would cost 1.7x per step);
    # four widths at f = 4, states of 684 to 1,684 numbers, where the models go from failing to solving;
    # 3e-2 as well: with three rates Based did best at 1e-2, the sweep's edge
    "set-order": {
        "cpu": dict(shapes=[(4, 16), (16, 4)], vocab_size=256, n_train=80000, n_test=250,
                    widths=[(12, 4), (16, 4), (24, 4), (32, 4)], n_head=2, init_std=0.12, iters=6000,
                    lrs=LRS + (3e-2,), seeds=(0, 1), batch_size=64),
        "quick": dict(shapes=[(4, 16), (16, 4)], vocab_size=256, n_train=10000, n_test=250, widths=[(32, 4)],
                      n_head=2, init_std=0.12, iters=1500, lrs=LRS, seeds=(0,), batch_size=64),
        "gpu": dict(shapes=data.SD_TRAIN_SHAPES, vocab_size=data.SD_VOCAB, n_train=20000, n_test=1000,
                    widths=[(36, 4), (64, 8), (96, 16), (128, 24)], n_head=2, init_std=0.06, iters=20000,
                    lrs=(3e-4, 1e-3, 3e-3), seeds=(0, 1), batch_size=256),
    },
    # MQAR tasks: (seq_len of one pass, key-value pairs k, queries q). q = 4 of 16: a second pass needs to
    # keep only the pairs asked about (Ω(min(k, q))); q = 16 of 16: it must keep them all, as one pass does.
    # CPU: 48 models of 1,500 steps of 64 rows (results/read_twice.md)
    "read-twice": {
        "cpu": dict(models=("based", "jrt"), tasks=[(64, 16, 4), (64, 16, 16)], vocab_size=64, n_train=80000,
                    n_test=400, widths=[(16, 4)], seeds=(0, 1), n_head=2, init_std=0.12, iters=1500, lrs=LRS,
                    batch_size=64),
        "quick": dict(models=("based", "jrt"), tasks=[(64, 16, 4)], vocab_size=64, n_train=20000, n_test=300,
                      widths=[(16, 4)], seeds=(0,), n_head=2, init_std=0.12, iters=400, lrs=LRS,
                      batch_size=64),
        "gpu": dict(models=("based", "jrt"), tasks=[(256, 64, 8), (256, 64, 64)], vocab_size=8192,
                    n_train=100000, n_test=1000, widths=[(64, 8), (128, 16), (256, 16)], seeds=(0, 1),
                    n_head=4, init_std=0.06, iters=20000, lrs=(3e-4, 1e-3, 3e-3), batch_size=256),
    },
    # OPRM's associative-recall study on MQAR, at a fixed state: each model is trained on 1..K facts (pairs) at
    # one context length C and at the chunk lengths, queries after the context, a share about absent keys
    # (answer: the IDK token, so a chunk without the key can say so); tested on C tokens with 1..K facts and
    # beyond. A model that solves few facts and fails at k <= K has learnt the task; its state is full.
    # runs: (layers, d_model). CPU: C = 64, K = 16; a Based pilot held 0.98 up to 8 facts at d_model 32 and
    # 0.82 at 2 facts at 16. Quick: C = 32, chunks of 8; half the queries about absent keys (with a quarter,
    # 1,000 steps left the IDK answers too unreliable for OPRM to pick the key's chunk)
    "overflow": {
        "cpu": dict(runs=[("based", 16), ("based", 32), ("jrt", 16), ("jrt", 32), ("transformer", 32)],
                    vocab_size=64, train_contexts=(8, 16, 64), train_pairs=tuple(range(1, 17)), query_slots=8,
                    idk_frac=0.25, n_head=2, feature_dim=4, init_std=0.12, n_train=60000, iters=3000, lrs=LRS,
                    seeds=(0,), batch_size=64, test_pairs=(1, 2, 4, 6, 8, 12, 16, 20, 24), chunk_lens=(16, 8),
                    n_test=200),
        "quick": dict(runs=[("based", 32), ("transformer", 32)],
                      vocab_size=64, train_contexts=(8, 32), train_pairs=tuple(range(1, 17)), query_slots=8,
                      idk_frac=0.5, n_head=2, feature_dim=4, init_std=0.12, n_train=20000, iters=1000,
                      lrs=LRS, seeds=(0,), batch_size=64, test_pairs=(1, 2, 4, 8, 12, 16), chunk_lens=(8,),
                      n_test=100),
        "gpu": dict(runs=[("based", 64), ("based", 128), ("jrt", 64), ("jrt", 128), ("transformer", 64)],
                    vocab_size=8192, train_contexts=(128, 1024), train_pairs=tuple(range(4, 257, 4)),
                    query_slots=16, idk_frac=0.25, n_head=4, feature_dim=16, init_std=0.02, n_train=200000,
                    iters=20000, lrs=(3e-4, 1e-3, 3e-3), seeds=(0,), batch_size=256,
                    test_pairs=(8, 16, 32, 64, 96, 128, 192, 256, 320), chunk_lens=(128,), n_test=1000),
    },
}


def make_model(layers, *, vocab_size, d_model, n_head, feature_dim, prefix_len, init_std, seed=0,
               device=None):
    torch.manual_seed(seed)
    cfg = Config(vocab_size=vocab_size, d_model=d_model, n_head=n_head, feature_dim=feature_dim,
                 layers=layers, prefix_len=prefix_len, init_std=init_std, tie_embeddings=False)
    return Model(cfg).to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def fit(model, ex, iters, lr, batch_size=64, seed=0, log_every=100):
    """Train on data.Examples with train.py's loop and recipe (its DEFAULTS): AdamW (0.9, 0.95), weight
    decay 0.1 on matrices, warmup over the first 5% then cosine to lr/10, gradient clip 1.0, fp32; the loss
    on the answer positions only, with the head applied there alone (a CPU step would be mostly the head)."""
    cfg = SimpleNamespace(**{**train.DEFAULTS, "max_iters": iters, "lr": lr, "batch_size": batch_size,
                             "warmup_iters": max(1, iters // 20), "log_interval": log_every or iters})
    device = next(model.parameters()).device
    optimizer = train.configure_optimizer(model, cfg, device.type)
    gen = torch.Generator().manual_seed(seed)                 # the batch order
    draw = lambda: [train.examples_batch(ex[torch.randint(len(ex), (batch_size,), generator=gen)])]
    model.train()
    train.train_loop(model, optimizer, cfg, draw, answer_loss, device=device,
                     log=print if log_every else lambda *a, **k: None)
    return model.eval()


def answer_loss(model, b):
    return model(b["x"], b["y"], b["M"], b["pad"], scored_only=True)[1]    # the head on the n answers only


# ------------------------------------------------------------------------- JRT: set order (set disjointness)

def set_order_data(shapes, vocab_size, n_train, n_test, seed):
    """A and B drawn from the whole vocabulary (halves=False): with the JRT paper's halves, the shared token
    is the only B token from A's half, which a model can spot without remembering A at all."""
    train_ex = data.disjoint_sets(n_train, shapes=shapes, halves=False, seed=seed, split="train")
    test_ex = data.disjoint_sets(n_test, shapes=shapes, halves=False, seed=seed, split="test")
    if vocab_size < data.SD_VOCAB:
        train_ex, test_ex = data.relabel(train_ex, vocab_size, seed), data.relabel(test_ex, vocab_size, seed + 1)
    return train_ex, test_ex


def order_pairs(g):
    """The shapes (a, b), a < b, trained in both orders: the cells are `a & b first` and `a & b last`."""
    return [(a, b) for a, b in g["shapes"] if a < b and (b, a) in g["shapes"]]


def set_order_run(g, name, d_model, f, lr, seed, device):
    """One model of the set-order grid: trained on both orders of each shape, tested per order."""
    print(f"set order: {NAMES[name]}, d_model {d_model}, f {f}, lr {lr:g}, seed {seed}", flush=True)
    train_ex, test_ex = cached(set_order_data, g["shapes"], g["vocab_size"], g["n_train"], g["n_test"], seed)
    t0 = time.time()
    model = make_model(LAYERS[name], vocab_size=g["vocab_size"], d_model=d_model, n_head=g["n_head"],
                       feature_dim=f, prefix_len=train_ex.x.shape[1], init_std=g["init_std"], seed=seed,
                       device=device)
    fit(model, train_ex, g["iters"], lr, g["batch_size"], seed, log_every=0)
    per, _ = accuracy(model, test_ex)
    acc = {f"{a} & {b} {o}": per[f"|A|={a} |B|={b}" if o == "first" else f"|A|={b} |B|={a}"]
           for a, b in order_pairs(g) for o in ("first", "last")}                  # the short set first, last
    r = dict(model=NAMES[name], d_model=d_model, f=f, state=model.state_size()["total"], lr=lr, seed=seed,
             seconds=time.time() - t0, **acc)
    print(f"set order: {NAMES[name]}, d_model {d_model}, lr {lr:g}, seed {seed}: "
          + ", ".join(f"{c} {100 * v:.1f}" for c, v in acc.items()) + f" ({r['seconds']:.0f} s)", flush=True)
    return r


def set_order(g, jobs=1, threads=1, saved=None, device=None):
    """Causal Based vs JRT-RNN (prefix = the whole input) on set disjointness, trained on both orders of
    each shape at every rate and seed; test accuracy with the shorter set first vs last, per state size."""
    work = [dict(g=run_grid(g), name=name, d_model=d, f=f, lr=lr, seed=seed, device=device)
            for seed in g["seeds"] for d, f in sorted(g["widths"], reverse=True)
            for name in ("based", "jrt") for lr in g["lrs"]]
    runs = sweep(set_order_run, work, jobs, threads, saved)
    runs.sort(key=lambda r: (r["model"] != "Based", r["state"], r["lr"], r["seed"]))
    keys = ("model", "d_model", "f")
    cells = [f"{a} & {b} {o}" for a, b in order_pairs(g) for o in ("first", "last")]
    pts = points(runs, keys, cells, score=lambda r: mean([r[c] for c in cells]))
    diff = ["| model | d_model | f | state | best lr | "
            + " | ".join(f"{a} & {b}: first − last, max · mean (each seed)" for a, b in order_pairs(g)) + " |",
            "|---" * (5 + len(order_pairs(g))) + "|"]
    for p in pts:
        cells_ = [diff_cell(p["max"][f"{a} & {b} first"] - p["max"][f"{a} & {b} last"],
                            [x - y for x, y in zip(p["each"][f"{a} & {b} first"], p["each"][f"{a} & {b} last"])])
                  for a, b in order_pairs(g)]
        diff.append(f"| {p['model']} | {p['d_model']} | {p['f']} | {p['state']:,} | {rate(p)} | "
                    + " | ".join(cells_) + " |")
    table = (points_table(pts, keys, cells) + "\n\nThe short set first minus last (points):\n\n" + "\n".join(diff)
             + "\n\n" + collapsible("every run", runs_table(runs, keys, cells)))
    return table, pts


def plot_set_order(pts, plt):
    """The JRT paper's Figure 2: per shape pair, accuracy against state size (log axis) for each model and
    order, and the short set first minus last. Lines: the maximum over rates and seeds (the paper's
    statistic); dots with bars: the mean over seeds at the best rate, the bar spanning the seeds."""
    pairs = sorted({tuple(int(v) for v in c.split(" ")[:3:2]) for c in pts[0]["max"]})
    fig, axes = plt.subplots(len(pairs), 2, figsize=(11, 4 * len(pairs)), squeeze=False)
    models = list(dict.fromkeys(p["model"] for p in pts))
    for (ax, dx), (a, b) in zip(axes, pairs):
        first, last = f"{a} & {b} first", f"{a} & {b} last"
        for j, model in enumerate(models):
            ps = [p for p in pts if p["model"] == model]
            x = [p["state"] for p in ps]
            for c, style, order in ((first, "-", "short set first"), (last, "--", "short set last")):
                ax.plot(x, [100 * p["max"][c] for p in ps], style, color=f"C{j}", marker="o",
                        label=f"{model}, {order}")
                ax.errorbar(x, [100 * p["mean"][c] for p in ps], fmt="none", ecolor=f"C{j}", alpha=0.4,
                            yerr=spread([[100 * v for v in p["each"][c]] for p in ps]))
            each = [[100 * (u - v) for u, v in zip(p["each"][first], p["each"][last])] for p in ps]
            dx.plot(x, [100 * (p["max"][first] - p["max"][last]) for p in ps], "-", color=f"C{j}", marker="o",
                    label=f"{model}: max over rates and seeds")
            dx.errorbar(x, [mean(e) for e in each], yerr=spread(each), fmt="s", color=f"C{j}", alpha=0.5,
                        capsize=3, label=f"{model}: mean at the best rate, bar = seeds")
        ax.set(title=f"set disjointness, sets of {a} and {b}", xscale="log", ylim=(0, 102),
               xlabel="state (numbers per sequence, log)", ylabel="accuracy (%)")
        dx.axhline(0, color="gray", lw=0.8)
        dx.set(title=f"short set first − short set last ({a} & {b})", xscale="log",
               xlabel="state (numbers per sequence, log)", ylabel="difference (points)")
        ax.legend(fontsize=7)
        dx.legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- JRT: reading twice

def mqar_data(P, k, q, vocab_size, n_train, n_test, seed):
    """MQAR read once (one pass of P tokens) and twice (`kv, queries, kv, queries`), train and test; the
    test rows read twice are the once-rows shown twice."""
    kw = dict(vocab_size=vocab_size, num_pairs=k, num_queries=q, seed=seed)
    once_te = data.mqar(n_test, seq_len=P, split="test", **kw)
    return dict(once=data.mqar(n_train, seq_len=P, split="train", **kw),
                twice=data.mqar(n_train, seq_len=2 * P, read_twice=True, split="train", **kw),
                test_once=once_te, test_twice=jrt_examples(once_te, 2))


def read_twice_run(g, name, task, d_model, f, trained, lr, seed, device):
    """One model of the read-twice grid: trained on MQAR read `trained` (once | twice), tested both ways."""
    P, k, q = task
    print(f"read twice: {NAMES[name]}, T={P} k={k} q={q}, trained {trained}, d_model {d_model}, f {f}, "
          f"lr {lr:g}, seed {seed}", flush=True)
    ex = cached(mqar_data, P, k, q, g["vocab_size"], g["n_train"], g["n_test"], seed)
    t0 = time.time()
    model = make_model(LAYERS[name], vocab_size=g["vocab_size"], d_model=d_model, n_head=g["n_head"],
                       feature_dim=f, prefix_len=2 * P, init_std=g["init_std"], seed=seed, device=device)
    fit(model, ex[trained], g["iters"], lr, g["batch_size"], seed, log_every=0)
    r = dict(model=NAMES[name], T=P, k=k, q=q, d_model=d_model, f=f, trained=trained, lr=lr, seed=seed,
             state=model.state_size()["total"], seconds=time.time() - t0,
             **{"tested once": accuracy(model, ex["test_once"])[1],
                "tested twice": accuracy(model, ex["test_twice"])[1]})
    print(f"read twice: {NAMES[name]}, q={q}, trained {trained}, lr {lr:g}, seed {seed}: once "
          f"{100 * r['tested once']:.1f}, twice {100 * r['tested twice']:.1f} ({r['seconds']:.0f} s)", flush=True)
    return r


RT_KEYS, RT_CELLS = ("model", "T", "k", "q", "d_model", "f", "trained"), ("tested once", "tested twice")


def read_twice(g, jobs=1, threads=1, saved=None, device=None):
    """Based and JRT-RNN trained on MQAR read once vs read twice (`kv, queries, kv, queries`), same model and
    so the same state size, at every rate and seed; each tested on both layouts (the other one zero-shot).
    With q queries about k pairs, one pass needs state for all k pairs, two passes only for the q asked
    (Ω(min) vs Ω(max)), so reading twice should help when q < k and not when q = k. JRT-RNN's prefix is
    everything before the scored queries (data.mqar: M = C once, the first pass and the second kv twice),
    so when read twice its encoder sees the questions before it stores the pairs. The best rate of a model
    is the one with the best accuracy on the layout it was trained on."""
    work = [dict(g=run_grid(g), name=name, task=tuple(task), d_model=d, f=f, trained=trained, lr=lr, seed=seed,
                 device=device)
            for seed in g["seeds"] for task in g["tasks"] for trained in ("twice", "once")
            for name in g["models"] for d, f in g["widths"] for lr in g["lrs"]]
    runs = sweep(read_twice_run, work, jobs, threads, saved)
    runs.sort(key=lambda r: (r["model"] != "Based", r["q"], r["T"], r["d_model"], r["trained"] != "once",
                             r["lr"], r["seed"]))
    pts = points(runs, RT_KEYS, RT_CELLS, score=lambda r: r[f"tested {r['trained']}"])
    gain = ["| model | T (one pass) | k | q | d_model | state | once → once | twice → twice "
            "| twice − once: max · mean (each seed) |", "|---" * 9 + "|"]
    for once in (p for p in pts if p["trained"] == "once"):
        twice = next(p for p in pts if p["trained"] == "twice" and all(p[k] == once[k] for k in RT_KEYS[:-1]))
        each = [t - o for t, o in zip(twice["each"]["tested twice"], once["each"]["tested once"])]
        cell = lambda p, c: f"{100 * p['max'][c]:.1f} · {100 * p['mean'][c]:.1f}{pct_each(p['each'][c])}, " \
                            f"lr {rate(p)}"
        gain.append(f"| {once['model']} | {once['T']} | {once['k']} | {once['q']} | {once['d_model']} | "
                    f"{once['state']:,} | {cell(once, 'tested once')} | {cell(twice, 'tested twice')} | "
                    + diff_cell(twice["max"]["tested twice"] - once["max"]["tested once"], each) + " |")
    table = ("\n".join(gain) + "\n\nEach model on both layouts (points):\n\n"
             + points_table(pts, RT_KEYS, RT_CELLS) + "\n\n"
             + collapsible("every run", runs_table(runs, RT_KEYS, RT_CELLS)))
    return table, pts


def plot_read_twice(pts, plt):
    """Accuracy read once vs twice per query share, one panel per model: bars, the mean over seeds at the
    best rate (dots: each seed); crosses, the maximum over rates and seeds."""
    models = list(dict.fromkeys(p["model"] for p in pts))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        once = [p for p in pts if p["model"] == model and p["trained"] == "once"]
        twice = [p for p in pts if p["model"] == model and p["trained"] == "twice"]
        for j, pair in enumerate(zip(once, twice)):
            for i, (p, label) in enumerate(zip(pair, ("trained and tested once", "trained and tested twice"))):
                c, x = f"tested {p['trained']}", 3 * j + i
                ax.bar(x, 100 * p["mean"][c], color=f"C{i}", alpha=0.5, label=label if j == 0 else None)
                ax.plot([x] * len(p["each"][c]), [100 * v for v in p["each"][c]], "k.")
                ax.plot(x, 100 * p["max"][c], "kx", label="max over rates and seeds" if j == i == 0 else None)
        ax.set_xticks([3 * j + 0.5 for j in range(len(once))],
                      [f"{p['q']} of {p['k']} queried\nd_model {p['d_model']}" for p in once])
        ax.set(title=f"MQAR read once vs twice: {model}", ylabel="accuracy (%), dots: seeds", ylim=(0, 102))
    axes[0][0].legend(fontsize=8, loc="lower left")
    return fig


# ----------------------------------------------------------------------------- OPRM: overflow

TRAIN_KEYS = ("vocab_size", "train_contexts", "train_pairs", "query_slots", "idk_frac", "n_head",
              "feature_dim", "init_std", "n_train", "iters", "lr", "batch_size")  # a saved model's training


def train_settings(g, name, d_model, seed):
    """The settings an overflow model is trained with, as plain lists and numbers (compared on reuse)."""
    plain = lambda v: list(v) if isinstance(v, (tuple, list)) else v
    return dict({k: plain(g[k]) for k in TRAIN_KEYS}, layers=name, d_model=d_model, seed=seed)


def fit_mqar(name, d_model, g, path, *, device=None, seed=0):
    """Train one model of the overflow experiment and save it in train.py's checkpoint format (atomically),
    with the test's shape and its training settings in its config, so that it is reused only for the same
    settings and `python evaluate.py oprm --task mqar_long` can test it too."""
    C = max(g["train_contexts"])
    model = make_model(LAYERS[name], vocab_size=g["vocab_size"], d_model=d_model, n_head=g["n_head"],
                       feature_dim=g["feature_dim"], prefix_len=C, init_std=g["init_std"], seed=seed,
                       device=device)
    t0 = time.time()
    ex = cached(data.mqar_mixture, g["n_train"], g["vocab_size"], g["train_contexts"], g["train_pairs"],
                g["query_slots"], g["idk_frac"], seed)
    fit(model, ex, g["iters"], g["lr"], g["batch_size"], seed, log_every=0)
    config = dict(model=f"{NAMES[name]} d{d_model}", train_seconds=time.time() - t0, context_len=C,
                  seq_len=C + 2 * g["query_slots"], num_pairs=max(g["train_pairs"]),
                  vocab_size=g["vocab_size"], settings=train_settings(g, name, d_model, seed))
    saved = dict(model=model.state_dict(), model_args=asdict(model.config), config=config, iter=g["iters"])
    save_checkpoint(saved, os.fspath(path))          # atomic, with a checksum verified on load
    return model, config


def trained_model(name, d_model, g, out_dir, *, seed=0, device=None):
    """The overflow model saved in out_dir if it was trained with these very settings (g["lr"] among them),
    else a new one."""
    path = os.path.join(out_dir, f"{name}_d{d_model}_lr{g['lr']:g}_s{seed}.pt")
    want = train_settings(g, name, d_model, seed)
    if os.path.exists(path):
        model, config = load_checkpoint(path, device or "cpu")
        have = config.get("settings", {})
        if have == want:
            print(f"reusing {path}", flush=True)
            return model, config
        diff = [f"{k} {have.get(k, '?')} -> {v}" for k, v in want.items() if have.get(k) != v]
        print(f"{path} was trained with other settings ({'; '.join(diff)}): training again", flush=True)
    print(f"overflow: training {NAMES[name]}, d_model {d_model}, lr {g['lr']:g}, seed {seed}", flush=True)
    model, config = fit_mqar(name, d_model, g, path, device=device, seed=seed)
    print(f"saved {path}: {config['train_seconds']:.0f} s of training", flush=True)
    return model, config


def overflow_run(g, name, d_model, lr, seed, out_dir, device):
    """One model of the overflow grid, trained (or reused) at this rate and seed, then tested: full context
    vs OPRM's chunks with every selector, per number of facts."""
    model, config = trained_model(name, d_model, dict(g, lr=lr), out_dir, seed=seed, device=device)
    records = list(accuracy_rows(model, config, g["test_pairs"], g["chunk_lens"], g["n_test"], seed=seed))
    full = {f"{r['pairs']} facts": r["full"] for r in records if r["L"] == g["chunk_lens"][0]}
    print(f"overflow: {config['model']}, lr {lr:g}, seed {seed}, full context: "
          + ", ".join(f"{c} {v:.3f}" for c, v in full.items()), flush=True)
    return dict(model=config["model"], name=name, d_model=d_model, lr=lr, seed=seed, records=records,
                state=model.state_size(config["seq_len"])["total"], seconds=config["train_seconds"], **full)


def overflow(g, jobs=1, threads=1, saved=None, out_dir="out/oprm", models=None, device=None):
    """Train (or reuse from out_dir) each model of the grid at every rate and seed on 1..K facts at one
    context length, then test it on 1..K facts and a little beyond: full context vs OPRM's chunks, with
    every selector. A model's best rate: its highest full-context accuracy over 1..K facts; that model (the
    first seed's) is also saved as out_dir/<name>_d<d_model>.pt, for `python evaluate.py oprm`."""
    os.makedirs(out_dir, exist_ok=True)
    work = [dict(g=run_grid(g), name=name, d_model=d, lr=lr, seed=seed, out_dir=out_dir, device=device)
            for seed in g["seeds"] for name, d in g["runs"] if not models or name in models
            for lr in g["lrs"]]
    runs = sweep(overflow_run, work, jobs, threads, saved)
    runs.sort(key=lambda r: (g["runs"].index((r["name"], r["d_model"])), r["lr"], r["seed"]))
    cells = [f"{k} facts" for k in g["test_pairs"]]
    trained = [c for k, c in zip(g["test_pairs"], cells) if k <= max(g["train_pairs"])] or cells
    pts = points(runs, ("model",), cells, score=lambda r: mean([r[c] for c in trained]))
    rows, best = [ACC_HEADER], []
    for p in pts:
        at_best = [r for r in runs if r["model"] == p["model"] and r["lr"] == p["lr"]]
        for r in at_best:
            rows += [markdown_row(dict(x, model=f"{x['model']}, lr {r['lr']:g}, seed {r['seed']}"))
                     for x in r["records"]]
        r = at_best[0]                                   # its first seed's model: plotted, and for evaluate.py
        best += r["records"]
        name = os.path.join(out_dir, f"{r['name']}_d{r['d_model']}")
        if os.path.exists(f"{name}_lr{r['lr']:g}_s{r['seed']}.pt"):
            shutil.copyfile(f"{name}_lr{r['lr']:g}_s{r['seed']}.pt", name + ".pt.tmp")
            os.replace(name + ".pt.tmp", name + ".pt")
    oprm = ["| model | L | " + " | ".join(cells) + " |", "|---" * (2 + len(cells)) + "|"]
    for p in pts:                                        # OPRM (entropy + IDK): the maximum over rates and seeds
        for L in g["chunk_lens"]:
            best_of = [max(x["entropy+idk"] for r in runs if r["model"] == p["model"] for x in r["records"]
                           if x["L"] == L and x["pairs"] == k) for k in g["test_pairs"]]
            oprm.append(f"| {p['model']} | {L} | " + " | ".join(f"{100 * v:.1f}" for v in best_of) + " |")
    table = ("Full-context accuracy (%) per number of facts, max · mean at the best rate (the highest mean "
             f"over 1..{max(g['train_pairs'])} facts); state: numbers per sequence, a Transformer's KV cache at "
             "the test length:\n\n"
             + points_table(pts, ("model",), cells)
             + "\n\nOPRM with entropy + IDK filter (%), the maximum over rates and seeds:\n\n" + "\n".join(oprm)
             + "\n\nAt each model's best rate, every method (accuracy; in brackets how often the chosen chunk "
               "held the key):\n\n" + "\n".join(rows)
             + "\n\n" + collapsible("every run, full context (%)", runs_table(runs, ("model",), cells)))
    return table, best


OVERFLOW_PANELS = {"full": "full context", "entropy+idk": "OPRM, entropy + IDK filter",
                   "entropy": "OPRM, entropy", "entropy_non_idk": "OPRM, entropy over non-IDK tokens",
                   "likelihood": "OPRM, query likelihood", "oracle": "the chunk holding the key (oracle)"}


def plot_overflow(records, plt):
    """Accuracy against the number of facts, one panel per method and one line per model (OPRM's Figure)."""
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5), sharex=True, sharey=True)
    models = list(dict.fromkeys(r["model"] for r in records))
    Ls = list(dict.fromkeys(r["L"] for r in records))
    for ax, (method, title) in zip(axes.flat, OVERFLOW_PANELS.items()):
        for j, model in enumerate(models):
            for i, L in enumerate(Ls[:1] if method == "full" else Ls):
                rs = [r for r in records if r["model"] == model and r["L"] == L]
                ax.plot([r["pairs"] for r in rs], [100 * r[method] for r in rs], ("-", "--", ":")[i % 3],
                        color=f"C{j}", marker="o", ms=3, label=model if i == 0 else None)
        ax.set_title(title)
        ax.set_ylim(-2, 102)
    for ax in axes[1]:
        ax.set_xlabel("key-value pairs (facts) in the context")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)")
    axes[0][0].legend(fontsize=8)
    styles = ", ".join(f"{('solid', 'dashed', 'dotted')[i % 3]}: chunks of L={L}" for i, L in enumerate(Ls))
    fig.suptitle(f"MQAR at a fixed context length; OPRM panels {styles}")
    fig.tight_layout()
    return fig


EXPERIMENTS = {"set-order": (set_order, plot_set_order), "read-twice": (read_twice, plot_read_twice),
               "overflow": (overflow, plot_overflow)}


def parser():
    ap = argparse.ArgumentParser(description="The papers' synthetic experiments: train, print tables")
    ap.add_argument("experiment", choices=tuple(EXPERIMENTS))
    ap.add_argument("--grid", choices=("cpu", "quick", "gpu"), default="cpu",
                    help="the experiment's size (GRIDS)")
    ap.add_argument("--quick", action="store_true", help="the same as --grid quick: a few minutes")
    ap.add_argument("--widths", help="set-order, read-twice: (d_model, f) pairs instead of the grid's, "
                    "e.g. 32:4,64:8")
    ap.add_argument("--vocab_size", type=int, help="the grid's vocabulary instead (set-order: set ids)")
    ap.add_argument("--iters", type=int, help="the grid's training steps per model instead")
    ap.add_argument("--n_train", type=int, help="the grid's training examples instead (set-order: per shape)")
    ap.add_argument("--models", help=f"read-twice, overflow: which of {','.join(LAYERS)} to train "
                    "(overflow: or reuse; default: the grid's)")
    ap.add_argument("--out_dir", help="overflow: where its models are saved, and reused from when their "
                    "settings match; default out/oprm (out/oprm-quick, out/oprm-gpu for the other grids)")
    ap.add_argument("--seeds", help="comma-separated seeds instead of the grid's, e.g. 0,1,2 (each seeds the "
                    "model's init, its data and its batch order)")
    ap.add_argument("--seed", type=int, help="one seed instead of the grid's: the same as --seeds N")
    ap.add_argument("--lrs", help="comma-separated learning rates instead of the grid's sweep, e.g. "
                    "1e-3,3e-3,1e-2")
    ap.add_argument("--runs_dir", help="where each run's result is saved when done, and reused from (a cut grid "
                    "goes on, a wider --lrs trains only the new rates; empty it after changing the code); default "
                    "out/runs/<experiment>-<grid>; none = keep nothing")
    ap.add_argument("--jobs", type=int, default=1, help="models trained at once, each in a process of its "
                    "own (--threads each); results do not depend on it. 2 on a 2-core machine")
    ap.add_argument("--device", default="auto", help="auto (CUDA when available, else the CPU) | cpu | cuda | mps")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads; tiny models run fastest on one "
                    "(more threads only wait for each other, ~10x slower on a busy CPU); 0 = torch's default")
    ap.add_argument("--out", help="also write the table (markdown) to this file")
    ap.add_argument("--plot", help="also draw the results into this PNG file (needs matplotlib)")
    return ap


def check_args(ap, a):
    """The grid's settings with the command line's changes, and the experiment's keyword arguments; each
    mistake is one line (ap.error), said before any training."""
    if a.plot and importlib.util.find_spec("matplotlib") is None:
        ap.error(f"--plot={a.plot} needs matplotlib, which is not installed: pip install matplotlib, "
                 f"or drop --plot")
    for opt, path in (("out", a.out), ("plot", a.plot)):          # a path that cannot be written
        folder = os.path.dirname(path or "") or "."
        if path is not None and (not os.path.isdir(folder) or os.path.isdir(path)):
            ap.error(f"--{opt}={path}: " + ("is a folder; expected a file name" if os.path.isdir(path) else
                                            f"the folder {folder} does not exist; create it first"))
    if a.plot:
        from matplotlib.figure import Figure
        kinds = Figure().canvas.get_supported_filetypes()            # png, pdf, svg, ...
        ext = os.path.splitext(a.plot)[1].lstrip(".").lower()
        if ext not in kinds:
            ap.error(f"--plot={a.plot}: unknown image format {ext or '(no extension)'!r}; "
                     f"expected one of {', '.join(sorted(kinds))}")
    try:
        device = resolve_device(a.device)
    except ValueError as e:
        ap.error(f"--{e}")
    grid = "quick" if a.quick else a.grid
    if a.quick and a.grid not in ("cpu", "quick"):
        ap.error(f"--quick is the quick grid; it cannot go with --grid {a.grid}")
    g = dict(GRIDS[a.experiment][grid])
    kw = dict(device=str(device))                   # a string: jobs are saved as JSON
    if a.widths:
        if a.experiment == "overflow":
            ap.error("--widths is for set-order and read-twice; the overflow models' widths are the grid's "
                     "runs")
        try:
            g["widths"] = [tuple(int(v) for v in w.split(":")) for w in a.widths.split(",")]
        except ValueError:
            g["widths"] = [()]
        if not all(len(w) == 2 and min(w) > 0 for w in g["widths"]):
            ap.error(f"--widths={a.widths}: expected d_model:f pairs of positive ints, comma-separated, "
                     f"e.g. 32:4,64:8")
    for key, least in (("vocab_size", 8), ("iters", 1), ("n_train", 1)):
        value = getattr(a, key)
        if value is not None:
            if value < least:
                ap.error(f"--{key}={value}: expected an int >= {least}")
            g[key] = value
    models = [m for m in (a.models or "").split(",") if m]
    allowed = LAYERS if a.experiment == "overflow" else g.get("models", ())
    bad = [m for m in models if m not in allowed]
    if a.models and a.experiment == "set-order":
        ap.error("--models is for read-twice and overflow")
    if bad:
        ap.error(f"--models={a.models}: unknown {bad}; allowed: {','.join(allowed)}")
    if a.experiment == "overflow":
        out_dir = a.out_dir or "out/oprm" + ("" if grid == "cpu" else f"-{grid}")
        kw.update(out_dir=out_dir, models=models or None)
    elif models:
        g["models"] = tuple(models)
    if a.seed is not None and a.seeds:
        ap.error(f"--seed={a.seed} and --seeds={a.seeds}: give one of them")
    if a.seeds or a.seed is not None:
        try:
            g["seeds"] = tuple(int(v) for v in a.seeds.split(",")) if a.seeds else (a.seed,)
        except ValueError:
            ap.error(f"--seeds={a.seeds}: expected comma-separated ints, e.g. 0,1")
    if a.lrs:
        try:
            g["lrs"] = tuple(sorted({float(v) for v in a.lrs.split(",")}))
        except ValueError:
            g["lrs"] = (0.0,)
        if min(g["lrs"]) <= 0:
            ap.error(f"--lrs={a.lrs}: expected comma-separated positive numbers, e.g. 1e-3,3e-3,1e-2")
    if a.jobs < 1:
        ap.error(f"--jobs={a.jobs}: expected an int >= 1")
    if a.threads < 0:
        ap.error(f"--threads={a.threads}: expected an int >= 0 (0 = torch's default)")
    runs_dir = a.runs_dir or f"out/runs/{a.experiment}-{grid}"
    kw.update(jobs=a.jobs, threads=a.threads, saved=None if runs_dir == "none" else runs_dir)
    return g, kw


def main(argv=None):
    ap = parser()
    a = ap.parse_args(argv)
    g, kw = check_args(ap, a)
    if a.threads:
        torch.set_num_threads(a.threads)
    cpu = lambda: sum(os.times()[:4])                    # this process and its finished workers
    t0, cpu0 = time.time(), cpu()
    run, plot = EXPERIMENTS[a.experiment]
    try:
        table, records = run(g, **kw)
    except ValueError as e:               # our checks of the data's settings, e.g. a vocabulary too small
        ap.error(str(e))
    cmd = " ".join(["python experiments.py"] + (argv if argv is not None else sys.argv[1:]))
    table += (f"\n\n(`{cmd}`: {time.time() - t0:.0f} s wall, {cpu() - cpu0:.0f} s CPU, "
              f"{a.jobs} job(s) of {torch.get_num_threads()} torch thread(s), on {kw['device'].split(':')[0]})")
    print("\n" + table)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(table + "\n")
    if a.plot:
        save_plot(plot, records, a.plot)
    return table


if __name__ == "__main__":
    main()
