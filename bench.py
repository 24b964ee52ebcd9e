"""
Benchmarks (JRT paper, Table 5): markdown tables on stdout, every number in a JSON file. OPRM's prefill time
and peak memory against context length are bench/oprm.py's (`python bench/oprm.py`; results/oprm_cost.md).

  prefill  latency of the mixing operator alone on random inputs, as in the paper's Table 5:
           FlashAttention-2 vs our Based kernel at T, JRT-Prompt (Based at 2T) and JRT-RNN (PLA with
           M = T/2); also PyTorch SDPA's default, our PyTorch backend and fla's Based kernels when fla
           is importable. Each row is first checked against the float64 reference on a slice; a row that
           disagrees is reported "wrong" and not timed. Out of memory is a cell "OOM".
  decode   tokens/s of Model.step and the cache memory per sequence at growing context: constant
           state (jrt-360m) vs growing KV cache (transformer-360m).
  train    tokens/s and MFU of one training step (forward, backward, AdamW) of the 360M presets.
  compile  no GPU needed: every Triton launch at the Table-5 shape compiled for sm_90 and sm_80 (bf16 and
           fp32, dv 64 and 112) and read: grid, registers, spills, shared memory, CTAs per SM and waves,
           MMA FLOP issued ÷ useful, async copies and atomics in the main loop, FLOP and least HBM bytes.

TFLOP/s are those of the work model below (pla_flop, causal attention 2·T²·d per head; forward + backward
3.5× the forward), i.e. useful work per second, whatever the kernel really computes (fla's parallel_based
is quadratic). "× floor" is latency over max(FLOP / peak, least bytes / bandwidth) on the devices of PEAK.
Our kernels compute the normaliser too; the paper's CUDA kernels did not. Decode is eager PyTorch (no CUDA
graphs).

On a GPU (bf16), a few minutes each; the first run on one is `bash bench/gpu.sh --out DIR` (bench/gpu.py:
kernel checks, the Table-5 row, forward + backward, sweeps, ..., each row saved as soon as it is measured):

    python bench.py --suite prefill
    python bench.py --suite decode
    python bench.py --suite train
    python bench.py --suite all          # all three
    python bench/plot.py out/bench-all-<device>.json   # figures from the JSON (needs matplotlib)

Without CUDA the same commands run the "tiny" sizes below through the PyTorch backend in fp32, in
seconds (`--tiny` forces them on a GPU too); tests/test_bench.py runs them as a smoke test. Outputs go
under out/ (git-ignored) unless --out says otherwise, out/compile.json for `python bench.py --suite
compile [--jobs N]` (compile_check.py: about 2 minutes on 2 cores). The exit status is 1 when a row
failed (an error or a wrong result).
"""
import argparse
import gc
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections import namedtuple
from datetime import datetime, timezone
from functools import partial

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels import pla, pla_flop, pla_reference
from lm import map_tensors, resolve_device
from model import Config, Model
from train import PEAK  # (device, dense bf16 FLOP/s, memory bytes/s)

SIZES = {
    "gpu": dict(
        H=16, f=16, dv=64,                         # JRT paper, Table 5: 16 heads, f 16, dv 64 (FA2: 16 of 64)
        T=(2048, 4096, 8192, 16384, 32768), B=16,  # prefill sweep over T at B = 16: the paper's table
        B_sweep=(2, 4, 8, 16, 32, 64), T_at=16384,  # prefill sweep over B at T = 16k
        check_T=512,                               # queries per row checked against the reference (8 chunks)
        runs=(3, 10, 1.0),                         # warm-up calls; at least 10 timed; more while < 1 s
        decode=("jrt-360m", "transformer-360m"), decode_T=(1024, 2048, 4096, 8192, 16384, 32768),
        decode_B=(1, 2, 4, 8, 16, 32, 64), decode_steps=16,
        train=("jrt-360m", "based-360m", "transformer-360m"),
        train_B=8, train_T=2048,                   # T, M = 2048, 1024 (JRT paper)
        checks=[(2, 4, 1000, 300, 64), (1, 2, 777, 333, 112)],  # bench/gpu.py: (B, H, T, M, dv), pads, state
        grad_T=1024,          # bench/gpu.py: T of the gradient checks at the timed B, H, dv (float64 memory)
        quick_T=(8192,), quick_B=(1, 16)),         # bench/gpu.py: decode at one context
    "tiny": dict(
        H=2, f=16, dv=64, T=(128, 256), B=2, B_sweep=(1, 2), T_at=128, check_T=256, runs=(1, 2, 0.0),
        decode=("jrt-tiny", "transformer-tiny"), decode_T=(64, 128), decode_B=(1, 2), decode_steps=4,
        train=("jrt-tiny", "based-tiny", "transformer-tiny"), train_B=2, train_T=128,
        checks=[(1, 2, 100, 37, 64), (1, 1, 70, 21, 112)], grad_T=256, quick_T=(64,), quick_B=(1, 2)),
}
TOL = {torch.bfloat16: 2e-2, torch.float32: 1e-4}  # max |y - ref| / max |ref|


# ----------------------------------------------------------------------------- work models (per head)

BACKWARD = 2.5  # backward FLOP / forward FLOP: FlashAttention-2's count (Dao 2023, §4); PLA's (kernels.py)


def work(kind, T, S, elt, backward=False):
    """(FLOP, bytes) of one call per head. Causal softmax attention: 2·2·T²·d/2, QKᵀ and PV on half the
    scores. The bytes are the least traffic: read the inputs, write the output. With backward, of the forward
    and the backward together: (1 + BACKWARD)× the FLOP; the backward reads the inputs and the output's
    gradient and writes the inputs' gradients."""
    f, dv = S["f"], S["dv"]
    if kind == "attn":
        flop, n_in, n_out = 2 * T * T * dv, 3 * T * dv, T * dv
    else:
        T, M = (2 * T, 0) if kind == "prompt" else (T, T // 2 if kind == "pla" else 0)
        n_in = T * (2 * f + dv) + M * (f + dv)  # q, k, v, k_enc, v_enc
        flop, n_out = pla_flop(T, M, f, dv), T * dv
    if backward:
        return (1 + BACKWARD) * flop, elt * (3 * n_in + 2 * n_out)
    return flop, elt * (n_in + n_out)


# ----------------------------------------------------------------------------- timing

def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def free(collect=False):
    """Give cached GPU memory back between cells. After a failure, first collect the garbage its traceback
    left (gc.collect takes ~0.5 s once torch._dynamo is imported, so not after every cell)."""
    if collect:
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def failure(e):
    """A cell that could not run: "OOM" (the cache is freed by the caller), or "error" with its message."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return dict(status="OOM")
    return dict(status="error", error=f"{type(e).__name__}: {e}".splitlines()[0][:300])


def timeit(fn, dev, warmup, min_runs, budget_s):
    """Median ms of fn() after warm-up: CUDA events on a GPU, wall clock on CPU."""
    for _ in range(warmup):
        fn()
    sync(dev)
    times, stop = [], time.perf_counter() + budget_s
    while len(times) < min_runs or (len(times) < 100 and time.perf_counter() < stop):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


# ----------------------------------------------------------------------------- prefill

FA2 = "FlashAttention-2 (SDPA flash)"
sdpa = partial(F.scaled_dot_product_attention, is_causal=True)  # whichever backend PyTorch picks
Row = namedtuple("Row", "name kind fn ref backward skip", defaults=(False, False, None))
# kind: "attn" q, k, v (B,H,T,dv); "based" q, k (B,H,T,f), v (B,H,T,dv); "prompt" the same at 2T;
# "pla" plus k_enc, v_enc over M = T/2. ref: the row the others' speed-up is over (FlashAttention-2).
# backward: timed forward + backward. skip: why the row cannot run here (it is reported, not timed).


def fa2(q, k, v):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # forced: an error, not a silent fallback, if it can't run
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


FLA_HOW = ("carry a folder of wheels made with `pip download --no-deps --only-binary=:all: -d .whl "
           "fla-core==0.6.0` and run `bash bench/gpu.sh --wheels .whl ...` (it installs them with "
           "pip --target into a temporary folder put on PYTHONPATH)")


def fla_rows(names=("fused_chunk_based", "parallel_based")):
    """fla's Based kernels as rows, or one skipped row that says why fla is not here and how to bring it."""
    try:
        import fla.ops.based as based
    except Exception as e:  # noqa: BLE001  (fla is optional: any import failure skips its rows)
        why = f"fla not importable ({type(e).__name__}: {str(e).splitlines()[0][:120]}); {FLA_HOW}"
        return [Row("Based, fla", "based", None, skip=why)]
    rows = []
    for name in names:
        fn = getattr(based, name)

        # fla takes (B, T, H, ·), scales q by f^-½ itself (so s = q·k/√f, as ours) and adds 1e-6 to the
        # normaliser. It transposes to (B, H, T, ·), and fla 0.6.0's input_guard then makes q, k, v
        # contiguous: a copy unless they already are. Our inputs are contiguous (B, H, T, ·), handed over as
        # (B, T, H, ·) views, so fla's transpose gives the contiguous tensors back and that copy is a no-op:
        # the time is fla's kernels' (and its division by the normaliser), not a layout change.
        def run(q, k, v, fn=fn):
            return fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        rows.append(Row(f"Based, fla {name}", "based", run))
    return rows


def default_rows(backend):
    ours = lambda b: lambda q, k, v, ke=None, ve=None: pla(q, k, v, ke, ve, backend=b)  # noqa: E731
    rows = [Row(FA2, "attn", fa2, ref=True), Row("SDPA (default backend)", "attn", sdpa),
            Row(f"Based, ours ({backend})", "based", ours(backend)),
            Row(f"JRT-Prompt, ours ({backend}, Based at 2T)", "prompt", ours(backend)),
            Row(f"JRT-RNN, ours ({backend}, M = T/2)", "pla", ours(backend))]
    if backend != "torch":  # the PyTorch backend as rows of their own, "OOM" where it does not fit
        rows += [Row("Based, ours (torch)", "based", ours("torch")),
                 Row("JRT-RNN, ours (torch, M = T/2)", "pla", ours("torch"))]
    return rows + [r for r in fla_rows() if r.skip is None]  # the prefill suite leaves out a missing fla


def make_inputs(row, B, T, S, dev, dtype):
    """Contiguous (B, H, ·, ·) random inputs at unit scale (randn/16 would hide errors in the s² term)."""
    def r(n, t=T):
        return torch.randn(B, S["H"], t, n, device=dev, dtype=dtype)
    f, dv = S["f"], S["dv"]
    if row.kind == "attn":
        return r(dv), r(dv), r(dv)
    if row.kind == "prompt":
        return r(f, 2 * T), r(f, 2 * T), r(dv, 2 * T)
    return (r(f), r(f), r(dv)) + ((r(f, T // 2), r(dv, T // 2)) if row.kind == "pla" else ())


def softmax_reference(q, k, v):
    T = q.shape[2]
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1) @ v


@torch.no_grad()
def check(row, inputs, y, n_q):
    """max |y - ref| / max |ref| against the float64 reference on the (batch, head) pairs (0, 0) and
    (B-1, H-1), where an indexing bug would show, for the first n_q queries: a causal output depends on
    earlier keys only. PLA's queries also read the whole prefix, so k_enc, v_enc are not cut."""
    b, h = [0, y.shape[0] - 1], [0, y.shape[1] - 1]
    cut = lambda x, n=None: x.detach()[b, h][None, :, :n].double().cpu()  # noqa: E731   (1, 2, n, ·)
    q, k, v = (cut(x, n_q) for x in inputs[:3])
    if row.kind == "attn":
        ref = softmax_reference(q, k, v)
    else:
        ref = pla_reference(q, k, v, *(cut(x) for x in inputs[3:]))[0]
    return float((cut(y, n_q) - ref).abs().max() / ref.abs().max())


def measure(row, B, T, S, dev, dtype):
    """One cell: the row's output is checked against the float64 reference on a slice, then timed (a wrong
    row is not timed). With row.backward the time is that of the forward and the backward together; the
    output's gradient is drawn before the timing, and torch.autograd.grad accumulates into no .grad."""
    rec = dict(implementation=row.name, step="forward + backward" if row.backward else "forward", B=B, T=T,
               M=T // 2 if row.kind == "pla" else 0, ms=None, err=None)
    if row.skip:
        return dict(rec, status=f"skipped: {row.skip}")
    try:
        inputs = [x.requires_grad_(row.backward) for x in make_inputs(row, B, T, S, dev, dtype)]
        y = row.fn(*inputs)
        err = check(row, inputs, y, S["check_T"])
        rec["err"] = err if math.isfinite(err) else None
        if not err <= TOL[dtype]:  # NaN is wrong too
            return dict(rec, status="wrong")
        if row.backward:
            dy = torch.randn_like(y)
            del y
            rec["ms"] = timeit(lambda: torch.autograd.grad(row.fn(*inputs), inputs, dy), dev, *S["runs"])
        else:
            del y
            rec["ms"] = timeit(lambda: row.fn(*inputs), dev, *S["runs"])
        return dict(rec, status="ok")
    except Exception as e:  # noqa: BLE001  (a row that cannot run is a cell, not the end of the benchmark)
        return dict(rec, **failure(e))


def derive(rec, row, recs, S, elt, peak):
    """Add the work model's FLOP and bytes, TFLOP/s, the speed-up over the reference row (same step and
    cell, measured before) and the distance from the floor to a measured cell."""
    if rec["ms"] is None:
        return rec
    flop, nbytes = (x * rec["B"] * S["H"] for x in work(row.kind, rec["T"], S, elt, row.backward))
    base = [rec] if row.ref else [a for a in recs if a.get("ref") and a["ms"] and
                                  all(a.get(k) == rec.get(k) for k in ("step", "sweep", "B", "T"))]
    rec.update(flop=flop, bytes=nbytes, tflops=flop / rec["ms"] / 1e9, ref=row.ref,
               ref_implementation=base[0]["implementation"] if base else None,
               speedup_vs_fa2=base[0]["ms"] / rec["ms"] if base else None)
    if peak:
        rec["floor_ms"] = 1e3 * max(flop / peak[0], nbytes / peak[1])  # compute- or memory-bound: the slower
        rec["x_floor"] = rec["ms"] / rec["floor_ms"]
    return rec


def prefill_suite(S, dev, dtype, backend, peak, rows=None, emit=lambda rec: None):
    rows = default_rows(backend) if rows is None else rows
    elt, recs = torch.finfo(dtype).bits // 8, []
    for sweep, cells in (("T", [(S["B"], T) for T in S["T"]]), ("B", [(B, S["T_at"]) for B in S["B_sweep"]])):
        for row in rows:
            for B, T in cells:
                rec = dict(measure(row, B, T, S, dev, dtype), sweep=sweep, ref=row.ref)
                free(rec["status"] in ("OOM", "error"))
                print(f"prefill {row.name} B={B} T={T}: {rec['status']} {rec['ms']}", file=sys.stderr)
                recs.append(derive(rec, row, recs, S, elt, peak))
                emit(rec)
    return recs


# ----------------------------------------------------------------------------- decode

@torch.no_grad()
def decode_suite(S, dev, dtype, backend, peak, emit=lambda rec: None):
    """Prefill one sequence of T tokens, copy its cache to B rows, then time greedy Model.step."""
    recs, n = [], S["decode_steps"]
    for preset in S["decode"]:
        cfg = Config.from_preset(preset, backend=backend)
        with torch.device(dev):
            model = Model(cfg).to(dtype).eval()
        for T in S["decode_T"]:
            one = None
            for B in S["decode_B"]:
                rec, cache = dict(model=preset, T=T, B=B, tokens_per_s=None), None
                try:
                    if one is None:
                        one = model.prefill(torch.randint(cfg.vocab_size, (1, T), device=dev))[1]
                    sizes = []
                    map_tensors(one, lambda t: sizes.append(t.nbytes))
                    rec["cache_bytes_per_seq"] = sum(sizes)                          # all layers, context T
                    if dev.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    cache = map_tensors(one, lambda t: t.repeat(B, *[1] * (t.dim() - 1)))  # B copies
                    tok = torch.randint(cfg.vocab_size, (B,), device=dev)
                    for _ in range(2):  # warm-up
                        logits, cache = model.step(tok, cache)
                    sync(dev)
                    t0 = time.perf_counter()
                    for _ in range(n):
                        logits, cache = model.step(logits.argmax(-1), cache)
                    sync(dev)
                    dt = time.perf_counter() - t0
                    rec.update(status="ok", ms_per_step=1e3 * dt / n, tokens_per_s=B * n / dt)
                    if dev.type == "cuda":
                        rec["peak_bytes"] = torch.cuda.max_memory_allocated()  # weights, caches, activations
                except Exception as e:  # noqa: BLE001
                    rec.update(failure(e))
                del cache
                free(rec["status"] != "ok")
                print(f"decode {preset} T={T} B={B}: {rec['status']} {rec['tokens_per_s']}", file=sys.stderr)
                recs.append(rec)
                emit(rec)
        del model, one
        free(True)
    return recs


# ----------------------------------------------------------------------------- train

def train_suite(S, dev, dtype, backend, peak, emit=lambda rec: None):
    recs, B, T = [], S["train_B"], S["train_T"]
    for preset in S["train"]:
        cfg = Config.from_preset(preset, backend=backend)
        rec, model, opt = dict(model=preset, B=B, T=T, ms=None), None, None
        try:
            with torch.device(dev):
                model = Model(cfg)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == "cuda")
            x, y = torch.randint(cfg.vocab_size, (2, B, T), device=dev)

            def step():  # fp32 weights, bf16 autocast on CUDA; pla layers split the prefix at cfg.prefix_len
                with torch.autocast(dev.type, torch.bfloat16, enabled=dtype == torch.bfloat16):
                    loss = model(x, y)[1]
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            rec["ms"] = timeit(step, dev, *S["runs"])
            flop = model.flops_per_token(T)
            rec.update(status="ok", params=model.num_params(), tokens_per_s=B * T / rec["ms"] * 1e3,
                       flop_per_token=flop, tflops=flop * B * T / rec["ms"] / 1e9)
            rec["mfu"] = rec["tflops"] * 1e12 / peak[0] if peak else None
        except Exception as e:  # noqa: BLE001
            rec.update(failure(e))
        del model, opt
        free(True)
        print(f"train {preset}: {rec['status']} {rec['ms']}", file=sys.stderr)
        recs.append(rec)
        emit(rec)
    return recs


# ----------------------------------------------------------------------------- output

def atomic_write(path, text):
    """Write a temporary file and rename it over path: a reader (or a cut) never sees half a file."""
    with open(path + ".tmp", "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(path + ".tmp", path)


def pivot(recs, keys, col, cell, extra=None):
    """Markdown: one line per distinct value of `keys`, one column per value of `col`, cell(rec) in each
    cell that ran (else its status)."""
    cols = list(dict.fromkeys(r[col] for r in recs))
    head = [*keys, *(f"{col} = {c}" for c in cols), *([extra[0]] if extra else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in dict.fromkeys(tuple(r[k] for k in keys) for r in recs):
        mine = [r for r in recs if tuple(r[k] for k in keys) == key]
        by = {r[col]: r for r in mine}
        show = lambda r: cell(r) if r["status"] == "ok" else word(r)  # noqa: E731   (wrong, OOM, skipped)
        lines.append("| " + " | ".join([*map(str, key), *(show(by[c]) if c in by else "" for c in cols),
                                        *([extra[1](mine)] if extra else [])]) + " |")
    return lines


def verdict(mine):
    errs = [r["err"] for r in mine if r["err"] is not None]
    worst = f" (max err {max(errs):.1e})" if errs else ""
    return ("wrong" if any(r["status"] == "wrong" for r in mine) else "ok" if errs else "-") + worst


def tables(suite, recs, S):
    out = []
    if suite == "prefill":
        for sweep, col, fixed in (("T", "T", f"B = {S['B']}"), ("B", "B", f"T = {S['T_at']}")):
            rs = [r for r in recs if r["sweep"] == sweep]
            if not rs:  # bench/gpu.py cut short before its sweep over B
                continue
            x = lambda r: f" ({r['speedup_vs_fa2']:.1f}×)" if r.get("speedup_vs_fa2") else ""  # noqa: E731
            out += [f"\n### prefill latency, ms ({fixed}, H = {S['H']}; × = speed-up vs FlashAttention-2)\n"]
            out += pivot(rs, ["implementation"], col, lambda r: f"{r['ms']:.3f}{x(r)}", ("check", verdict))
            fl = lambda r: f" ({r['x_floor']:.1f}× floor)" if r.get("x_floor") else ""  # noqa: E731
            out += [f"\n### prefill TFLOP/s by the work model ({fixed}; × floor = latency / roofline floor)"
                    "\n"]
            out += pivot(rs, ["implementation"], col, lambda r: f"{r['tflops']:.3g}{fl(r)}")
    elif suite == "decode":
        mb = lambda r: f"{r['cache_bytes_per_seq'] / 1e6:.2f}" if "cache_bytes_per_seq" in r else "-"  # noqa
        rs = [dict(r, **{"cache MB/seq": mb(r)}) for r in recs]
        out += ["\n### decode tokens/s (greedy Model.step; cache MB per sequence at context T)\n"]
        out += pivot(rs, ["model", "T", "cache MB/seq"], "B",
                     lambda r: format(r["tokens_per_s"], ".0f" if r["tokens_per_s"] >= 100 else ".3g"))
        if any("peak_bytes" in r for r in recs):
            out += ["\n### decode peak GPU memory, GB (weights + caches + activations)\n"]
            out += pivot(recs, ["model", "T"], "B", lambda r: f"{r.get('peak_bytes', 0) / 1e9:.2f}")
    else:
        out += ["\n### train step (forward, backward, AdamW)\n",
                "| model | params | B × T | ms/step | tokens/s | TFLOP/s | MFU |", "|" + "---|" * 7]
        for r in recs:
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
            cells = ([f"{r['params'] / 1e6:.1f}M", f"{r['B']} × {r['T']}", f"{r['ms']:.1f}",
                      f"{r['tokens_per_s']:.0f}", f"{r['tflops']:.3g}", mfu]
                     if r["status"] == "ok" else ["", f"{r['B']} × {r['T']}", word(r), "", "", ""])
            out.append("| " + " | ".join([r["model"], *cells]) + " |")
    return "\n".join(out + notes(recs))


def word(r):
    """A row's status in one word for a table cell: ok, wrong, OOM, error, skipped (the reason goes below)."""
    return r["status"].split(":")[0]


def row_name(r):
    return (r.get("implementation") or r.get("design") or r.get("model")
            or f"T = {r.get('T')}, dv = {r.get('dv')}")


def notes(recs):
    """One line per row that could not run (its error, or why it was skipped; once per distinct reason), or
    that ran kernels the gradient checks did not (Triton compiled some while it was timed)."""
    out, seen = [], set()
    for r in recs:
        name = row_name(r)
        new = r.get("kernels_compiled_while_timed")
        line = (f"- {name}: error: {r['error']}" if r["status"] == "error" else
                f"- {name}: {r['status']}" if r["status"].startswith("skipped") else
                f"- {name}: Triton compiled {new} kernels while it was timed: its binaries are not those the "
                "gradient checks ran" if new else None)
        if line and line not in seen:
            seen.add(line)
            out.append(("\n" if not out else "") + line)
    return out


def git_commit():
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        return None


def exit_status(results, prog="bench.py"):
    """1 when the run was cut short or a row failed (an error or a wrong result; each named on one line)."""
    bad = [r for k, v in results.items() if k not in ("meta", "cut") for r in v
           if r["status"] in ("error", "wrong")]
    for r in bad:
        why = r.get("error", r.get("err", ""))
        print(f"{prog}: {r.get('section', '')} {row_name(r)}: {r['status']} {why}"[:400], file=sys.stderr)
    if results.get("cut"):
        print(f"{prog}: cut short: {results['cut']}", file=sys.stderr)
    return 1 if bad or results.get("cut") else 0


# ----------------------------------------------------------------------------- command line

def add_run_options(p, tiny):
    """The options of every timed run, here and in bench/gpu.py."""
    p.add_argument("--tiny", action="store_true", help=tiny)
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--backend", choices=("auto", "torch", "triton"), default=None,
                   help="our kernels (default: on CUDA triton for the prefill rows, auto for the models; "
                        "torch on CPU)")
    p.add_argument("--peak", type=float, nargs=2, metavar=("TFLOPS", "TBPS"),
                   help="the device's dense bf16 TFLOP/s and memory TB/s, for the floor and MFU")
    p.add_argument("--commit", default=None, help="the commit measured, for a copy of the tree without .git "
                                                  "(default: git describe, else 'unknown')")


def run_device(args, prog):
    """--commit and --device before any work, one line each: the device to run on."""
    if args.commit is not None and not re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", args.commit):
        sys.exit(f"{prog} --commit={args.commit}: give a git commit id, 7 to 40 hex digits "
                 "(e.g. $(git rev-parse HEAD))")
    try:
        return resolve_device(args.device)
    except ValueError as e:
        sys.exit(f"{prog} --device: {e}")


def describe(args, dev):
    """What runs where: the sizes (tiny without CUDA or with --tiny), bf16 on CUDA (else fp32), the device's
    peak (for the floor and MFU), and the meta saved with every result. Returns S, dtype, peak, meta and a
    slug naming the device in default output paths."""
    cuda = dev.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    tiny = args.tiny or not cuda
    S = SIZES["tiny" if tiny else "gpu"]
    device = torch.cuda.get_device_name(dev) if cuda else f"CPU ({torch.get_num_threads()} torch threads)"
    peak = tuple(x * 1e12 for x in args.peak) if args.peak else next(
        ((fl, bw) for key, fl, bw in PEAK if cuda and key in device), None)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") if cuda else "cpu"
    slug += "-tiny" if tiny else ""
    meta = dict(device=device, torch=torch.__version__, triton=triton_version, cuda=torch.version.cuda,
                commit=args.commit or git_commit() or "unknown (no .git here and no --commit given)",
                date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                command=" ".join(["python", *sys.argv]),
                sizes="tiny" if tiny else "gpu", size_table=S, dtype=str(dtype),
                peak_flops=peak and peak[0], peak_bytes_per_s=peak and peak[1])
    return S, dtype, peak, meta, slug


def headline(meta):
    return (f"{meta['device']} · torch {meta['torch']} · triton {meta['triton']} · "
            f"commit {meta['commit']} · "
            f"{meta['date']} · {meta['sizes']} sizes, {meta['dtype']}")


def check_out(out, prog="bench.py", folder=False):
    """--out before any work: the folder (the gpu suite's --out, else the JSON file's folder) is made with
    its parents; a file given as the folder, a folder given as the file, or a folder that cannot be made or
    written, is refused in one line."""
    if folder and os.path.isfile(out):
        sys.exit(f"{prog} --out={out}: the gpu suite writes a folder (gpu.json, gpu.jsonl, gpu.md), "
                 "but this is a file")
    if not folder and os.path.isdir(out):
        sys.exit(f"{prog} --out={out}: a folder; give a .json file path (the suite writes one file)")
    where = out if folder else os.path.dirname(out) or "."
    try:
        os.makedirs(where, exist_ok=True)
    except OSError as e:
        sys.exit(f"{prog} --out={out}: cannot make the folder {where}: {e.strerror}")
    if not os.access(where, os.W_OK):
        sys.exit(f"{prog} --out={out}: the folder {where} is not writable")


SUITES = dict(prefill=prefill_suite, decode=decode_suite, train=train_suite)


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench.py", description="JRT-RNN benchmarks (JRT paper, Table 5); see "
                                "the docstring of bench.py (OPRM's cost: bench/oprm.py). The first run on a "
                                "GPU is `bash bench/gpu.sh --out DIR`")
    p.add_argument("--suite", choices=("prefill", "decode", "train", "all", "compile"), default="prefill")
    add_run_options(p, tiny="the tiny sizes (automatic without CUDA)")
    p.add_argument("--out", default=None, help="JSON file (default out/bench-<suite>-<device>.json)")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="compile suite: parallel compiles")
    args = p.parse_args(argv)
    if args.suite == "compile":  # compile_check.py: what the GPU compiler makes of kernels.py, no GPU needed
        import compile_check
        return compile_check.main(args.out, args.jobs, git_commit())
    dev = run_device(args, "bench.py")
    S, dtype, peak, meta, slug = describe(args, dev)
    args.out = args.out or f"out/bench-{args.suite}-{slug}.json"
    check_out(args.out)
    print(headline(meta), flush=True)
    results, cuda = dict(meta=meta), dev.type == "cuda"
    torch.manual_seed(0)
    for suite in ("prefill", "decode", "train") if args.suite == "all" else (args.suite,):
        backend = args.backend or (("triton" if suite == "prefill" else "auto") if cuda else "torch")
        results[suite] = SUITES[suite](S, dev, dtype, backend, peak)
        print(tables(suite, results[suite], S))
        atomic_write(args.out, json.dumps(results, indent=1))  # after every suite: a cut run keeps those done
    print(f"\nwrote {args.out}")
    return results


if __name__ == "__main__":
    res = main()
    sys.exit(exit_status(res if isinstance(res, dict) else {"compile": res}))  # compile returns its rows
