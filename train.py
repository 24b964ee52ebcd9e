"""
Train JRT-RNN, or its Based and Transformer++ baselines, on a recall task or on text. nanoGPT style:
the defaults below are the whole configuration, the loop is written out.

    python train.py                                  # offline default: a small JRT-RNN learns MQAR on the CPU
    python train.py config/text_bytes.py --data_path=input.txt   # a preset file, then --key=value overrides
    python train.py config/recall_cpu.py             # the recall experiment: a grid, then one markdown table
    torchrun --standalone --nproc_per_node=8 train.py config/xxx.py        # DDP, one process per GPU

Ctrl-C, or SIGTERM (how a cluster preempts a job), finishes the current step, saves a checkpoint and
says how to continue: --resume=True gives the same loss curve as never stopping, with the saved run's
config. A run never replaces a checkpoint unless told to (--overwrite=True). These guards, the checksum
and the loading that never runs code from the file are checkpoint.py's.

Objectives (JRT paper). Synthetic tasks: the context is the prefix M handed to the model, and the loss
is cross-entropy on the answer positions only. Text: next-token loss for models without pla layers;
for JRT-RNN the prefix-LM loss: next-token loss on positions >= M, plus 0.25 x an MLM loss on 15% of
the prefix tokens, replaced by [MASK] and predicted in place.
"""
import ast
import difflib
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from types import SimpleNamespace

import torch
import torch.nn.functional as F

import data
from checkpoint import (ConfigError, Interrupted, StopOnSignal, check_out_dir, load_for_resume,
                        resumed_config, rng_state, save_checkpoint, set_rng_state, state_dict_clean)
from kernels import pla
from lm import resolve_device
from model import PRESETS, Config, Model, masked_ce

# -----------------------------------------------------------------------------------------------------
# Defaults: the offline run `python train.py`, a conv + pla JRT-RNN learning MQAR on the CPU in ~3 minutes.
DEFAULTS = dict(
    # I/O
    out_dir="out",              # ckpt.pt goes here (and ckpt.prev.pt, the one saved before it)
    eval_interval=100,          # iters between evaluations (and checkpoints)
    log_interval=10,            # iters between log lines
    save_checkpoint=True,       # write out_dir/ckpt.pt at every eval and at the end
    resume=False,               # continue out_dir/ckpt.pt with its config: the loss curve of never stopping
    overwrite=False,            # replace the checkpoint in out_dir (else a run into it stops and says so)
    seed=1337,                  # model init and batch sampling; the data itself uses data_seed
    # task
    task="mqar",                # mqar | disjoint_sets | text
    data_seed=0,                # synthetic data: train and test are separate streams of this seed
    train_examples=20000,       # synthetic: generated once (per (|A|,|B|) shape for disjoint_sets)
    test_examples=1000,         # synthetic: per test slice
    vocab_size=32,              # mqar: keys from [1, V/2), values from [V/2, V-1); V >= 128 takes far longer
    seq_len=64,                 # mqar and text: T
    num_pairs=8,                # mqar: k key-value pairs per example
    context_len=0,              # mqar: length of the key-value region; 0 = 2k (no filler between pairs)
    idk_frac=0.0,               # mqar: fraction of queries about an absent key (answer: the IDK token)
    random_filler=False,        # mqar: random tokens instead of 0 between queries (Zoology's default; harder)
    read_twice=False,           # mqar: JRT-Prompt layout `kv, queries, kv, queries`, last block scored
    test_shapes=(),             # mqar: test slices as ((seq_len, num_pairs), ...); () = the train shape
    sd_halves=False,            # disjoint_sets: True = fixed halves of the ids, a shortcut (the answer is
                                #   B's smallest token); False = a fresh random split per example (official)
    data_path="",               # text: a UTF-8 file, tokenised once into a uint16 memmap beside it
    tokenizer="bytes",          # text: gpt2 (the paper's, needs tiktoken's files) | bytes (offline)
    eval_iters=20,              # text: batches per evaluation
    # model: a preset of model.PRESETS plus overrides (0 or () = the preset's value)
    model="jrt-tiny",           # jrt-tiny: conv, pla, conv, pla at d_model 64, no sliding window
    d_model=0,                  # width; the recurrent state grows with it
    n_head=0,                   # heads of every mixer
    feature_dim=0,              # f of pla/la, D = 1 + f + f^2
    layers=(),                  # mixer per layer, e.g. ("conv", "pla", "conv", "pla")
    window=0,                   # swa window
    tie_embeddings=True,        # lm_head = the input embedding (JRT paper); False: the output's own matrix
    init_std=0.12,              # N(0, init_std) init; 0 = the preset's 0.02 (JRT paper; use it for the
                                #   paper's sizes), which leaves a d_model-64 linear-attention model on
                                #   MQAR's 1/k plateau
    backend="auto",             # pla/la kernels: auto (Triton on CUDA) | torch | triton
    # objective (text + pla layers)
    prefix_len=0,               # M; 0 = seq_len // 2 (paper: 1024 of 2048)
    mlm_prob=0.15,              # fraction of prefix tokens replaced by [MASK]
    mlm_weight=0.25,            # loss = NTP + mlm_weight * MLM
    # optimiser: AdamW, warmup then cosine (JRT paper betas, decay and clip)
    batch_size=32,              # sequences per micro-batch per process
    grad_accum=1,               # micro-batches per update, over all processes: global batch = batch_size *
                                #   grad_accum
    max_iters=500,              # updates: test accuracy is ~0.98 after 200, ~0.9999 after 500
    lr=3e-3,                    # peak; MQAR likes large rates at this size (Zoology sweeps 1e-4..1e-2)
    min_lr_ratio=0.1,           # cosine floor as a fraction of lr (paper: 8e-4 -> 8e-5)
    warmup_iters=20,            # linear warmup (paper: 1% of the run)
    lr_decay_iters=0,           # where the cosine ends; 0 = max_iters
    weight_decay=0.1,           # on matrices only, not on biases, norms, embeddings
    beta1=0.9,                  # AdamW betas of the paper
    beta2=0.95,                 #   (0.95: steadier than 0.999 on short runs)
    grad_clip=1.0,              # clip the global grad norm; 0 = off
    # system
    device="auto",              # auto (cuda if available) | cpu | cuda | mps
    dtype="auto",               # auto (bfloat16 autocast on CUDA, else float32) | bfloat16 | float32
    compile=False,              # torch.compile: faster on GPU after a slow start; no gain on CPU
    peak_flops=0.0,             # for MFU; 0 = look up the GPU (H100/H200/A100), no MFU on CPU
    threads=1,                  # torch CPU threads; a model this small gains little from more, and they
                                #   thrash when the CPU is shared (22 min instead of 3); 0 = torch's default
    # the recall experiment: non-empty grid_layers trains `model` with each layout, width and lr, then prints
    # one markdown table; Zoology's layouts: (("conv", "pla"), ("conv", "la"), ("conv", "attn"))
    grid_layers=(),             # layouts to compare: JRT-RNN (pla), Based (la), attention (the ceiling)
    grid_d_model=(),            # widths, i.e. state sizes (Model.state_size())
    grid_lr=(),                 # report the best test accuracy over these learning rates
)

# -----------------------------------------------------------------------------------------------------
# data and the objectives (JRT paper): answer positions; next token; prefix LM + MLM

def load_task(cfg):
    """(train data, [test Examples, ...] or the text data, vocab size)."""
    try:
        if cfg.task == "mqar":
            opts = dict(vocab_size=cfg.vocab_size, context_len=cfg.context_len or None, idk_frac=cfg.idk_frac,
                        read_twice=cfg.read_twice, random_filler=cfg.random_filler, seed=cfg.data_seed)
            train_ex = data.mqar(cfg.train_examples, seq_len=cfg.seq_len, num_pairs=cfg.num_pairs,
                                 split="train", **opts)
            tests = [data.mqar(cfg.test_examples, seq_len=T, num_pairs=k, split="test", **opts)
                     for T, k in (cfg.test_shapes or [(cfg.seq_len, cfg.num_pairs)])]
            return train_ex, tests, train_ex.vocab_size
        if cfg.task == "disjoint_sets":
            train_ex = data.disjoint_sets(cfg.train_examples, halves=cfg.sd_halves, seed=cfg.data_seed,
                                          split="train")
            test = data.disjoint_sets(cfg.test_examples, shapes=data.SD_TEST_SHAPES, halves=cfg.sd_halves,
                                      seed=cfg.data_seed, split="test")
            return train_ex, [test], train_ex.vocab_size
        if not cfg.data_path:
            raise ConfigError("task='text' needs --data_path=<a UTF-8 text file>")
        text = data.text(cfg.data_path, tokenizer=cfg.tokenizer)
        if min(text.n_train, text.n_val) <= cfg.seq_len:
            raise ConfigError(f"seq_len={cfg.seq_len}: {cfg.data_path} holds only {text.n_train} train and "
                              f"{text.n_val} val tokens; each split needs more than seq_len")
        return text, text, text.vocab_size
    except (ValueError, RuntimeError, FileNotFoundError) as e:  # data.py's messages say what to change
        raise ConfigError(str(e)) from e


def prefix_lm_batch(x, y, M, mlm_prob, mask_id, gen):
    """JRT paper: 15% of the prefix tokens become [MASK] and are predicted in place (MLM, no shift);
    next-token targets only at positions >= M. Returns (input, NTP targets, MLM targets), -100 = unscored."""
    B, T = x.shape
    in_prefix = torch.arange(T) < M                                        # (T,)
    masked = (torch.rand(B, T, generator=gen) < mlm_prob) & in_prefix      # (B, T)
    inp = x.masked_fill(masked, mask_id)
    ntp = y.masked_fill(in_prefix, -100)
    mlm = x.masked_fill(~masked, -100)
    return inp, ntp, mlm


def prefix_lm_loss(logits, ntp, mlm, mlm_weight):
    return masked_ce(logits, ntp) + mlm_weight * masked_ce(logits, mlm)


def examples_batch(ex):
    """A batch of data.Examples (MQAR, set disjointness): the context is the prefix M; answers are scored."""
    return dict(x=ex.x, y=ex.y, M=ex.prefix_len, pad=ex.pad, mlm=None)


def get_batches(train_data, cfg, gen, n_micro, rank, world, mask_id=None, split="train"):
    """This rank's `n_micro` micro-batches of one update. Every rank draws the same global batch from the
    same generator and keeps its rows, so an update does not depend on the number of processes (tested).
    mask_id: text with the prefix-LM objective (a model with pla layers); None: plain next-token loss."""
    G = cfg.batch_size * n_micro * world
    if cfg.task == "text":
        x, y = train_data.get_batch(split, G, cfg.seq_len, generator=gen)
        M, mlm = None, None
        if mask_id is not None:
            M = cfg.prefix_len or cfg.seq_len // 2
            x, y, mlm = prefix_lm_batch(x, y, M, cfg.mlm_prob, mask_id, gen)
        full = dict(x=x, y=y, M=M, pad=None, mlm=mlm)
    else:
        full = examples_batch(train_data[torch.randint(len(train_data), (G,), generator=gen)])
    B = cfg.batch_size
    rows = lambda m: slice((rank * n_micro + m) * B, (rank * n_micro + m + 1) * B)
    return [{k: v[rows(m)] if torch.is_tensor(v) else v for k, v in full.items()} for m in range(n_micro)]


def to_device(b, device):
    """Drop the columns that are padding in every row (left padding, set disjointness), move to device."""
    if b["pad"] is not None:
        first = int((~b["pad"]).any(0).nonzero()[0])
        b = {k: v[:, first:] if torch.is_tensor(v) and v.dim() == 2 else v for k, v in b.items()}
        b["M"] = b["M"].clamp(max=b["x"].shape[1])
        if not b["pad"].any():
            b["pad"] = None
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}


def forward_loss(model, b, mlm_weight):
    logits, _ = model(b["x"], prefix_len=b["M"], pad_mask=b["pad"])
    if b["mlm"] is not None:
        return prefix_lm_loss(logits, b["y"], b["mlm"], mlm_weight)
    return masked_ce(logits, b["y"])


# -----------------------------------------------------------------------------------------------------
# the one training loop: train.py's runs and experiments.py's models

def train_loop(model, optimizer, cfg, next_batches, loss_of, *, iter_num=0, device="cpu", ctx=nullcontext(),
               world=1, log=print, on_eval=None, stop_requested=lambda: False, flops_per_token=0, peak=0.0):
    """From iter_num to cfg.max_iters, each update: the schedule's lr; the gradient of loss_of(model, b),
    averaged over the micro-batches b of next_batches(); the clip; the AdamW step. Every cfg.eval_interval
    updates (not at the start) it calls on_eval(iter). After the update during which stop_requested() turns
    true, on any process, it returns early on all of them. Returns (the loss of each update, iter reached)."""
    losses, t0, t_start, it_start = [], time.time(), time.time(), iter_num
    while iter_num < cfg.max_iters:
        if on_eval and iter_num % cfg.eval_interval == 0 and iter_num > it_start:
            on_eval(iter_num)
            t0 = time.time()                                 # the step time below excludes evaluation
        lr = get_lr(iter_num, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = next_batches()
        tokens, update_loss = 0, 0.0
        for m, b in enumerate(batches):
            b = to_device(b, device)
            last = m == len(batches) - 1
            with model.no_sync() if world > 1 and not last else nullcontext():  # all-reduce once per update
                with ctx:
                    loss = loss_of(model, b) / len(batches)  # mean over the micro-batches
                loss.backward()
            update_loss += loss.item()
            tokens += b["x"].numel() * world
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stop = bool(stop_requested())
        if world > 1:  # the loss of the whole update, not this rank's share; and stop on every rank at once
            both = torch.tensor([update_loss, float(stop)], dtype=torch.float64, device=device)
            torch.distributed.all_reduce(both)
            update_loss, stop = both[0].item() / world, both[1].item() > 0
        losses.append(update_loss)
        iter_num += 1
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        if iter_num % cfg.log_interval == 0 or iter_num == cfg.max_iters:
            eta = (t1 - t_start) / (iter_num - it_start) * (cfg.max_iters - iter_num)
            mfu = f" | mfu {flops_per_token * tokens / dt / (peak * world):.1%}" if peak else ""
            log(f"iter {iter_num}/{cfg.max_iters} | loss {update_loss:.4f} | lr {lr:.2e} | "
                f"{dt * 1000:.0f} ms | {tokens / dt:,.0f} tok/s{mfu} | eta {eta / 60:.1f} min")
        if stop:
            break
    return losses, iter_num


# -----------------------------------------------------------------------------------------------------
# one training run

def train(cfg, rank=0, world=1, given=None):
    """One run. `given`: the keys the user set (main passes them); None = those that differ from DEFAULTS."""
    master = rank == 0
    log = print if master else (lambda *a, **k: None)
    given = set(given if given is not None else (k for k, v in vars(cfg).items() if DEFAULTS.get(k, v) != v))
    ckpt_path = os.path.join(cfg.out_dir, "ckpt.pt")
    ckpt = None
    if cfg.resume:
        ckpt = load_for_resume(ckpt_path)
        cfg = resumed_config(cfg, ckpt["config"], given, ckpt_path, log)
        log("config:", ", ".join(f"{k}={v!r}" for k, v in vars(cfg).items()))
    check_task_keys(cfg, given)
    device, dtype = run_device(cfg, world)
    device_type = device.split(":")[0]
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext()
    n_micro = cfg.grad_accum // world                        # this rank's micro-batches per update

    train_data, tests, vocab = load_task(cfg)
    if ckpt is not None:
        log(f"resuming from {ckpt_path} at iter {ckpt['iter']}")
    mcfg = model_config(cfg, vocab, device, ckpt["model_args"] if ckpt is not None else None, ckpt_path)
    is_prefix_lm = cfg.task == "text" and "pla" in mcfg.layers   # JRT-RNN on text: JRT paper's objective
    mask_id = mcfg.mask_token_id if is_prefix_lm else None
    if cfg.save_checkpoint:
        check_out_dir(cfg, ckpt_path)

    torch.manual_seed(cfg.seed)                              # the same init on every rank
    model = Model(mcfg).to(device)
    optimizer = configure_optimizer(model, cfg, device_type)
    gen = torch.Generator().manual_seed(cfg.seed)            # batch sampler: shared by all ranks, saved
    iter_num = 0
    if ckpt is not None:
        model.load_state_dict(state_dict_clean(ckpt["model"]))
        optimizer.load_state_dict(ckpt["optimizer"])
        iter_num = ckpt["iter"]
        set_rng_state(ckpt["rng"], gen, device_type)
        ckpt = None                                          # free the memory
    raw_model = model                                        # what gets saved and evaluated
    if cfg.compile:
        model = torch.compile(model)
    if world > 1:
        device_ids = [device] if device_type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    T = cfg.seq_len if cfg.task != "disjoint_sets" else train_data.x.shape[1]
    objective = ("loss on the answer positions" if cfg.task != "text" else "next-token loss"
                 if not is_prefix_lm else f"prefix-LM loss, M={cfg.prefix_len or cfg.seq_len // 2}")
    state = raw_model.state_size(seq_len=T)["total"]
    log(f"model {cfg.model}: {mcfg.layers}, d_model {mcfg.d_model}, {raw_model.num_params() / 1e6:.3f}M "
        f"params, state {state:,} numbers at T={T}; {objective}; "
        f"{device} {dtype}, {world} process(es), global batch {cfg.batch_size * cfg.grad_accum}")

    def save(it):
        if not (master and cfg.save_checkpoint):
            return
        os.makedirs(cfg.out_dir, exist_ok=True)
        save_checkpoint(dict(model=state_dict_clean(raw_model.state_dict()), optimizer=optimizer.state_dict(),
                             model_args=asdict(mcfg), config=vars(cfg), iter=it,
                             rng=rng_state(gen, device_type)), ckpt_path)
        log(f"saved {ckpt_path} at iter {it}")

    def report(it):
        ev = evaluate(raw_model, tests, cfg, ctx, device, rank, world, mask_id)
        slices = ev.get("slices", {})
        per = " | " + ", ".join(f"{n}: {a:.3f}" for n, a in slices.items()) if len(slices) > 1 else ""
        log(f"eval iter {it}: {'val' if cfg.task == 'text' else 'test'} loss {ev['loss']:.4f}"
            + (f", accuracy {ev['acc']:.4f}{per}" if "acc" in ev else ""))
        return ev

    t_start = time.time()
    with StopOnSignal(master, grace=2.0 if world > 1 else 0.0) as ctrl_c:
        losses, iter_num = train_loop(
            model, optimizer, cfg, lambda: get_batches(train_data, cfg, gen, n_micro, rank, world, mask_id),
            lambda m, b: forward_loss(m, b, cfg.mlm_weight), iter_num=iter_num, device=device, ctx=ctx,
            world=world, log=log, on_eval=lambda it: (report(it), save(it)),
            stop_requested=lambda: ctrl_c.requested, flops_per_token=raw_model.flops_per_token(T),
            peak=peak_flops(cfg, device_type))
        if iter_num < cfg.max_iters:                         # a signal stopped it, after a whole update
            save(iter_num)
            saved = (f"checkpoint saved to {ckpt_path}; continue with --resume=True" if cfg.save_checkpoint
                     else "no checkpoint (save_checkpoint=False)")
            log(f"interrupted at iter {iter_num}; {saved}", flush=True)
            raise Interrupted(ctrl_c.signum)
        ev = report(iter_num)
        save(iter_num)
    log(f"done: {iter_num} iters in {(time.time() - t_start) / 60:.1f} min" +
        (f"; test accuracy {ev['acc']:.4f}" if "acc" in ev else f"; val loss {ev['loss']:.4f}"))
    return dict(losses=losses, eval=ev, state_size=state, params=raw_model.num_params(),
                seconds=time.time() - t_start)


@torch.no_grad()
def evaluate(model, tests, cfg, ctx, device, rank, world, mask_id):
    """Test loss, and for recall tasks the accuracy on answer positions, overall and per slice.
    Each rank scores a share of the same rows, whatever the number of processes; the sums are all-reduced."""
    model.eval()
    names, sums = [], []                      # sums: per slice [correct, answers]; then [loss sum, count]
    loss_sum = torch.zeros(2, device=device)
    if cfg.task == "text":                    # fixed batches: evaluations are comparable over time
        gen = torch.Generator().manual_seed(cfg.seed)
        for i in range(cfg.eval_iters):       # every rank draws every batch (the same stream), scores its own
            b = get_batches(tests, cfg, gen, 1, 0, 1, mask_id, "val")[0]
            if i % world != rank:
                continue
            b = to_device(b, device)
            with ctx:
                loss = forward_loss(model, b, cfg.mlm_weight).float()
                loss_sum += torch.stack([loss, loss_sum.new_ones(())])
    else:
        for ex in tests:
            counts = torch.zeros(len(ex.groups), 2, device=device)
            for i in range(rank * cfg.batch_size, len(ex), world * cfg.batch_size):
                rows = ex[i:i + cfg.batch_size]
                b = to_device(examples_batch(rows), device)
                with ctx:
                    logits, _ = model(b["x"], prefix_len=b["M"], pad_mask=b["pad"])
                ans = b["y"] != -100                                                  # (B, T)
                correct = ((logits.argmax(-1) == b["y"]) & ans).sum(1)                # (B,)
                group = rows.group.to(device)
                counts[:, 0].index_add_(0, group, correct.float())
                counts[:, 1].index_add_(0, group, ans.sum(1).float())
                ce = F.cross_entropy(logits.flatten(0, 1).float(), b["y"].flatten(), reduction="sum")
                loss_sum += torch.stack([ce, ans.sum().float()])
            names += ex.groups
            sums.append(counts)
    if world > 1:
        for t in sums + [loss_sum]:
            torch.distributed.all_reduce(t)
    model.train()
    out = dict(loss=(loss_sum[0] / loss_sum[1].clamp(min=1)).item())
    if sums:
        every = torch.cat(sums)                             # (slices, [correct, answers])
        out["acc"] = (every[:, 0].sum() / every[:, 1].sum()).item()
        out["slices"] = {n: (every[i, 0] / every[i, 1].clamp(min=1)).item() for i, n in enumerate(names)}
    return out


# -----------------------------------------------------------------------------------------------------
# optimiser, schedule, throughput

def configure_optimizer(model, cfg, device_type):
    """AdamW with weight decay on weight matrices only: biases, norms and the input embedding get none."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or name == "wte.weight" else decay).append(p)
    groups = [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device_type == "cuda")


def get_lr(it, cfg):
    """Linear warmup, cosine decay to min_lr_ratio * lr at lr_decay_iters, then flat."""
    decay_iters, min_lr = cfg.lr_decay_iters or cfg.max_iters, cfg.lr * cfg.min_lr_ratio
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / (cfg.warmup_iters + 1)
    if it >= decay_iters:
        return min_lr
    ratio = (it - cfg.warmup_iters) / max(1, decay_iters - cfg.warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - min_lr)


PEAK = [  # (device name contains, dense bf16 FLOP/s, memory bytes/s): datasheets; --peak overrides.
    ("H100 PCIe", 756e12, 2.0e12),  # rounded to 800 TFLOP/s and 3 TB/s the floor is ≈ 1.1 ms;
    ("H100", 989e12, 3.35e12),      # with the SXM datasheet the JRT-RNN floor at 32k/16 is ≈ 1.0 ms
    ("H200", 989e12, 4.8e12),
    ("A100", 312e12, 2.0e12),
]


def peak_flops(cfg, device_type):
    """For the MFU of the log lines: --peak_flops, else the GPU's datasheet peak (PEAK), else 0: no MFU."""
    if cfg.peak_flops or device_type != "cuda":
        return cfg.peak_flops
    name = torch.cuda.get_device_name()
    return next((flops for key, flops, _ in PEAK if key in name), 0.0)


# -----------------------------------------------------------------------------------------------------
# the recall experiment: models x widths, best over learning rates, one table

def run_grid(cfg, rank, world):
    """Train `cfg.model` with each layout of grid_layers at each width of grid_d_model, keep the best test
    accuracy over grid_lr, and print one markdown table (also written to out_dir/recall_table.md)."""
    if cfg.task == "text" or not cfg.grid_d_model:
        raise ConfigError("the grid needs a recall task (mqar or disjoint_sets) and grid_d_model, "
                          "e.g. (32, 64)")
    results = {}                                     # (layout, d_model) -> (best acc, lr, state size)
    for layers in cfg.grid_layers:
        name = ",".join(layers)
        for d in cfg.grid_d_model:
            for lr in cfg.grid_lr or (cfg.lr,):
                out_dir = os.path.join(cfg.out_dir, f"{name}-d{d}-lr{lr:g}")
                run = SimpleNamespace(**{**vars(cfg), "layers": tuple(layers), "d_model": d, "lr": lr,
                                         "grid_layers": (), "out_dir": out_dir})
                if rank == 0:
                    print(f"\n=== {name}, d_model {d}, lr {lr:g}")
                r = train(run, rank, world)
                best = results.get((name, d))
                if best is None or r["eval"]["acc"] > best[0]:
                    results[(name, d)] = (r["eval"]["acc"], lr, r["state_size"])
    task = f"MQAR T={cfg.seq_len}, k={cfg.num_pairs}, V={cfg.vocab_size}" if cfg.task == "mqar" else cfg.task
    lines = [f"{task}: test accuracy, best over lr {list(cfg.grid_lr or (cfg.lr,))}, @ state size in numbers "
             f"(Model.state_size(); for attn its KV cache at the full length: the unbounded ceiling)",
             "", "| layers | " + " | ".join(f"d_model {d}" for d in cfg.grid_d_model) + " |",
             "|---" * (1 + len(cfg.grid_d_model)) + "|"]
    for name in (",".join(layers) for layers in cfg.grid_layers):
        cells = ["{:.3f} @ {:.1f}k (lr {:g})".format(acc, state / 1000, lr)
                 for acc, lr, state in (results[name, d] for d in cfg.grid_d_model)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    if rank == 0:
        print("\n" + table)
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(os.path.join(cfg.out_dir, "recall_table.md"), "w") as f:
            f.write(table + "\n")
    return results, table


# -----------------------------------------------------------------------------------------------------
# the configuration, checked once, here at the edge: each mistake is one line naming the key

CHOICES = dict(task=("mqar", "disjoint_sets", "text"), tokenizer=tuple(data.TEXT_VOCAB), model=tuple(PRESETS),
               backend=("auto", "torch", "triton"), dtype=("auto", "bfloat16", "float32"))
# device: auto | cpu | cuda | cuda:N | mps, checked by lm.resolve_device (is it there?) when the run starts
POSITIVE = ("batch_size", "grad_accum", "max_iters", "seq_len", "eval_interval", "log_interval", "eval_iters",
            "train_examples", "test_examples", "vocab_size", "num_pairs")
UNIT, BETA = ("[0, 1]", lambda v: 0 <= v <= 1), ("[0, 1)", lambda v: 0 <= v < 1)  # AdamW needs beta < 1
RANGES = dict(beta1=BETA, beta2=BETA, mlm_prob=UNIT, idk_frac=UNIT, min_lr_ratio=UNIT)
# Keys that only some tasks read: given for another task they would do nothing, so they are refused.
TASK_ONLY = dict(vocab_size=("mqar",), num_pairs=("mqar",), context_len=("mqar",), idk_frac=("mqar",),
                 random_filler=("mqar",), read_twice=("mqar",), test_shapes=("mqar",),
                 seq_len=("mqar", "text"),
                 train_examples=("mqar", "disjoint_sets"), test_examples=("mqar", "disjoint_sets"),
                 sd_halves=("disjoint_sets",), data_path=("text",), tokenizer=("text",), eval_iters=("text",),
                 prefix_len=("text",), mlm_prob=("text",), mlm_weight=("text",))


def check_value(key, value):
    """The value for `key` with the default's type (an int is fine for a float), or a ConfigError."""
    if key not in DEFAULTS:
        near = difflib.get_close_matches(key, DEFAULTS, n=1)
        raise ConfigError(f"unknown config key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                          + f"; allowed keys: {', '.join(DEFAULTS)}")
    want = type(DEFAULTS[key])
    if want is float and type(value) is int:
        value = float(value)
    if want is tuple and type(value) is list:
        value = tuple(value)
    if type(value) is not want:
        raise ConfigError(f"{key}={value!r}: expected type {want.__name__}, like the default "
                          f"{DEFAULTS[key]!r}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key}={value!r}: expected one of {list(CHOICES[key])}")
    least = 1 if key in POSITIVE else 0
    if want in (int, float) and not value >= least:            # `not >=`: NaN is out of range too
        sign = "positive" if least else "non-negative"
        raise ConfigError(f"{key}={value!r}: expected a {sign} {want.__name__}")
    if key in RANGES and not RANGES[key][1](value):
        raise ConfigError(f"{key}={value!r}: expected a float in {RANGES[key][0]}")
    return value


def get_config(argv):
    """DEFAULTS <- config files (python, executed like nanoGPT's configurator) <- --key=value."""
    return {**DEFAULTS, **read_args(argv)}


def read_args(argv):
    """{key: value} of the keys that config files and --key=value give, each checked."""
    cfg = {}
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):  # a config file: its top-level names are config keys
            if not os.path.isfile(arg):
                raise ConfigError(f"config file {arg!r} not found (arguments are config files or "
                                  f"--key=value)")
            ns = {}
            exec(open(arg).read(), ns)
            for k, v in ns.items():
                if not k.startswith("_") and not isinstance(v, type(os)):
                    cfg[k] = check_value(k, v)
        else:
            key, eq, text = arg[2:].partition("=")
            if not eq:                 # a bare --flag sets a bool key to True
                if key in DEFAULTS and type(DEFAULTS[key]) is not bool:   # `--max_iters 10`
                    given = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else "VALUE"
                    raise ConfigError(f"{arg} needs a value: write --{key}={given} (--key=value, no space)")
                text = "True"
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text           # a plain string, e.g. --out_dir=runs/a
            if key in DEFAULTS and type(DEFAULTS[key]) is str:
                value = text           # strings never need quotes
            if key in DEFAULTS and type(DEFAULTS[key]) is tuple and type(value) is str:
                value = tuple(value.split(","))  # --layers=conv,pla
            cfg[key] = check_value(key, value)
    return cfg


def check_task_keys(cfg, given):
    """A key the task does not read would be silently ignored: refuse it (e.g. --vocab_size on text, whose
    vocabulary is the tokenizer's; --prefix_len on mqar, whose M is each example's key-value region)."""
    for k in given:
        if k in TASK_ONLY and cfg.task not in TASK_ONLY[k]:
            raise ConfigError(f"{k}={getattr(cfg, k)!r} has no effect on task={cfg.task!r}; it is for task "
                              f"{' or '.join(TASK_ONLY[k])}: drop it")


def run_device(cfg, world):
    """(device, dtype) of this process: cuda:LOCAL_RANK under torchrun; bfloat16 autocast on CUDA."""
    try:
        device = str(resolve_device(cfg.device))
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if device == "cuda" and world > 1:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    device_type = device.split(":")[0]
    if device_type == "cpu" and cfg.threads:
        torch.set_num_threads(cfg.threads)
    if world > 1 and cfg.grad_accum % world:
        raise ConfigError(f"grad_accum={cfg.grad_accum} must be a multiple of the {world} processes")
    return device, cfg.dtype if cfg.dtype != "auto" else "bfloat16" if device_type == "cuda" else "float32"


def model_config(cfg, vocab, device, saved_args=None, ckpt_path=None):
    """The model's Config: a resumed run's saved model_args (with this run's kernels), else the preset with
    cfg's overrides; then what only the Config tells: M for the prefix-LM objective, Triton's availability."""
    if saved_args is not None:
        try:
            mcfg = Config(**{**saved_args, "backend": cfg.backend})    # kernels: no part of the model
        except (TypeError, ValueError) as e:
            raise ConfigError(f"resume=True: {ckpt_path}: its model_args do not make a Config: {e}") from None
    else:
        keys = ("d_model", "n_head", "feature_dim", "layers", "window", "init_std")
        overrides = {k: getattr(cfg, k) for k in keys if getattr(cfg, k)}     # 0 or (): the preset's
        try:
            mcfg = Config.from_preset(cfg.model, vocab_size=vocab, backend=cfg.backend, **overrides,
                                      tie_embeddings=cfg.tie_embeddings,
                                      prefix_len=cfg.prefix_len or cfg.seq_len // 2)
        except ValueError as e:
            raise ConfigError(f"model: {e}") from e
    M = cfg.prefix_len or cfg.seq_len // 2
    if cfg.task == "text" and "pla" in mcfg.layers and not 0 < M < cfg.seq_len:
        raise ConfigError(f"prefix_len={cfg.prefix_len}: expected 0 < M < seq_len={cfg.seq_len}")
    if mcfg.backend == "triton" and {"pla", "la"} & set(mcfg.layers):  # now, not deep in the first step
        probe = torch.zeros(1, 1, 1, mcfg.feature_dim, device=device)
        try:
            pla(probe, probe, probe, backend="triton")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return mcfg


def main(argv=None):
    given = read_args(sys.argv[1:] if argv is None else argv)
    cfg = SimpleNamespace(**{**DEFAULTS, **given})
    ddp = int(os.environ.get("RANK", -1)) != -1             # launched by torchrun
    rank, world = 0, 1
    if ddp:
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        torch.distributed.init_process_group(backend)
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if rank == 0 and not cfg.resume:                       # a resumed run prints the config it restores
        print("config:", ", ".join(f"{k}={v!r}" for k, v in vars(cfg).items()))
    try:
        if cfg.grid_layers:
            return run_grid(cfg, rank, world)
        return train(cfg, rank, world, given)
    finally:
        if ddp:
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:             # one signal: the step finished, the checkpoint is saved (said above)
        sys.exit(128 + e.signum)         # the shell's code: 130 after Ctrl-C, 143 after SIGTERM
    except KeyboardInterrupt:            # Ctrl-C twice (or a second SIGTERM), or Ctrl-C before training began
        print("\naborted; checkpoints saved before are intact", file=sys.stderr)
        sys.exit(130)
