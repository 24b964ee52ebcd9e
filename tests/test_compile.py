"""The Triton kernels compiled ahead of time for an H100 (sm_90) and an A100 (sm_80), no GPU needed: a
compile error the interpreter cannot see fails here, and so do register spills or bf16 inputs that reach
the tensor cores as anything but bf16. One compile per kernel and arch (bf16, dv 64, the GPU's tiles);
`python bench.py --suite compile` reports every dtype, dv and arch. Skips where triton has no ptxas."""
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
jobs = compile_check.compile_jobs(dtypes=(torch.bfloat16,), dvs=(64,), archs=(90, 80))
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
