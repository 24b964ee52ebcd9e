"""
The learning-rate sweep behind experiments.py: independent training runs in N processes, grouped into
points (the runs of one model and size at every rate and seed), with the statistics a reader needs:

    max       the maximum over rates and seeds (the JRT paper's statistic for its synthetic figures)
    mean      the mean over seeds at the best rate, and each seed's value there (the seed spread)
    lr, edge  the best rate, and whether it is an end of the sweep (then a wider sweep may do better)

A run is a function of plain keyword arguments that seeds everything it draws (model, data, batch
order), so its result does not depend on how many processes train beside it.
"""
import hashlib
import json
import multiprocessing
import os

import torch


def sweep(run, jobs, n_jobs=1, threads=1, saved=None):
    """[run(**job) for job in jobs], trained in n_jobs processes (`threads` torch threads each). A run seeds
    its own model, data and batch order, so what it returns does not depend on n_jobs or on the process
    that ran it; the results come back in the jobs' order, as JSON would give them back.

    saved: a folder where each run's result is written as soon as it is done (a JSON file named by a hash
    of the function and its job); a job found there is not trained again. A grid that was cut goes on where
    it stopped, and a wider --lrs trains only the new rates. Empty it after changing the code."""
    paths = [os.path.join(saved, job_id(run, job) + ".json") if saved else None for job in jobs]
    results = [None] * len(jobs)
    for i, path in enumerate(paths):
        if path and os.path.exists(path):
            with open(path) as f:
                results[i] = json.load(f)
    todo = [i for i, r in enumerate(results) if r is None]
    if len(todo) < len(jobs):
        print(f"reusing {len(jobs) - len(todo)} of {len(jobs)} runs saved in {saved}", flush=True)
    if saved:
        os.makedirs(saved, exist_ok=True)
    work = [(run, jobs[i], paths[i]) for i in todo]
    if n_jobs <= 1 or len(work) <= 1:
        done = [_call(*w) for w in work]
    else:
        ctx = multiprocessing.get_context("spawn")         # fresh interpreters, nothing shared with this one
        with ctx.Pool(min(n_jobs, len(work)), initializer=_worker_init, initargs=(threads,)) as pool:
            done = pool.starmap(_call, work, chunksize=1)
    for i, r in zip(todo, done):
        results[i] = r
    return results


def job_id(run, job):
    text = json.dumps(dict(job, run=run.__name__), sort_keys=True, default=str)
    return f"{run.__name__}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _worker_init(threads):
    if threads:
        torch.set_num_threads(threads)


def _call(run, job, path=None):
    result = json.loads(json.dumps(run(**job)))              # the same form whether fresh or read back
    if path:                                                # written whole or not at all
        with open(path + ".tmp", "w") as f:
            json.dump(result, f)
        os.replace(path + ".tmp", path)
    return result


_DATA = {}


def cached(build, *args):
    """build(*args), kept for the next runs of this process that ask for the same (the last few only)."""
    key = (build.__name__, repr(args))
    if key not in _DATA:
        while len(_DATA) >= 4:
            _DATA.pop(next(iter(_DATA)))
        _DATA[key] = build(*args)
    return _DATA[key]


def mean(xs):
    return sum(xs) / len(xs)


def points(runs, keys, cells, score):
    """Group the runs into points (equal `keys`; each point was trained at every rate and seed). Per point:
    the best rate (the highest mean over seeds of score(run); a tie goes to the lower rate), whether it is
    an end of the sweep, and per cell the maximum over rates and seeds (the paper's statistic), the mean
    over seeds at the best rate and each seed's value there."""
    out = []
    for key in dict.fromkeys(tuple(r[k] for k in keys) for r in runs):
        rs = [r for r in runs if tuple(r[k] for k in keys) == key]
        lrs = sorted({r["lr"] for r in rs})
        at = {lr: [r for r in rs if r["lr"] == lr] for lr in lrs}
        best = max(lrs, key=lambda lr: mean([score(r) for r in at[lr]]))
        out.append(dict(zip(keys, key), state=rs[0]["state"], lr=best,
                        edge=len(lrs) > 1 and best in (lrs[0], lrs[-1]), seeds=[r["seed"] for r in at[best]],
                        seconds=sum(r["seconds"] for r in rs), max={c: max(r[c] for r in rs) for c in cells},
                        mean={c: mean([r[c] for r in at[best]]) for c in cells},
                        each={c: [r[c] for r in at[best]] for c in cells}))
    return out


def pct_each(v):
    """'(a, b)': each seed's value in %, or nothing for one seed."""
    return f" ({', '.join(f'{100 * x:.1f}' for x in v)})" if len(v) > 1 else ""


def points_table(pts, keys, cells):
    """One row per point: its keys, state and best rate, then per cell `max · mean (each seed)` in %: the
    maximum over rates and seeds, then the mean over seeds at the best rate (and each seed's value)."""
    rows = ["| " + " | ".join([*keys, "state", "best lr"] + [f"{c}: max · mean" for c in cells]) + " |",
            "|---" * (len(keys) + 2 + len(cells)) + "|"]
    for p in pts:
        stats = [f"{100 * p['max'][c]:.1f} · {100 * p['mean'][c]:.1f}{pct_each(p['each'][c])}" for c in cells]
        rows.append("| " + " | ".join([str(p[k]) for k in keys] + [f"{p['state']:,}", rate(p)] + stats) + " |")
    edge = [p for p in pts if p["edge"]]
    note = (f"\n\nThe best rate is an end of the sweep at {len(edge)} of {len(pts)} points (marked \"edge\"): "
            "a wider --lrs may do better there." if edge else "")
    return "\n".join(rows) + note


def diff_cell(top, each):
    """A difference in points: of the maxima, then the mean of the seeds' differences (and each one)."""
    seeds = f" ({', '.join(f'{100 * v:+.1f}' for v in each)})" if len(each) > 1 else ""
    return f"{100 * top:+.1f} · {100 * mean(each):+.1f}{seeds}"


def rate(p):
    return f"{p['lr']:g}" + (" (edge)" if p["edge"] else "")


def runs_table(runs, keys, cells):
    """Every run: its point, rate and seed, each cell in %, its training time."""
    rows = ["| " + " | ".join([*keys, "lr", "seed", *cells, "train s"]) + " |",
            "|---" * (len(keys) + 3 + len(cells)) + "|"]
    for r in runs:
        rows.append("| " + " | ".join([str(r[k]) for k in keys] + [f"{r['lr']:g}", str(r["seed"])]
                                      + [f"{100 * r[c]:.1f}" for c in cells] + [f"{r['seconds']:.0f}"]) + " |")
    return "\n".join(rows)


def collapsible(title, table):
    return f"<details><summary>{title}</summary>\n\n{table}\n\n</details>"


def spread(groups):
    """errorbar's yerr for groups of values about their mean: (below, above)."""
    return [[mean(g) - min(g) for g in groups], [max(g) - mean(g) for g in groups]]


def save_plot(plot, records, path):
    """Draw records with `plot` into a PNG at path (main checks first that matplotlib is installed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plot(records, plt).savefig(path, dpi=120, bbox_inches="tight")
    print(f"wrote {path}")
