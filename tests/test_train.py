"""train.py: the prefix-LM objective, a short run that learns, exact resume (also after Ctrl-C), DDP = one
process, checkpoints that load no code, clear config errors."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import data
import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A model and task small enough for a few hundred milliseconds per run on two CPU cores. MQAR's keys go
# only with an MQAR run (a key the task does not read is refused).
TINY = ["--model=jrt-tiny", "--d_model=32", "--n_head=2", "--feature_dim=4", "--seq_len=32",
        "--batch_size=16", "--warmup_iters=2", "--eval_interval=1000", "--log_interval=1000", "--device=cpu"]
MQAR = ["--vocab_size=32", "--num_pairs=4", "--train_examples=512", "--test_examples=64"]


def run(out_dir, *args):
    task = MQAR if not any(a.startswith("--task=") or a.startswith("--resume") for a in args) else []
    return train.main(TINY + task + [f"--out_dir={out_dir}", *args])


def text_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("Just read twice: the recurrent model sees the prompt before it answers.\n" * 40)
    return [f"--data_path={path}", "--task=text", "--tokenizer=bytes", "--eval_iters=2"]


# ----------------------------------------------------------------------------- the objective (JRT paper)

def test_prefix_lm_masks_the_prefix_and_weights_mlm():
    B, T, M, V = 64, 32, 12, 50
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, V - 1, (B, T), generator=g)            # V-1 is [MASK]: never a real token here
    y = torch.roll(x, -1, dims=1)                                # next-token targets
    inp, ntp, mlm = train.prefix_lm_batch(x, y, M, 0.15, V - 1, g)
    masked = inp != x
    assert not masked[:, M:].any()                               # [MASK] only inside the prefix
    assert (inp[masked] == V - 1).all()
    assert abs(masked[:, :M].float().mean().item() - 0.15) < 0.03
    assert (ntp[:, :M] == -100).all() and torch.equal(ntp[:, M:], y[:, M:])       # NTP only at positions >= M
    assert torch.equal(mlm[masked], x[masked]) and (mlm[~masked] == -100).all()  # MLM: the token itself, no shift

    logits = torch.randn(B, T, V, generator=g)
    logp = logits.log_softmax(-1)
    ntp_ref = -logp[:, M:].gather(-1, y[:, M:, None]).mean()
    mlm_ref = -logp[masked].gather(-1, x[masked][:, None]).mean()
    torch.testing.assert_close(train.prefix_lm_loss(logits, ntp, mlm, 0.25), ntp_ref + 0.25 * mlm_ref)
    no_mask = torch.full_like(mlm, -100)                         # a batch without masks: MLM adds 0, not NaN
    torch.testing.assert_close(train.prefix_lm_loss(logits, ntp, no_mask, 0.25), ntp_ref)


# ----------------------------------------------------------------------------- training runs

def test_30_step_run_lowers_the_loss(tmp_path):
    r = run(tmp_path, "--max_iters=30", "--lr=3e-3")
    first, last = sum(r["losses"][:5]) / 5, sum(r["losses"][-5:]) / 5
    assert last < first - 0.3, (first, last)
    assert 0.0 <= r["eval"]["acc"] <= 1.0


@pytest.mark.parametrize("task", ["mqar", "text"])
def test_resume_continues_the_same_loss_curve(tmp_path, task):
    extra = text_file(tmp_path) if task == "text" else []        # text: jrt with the prefix-LM objective
    full = run(tmp_path / "a", *extra, "--max_iters=8", "--lr_decay_iters=8")["losses"]
    run(tmp_path / "b", *extra, "--max_iters=4", "--lr_decay_iters=8")
    rest = run(tmp_path / "b", *extra, "--max_iters=8", "--lr_decay_iters=8", "--resume")["losses"]
    assert len(rest) == 4
    torch.testing.assert_close(torch.tensor(rest), torch.tensor(full[4:]), rtol=0, atol=1e-6)


def test_checkpoint_has_clean_keys_config_and_rng(tmp_path, capsys):
    run(tmp_path, "--max_iters=4", "--eval_interval=2")          # saves at iters 2 and 4
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)     # tensors and plain values only
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ck["model"])
    assert ck["iter"] == 4 and ck["config"]["max_iters"] == 4 and ck["model_args"]["d_model"] == 32
    assert set(ck["rng"]) == {"python", "numpy", "torch", "cuda", "sampler"}
    assert torch.load(tmp_path / "ckpt.prev.pt", weights_only=True)["iter"] == 2   # the one before stays beside it
    out = capsys.readouterr().out
    assert f"saved {tmp_path / 'ckpt.pt'} at iter 2" in out and f"saved {tmp_path / 'ckpt.pt'} at iter 4" in out
    assert train.state_dict_clean({"module._orig_mod.wte.weight": 1}) == {"wte.weight": 1}


def test_ctrl_c_saves_then_resume_is_bit_exact(tmp_path):
    """A real SIGINT to `python train.py`: the step finishes, the checkpoint is saved, one line says how
    to continue; resuming from it gives exactly the weights and losses of a run never interrupted."""
    args = ["--max_iters=60", "--lr_decay_iters=60", "--log_interval=1"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "train.py", *TINY, *MQAR, *args, f"--out_dir={tmp_path / 'b'}"],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in p.stdout:                                        # interrupt once training is under way
        seen.append(line)
        if line.startswith("iter 2/60"):
            p.send_signal(signal.SIGINT)
            break
    out, err = p.communicate(timeout=120)
    out = "".join(seen) + out
    ckpt = tmp_path / "b" / "ckpt.pt"
    done = re.search(r"^interrupted at iter (\d+); checkpoint saved to (.+); continue with --resume=True$", out, re.M)
    assert p.returncode == 130 and done, (out[-2000:], err[-2000:])
    n = int(done.group(1))
    assert 2 <= n < 60 and done.group(2) == str(ckpt) and f"saved {ckpt} at iter {n}" in out
    assert "Traceback" not in err and "Ctrl-C again aborts at once" in err
    assert torch.load(ckpt, weights_only=True)["iter"] == n

    rest = run(tmp_path / "b", *args, "--resume=True")
    full = run(tmp_path / "a", *args)
    assert rest["losses"] == full["losses"][n:] and rest["eval"] == full["eval"]   # exactly, not nearly
    resumed, straight = (torch.load(tmp_path / d / "ckpt.pt", weights_only=True)["model"] for d in "ba")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_damaged_checkpoint_says_how_to_resume_from_the_previous_one(tmp_path):
    run(tmp_path, "--max_iters=4", "--eval_interval=2")          # ckpt.pt at iter 4, ckpt.prev.pt at iter 2
    ckpt, prev = tmp_path / "ckpt.pt", tmp_path / "ckpt.prev.pt"
    whole = ckpt.read_bytes()
    ckpt.write_bytes(whole[:len(whole) // 2])                   # e.g. a disk that filled up
    with pytest.raises(train.ConfigError, match=rf"^resume=True: {re.escape(str(ckpt))} is not a readable checkpoint "
                       rf".*; the previous checkpoint is {re.escape(str(prev))}: to continue from it, "
                       rf"`cp {re.escape(str(prev))} {re.escape(str(ckpt))}` and run again with --resume=True$"):
        run(tmp_path, "--max_iters=6", "--resume=True")
    shutil.copy(prev, ckpt)
    assert len(run(tmp_path, "--max_iters=6", "--resume=True")["losses"]) == 4   # from iter 2
    ckpt.unlink()
    with pytest.raises(train.ConfigError, match="no checkpoint at .*; the previous checkpoint is"):
        run(tmp_path, "--max_iters=6", "--resume=True")


class RunsCode:
    """A pickle that creates a directory when it is loaded."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.makedirs, (self.path,)


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path):
    run(tmp_path, "--max_iters=2")
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    ck["config"]["note"] = RunsCode(tmp_path / "it_ran")
    torch.save(ck, tmp_path / "ckpt.pt")
    with pytest.raises(train.ConfigError, match=r"resume=True: .*ckpt.pt: refused: it holds a Python object "
                                                r"\(\S+makedirs\), and loading that could run code"):
        run(tmp_path, "--max_iters=4", "--resume=True")
    assert not (tmp_path / "it_ran").exists()


def test_out_dir_holding_a_checkpoint_needs_resume_or_overwrite(tmp_path):
    from checkpoint import load_checkpoint
    run(tmp_path, "--max_iters=1")
    before = (tmp_path / "ckpt.pt").read_bytes()
    refusal = (rf"^out_dir='{re.escape(str(tmp_path))}' holds a checkpoint "
               rf"\({re.escape(str(tmp_path / 'ckpt.pt'))}\): continue it with --resume=True, "
               r"replace it with --overwrite=True, or choose another --out_dir$")
    for other in ([], ["--model=based-tiny"]):                    # the same model or another: it stays
        with pytest.raises(train.ConfigError, match=refusal):
            run(tmp_path, "--max_iters=2", *other)
    assert (tmp_path / "ckpt.pt").read_bytes() == before
    run(tmp_path, "--max_iters=1", "--model=based-tiny", "--overwrite=True")
    assert "la" in load_checkpoint(tmp_path / "ckpt.pt")[0].config.layers
    p = subprocess.run([sys.executable, "train.py", *TINY, *MQAR, "--max_iters=1", f"--out_dir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "holds a checkpoint" in p.stderr


def test_resume_restores_the_saved_config_and_refuses_a_new_model_task_or_data(tmp_path, capsys):
    """Resuming a text run without its config file continues the text run (it does not train MQAR over
    it); a key that would change the model, the task or the data is refused, naming both values; keys
    of MAY_CHANGE are applied and printed, and the saved config still describes the saved model."""
    text = text_file(tmp_path)
    cfg_file = tmp_path / "text.py"
    cfg_file.write_text("task = 'text'\nd_model = 32\nmodel = 'jrt-tiny'\n")
    train.main([str(cfg_file), *TINY, *text[:1], *text[2:], "--max_iters=4", f"--out_dir={tmp_path / 'o'}"])
    before = (tmp_path / "o" / "ckpt.pt").read_bytes()
    for key, saved, given in [("model", "'jrt-tiny'", "based-tiny"), ("d_model", "32", "64"),
                              ("task", "'text'", "mqar"), ("data_path", repr(text[0][12:]), "other.txt"),
                              ("seq_len", "32", "16"), ("seed", "1337", "1")]:
        given_repr = re.escape(repr(type(eval(saved))(given)))
        refusal = (rf"^resume=True: {key}={given_repr} would change the model, the task or its data of the "
                   rf"run saved in .*ckpt.pt, which has {key}={re.escape(saved)}; drop --{key}")
        with pytest.raises(train.ConfigError, match=refusal):
            train.main([f"--out_dir={tmp_path / 'o'}", "--resume=True", f"--{key}={given}"])
    assert (tmp_path / "o" / "ckpt.pt").read_bytes() == before
    capsys.readouterr()
    r = train.main([f"--out_dir={tmp_path / 'o'}", "--resume=True", "--max_iters=6", "--lr=1e-3",
                    "--d_model=32"])                                # the saved value again: fine
    out = capsys.readouterr().out
    assert len(r["losses"]) == 2 and "val loss" in out and "accuracy" not in out     # text again, not MQAR
    assert "changed: max_iters 4 -> 6, lr 0.003 -> 0.001" in out
    ck = torch.load(tmp_path / "o" / "ckpt.pt", weights_only=True)
    assert ck["iter"] == 6 and ck["config"]["task"] == "text" and ck["config"]["model"] == "jrt-tiny"
    assert ck["config"]["d_model"] == ck["model_args"]["d_model"] == 32 and ck["config"]["max_iters"] == 6
    assert ck["config"]["lr"] == 1e-3


def test_sigterm_saves_like_ctrl_c_and_the_run_resumes(tmp_path):
    """SIGTERM (a cluster's preemption, `timeout`): the step finishes, the checkpoint is saved, exit 143."""
    from checkpoint import load_checkpoint
    args = [*TINY, *MQAR, "--max_iters=100000", "--log_interval=1", f"--out_dir={tmp_path}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    seen = []
    for line in p.stdout:
        seen.append(line)
        if line.startswith("iter 1/"):                           # the first log line
            p.send_signal(signal.SIGTERM)
            break
    out, err = p.communicate(timeout=120)
    out = "".join(seen) + out
    done = re.search(r"^interrupted at iter (\d+); checkpoint saved to .+; continue with --resume=True$", out,
                     re.M)
    assert p.returncode == 143 and done, (out[-2000:], err[-2000:])
    assert "SIGTERM: finishing this step" in err and "Traceback" not in err
    n = int(done.group(1))
    assert load_checkpoint(tmp_path / "ckpt.pt")[1]["max_iters"] == 100000
    r = train.main([f"--out_dir={tmp_path}", "--resume=True", f"--max_iters={n + 2}"])
    assert len(r["losses"]) == 2


@pytest.mark.parametrize("args,message", [
    (["--vocab_size=64"], r"^vocab_size=64 has no effect on task='text'; it is for task mqar: drop it$"),
    (["--num_pairs=4"], r"^num_pairs=4 has no effect on task='text'"),
])
def test_a_key_the_task_does_not_read_is_refused(tmp_path, args, message):
    with pytest.raises(train.ConfigError, match=message):
        run(tmp_path, *text_file(tmp_path), "--max_iters=1", *args)
    with pytest.raises(train.ConfigError, match=r"^prefix_len=8 has no effect on task='mqar'; it is for task text: "):
        run(tmp_path, "--max_iters=1", "--prefix_len=8")
    with pytest.raises(train.ConfigError, match=r"^seq_len=32 has no effect on task='disjoint_sets'"):
        run(tmp_path, "--max_iters=1", "--task=disjoint_sets")       # TINY gives seq_len


def test_untied_head_trains_and_loads_back(tmp_path):
    from checkpoint import load_checkpoint
    run(tmp_path, "--max_iters=2", "--tie_embeddings=False")
    model, cfg = load_checkpoint(tmp_path / "ckpt.pt")
    assert cfg["tie_embeddings"] is False and model.lm_head.weight is not model.wte.weight
    assert not torch.equal(model.lm_head.weight, model.wte.weight)
    with pytest.raises(ValueError, match="not a train.py checkpoint"):
        torch.save({"weights": 1}, tmp_path / "other.pt")
        load_checkpoint(tmp_path / "other.pt")


# Under torchrun, each task trained in turn in one process group; rank 0 writes what train() returned.
DDP_SCRIPT = """
import json, sys
from types import SimpleNamespace
import torch
sys.path.insert(0, sys.argv[1])
import train
torch.distributed.init_process_group("gloo")
rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
out = {}
for name, argv in json.loads(sys.argv[2]).items():
    r = train.train(SimpleNamespace(**train.get_config(argv)), rank, world)
    out[name] = dict(losses=r["losses"], eval=r["eval"])
if rank == 0:
    json.dump(out, open(sys.argv[3], "w"))
torch.distributed.destroy_process_group()
"""


def test_two_gloo_processes_log_evaluate_and_update_as_one(tmp_path):
    # global batch 4 x 16: four micro-batches on one process; two on each of two, the first under no_sync.
    # The logged loss is the whole update's, and the evaluation scores the same rows (3 text batches:
    # two on rank 0, one on rank 1), so everything matches one process.
    runs = {"mqar": TINY + MQAR + ["--max_iters=2", "--grad_accum=4"],
            "text": TINY + text_file(tmp_path) + ["--max_iters=2", "--grad_accum=4", "--eval_iters=3"]}
    runs = {k: v + [f"--out_dir={tmp_path / 'two' / k}"] for k, v in runs.items()}
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), ROOT, json.dumps(runs), str(tmp_path / "two.json")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    two = json.loads((tmp_path / "two.json").read_text())
    for task, argv in runs.items():
        one = train.main(argv[:-1] + [f"--out_dir={tmp_path / 'one' / task}"])
        close = lambda a, b: torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=0, atol=1e-6)
        close(two[task]["losses"], one["losses"])
        close(two[task]["eval"]["loss"], one["eval"]["loss"])
        if task == "mqar":
            assert two[task]["eval"]["acc"] == one["eval"]["acc"]
        w2 = torch.load(tmp_path / "two" / task / "ckpt.pt", weights_only=True)["model"]
        w1 = torch.load(tmp_path / "one" / task / "ckpt.pt", weights_only=True)["model"]
        for k in w1:
            torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-6, msg=k)


def test_recall_grid_prints_one_table(tmp_path, capsys):
    results, table = run(tmp_path, "--max_iters=2", "--grid_layers=(('conv', 'pla'), ('conv', 'attn'))",
                         "--grid_d_model=(16,)", "--grid_lr=(1e-3, 3e-3)")
    assert set(results) == {("conv,pla", 16), ("conv,attn", 16)}
    assert "| conv,pla | " in table and "| conv,attn | " in table
    assert (tmp_path / "recall_table.md").read_text().strip() == table


# ----------------------------------------------------------------------------- configuration errors

@pytest.mark.parametrize("argv,message", [
    (["--lrr=1e-3"], r"unknown config key 'lrr' \(did you mean 'lr'\?\); allowed keys: out_dir, "),
    (["--max_iters=ten"], r"max_iters='ten': expected type int"),
    (["--lr=[1]"], r"lr=\[1\]: expected type float"),
    (["--compile=1"], r"compile=1: expected type bool"),
    (["--task=mnist"], r"task='mnist': expected one of \['mqar', 'disjoint_sets', 'text'\]"),
    (["--model=gpt"], r"model='gpt': expected one of \["),
    (["--batch_size=0"], r"batch_size=0: expected a positive int"),
    (["--lr=-1"], r"lr=-1.0: expected a non-negative float"),
    (["--beta2=1.5"], r"beta2=1.5: expected a float in \[0, 1\)"),
    (["--beta1=1"], r"beta1=1.0: expected a float in \[0, 1\)"),
    (["--mlm_prob=1.2"], r"mlm_prob=1.2: expected a float in \[0, 1\]"),
    (["--vocab_size=0"], r"vocab_size=0: expected a positive int"),
    (["--max_iters", "10"], r"--max_iters needs a value: write --max_iters=10 \(--key=value, no space\)"),
    (["--lr"], r"--lr needs a value: write --lr=VALUE"),
    (["no_such_config.py"], r"config file 'no_such_config.py' not found"),
])
def test_bad_config_values_give_clear_errors(argv, message):
    with pytest.raises(train.ConfigError, match=message):
        train.get_config(argv)


def test_config_file_then_overrides(tmp_path):
    good, bad = tmp_path / "good.py", tmp_path / "bad.py"
    good.write_text("import math\nlr = 1e-3  # a comment\nlayers = ['conv', 'pla']\nmax_iters = 10 * 3\n")
    bad.write_text("learning_rate = 1e-3\n")
    cfg = train.get_config([str(good), "--max_iters=7", "--out_dir=runs/a", "--resume"])
    assert (cfg["lr"], cfg["layers"], cfg["max_iters"], cfg["out_dir"], cfg["resume"]) == \
        (1e-3, ("conv", "pla"), 7, "runs/a", True)
    with pytest.raises(train.ConfigError, match="unknown config key 'learning_rate'"):
        train.get_config([str(bad)])


@pytest.mark.parametrize("argv,message", [
    (["--d_model=30", "--n_head=4"], r"model: d_model \(30\) must be divisible by n_head \(4\)"),
    (["--seq_len=10", "--num_pairs=8"], r"seq_len=10: too short"),
    (["--grad_accum=3"], None),                                  # fine on one process
    (["--task=text"], r"task='text' needs --data_path"),
    (["--resume"], r"no checkpoint at"),
    (["--device=gpu"], r"device='gpu' is not a device; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    (["--backend=triton"], r"backend='triton' cannot run: f = 4, .* Use backend='torch' or 'auto'"),
] + ([(["--device=cuda"], r"device='cuda' but CUDA is not available here; use device='cpu'")]
     if not torch.cuda.is_available() else []) + ([(["--device=mps"], r"device='mps' but MPS is not available here")]
                                                  if not torch.backends.mps.is_available() else []))
def test_bad_model_or_task_values_give_clear_errors(tmp_path, argv, message):
    if message is None:
        run(tmp_path, *argv, "--max_iters=1")
        return
    with pytest.raises(train.ConfigError, match=message):
        run(tmp_path, *argv, "--max_iters=1")


def test_out_dir_naming_a_file_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(train.ConfigError, match=r"out_dir='.*notes.txt' is a file; expected a directory"):
        run(tmp_path / "notes.txt", "--max_iters=1")


def test_task_keys_reach_the_generators():
    cfg = lambda **kw: SimpleNamespace(**{**train.get_config(TINY), "train_examples": 4, "test_examples": 2, **kw})
    sd, _, _ = train.load_task(cfg(task="disjoint_sets"))             # the default: a fresh split per example
    assert torch.equal(sd.x, data.disjoint_sets(4, halves=False, seed=0, split="train").x)
    zero, _, _ = train.load_task(cfg())
    rand, _, _ = train.load_task(cfg(random_filler=True))
    assert torch.equal(zero.y, rand.y) and (zero.x == 0).any() and not torch.equal(zero.x, rand.x)


def test_command_line_errors_are_one_line_without_traceback():
    p = subprocess.run([sys.executable, "train.py", "--lrr=1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.startswith("error: unknown config key 'lrr'") and "Traceback" not in p.stderr
    if torch.cuda.is_available():
        return
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}   # a plain CPU, no interpreter
    p = subprocess.run([sys.executable, "train.py", *TINY, *MQAR, "--feature_dim=16", "--backend=triton",
                        "--max_iters=1", "--save_checkpoint=False"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == ("error: backend='triton' cannot run: the tensors are on cpu; the kernels need CUDA "
                                "(or TRITON_INTERPRET=1 to run on CPU). Use backend='torch' or 'auto'.")
