"""
OPRM's cost (Ben-Kish et al. 2025): OPRM prefills every chunk [P, C_i, S] and keeps every chunk's state.
This times that speculative prefill (chunked.speculative_prefill) against one full-context prefill of the
same tokens (the same function with one chunk), and measures the peak memory of each, against context
length: model.py's tiny presets with random weights, fp32. results/oprm_cost.md has the numbers.

    python bench/oprm.py [--models based-tiny,jrt-tiny,transformer-tiny] [--context_lens 1024,2048,...]
                         [--chunk_len 512] [--max_batch_tokens 120000] [--threads 1] [--device cpu]

A markdown table on stdout, every number in a JSON file (default out/bench-oprm-<device>.json). About 100 s on
a CPU (one thread). The exit status is 1 when a row failed (an error), as bench.py's.
"""
import argparse
import ctypes
import json
import os
import sys
import time

# Run as a script, sys.path[0] is bench/; the repository root goes first, so that `import bench` is bench.py.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench import (add_run_options, atomic_write, check_out, describe, exit_status, failure,  # noqa: E402
                   free, headline, notes, run_device, sync, word)
from chunked import speculative_prefill  # noqa: E402
from model import PRESETS, Config, Model  # noqa: E402

PROG = "bench/oprm.py"


def rss_follows_tensors():
    """glibc keeps freed blocks under its mmap threshold resident (the threshold grows up to 32 MB), so the
    peak resident size would miss memory reused from earlier calls. A fixed 64 KB threshold (mallopt
    M_MMAP_THRESHOLD = -3) maps every tensor on its own and unmaps it when freed. Linux/glibc only."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)
    except (OSError, AttributeError):
        pass


def proc_status(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


def memory_mark(device):
    """Start measuring peak memory: CUDA's allocator statistics, or on Linux the process's peak resident
    size (VmHWM), which writing 5 to /proc/self/clear_refs resets. Returns the baseline in bytes."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return proc_status("VmRSS:")
    except OSError:
        return None


def memory_peak(device, base):
    if base is None:
        return float("nan")
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() - base
    return proc_status("VmHWM:") - base


@torch.no_grad()
def prefill_cost(model, context_len, chunk_len, *, max_batch_tokens=120_000, suffix_len=8, reps=3, seed=0):
    """Seconds (best of reps) and peak memory above the start (bytes) of the speculative prefill of a
    random context: one chunk (full context) vs OPRM's chunks. The states are kept, as OPRM keeps them."""
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    context = torch.randint(1, model.config.vocab_size, (context_len,), generator=g).tolist()
    suffix = torch.randint(1, model.config.vocab_size, (suffix_len,), generator=g).tolist()
    out = {}
    for name, L in (("full", context_len), ("oprm", chunk_len)):
        speculative_prefill(model, [], context, suffix, L, max_batch_tokens=max_batch_tokens)  # warm-up
        best, peak = float("inf"), 0
        for _ in range(reps):
            base = memory_mark(device)
            t0 = time.perf_counter()
            states = speculative_prefill(model, [], context, suffix, L, max_batch_tokens=max_batch_tokens)
            sync(device)
            best = min(best, time.perf_counter() - t0)
            peak = max(peak, memory_peak(device, base))
            del states
        out[name] = (best, peak)
    return out


def oprm_suite(opt, dev, backend):
    """prefill_cost of each preset (fp32, random weights) at each context length N, in chunks of
    L = min(chunk_len, N) tokens. opt: models, context_lens, chunk_len, max_batch_tokens."""
    recs = []
    if dev.type == "cpu":
        rss_follows_tensors()
    for preset in opt["models"]:
        torch.manual_seed(0)
        model = Model(Config.from_preset(preset, backend=backend)).to(dev).eval()
        for N in opt["context_lens"]:
            L = min(opt["chunk_len"], N)
            rec = dict(model=preset, context=N, L=L, max_batch_tokens=opt["max_batch_tokens"])
            try:
                cost = prefill_cost(model, N, L, max_batch_tokens=opt["max_batch_tokens"])
                rec.update(status="ok", full_s=cost["full"][0], oprm_s=cost["oprm"][0],
                           full_bytes=cost["full"][1], oprm_bytes=cost["oprm"][1])
            except Exception as e:  # noqa: BLE001
                rec.update(failure(e))
            free(rec["status"] != "ok")
            print(f"oprm {preset} N={N} L={L}: {rec['status']}", file=sys.stderr)
            recs.append(rec)
        del model
    return recs


def table(recs, max_batch_tokens):
    out = [f"\n### OPRM's prefill of [C_i, S] with |S| = 8, max_batch_tokens {max_batch_tokens}: "
           "seconds (best of 3) and peak memory above the start (MB)\n",
           "| model | context | L | full s | OPRM s | full MB | OPRM MB |", "|" + "---|" * 7]
    for r in recs:
        cells = ([f"{r['full_s']:.3f}", f"{r['oprm_s']:.3f}", f"{r['full_bytes'] / 2**20:.1f}",
                  f"{r['oprm_bytes'] / 2**20:.1f}"] if r["status"] == "ok" else [word(r), "", "", ""])
        out.append("| " + " | ".join([r["model"], str(r["context"]), str(r["L"]), *cells]) + " |")
    return "\n".join(out + notes(recs))


def options(args):
    """The options before any work, one line for each mistake."""
    try:
        context_lens = [int(v) for v in args.context_lens.split(",")]
    except ValueError:
        context_lens = []
    if not context_lens or min(context_lens) < 1:
        sys.exit(f"{PROG} --context_lens={args.context_lens}: expected positive ints, comma-separated")
    for name in ("chunk_len", "max_batch_tokens"):
        if getattr(args, name) < 1:
            sys.exit(f"{PROG} --{name}={getattr(args, name)}: must be >= 1")
    if args.threads < 0:
        sys.exit(f"{PROG} --threads={args.threads}: must be >= 0 (0: torch's default)")
    models = args.models.split(",")
    unknown = [m for m in models if m not in PRESETS]
    if unknown:
        sys.exit(f"{PROG} --models={args.models}: unknown preset {unknown[0]!r}; model.py has "
                 f"{', '.join(sorted(PRESETS))}")
    return dict(models=models, context_lens=context_lens, chunk_len=args.chunk_len,
                max_batch_tokens=args.max_batch_tokens)


def main(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description="OPRM's prefill time and peak memory against one "
                                "full-context prefill; see the docstring of bench/oprm.py")
    add_run_options(p, tiny="recorded in the meta only: --models picks the sizes")
    p.add_argument("--out", default=None, help="JSON file (default out/bench-oprm-<device>.json)")
    p.add_argument("--models", default="based-tiny,jrt-tiny,transformer-tiny",
                   help="model.py presets, random weights")
    p.add_argument("--context_lens", default="1024,2048,4096,8192,16384", help="context lengths")
    p.add_argument("--chunk_len", type=int, default=512, help="OPRM's chunk length L (≤ the context)")
    p.add_argument("--max_batch_tokens", type=int, default=120_000,
                   help="tokens per prefill batch (the OPRM paper's ~120k)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (the tiny models run fastest on one); 0 = torch's default")
    args = p.parse_args(argv)
    dev = run_device(args, PROG)
    opt = options(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    _, _, _, meta, slug = describe(args, dev)
    args.out = args.out or f"out/bench-oprm-{slug}.json"
    check_out(args.out, PROG)
    print(headline(meta), flush=True)
    backend = args.backend or ("auto" if dev.type == "cuda" else "torch")
    torch.manual_seed(0)
    results = dict(meta=meta, oprm=oprm_suite(opt, dev, backend))
    print(table(results["oprm"], opt["max_batch_tokens"]))
    atomic_write(args.out, json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    sys.exit(exit_status(main(), PROG))
