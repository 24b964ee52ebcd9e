"""
The first run on a GPU (`bash bench/gpu.sh --out DIR`, which runs this file), sized to end within 6 minutes
on one H100 (--budget_s; see gpu_suite): every row written to DIR as soon as it is measured, most important
first, so that a lease cut short keeps what it finished. It times the design in kernels.py beside the
previous one (bench/pla_prev.py) on bench.py's rows, checks and suites; bench.py says what each number is.

Without CUDA it refuses, unless --tiny is given: the tiny CPU form, in seconds, which tests/test_bench.py
runs. The exit status is 1 when a row failed (an error or a wrong result) or the run was cut short.
"""
import argparse
import contextlib
import importlib.util
import json
import os
import signal
import sys
import time
import warnings

# Run as a script, sys.path[0] is bench/; the repository root goes first, so that `import bench` is bench.py.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from bench import (FA2, TOL, Row, add_run_options, atomic_write, check_out, decode_suite,  # noqa: E402
                   derive, describe, exit_status, failure, fla_rows, free, headline, measure, notes,
                   row_name, run_device, tables, train_suite, word)
import kernels  # noqa: E402
from kernels import pla, pla_reference  # noqa: E402

PROG = "bench/gpu.sh"  # what a user runs; it runs this file

PREV_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pla_prev.py")


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


def checks_table(recs):
    """The kernel checks of step 5: every output and gradient against the float64 reference."""
    out = ["\n### forward and backward against the float64 reference (max |got - ref| / max |ref|)\n",
           "| B, H, T, M, dv | dtype | backend | y | S, z | worst gradient | check |", "|" + "---|" * 7]
    for r in recs:
        e = r.get("err") or {}
        grads = [v for n, v in e.items() if n[0] == "d"]
        cells = [f"{e['y']:.1e}", f"{max(e['S'], e['z']):.1e}", f"{max(grads):.1e}"] if e else [""] * 3
        shape = ", ".join(str(r[k]) for k in ("B", "H", "T", "M", "dv"))
        out.append("| " + " | ".join([shape, r["dtype"], r["backend"], *cells, word(r)]) + " |")
    return "\n".join(out + notes(recs))


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
    if sec("checks"):
        out.append(checks_table(sec("checks")))
    for name in ("decode", "train"):
        if sec(name):
            out.append(tables(name, sec(name), S))
    return "\n".join(out) + "\n"



def main(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description="The first run on a GPU: kernel checks, the JRT "
                                "paper's Table-5 row and sweeps, decode, train; see bench/gpu.py")
    add_run_options(p, tiny="the tiny sizes on the PyTorch backend (without CUDA it refuses otherwise)")
    p.add_argument("--out", default=None, help="a folder (default out/gpu-<device>-<date>)")
    p.add_argument("--budget_s", type=float, default=300.,
                   help="rows start only within these seconds (the run ends about a minute later)")
    p.add_argument("--max_rows", type=int, default=None,
                   help="stop after this many rows, as a cut lease would (exits 1; the rows stay)")
    args = p.parse_args(argv)
    if args.budget_s <= 0:
        sys.exit(f"{PROG} --budget_s={args.budget_s:g}: must be > 0 seconds")
    if args.max_rows is not None and args.max_rows < 1:
        sys.exit(f"{PROG} --max_rows={args.max_rows}: must be >= 1")
    dev = run_device(args, PROG)
    cuda = dev.type == "cuda"
    if not cuda and not args.tiny:
        sys.exit(f"{PROG}: no CUDA device here (device {dev}, torch {torch.__version__}, "
                 f"CUDA available: {torch.cuda.is_available()}); --tiny runs its tiny CPU form")
    S, dtype, peak, meta, slug = describe(args, dev)
    args.out = args.out or f"out/gpu-{slug}-{meta['date'][:10]}"
    check_out(args.out, PROG, folder=True)
    print(headline(meta), flush=True)
    torch.manual_seed(0)
    backend = args.backend or ("triton" if cuda else "torch")
    sink, results = Sink(args.out, meta, S, args.max_rows), dict(meta=meta)

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


if __name__ == "__main__":
    sys.exit(exit_status(main(), PROG))
