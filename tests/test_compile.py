"""The Triton kernels compiled ahead of time for an H100 (sm_90) and an A100 (sm_80), no GPU needed: a
compile error the interpreter cannot see fails here, and so do register spills or bf16 inputs that reach
the tensor cores as anything but bf16. One compile per kernel and arch (bf16, dv 64, the GPU's tiles, the
variants with pad masks); `python bench.py --suite compile` reports every dtype, dv and arch without pad
masks, at the Table-5 shape. Skips where triton has no ptxas."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
import compile_check  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = """
import json, torch, compile_check
jobs = compile_check.compile_jobs(dtypes=(torch.bfloat16,), dvs=(64,), archs=(90, 80), masks=True)
print(json.dumps(compile_check.compile_suite(jobs, 2)))
"""


def test_every_kernel_compiles_for_sm90_and_sm80_without_spills():
    why = compile_check.compile_tools()
    if why:
        pytest.skip(why)
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # the interpreter's @triton.jit cannot be compiled
    out = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    recs = json.loads(out.stdout.splitlines()[-1])
    kernels = {r["kernel"] for r in recs}
    assert {"_enc_fwd_kernel", "_fwd_kernel", "_bwd_chunk_kernel", "_bwd_dq_kernel", "_bwd_dkv_kernel",
            "_enc_bwd_kernel"} <= kernels
    assert {(r["kernel"], r["arch"]) for r in recs} == {(k, a) for k in kernels for a in ("sm_90", "sm_80")}
    for r in recs:
        what = f"{r['kernel']} {r['config']} {r['arch']}"
        assert r["status"] == "ok", f"{what}: {r.get('error')}"
        assert r["stack"] == 0, f"{what}: {r['stack']} bytes of stack a thread (register spills)"
        assert r["mma"] and all(k.endswith(".F32.BF16") for k in r["mma"]), f"{what}: MMA kinds {r['mma']}"


# The report's readers (compile_check's docstring says how each metric is computed), on small excerpts in the
# format cuobjdump -sass and Triton's TTGIR print, so that they are checked where ptxas is missing too.
SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;                       /* 0x00000a00ff017b82 */
        /*0010*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;       /* 0x0000000c0804723c */
        /*0020*/               @!P0 BRA 0x0100 ;                                /* 0x0000000000008947 */
        /*0030*/                   LDGSTS.E.BYPASS.128 [R2], desc[UR4][R6.64] ; /* 0x0000000006027fae */
        /*0040*/                   HGMMA.64x32x16.F32.BF16 R24, R116, gdesc[UR36], RZ, !UPT ; /* 0x0 */
        /*0050*/                   HGMMA.64x16x16.F32.BF16 R64, R24, gdesc[UR4].tnspB, R64, gsb0 ; /* 0x0 */
        /*0060*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;               /* 0x0000000000007b1d */
        /*0070*/                   REDG.E.ADD.F32x4.FTZ.RN.STRONG.GPU desc[UR4][R2.64], R4 ; /* 0x0 */
        /*0080*/               @P4 BRA 0x0030 ;                                 /* 0xffffffa400004947 */
        /*0090*/                   RED.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R2.64], R5 ; /* 0x0 */
        /*00a0*/                   EXIT ;                                       /* 0x000000000000794d */
        /*00b0*/                   BRA 0xb0;                                    /* 0xfffffffc00fc7947 */
"""

TTGIR = """
#mma = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [4, 2], instrShape = [16, 16, 16]}>
#mma1 = #ttg.nvidia_mma<{versionMajor = 3, versionMinor = 0, warpsPerCTA = [8, 1], instrShape = [16, 16, 16]}>
#mma3 = #ttg.nvidia_mma<{versionMajor = 2, versionMinor = 0, warpsPerCTA = [8, 1], instrShape = [16, 8]}>
module attributes {"ttg.num-warps" = 8 : i32} {
  tt.func public @k(%T: i32) attributes {noinline = false} {
    %a = tt.dot %x, %y, %z : tensor<32x64xbf16, #ttg.dot_op<{opIdx = 0, parent = #mma3, kWidth = 2}>> * \
tensor<64x16xbf16, #ttg.dot_op<{opIdx = 1, parent = #mma3, kWidth = 2}>> -> tensor<32x16xf32, #mma3>
    %s:2 = scf.for %t0 = %c0_i32 to %T step %c64_i32 iter_args(%u = %a, %v = %b) -> \
(tensor<64x32xf32, #mma>) : i32 {
      %r = ttng.warp_group_dot %q, %w, %c {isAsync = true} : tensor<64x16xbf16, #ttg.dot_op<{opIdx = 0, \
parent = #mma1, kWidth = 2}>> * !ttg.memdesc<16x32xbf16, #shared2, #smem> -> tensor<64x32xf32, #mma1>
      %n = ttng.warp_group_dot %p, %g, %c {isAsync = true} : tensor<64x64xbf16, #ttg.dot_op<{opIdx = 0, \
parent = #mma, kWidth = 2}>> * !ttg.memdesc<64x32xbf16, #shared3, #smem> -> tensor<64x32xf32, #mma>
      scf.yield %r, %n : tensor<64x32xf32, #mma1>, tensor<64x32xf32, #mma>
    } {tt.num_stages = 1 : i32}
    tt.return
  }
}
"""


def test_sass_reader_finds_the_loop_and_counts_mma_flop_copies_atomics_and_barriers():
    parts = compile_check.sass_counts(SASS, warps=8)
    assert len(parts) == 2  # one loop (0x30..0x80; the BRA to itself after EXIT is no loop), then the rest
    loop, rest = parts
    # in the loop: HGMMA 64x32x16 and 64x16x16, each run by the 2 warpgroups of 8 warps
    assert loop["mma"] == 2 * (2 * 64 * 32 * 16 + 2 * 64 * 16 * 16)
    assert (loop["async_copies"], loop["atomics"], loop["atomic_lanes"], loop["barriers"]) == (1, 1, 4, 1)
    assert rest["mma"] == 8 * 2 * 16 * 8 * 16  # HMMA.16816 outside: once per warp
    assert (rest["async_copies"], rest["atomics"], rest["atomic_lanes"], rest["barriers"]) == (0, 1, 1, 0)


def test_ttgir_reader_predicts_the_duplication_of_a_64_row_tile_on_two_warpgroups():
    (loop, outside), used = compile_check.ttgir_dots(TTGIR)
    assert used == {"v2 [8, 1]": 1, "v3 [8, 1]": 1, "v3 [4, 2]": 1}
    # [8, 1]: two warpgroups along M on a 64-row tile, both compute it; [4, 2]: they split N, no repeat
    assert loop["useful"] == 2 * 64 * 32 * 16 + 2 * 64 * 32 * 64
    assert loop["predicted"] == 2 * (2 * 64 * 32 * 16) + 2 * 64 * 32 * 64
    # mma v2 with 8 warps along M on 32 rows: 2 row tiles of 16, each computed by 4 warps
    assert outside["useful"] == 2 * 32 * 16 * 64 and outside["predicted"] == 4 * outside["useful"]


def test_ctas_per_sm_follow_the_occupancy_rules():
    assert compile_check.occupancy(225, 13312, 8, 90) == (1, "registers")  # 7424 regs a warp: 8 warps fit
    assert compile_check.occupancy(128, 19456, 8, 90) == (2, "registers")
    assert compile_check.occupancy(32, 100 * 1024, 4, 90) == (2, "shared")  # 228 KB / (100 KB + 1 KB)
    assert compile_check.occupancy(32, 228 * 1024, 4, 90) == (0, "shared")  # over 227 KB a CTA: no launch
    assert compile_check.occupancy(24, 0, 4, 90) == (16, "warps")  # 64 warps an SM


def test_the_launch_report_at_the_table5_shape_is_complete_and_self_consistent():
    """One real compile: the first launch of the forward, sm_90, bf16, dv 64, at the Table-5 shape."""
    why = compile_check.compile_tools()
    if why:
        pytest.skip(why)
    code = """
import json, torch, compile_check
jobs = compile_check.compile_jobs(dtypes=(torch.bfloat16,), dvs=(64,), archs=(90,))
print(json.dumps(compile_check.compile_one(next(j for j in jobs if j["launches"][0]["phase"] == "forward"))))
"""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.splitlines()[-1])
    what = f"{r['kernel']} {r['config']}"
    assert r["status"] == "ok", f"{what}: {r.get('error')}"
    assert r["programs"] == sum(compile_check.math.prod(g) for g in r["grid"]) > 0
    sms = compile_check.GPUS[90]["sms"]
    assert 1 <= r["ctas_per_sm"] <= 32 and r["waves"] == round(r["programs"] / (r["ctas_per_sm"] * sms), 2)
    assert r["loops_sass"] == r["loops_ttgir"] >= 1, f"{what}: SASS and TTGIR loops differ"
    # most of what the tiles ask for is issued; the layouts' prediction bounds the SASS from above (the
    # compiler may drop products whose results are never used)
    assert r["issued_per_useful"] > 0.5, f"{what}: the SASS issues few of the MMA FLOP the TTGIR asks for"
    assert r["issued_per_useful"] <= r["layout_per_useful"], f"{what}: more MMAs than the TTGIR layouts say"
    assert r["flop"] > 0 and r["bytes"] > 0 and r["main_loop"]["trips"] >= 1
