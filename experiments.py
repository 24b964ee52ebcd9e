"""
The synthetic experiments of both papers, each training its small models from scratch: in minutes on a
CPU (--grid cpu), or closer to the papers' sizes on a GPU (--grid gpu).

    python experiments.py set-order    JRT (SPEC §1, §8; paper Figure 2): causal Based vs JRT-RNN on set
                                       disjointness, the shorter set first vs last, at a few state sizes
    python experiments.py read-twice   JRT (SPEC §1): Based on MQAR read once vs twice (kv, queries, kv,
                                       queries) at the same state size; the once-trained model on the twice
                                       layout zero-shot
    python experiments.py overflow     OPRM (SPEC §7): Based, JRT-RNN and a Transformer on MQAR with more
                                       facts than they were trained on: full context vs OPRM's chunks

Models as in the papers' synthetic studies: BaseConv + mixer stacks without a sliding window (a window
as long as the input is full attention and would hide the effect), with an output layer of their own
(`tie_embeddings=False`): tied, these tiny models sat on MQAR's plateau (accuracy ~1/k, "any value from
the context") for a whole CPU run. One training loop serves all three (`fit`): train.py's optimiser and
schedule, loss on the answer positions only. Each prints a markdown table (and with --plot draws it);
results/ holds what we measured.
"""
import argparse
import os
import sys
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F

import data
from chunked import ACC_HEADER, accuracy_rows, markdown_row
from checkpoint import load_checkpoint
from model import Config, Model
from prompt import accuracy, answer_logits, jrt_examples

LAYERS = {  # name -> layer layout: Zoology-style conv + mixer stacks
    "based": ("conv", "la") * 2,          # causal Based
    "jrt": ("conv", "pla") * 2,           # JRT-RNN: reads its prefix non-causally (each row's prefix_len)
    "transformer": ("conv", "attn") * 2,  # the ceiling: a KV cache holds every token
}
NAMES = {"based": "Based", "jrt": "JRT-RNN", "transformer": "Transformer"}

GRIDS = {
    # set disjointness: (|A|, |B|) shapes in both orders; sets relabelled onto vocab_size ids (see relabel).
    # CPU: 252 set ids, not fewer: among 60 ids a set of 32 is cheap to hold, and trained this long causal
    # Based solves both orders at d_model 32, so no order effect can show (results/prompt_experiments.md)
    "set-order": {
        "cpu": dict(shapes=[(4, 16), (16, 4), (4, 32), (32, 4)], vocab_size=256, n_train=40000, n_test=250,
                    widths=[(16, 4), (32, 4)], n_head=2, init_std=0.12, iters=6000, lr=3e-3, batch_size=64),
        "gpu": dict(shapes=data.SD_TRAIN_SHAPES, vocab_size=data.SD_VOCAB, n_train=20000, n_test=1000,
                    widths=[(36, 4), (64, 8), (96, 16), (128, 24)], n_head=2, init_std=0.06, iters=20000, lr=1e-3,
                    batch_size=256),
    },
    # MQAR tasks: (seq_len of one pass, key-value pairs k, queries q); q < k, so min(k, q) = q.
    # CPU: 80k examples and 3,000 steps; with 20k and 1,000 the read-twice models were still learning,
    # and the comparison measured training speed instead of the state each layout needs
    "read-twice": {
        "cpu": dict(tasks=[(64, 16, 4)], vocab_size=64, n_train=80000, n_test=500,
                    widths=[(16, 4), (24, 4)], n_head=2, init_std=0.12, iters=3000, lr=3e-3, batch_size=64),
        "gpu": dict(tasks=[(256, 64, 8), (256, 64, 64)], vocab_size=8192, n_train=100000, n_test=1000,
                    widths=[(64, 8), (128, 16), (256, 16)], n_head=4, init_std=0.06, iters=20000, lr=1e-3,
                    batch_size=256),
    },
    # OPRM's associative-recall study on MQAR. Training: a mixture of context lengths (train_contexts) and
    # of few pairs (train_pairs), queries at the end, a share of them about absent keys (answer: the IDK
    # token, so a chunk without the key can say so). Like an LLM, which has read texts of every length,
    # the model then knows what a short chunk looks like. Test: the longest context with more pairs.
    "overflow": {
        "cpu": dict(models=tuple(LAYERS), vocab_size=64, train_contexts=(8, 16, 32), train_pairs=(4,),
                    query_slots=4, idk_frac=0.25, d_model=64, n_head=4, feature_dim=8, init_std=0.02,
                    n_train=20000, iters=1500, lr=3e-3, batch_size=64, test_pairs=(4, 8, 16), chunk_lens=(16, 8),
                    n_test=200),
        "gpu": dict(models=tuple(LAYERS), vocab_size=8192, train_contexts=(64, 128, 256, 512, 1024),
                    train_pairs=(4, 8, 16), query_slots=16, idk_frac=0.25, d_model=128, n_head=4, feature_dim=16,
                    init_std=0.02, n_train=100000, iters=20000, lr=1e-3, batch_size=256,
                    test_pairs=(16, 32, 64, 128, 256), chunk_lens=(128, 64), n_test=1000),
    },
}


def make_model(layers, *, vocab_size, d_model, n_head, feature_dim, prefix_len, init_std, seed=0, device=None):
    torch.manual_seed(seed)
    cfg = Config(vocab_size=vocab_size, d_model=d_model, n_head=n_head, feature_dim=feature_dim, layers=layers,
                 prefix_len=prefix_len, init_std=init_std, tie_embeddings=False)
    return Model(cfg).to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def fit(model, ex, iters, lr, batch_size=64, seed=0, log_every=100):
    """Train on data.Examples with train.py's recipe: AdamW (0.9, 0.95), weight decay 0.1 on matrices,
    warmup then cosine to lr/10, gradient clip 1.0; loss on the answer positions only."""
    import train  # its optimiser and schedule; imported here so that this file's import stays light
    hp = argparse.Namespace(lr=lr, min_lr_ratio=0.1, warmup_iters=max(1, iters // 20), lr_decay_iters=0,
                            max_iters=iters, weight_decay=0.1, beta1=0.9, beta2=0.95)
    dev = next(model.parameters()).device
    opt = train.configure_optimizer(model, hp, dev.type)
    gen, t0 = torch.Generator().manual_seed(seed), time.time()
    model.train()
    for it in range(iters):
        for group in opt.param_groups:
            group["lr"] = train.get_lr(it, hp)
        e = ex[torch.randint(len(ex), (batch_size,), generator=gen)]
        b = train.to_device(dict(x=e.x, y=e.y, M=e.prefix_len, pad=e.pad, mlm=None), dev)  # drops all-pad columns
        logits, y = answer_logits(model, b["x"], b["y"], b["M"], b["pad"])
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if log_every and (it + 1) % log_every == 0:
            print(f"  iter {it + 1}/{iters} loss {loss.item():.3f} ({time.time() - t0:.0f} s)", flush=True)
    return model.eval()


# ----------------------------------------------------------------------------- JRT: set order (SPEC §8)

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
            raise ValueError(f"relabel: a row has {len(toks)} set tokens, more than vocab_size - 4 = {vocab_size - 4}")
        lut = torch.arange(max(data.SD_VOCAB, vocab_size))                     # old id -> new id
        lut[toks] = torch.randperm(vocab_size - 4, generator=gen)[:len(toks)] + 4
        x[r] = lut[x[r]]
        y[r] = torch.where(y[r] >= 4, lut[y[r].clamp(min=0)], y[r])
    return data.Examples(x, y, ex.prefix_len, ex.pad, ex.group, ex.groups, vocab_size)


def set_order(g, seed=0):
    """Causal Based vs JRT-RNN (prefix = the whole input) on set disjointness, trained on both orders of
    each shape; test accuracy with the shorter set first vs last, at a few state sizes.
    A and B are drawn from the whole vocabulary (halves=False): with SPEC §8's halves, the shared token
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
                               prefix_len=T, init_std=g["init_std"], seed=seed)
            fit(model, train_ex, g["iters"], g["lr"], g["batch_size"], seed)
            per, _ = accuracy(model, test_ex)
            acc = {(a, b): (per[f"|A|={a} |B|={b}"], per[f"|A|={b} |B|={a}"]) for a, b in pairs}  # short first, last
            records.append(dict(model=NAMES[name], d_model=d, f=f, state=model.state_size()["total"], acc=acc,
                                seconds=time.time() - t0))
    rows = [("| model | d_model | f | state | " + " | ".join(f"{a} & {b}: short first / last" for a, b in pairs)
             + " | train time |"), "|---" * (5 + len(pairs)) + "|"]
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


# ----------------------------------------------------------------------------- JRT: reading twice (SPEC §1)

def read_twice(g, seed=0):
    """Based trained on MQAR read once vs read twice (`kv, queries, kv, queries`), same model and so the
    same state size; and each model on the other layout zero-shot. With q queries about k pairs, one pass
    needs state for all k pairs, two passes only for the q asked (Ω(min) vs Ω(max))."""
    records = []
    for P, k, q in g["tasks"]:
        kw = dict(vocab_size=g["vocab_size"], num_pairs=k, num_queries=q, seed=seed)
        once_tr = data.mqar(g["n_train"], seq_len=P, split="train", **kw)
        twice_tr = data.mqar(g["n_train"], seq_len=2 * P, read_twice=True, split="train", **kw)
        once_te = data.mqar(g["n_test"], seq_len=P, split="test", **kw)
        twice_te = jrt_examples(once_te, 2)          # the same test rows, shown twice
        for d, f in g["widths"]:
            r = dict(T=P, k=k, q=q, d_model=d, f=f, seconds=0.0)
            for fmt, train_ex in (("once", once_tr), ("twice", twice_tr)):
                print(f"read twice: T={P} k={k} q={q}, trained {fmt}, d_model {d}, f {f}", flush=True)
                t0 = time.time()
                model = make_model(LAYERS["based"], vocab_size=g["vocab_size"], d_model=d, n_head=g["n_head"],
                                   feature_dim=f, prefix_len=2 * P, init_std=g["init_std"], seed=seed)
                fit(model, train_ex, g["iters"], g["lr"], g["batch_size"], seed)
                r["seconds"] += time.time() - t0
                r[f"{fmt} → once"] = accuracy(model, once_te)[1]
                r[f"{fmt} → twice"] = accuracy(model, twice_te)[1]
            records.append(dict(r, state=model.state_size()["total"]))
    rows = ["| T (one pass) | pairs k | queries q | d_model | f | state | once → once | once → twice (zero-shot) "
            "| twice → twice | twice → once | train time (both) |", "|---" * 11 + "|"]
    for r in records:
        rows.append(f"| {r['T']} | {r['k']} | {r['q']} | {r['d_model']} | {r['f']} | {r['state']:,} | "
                    + " | ".join(f"{100 * r[c]:.1f}" for c in READ_TWICE_CELLS) + f" | {r['seconds']:.0f} s |")
    return "\n".join(rows), records


READ_TWICE_CELLS = ("once → once", "once → twice", "twice → twice", "twice → once")  # trained on → tested on


def plot_read_twice(records, plt):
    tasks = list(dict.fromkeys((r["T"], r["k"], r["q"]) for r in records))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, (P, k, q) in zip(axes[0], tasks):
        rs = [r for r in records if (r["T"], r["k"], r["q"]) == (P, k, q)]
        for c in READ_TWICE_CELLS:
            ax.plot([r["state"] for r in rs], [100 * r[c] for r in rs], "-" if c.startswith("twice →") else "--",
                    marker="o", label=f"trained {c.replace(' → ', ', tested ')}")
        ax.set(title=f"MQAR, Based: T={P} per pass, {k} pairs, {q} queries", xlabel="state (numbers per sequence)",
               ylabel="accuracy (%)", ylim=(0, 102))
    axes[0][0].legend(fontsize=8)
    return fig


# ----------------------------------------------------------------------------- OPRM: overflow (SPEC §7)

def mqar_mixture(g, seed=0):
    """The training set: n_train examples spread evenly over every (context length, pairs) of the mixture,
    left-padded to one length (pads never enter a state); the context is JRT-RNN's prefix (M = C)."""
    shapes = [(C, k) for C in g["train_contexts"] for k in g["train_pairs"] if 2 * k <= C]
    parts = [data.mqar(g["n_train"] // len(shapes), vocab_size=g["vocab_size"], seq_len=C + 2 * g["query_slots"],
                       num_pairs=k, num_queries=min(k, g["query_slots"]), context_len=C, idk_frac=g["idk_frac"],
                       seed=seed + i, split="train") for i, (C, k) in enumerate(shapes)]
    T = max(e.x.shape[1] for e in parts)
    left = lambda t, value: torch.cat([torch.full((len(t), T - t.shape[1]), value, dtype=t.dtype), t], 1)
    return data.Examples(torch.cat([left(e.x, 0) for e in parts]), torch.cat([left(e.y, -100) for e in parts]),
                         torch.cat([e.prefix_len for e in parts]), torch.cat([left(e.pad, True) for e in parts]),
                         torch.cat([torch.full((len(e),), i) for i, e in enumerate(parts)]),
                         [f"C={C} k={k}" for C, k in shapes], g["vocab_size"])


def fit_mqar(name, g, path, *, device=None, seed=0):
    """Train one model of the overflow experiment and save it in train.py's checkpoint format (atomically),
    with the test's shape in its config, so that `python chunked.py --task mqar_long` can test it too."""
    C = max(g["train_contexts"])
    model = make_model(LAYERS[name], vocab_size=g["vocab_size"], d_model=g["d_model"], n_head=g["n_head"],
                       feature_dim=g["feature_dim"], prefix_len=C, init_std=g["init_std"], seed=seed, device=device)
    t0 = time.time()
    fit(model, mqar_mixture(g, seed), g["iters"], g["lr"], g["batch_size"], seed)
    config = dict(g, model=NAMES[name], train_seconds=time.time() - t0, context_len=C,
                  seq_len=C + 2 * g["query_slots"], num_pairs=max(g["train_pairs"]))
    ck = dict(model=model.state_dict(), model_args=asdict(model.config), config=config, iter=g["iters"])
    torch.save(ck, f"{path}.tmp")
    os.replace(f"{path}.tmp", path)                  # a crash never leaves half a checkpoint
    return model, config


def overflow(g, seed=0, out_dir="out/oprm", models=None, device=None):
    """Train (or reuse from out_dir) each model, then test it: full context vs OPRM at every chunk length."""
    os.makedirs(out_dir, exist_ok=True)
    trained = []
    for name in models or g["models"]:
        path = os.path.join(out_dir, f"{name}.pt")
        if os.path.exists(path):
            print(f"reusing {path}", flush=True)
            trained.append(load_checkpoint(path, device or "cpu"))
        else:
            print(f"overflow: training {NAMES[name]}", flush=True)
            trained.append(fit_mqar(name, g, path, device=device, seed=seed))
            print(f"saved {path}: {trained[-1][1]['train_seconds']:.0f} s of training", flush=True)
    rows, records = [ACC_HEADER], []
    print(ACC_HEADER, flush=True)
    for model, c in trained:
        for r in accuracy_rows(model, c, g["test_pairs"], g["chunk_lens"], g["n_test"]):
            rows.append(markdown_row(r))
            records.append(r)
            print(rows[-1], flush=True)
    return "\n".join(rows), records


def plot_overflow(records, plt):
    models = list(dict.fromkeys(r["model"] for r in records))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        rs = [r for r in records if r["model"] == model]
        full = {r["pairs"]: r["full"] for r in rs}
        ax.plot(list(full), [100 * v for v in full.values()], "k-", marker="o", label="full context")
        for L in dict.fromkeys(r["L"] for r in rs):
            rl = [r for r in rs if r["L"] == L]
            ax.plot([r["pairs"] for r in rl], [100 * r["entropy+idk"] for r in rl], "--", marker="o",
                    label=f"OPRM entropy + IDK, L={L}")
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(full), [str(k) for k in full])
        ax.set(title=f"MQAR overflow: {model}", xlabel="key-value pairs in the context", ylabel="accuracy (%)",
               ylim=(0, 102))
        ax.legend(fontsize=8)
    return fig


def save_plot(plot, records, path):
    """Draw records with `plot` into a PNG at path, if matplotlib is installed (it is optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"--plot: matplotlib is not installed (pip install matplotlib), so {path} was not written")
        return
    plot(records, plt).savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")


EXPERIMENTS = {"set-order": (set_order, plot_set_order), "read-twice": (read_twice, plot_read_twice),
               "overflow": (overflow, plot_overflow)}


def main(argv=None):
    ap = argparse.ArgumentParser(description="The papers' synthetic experiments: train small models, print a table")
    ap.add_argument("experiment", choices=tuple(EXPERIMENTS))
    ap.add_argument("--grid", choices=("cpu", "gpu"), default="cpu", help="the experiment's size (GRIDS)")
    ap.add_argument("--widths", help="set-order, read-twice: (d_model, f) pairs instead of the grid's, e.g. 32:4,64:8")
    ap.add_argument("--vocab_size", type=int, help="the grid's vocabulary instead (set-order: ids the sets are relabelled onto)")
    ap.add_argument("--iters", type=int, help="the grid's training steps per model instead")
    ap.add_argument("--n_train", type=int, help="the grid's training examples instead (set-order: per shape)")
    ap.add_argument("--models", help=f"overflow: which of {','.join(LAYERS)} to train or reuse (default: all)")
    ap.add_argument("--out_dir", default="out/oprm", help="overflow: where its models are saved and reused from")
    ap.add_argument("--seed", type=int, default=0, help="model init, data and batch order")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads; tiny models run fastest on one (more "
                    "threads only wait for each other, ~10x slower on a busy CPU); 0 = torch's default")
    ap.add_argument("--out", help="also write the table (markdown) to this file")
    ap.add_argument("--plot", help="also draw the results into this PNG file (needs matplotlib)")
    a = ap.parse_args(argv)
    g = dict(GRIDS[a.experiment][a.grid])
    kw = {}
    if a.widths:
        if a.experiment == "overflow":
            ap.error("--widths is for set-order and read-twice; the overflow models' width is the grid's d_model")
        try:
            g["widths"] = [tuple(int(v) for v in w.split(":")) for w in a.widths.split(",")]
        except ValueError:
            g["widths"] = [()]
        if not all(len(w) == 2 and min(w) > 0 for w in g["widths"]):
            ap.error(f"--widths={a.widths}: expected d_model:f pairs of positive ints, comma-separated, e.g. 32:4,64:8")
    for key, least in (("vocab_size", 8), ("iters", 1), ("n_train", 1)):
        value = getattr(a, key)
        if value is not None:
            if value < least:
                ap.error(f"--{key}={value}: expected an int >= {least}")
            g[key] = value
    if a.experiment == "overflow":
        models = [m for m in (a.models or "").split(",") if m]
        bad = [m for m in models if m not in LAYERS]
        if bad:
            ap.error(f"--models={a.models}: unknown {bad}; allowed: {','.join(LAYERS)}")
        kw = dict(out_dir=a.out_dir, models=models or None)
    elif a.models:
        ap.error("--models is for the overflow experiment")
    if a.threads:
        torch.set_num_threads(a.threads)
    t0 = time.time()
    run, plot = EXPERIMENTS[a.experiment]
    try:
        table, records = run(g, seed=a.seed, **kw)
    except ValueError as e:               # our checks of the data's settings, e.g. a vocabulary too small
        ap.error(str(e))
    cmd = " ".join(["python experiments.py"] + (argv if argv is not None else sys.argv[1:]))
    table += f"\n\n(`{cmd}`: {time.time() - t0:.0f} s)"
    print("\n" + table)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(table + "\n")
    if a.plot:
        save_plot(plot, records, a.plot)
    return table


if __name__ == "__main__":
    main()
