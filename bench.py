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
  gpu      the first run on a GPU, `bash bench/gpu.sh --out DIR`, sized to end within 6 minutes on one H100
           (--budget_s; see gpu_suite): every row written to DIR as soon as it is measured, most
           important first.
  compile  no GPU needed: every Triton launch at the Table-5 shape compiled for sm_90 and sm_80 (bf16 and
           fp32, dv 64 and 112) and read: grid, registers, spills, shared memory, CTAs per SM and waves,
           MMA FLOP issued ÷ useful, async copies and atomics in the main loop, FLOP and least HBM bytes.

TFLOP/s are those of the work model below (pla_flop, causal attention 2·T²·d per head; forward + backward
3.5× the forward), i.e. useful work per second, whatever the kernel really computes (fla's parallel_based
is quadratic). "× floor" is latency over max(FLOP / peak, least bytes / bandwidth) on the devices of PEAK.
Our kernels compute the normaliser too; the paper's CUDA kernels did not. Decode is eager PyTorch (no CUDA
graphs).

On a GPU (bf16), a few minutes each:

    bash bench/gpu.sh --out out/gpu    # first: checks, the Table-5 row, forward + backward, sweeps, ...
    python bench.py --suite prefill
    python bench.py --suite decode
    python bench.py --suite train
    python bench.py --suite all --plot   # all three; figures need matplotlib (pip install matplotlib)

Without CUDA the same commands run the "tiny" sizes below through the PyTorch backend in fp32, in
seconds (`--tiny` forces them on a GPU too); tests/test_bench.py runs them as a smoke test. Outputs go
under out/ (git-ignored) unless --out says otherwise. The exit status is 1 when a row failed (an error
or a wrong result) or the run was cut short.
`python bench.py --suite compile [--jobs N]` writes out/compile.json unless --out says otherwise (about
2 minutes on 2 cores; compile_check.py).
"""
import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import re
import signal
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
        H=16, f=16, dv=64,                         # JRT paper, Table 5: 16 heads, f 16, dv 64 (FA2: 16 of 64)
        T=(2048, 4096, 8192, 16384, 32768), B=16,  # prefill sweep over T at B = 16: the paper's table
        B_sweep=(2, 4, 8, 16, 32, 64), T_at=16384,  # prefill sweep over B at T = 16k
        check_T=512,                               # queries per row checked against the reference (8 chunks)
        runs=(3, 10, 1.0),                         # warm-up calls; at least 10 timed; more while < 1 s
        decode=("jrt-360m", "transformer-360m"), decode_T=(1024, 2048, 4096, 8192, 16384, 32768),
        decode_B=(1, 2, 4, 8, 16, 32, 64), decode_steps=16,
        train=("jrt-360m", "based-360m", "transformer-360m"),
        train_B=8, train_T=2048,                   # T, M = 2048, 1024 (JRT paper)
        checks=[(2, 4, 1000, 300, 64), (1, 2, 777, 333, 112)],  # gpu suite: (B, H, T, M, dv), pads, a state
        grad_T=1024,          # gpu suite: T of the gradient checks at the timed B, H, dv (float64 memory)
        quick_T=(8192,), quick_B=(1, 16)),         # gpu suite: decode at one context
    "tiny": dict(
        H=2, f=16, dv=64, T=(128, 256), B=2, B_sweep=(1, 2), T_at=128, check_T=256, runs=(1, 2, 0.0),
        decode=("jrt-tiny", "transformer-tiny"), decode_T=(64, 128), decode_B=(1, 2), decode_steps=4,
        train=("jrt-tiny", "based-tiny", "transformer-tiny"), train_B=2, train_T=128,
        checks=[(1, 2, 100, 37, 64), (1, 1, 70, 21, 112)], grad_T=256, quick_T=(64,), quick_B=(1, 2)),
}
from train import PEAK
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
Row = namedtuple("Row", "name kind fn ref backward skip", defaults=(False, False, None))
# kind: "attn" q, k, v (B,H,T,dv); "based" q, k (B,H,T,f), v (B,H,T,dv); "prompt" the same at 2T;
# "pla" plus k_enc, v_enc over M = T/2. ref: the row the others' speed-up is over (FlashAttention-2).
# backward: timed forward + backward. skip: why the row cannot run here (it is reported, not timed).


def fa2(q, k, v):
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):  # forced: an error, not a silent fallback, if it can't run
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def sdpa(q, k, v):
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
                    rec["cache_bytes_per_seq"] = sum(t.nbytes for t in tensors(one))  # all layers, context T
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


# ----------------------------------------------------------------------------- gpu (bash bench/gpu.sh)

PREV_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench", "pla_prev.py")


def load_prev():
    """bench/pla_prev.py, the previous kernel design, kept to be timed beside kernels.pla. Loaded from its
    path: bench/ is a folder of files, not a package (bench.py is the module `bench`)."""
    spec = importlib.util.spec_from_file_location("pla_prev", PREV_FILE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["pla_prev"] = mod
    spec.loader.exec_module(mod)
    return mod


def designs(dev, backend):
    """(label, pla-like function, the module of its kernels, why it cannot run here or None) for the design
    in kernels.py and the previous one (Triton only: on CUDA, or on a CPU under TRITON_INTERPRET=1)."""
    import kernels
    out = [(f"kernels.pla ({backend})", lambda *x: pla(*x, backend=backend), kernels, None)]
    if dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        why = "the previous design is Triton only: it needs CUDA (or TRITON_INTERPRET=1 on a CPU)"
        return out + [("pla_prev (triton)", None, None, why)]
    try:
        prev = load_prev()
    except Exception as e:  # noqa: BLE001  (reported as the rows' status)
        why = f"bench/pla_prev.py cannot be loaded: {failure(e)['error']}"
        return out + [("pla_prev (triton)", None, None, why)]
    return out + [("pla_prev (triton)", prev.pla, prev, None)]


def compiled(mod):
    """How many kernels Triton has compiled from module mod so far; None where it cannot tell (no Triton
    kernels, the interpreter, or a Triton that keeps them elsewhere). A timed row that adds some runs
    binaries that the gradient checks did not run."""
    try:
        from triton.runtime.jit import JITFunction
        fns = [f for f in vars(mod).values() if isinstance(f, JITFunction)]
        return sum(len(c[0]) for f in fns for c in f.device_caches.values()) if fns else None
    except Exception:  # noqa: BLE001  (a Triton with another cache layout: unknown, said as None)
        return None


def attention(dev, dtype, S):
    """The softmax-attention reference: SDPA forced to flash (FlashAttention-2), else the first backend that
    runs here. Returns its function (None if none runs), the row's name (the backend that ran) and a record
    of that backend and of why the ones before it did not run."""
    import warnings
    tried, x = {}, torch.randn(1, S["H"], 128, S["dv"], device=dev, dtype=dtype)
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        b = getattr(SDPBackend, name, None)
        if b is None:
            continue
        try:
            with warnings.catch_warnings(record=True) as said, sdpa_kernel(b):
                warnings.simplefilter("always")
                F.scaled_dot_product_attention(x, x, x, is_causal=True)
        except Exception as e:  # noqa: BLE001  (no kernel of this backend for these inputs on this device)
            why = [str(w.message).splitlines()[0] for w in said] + [failure(e)["error"]]
            tried[name] = "; ".join(why)[:300]
            continue

        def fn(q, k, v, b=b):
            with sdpa_kernel(b):  # forced, so the row is the backend named, whatever the inputs
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        row = FA2 if name == "FLASH_ATTENTION" else f"softmax attention (SDPA {name}; flash could not run)"
        return fn, row, dict(sdpa_backend=name, sdpa_not_run=tried)
    return None, "softmax attention (SDPA)", dict(sdpa_backend=None, sdpa_not_run=tried)


def kernel_checks(S, dev, dtype, backend):
    """Forward, final state and every gradient of pla(backend) against the float64 reference on the same
    device and the same (rounded) inputs, with a starting state and pads, odd T and M, dv 112; unit scale
    (the s² term). These are the model's paths (pads, decode states), which the timed rows do not take."""
    recs, g, f = [], torch.Generator().manual_seed(0), S["f"]
    D = 1 + f + f * f
    for B, H, T, M, dv in S["checks"]:
        r = lambda *shape: torch.randn(*shape, generator=g).to(dtype).double()  # noqa: E731   (rounded once)
        x = dict(q=r(B, H, T, f), k=r(B, H, T, f), v=r(B, H, T, dv), k_enc=r(B, H, M, f),
                 v_enc=r(B, H, M, dv))
        x["S"], x["z"] = pla_reference(r(B, H, 20, f), r(B, H, 20, f), r(B, H, 20, dv))[1]  # a prefill's
        pads = {n: (torch.rand(B, L, generator=g) < 0.2).to(dev)
                for n, L in (("pad_mask", T), ("enc_pad_mask", M))}
        w = [torch.randn(n, generator=g, dtype=torch.float64).to(dev)  # the loss's weights on y, S, z
             for n in ((B, H, T, dv), (B, H, D, dv), (B, H, D))]
        out = {}
        for name in ("ours", "reference"):
            typ = {n: torch.float64 if name == "reference" else torch.float32 if n in ("S", "z") else dtype
                   for n in x}
            t = {n: a.to(dev, typ[n]).requires_grad_() for n, a in x.items()}
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


def grad_check(fn, kind, B, T, S, dev, dtype):
    """y and every input's gradient of fn (a pla-like function) against the float64 reference on the same
    device and the same rounded inputs, at unit scale, without pads: max |got - ref| / max |ref| each."""
    H, f, dv, M = S["H"], S["f"], S["dv"], T // 2 if kind == "pla" else 0
    shapes = dict(q=(B, H, T, f), k=(B, H, T, f), v=(B, H, T, dv))
    if M:
        shapes.update(k_enc=(B, H, M, f), v_enc=(B, H, M, dv))
    x = {n: torch.randn(*s, device=dev, dtype=dtype) for n, s in shapes.items()}
    w = torch.randn(B, H, T, dv, device=dev, dtype=torch.float64)  # the loss's weights on y
    out = {}
    for name, run in (("got", fn), ("ref", lambda *a: pla_reference(*a)[0])):
        t = {n: (a if name == "got" else a.double()).clone().requires_grad_() for n, a in x.items()}
        y = run(*t.values())
        (y.double() * w).sum().backward()
        out[name] = dict(y=y.detach(), **{f"d{n}": a.grad for n, a in t.items()})
        del y, t
    return {n: float((a.double() - out["ref"][n]).abs().max() / out["ref"][n].abs().max())
            for n, a in out["got"].items()}


class Budget:
    """--budget_s: a row starts only while it lasts; after it, the rows are written as skipped."""

    def __init__(self, seconds):
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def over(self):
        return (f"skipped: --budget_s {self.seconds:g} spent before this row" if time.monotonic() > self.end
                else None)


class Cut(BaseException):
    """The run stops before its end (--max_rows, SIGTERM or Ctrl-C); the rows written so far stay. A
    BaseException, like KeyboardInterrupt, so that a row's `except Exception` does not take it for its
    error."""


def atomic_write(path, text):
    """Write a temporary file and rename it over path: a reader (or a cut) never sees half a file."""
    with open(path + ".tmp", "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(path + ".tmp", path)


@contextlib.contextmanager
def held_signals():
    """SIGINT and SIGTERM wait until the block is done (where the platform can hold them)."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Sink:
    """The gpu suite's outputs in one folder, each row written as soon as it is measured, so that a run cut
    short keeps every finished row: gpu.jsonl gains one JSON line per row (the first line is the run's
    meta), gpu.json ({"meta", "rows"}) and gpu.md (the tables) are rewritten whole, atomically."""

    def __init__(self, folder, meta, S, max_rows=None):
        self.folder, self.meta, self.S, self.max_rows, self.rows = folder, meta, S, max_rows, []
        self.jsonl, self.t0 = open(os.path.join(folder, "gpu.jsonl"), "w"), time.monotonic()

    def start(self, **more):
        """The meta line first, with what the suite found out before its first row (the SDPA backend)."""
        self.meta.update(more)
        self.line(dict(section="meta", **self.meta))
        self.save()

    def line(self, rec):
        self.jsonl.write(json.dumps(rec) + "\n")
        self.jsonl.flush()
        os.fsync(self.jsonl.fileno())

    def save(self):
        atomic_write(os.path.join(self.folder, "gpu.json"),
                     json.dumps(dict(meta=self.meta, rows=self.rows), indent=1))
        atomic_write(os.path.join(self.folder, "gpu.md"), gpu_markdown(self.meta, self.rows, self.S))

    def add(self, section, rec):
        rec = dict(rec, section=section, done_s=round(time.monotonic() - self.t0, 1))  # to size later budgets
        with held_signals():  # a row is in all three files or in none, whenever a stop comes
            self.rows.append(rec)
            self.line(rec)
            self.save()
        name = row_name(rec)
        ms = f" {rec['ms']:.3f} ms" if rec.get("ms") else ""
        print(f"{section}: {name} B={rec.get('B')} T={rec.get('T')}: {rec['status'][:80]}{ms}", flush=True)
        if self.max_rows is not None and len(self.rows) >= self.max_rows:
            raise Cut(f"stopped after {self.max_rows} rows (--max_rows {self.max_rows})")


def gpu_suite(S, dev, dtype, backend, peak, sink, budget):
    """The first run on a GPU, the most important rows first, so that a lease cut short still answers the
    main questions:
      1. forward and every gradient of both designs (kernels.pla and bench/pla_prev.py), PLA (M = T/2) and
         Based (M = 0), against the float64 reference on the device, at the timed B, H, dv and dtype, T =
         grad_T: the kernels that are timed (no pads; T, M multiples of 64; every integer argument a
         multiple of 16, as in the timed calls). Each timed row records how many kernels Triton compiled
         while it ran: 0 means it ran binaries checked here;
      2. the JRT paper's Table-5 row (T 32768, B 16, forward): FlashAttention-2, JRT-RNN, JRT-Prompt and
         Based of both designs, fla's fused_chunk_based, with speed-ups over FlashAttention-2 in the same run;
      3. forward + backward of JRT-RNN (both designs) and of fla, against FlashAttention-2's forward +
         backward;
      4. the sweeps of Table 5: T from 2k to 32k at B 16, B from 2 to 64 at T 16k;
      5. pads, a starting state, odd T and M and dv 112 against the reference (the model's paths);
      6. decode at one context, 7. a training step of the 360M presets.
    A row starts only while --budget_s lasts."""
    elt, recs, T5, B5 = torch.finfo(dtype).bits // 8, [], S["T"][-1], S["B"]
    attn_fn, attn_name, sdpa_info = attention(dev, dtype, S)
    sink.start(**sdpa_info)
    ds = designs(dev, backend)
    mods = {}

    def rows(backward, kinds=("pla", "prompt", "based"), prev_kinds=("pla", "prompt", "based"), fla=True):
        out = [Row(attn_name, "attn", attn_fn, ref=True, backward=backward,
                   skip=None if attn_fn else f"no SDPA backend ran: {sdpa_info['sdpa_not_run']}")]
        names = dict(pla="JRT-RNN, {}, M = T/2", prompt="JRT-Prompt, {}, Based at 2T", based="Based, {}")
        for kind in kinds:
            for i, (label, fn, mod, why) in enumerate(ds):
                if i == 0 or kind in prev_kinds:
                    out.append(Row(names[kind].format(label), kind, fn, backward=backward, skip=why))
                    mods[out[-1].name] = mod
        if fla:
            out += [r._replace(backward=backward) for r in fla_rows(("fused_chunk_based",))]
        return out

    def timed(section, row, B, T, sweep=None):
        over = budget.over()
        n0 = compiled(mods.get(row.name))
        if over:
            rec = dict(implementation=row.name, step="forward + backward" if row.backward else "forward",
                       B=B, T=T, ms=None, err=None, status=over)
        else:
            rec = measure(row, B, T, S, dev, dtype)
            free(rec["status"] in ("OOM", "error"))
        rec.update(ref=row.ref, sweep=sweep)
        n1 = compiled(mods.get(row.name))
        if n0 is not None and n1 is not None:
            rec["kernels_compiled_while_timed"] = n1 - n0
        derive(rec, row, recs, S, elt, peak)
        fwd = [a for a in recs if a["implementation"] == rec["implementation"] and a["step"] == "forward"
               and (a["B"], a["T"]) == (B, T) and a["ms"]]
        if row.backward and fwd and rec["ms"]:
            rec["x_forward"] = rec["ms"] / fwd[0]["ms"]  # forward + backward over the forward, same run
        recs.append(rec)
        sink.add(section, rec)

    for label, fn, mod, why in ds:  # 1.
        for kind in ("pla", "based"):
            M = S["grad_T"] // 2 if kind == "pla" else 0
            rec = dict(design=label, kind=kind, B=B5, H=S["H"], T=S["grad_T"], M=M, dv=S["dv"],
                       dtype=str(dtype), err=None)
            if why or budget.over():
                sink.add("grad_checks", dict(rec, status=f"skipped: {why}" if why else budget.over()))
                continue
            try:
                err = grad_check(fn, kind, B5, S["grad_T"], S, dev, dtype)
                ok = all(e <= TOL[dtype] for e in err.values())  # NaN is wrong too
                rec.update(err=err, status="ok" if ok else "wrong")
            except Exception as e:  # noqa: BLE001
                rec.update(failure(e))
            free(True)
            sink.add("grad_checks", rec)
    for row in rows(False):  # 2.
        timed("table5", row, B5, T5)
    for row in rows(True, kinds=("pla",)):  # 3.
        timed("fwd_bwd", row, B5, T5)
    sweep_rows = rows(False, kinds=("pla", "prompt"), prev_kinds=("pla",))
    cells = dict(T=[(B5, T) for T in S["T"]], B=[(B, S["T_at"]) for B in S["B_sweep"]])
    for sweep in ("T", "B"):  # 4.
        for row in sweep_rows:
            for B, T in cells[sweep]:
                timed("sweep", row, B, T, sweep)
    over = budget.over()  # 5.
    for rec in ([dict(B=B, H=H, T=T, M=M, dv=dv, dtype=str(dtype), backend=backend, status=over)
                 for B, H, T, M, dv in S["checks"]] if over else kernel_checks(S, dev, dtype, backend)):
        sink.add("checks", rec)
    for preset in S["decode"]:  # 6.
        over = budget.over()
        if over:
            for T in S["quick_T"]:
                for B in S["quick_B"]:
                    sink.add("decode", dict(model=preset, T=T, B=B, tokens_per_s=None, status=over))
            continue
        try:
            decode_suite(dict(S, decode=(preset,), decode_T=S["quick_T"], decode_B=S["quick_B"]), dev, dtype,
                         "auto", peak, emit=lambda r: sink.add("decode", r))
        except Exception as e:  # noqa: BLE001  (the model itself could not be built: one row says why)
            sink.add("decode", dict(model=preset, T=S["quick_T"][0], B=S["quick_B"][0], tokens_per_s=None,
                                    **failure(e)))
            free(True)
    for preset in S["train"]:  # 7.
        over = budget.over()
        if over:
            sink.add("train", dict(model=preset, B=S["train_B"], T=S["train_T"], ms=None, status=over))
            continue
        try:
            train_suite(dict(S, train=(preset,), runs=(2, 5, 0.5)), dev, dtype, "auto", peak,
                        emit=lambda r: sink.add("train", r))
        except Exception as e:  # noqa: BLE001  (as for decode)
            sink.add("train", dict(model=preset, B=S["train_B"], T=S["train_T"], ms=None, **failure(e)))
            free(True)
    return sink.rows


# ----------------------------------------------------------------------------- output

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
    if suite == "checks":
        out += ["\n### forward and backward against the float64 reference (max |got - ref| / max |ref|)\n",
                "| B, H, T, M, dv | dtype | backend | y | S, z | worst gradient | check |", "|" + "---|" * 7]
        for r in recs:
            e = r.get("err") or {}
            grads = [v for n, v in e.items() if n[0] == "d"]
            cells = [f"{e['y']:.1e}", f"{max(e['S'], e['z']):.1e}", f"{max(grads):.1e}"] if e else [""] * 3
            shape = ", ".join(str(r[k]) for k in ("B", "H", "T", "M", "dv"))
            out.append("| " + " | ".join([shape, r["dtype"], r["backend"], *cells, word(r)]) + " |")
    elif suite == "prefill":
        for sweep, col, fixed in (("T", "T", f"B = {S['B']}"), ("B", "B", f"T = {S['T_at']}")):
            rs = [r for r in recs if r["sweep"] == sweep]
            if not rs:  # the gpu suite has no sweep over B
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


def cells_table(recs):
    """The rows of one timed step (one B, T) as a table: ms, speed-up over the reference row, TFLOP/s."""
    out = ["| implementation | ms | × FA2 | TFLOP/s | × floor | × its forward | check |", "|" + "---|" * 7]
    for r in recs:
        ok = r["status"] == "ok"
        f = lambda k, fmt: format(r[k], fmt) if ok and r.get(k) is not None else ""  # noqa: E731
        check = word(r) + (f" (err {r['err']:.1e})" if r.get("err") is not None else "")
        cells = [f("ms", ".3f"), f("speedup_vs_fa2", ".3g"), f("tflops", ".3g"), f("x_floor", ".1f"),
                 f("x_forward", ".2f")]
        out.append("| " + " | ".join([r["implementation"], *cells, check]) + " |")
    return out


def gpu_markdown(meta, rows, S):
    """gpu.md: what ran where, then one table per step, in the order the steps ran."""
    out = [f"# bash bench/gpu.sh on {meta['device']}\n", f"`{meta['command']}`\n",
           f"{meta['device']} · torch {meta['torch']} · triton {meta['triton']} · CUDA {meta['cuda']} · "
           f"commit {meta['commit']} · {meta['date']} · {meta['sizes']} sizes, {meta['dtype']}\n",
           f"softmax attention ran as SDPA backend {meta.get('sdpa_backend')}"
           + (f" (did not run: {meta['sdpa_not_run']})" if meta.get("sdpa_not_run") else "")]
    if meta.get("cut"):
        out.append(f"\n**This run was cut short ({meta['cut']}): the rows below are those it finished.**")
    sec = lambda name: [r for r in rows if r["section"] == name]  # noqa: E731
    if sec("grad_checks"):
        out += ["\n### forward and every gradient at the timed B, H, dv and dtype, against the float64 "
                "reference",
                "(max |got - ref| / max |ref|; no pads, T and M multiples of 64: the timed kernels)\n",
                "| design | kind | B, H, T, M, dv | dtype | y | worst gradient | check |", "|" + "---|" * 7]
        for r in sec("grad_checks"):
            e = r.get("err") or {}
            grads = [v for n, v in e.items() if n[0] == "d"]
            cells = [f"{e['y']:.1e}", f"{max(grads):.1e}"] if e else ["", ""]
            shape = ", ".join(str(r[k]) for k in ("B", "H", "T", "M", "dv"))
            out.append("| " + " | ".join([r["design"], r["kind"], shape, r["dtype"], *cells, word(r)]) + " |")
        out += notes(sec("grad_checks"))
    for name, title in (("table5", "forward"),
                        ("fwd_bwd", "forward + backward, against FlashAttention-2's forward + backward; work "
                                    "model 3.5× the forward")):
        if sec(name):
            r0 = sec(name)[0]
            out += [f"\n### JRT paper Table 5 row, {title} (B = {r0['B']}, T = {r0['T']}, H = {S['H']})\n"]
            out += cells_table(sec(name)) + notes(sec(name))
    if sec("sweep"):
        out.append(tables("prefill", sec("sweep"), S))
    for name in ("checks", "decode", "train"):
        if sec(name):
            out.append(tables(name, sec(name), S))
    return "\n".join(out) + "\n"


def plot(results, base, fmt):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
        fig.savefig(f"{base}-{name}.{fmt}", dpi=120, bbox_inches="tight")
        print(f"wrote {base}-{name}.{fmt}")


def git_commit():
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or None
    except OSError:
        return None


def failed(results):
    """The rows that failed (an error, or a result that disagrees with the reference), over all suites."""
    return [r for k, v in results.items() if k not in ("meta", "cut") for r in v
            if r["status"] in ("error", "wrong")]


def exit_status(results):
    """1 when the run was cut short or a row failed (each failure named on one line), else 0."""
    bad = failed(results)
    for r in bad:
        why = r.get("error", r.get("err", ""))
        print(f"bench.py: {r.get('section', '')} {row_name(r)}: {r['status']} {why}"[:400], file=sys.stderr)
    if results.get("cut"):
        print(f"bench.py: cut short: {results['cut']}", file=sys.stderr)
    return 1 if bad or results.get("cut") else 0


def check_out(args, suite):
    """--out before any work: the gpu suite's folder is made (with its parents) or refused in one line;
    another suite's JSON file gets its folder made; a folder given as a file (or a file as the folder) is
    refused."""
    out = args.out
    if suite == "gpu":
        if os.path.isfile(out):
            sys.exit(f"bench.py --out={out}: the gpu suite writes a folder (gpu.json, gpu.jsonl, gpu.md), "
                     "but this is a file")
        folder = out
    else:
        if os.path.isdir(out):
            sys.exit(f"bench.py --out={out}: a folder; give a .json file path (the suite writes one file)")
        folder = os.path.dirname(out) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        sys.exit(f"bench.py --out={out}: cannot make the folder {folder}: {e.strerror}")
    if not os.access(folder, os.W_OK):
        sys.exit(f"bench.py --out={out}: the folder {folder} is not writable")


def check_plot(fmt):
    """--plot before any work: matplotlib must be there (it is optional) and know the image format."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        sys.exit("bench.py --plot needs matplotlib, which is not installed (pip install matplotlib); "
                 "or drop --plot")
    known = Figure().canvas.get_supported_filetypes()
    if fmt not in known:
        sys.exit(f"bench.py --plot={fmt}: unknown image format; matplotlib writes {', '.join(sorted(known))}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="bench.py", description="JRT-RNN benchmarks (JRT paper, Table 5); "
                                                             "see the docstring of bench.py")
    p.add_argument("--suite", choices=("prefill", "decode", "train", "all", "gpu", "compile"),
                   default="prefill")
    p.add_argument("--tiny", action="store_true",
                   help="the tiny sizes (automatic without CUDA, except for --suite gpu, which refuses)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--backend", choices=("auto", "torch", "triton"), default=None,
                   help="our kernels (default: on CUDA triton for the prefill rows, auto for the models; "
                        "torch on CPU)")
    p.add_argument("--out", default=None, help="JSON file (default out/bench-<suite>-<device>.json); "
                                               "--suite gpu: a folder (default out/gpu-<device>-<date>)")
    p.add_argument("--plot", nargs="?", const="png", default=None, metavar="FORMAT",
                   help="also draw figures beside the JSON, as png (default) or another format matplotlib "
                        "writes (needs matplotlib: pip install matplotlib)")
    p.add_argument("--peak", type=float, nargs=2, metavar=("TFLOPS", "TBPS"),
                   help="the device's dense bf16 TFLOP/s and memory TB/s, for the floor and MFU")
    p.add_argument("--commit", default=None, help="the commit measured, for a copy of the tree without .git "
                                                  "(default: git describe, else 'unknown')")
    p.add_argument("--budget_s", type=float, default=300.,
                   help="gpu suite: rows start only within these seconds (the run ends about a minute later)")
    p.add_argument("--max_rows", type=int, default=None,
                   help="gpu suite: stop after this many rows, as a cut lease would (exits 1; the rows stay)")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="compile suite: parallel compiles")
    args = p.parse_args(argv)
    if args.suite == "compile":  # compile_check.py: what the GPU compiler makes of kernels.py, no GPU needed
        import compile_check
        return compile_check.main(args.out, args.jobs, git_commit())
    if args.commit is not None and not re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", args.commit):
        sys.exit(f"bench.py --commit={args.commit}: give a git commit id, 7 to 40 hex digits "
                 "(e.g. $(git rev-parse HEAD))")
    if args.budget_s <= 0:
        sys.exit(f"bench.py --budget_s={args.budget_s:g}: must be > 0 seconds")
    if args.max_rows is not None and args.max_rows < 1:
        sys.exit(f"bench.py --max_rows={args.max_rows}: must be >= 1")
    try:
        dev = resolve_device(args.device)
    except ValueError as e:
        sys.exit(f"bench.py --device: {e}")
    if args.plot:  # before the long runs, not after them
        if args.suite == "gpu":
            sys.exit("bench.py --plot: the gpu suite writes tables only; use --suite prefill, decode, train "
                     "or all")
        check_plot(args.plot)
    cuda = dev.type == "cuda"
    if args.suite == "gpu" and not cuda and not args.tiny:
        sys.exit(f"bench.py --suite gpu: no CUDA device here (device {dev}, torch {torch.__version__}, "
                 f"CUDA available: {torch.cuda.is_available()}); --tiny runs its tiny CPU form")

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
    commit = args.commit or git_commit() or "unknown (no .git here and no --commit given)"
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") if cuda else "cpu"
    slug += "-tiny" if tiny else ""
    date = datetime.now(timezone.utc)
    if args.out is None:
        args.out = (f"out/gpu-{slug}-{date:%Y-%m-%d}" if args.suite == "gpu"
                    else f"out/bench-{args.suite}-{slug}.json")
    check_out(args, args.suite)
    meta = dict(device=device, torch=torch.__version__, triton=triton_version, cuda=torch.version.cuda,
                commit=commit, date=date.isoformat(timespec="seconds"),
                command=" ".join(["python", *sys.argv]),
                sizes="tiny" if tiny else "gpu", size_table=S, dtype=str(dtype),
                peak_flops=peak and peak[0], peak_bytes_per_s=peak and peak[1])
    print(f"{device} · torch {torch.__version__} · triton {triton_version} · commit {commit} · "
          f"{meta['date']} · {meta['sizes']} sizes, {dtype}", flush=True)
    results = dict(meta=meta)
    torch.manual_seed(0)
    if args.suite == "gpu":
        backend = args.backend or ("triton" if cuda else "torch")
        sink = Sink(args.out, meta, S, args.max_rows)

        def stop(signum, frame):  # a lease or a cluster ends a job with SIGTERM: keep what is written, say so
            raise Cut(f"signal {signal.Signals(signum).name}")
        old = signal.signal(signal.SIGTERM, stop)
        try:
            gpu_suite(S, dev, dtype, backend, peak, sink, Budget(args.budget_s))
        except (Cut, KeyboardInterrupt) as e:
            results["cut"] = sink.meta["cut"] = str(e) or "interrupted (Ctrl-C)"
            sink.save()  # gpu.json and gpu.md say that the run was cut short, and why
        finally:
            signal.signal(signal.SIGTERM, old)
            sink.jsonl.close()
        results["gpu"] = sink.rows
        print("\n" + gpu_markdown(meta, sink.rows, S))
        print(f"wrote {args.out}/gpu.json, gpu.jsonl and gpu.md ({len(sink.rows)} rows)")
        return results
    for suite in ("prefill", "decode", "train") if args.suite == "all" else (args.suite,):
        backend = args.backend or (("triton" if suite == "prefill" else "auto") if cuda else "torch")
        fn = {"prefill": prefill_suite, "decode": decode_suite, "train": train_suite}[suite]
        results[suite] = fn(S, dev, dtype, backend, peak)
        print(tables(suite, results[suite], S))
        atomic_write(args.out, json.dumps(results, indent=1))  # after every suite: a cut run keeps those done
    print(f"\nwrote {args.out}")
    if args.plot:
        plot(results, os.path.splitext(args.out)[0], args.plot)
    return results


if __name__ == "__main__":
    res = main()
    sys.exit(exit_status(res if isinstance(res, dict) else {"compile": res}))  # compile returns its rows
