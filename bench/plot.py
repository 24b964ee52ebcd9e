"""
Figures from the JSON file bench.py wrote: prefill latency against T (its sweep over T at fixed B) and
decode tokens/s against the context T, log-log, one line per implementation or per (model, B). Apart from
bench.py because matplotlib is optional: a run on a machine without it draws nothing and loses nothing; its
JSON is drawn later, anywhere.

    python bench/plot.py out/bench-all-<device>.json [--format png]

writes out/bench-all-<device>-prefill.png and -decode.png beside it. Needs matplotlib (pip install
matplotlib).
"""
import argparse
import json
import os
import sys

PROG = "bench/plot.py"


def read(path):
    """The suites' rows of bench.py's JSON file, or one line that says what is wrong with it."""
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"{PROG} {path}: cannot read it as JSON: {getattr(e, 'strerror', None) or e}")
    if not isinstance(results, dict) or not (results.get("prefill") or results.get("decode")):
        sys.exit(f"{PROG} {path}: no prefill or decode rows to draw; give the JSON of "
                 "`python bench.py --suite prefill`, `decode` or `all`")
    return results


def check_format(fmt):
    """matplotlib must be there (it is optional) and know the image format."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        sys.exit(f"{PROG} needs matplotlib, which is not installed (pip install matplotlib)")
    known = Figure().canvas.get_supported_filetypes()
    if fmt not in known:
        sys.exit(f"{PROG} --format={fmt}: unknown image format; matplotlib writes {', '.join(sorted(known))}")


def plot(results, base, fmt):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figs = {"prefill": ("T", "ms", [(r["implementation"], r["T"], r["ms"])
                                    for r in results.get("prefill", []) if r["sweep"] == "T"]),
            "decode": ("context T", "tokens/s", [(f"{r['model']} B={r['B']}", r["T"], r["tokens_per_s"])
                                                 for r in results.get("decode", [])])}
    wrote = []
    for name, (xl, yl, pts) in figs.items():
        if not pts:
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        for label in dict.fromkeys(p[0] for p in pts):
            xy = [(x, y) for lab, x, y in pts if lab == label and y]
            if xy:
                ax.plot(*zip(*xy), marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(xlabel=xl, ylabel=yl, title=f"{name}: {results.get('meta', {}).get('device')}")
        ax.legend(fontsize=7)
        fig.savefig(f"{base}-{name}.{fmt}", dpi=120, bbox_inches="tight")
        print(f"wrote {base}-{name}.{fmt}")
        wrote.append(f"{base}-{name}.{fmt}")
    return wrote


def main(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description="figures from bench.py's JSON file")
    p.add_argument("json", help="the file bench.py wrote (e.g. out/bench-all-<device>.json)")
    p.add_argument("--format", default="png", help="any image format matplotlib writes (png, pdf, svg, ...)")
    args = p.parse_args(argv)
    results = read(args.json)
    check_format(args.format)
    return plot(results, os.path.splitext(args.json)[0], args.format)


if __name__ == "__main__":
    main()
