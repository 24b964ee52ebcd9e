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

A bad file is one line (FileNotFoundError, else ValueError) naming the path and what is wrong. A file
written by torch.save directly carries no checksum and is read unverified.
"""
import hashlib
import os
import pickle
import random
import re

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
        old = "; train.py checkpoints of older versions held numpy RNG states: retrain to get one that loads" \
            if found.group(1).startswith("numpy") else ""
        raise ValueError(f"{path}: refused: it holds a Python object ({found.group(1)}), and loading that could "
                         f"run code; only tensors and plain Python values are loaded (torch.load with "
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
                torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state() if device_type == "cuda" else None,
                sampler=gen.get_state())


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
