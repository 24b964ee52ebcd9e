"""
The synthetic experiments of both papers, each training its small models from scratch: a few minutes on
one CPU thread (--quick), tens of minutes (--grid cpu, the default), or closer to the papers' sizes on a
GPU (--grid gpu).

    python experiments.py set-order    JRT paper (set disjointness, Figure 2): causal Based vs JRT-RNN on set
                                       disjointness, the shorter set first vs last, at a few state sizes
    python experiments.py read-twice   JRT paper: Based and JRT-RNN on MQAR read once vs twice (kv,
                                       queries, kv, queries) at the same state size, with few or all pairs
                                       queried, over seeds; each model on the other layout zero-shot
    python experiments.py overflow     OPRM paper: Based and JRT-RNN at two state sizes and a Transformer,
                                       trained on 1..K facts at one context length, tested on 1..K and more:
                                       full context vs OPRM's chunks with each selector, and the oracle chunk

Models as in the papers' synthetic studies: BaseConv + mixer stacks without a sliding window (a window
as long as the input is full attention and would hide the effect), with an output layer of their own
(`tie_embeddings=False`): tied, these tiny models sat on MQAR's plateau (accuracy ~1/k, "any value from
the context") for a whole CPU run. All three train with `fit`, on train.py's loop and recipe, the loss on
the answer positions only. Each prints a markdown table with its wall and CPU time (and with --plot
draws it); results/ holds what we measured, one file per experiment.
"""
import argparse
import importlib.util
import os
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

LAYERS = {  # name -> layer layout: Zoology-style conv + mixer stacks
    "based": ("conv", "la") * 2,          # causal Based
    "jrt": ("conv", "pla") * 2,           # JRT-RNN: reads its prefix non-causally (each row's prefix_len)
    "transformer": ("conv", "attn") * 2,  # the ceiling: a KV cache holds every token
}
NAMES = {"based": "Based", "jrt": "JRT-RNN", "transformer": "Transformer"}

GRIDS = {
    # set disjointness: (|A|, |B|) shapes in both orders; sets relabelled onto vocab_size ids (see relabel).
    # CPU: 252 set ids, not fewer: among 60 ids a set of 32 is cheap to hold, and trained this long causal
    # Based solves both orders at d_model 32, so no order effect can show (results/set_order.md)
    "set-order": {
        "cpu": dict(shapes=[(4, 16), (16, 4), (4, 32), (32, 4)], vocab_size=256, n_train=40000, n_test=250,
                    widths=[(16, 4), (32, 4)], n_head=2, init_std=0.12, iters=6000, lr=3e-3, batch_size=64),
        "quick": dict(shapes=[(4, 16), (16, 4)], vocab_size=256, n_train=10000, n_test=250, widths=[(32, 4)],
                      n_head=2, init_std=0.12, iters=1500, lr=3e-3, batch_size=64),
        "gpu": dict(shapes=data.SD_TRAIN_SHAPES, vocab_size=data.SD_VOCAB, n_train=20000, n_test=1000,
                    widths=[(36, 4), (64, 8), (96, 16), (128, 24)], n_head=2, init_std=0.06, iters=20000,
                    lr=1e-3, batch_size=256),
    },
    # MQAR tasks: (seq_len of one pass, key-value pairs k, queries q). q = 4 of 16: a second pass needs to
    # keep only the pairs asked about (Ω(min(k, q))); q = 16 of 16: it must keep them all, as one pass does.
    # CPU: 16 models of 2,000 steps of 64 rows (45 CPU-minutes): with 1,500 steps of 32 rows the 4-of-16
    # models stayed near chance, and with 20k examples and 1,000 steps all were still learning
    # (results/read_twice.md)
    "read-twice": {
        "cpu": dict(models=("based", "jrt"), tasks=[(64, 16, 4), (64, 16, 16)], vocab_size=64, n_train=80000,
                    n_test=400, widths=[(16, 4)], seeds=(0, 1), n_head=2, init_std=0.12, iters=2000, lr=3e-3,
                    batch_size=64),
        "quick": dict(models=("based", "jrt"), tasks=[(64, 16, 4)], vocab_size=64, n_train=20000, n_test=300,
                      widths=[(16, 4)], seeds=(0,), n_head=2, init_std=0.12, iters=600, lr=3e-3,
                      batch_size=64),
        "gpu": dict(models=("based", "jrt"), tasks=[(256, 64, 8), (256, 64, 64)], vocab_size=8192,
                    n_train=100000, n_test=1000, widths=[(64, 8), (128, 16), (256, 16)], seeds=(0, 1),
                    n_head=4, init_std=0.06, iters=20000, lr=1e-3, batch_size=256),
    },
    # OPRM's associative-recall study on MQAR, at a fixed state: every model is trained on 1..K facts (pairs)
    # at one context length C (and at the chunk lengths, so that a chunk looks like something seen in
    # training), queries after the context, a share of them about absent keys (answer: the IDK token, so a
    # chunk without the key can say so). Test: C tokens with 1..K facts and a little beyond. A model that
    # solves few facts and fails at k <= K has learnt the task and fails because its state is full.
    # runs: (layers, d_model).
    # CPU: C = 64, K = 16; a pilot (Based, 1,500 steps) held 0.98 up to 8 facts at d_model 32, but at 16 only
    # 0.82 at 2 facts, so the two widths' overflow points land inside 1..24.
    # Quick: C = 32 and chunks of 8 (shorter rows, cheaper steps); half the queries about absent keys, since
    # after 1,000 steps with a quarter the IDK answers were too unreliable for OPRM to pick the key's chunk
    "overflow": {
        "cpu": dict(runs=[("based", 16), ("based", 32), ("jrt", 16), ("jrt", 32), ("transformer", 32)],
                    vocab_size=64, train_contexts=(8, 16, 64), train_pairs=tuple(range(1, 17)), query_slots=8,
                    idk_frac=0.25, n_head=2, feature_dim=4, init_std=0.12, n_train=60000, iters=3000, lr=3e-3,
                    batch_size=64, test_pairs=(1, 2, 4, 6, 8, 12, 16, 20, 24), chunk_lens=(16, 8),
                    n_test=200),
        "quick": dict(runs=[("based", 32), ("transformer", 32)],
                      vocab_size=64, train_contexts=(8, 32), train_pairs=tuple(range(1, 17)), query_slots=8,
                      idk_frac=0.5, n_head=2, feature_dim=4, init_std=0.12, n_train=20000, iters=1000,
                      lr=3e-3, batch_size=64, test_pairs=(1, 2, 4, 8, 12, 16), chunk_lens=(8,), n_test=100),
        "gpu": dict(runs=[("based", 64), ("based", 128), ("jrt", 64), ("jrt", 128), ("transformer", 64)],
                    vocab_size=8192, train_contexts=(128, 1024), train_pairs=tuple(range(4, 257, 4)),
                    query_slots=16, idk_frac=0.25, n_head=4, feature_dim=16, init_std=0.02, n_train=200000,
                    iters=20000, lr=1e-3, batch_size=256, test_pairs=(8, 16, 32, 64, 96, 128, 192, 256, 320),
                    chunk_lens=(128,), n_test=1000),
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

def relabel(ex, vocab_size, seed=0):
    """Set disjointness over a smaller vocabulary: each row's set tokens (ids >= 4) are mapped one-to-one
    onto random ids in [4, vocab_size). A and B stay sets that share exactly one token, and uniformly drawn
    sets stay uniform. data.disjoint_sets always uses 2048 ids, and learning that many token identities
    takes far longer than a CPU run of a few minutes."""
    gen = torch.Generator().manual_seed(seed)
    x, y = ex.x.clone(), ex.y.clone()
    for r in range(len(x)):
        toks = x[r][x[r] >= 4].unique()                                        # the row's distinct set tokens
        if len(toks) > vocab_size - 4:
            raise ValueError(f"relabel: a row has {len(toks)} set tokens, more than vocab_size - 4 = "
                             f"{vocab_size - 4}")
        lut = torch.arange(max(data.SD_VOCAB, vocab_size))                     # old id -> new id
        lut[toks] = torch.randperm(vocab_size - 4, generator=gen)[:len(toks)] + 4
        x[r] = lut[x[r]]
        y[r] = torch.where(y[r] >= 4, lut[y[r].clamp(min=0)], y[r])
    return data.Examples(x, y, ex.prefix_len, ex.pad, ex.group, ex.groups, vocab_size)


def set_order(g, seed=0, device=None):
    """Causal Based vs JRT-RNN (prefix = the whole input) on set disjointness, trained on both orders of
    each shape; test accuracy with the shorter set first vs last, at a few state sizes.
    A and B are drawn from the whole vocabulary (halves=False): with the JRT paper's halves, the shared token
    is the only B token from A's half, which a model can spot without remembering A at all."""
    V = g["vocab_size"]
    train_ex = data.disjoint_sets(g["n_train"], shapes=g["shapes"], halves=False, seed=seed, split="train")
    test_ex = data.disjoint_sets(g["n_test"], shapes=g["shapes"], halves=False, seed=seed, split="test")
    if V < data.SD_VOCAB:
        train_ex, test_ex = relabel(train_ex, V, seed), relabel(test_ex, V, seed + 1)
    T = train_ex.x.shape[1]
    pairs = [(a, b) for a, b in g["shapes"] if a < b and (b, a) in g["shapes"]]
    records = []
    for name in ("based", "jrt"):
        for d, f in g["widths"]:
            print(f"set order: {NAMES[name]}, d_model {d}, f {f}", flush=True)
            t0 = time.time()
            model = make_model(LAYERS[name], vocab_size=V, d_model=d, n_head=g["n_head"], feature_dim=f,
                               prefix_len=T, init_std=g["init_std"], seed=seed, device=device)
            fit(model, train_ex, g["iters"], g["lr"], g["batch_size"], seed)
            per, _ = accuracy(model, test_ex)
            acc = {(a, b): (per[f"|A|={a} |B|={b}"], per[f"|A|={b} |B|={a}"])   # short set first, last
                   for a, b in pairs}
            records.append(dict(model=NAMES[name], d_model=d, f=f, state=model.state_size()["total"], acc=acc,
                                seconds=time.time() - t0))
    shapes = " | ".join(f"{a} & {b}: short first / last" for a, b in pairs)
    rows = [f"| model | d_model | f | state | {shapes} | train time |", "|---" * (5 + len(pairs)) + "|"]
    for r in records:
        cells = [f"{100 * first:.1f} / {100 * last:.1f}" for first, last in r["acc"].values()]
        rows.append(f"| {r['model']} | {r['d_model']} | {r['f']} | {r['state']:,} | " + " | ".join(cells)
                    + f" | {r['seconds']:.0f} s |")
    return "\n".join(rows), records


def plot_set_order(records, plt):
    pairs = list(records[0]["acc"])
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4), squeeze=False)
    for ax, (a, b) in zip(axes[0], pairs):
        for j, model in enumerate(dict.fromkeys(r["model"] for r in records)):  # a colour per model
            rs = [r for r in records if r["model"] == model]
            for i, (order, style) in enumerate((("short set first", "-"), ("short set last", "--"))):
                ax.plot([r["state"] for r in rs], [100 * r["acc"][a, b][i] for r in rs], style, color=f"C{j}",
                        marker="o", label=f"{model}, {order}")
        ax.set(title=f"set disjointness, sets of {a} and {b}", xlabel="state (numbers per sequence)",
               ylabel="accuracy (%)", ylim=(0, 102))
    axes[0][0].legend(fontsize=8)
    return fig


# ----------------------------------------------------------------------------- JRT: reading twice

# trained on → tested on
READ_TWICE_CELLS = ("once → once", "once → twice", "twice → twice", "twice → once")


def read_twice(g, seeds=None, device=None):
    """Based and JRT-RNN trained on MQAR read once vs read twice (`kv, queries, kv, queries`), same model and
    so the same state size; and each model on the other layout zero-shot, over several seeds. With q queries
    about k pairs, one pass needs state for all k pairs, two passes only for the q asked (Ω(min) vs Ω(max)),
    so reading twice should help when q < k and not when q = k. JRT-RNN's prefix is everything before the
    scored queries (data.mqar: M = C once, the first pass and the second kv twice), so when read twice its
    encoder sees the questions before it stores the pairs."""
    runs = []
    for seed in seeds or g["seeds"]:
        for P, k, q in g["tasks"]:
            kw = dict(vocab_size=g["vocab_size"], num_pairs=k, num_queries=q, seed=seed)
            once_tr = data.mqar(g["n_train"], seq_len=P, split="train", **kw)
            twice_tr = data.mqar(g["n_train"], seq_len=2 * P, read_twice=True, split="train", **kw)
            once_te = data.mqar(g["n_test"], seq_len=P, split="test", **kw)
            twice_te = jrt_examples(once_te, 2)          # the same test rows, shown twice
            for name in g["models"]:
                for d, f in g["widths"]:
                    r = dict(model=NAMES[name], T=P, k=k, q=q, d_model=d, f=f, seed=seed, seconds=0.0)
                    for fmt, train_ex in (("once", once_tr), ("twice", twice_tr)):
                        print(f"read twice: {NAMES[name]}, T={P} k={k} q={q}, trained {fmt}, d_model {d}, "
                              f"f {f}, seed {seed}", flush=True)
                        t0 = time.time()
                        model = make_model(LAYERS[name], vocab_size=g["vocab_size"], d_model=d,
                                           n_head=g["n_head"], feature_dim=f, prefix_len=2 * P,
                                           init_std=g["init_std"], seed=seed, device=device)
                        fit(model, train_ex, g["iters"], g["lr"], g["batch_size"], seed)
                        r["seconds"] += time.time() - t0
                        r[f"{fmt} → once"] = accuracy(model, once_te)[1]
                        r[f"{fmt} → twice"] = accuracy(model, twice_te)[1]
                    runs.append(dict(r, state=model.state_size()["total"]))
    records = []                                         # one per (model, task, width): the seeds' values
    for key in dict.fromkeys((r["model"], r["T"], r["k"], r["q"], r["d_model"], r["f"]) for r in runs):
        rs = [r for r in runs if (r["model"], r["T"], r["k"], r["q"], r["d_model"], r["f"]) == key]
        records.append(dict(zip(("model", "T", "k", "q", "d_model", "f"), key), state=rs[0]["state"],
                            seeds=[r["seed"] for r in rs], seconds=sum(r["seconds"] for r in rs),
                            **{c: [r[c] for r in rs] for c in READ_TWICE_CELLS}))
    each = lambda v: f" ({', '.join(f'{100 * x:.1f}' for x in v)})" if len(v) > 1 else ""
    spread = lambda v: f"{100 * sum(v) / len(v):.1f}" + each(v)           # the mean, then each seed's
    rows = ["| model | T (one pass) | pairs k | queries q | d_model | f | state | seeds | once → once "
            "| once → twice (zero-shot) | twice → twice | twice → once | twice − once "
            "| train time (all) |",
            "|---" * 14 + "|"]
    for r in records:
        gain = [t - o for t, o in zip(r["twice → twice"], r["once → once"])]
        rows.append(f"| {r['model']} | {r['T']} | {r['k']} | {r['q']} | {r['d_model']} | {r['f']} | "
                    f"{r['state']:,} | {','.join(map(str, r['seeds']))} | "
                    + " | ".join(spread(r[c]) for c in READ_TWICE_CELLS)
                    + f" | {100 * sum(gain) / len(gain):+.1f} | {r['seconds']:.0f} s |")
    return "\n".join(rows), records


def plot_read_twice(records, plt):
    """Accuracy read once vs twice per query share, one panel per model; a dot per seed, a bar per mean."""
    models = list(dict.fromkeys(r["model"] for r in records))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        rs = [r for r in records if r["model"] == model]
        for j, r in enumerate(rs):
            for i, (c, label) in enumerate((("once → once", "trained and tested once"),
                                            ("twice → twice", "trained and tested twice"))):
                x = 3 * j + i
                ax.bar(x, 100 * sum(r[c]) / len(r[c]), color=f"C{i}", alpha=0.5,
                       label=label if j == 0 else None)
                ax.plot([x] * len(r[c]), [100 * v for v in r[c]], "k.")
        ax.set_xticks([3 * j + 0.5 for j in range(len(rs))],
                      [f"{r['q']} of {r['k']} queried\nd_model {r['d_model']}" for r in rs])
        ax.set(title=f"MQAR read once vs twice: {model}", ylabel="accuracy (%), dots: seeds", ylim=(0, 102))
    axes[0][0].legend(fontsize=8, loc="lower left")
    return fig


# ----------------------------------------------------------------------------- OPRM: overflow

def mqar_mixture(g, seed=0):
    """The training set: n_train examples spread evenly over every (context length, pairs) of the mixture,
    left-padded to one length (pads never enter a state); the context is JRT-RNN's prefix (M = C)."""
    shapes = [(C, k) for C in g["train_contexts"] for k in g["train_pairs"] if 2 * k <= C]
    parts = [data.mqar(g["n_train"] // len(shapes), vocab_size=g["vocab_size"],
                       seq_len=C + 2 * g["query_slots"], num_pairs=k, num_queries=min(k, g["query_slots"]),
                       context_len=C, idk_frac=g["idk_frac"], seed=seed + i, split="train")
             for i, (C, k) in enumerate(shapes)]
    T = max(part.x.shape[1] for part in parts)
    left = lambda t, value: torch.cat([torch.full((len(t), T - t.shape[1]), value, dtype=t.dtype), t], 1)
    return data.Examples(torch.cat([left(part.x, 0) for part in parts]),
                         torch.cat([left(part.y, -100) for part in parts]),
                         torch.cat([part.prefix_len for part in parts]),
                         torch.cat([left(part.pad, True) for part in parts]),
                         torch.cat([torch.full((len(part),), i) for i, part in enumerate(parts)]),
                         [f"C={C} k={k}" for C, k in shapes], g["vocab_size"])


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
    fit(model, mqar_mixture(g, seed), g["iters"], g["lr"], g["batch_size"], seed)
    config = dict(model=f"{NAMES[name]} d{d_model}", train_seconds=time.time() - t0, context_len=C,
                  seq_len=C + 2 * g["query_slots"], num_pairs=max(g["train_pairs"]),
                  vocab_size=g["vocab_size"], settings=train_settings(g, name, d_model, seed))
    saved = dict(model=model.state_dict(), model_args=asdict(model.config), config=config, iter=g["iters"])
    save_checkpoint(saved, os.fspath(path))          # atomic, with a checksum verified on load
    return model, config


def trained_model(name, d_model, g, out_dir, *, seed=0, device=None):
    """The overflow model saved in out_dir if it was trained with these very settings, else a new one."""
    path = os.path.join(out_dir, f"{name}_d{d_model}.pt")
    want = train_settings(g, name, d_model, seed)
    if os.path.exists(path):
        model, config = load_checkpoint(path, device or "cpu")
        have = config.get("settings", {})
        if have == want:
            print(f"reusing {path}", flush=True)
            return model, config
        diff = [f"{k} {have.get(k, '?')} -> {v}" for k, v in want.items() if have.get(k) != v]
        print(f"{path} was trained with other settings ({'; '.join(diff)}): training again", flush=True)
    print(f"overflow: training {NAMES[name]}, d_model {d_model}", flush=True)
    model, config = fit_mqar(name, d_model, g, path, device=device, seed=seed)
    print(f"saved {path}: {config['train_seconds']:.0f} s of training", flush=True)
    return model, config


def overflow(g, seed=0, out_dir="out/oprm", models=None, device=None):
    """Train (or reuse from out_dir) each run of the grid on 1..K facts at one context length, then test it
    on 1..K facts and a little beyond: full context vs OPRM's chunks, with every selector."""
    os.makedirs(out_dir, exist_ok=True)
    runs = [(name, d) for name, d in g["runs"] if not models or name in models]
    trained = [trained_model(name, d, g, out_dir, seed=seed, device=device) for name, d in runs]
    sizes = ["| model | layers | d_model | state (numbers per sequence) | training s |",
             "|---|---|---|---|---|"]
    for (name, d), (model, config) in zip(runs, trained):
        state = model.state_size(config["seq_len"])["total"]
        sizes.append(f"| {config['model']} | {','.join(LAYERS[name])} | {d} | {state:,}"
                     + (" (its KV cache at the test length)" if name == "transformer" else "")
                     + f" | {config['train_seconds']:.0f} |")
    rows, records = [ACC_HEADER], []
    print(ACC_HEADER, flush=True)
    for model, config in trained:
        for r in accuracy_rows(model, config, g["test_pairs"], g["chunk_lens"], g["n_test"], seed=seed):
            rows.append(markdown_row(r))
            records.append(r)
            print(rows[-1], flush=True)
    return "\n".join(sizes) + "\n\n" + "\n".join(rows), records


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


def save_plot(plot, records, path):
    """Draw records with `plot` into a PNG at path (main checks first that matplotlib is installed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plot(records, plt).savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")


EXPERIMENTS = {"set-order": (set_order, plot_set_order), "read-twice": (read_twice, plot_read_twice),
               "overflow": (overflow, plot_overflow)}


def parser():
    ap = argparse.ArgumentParser(description="The papers' synthetic experiments: train small models, print "
                                 "a table")
    ap.add_argument("experiment", choices=tuple(EXPERIMENTS))
    ap.add_argument("--grid", choices=("cpu", "quick", "gpu"), default="cpu",
                    help="the experiment's size (GRIDS)")
    ap.add_argument("--quick", action="store_true",
                    help="the same as --grid quick: a few minutes on one CPU thread")
    ap.add_argument("--widths", help="set-order, read-twice: (d_model, f) pairs instead of the grid's, "
                    "e.g. 32:4,64:8")
    ap.add_argument("--vocab_size", type=int,
                    help="the grid's vocabulary instead (set-order: ids the sets are relabelled onto)")
    ap.add_argument("--iters", type=int, help="the grid's training steps per model instead")
    ap.add_argument("--n_train", type=int, help="the grid's training examples instead (set-order: per shape)")
    ap.add_argument("--models", help=f"read-twice, overflow: which of {','.join(LAYERS)} to train "
                    "(overflow: or reuse; default: the grid's)")
    ap.add_argument("--out_dir", help="overflow: where its models are saved, and reused from when their "
                    "training settings match; default out/oprm (out/oprm-quick, out/oprm-gpu for the other "
                    "grids)")
    ap.add_argument("--seed", type=int, help="model init, data and batch order; default 0 (read-twice: one "
                    "seed instead of the grid's)")
    ap.add_argument("--seeds", help="read-twice: comma-separated seeds instead of the grid's, e.g. 0,1,2")
    ap.add_argument("--device", default="auto",
                    help="auto (CUDA when available, else the CPU) | cpu | cuda | mps")
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
    kw = dict(device=device)
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
        kw.update(out_dir=out_dir, models=models or None, seed=a.seed or 0)
    elif a.experiment == "read-twice":
        if models:
            g["models"] = tuple(models)
        try:
            one = [a.seed] if a.seed is not None else None
            kw["seeds"] = [int(v) for v in a.seeds.split(",")] if a.seeds else one
        except ValueError:
            ap.error(f"--seeds={a.seeds}: expected comma-separated ints, e.g. 0,1")
    else:
        kw["seed"] = a.seed or 0
    if a.seeds and a.experiment != "read-twice":
        ap.error("--seeds is for read-twice; the others take one --seed")
    return g, kw


def main(argv=None):
    ap = parser()
    a = ap.parse_args(argv)
    g, kw = check_args(ap, a)
    if a.threads:
        torch.set_num_threads(a.threads)
    t0, cpu0 = time.time(), time.process_time()
    run, plot = EXPERIMENTS[a.experiment]
    try:
        table, records = run(g, **kw)
    except ValueError as e:               # our checks of the data's settings, e.g. a vocabulary too small
        ap.error(str(e))
    cmd = " ".join(["python experiments.py"] + (argv if argv is not None else sys.argv[1:]))
    table += (f"\n\n(`{cmd}`: {time.time() - t0:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU, "
              f"{torch.get_num_threads()} torch thread(s), on {kw['device'].type})")
    print("\n" + table)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(table + "\n")
    if a.plot:
        save_plot(plot, records, a.plot)
    return table


if __name__ == "__main__":
    main()
