"""
What the GPU compiler makes of kernels.py, read on any machine: every Triton kernel is compiled ahead of
time for an H100 (sm_90) and an A100 (sm_80), and the machine code is read with the cuobjdump that the
triton wheel ships: registers, stack bytes a thread (register spills), local loads and stores, shared
memory, and the kinds of MMA instruction (bf16 inputs should reach the tensor cores as BF16, not TF32).
No GPU is needed and nothing runs: these are compile facts, not speeds.

    python bench.py --suite compile [--jobs N]      # every kernel x arch x dtype x dv, bench/compile.json

tests/test_compile.py runs one arch pair of it in CI; results/kernels_compile.md reads the report.
"""
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone

import torch


def kernel_launches(dtype, dv, T=256, M=128):
    """Every Triton launch a forward + backward of kernels.pla makes at these sizes, as (name, kernel, args,
    kwargs), recorded instead of run: nothing is computed, the outputs are garbage. The block choice is the
    one for a 132-SM H100, so that the compile report shows what an H100 would run."""
    import types
    import kernels
    calls, names = [], [n for n in vars(kernels) if n.endswith("_kernel")]

    class Rec:
        def __init__(self, name):
            self.name, self.kernel = name, getattr(kernels, name)

        def __getattr__(self, attr):  # arg_names and the like: the kernel's own
            return getattr(self.kernel, attr)

        def __getitem__(self, grid):
            return lambda *a, **kw: calls.append((self.name, self.kernel, a, kw))
    props, real = types.SimpleNamespace(multi_processor_count=132), torch.cuda.get_device_properties
    saved, interpret = {n: getattr(kernels, n) for n in names}, kernels.INTERPRET
    try:
        torch.cuda.get_device_properties = lambda *a: props
        kernels.INTERPRET = False  # the launches a GPU gets (bf16 products), even where tests interpret
        for n in names:
            setattr(kernels, n, Rec(n))
        g = lambda *s: torch.randn(*s).to(dtype).requires_grad_()  # noqa: E731
        q, k, v, ke, ve = g(2, 2, T, 16), g(2, 2, T, 16), g(2, 2, T, dv), g(2, 2, M, 16), g(2, 2, M, dv)
        keep, keep_enc = torch.ones(2, T), torch.ones(2, M)
        y, S, z = kernels._PLA.apply(q, k, v, ke, ve, None, None, keep, keep_enc)
        (y.float().sum() + S.sum() + z.sum()).backward()
    finally:
        torch.cuda.get_device_properties, kernels.INTERPRET = real, interpret
        for n, kern in saved.items():
            setattr(kernels, n, kern)
    return calls


def compile_jobs(dtypes=(torch.bfloat16, torch.float32), dvs=(64, 112), archs=(90, 80)):
    """One job per (kernel, launch variant, arch, dtype, dv): what triton.compile needs, as plain values."""
    tname = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    jobs = []
    for dtype in dtypes:
        for dv in dvs:
            seen = set()
            for name, fn, args, kw in kernel_launches(dtype, dv):
                variant = tuple((k, str(kw[k])) for k, p in zip(fn.arg_names, fn.params) if p.is_constexpr and k in kw)
                if (name, variant) in seen:  # the same compiled kernel launched again
                    continue
                seen.add((name, variant))
                if kw.get("NORM"):  # the kernel's launch for the normaliser's ones column
                    name += " (ones)"
                vals = dict(zip(fn.arg_names, args), **kw)
                sig, const, attrs = {}, {}, {}
                for i, (a, p) in enumerate(zip(fn.arg_names, fn.params)):
                    if p.is_constexpr:
                        sig[a] = "constexpr"
                        if a in vals:
                            const[a] = vals[a]
                        continue
                    x = vals[a]
                    if torch.is_tensor(x):
                        sig[a], attrs[(i,)] = "*" + tname[x.dtype], [["tt.divisibility", 16]]  # torch aligns to 16 B
                    elif isinstance(x, float):
                        sig[a] = "fp32"
                    else:  # ints: Triton specialises multiples of 16 (T, dv here), as at run time
                        sig[a] = "i32"
                        if x % 16 == 0:
                            attrs[(i,)] = [["tt.divisibility", 16]]
                opts = dict(num_warps=kw.get("num_warps", 4), num_stages=kw.get("num_stages", 3))
                config = " ".join([*(f"{k} {const[k]}" for k in ("BT", "BV", "NS") if k in const),
                                   f"{opts['num_warps']} warps"])
                for arch in archs:
                    jobs.append(dict(kernel=name, config=config, arch=f"sm_{arch}", dtype=tname[dtype], dv=dv,
                                     cc=arch, sig=sig, const=const, attrs=attrs, opts=opts))
    return jobs


def compile_one(job):
    """Compile one job for its arch (no GPU needed) and read the machine code: registers and stack frame
    (cuobjdump -res-usage), local loads/stores and the kinds of MMA instruction (cuobjdump -sass)."""
    import tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default, said out loud (3.9 warns otherwise)
    import kernels
    fn = getattr(kernels, job["kernel"].split()[0])  # a triton.JITFunction
    rec = {k: job[k] for k in ("kernel", "config", "arch", "dtype", "dv")}
    t0 = time.perf_counter()
    try:
        ck = triton.compile(ASTSource(fn, job["sig"], job["const"], job["attrs"]),
                            target=GPUTarget("cuda", job["cc"], 32), options=job["opts"])
    except Exception as e:  # noqa: BLE001  (a kernel that does not compile is a row, not the end of the report)
        return dict(rec, status="error", error=f"{type(e).__name__}: {e}".strip().splitlines()[0][:300])
    tool = triton.knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(ck.asm["cubin"])
        fh.flush()
        res = subprocess.run([tool, "-res-usage", fh.name], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "-sass", fh.name], capture_output=True, text=True).stdout
    use = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", res))
    ops = [line.split()[1] for line in sass.splitlines() if re.search(r"\b[HIQ]G?MMA\.", line)]
    kinds = {}
    for op in ops:  # HGMMA.64x64x16.F32.BF16 -> HGMMA.F32.BF16: the instruction and its types, not its shape
        kind = ".".join(p for p in op.split(".") if not re.match(r"^\d", p))
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(rec, status="ok", regs=int(use["REG"]), stack=int(use["STACK"]),
                local_ops=len(re.findall(r"\b(LDL|STL)\b", sass)), smem=ck.metadata.shared + int(use["SHARED"]),
                mma=kinds, compile_s=round(time.perf_counter() - t0, 1))


def compile_tools():
    """None if triton can compile for an NVIDIA target and read the result here, else why not."""
    try:
        import triton
        from triton.compiler import ASTSource  # noqa: F401
        tools = [triton.knobs.nvidia.ptxas.path, triton.knobs.nvidia.cuobjdump.path]
    except Exception as e:  # noqa: BLE001
        return f"triton cannot compile here ({type(e).__name__}: {e})"
    missing = [t for t in tools if not (t and os.path.exists(t))]
    if missing:
        return f"triton {triton.__version__} has no {' or '.join(missing)} (its NVIDIA backend ships both)"
    return None


def compile_suite(jobs, n_proc):
    import multiprocessing
    if n_proc <= 1:
        return [compile_one(j) for j in jobs]
    with multiprocessing.get_context("spawn").Pool(n_proc) as pool:  # spawn: a fresh interpreter, no forked torch
        return pool.map(compile_one, jobs, chunksize=1)


def compile_table(recs):
    lines = ["| kernel | config | arch | dtype | dv | registers | stack B/thread | LDL+STL | shared B | MMA kinds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in recs:
        cells = ([r["regs"], r["stack"], r["local_ops"], r["smem"],
                  ", ".join(f"{k} ×{n}" for k, n in sorted(r["mma"].items())) or "none"]
                 if r["status"] == "ok" else ["error: " + r["error"], "", "", "", ""])
        lines.append("| " + " | ".join(map(str, [*(r[k] for k in ("kernel", "config", "arch", "dtype", "dv")), *cells]))
                     + " |")
    return "\n".join(lines)


def main(out, jobs, commit):
    why = compile_tools()
    if why:
        sys.exit(f"bench.py --suite compile: {why}")
    import triton
    out = out or "bench/compile.json"
    t0 = time.perf_counter()
    recs = compile_suite(compile_jobs(), jobs)
    meta = dict(triton=triton.__version__, torch=torch.__version__, commit=commit,
                date=datetime.now(timezone.utc).isoformat(timespec="seconds"), command=" ".join(["python", *sys.argv]),
                wall_s=round(time.perf_counter() - t0, 1))
    print(f"triton {meta['triton']} · commit {meta['commit']} · {meta['date']} · {meta['wall_s']} s\n")
    print(compile_table(recs))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as fh:
        json.dump(dict(meta=meta, compile=recs), fh, indent=1)
    print(f"\nwrote {out}")
    return recs
