"""bench.py at its tiny sizes: every table has its rows and columns, the numbers parse, each row passed its
check against the reference, and a wrong (or failing) implementation is reported as such, not timed.
Times themselves are not checked."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import bench
from kernels import pla, pla_flop
from model import Config, Model

TINY = ["--tiny", "--backend", "torch"]  # the same sizes and backend on a CPU and on a GPU
NUM = r"\d+(\.\d+)?(e[-+]?\d+)?"


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
    out = tmp_path / "prefill.json"
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
    assert status == {"right": {"ok"}, "s twice too big": {"wrong"}, "encoder ignored": {"wrong"}, "NaN": {"wrong"},
                      "oom": {"OOM"}, "broken": {"error"}}
    assert all(r["ms"] is None for r in recs if r["implementation"] != "right")
    t = tables(bench.tables("prefill", recs, S))[0]
    cells = {r[0]: r[1:] for r in t[1:]}
    assert cells["s twice too big"][:-1] == ["wrong"] * len(S["T"]) and cells["s twice too big"][-1].startswith("wrong")
    assert cells["oom"][:-1] == ["OOM"] * len(S["T"]) and cells["broken"][0] == "error"
    assert "broken: error: RuntimeError: kernel launch failed" in bench.tables("prefill", recs, S)


def test_flop_model_is_the_jrt_papers_table_5_shape():
    assert pla_flop(1, 0) == 81715 and pla_flop(0, 1) == 35473  # ≈ 81.7k·T + 35.5k·M per head
    flop, nbytes = (x * 16 * 16 for x in bench.work("pla", 32768, bench.SIZES["gpu"], 2))  # 32k, B = H = 16
    assert abs(flop / 0.83e12 - 1) < 0.01 and abs(nbytes / 3.4e9 - 1) < 0.02  # Table 5: 0.83 TFLOP, 3.4 GB
    assert abs(bench.work("attn", 32768, bench.SIZES["gpu"], 2)[0] * 256 / 35e12 - 1) < 0.01  # FA2: 35 TFLOP


def test_decode_table_and_cache_constant_vs_growing(tmp_path, capsys):
    out = tmp_path / "decode.json"
    bench.main(["--suite", "decode", "--out", str(out), *TINY])
    S = bench.SIZES["tiny"]
    t = tables(capsys.readouterr().out)[0]
    assert t[0] == ["model", "T", "cache MB/seq", *(f"B = {b}" for b in S["decode_B"])]
    assert [r[:2] for r in t[1:]] == [[m, str(T)] for m in S["decode"] for T in S["decode_T"]]
    assert all(re.fullmatch(NUM, c) for r in t[1:] for c in r[2:]), t
    recs = json.loads(out.read_text())["decode"]
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in recs)
    for name in S["decode"]:  # the bytes are the model's state numbers at 4 bytes (fp32), plus attn's bool masks
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


def test_gpu_script_runs_its_tiny_form(tmp_path):
    """bash bench/gpu.sh is the one command for a GPU; here its tiny form (the CPU, or --tiny) must run
    every part and write its JSON and markdown: kernel checks, the Table-5 row, decode, train."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert subprocess.run(["bash", "-n", "bench/gpu.sh"], cwd=root).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "0"}  # one thread: the models are tiny
    out = subprocess.run(["bash", "bench/gpu.sh", "--tiny", "--out", str(tmp_path / "g.json")], cwd=root, env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    ts, md = tables(out.stdout), (tmp_path / "g.md").read_text()
    assert len(ts) == 5 and all(tables(md)[i] == t for i, t in enumerate(ts))  # checks, prefill ×2, decode, train
    assert [r[-1] for r in ts[0][1:]] == ["ok", "ok"] and {r[0].split(", ")[-1] for r in ts[0][1:]} == {"64", "112"}
    names = [r[0] for r in ts[1][1:]]
    assert names[0] == bench.FA2 and any(n.startswith("JRT-RNN") and n.endswith("forward + backward") for n in names)
    assert all(r[-1].startswith("ok") for r in ts[1][1:]) and ts[1][0][1] == f"T = {bench.SIZES['tiny']['T'][-1]}"
    res = json.loads((tmp_path / "g.json").read_text())["gpu"]
    assert set(res) == {"checks", "prefill", "decode", "train"}
    assert all(r["status"] == "ok" for part in res.values() for r in part)


def test_bad_device_and_plot_without_matplotlib_stop_up_front(monkeypatch, capsys):
    for bad in ("cuda:7" if not torch.cuda.is_available() else "tpu", "gpu0"):
        with pytest.raises(SystemExit, match="--device: device="):
            bench.main(["--suite", "prefill", "--device", bad, *TINY])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    monkeypatch.setattr(bench, "prefill_suite", lambda *a: pytest.fail("ran before checking --plot"))
    with pytest.raises(SystemExit, match="needs matplotlib"):
        bench.main(["--suite", "prefill", "--plot", *TINY])
