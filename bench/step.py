"""
One training step of the synthetic experiments' models on the CPU, split into drawing the batch, the
forward pass, the backward pass and the optimizer (clip + AdamW), as experiments.fit runs it: the cost
that decides how large a learning-rate sweep two cores can afford. Each row is a grid's model at its
training shape (batch 64, one torch thread), the median of --steps steps after --warmup.

    python bench/step.py [--steps 30] [--warmup 5] [--threads 1]

Run it on an idle machine: another job on the same cores inflates every number.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

import torch  # noqa: E402

import data  # noqa: E402
import experiments as E  # noqa: E402
import train  # noqa: E402


def rows():
    """(experiment, model name, d_model, f, examples) at each CPU grid's training shape."""
    sets = data.relabel(data.disjoint_sets(512, shapes=[(4, 16), (16, 4)], halves=False), 256)
    kw = dict(vocab_size=64, num_pairs=16, num_queries=4)
    once, twice = data.mqar(512, seq_len=64, **kw), data.mqar(512, seq_len=128, read_twice=True, **kw)
    mix = data.mqar_mixture(2048, 64, (8, 16, 64), tuple(range(1, 17)), 8, 0.25)
    for name in ("based", "jrt"):
        for d in (16, 32):
            yield "set-order", name, d, 4, sets
        yield "read-twice, once", name, 16, 4, once
        yield "read-twice, twice", name, 16, 4, twice
        yield "overflow", name, 32, 4, mix


def time_step(name, d, f, ex, steps, warmup):
    model = E.make_model(E.LAYERS[name], vocab_size=ex.vocab_size, d_model=d, n_head=2, feature_dim=f,
                         prefix_len=ex.x.shape[1], init_std=0.12, device="cpu")
    cfg = argparse.Namespace(**{**train.DEFAULTS, "lr": 3e-3})
    opt = train.configure_optimizer(model, cfg, "cpu")
    gen = torch.Generator().manual_seed(0)
    parts = {"batch": [], "forward": [], "backward": [], "optimizer": []}
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        b = train.examples_batch(ex[torch.randint(len(ex), (64,), generator=gen)])
        t1 = time.perf_counter()
        loss = E.answer_loss(model, b)
        t2 = time.perf_counter()
        loss.backward()
        t3 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if i >= warmup:
            for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[k].append(1000 * dt)
    return {k: statistics.median(v) for k, v in parts.items()}, tuple(b["x"].shape)


def main(argv=None):
    ap = argparse.ArgumentParser(description="one training step of the experiments' models, timed")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    for opt, least in (("steps", 1), ("warmup", 0), ("threads", 1)):
        if getattr(a, opt) < least:
            ap.error(f"--{opt}={getattr(a, opt)}: expected an int >= {least}")
    torch.set_num_threads(a.threads)
    print("| experiment | model | d_model | f | batch (B, T) | batch ms | forward ms | backward ms | "
          "optimizer ms | step ms |\n|---|---|---|---|---|---|---|---|---|---|")
    for exp, name, d, f, ex in rows():
        ms, shape = time_step(name, d, f, ex, a.steps, a.warmup)
        print(f"| {exp} | {E.NAMES[name]} | {d} | {f} | {shape} | " + " | ".join(f"{v:.1f}" for v in ms.values())
              + f" | {sum(ms.values()):.1f} |", flush=True)


if __name__ == "__main__":
    main()
