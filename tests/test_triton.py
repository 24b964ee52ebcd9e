# The Triton kernels of kernels.py against the quadratic reference (pla_reference, float64 autograd).
# Without a GPU they run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), which is
# slow: every case is tiny (T <= 150, B·H <= 4). With a GPU the same tests run on the device.
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")
import kernels  # noqa: E402  (after the skip: without triton there is nothing to test here)
from kernels import pla, pla_reference  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
F = 16  # the kernels' f

# Errors are max |got - ref| / max |ref|. fp32: the kernels and the float64 reference differ only by
# fp32 rounding (seen: ~3e-7). bf16: inputs are rounded to bf16 before both runs, so what is left is the
# bf16 output and gradients (2^-8 ≈ 4e-3) and, on a GPU, the bf16 operands of the products (the chunk's
# scores, P(x) and the state rounded to bf16 where it is read), each 2^-8 relative, summed in fp32.
TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}

# name: (B, H, T, M, dv, with a starting state, with pad masks). The interpreter's chunk is 16 (as for
# fp32 on a GPU; 64 for bf16), so T = 100, M = 37 end mid-chunk; M = 70 is two prefix segments; dv = 24,
# 40 and 112 (the 1.3B head dim) are not powers of two, and 40 and 112 are several blocks of value
# columns (the normaliser must be counted once).
CASES = {
    "tails": (1, 1, 100, 37, 24, False, False),
    "based_M0": (1, 1, 77, 0, 24, False, False),
    "M_eq_T_state": (1, 1, 90, 90, 24, True, False),
    "state_pads": (2, 2, 72, 70, 24, True, True),
    "dv40_state_pads": (1, 1, 70, 45, 40, True, True),
    "dv112_state_pads": (1, 1, 40, 21, 112, True, True),
}


def make(B, H, T, M, dv, with_state, with_pads, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)
    x = dict(q=r(B, H, T, F) * scale, k=r(B, H, T, F) * scale, v=r(B, H, T, dv))
    if M:
        x.update(k_enc=r(B, H, M, F) * scale, v_enc=r(B, H, M, dv))
    if with_state:  # a state as a prefill would leave it: S = Σ φ(k) vᵀ, z = Σ φ(k) over some earlier keys
        _, (S, z) = pla_reference(r(B, H, 20, F) * scale, r(B, H, 20, F) * scale, r(B, H, 20, dv))
        x.update(S=S, z=z)
    pads = {}
    if with_pads:  # left padding like a short prompt, plus scattered pads
        pads["pad_mask"] = (torch.rand(B, T, generator=g) < 0.25) | (torch.arange(T) < 5)
        if M:
            pads["enc_pad_mask"] = (torch.rand(B, M, generator=g) < 0.25) | (torch.arange(M) < 7)
    return x, pads, g


def run(x, pads, g, dtype, backend):
    """Forward with the final state, then backward of a random linear loss on y, S and z."""
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # states are kept in fp32
    x = {n: t.detach().to(DEV, state_dtype if n in ("S", "z") else dtype).requires_grad_() for n, t in x.items()}
    pads = {n: m.to(DEV) for n, m in pads.items()}
    args = (x["q"], x["k"], x["v"], x.get("k_enc"), x.get("v_enc"))
    state = (x["S"], x["z"]) if "S" in x else None
    if backend == "reference":
        y, (S, z) = pla_reference(*args, state=state, **pads)
    else:
        y, (S, z) = pla(*args, state=state, return_state=True, backend=backend, **pads)
    g = torch.Generator().manual_seed(1)
    loss = sum((t.double() * torch.randn(t.shape, generator=g).double().to(DEV)).sum() for t in (y, S, z))
    loss.backward()
    return y, S, z, {n: t.grad for n, t in x.items()}


def check(got, want, tol, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = ((got.double().cpu() - want.cpu()).abs().max() / want.abs().max()).item()
    assert err < tol, f"{what}: max error {err:.1e} of max |ref| (tolerance {tol:.0e})"


@pytest.mark.parametrize("scale", [1.0, 1 / 16], ids=["unit", "small"])  # randn/16 hides the s² term
@pytest.mark.parametrize("case", CASES)
def test_forward_state_and_grads_match_reference(case, scale):
    x, pads, g = make(*CASES[case], scale)
    y, S, z, grads = run(x, pads, g, torch.float32, "triton")
    yr, Sr, zr, gr = run(x, pads, g, torch.float64, "reference")
    tol = TOL[torch.float32]
    assert y.dtype == torch.float32 and S.dtype == z.dtype == torch.float32
    for what, a, b in [("y", y, yr), ("S", S, Sr), ("z", z, zr)] + [(f"d{n}", grads[n], gr[n]) for n in gr]:
        check(a, b, tol, f"{case} {what}")


def test_cases_cover_segments_and_value_blocks():
    """The cases above reach the multi-program paths: >1 prefix segment, >1 block of value columns."""
    if DEV == "cuda":
        pytest.skip("block counts depend on the GPU")
    low = False  # the interpreter runs the fp32 kernels (kernels._PLA.forward)
    assert kernels._blocks(24, 70, 4, DEV)["nseg"] == 2      # state_pads: two prefix segments
    assert kernels._blocks(40, 45, 1, DEV)["NV"] == 3        # dv40: three blocks of columns, 8 of 16 used in one
    assert kernels._blocks(112, 21, 1, DEV)["NV"] == 7       # dv112: seven, all 16 columns used
    assert min(T for _, _, T, *_ in CASES.values()) > 2 * kernels._tiles(low)["BT"]  # several chunks each


# The GPU's bf16 tiles (BT 64, NS 4, BV 16) at (B, H, T, M, dv, with a state, with pads): several chunks
# of 64, a last block of value columns with 8 of 16 used (72 = 4·16 + 8), several prefix segments, pads
# and a state; and the form the benchmarks time: no masks, no state, T and M multiples of the chunk, dv 64.
BF16_TILE_CASES = {"tails_state_pads": (1, 1, 150, 130, 72, True, True),
                   "timed_form": (1, 2, 128, 64, 64, False, False)}


@pytest.mark.skipif(DEV == "cuda", reason="on a GPU bf16 inputs run these tiles themselves (test_bf16_inputs)")
@pytest.mark.parametrize("case", BF16_TILE_CASES)
def test_the_bf16_tiles_with_fp32_products(monkeypatch, case):
    """The GPU's bf16 launches use other tiles than the fp32 ones the interpreter runs, and the interpreter
    cannot run bf16 products: so run those tiles with fp32 products (sm_90's form; the fp32 cases above run
    the other)."""
    tiles = kernels._tiles
    monkeypatch.setattr(kernels, "_tiles", lambda low: tiles(True))
    monkeypatch.setattr(kernels, "_wgmma", lambda low, device: True)  # sm_90's form of the forward's updates
    assert kernels._tiles(False)["BT"] == 64 and kernels._tiles(False)["BV"] == 16
    assert kernels._blocks(72, 130, 1, DEV)["nseg"] >= 2
    x, pads, g = make(*BF16_TILE_CASES[case], 1.0)
    y, S, z, grads = run(x, pads, g, torch.float32, "triton")
    yr, Sr, zr, gr = run(x, pads, g, torch.float64, "reference")
    for what, a, b in [("y", y, yr), ("S", S, Sr), ("z", z, zr)] + [(f"d{n}", grads[n], gr[n]) for n in gr]:
        check(a, b, TOL[torch.float32], f"bf16 tiles {case} {what}")


def test_bf16_inputs():
    """bf16 in (loaded as bf16, computed in fp32), bf16 out; the reference sees the same rounded inputs."""
    x, pads, g = make(1, 1, 70, 45, 40, True, True, 1.0)
    x = {n: t if n in ("S", "z") else t.bfloat16().double() for n, t in x.items()}
    y, S, z, grads = run(x, pads, g, torch.bfloat16, "triton")
    yr, Sr, zr, gr = run(x, pads, g, torch.float64, "reference")
    assert y.dtype == torch.bfloat16 and S.dtype == torch.float32
    assert all(grads[n].dtype == torch.bfloat16 for n in ("q", "k", "v", "k_enc", "v_enc"))
    for what, a, b in [("y", y, yr), ("S", S, Sr), ("z", z, zr)] + [(f"d{n}", grads[n], gr[n]) for n in gr]:
        check(a, b, TOL[torch.bfloat16], f"bf16 {what}")


def test_empty_prefix_equals_no_prefix():
    x, _, _ = make(1, 2, 40, 0, 24, False, False, 1.0)
    q, k, v = (x[n].to(DEV) for n in "qkv")
    empty_k, empty_v = q.new_zeros(1, 2, 0, F), v.new_zeros(1, 2, 0, 24)
    assert torch.equal(pla(q, k, v, empty_k, empty_v, backend="triton"), pla(q, k, v, backend="triton"))


@pytest.mark.skipif(DEV == "cuda", reason="on CUDA 'auto' means Triton")
def test_auto_on_cpu_is_the_torch_backend():
    x, pads, g = make(2, 1, 70, 45, 40, True, True, 1.0)
    args = [x[n] for n in ("q", "k", "v", "k_enc", "v_enc")]
    y_auto, st_auto = pla(*args, state=(x["S"], x["z"]), return_state=True, **pads)
    y_torch, st_torch = pla(*args, state=(x["S"], x["z"]), return_state=True, backend="torch", **pads)
    assert torch.equal(y_auto, y_torch) and all(torch.equal(a, b) for a, b in zip(st_auto, st_torch))


def test_bad_backends_say_why():
    q = torch.randn(1, 1, 8, F, device=DEV)
    v = torch.randn(1, 1, 8, 24, device=DEV)
    with pytest.raises(ValueError, match="backend must be"):
        pla(q, q, v, backend="cuda")
    with pytest.raises(ValueError, match="f = 8"):  # only f = 16 has kernels; 'auto' falls back instead
        pla(q[..., :8], q[..., :8], v, backend="triton")
    assert pla(q[..., :8], q[..., :8], v).shape == v.shape
    with pytest.raises(ValueError, match="float64"):
        pla(q.double(), q.double(), v.double(), backend="triton")


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setattr(kernels, "INTERPRET", False)
    q, v = torch.randn(1, 1, 8, F), torch.randn(1, 1, 8, 24)
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        pla(q, q, v, backend="triton")


def test_without_triton_everything_runs_on_torch():
    """Triton is optional: with it missing, 'auto' runs torch and 'triton' says why it cannot."""
    code = (
        "import sys; sys.modules['triton'] = None\n"  # makes `import triton` raise ImportError
        "import torch, kernels\n"
        "q, v = torch.randn(1, 1, 8, 16), torch.randn(1, 1, 8, 24)\n"
        "assert kernels.pla(q, q, v).shape == v.shape\n"
        "try:\n"
        "    kernels.pla(q, q, v, backend='triton')\n"
        "except ValueError as e:\n"
        "    assert 'triton is not importable' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no ValueError')\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_empty_batch_or_sequence_gives_the_empty_result():
    """B = 0 or T = 0 launches nothing: y is empty and the state is the starting state (or zeros)."""
    S0, z0 = torch.randn(1, 2, 273, 24, device=DEV), torch.randn(1, 2, 273, device=DEV)
    for B, T, state in ((0, 8, None), (1, 0, None), (1, 0, (S0, z0))):
        q, v = torch.randn(B, 2, T, F, device=DEV), torch.randn(B, 2, T, 24, device=DEV)
        y, (S, z) = pla(q, q, v, state=state, return_state=True, backend="triton")
        assert y.shape == (B, 2, T, 24) and S.shape == (B, 2, 273, 24) and z.shape == (B, 2, 273)
        want = state or (torch.zeros_like(S), torch.zeros_like(z))
        assert torch.equal(S, want[0]) and torch.equal(z, want[1])


def test_bad_masks_and_step_shapes_say_which_parameter():
    q, v = torch.randn(2, 1, 8, F), torch.randn(2, 1, 8, 24)
    with pytest.raises(ValueError, match=r"^pad_mask must be a bool tensor .*got dtype torch.float32$"):
        pla(q, q, v, pad_mask=torch.zeros(2, 8))
    with pytest.raises(ValueError, match=r"^enc_pad_mask must be a bool tensor .*got dtype torch.int64$"):
        pla(q, q, v, q[:, :, :3], v[:, :, :3], enc_pad_mask=torch.zeros(2, 3, dtype=torch.long))
    state = (torch.zeros(1, 1, 273, 24), torch.zeros(1, 1, 273))  # a batch-1 state for a batch-2 token
    with pytest.raises(ValueError, match=r"^state must be .*got S \(1, 1, 273, 24\)"):
        kernels.pla_step(q[:, :, 0], q[:, :, 0], v[:, :, 0], state)
    with pytest.raises(ValueError, match=r"^q and k must both be \(B, H, f\), one token; got q \(2, 1, 8, 16\)"):
        kernels.pla_step(q, q, v, state)
