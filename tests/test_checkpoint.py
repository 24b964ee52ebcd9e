"""checkpoint.py: every checkpoint carries a sha256 of its contents; a flipped byte in a weight or in the
optimizer state is refused in one line that says how to continue from ckpt.prev.pt; a device that is not
there is named as such, not blamed on the file."""
import re
import zipfile

import pytest
import torch

import train
from checkpoint import checksum, load_checkpoint, read_checkpoint

TINY = ["--model=jrt-tiny", "--d_model=16", "--n_head=2", "--feature_dim=4", "--seq_len=16", "--num_pairs=2",
        "--train_examples=64", "--test_examples=16", "--batch_size=8", "--warmup_iters=1", "--device=cpu"]


def flip_byte_of(path, t):
    """Flip one byte of tensor t's data where torch.save put it: a `data/N` record of the zip archive,
    stored uncompressed, so the zip stays valid and only that tensor's value changes."""
    blob = bytearray(path.read_bytes())
    raw = t.contiguous().view(torch.uint8).numpy().tobytes()
    with zipfile.ZipFile(path) as z:
        records = [i for i in z.infolist() if re.search(r"/data/\d+$", i.filename)]
        assert records and all(i.compress_type == zipfile.ZIP_STORED for i in records)
    at = blob.find(raw)
    assert at > 0 and blob.find(raw, at + 1) == -1                # found once: the byte is that tensor's
    blob[at + len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("part", ["weight", "optimizer"])
def test_a_flipped_byte_is_refused_with_the_way_back(tmp_path, part):
    train.main(TINY + ["--max_iters=4", "--eval_interval=2", f"--out_dir={tmp_path}"])   # ckpt.pt, .prev.pt
    ckpt, prev = tmp_path / "ckpt.pt", tmp_path / "ckpt.prev.pt"
    ck = torch.load(ckpt, weights_only=True)
    assert ck["sha256"] == checksum(ck) and len(ck["sha256"]) == 64
    t = ck["model"]["blocks.1.mixer.q.weight"] if part == "weight" else ck["optimizer"]["state"][3]["exp_avg"]
    flip_byte_of(ckpt, t)
    damaged = torch.load(ckpt, weights_only=True)                   # torch itself reads it without a word
    assert damaged["sha256"] == ck["sha256"] and checksum(damaged) != ck["sha256"]

    is_damaged = (rf"{re.escape(str(ckpt))} is damaged: its contents do not match the sha256 checksum "
                  r"saved with them")
    with pytest.raises(ValueError, match=rf"^{is_damaged} \(a disk or copy error\)$"):
        read_checkpoint(ckpt)
    with pytest.raises(ValueError, match=rf"^{is_damaged} .*; the checkpoint saved before it is "
                                         rf"{re.escape(str(prev))}: load that one instead$"):
        load_checkpoint(ckpt)
    with pytest.raises(train.ConfigError, match=rf"^resume=True: {is_damaged} .*; the previous checkpoint is "
                                                rf"{re.escape(str(prev))}: to continue from it, `cp "):
        train.main([f"--out_dir={tmp_path}", "--resume=True", "--max_iters=6"])
    prev.replace(ckpt)                                                # as the message says: from iter 2
    assert len(train.main([f"--out_dir={tmp_path}", "--resume=True", "--max_iters=6"])["losses"]) == 4


def test_the_checksum_sees_every_part_and_a_file_without_one_loads(tmp_path):
    ck = dict(model={"w": torch.ones(2, 3, dtype=torch.bfloat16)}, step=torch.tensor(3.0),
              config=dict(lr=1e-3), rng=(1, [2, 3]))
    base = checksum(ck)
    assert checksum({**ck, "sha256": "anything"}) == base          # its own key is left out
    for changed in (dict(model={"w": torch.ones(3, 2, dtype=torch.bfloat16)}), dict(step=torch.tensor(3.5)),
                    dict(config=dict(lr=2e-3)), dict(rng=(1, [2, 4])), dict(rng=[1, [2, 3]])):
        assert checksum({**ck, **changed}) != base, changed
    torch.save(ck, tmp_path / "plain.pt")                          # torch.save directly: no checksum
    assert read_checkpoint(tmp_path / "plain.pt")["config"] == dict(lr=1e-3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_does_not_blame_the_file(tmp_path):
    train.main(TINY + ["--max_iters=1", f"--out_dir={tmp_path}"])
    for call in (load_checkpoint, read_checkpoint):
        with pytest.raises(ValueError, match=r"^device='cuda' but CUDA is not available here; use "):
            call(tmp_path / "ckpt.pt", device="cuda")
    assert load_checkpoint(tmp_path / "ckpt.pt", device="cpu")[1]["max_iters"] == 1
