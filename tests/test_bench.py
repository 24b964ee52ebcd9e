"""bench.py, bench/gpu.py and bench/oprm.py at their tiny sizes: every table has its rows and columns, the
numbers parse, each row passed its check against the reference, and a wrong (or failing) implementation is
reported as such, not timed. Times themselves are not checked."""
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import bench
from kernels import pla, pla_flop
from model import Config, Model

TINY = ["--tiny", "--backend", "torch"]  # the same sizes and backend on a CPU and on a GPU
NUM = r"\d+(\.\d+)?(e[-+]?\d+)?"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(name):
    """bench/<name>.py as a module: bench/ is a folder of files beside the module bench (bench.py)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "bench", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gpu, oprm, plot = load_script("gpu"), load_script("oprm"), load_script("plot")


def tables(text):
    """Each markdown table in text as a list of rows of cells (header first, separator dropped)."""
    out, cur = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if cur is None:
                cur = []
                out.append(cur)
            if not line.startswith("|---"):
                cur.append([c.strip() for c in line.strip().strip("|").split("|")])
        else:
            cur = None
    return out


def test_prefill_tables_shape_and_checks(tmp_path, capsys):
    out = tmp_path / "a" / "b" / "prefill.json"  # a missing folder is made, before the work
    res = bench.main(["--suite", "prefill", "--out", str(out), *TINY])
    ts = tables(capsys.readouterr().out)
    assert len(ts) == 4  # latency and TFLOP/s, for the sweep over T and the sweep over B
    S = bench.SIZES["tiny"]
    names = ["FlashAttention-2", "SDPA (default", "Based, ours", "JRT-Prompt, ours", "JRT-RNN, ours"]
    for t, col, vals in ((ts[0], "T", S["T"]), (ts[2], "B", S["B_sweep"])):
        assert t[0] == ["implementation", *(f"{col} = {v}" for v in vals), "check"]
        assert all(any(r[0].startswith(n) for r in t[1:]) for n in names)
        for r in t[1:]:
            assert all(re.fullmatch(rf"{NUM} \({NUM}×\)", c) for c in r[1:-1]), r  # ms (speed-up vs FA2)
            assert r[-1].startswith("ok (max err"), r
    for t in (ts[1], ts[3]):  # TFLOP/s, and "(N× floor)" where the device's peak is known
        assert all(re.fullmatch(rf"{NUM}( \({NUM}× floor\))?", c) for r in t[1:] for c in r[1:]), t
    saved = json.loads(out.read_text())
    assert {"device", "torch", "triton", "commit", "date", "command"} <= set(saved["meta"])
    recs = saved["prefill"]
    assert recs == res["prefill"] and len(recs) == len(ts[0][1:]) * (len(S["T"]) + len(S["B_sweep"]))
    assert all(r["status"] == "ok" and r["ms"] > 0 and r["tflops"] > 0 for r in recs)
    assert all(r["speedup_vs_fa2"] == 1 for r in recs if r["implementation"] == bench.FA2)


def test_wrong_failing_and_oom_rows_are_reported_not_timed():
    def oom(*a):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    def broken(*a):
        raise RuntimeError("kernel launch failed (simulated)")
    rows = [bench.Row("right", "based", lambda q, k, v: pla(q, k, v, backend="torch")),
            bench.Row("s twice too big", "based", lambda q, k, v: pla(2 * q, k, v, backend="torch")),
            bench.Row("encoder ignored", "pla", lambda q, k, v, ke, ve: pla(q, k, v, backend="torch")),
            bench.Row("NaN", "based", lambda q, k, v: torch.full_like(v, float("nan"))),
            bench.Row("oom", "based", oom), bench.Row("broken", "based", broken)]
    S = dict(bench.SIZES["tiny"], T=(128,), B_sweep=(2,))  # one cell per sweep is enough here
    recs = bench.prefill_suite(S, torch.device("cpu"), torch.float32, "torch", None, rows=rows)
    status = {}
    for r in recs:
        status.setdefault(r["implementation"], set()).add(r["status"])
    assert status == {"right": {"ok"}, "s twice too big": {"wrong"}, "encoder ignored": {"wrong"},
                      "NaN": {"wrong"}, "oom": {"OOM"}, "broken": {"error"}}
    assert all(r["ms"] is None for r in recs if r["implementation"] != "right")
    t = tables(bench.tables("prefill", recs, S))[0]
    cells = {r[0]: r[1:] for r in t[1:]}
    assert cells["s twice too big"][:-1] == ["wrong"] * len(S["T"])
    assert cells["s twice too big"][-1].startswith("wrong")
    assert cells["oom"][:-1] == ["OOM"] * len(S["T"]) and cells["broken"][0] == "error"
    assert "broken: error: RuntimeError: kernel launch failed" in bench.tables("prefill", recs, S)


def test_flop_model_is_the_jrt_papers_table_5_shape():
    assert pla_flop(1, 0) == 81715 and pla_flop(0, 1) == 35473  # ≈ 81.7k·T + 35.5k·M per head
    flop, nbytes = (x * 16 * 16 for x in bench.work("pla", 32768, bench.SIZES["gpu"], 2))  # 32k, B = H = 16
    assert abs(flop / 0.83e12 - 1) < 0.01 and abs(nbytes / 3.4e9 - 1) < 0.02  # Table 5: 0.83 TFLOP, 3.4 GB
    assert abs(bench.work("attn", 32768, bench.SIZES["gpu"], 2)[0] * 256 / 35e12 - 1) < 0.01  # FA2: 35 TFLOP
    for kind in ("attn", "pla", "prompt"):  # forward + backward: 3.5× the FLOP, the gradients' traffic on top
        (f1, b1), (f2, b2) = (bench.work(kind, 4096, bench.SIZES["gpu"], 2, backward=b)
                              for b in (False, True))
        assert f2 == 3.5 * f1 and 2.5 * b1 < b2 < 3 * b1


def test_decode_table_and_cache_constant_vs_growing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output goes under out/ (git-ignored), never bench/ or results/
    bench.main(["--suite", "decode", *TINY])
    out = tmp_path / "out" / "bench-decode-cpu-tiny.json"
    if torch.cuda.is_available():
        out = next((tmp_path / "out").glob("bench-decode-*-tiny.json"))
    S = bench.SIZES["tiny"]
    t = tables(capsys.readouterr().out)[0]
    assert t[0] == ["model", "T", "cache MB/seq", *(f"B = {b}" for b in S["decode_B"])]
    assert [r[:2] for r in t[1:]] == [[m, str(T)] for m in S["decode"] for T in S["decode_T"]]
    assert all(re.fullmatch(NUM, c) for r in t[1:] for c in r[2:]), t
    recs = json.loads(out.read_text())["decode"]
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in recs)
    for name in S["decode"]:  # the bytes: the model's state numbers at 4 bytes (fp32), plus attn's bool masks
        model = Model(Config.from_preset(name))
        for r in (r for r in recs if r["model"] == name):
            extra = r["cache_bytes_per_seq"] - 4 * model.state_size(r["T"])["total"]
            assert 0 <= extra <= model.config.n_layer * r["T"], (name, r)
    mb = {(r["model"], r["T"]): r["cache_bytes_per_seq"] for r in recs}
    assert mb[("jrt-tiny", 64)] == mb[("jrt-tiny", 128)]                   # constant state
    assert mb[("transformer-tiny", 128)] > mb[("transformer-tiny", 64)]   # growing KV cache


def test_train_table(tmp_path, capsys):
    res = bench.main(["--suite", "train", "--out", str(tmp_path / "train.json"), *TINY])
    t = tables(capsys.readouterr().out)[0]
    assert t[0] == ["model", "params", "B × T", "ms/step", "tokens/s", "TFLOP/s", "MFU"]
    assert [r[0] for r in t[1:]] == list(bench.SIZES["tiny"]["train"])
    for r in t[1:]:
        assert re.fullmatch(rf"{NUM}M", r[1]) and all(re.fullmatch(NUM, c) for c in r[3:6]), r
        assert r[6] == "-" or re.fullmatch(rf"{NUM}%", r[6])  # MFU needs the device's peak: none on a CPU
    assert all(r["status"] == "ok" and r["flop_per_token"] > 6 * r["params"] for r in res["train"])


def test_import_bench_is_the_module_not_its_folder():
    """bench/gpu.py imports bench.py as `bench` from the repository root, where the folder bench/ is too: a
    module wins over a folder without __init__.py at the same path entry."""
    assert os.path.samefile(bench.__file__, os.path.join(ROOT, "bench.py"))
    assert gpu.measure is bench.measure


def gpu_sh(out, *args, env=None):
    """bash bench/gpu.sh --tiny --out out ... on one thread, without the interpreter (the previous Triton
    design is then skipped, said so in its rows), with this Python."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "0", "PYTHON": sys.executable,
           **(env or {})}
    return subprocess.run(["bash", "bench/gpu.sh", "--tiny", "--out", str(out), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def gpu_tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "run"  # a folder that does not exist yet: the script makes it
    return out, gpu_sh(out, "--commit", "0123abc")


def test_gpu_script_tiny_form_writes_a_row_per_measurement(gpu_tiny):
    """bash bench/gpu.sh is the one command for a GPU; its tiny form runs every step and leaves one JSON line
    per finished row, the same rows in gpu.json and their tables in gpu.md."""
    out, run = gpu_tiny
    assert subprocess.run(["bash", "-n", "bench/gpu.sh"], cwd=ROOT).returncode == 0
    assert run.returncode == 0, run.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "gpu.jsonl").read_text().splitlines()]
    meta, rows = lines[0], lines[1:]
    assert meta["section"] == "meta" and meta["commit"] == "0123abc" and meta["sizes"] == "tiny"
    assert {"device", "torch", "triton", "cuda", "date", "command", "sdpa_backend"} <= set(meta)
    saved = json.loads((out / "gpu.json").read_text())
    assert saved["rows"] == rows and saved["meta"]["commit"] == "0123abc"
    order = ["grad_checks", "table5", "fwd_bwd", "sweep", "checks", "decode", "train"]
    assert list(dict.fromkeys(r["section"] for r in rows)) == order  # the most important steps first
    assert all(r["status"] == "ok" or r["status"].startswith("skipped: ") for r in rows)
    S = bench.SIZES["tiny"]
    table5 = [r for r in rows if r["section"] == "table5"]
    assert {(r["B"], r["T"]) for r in table5} == {(S["B"], S["T"][-1])}
    names = [r["implementation"] for r in table5]
    assert names[0] == (bench.FA2 if meta["sdpa_backend"] == "FLASH_ATTENTION" else names[0])
    assert names[0].startswith("FlashAttention-2") == (meta["sdpa_backend"] == "FLASH_ATTENTION")
    cuda = torch.cuda.is_available()
    for kind in ("JRT-RNN", "JRT-Prompt", "Based"):  # both designs side by side
        assert {n.split(", ")[1] for n in names if n.startswith(kind + ",") and ", fla" not in n} == \
            {f"kernels.pla ({'triton' if cuda else 'torch'})", "pla_prev (triton)"}
    prev = [r for r in rows if "pla_prev" in (r.get("implementation") or r.get("design") or "")]
    assert prev and all(r["status"] == "ok" if cuda else "needs CUDA (or TRITON_INTERPRET=1" in r["status"]
                        for r in prev)  # without CUDA it is said, not silent
    fla = [r for r in rows if (r.get("implementation") or "").startswith("Based, fla")]
    assert fla and all(r["status"].startswith("skipped: fla not importable") and "--wheels" in r["status"]
                       for r in fla) or all(r["status"] == "ok" for r in fla)
    grads = [r for r in rows if r["section"] == "grad_checks" and r["status"] == "ok"]
    assert {(r["kind"], r["B"], r["H"], r["T"], r["dv"]) for r in grads} == \
        {(k, S["B"], S["H"], S["grad_T"], S["dv"]) for k in ("pla", "based")}  # the timed B, H, dv
    assert all({"y", "dq", "dk", "dv"} <= set(r["err"]) for r in grads)
    sweep = {(r["sweep"], r["B"], r["T"]) for r in rows if r["section"] == "sweep"}
    assert sweep == {("T", S["B"], T) for T in S["T"]} | {("B", B, S["T_at"]) for B in S["B_sweep"]}
    md = (out / "gpu.md").read_text()
    assert tables(md) and tables(md) == tables(run.stdout[run.stdout.index("# bash bench/gpu.sh"):])
    assert "0123abc" in md and "SDPA backend" in md


def test_gpu_fwd_bwd_row_is_against_fa2_fwd_bwd(gpu_tiny):
    """The forward + backward rows' speed-up is over FlashAttention-2's forward + backward of the same run
    (not its forward), and their TFLOP/s come from the forward + backward work model."""
    rows = json.loads((gpu_tiny[0] / "gpu.json").read_text())["rows"]
    fb = [r for r in rows if r["section"] == "fwd_bwd" and r["status"] == "ok"]
    ref = [r for r in fb if r["ref"]]
    assert len(ref) == 1 and ref[0]["step"] == "forward + backward" and ref[0]["speedup_vs_fa2"] == 1
    fwd = {r["implementation"]: r for r in rows if r["section"] == "table5" and r["status"] == "ok"}
    assert fwd[ref[0]["implementation"]]["ms"] != ref[0]["ms"]
    ours = [r for r in fb if r["implementation"].startswith("JRT-RNN, kernels.pla")]
    assert len(ours) == 1
    for r in ours:
        assert r["step"] == "forward + backward" and r["ref_implementation"] == ref[0]["implementation"]
        assert r["speedup_vs_fa2"] == pytest.approx(ref[0]["ms"] / r["ms"])
        assert r["flop"] == pytest.approx((1 + bench.BACKWARD) * fwd[r["implementation"]]["flop"])
        assert r["x_forward"] == pytest.approx(r["ms"] / fwd[r["implementation"]]["ms"])


def test_gpu_cut_short_keeps_its_rows_and_fails(tmp_path, monkeypatch):
    """A run stopped after 3 rows (as a lease cut short) keeps those rows on disk and fails."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the previous design is skipped: no interpreted kernels here
    res = gpu.main(["--tiny", "--out", str(tmp_path / "cut"), "--max_rows", "3"])
    assert res["cut"] == "stopped after 3 rows (--max_rows 3)" and bench.exit_status(res) == 1
    lines = (tmp_path / "cut" / "gpu.jsonl").read_text().splitlines()
    rows = json.loads((tmp_path / "cut" / "gpu.json").read_text())["rows"]
    assert len(lines) == 4 and [json.loads(x) for x in lines[1:]] == rows == res["gpu"] and len(rows) == 3
    md = (tmp_path / "cut" / "gpu.md").read_text()
    assert tables(md) and "cut short (stopped after 3 rows" in md  # the finished rows' table, and why no more
    assert json.loads((tmp_path / "cut" / "gpu.json").read_text())["meta"]["cut"] == res["cut"]


def test_gpu_sigterm_keeps_its_rows_and_exits_nonzero(tmp_path):
    """SIGTERM (how a lease or a cluster ends a job) mid-run: every row finished is in all three files, and
    the exit status is 1."""
    out = tmp_path / "term"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "0", "PYTHON": sys.executable}
    p = subprocess.Popen(["bash", "bench/gpu.sh", "--tiny", "--out", str(out)], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 120
    while time.monotonic() < end and p.poll() is None and (
            not (out / "gpu.jsonl").exists() or len((out / "gpu.jsonl").read_text().splitlines()) < 6):
        time.sleep(0.1)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1 and "cut short: signal SIGTERM" in err, err[-2000:]
    lines = (out / "gpu.jsonl").read_text().splitlines()
    rows = json.loads((out / "gpu.json").read_text())["rows"]
    assert len(rows) >= 5 and [json.loads(x) for x in lines[1:]] == rows


def test_gpu_failed_row_is_written_and_exits_nonzero(tmp_path, monkeypatch):
    """A row that raises is a row with its error, the run goes on, and the exit status is 1."""
    def broken(*a, **k):
        raise RuntimeError("kernel launch failed (simulated)")
    monkeypatch.setattr(gpu, "pla", broken)
    res = gpu.main(["--tiny", "--out", str(tmp_path), "--max_rows", "2"])
    assert [r["status"] for r in res["gpu"]] == ["error", "error"] and res["cut"]
    assert "kernel launch failed" in res["gpu"][0]["error"]
    assert json.loads((tmp_path / "gpu.json").read_text())["rows"] == res["gpu"]
    assert bench.exit_status(res) == 1 and bench.exit_status(dict(res, cut=None)) == 1
    assert bench.exit_status({"meta": {}, "train": [{"status": "ok"}], "decode": [{"status": "OOM"}]}) == 0
    said = bench.notes([dict(implementation="x", status="ok", kernels_compiled_while_timed=2)])
    assert said == ["\n- x: Triton compiled 2 kernels while it was timed: its binaries are not those the "
                    "gradient checks ran"]


def test_gpu_suite_refuses_without_cuda(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gpu.main(["--device", "cpu", "--out", str(tmp_path / "g")])
    assert "bench/gpu.sh: no CUDA device here" in str(e.value) and "--tiny" in str(e.value)
    assert "\n" not in str(e.value) and not (tmp_path / "g").exists()  # one line, before any work


def test_grad_check_finds_a_wrong_kernel_and_passes_the_previous_design():
    """grad_check, which the gpu suite runs at the timed shapes: a kernel with s twice too large fails it;
    the frozen previous Triton design (bench/pla_prev.py) passes it, here under Triton's interpreter."""
    S, cpu = dict(H=1, f=16, dv=16), torch.device("cpu")
    bad = gpu.grad_check(lambda q, k, v, *e: pla(2 * q, k, v, *e, backend="torch"), "pla", 1, 64, S, cpu,
                         torch.float32)
    assert bad["y"] > 1e-2 and bad["dq"] > 1e-2
    if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
        pytest.skip("the previous design needs Triton: CUDA or TRITON_INTERPRET=1")
    pytest.importorskip("triton")
    dev = torch.device("cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda")
    err = gpu.grad_check(gpu.load_prev().pla, "pla", 1, 64, S, dev, torch.float32)
    assert set(err) == {"y", "dq", "dk", "dv", "dk_enc", "dv_enc"} and max(err.values()) < 1e-4, err


def test_bad_arguments_stop_up_front(tmp_path, monkeypatch):
    for bad in ("cuda:7" if not torch.cuda.is_available() else "tpu", "gpu0"):
        with pytest.raises(SystemExit, match="--device: device="):
            bench.main(["--suite", "prefill", "--device", bad, *TINY])
    (tmp_path / "file").write_text("")
    monkeypatch.setitem(bench.SUITES, "prefill", lambda *a: pytest.fail("ran before checking the arguments"))
    monkeypatch.setattr(gpu, "gpu_suite", lambda *a: pytest.fail("ran before checking the arguments"))
    monkeypatch.setattr(oprm, "oprm_suite", lambda *a: pytest.fail("ran before checking the arguments"))
    o = "bench/oprm.py"  # its errors name the script; --threads 0 leaves this process's threads alone
    for main, args, said in ((gpu.main, ["--out", str(tmp_path / "file")], "writes a folder"),
                             (bench.main, ["--out", str(tmp_path)], "a folder; give a .json file"),
                             (bench.main, ["--commit", "nope"], "--commit=nope: give a git commit id"),
                             (gpu.main, ["--commit", "nope"], "--commit=nope: give a git commit id"),
                             (gpu.main, ["--budget_s", "0"], "--budget_s=0: must be > 0"),
                             (oprm.main, ["--context_lens", "64,0"], f"{o} --context_lens=64,0: expected"),
                             (oprm.main, ["--chunk_len", "0"], f"{o} --chunk_len=0: must be >= 1"),
                             (oprm.main, ["--threads", "-1"], f"{o} --threads=-1: must be >= 0"),
                             (oprm.main, ["--models", "jrt-tiny,x"], f"{o} --models=jrt-tiny,x: unknown"),
                             (oprm.main, ["--threads", "0", "--out", str(tmp_path)], f"{o} --out=.*folder")):
        with pytest.raises(SystemExit, match=said) as e:
            main([*args, *TINY])
        assert "\n" not in str(e.value)


def bench_json(tmp_path):
    """A JSON file as bench.py writes it, with one prefill row."""
    path = tmp_path / "bench-prefill.json"
    row = dict(implementation="Based, ours (torch)", sweep="T", B=2, T=128, ms=1.5, status="ok")
    path.write_text(json.dumps(dict(meta=dict(device="CPU"), prefill=[row, dict(row, T=256, ms=2.5)])))
    return path


def test_plot_checks_its_file_and_matplotlib_up_front(tmp_path, monkeypatch):
    """bench/plot.py: a file that is not bench.py's JSON, no matplotlib, or an unknown image format are each
    refused in one line, before anything is drawn."""
    monkeypatch.setattr(plot, "plot", lambda *a: pytest.fail("drew before checking its arguments"))
    (tmp_path / "train.json").write_text(json.dumps(dict(meta={}, train=[])))
    cases = [([str(tmp_path / "none.json")], "none.json: cannot read it as JSON"),
             ([str(tmp_path / "train.json")], "train.json: no prefill or decode rows to draw")]
    if importlib.util.find_spec("matplotlib"):
        cases.append(([str(bench_json(tmp_path)), "--format", "nope"], "--format=nope: unknown image format"))
    for args, said in cases:
        with pytest.raises(SystemExit, match=said) as e:
            plot.main(args)
        assert str(e.value).startswith("bench/plot.py ") and "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(SystemExit, match="bench/plot.py needs matplotlib"):
        plot.main([str(bench_json(tmp_path))])


def test_plot_draws_the_prefill_sweep(tmp_path):
    pytest.importorskip("matplotlib")
    assert plot.main([str(bench_json(tmp_path))]) == [str(tmp_path / "bench-prefill-prefill.png")]
    assert (tmp_path / "bench-prefill-prefill.png").stat().st_size > 0


def test_oprm_cost_table_and_its_folder(tmp_path):
    """python bench/oprm.py: full context vs OPRM's chunks, seconds and MB, one row per model and context;
    the missing folder of --out is made first; exit status 0."""
    out = tmp_path / "new" / "oprm.json"
    run = subprocess.run([sys.executable, "bench/oprm.py", "--models", "based-tiny,transformer-tiny",
                          "--context_lens", "64", "--chunk_len", "32", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    t = tables(run.stdout)[0]
    assert t[0] == ["model", "context", "L", "full s", "OPRM s", "full MB", "OPRM MB"]
    assert [r[:3] for r in t[1:]] == [["based-tiny", "64", "32"], ["transformer-tiny", "64", "32"]]
    assert all(re.fullmatch(NUM, c) for r in t[1:] for c in r[3:]), t
    res = json.loads(out.read_text())
    assert [(r["model"], r["context"], r["L"]) for r in res["oprm"]] == [("based-tiny", 64, 32),
                                                                          ("transformer-tiny", 64, 32)]
    assert all(r["status"] == "ok" and r["full_s"] > 0 and r["oprm_bytes"] >= 0 for r in res["oprm"])
