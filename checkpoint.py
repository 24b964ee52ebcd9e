"""
Checkpoints: written so that a crash or Ctrl-C never leaves a broken one, read so that loading one never
runs code from the file, and holding every random stream of a run, so that a resumed run is the same run.

    save_checkpoint(ck, path)        temporary file, fsync, rename; the one it replaces stays as .prev.pt;
                                     adds `sha256`, a checksum of every tensor's bytes and every other value
    read_checkpoint(path)            torch.load(weights_only=True): tensors and plain Python values only;
                                     a file whose contents do not match its `sha256` is refused
    load_checkpoint(path)            a train.py checkpoint -> (Model in eval mode, its training config)
    rng_state / set_rng_state        Python, NumPy, torch (and CUDA) generators and the batch sampler, as
                                     tensors and plain values, so that weights_only=True can load them

and the guards of a train.py run around them:

    StopOnSignal                     Ctrl-C or SIGTERM finishes the step, so that the run can save first
    load_for_resume, resumed_config  --resume=True: the checkpoint, and its run's config (only the keys of
                                     MAY_CHANGE may take new values)
    check_out_dir                    a run never replaces a checkpoint unless told to

A bad file is one line (FileNotFoundError, else ValueError) naming the path and what is wrong. A file
written by torch.save directly carries no checksum and is read unverified.
"""
import hashlib
import os
import pickle
import random
import re
import signal
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import torch

from lm import resolve_device
from model import Config, Model


def read_checkpoint(path, device="cpu", mmap=False):
    """torch.load(weights_only=True): tensors and plain Python values only, so that loading a checkpoint
    never runs code from the file (a pickle can call any function). Every failure is one line naming the
    path: FileNotFoundError when it is missing, else ValueError."""
    path = os.fspath(path)
    device = resolve_device(device)         # say "no CUDA here" in one line, not blame the file
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    if os.path.isdir(path):
        raise ValueError(f"checkpoint {path} is a directory; expected a file written by train.py")
    try:
        ck = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))     # a reference to a function or class: what pickles run
        if not found:
            why = re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
            raise ValueError(f"{path} is not a readable checkpoint (not written by torch.save): "
                             f"{why.group(1) if why else _first_line(e)}") from None
        old = ("; train.py checkpoints of older versions held numpy RNG states: retrain to get one that "
               "loads") if found.group(1).startswith("numpy") else ""
        raise ValueError(f"{path}: refused: it holds a Python object ({found.group(1)}), and loading that "
                         f"could run code; only tensors and plain Python values are loaded (torch.load with "
                         f"weights_only=True){old}") from None
    except Exception as e:  # truncated, empty, or not written by torch.save
        raise ValueError(f"{path} is not a readable checkpoint (truncated, or not written by torch.save): "
                         f"{type(e).__name__}: {_first_line(e)}") from None
    if isinstance(ck, dict) and "sha256" in ck and ck["sha256"] != checksum(ck):
        raise ValueError(f"{path} is damaged: its contents do not match the sha256 checksum saved with them "
                         f"(a disk or copy error)")
    return ck


def checksum(ck):
    """sha256 over everything in a checkpoint but its `sha256` key: each key and plain value by repr, each
    tensor by dtype, shape and raw bytes, walked in the dicts' own (saved and loaded) order. A flipped
    byte anywhere in the weights, the optimizer state or the config changes it."""
    h = hashlib.sha256()

    def walk(v):
        if torch.is_tensor(v):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(f"tensor {t.dtype} {tuple(v.shape)};".encode())
            h.update(t.view(torch.uint8).numpy())          # the raw bytes, whatever the dtype (bf16 too)
        elif isinstance(v, dict):
            items = [(k, x) for k, x in v.items() if not (v is ck and k == "sha256")]
            h.update(f"dict {len(items)};".encode())
            for k, x in items:
                h.update(f"{k!r}:".encode())
                walk(x)
        elif isinstance(v, (list, tuple)):
            h.update(f"{type(v).__name__} {len(v)};".encode())
            for x in v:
                walk(x)
        else:                                               # int, float, str, bool, None: repr is exact
            h.update(f"{v!r};".encode())
    walk(ck)
    return h.hexdigest()


def _first_line(e):
    return (str(e).strip().splitlines() or [""])[0][:200]


def load_checkpoint(path, device="cpu"):
    """A train.py checkpoint (keys `model`, `model_args`, `config`) -> (Model in eval mode, its training
    config as a dict). Loads no code (read_checkpoint); a bad file gives a one-line ValueError (or
    FileNotFoundError) that names the path and what is wrong."""
    device = resolve_device(device)          # no CUDA here is no fault of the file: said before reading it
    try:
        ck = read_checkpoint(path, device)
    except ValueError as e:
        prev = previous_path(os.fspath(path))
        if not os.path.exists(prev):
            raise
        raise ValueError(f"{e}; the checkpoint saved before it is {prev}: load that one instead") from None
    if not isinstance(ck, dict) or "model_args" not in ck or not isinstance(ck.get("model"), dict):
        raise ValueError(f"{path} is not a train.py checkpoint (it needs the keys 'model' and 'model_args')")
    try:
        model = Model(Config(**ck["model_args"]))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: its model_args do not make a Config: {e}") from None
    want, got = model.state_dict(), ck["model"]
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = [k for k in want if k in got and getattr(got[k], "shape", None) != want[k].shape]
    if missing or extra or wrong:
        raise ValueError(f"{path}: its weights do not fit its model_args: missing {missing[:3]}, "
                         f"unexpected {extra[:3]}, wrong shape {wrong[:3]}")
    model.load_state_dict(got)
    config = ck.get("config", {})
    return model.to(device).eval(), config if isinstance(config, dict) else {}


def rng_state(gen, device_type):
    """Every random stream of a run, as tensors and plain values: loadable with weights_only=True."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(python=(version, torch.tensor(mt, dtype=torch.int64), gauss),
                numpy=(name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
                torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state() if device_type == "cuda" else None, sampler=gen.get_state())


def set_rng_state(rng, gen, device_type):
    version, mt, gauss = rng["python"]
    random.setstate((version, tuple(mt.tolist()), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and device_type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"])
    gen.set_state(rng["sampler"])


def save_checkpoint(ck, path):
    """Write to a temporary file, flush it to disk, then rename: a crash or Ctrl-C at any moment leaves
    `path` either the old checkpoint or the new one, never half of one. The old one becomes .prev.pt."""
    tmp, prev = path + ".tmp", previous_path(path)
    ck = {**ck, "sha256": checksum(ck)}
    with open(tmp, "wb") as f:
        torch.save(ck, f)
        f.flush()
        os.fsync(f.fileno())
    if os.path.exists(path):
        os.replace(path, prev)
    os.replace(tmp, path)


def previous_path(path):
    return path[:-3] + ".prev.pt" if path.endswith(".pt") else path + ".prev"


def state_dict_clean(sd):
    """Strip the wrappers' prefixes: `_orig_mod.` (torch.compile) and `module.` (DDP)."""
    strip = lambda k: k.replace("_orig_mod.", "").removeprefix("module.")
    return {strip(k): v for k, v in sd.items()}


# -----------------------------------------------------------------------------------------------------
# the guards of a train.py run: Ctrl-C and SIGTERM, resume, overwrite

class ConfigError(ValueError):
    """A user's configuration mistake: printed as one line, without a traceback."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: the run stopped after a whole step, its checkpoint saved (already said)."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


class StopOnSignal:
    """While active, the first SIGINT (Ctrl-C) or SIGTERM (a cluster's preemption, `timeout`, `kill`) only
    raises a flag, so that the loop can finish its step and save; a second one aborts at once
    (KeyboardInterrupt). Signals can be caught in the main thread only. Under torchrun, a signal reaches
    every process twice (from the terminal or the scheduler, then forwarded by torchrun): there a repeat
    within `grace` seconds counts as the same one."""
    SIGNALS = {signal.SIGINT: b"Ctrl-C", signal.SIGTERM: b"SIGTERM"}

    def __init__(self, master, grace=0.0):
        self.master, self.grace, self.requested, self.signum, self.previous = master, grace, False, None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handler) for s in self.SIGNALS}
        return self

    def handler(self, signum, frame):
        if self.requested:
            if time.time() - self.requested < self.grace:
                return
            raise KeyboardInterrupt
        self.requested, self.signum = time.time(), signum
        if self.master:  # os.write: a print here could interrupt a print of the loop (a reentrant call)
            name = self.SIGNALS[signum]
            os.write(sys.stderr.fileno(), b"\n" + name + b": finishing this step, then saving a checkpoint ("
                     + name + b" again aborts at once, without saving)\n")

    def __exit__(self, *exc):
        for s, previous in self.previous.items():
            signal.signal(s, previous)


TRAINING_KEYS = ("model", "optimizer", "model_args", "config", "iter", "rng")


def load_for_resume(path):
    """The checkpoint to continue from, or a ConfigError that says what is wrong and, when the previous
    checkpoint is there, how to continue from that one."""
    prev = previous_path(path)
    hint = (f"; the previous checkpoint is {prev}: to continue from it, `cp {prev} {path}` and run again "
            f"with --resume=True") if os.path.exists(prev) else ""
    if not os.path.exists(path):
        raise ConfigError(f"resume=True but there is no checkpoint at {path}{hint}")
    try:
        ck = read_checkpoint(path)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"resume=True: {e}{hint}") from None
    if not isinstance(ck, dict) or not all(k in ck for k in TRAINING_KEYS):
        have = sorted(ck) if isinstance(ck, dict) else type(ck).__name__
        raise ConfigError(f"resume=True: {path} is not a train.py checkpoint with its training state "
                          f"(it needs the keys {list(TRAINING_KEYS)}; it has {have}){hint}")
    return ck


# --resume=True restores the saved run's config. These keys may take new values there (each change is
# printed): how long and how fast to go on, how to log and save, on what hardware. None of them changes
# the model, the task or its data, so the saved config still describes the saved model. A new value
# for any other key is refused.
MAY_CHANGE = ("max_iters", "lr", "min_lr_ratio", "warmup_iters", "lr_decay_iters",    # the optimiser,
              "weight_decay", "beta1", "beta2", "grad_clip", "batch_size", "grad_accum",  # from here on
              "out_dir", "eval_interval", "log_interval", "eval_iters", "save_checkpoint",  # I/O
              "resume", "overwrite", "device", "dtype", "compile", "backend",             # hardware
              "peak_flops", "threads")


def resumed_config(cfg, saved, given, path, log=print):
    """The saved run's config, with the new values this run gives for keys of MAY_CHANGE (printed). A
    given key that would change the model, the task or the data is refused, in one line."""
    out, changed = dict(vars(cfg)), []
    for k, old in saved.items():
        if k not in out or k in ("out_dir", "resume"):   # an older version's key; where we found it
            continue
        if k not in given or out[k] == old:
            out[k] = old
        elif k in MAY_CHANGE:
            changed.append(f"{k} {old!r} -> {out[k]!r}")
        else:
            raise ConfigError(f"resume=True: {k}={out[k]!r} would change the model, the task or its data of "
                              f"the run saved in {path}, which has {k}={old!r}; drop --{k} to continue that "
                              f"run, or start a new one in another --out_dir")
    log(f"config restored from {path}; changed: {', '.join(changed) or 'nothing'}")
    return SimpleNamespace(**out)


def check_out_dir(cfg, path):
    """Stop before training if out_dir cannot hold a checkpoint, or holds one this run would replace
    without being told to."""
    if os.path.exists(cfg.out_dir) and not os.path.isdir(cfg.out_dir):
        raise ConfigError(f"out_dir={cfg.out_dir!r} is a file; expected a directory (created if missing)")
    if cfg.resume or cfg.overwrite or not os.path.exists(path):
        return
    raise ConfigError(f"out_dir={cfg.out_dir!r} holds a checkpoint ({path}): continue it with --resume=True, "
                      f"replace it with --overwrite=True, or choose another --out_dir")
