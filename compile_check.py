"""
What the GPU compiler makes of kernels.py, read on any machine: every Triton launch of a forward + backward
at the JRT paper's throughput shape (Table 5: B 16, H 16, T 32768, M 16384, f 16; no pad masks, as there) is
compiled ahead of time for an H100 (sm_90) and an A100 (sm_80), and the machine code (SASS) and Triton's
last IR (TTGIR) are read.
No GPU is needed and nothing runs: these are compile facts and counts, never a time.

    python bench.py --suite compile [--jobs N] [--out FILE]      # tables on stdout, JSON in out/compile.json
    python compile_check.py --masks [--jobs N] [--out FILE]     # the same launches with pad masks

Per launch (kernel and its constexprs), for each arch, dtype and dv:
  grid       programs the launch starts (kernels.py's own block choice for the arch's SM count).
  registers, stack bytes a thread (register spills), LDL+STL (local loads/stores), shared memory:
             cuobjdump -res-usage and -sass.
  CTAs/SM    how many programs one SM holds at once, the least of four limits (CUDA occupancy rules):
             registers: a warp takes ceil(32·regs / 256)·256 of the SM's 65536, so
                        floor(floor(65536 / that) / warps) CTAs;
             shared memory: floor(228 KB / (shared + 1 KB the runtime keeps per CTA)) (A100: 164 KB),
                        0 past 227 KB a CTA (A100: 163 KB);
             warps: floor(64 / warps);  and at most 32 CTAs.
             waves = programs / (CTAs/SM · SMs): below 1 the GPU is part idle.
  MMA issued ÷ useful: issued counts what the tensor cores execute. Each MMA instruction of the SASS has
             its shape in its name: HGMMA.64x32x16 is 2·64·32·16 FLOP for one warpgroup (4 warps),
             HMMA.16816 is 2·16·8·16 for one warp. The SASS is the program of one CTA and every warp runs
             all of it, so an HGMMA counts warps/4 times and an HMMA warps times. A loop is a backward
             branch (BRA to a lower address): its body's instructions count once per iteration.
             useful is 2·m·n·k of each dot the kernel asks for (the tt.dot / warp_group_dot ops of the
             TTGIR with their tile shapes), inside the same loops. Both are multiplied by the loops' trip
             counts (MODEL below: the source's loops, in order). A ratio of 2 means every product is
             computed twice. The "by layout" column predicts the same from the TTGIR alone: a
             #ttg.nvidia_mma v3 layout with warpsPerCTA [wm, wn] and instrShape [16, n, k] gives each of its
             wm/4 warpgroups along the rows 64-row tiles, so an M×N×K dot issues
             (wm/4)·wn·ceil(M / (64·wm/4))·ceil(N / (n·wn))·ceil(K / k) instructions of 2·64·n·k FLOP:
             [8, 1] on a 64-row tile issues it twice, both warpgroups computing the same rows. v2 (HMMA):
             wm·wn·ceil(M / (16·wm))·ceil(N / (8·wn))·ceil(K / k) of 2·16·8·k. The two agree when the SASS
             holds what the layouts say; the SASS can issue less where the compiler drops products whose
             results are never used.
  main loop  in the loop with the most iterations: async copies (LDGSTS, or UTMALDG/UBLKCP: TMA), global
             atomics (RED, ATOM) and barriers (BAR.SYNC), counted per iteration in the SASS.
  atomic adds  values added atomically by the whole launch: each RED/ATOM instruction adds its width
             (REDG.E.ADD.F32x4: 4) in every thread, times the loops' trips and the programs (an upper
             bound where lanes are masked off).
  FLOP       useful MMA FLOP of the launch (all programs): the products the tiles ask for, padding
             columns included; the footer sets the forward's total beside kernels.pla_flop.
  HBM bytes  a work model (MODEL): the bytes each program must read or write at least, summed; in
             brackets the fp32 partial sums among them (written by the kernel, read back by torch to add).
To adapt to new kernels: kernel_launches records whatever kernels.py launches; MODEL needs one entry per
kernel (its loops' trip counts and its least bytes), a few lines.

tests/test_compile.py runs part of it in CI; results/kernels_compile.md reads the report.
"""
import json
import math
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timezone

import torch

TABLE5 = dict(B=16, H=16, T=32768, M=16384)  # the JRT paper's throughput shape (f 16; dv 64 there)
# Per-SM limits (CUDA occupancy rules): SMs, shared memory per SM and per CTA, registers, warps, CTAs
GPUS = {90: dict(name="H100", sms=132, smem_sm=228 * 1024, smem_cta=227 * 1024),
        80: dict(name="A100", sms=108, smem_sm=164 * 1024, smem_cta=163 * 1024)}
REGS_SM, REG_UNIT, WARPS_SM, CTAS_SM, SMEM_RESERVED = 65536, 256, 64, 32, 1024


def kernel_launches(dtype, dv, B=2, H=2, T=256, M=128, sms=132, masks=True,
                    cc=90):
    """Every Triton launch a forward + backward of kernels.pla makes at these sizes, as dicts (name, kernel,
    grid, args, kwargs, phase), recorded instead of run on meta tensors: nothing is computed or allocated.
    The block choice is kernels.py's for a GPU with `sms` SMs and compute capability cc; masks: with pad
    masks (HAS_W variants)."""
    import types
    import kernels
    calls, names, phase = [], [n for n in vars(kernels) if n.endswith("_kernel")], ["forward"]

    class Rec:
        def __init__(self, name):
            self.name, self.kernel = name, getattr(kernels, name)

        def __getattr__(self, attr):  # arg_names and the like: the kernel's own
            return getattr(self.kernel, attr)

        def __getitem__(self, grid):
            grid = tuple(grid) if isinstance(grid, (tuple, list)) else (grid,)
            return lambda *a, **kw: calls.append(dict(name=self.name, kernel=self.kernel, grid=grid, args=a,
                                                      kwargs=kw, phase=phase[0]))
    props = types.SimpleNamespace(multi_processor_count=sms, major=cc // 10)
    real = torch.cuda.get_device_properties
    saved, interpret = {n: getattr(kernels, n) for n in names}, kernels.INTERPRET
    try:
        torch.cuda.get_device_properties = lambda *a: props
        kernels.INTERPRET = False  # the launches a GPU gets (bf16 products), even where tests interpret
        for n in names:
            setattr(kernels, n, Rec(n))
        g = lambda *s: torch.empty(*s, device="meta", dtype=dtype).requires_grad_()  # noqa: E731
        q, k, v, ke, ve = g(B, H, T, 16), g(B, H, T, 16), g(B, H, T, dv), g(B, H, M, 16), g(B, H, M, dv)
        keep, keep_enc = None, None
        if masks:
            keep, keep_enc = torch.ones(B, T, device="meta"), torch.ones(B, M, device="meta")
        y, S, z = kernels._PLA.apply(q, k, v, ke, ve, None, None, keep, keep_enc)
        phase[0] = "backward"
        (y.float().sum() + S.sum() + z.sum()).backward()
    finally:
        torch.cuda.get_device_properties, kernels.INTERPRET = real, interpret
        for n, kern in saved.items():
            setattr(kernels, n, kern)
    return calls


# ----------------------------------------------------------------------------- the work model per kernel
# For each kernel: its loops' trip counts (the source's `range` loops in order; static_range unrolls) and the
# bytes all its programs must read or write at least, from the launch's arguments `a` (names as in kernels.py,
# constexprs included) and its grid. _es(x): bytes per element of tensor x. partials: the bytes of fp32
# partial sums it writes (states, dq, dk), which torch then reads back once to add them up; HBM bytes count
# them with the rest. A kernel missing here still gets every SASS column; its ratio counts one trip per loop,
# and its FLOP, atomic adds and bytes are left out.

def _cols(a, width):
    """Columns of `width` the launch's blocks of BV cover, clipped."""
    return min(a["BV"] * a["_grid"][0], width)


def _es(x):
    return x.element_size() if torch.is_tensor(x) else 4


MODEL = {
    # one program: a segment of SEG prefix keys, BV columns; reads k̃, v; writes a partial (D, BV) state and
    # z's column (every block writes the same z)
    "_enc_fwd_kernel": lambda a, BH, D, F: dict(
        trips=[math.ceil(a["SEG"] / a["BT"])],
        bytes=BH * a["_grid"][0] * a["M"] * F * _es(a["KE"])
        + BH * a["M"] * _cols(a, a["DV"]) * _es(a["VE"]),
        partials=BH * a["_grid"][1] * D * (_cols(a, a["DV"]) + a["_grid"][0]) * 4),
    # one program: one head, BV columns, all T; reads q̃, k̃, v, the state and z; writes y, 1/den, the state
    # and z (every block computes and writes the same den and z)
    "_fwd_kernel": lambda a, BH, D, F: dict(
        trips=[math.ceil(a["T"] / a["BT"])],
        bytes=BH * a["_grid"][0] * a["T"] * (2 * F * _es(a["Q"]) + 4)
        + BH * a["T"] * 2 * _cols(a, a["DV"]) * _es(a["V"])
        + BH * 2 * D * (_cols(a, a["DV"]) + a["_grid"][0]) * 4,
        partials=0),
    # one program: one chunk of BT rows of one head, all columns (three loops over them: dy·y for dden, the
    # score gradient, dv): reads q, k, v, y, dy, 1/den; writes dden, dv and partial 0 of dq and dk
    "_bwd_chunk_kernel": lambda a, BH, D, F: dict(
        trips=[math.ceil(a["DV"] / a["BV"]), math.ceil((a["DV"] + 1) / a["BV"]),
               math.ceil(a["DV"] / a["BV"])],
        bytes=BH * a["T"] * (2 * F * _es(a["Q"]) + 4 * a["DV"] * _es(a["V"]) + 8),
        partials=BH * a["T"] * 2 * F * 4),
    # one program: one head, 16 columns; reads q, k, v, dy, 1/den, dden, the state; writes its partial of dq
    "_bwd_dq_kernel": lambda a, BH, D, F: dict(
        trips=[math.ceil(a["T"] / a["BT"])],
        bytes=BH * a["_grid"][0] * a["T"] * (2 * F * _es(a["Q"]) + 8)
        + BH * a["T"] * 2 * a["DV"] * _es(a["V"]) + BH * D * (a["DV"] + 1) * 4,
        partials=BH * a["_grid"][0] * a["T"] * F * 4),
    # one program: one head, 16 columns, chunks in reverse; reads q, k, v, dy, 1/den, dden, dS; writes its
    # partial of dk, reads and writes dv, writes dS of the start
    "_bwd_dkv_kernel": lambda a, BH, D, F: dict(
        trips=[math.ceil(a["T"] / a["BT"])],
        bytes=BH * a["_grid"][0] * a["T"] * (2 * F * _es(a["Q"]) + 8)
        + BH * a["T"] * 4 * a["DV"] * _es(a["V"]) + BH * 2 * D * (a["DV"] + 1) * 4,
        partials=BH * a["_grid"][0] * a["T"] * F * 4),
    # one program: a segment of prefix keys, 16 columns; reads k̃, v, dS; writes its partial of dk, and dv
    "_enc_bwd_kernel": lambda a, BH, D, F: dict(
        trips=[math.ceil(a["SEG"] / a["BT"])],
        bytes=BH * a["_grid"][0] * a["M"] * F * _es(a["KE"]) + BH * a["M"] * 2 * a["DV"] * _es(a["VE"])
        + BH * a["_grid"][1] * D * (a["DV"] + 1) * 4,
        partials=BH * a["_grid"][0] * a["M"] * F * 4),
}


def compile_jobs(dtypes=(torch.bfloat16, torch.float32), dvs=(64, 112), archs=(90, 80), shape=None,
                 masks=False):
    """One job per (kernel, launch variant, arch, dtype, dv): what triton.compile needs, as plain values, and
    the launch's grid, loop trips and least bytes. shape: B, H, T, M (default Table 5)."""
    shape = dict(TABLE5, **(shape or {}))
    BH = shape["B"] * shape["H"]
    tname = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
    jobs = []
    for dtype in dtypes:
        for dv in dvs:
            for arch in archs:
                seen = {}
                for c in kernel_launches(dtype, dv, sms=GPUS[arch]["sms"], masks=masks, cc=arch, **shape):
                    name, fn, args, kw = c["name"], c["kernel"], c["args"], c["kwargs"]
                    vals = dict(zip(fn.arg_names, args), **kw)
                    F = vals.get("F", 16)
                    model = MODEL.get(name)
                    work = model(dict(vals, _grid=c["grid"]), BH, 1 + F + F * F, F) if model else {}
                    if work:
                        work["bytes"] += work["partials"]
                    launch = dict(grid=list(c["grid"]), programs=math.prod(c["grid"]), phase=c["phase"],
                                  **work)
                    variant = tuple((k, str(kw[k])) for k, p in zip(fn.arg_names, fn.params)
                                    if p.is_constexpr and k in kw)
                    if (name, variant) in seen:  # the same compiled kernel launched again: one more launch
                        seen[name, variant]["launches"].append(launch)
                        continue
                    sig, const, attrs = {}, {}, {}
                    for i, (a, p) in enumerate(zip(fn.arg_names, fn.params)):
                        if p.is_constexpr:
                            sig[a] = "constexpr"
                            if a in vals:
                                const[a] = vals[a]
                            continue
                        x = vals[a]
                        if torch.is_tensor(x):  # torch aligns to 16 B
                            sig[a], attrs[(i,)] = "*" + tname[x.dtype], [["tt.divisibility", 16]]
                        elif isinstance(x, float):
                            sig[a] = "fp32"
                        else:  # ints: Triton specialises multiples of 16 (T, dv here), as at run time
                            sig[a] = "i32"
                            if x % 16 == 0:
                                attrs[(i,)] = [["tt.divisibility", 16]]
                    opts = dict(num_warps=kw.get("num_warps", 4), num_stages=kw.get("num_stages", 3))
                    config = " ".join([*(f"{k} {const[k]}" for k in ("BT", "BV", "NS") if k in const),
                                       f"{opts['num_warps']} warps", f"stages {opts['num_stages']}"])
                    job = dict(kernel=name, config=config, arch=f"sm_{arch}", dtype=tname[dtype], dv=dv,
                               cc=arch, sig=sig, const=const, attrs=attrs, opts=opts, launches=[launch],
                               modelled=model is not None)
                    seen[name, variant] = job
                    jobs.append(job)
    return jobs


# ----------------------------------------------------------------------------- reading SASS and TTGIR

SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?"  # address, predicate
                       r"([A-Z][A-Z0-9_]*)((?:\.[A-Za-z0-9_]+)*)\s*([^;]*);")  # opcode, .suffixes, operands


def sass_instructions(sass):
    """(address, opcode, suffixes, operands) of every instruction in cuobjdump -sass text."""
    return [(int(m[1], 16), m[2], m[3], m[4]) for m in SASS_LINE.finditer(sass)]


def sass_loops(ins):
    """Loops as (first, last) address pairs: each backward branch (BRA to a lower address) closes one. A
    branch to itself (the trap after EXIT) is no loop."""
    loops = []
    for addr, op, _, operands in ins:
        hit = re.search(r"0x([0-9a-f]+)", operands) if op == "BRA" else None
        if hit and int(hit[1], 16) < addr:
            loops.append((int(hit[1], 16), addr))
    return sorted(loops)


HMMA_SHAPES = {"16816": (16, 8, 16), "1688": (16, 8, 8), "16832": (16, 8, 32), "884": (8, 8, 4)}  # m, n, k


def mma_flop(op, suffixes, warps):
    """FLOP one MMA instruction of the SASS executes in one CTA: HGMMA.MxNxK once per warpgroup (4 warps),
    HMMA.16816 (m16 n8 k16) and the like once per warp; 0 for any other instruction."""
    shape = (suffixes.split(".") + ["", ""])[1]
    if op in ("HGMMA", "QGMMA") and re.fullmatch(r"\d+x\d+x\d+", shape):
        m, n, k = map(int, shape.split("x"))
        return 2 * m * n * k * max(1, warps // 4)
    if op == "HMMA" and shape in HMMA_SHAPES:
        m, n, k = HMMA_SHAPES[shape]
        return 2 * m * n * k * warps
    return 0


def sass_counts(sass, warps):
    """Per loop (in address order, then 'outside' for code in no loop): the MMA FLOP one pass issues in one
    CTA, and counts of async copies, global atomics and barriers. An instruction belongs to its innermost
    loop."""
    ins = sass_instructions(sass)
    loops = sass_loops(ins)
    parts = [dict(mma=0, async_copies=0, atomics=0, atomic_lanes=0, barriers=0, local_ops=0)
             for _ in range(len(loops) + 1)]
    for addr, op, suffixes, _ in ins:
        inside = [i for i, (a, b) in enumerate(loops) if a <= addr <= b]
        p = parts[min(inside, key=lambda i: loops[i][1] - loops[i][0]) if inside else -1]
        p["mma"] += mma_flop(op, suffixes, warps)
        p["async_copies"] += op in ("LDGSTS", "UTMALDG", "UBLKCP")
        if op in ("RED", "REDG", "ATOM", "ATOMG"):
            p["atomics"] += 1
            width = re.search(r"\.[FSU]\d+x(\d)\b", suffixes)  # REDG.E.ADD.F32x4: 4 values a thread
            p["atomic_lanes"] += int(width[1]) if width else 1
        p["barriers"] += op == "BAR" and suffixes.startswith(".SYNC")
        p["local_ops"] += op in ("LDL", "STL")
    return parts


def ttgir_dots(ttgir):
    """Per scf.for loop (in order, then one part for the code outside every loop): the useful FLOP of its
    dots (2·M·N·K at the tile shapes) and the FLOP their #ttg.nvidia_mma layouts say the tensor cores issue
    (see the module's docstring); and how many dots use each layout, as 'v3 [8, 1]' keys."""
    layouts = {m[1]: dict(v=int(m[2]), warps=[int(x) for x in m[3].split(",")],
                          instr=[int(x) for x in m[4].split(",")])
               for m in re.finditer(r"^(#\w+) = #ttg\.nvidia_mma<\{versionMajor = (\d+),.*?warpsPerCTA = "
                                    r"\[([\d, ]+)\], instrShape = \[([\d, ]+)\]", ttgir, re.M)}
    loops, outside, used = [], dict(useful=0, predicted=0), {}
    open_loops, depth = [], 0  # (loop index, brace depth outside it)
    for line in ttgir.splitlines():
        if re.search(r"\bscf\.for ", line):
            loops.append(dict(useful=0, predicted=0))
            open_loops.append((len(loops) - 1, depth))
        depth += line.count("{") - line.count("}")
        while open_loops and depth <= open_loops[-1][1]:
            open_loops.pop()
        m = re.search(r"= (?:tt\.dot|ttng\.warp_group_dot) .*?: (?:tensor|!ttg\.memdesc)<(\d+)x(\d+)x(\w+)"
                      r".*-> tensor<(\d+)x(\d+)x\w+, (#\w+)>", line)
        if not m:
            continue
        M, K, N, lay = int(m[1]), int(m[2]), int(m[5]), layouts.get(m[6])
        useful, predicted = 2 * M * N * K, 0
        if lay and lay["v"] == 3:  # warpgroups of 4 warps, 64 rows each; instrShape [16, n, k]
            gm, gn, n, k = max(1, lay["warps"][0] // 4), lay["warps"][1], lay["instr"][1], lay["instr"][2]
            tiles = gm * gn * math.ceil(M / (64 * gm)) * math.ceil(N / (n * gn)) * math.ceil(K / k)
            predicted = tiles * 2 * 64 * n * k
        elif lay and lay["v"] == 2:  # one warp: m16 n8, k = 256 bits of operand
            bits = 16 if m[3] in ("bf16", "f16") else 8 if m[3].startswith(("f8", "i8")) else 32
            wm, wn, k = lay["warps"][0], lay["warps"][1], 256 // bits
            tiles = wm * wn * math.ceil(M / (16 * wm)) * math.ceil(N / (8 * wn)) * math.ceil(K / k)
            predicted = tiles * 2 * 16 * 8 * k
        if lay:
            key = f"v{lay['v']} {lay['warps']}"
            used[key] = used.get(key, 0) + 1
        part = loops[open_loops[-1][0]] if open_loops else outside
        part["useful"] += useful
        part["predicted"] += predicted
    return loops + [outside], used


def occupancy(regs, smem, warps, cc):
    """(CTAs per SM, the limit that binds) by the CUDA occupancy rules (see the module's docstring)."""
    per_warp = math.ceil(regs * 32 / REG_UNIT) * REG_UNIT
    gpu = GPUS[cc]
    limits = dict(registers=(REGS_SM // per_warp) // warps if regs else CTAS_SM,
                  shared=0 if smem > gpu["smem_cta"] else gpu["smem_sm"] // (smem + SMEM_RESERVED),
                  warps=WARPS_SM // warps, ctas=CTAS_SM)
    why = min(limits, key=limits.get)
    return limits[why], why


def analyse(job, regs, smem, sass, ttgir):
    """The launch metrics of one compiled kernel from its SASS and TTGIR (see the module's docstring)."""
    warps, launch = job["opts"]["num_warps"], job["launches"][0]
    sass_parts, (dots, layouts) = sass_counts(sass, warps), ttgir_dots(ttgir)
    nloops = len(sass_parts) - 1
    trips = launch.get("trips") or [1] * nloops
    out = dict(loops_sass=nloops, loops_ttgir=len(dots) - 1, trips=trips, layouts=layouts)
    ctas, why = occupancy(regs, smem, warps, job["cc"])
    programs = sum(la["programs"] for la in job["launches"])
    out.update(grid=[la["grid"] for la in job["launches"]], programs=programs, ctas_per_sm=ctas,
               cta_limit=why,
               waves=round(programs / (ctas * GPUS[job["cc"]]["sms"]), 2) if ctas else None,
               bytes=sum(la.get("bytes", 0) for la in job["launches"]) if job["modelled"] else None,
               partials=sum(la.get("partials", 0) for la in job["launches"]) if job["modelled"] else None)
    matched = nloops == len(dots) - 1 == len(trips)
    if matched:
        w = [*trips, 1]
        issued = sum(p["mma"] * n for p, n in zip(sass_parts, w))
        useful = sum(p["useful"] * n for p, n in zip(dots, w))
        predicted = sum(p["predicted"] * n for p, n in zip(dots, w))
        threads = 32 * warps
        adds = sum(p["atomic_lanes"] * n for p, n in zip(sass_parts, w)) * threads * programs
        out.update(issued_flop=issued, useful_flop=useful, predicted_flop=predicted,
                   flop=useful * programs if job["modelled"] else None,
                   atomic_adds=adds if job["modelled"] else None,
                   issued_per_useful=round(issued / useful, 2) if useful and issued else None,
                   layout_per_useful=round(predicted / useful, 2) if useful and predicted else None)
    main = max(range(nloops), key=lambda i: (trips[i] if matched else 0, -i)) if nloops else None
    out["main_loop"] = None
    if main is not None:
        out["main_loop"] = dict({k: sass_parts[main][k] for k in ("async_copies", "atomics", "barriers")},
                                index=main, trips=trips[main] if matched else None)
    return out


def compile_one(job):
    """Compile one job for its arch (no GPU needed) and read the machine code: registers and stack frame
    (cuobjdump -res-usage), local loads/stores and the kinds of MMA instruction (cuobjdump -sass), and the
    launch metrics (analyse)."""
    import tempfile
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default said out loud (3.9 warns)
    import kernels
    fn = getattr(kernels, job["kernel"])  # a triton.JITFunction
    rec = {k: job[k] for k in ("kernel", "config", "arch", "dtype", "dv")}
    t0 = time.perf_counter()
    try:
        ck = triton.compile(ASTSource(fn, job["sig"], job["const"], job["attrs"]),
                            target=GPUTarget("cuda", job["cc"], 32), options=job["opts"])
    except Exception as e:  # noqa: BLE001  (a kernel that does not compile is a row, not the report's end)
        return dict(rec, status="error", error=f"{type(e).__name__}: {e}".strip().splitlines()[0][:300])
    tool = triton.knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(ck.asm["cubin"])
        fh.flush()
        res = subprocess.run([tool, "-res-usage", fh.name], capture_output=True, text=True).stdout
        sass = subprocess.run([tool, "-sass", fh.name], capture_output=True, text=True).stdout
    use = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", res))
    kinds = {}
    for _, op, suffixes, _ in sass_instructions(sass):
        if re.fullmatch(r"[HIQ]G?MMA", op):  # HGMMA.64x64x16.F32.BF16 -> HGMMA.F32.BF16: types, not shape
            kind = op + "".join("." + p for p in suffixes.split(".")[1:] if not re.match(r"^\d", p))
            kinds[kind] = kinds.get(kind, 0) + 1
    regs, smem = int(use["REG"]), ck.metadata.shared + int(use["SHARED"])
    return dict(rec, status="ok", regs=regs, stack=int(use["STACK"]),
                local_ops=len(re.findall(r"\b(LDL|STL)\b", sass)), smem=smem, mma=kinds,
                **analyse(job, regs, smem, sass, ck.asm["ttgir"]),
                compile_s=round(time.perf_counter() - t0, 1))


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
    with multiprocessing.get_context("spawn").Pool(n_proc) as pool:  # spawn: no forked torch
        return pool.map(compile_one, jobs, chunksize=1)


# ----------------------------------------------------------------------------- tables

def _row(cells):
    return "| " + " | ".join(map(str, cells)) + " |"


def launch_table(recs):
    """The feedback table: one row per launch variant, every metric of the module's docstring."""
    lines = [_row(["kernel", "config", "grid (programs)", "regs", "stack B", "LDL+STL", "shared B",
                   "CTAs/SM (limit)", "waves", "MMA issued ÷ useful", "by layout", "MMA layouts",
                   "main loop: async copies / atomics / BAR.SYNC", "atomic adds (M)", "GFLOP",
                   "HBM MB (partials)"]),
             _row(["---"] * 16)]
    for r in recs:
        if r["status"] != "ok":
            lines.append(_row([r["kernel"], r["config"], "error: " + r["error"], *[""] * 13]))
            continue
        loop = r["main_loop"]
        grid = " + ".join("×".join(map(str, g)) for g in r["grid"])
        lines.append(_row([
            r["kernel"], r["config"], f"{grid} ({r['programs']})", r["regs"], r["stack"], r["local_ops"],
            r["smem"],
            f"{r['ctas_per_sm']} ({r['cta_limit']})", r["waves"],
            r.get("issued_per_useful") or ("FMA" if not r["mma"] else
                                           f"? (loops: SASS {r['loops_sass']}, TTGIR {r['loops_ttgir']}, "
                                           f"MODEL {len(r['trips'])})"),
            r.get("layout_per_useful") or "",
            ", ".join(f"{k} ×{n}" for k, n in sorted(r["layouts"].items())) or "none",
            (f"{loop['async_copies']} / {loop['atomics']} / {loop['barriers']} (×{loop['trips']})" if loop
             else "no loop"),
            f"{r['atomic_adds'] / 1e6:.0f}" if r.get("atomic_adds") is not None else "?",
            f"{r['flop'] / 1e9:.1f}" if r.get("flop") is not None else "?",
            f"{r['bytes'] / 1e6:.0f} ({r['partials'] / 1e6:.0f})" if r.get("bytes") is not None else "?"]))
    return "\n".join(lines)


def compile_table(recs):
    """Every target, in short: spills, MMA kinds, occupancy and the MMA ratio."""
    lines = [_row(["kernel", "config", "arch", "dtype", "dv", "registers", "stack B/thread", "LDL+STL",
                   "shared B", "MMA kinds", "CTAs/SM", "MMA issued ÷ useful"]),
             _row(["---"] * 12)]
    for r in recs:
        cells = ([r["regs"], r["stack"], r["local_ops"], r["smem"],
                  ", ".join(f"{k} ×{n}" for k, n in sorted(r["mma"].items())) or "none",
                  r["ctas_per_sm"], r.get("issued_per_useful") or ("FMA" if not r["mma"] else "?")]
                 if r["status"] == "ok" else ["error: " + r["error"], *[""] * 6])
        lines.append(_row([*(r[k] for k in ("kernel", "config", "arch", "dtype", "dv")), *cells]))
    return "\n".join(lines)


def totals(recs, dv, shape):
    """The forward's and backward's useful MMA FLOP and bytes, beside kernels.pla_flop's forward."""
    import kernels
    BH = shape["B"] * shape["H"]
    out = {}
    for phase in ("forward", "backward"):
        rs = [r for r in recs if r["status"] == "ok" and r["phase"] == phase]
        out[phase] = {k: sum(r.get(k) or 0 for r in rs) for k in ("flop", "bytes", "partials", "atomic_adds")}
    out["pla_flop_forward"] = BH * kernels.pla_flop(shape["T"], shape["M"], dv=dv)
    return out


def main(out, jobs, commit, masks=False):
    why = compile_tools()
    if why:
        sys.exit(f"bench.py --suite compile: {why}")
    import triton
    out = out or "out/compile.json"
    t0 = time.perf_counter()
    todo = compile_jobs(masks=masks)
    recs = compile_suite(todo, jobs)
    for r, j in zip(recs, todo):
        r["phase"] = j["launches"][0]["phase"]
    meta = dict(triton=triton.__version__, torch=torch.__version__, commit=commit, shape=TABLE5, masks=masks,
                date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                command=" ".join(["python", *sys.argv]),
                wall_s=round(time.perf_counter() - t0, 1))
    print(f"triton {meta['triton']} · commit {meta['commit']} · {meta['date']} · "
          f"{meta['wall_s']} s of compiling{' · with pad masks' if masks else ''}\n")
    shape = ", ".join(f"{k} {v}" for k, v in TABLE5.items())
    main_recs = [r for r in recs if (r["arch"], r["dtype"], r["dv"]) == ("sm_90", "bf16", 64)]
    print(f"## Every launch of a forward + backward at the Table-5 shape ({shape}, f 16, dv 64), bf16, "
          f"sm_90 (H100, {GPUS[90]['sms']} SMs)\n")
    print(launch_table(main_recs))
    if main_recs:
        t = totals(main_recs, 64, TABLE5)
        print(f"\nforward: {t['forward']['flop'] / 1e12:.3f} TFLOP useful MMA (kernels.pla_flop: "
              f"{t['pla_flop_forward'] / 1e12:.3f}), {t['forward']['bytes'] / 1e9:.2f} GB least HBM traffic "
              f"({t['forward']['partials'] / 1e9:.2f} GB of it partial sums); "
              f"backward: {t['backward']['flop'] / 1e12:.3f} TFLOP, {t['backward']['bytes'] / 1e9:.2f} GB "
              f"({t['backward']['partials'] / 1e9:.2f} GB of it partial sums), "
              f"{t['backward']['atomic_adds'] / 1e9:.2f} billion atomic adds. The kernels only: torch reads "
              "the partial sums back once more to add them up, and its other ops between the kernels are not "
              "counted")
        meta["totals"] = t
    print("\n## Every target\n")
    print(compile_table(recs))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as fh:
        json.dump(dict(meta=meta, compile=recs), fh, indent=1)
    print(f"\nwrote {out}")
    return recs


if __name__ == "__main__":  # the same report; --masks: the launches with pad masks (the HAS_W variants)
    import argparse
    ap = argparse.ArgumentParser(description="bench.py --suite compile, and its pad-mask variants")
    ap.add_argument("--masks", action="store_true")
    ap.add_argument("--jobs", type=int, default=os.cpu_count())
    ap.add_argument("--out")
    a = ap.parse_args()
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    main(a.out, a.jobs, git.stdout.strip() or "unknown", a.masks)
