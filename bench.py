"""
Benchmarks (JRT paper, Table 5): markdown tables on stdout, every number in a JSON file.

  prefill  latency of the mixing operator alone on random inputs, as in the paper's Table 5:
           FlashAttention-2 vs our Based kernel at T, JRT-Prompt (Based at 2T) and JRT-RNN (PLA with
           M = T/2); also PyTorch SDPA's default, our PyTorch backend and fla's Based kernels when fla
           is importable. Each row is first checked against the float64 reference on a slice; a row that
           disagrees is reported "wrong" and not timed. Out of memory is a cell "OOM".
  decode   tokens/s of Model.step and the cache memory per sequence at growing context: constant
           state (jrt-360m) vs growing KV cache (transformer-360m).
  train    tokens/s and MFU of one training step (forward, backward, AdamW) of the 360M presets.
  gpu      the first run on a GPU (`bash bench/gpu.sh`, a few minutes): the kernels' forward and backward
           against the reference on the device, the Table-5 row at T = 32768, B = 16 (with JRT-RNN's
           forward + backward), decode at one context and the train step; also a markdown file in results/.
  compile  no GPU needed: every Triton launch at the Table-5 shape compiled for sm_90 and sm_80 (bf16 and
           fp32, dv 64 and 112) and read: grid, registers, spills, shared memory, CTAs per SM and waves,
           MMA FLOP issued ÷ useful, async copies and atomics in the main loop, FLOP and least HBM bytes.

TFLOP/s are those of the work model below (pla_flop, causal attention 2·T²·d per head), i.e. useful
work per second, whatever the kernel really computes (fla's parallel_based is quadratic). "× floor" is
latency over max(FLOP / peak, least bytes / bandwidth) on the devices of PEAK. Our kernels compute the
normaliser too; the paper's CUDA kernels did not. Decode is eager PyTorch (no CUDA graphs).

On a GPU (bf16), a few minutes each:

    bash bench/gpu.sh                                             # first: all of it, at one size each
    python bench.py --suite prefill
    python bench.py --suite decode
    python bench.py --suite train
    python bench.py --suite all --plot   # all three; figures need matplotlib

Without CUDA the same commands run the "tiny" sizes below through the PyTorch backend in fp32, in
seconds (`--tiny` forces them on a GPU too); tests/test_bench.py runs them as a smoke test.
`python bench.py --suite compile [--jobs N]` writes out/compile.json unless --out says otherwise (about
2 minutes on 2 cores; compile_check.py).
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

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from kernels import pla, pla_flop, pla_reference
from model import Config, Model, resolve_device

SIZES = {
    "gpu": dict(
        H=16, f=16, dv=64,                             # JRT paper, Table 5: 16 heads, f = 16, dv = 64 (FA2: 16 of 64)
        T=(2048, 4096, 8192, 16384, 32768), B=16,      # prefill sweep over T at B = 16: the paper's table
        B_sweep=(2, 4, 8, 16, 32, 64), T_at=16384,     # prefill sweep over B at T = 16k
        check_T=512,                                   # queries per row checked against the reference (8 chunks)
        runs=(3, 10, 1.0),                             # warm-up calls; at least 10 timed; more while < 1 s
        decode=("jrt-360m", "transformer-360m"), decode_T=(1024, 2048, 4096, 8192, 16384, 32768),
        decode_B=(1, 2, 4, 8, 16, 32, 64), decode_steps=16,
        train=("jrt-360m", "based-360m", "transformer-360m"), train_B=8, train_T=2048,   # T, M = 2048, 1024 (JRT paper)
        checks=[(2, 4, 1000, 300, 64), (1, 2, 777, 333, 112)],  # gpu suite: (B, H, T, M, dv) against the reference
        quick_T=(8192,), quick_B=(1, 16)),                       # gpu suite: decode at one context
    "tiny": dict(
        H=2, f=16, dv=64, T=(128, 256), B=2, B_sweep=(1, 2), T_at=128, check_T=256, runs=(1, 2, 0.0),
        decode=("jrt-tiny", "transformer-tiny"), decode_T=(64, 128), decode_B=(1, 2), decode_steps=4,
        train=("jrt-tiny", "based-tiny", "transformer-tiny"), train_B=2, train_T=128,
        checks=[(1, 2, 100, 37, 64), (1, 1, 70, 21, 112)], quick_T=(64,), quick_B=(1, 2)),
}
PEAK = [  # (device name contains, dense bf16 FLOP/s, memory bytes/s): datasheets; --peak overrides.
    ("H100 PCIe", 756e12, 2.0e12),  # rounded to 800 TFLOP/s and 3 TB/s the floor is ≈ 1.1 ms;
    ("H100", 989e12, 3.35e12),      # with the SXM datasheet the JRT-RNN floor at 32k/16 is ≈ 1.0 ms
    ("H200", 989e12, 4.8e12),
    ("A100", 312e12, 2.0e12),
]
TOL = {torch.bfloat16: 2e-2, torch.float32: 1e-4}  # max |y - ref| / max |ref|


# ----------------------------------------------------------------------------- work models (per head)

def pla_bytes(T, M, f, dv, elt):
    return elt * (T * (2 * f + 2 * dv) + M * (f + dv))  # the least traffic: read q, k, v, k_enc, v_enc; write y


def work(kind, T, S, elt):
    """(FLOP, bytes) of one call per head. Causal softmax attention: 2·2·T²·d/2, QKᵀ and PV on half the scores."""
    f, dv = S["f"], S["dv"]
    if kind == "attn":
        return 2 * T * T * dv, elt * 4 * T * dv
    T, M = (2 * T, 0) if kind == "prompt" else (T, T // 2 if kind == "pla" else 0)
    return pla_flop(T, M, f, dv), pla_bytes(T, M, f, dv, elt)


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
Row = namedtuple("Row", "name kind fn bthd", defaults=(False,))
# kind: "attn" q, k, v (B,H,T,dv); "based" q, k (B,H,T,f), v (B,H,T,dv); "prompt" the same at 2T;
# "pla" plus k_enc, v_enc over M = T/2. bthd: the inputs are stored (B,T,H,·) (fla's layout), seen as (B,H,T,·).


def fa2(q, k, v):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # forced: an error, not a silent fallback, if it can't run
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def default_rows(backend):
    ours = lambda b: lambda q, k, v, ke=None, ve=None: pla(q, k, v, ke, ve, backend=b)  # noqa: E731
    rows = [Row(FA2, "attn", fa2), Row("SDPA (default backend)", "attn", sdpa),
            Row(f"Based, ours ({backend})", "based", ours(backend)),
            Row(f"JRT-Prompt, ours ({backend}, Based at 2T)", "prompt", ours(backend)),
            Row(f"JRT-RNN, ours ({backend}, M = T/2)", "pla", ours(backend))]
    if backend != "torch":  # the PyTorch backend as rows of their own, "OOM" where it does not fit
        rows += [Row("Based, ours (torch)", "based", ours("torch")),
                 Row("JRT-RNN, ours (torch, M = T/2)", "pla", ours("torch"))]
    try:
        from fla.ops.based import fused_chunk_based, parallel_based
    except Exception as e:  # noqa: BLE001  (fla is optional: any import failure skips its rows)
        print(f"fla is not importable ({type(e).__name__}): its rows are skipped", file=sys.stderr)
        return rows
    for fn in (fused_chunk_based, parallel_based):
        # fla takes (B, T, H, ·), scales q by f^-½ itself (so s = q·k/√f, as ours) and adds 1e-6 to the
        # normaliser; the transposes are views onto contiguous (B, T, H, ·) inputs, so nothing is copied.
        def run(q, k, v, fn=fn):
            return fn(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        rows.append(Row(f"Based, fla {fn.__name__}", "based", run, bthd=True))
    return rows


def make_inputs(row, B, T, S, dev, dtype):
    def r(n, t=T):  # unit scale: randn/16 would hide errors in the s² term
        if row.bthd:
            return torch.randn(B, t, S["H"], n, device=dev, dtype=dtype).transpose(1, 2)
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


def check(row, inputs, y, n_q):
    """max |y - ref| / max |ref| against the float64 reference on the (batch, head) pairs (0, 0) and
    (B-1, H-1), where an indexing bug would show, for the first n_q queries: a causal output depends on
    earlier keys only. PLA's queries also read the whole prefix, so k_enc, v_enc are not cut."""
    b, h = [0, y.shape[0] - 1], [0, y.shape[1] - 1]
    cut = lambda x, n=None: x[b, h][None, :, :n].double().cpu()  # noqa: E731   (1, 2, n, ·)
    q, k, v = (cut(x, n_q) for x in inputs[:3])
    if row.kind == "attn":
        ref = softmax_reference(q, k, v)
    else:
        ref = pla_reference(q, k, v, *(cut(x) for x in inputs[3:]))[0]
    return float((cut(y, n_q) - ref).abs().max() / ref.abs().max())


def prefill_cell(row, B, T, S, dev, dtype):
    rec = dict(implementation=row.name, B=B, T=T, M=T // 2 if row.kind == "pla" else 0, ms=None, err=None)
    try:
        inputs = make_inputs(row, B, T, S, dev, dtype)
        err = check(row, inputs, row.fn(*inputs), S["check_T"])
        rec["err"] = err if math.isfinite(err) else None
        if not err <= TOL[dtype]:  # NaN is wrong too
            return dict(rec, status="wrong")
        rec["ms"] = timeit(lambda: row.fn(*inputs), dev, *S["runs"])
        return dict(rec, status="ok")
    except Exception as e:  # noqa: BLE001  (a row that cannot run is a cell, not the end of the benchmark)
        return dict(rec, **failure(e))


def prefill_suite(S, dev, dtype, backend, peak, rows=None):
    rows = default_rows(backend) if rows is None else rows
    kinds, elt, recs = {r.name: r.kind for r in rows}, torch.finfo(dtype).bits // 8, []
    for sweep, cells in (("T", [(S["B"], T) for T in S["T"]]), ("B", [(B, S["T_at"]) for B in S["B_sweep"]])):
        for row in rows:
            for B, T in cells:
                rec = dict(prefill_cell(row, B, T, S, dev, dtype), sweep=sweep)
                free(rec["status"] in ("OOM", "error"))
                print(f"prefill {row.name} B={B} T={T}: {rec['status']} {rec['ms']}", file=sys.stderr)
                recs.append(rec)
    for r in recs:  # speed-up vs FA2, achieved TFLOP/s by the work model, and how far from the floor
        if r["ms"] is None:
            continue
        flop, nbytes = (x * r["B"] * S["H"] for x in work(kinds[r["implementation"]], r["T"], S, elt))
        base = [a["ms"] for a in recs if a["implementation"] == FA2 and a["sweep"] == r["sweep"]
                and (a["B"], a["T"]) == (r["B"], r["T"]) and a["ms"]]
        r.update(flop=flop, bytes=nbytes, tflops=flop / r["ms"] / 1e9,
                 speedup_vs_fa2=base[0] / r["ms"] if base else None)
        if peak:
            r["floor_ms"] = 1e3 * max(flop / peak[0], nbytes / peak[1])  # compute- or memory-bound, whichever is slower
            r["x_floor"] = r["ms"] / r["floor_ms"]
    return recs


# ----------------------------------------------------------------------------- decode

def tensors(c):
    if torch.is_tensor(c):
        yield c
    elif isinstance(c, (dict, list, tuple)):
        for x in (c.values() if isinstance(c, dict) else c):
            yield from tensors(x)


def batched(c, B):  # a one-sequence cache copied to B rows (every cache tensor has the batch first)
    if torch.is_tensor(c):
        return c.repeat(B, *[1] * (c.dim() - 1))
    if isinstance(c, dict):
        return {k: batched(x, B) for k, x in c.items()}
    return type(c)(batched(x, B) for x in c) if isinstance(c, (list, tuple)) else c


@torch.no_grad()
def decode_suite(S, dev, dtype, backend, peak):
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
                    rec["cache_bytes_per_seq"] = sum(t.nbytes for t in tensors(one))  # all layers, at context T
                    if dev.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    cache, tok = batched(one, B), torch.randint(cfg.vocab_size, (B,), device=dev)
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
                        rec["peak_bytes"] = torch.cuda.max_memory_allocated()  # weights + caches + activations
                except Exception as e:  # noqa: BLE001
                    rec.update(failure(e))
                del cache
                free(rec["status"] != "ok")
                print(f"decode {preset} T={T} B={B}: {rec['status']} {rec['tokens_per_s']}", file=sys.stderr)
                recs.append(rec)
        del model, one
        free(True)
    return recs


# ----------------------------------------------------------------------------- train

def train_suite(S, dev, dtype, backend, peak):
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
    return recs


# ----------------------------------------------------------------------------- gpu (bash bench/gpu.sh)

def kernel_checks(S, dev, dtype, backend):
    """Forward, final state and every gradient of pla(backend) against the float64 reference on the same
    device and the same (rounded) inputs, with a starting state and pads; unit scale (the s² term)."""
    recs, g, f = [], torch.Generator().manual_seed(0), S["f"]
    D = 1 + f + f * f
    for B, H, T, M, dv in S["checks"]:
        r = lambda *shape: torch.randn(*shape, generator=g).to(dtype).double()  # noqa: E731   (rounded once)
        x = dict(q=r(B, H, T, f), k=r(B, H, T, f), v=r(B, H, T, dv), k_enc=r(B, H, M, f), v_enc=r(B, H, M, dv))
        x["S"], x["z"] = pla_reference(r(B, H, 20, f), r(B, H, 20, f), r(B, H, 20, dv))[1]  # an earlier prefill's
        pads = {n: (torch.rand(B, L, generator=g) < 0.2).to(dev) for n, L in (("pad_mask", T), ("enc_pad_mask", M))}
        w = [torch.randn(n, generator=g, dtype=torch.float64).to(dev)  # the loss's weights on y, S, z
             for n in ((B, H, T, dv), (B, H, D, dv), (B, H, D))]
        out = {}
        for name in ("ours", "reference"):
            t = {n: a.to(dev, torch.float64 if name == "reference" else torch.float32 if n in ("S", "z") else dtype)
                 .requires_grad_() for n, a in x.items()}
            args, state = [t[n] for n in ("q", "k", "v", "k_enc", "v_enc")], (t["S"], t["z"])
            try:
                y, st = (pla(*args, state=state, return_state=True, backend=backend, **pads) if name == "ours"
                         else pla_reference(*args, state=state, **pads))
                sum((a.double() * b).sum() for a, b in zip((y, *st), w)).backward()
            except Exception as e:  # noqa: BLE001
                out = failure(e)
                break
            out[name] = dict(zip(("y", "S", "z"), (y.detach(), *(a.detach() for a in st))),
                             **{f"d{n}": a.grad for n, a in t.items()})
        rec = dict(B=B, H=H, T=T, M=M, dv=dv, dtype=str(dtype), backend=backend)
        if "status" in out:
            recs.append(dict(rec, **out))
            continue
        err = {n: float((a.double() - out["reference"][n]).abs().max() / out["reference"][n].abs().max())
               for n, a in out["ours"].items()}
        ok = all(e <= TOL[dtype] for e in err.values())  # NaN is wrong too
        recs.append(dict(rec, err=err, status="ok" if ok else "wrong"))
        free()
    return recs


def fwd_bwd(fn):
    """fn's forward and backward (a gradient of ones on y), returning y: a prefill row's fn, timed whole."""
    def run(*x):
        x = [a.detach().requires_grad_() for a in x]
        y = fn(*x)
        y.backward(torch.ones_like(y))
        return y.detach()
    return run


def gpu_suite(S, dev, dtype, backend, peak):
    """The first run on a GPU: kernel checks, the JRT paper's Table-5 row (T 32768, B 16) with speed-ups
    over FA2 from the same run and the forward + backward of JRT-RNN, decode and a training step."""
    res = dict(checks=kernel_checks(S, dev, dtype, backend))
    print(tables("checks", res["checks"], S), flush=True)
    rows = [r for r in default_rows(backend)
            if r.name == FA2 or f"ours ({backend}" in r.name or "fused_chunk" in r.name]
    jrt = next(r for r in rows if r.kind == "pla")
    rows.append(Row(jrt.name + ", forward + backward", "pla", fwd_bwd(jrt.fn)))
    S5 = dict(S, T=(S["T"][-1],), B_sweep=())  # the longest T of the table, at its B
    res["prefill"] = prefill_suite(S5, dev, dtype, backend, peak, rows)
    print(tables("prefill", res["prefill"], S5), flush=True)
    res["decode"] = decode_suite(dict(S, decode_T=S["quick_T"], decode_B=S["quick_B"]), dev, dtype, "auto", peak)
    print(tables("decode", res["decode"], S), flush=True)
    res["train"] = train_suite(dict(S, runs=(2, 5, 0.5)), dev, dtype, "auto", peak)
    print(tables("train", res["train"], S), flush=True)
    return res


# ----------------------------------------------------------------------------- output

def pivot(recs, keys, col, cell, extra=None):
    """Markdown: one line per distinct value of `keys`, one column per value of `col`, cell(rec) in each
    cell that ran (else its status)."""
    cols = list(dict.fromkeys(r[col] for r in recs))
    lines = ["| " + " | ".join([*keys, *(f"{col} = {c}" for c in cols), *([extra[0]] if extra else [])]) + " |",
             "|" + "---|" * (len(keys) + len(cols) + bool(extra))]
    for key in dict.fromkeys(tuple(r[k] for k in keys) for r in recs):
        mine = [r for r in recs if tuple(r[k] for k in keys) == key]
        by = {r[col]: r for r in mine}
        show = lambda r: cell(r) if r["status"] == "ok" else r["status"]  # noqa: E731   ("wrong", "OOM", "error")
        lines.append("| " + " | ".join([*map(str, key), *(show(by[c]) if c in by else "" for c in cols),
                                        *([extra[1](mine)] if extra else [])]) + " |")
    return lines


def verdict(mine):
    errs = [r["err"] for r in mine if r["err"] is not None]
    worst = f" (max err {max(errs):.1e})" if errs else ""
    return ("wrong" if any(r["status"] == "wrong" for r in mine) else "ok" if errs else "-") + worst


def tables(suite, recs, S):
    out = []
    if suite == "checks":
        out += ["\n### forward and backward against the float64 reference (max |got - ref| / max |ref|)\n",
                "| B, H, T, M, dv | dtype | backend | y | S, z | worst gradient | check |", "|" + "---|" * 7]
        for r in recs:
            e = r.get("err", {})
            grads = [v for n, v in e.items() if n[0] == "d"]
            cells = [f"{e['y']:.1e}", f"{max(e['S'], e['z']):.1e}", f"{max(grads):.1e}"] if e else ["", "", ""]
            out.append("| " + " | ".join([", ".join(str(r[k]) for k in ("B", "H", "T", "M", "dv")), r["dtype"],
                                          r["backend"], *cells, r["status"]]) + " |")
    elif suite == "prefill":
        for sweep, col, fixed in (("T", "T", f"B = {S['B']}"), ("B", "B", f"T = {S['T_at']}")):
            rs = [r for r in recs if r["sweep"] == sweep]
            if not rs:  # the gpu suite has no sweep over B
                continue
            x = lambda r: f" ({r['speedup_vs_fa2']:.1f}×)" if r.get("speedup_vs_fa2") else ""  # noqa: E731
            out += [f"\n### prefill latency, ms ({fixed}, H = {S['H']}; × = speed-up vs FlashAttention-2)\n"]
            out += pivot(rs, ["implementation"], col, lambda r: f"{r['ms']:.3f}{x(r)}", ("check", verdict))
            fl = lambda r: f" ({r['x_floor']:.1f}× floor)" if r.get("x_floor") else ""  # noqa: E731
            out += [f"\n### prefill TFLOP/s by the work model ({fixed}; × floor = latency / roofline floor)\n"]
            out += pivot(rs, ["implementation"], col, lambda r: f"{r['tflops']:.3g}{fl(r)}")
    elif suite == "decode":
        mb = lambda r: f"{r['cache_bytes_per_seq'] / 1e6:.2f}" if "cache_bytes_per_seq" in r else "-"  # noqa: E731
        rs = [dict(r, **{"cache MB/seq": mb(r)}) for r in recs]
        out += ["\n### decode tokens/s (greedy Model.step; cache MB per sequence at context T)\n"]
        out += pivot(rs, ["model", "T", "cache MB/seq"], "B",
                     lambda r: f"{r['tokens_per_s']:.0f}" if r["tokens_per_s"] >= 100 else f"{r['tokens_per_s']:.3g}")
        if any("peak_bytes" in r for r in recs):
            out += ["\n### decode peak GPU memory, GB (weights + caches + activations)\n"]
            out += pivot(recs, ["model", "T"], "B", lambda r: f"{r.get('peak_bytes', 0) / 1e9:.2f}")
    else:
        out += ["\n### train step (forward, backward, AdamW)\n",
                "| model | params | B × T | ms/step | tokens/s | TFLOP/s | MFU |", "|---|---|---|---|---|---|---|"]
        for r in recs:
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "-"
            cells = ([f"{r['params'] / 1e6:.1f}M", f"{r['B']} × {r['T']}", f"{r['ms']:.1f}",
                      f"{r['tokens_per_s']:.0f}", f"{r['tflops']:.3g}", mfu]
                     if r["status"] == "ok" else ["", f"{r['B']} × {r['T']}", r["status"], "", "", ""])
            out.append("| " + " | ".join([r["model"], *cells]) + " |")
    errors = {(r.get("implementation") or r.get("model") or f"T = {r.get('T')}, dv = {r.get('dv')}"): r["error"]
              for r in recs if r["status"] == "error"}
    out += [f"\n- {k}: error: {v}" for k, v in errors.items()]  # one line per row that could not run
    return "\n".join(out)


def plot(results, base):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot: matplotlib is not installed (pip install matplotlib), so no figures were written")
        return
    figs = {"prefill": ("T", "ms", [(r["implementation"], r["T"], r["ms"])
                                    for r in results.get("prefill", []) if r["sweep"] == "T"]),
            "decode": ("context T", "tokens/s", [(f"{r['model']} B={r['B']}", r["T"], r["tokens_per_s"])
                                                 for r in results.get("decode", [])])}
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
        ax.set(xlabel=xl, ylabel=yl, title=f"{name}: {results['meta']['device']}")
        ax.legend(fontsize=7)
        fig.savefig(f"{base}-{name}.png", dpi=120, bbox_inches="tight")
        print(f"wrote {base}-{name}.png")


def git_commit():
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description="JRT-RNN benchmarks (JRT paper, Table 5); "
                                            "see the docstring of bench.py")
    p.add_argument("--suite", choices=("prefill", "decode", "train", "all", "gpu", "compile"), default="prefill")
    p.add_argument("--tiny", action="store_true", help="the tiny sizes (automatic without CUDA)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--backend", choices=("auto", "torch", "triton"), default=None,
                   help="our kernels (default: on CUDA triton for the prefill rows, auto for the models; torch on CPU)")
    p.add_argument("--out", default=None, help="JSON file (default bench/<suite>-<device>.json)")
    p.add_argument("--plot", action="store_true", help="also write PNG figures beside the JSON (needs matplotlib)")
    p.add_argument("--peak", type=float, nargs=2, metavar=("TFLOPS", "TBPS"),
                   help="the device's dense bf16 TFLOP/s and memory TB/s, for the floor and MFU")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="compile suite: parallel compiles")
    args = p.parse_args(argv)
    if args.suite == "compile":  # compile_check.py: what the GPU compiler makes of kernels.py, no GPU needed
        import compile_check
        return compile_check.main(args.out, args.jobs, git_commit())
    try:
        dev = resolve_device(args.device)
    except ValueError as e:
        sys.exit(f"bench.py --device: {e}")
    if args.plot:  # before the long runs, not after them
        if args.suite == "gpu":
            sys.exit("bench.py --plot: the gpu suite writes tables only; use --suite prefill, decode, train or all")
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            sys.exit("bench.py --plot needs matplotlib, which is not installed (pip install matplotlib)")

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
    commit = git_commit()
    suites = ("prefill", "decode", "train") if args.suite == "all" else (args.suite,)
    slug = (re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") if cuda else "cpu") + ("-tiny" if tiny else "")
    date = datetime.now(timezone.utc)
    out = args.out or (f"bench/gpu-{slug}-{date:%Y-%m-%d}.json" if args.suite == "gpu"
                       else f"bench/{args.suite}-{slug}.json")
    meta = dict(device=device, torch=torch.__version__, triton=triton_version, cuda=torch.version.cuda, commit=commit,
                date=date.isoformat(timespec="seconds"), command=" ".join(["python", *sys.argv]),
                sizes="tiny" if tiny else "gpu", size_table=S, dtype=str(dtype),
                peak_flops=peak and peak[0], peak_bytes_per_s=peak and peak[1])
    head = (f"{device} · torch {torch.__version__} · triton {triton_version} · commit {commit} · {meta['date']} · "
            f"{meta['sizes']} sizes, {dtype}")
    print(head)
    results = dict(meta=meta)
    for suite in suites:
        torch.manual_seed(0)
        backend = args.backend or (("triton" if suite in ("prefill", "gpu") else "auto") if cuda else "torch")
        fn = {"prefill": prefill_suite, "decode": decode_suite, "train": train_suite, "gpu": gpu_suite}[suite]
        results[suite] = fn(S, dev, dtype, backend, peak)
        if suite != "gpu":  # the gpu suite prints its tables as it goes
            print(tables(suite, results[suite], S))
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out, "w") as fh:  # after every suite, so a run cut short keeps what it measured
            json.dump(results, fh, indent=1)
    print(f"\nwrote {out}")
    if args.suite == "gpu":  # and the tables as markdown, named after the device and the date
        md = (f"results/gpu-{slug}-{date:%Y-%m-%d}.md" if args.out is None else os.path.splitext(out)[0] + ".md")
        S5 = dict(S, T=(S["T"][-1],), B_sweep=())
        body = [tables(k, v, S5 if k == "prefill" else S) for k, v in results["gpu"].items()]
        os.makedirs(os.path.dirname(md) or ".", exist_ok=True)
        with open(md, "w") as fh:
            fh.write("\n".join([f"# bash bench/gpu.sh on {device}\n", f"`{meta['command']}`\n", head, *body]) + "\n")
        print(f"wrote {md}")
    if args.plot:
        plot(results, os.path.splitext(out)[0])
    return results


if __name__ == "__main__":
    main()
