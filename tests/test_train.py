"""train.py: the prefix-LM objective, a short run that learns, exact resume, DDP = one process, clear config errors."""
import os
import subprocess
import sys

import pytest
import torch

import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A model and task small enough for a few hundred milliseconds per run on two CPU cores.
TINY = ["--model=jrt-tiny", "--d_model=32", "--n_head=2", "--feature_dim=4", "--vocab_size=32", "--seq_len=32",
        "--num_pairs=4", "--train_examples=512", "--test_examples=64", "--batch_size=16", "--warmup_iters=2",
        "--eval_interval=1000", "--log_interval=1000", "--device=cpu"]


def run(out_dir, *args):
    return train.main(TINY + [f"--out_dir={out_dir}", *args])


def text_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("Just read twice: the recurrent model sees the prompt before it answers.\n" * 40)
    return [f"--data_path={path}", "--task=text", "--tokenizer=bytes", "--eval_iters=2"]


# ----------------------------------------------------------------------------- the objective (SPEC §4)

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


def test_checkpoint_has_clean_keys_config_and_rng(tmp_path):
    run(tmp_path, "--max_iters=2")
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ck["model"])
    assert ck["iter"] == 2 and ck["config"]["max_iters"] == 2 and ck["model_args"]["d_model"] == 32
    assert set(ck["rng"]) == {"python", "numpy", "torch", "cuda", "sampler"}
    assert train.state_dict_clean({"module._orig_mod.wte.weight": 1}) == {"wte.weight": 1}


def test_untied_head_trains_and_loads_back(tmp_path):
    from model import load_checkpoint
    run(tmp_path, "--max_iters=2", "--tie_embeddings=False")
    model, cfg = load_checkpoint(tmp_path / "ckpt.pt")
    assert cfg["tie_embeddings"] is False and model.lm_head.weight is not model.wte.weight
    assert not torch.equal(model.lm_head.weight, model.wte.weight)
    with pytest.raises(ValueError, match="not a train.py checkpoint"):
        torch.save({"weights": 1}, tmp_path / "other.pt")
        load_checkpoint(tmp_path / "other.pt")


def test_two_gloo_processes_make_the_same_update_as_one(tmp_path):
    # global batch 4 x 16: four micro-batches on one process; two on each of two, the first under no_sync
    args = TINY + ["--max_iters=2", "--grad_accum=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "train.py", *args, f"--out_dir={tmp_path / 'two'}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    train.main(args + [f"--out_dir={tmp_path / 'one'}"])
    two = torch.load(tmp_path / "two" / "ckpt.pt", weights_only=False)["model"]
    one = torch.load(tmp_path / "one" / "ckpt.pt", weights_only=False)["model"]
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-6, msg=k)


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
])
def test_bad_model_or_task_values_give_clear_errors(tmp_path, argv, message):
    if message is None:
        run(tmp_path, *argv, "--max_iters=1")
        return
    with pytest.raises(train.ConfigError, match=message):
        run(tmp_path, *argv, "--max_iters=1")


def test_command_line_error_is_one_line_without_traceback():
    p = subprocess.run([sys.executable, "train.py", "--lrr=1"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.startswith("error: unknown config key 'lrr'") and "Traceback" not in p.stderr
