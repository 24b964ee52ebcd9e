"""
The data: two synthetic recall tasks generated in memory, and any UTF-8 text file tokenised with tiktoken.

Both synthetic tasks return the same `Examples`, so train.py treats them alike:
    x          (N, T) int64  input tokens
    y          (N, T) int64  the target at each position, -100 where nothing is scored
    prefix_len (N,)   int64  M: positions < M are the context, read non-causally by JRT-RNN's encoder
                             (JRT paper)
    pad        (N, T) bool   True at left padding (set disjointness mixtures only); never a key, never scored
    group      (N,)   int64  index into `groups`, the slice an example belongs to (accuracy per slice)

M is the context, i.e. everything before the scored part. MQAR: the key-value region (read_twice:
`kv, queries, kv`, everything before the scored query block). Set disjointness: the whole input, cue
included; its answer sits at the last position, inside the prefix, as the JRT paper's non-causal
reading wants. Train and test never share a random stream: every generator takes `split`, and draws
from np.random.default_rng((seed, split index)), so `split="test"` with the same seed is fresh data.
"""
import hashlib
import os
from dataclasses import dataclass

import numpy as np
import tiktoken
import torch

SPLITS = ("train", "test")


@dataclass
class Examples:
    x: torch.Tensor           # (N, T) int64
    y: torch.Tensor           # (N, T) int64, -100 = not scored
    prefix_len: torch.Tensor  # (N,) int64, M
    pad: torch.Tensor         # (N, T) bool, True at left padding
    group: torch.Tensor       # (N,) int64, index into groups
    groups: list              # names of the slices, e.g. "T=256 k=16"
    vocab_size: int           # the model's vocabulary must be at least this

    def __len__(self):
        return len(self.x)

    def __getitem__(self, idx):  # a batch: ex[torch.randint(len(ex), (B,))]
        return Examples(self.x[idx], self.y[idx], self.prefix_len[idx], self.pad[idx], self.group[idx],
                        self.groups, self.vocab_size)


def _check(ok, name, value, allowed):
    if not ok:
        raise ValueError(f"{name}={value!r}: {allowed}")


def _rng(seed, split):
    _check(split in SPLITS, "split", split, f"expected one of {SPLITS}")
    return np.random.default_rng((seed, SPLITS.index(split)))  # one independent stream per (seed, split)


def _distinct(rng, low, high, n, k):
    """(n, k) integers from [low, high), distinct within each row, uniform over all such rows."""
    if 4 * k > high - low:                       # dense: k of a random permutation of the range
        return low + np.argsort(rng.random((n, high - low), dtype=np.float32), axis=1)[:, :k]
    out = rng.integers(low, high, size=(n, k))
    todo = np.arange(n)                                               # rows that may hold a repeat
    while len(todo):
        sub = out[todo]
        order = np.argsort(sub, axis=1, kind="stable")
        s = np.take_along_axis(sub, order, axis=1)
        repeat = np.zeros(sub.shape, dtype=bool)
        np.put_along_axis(repeat, order[:, 1:], s[:, 1:] == s[:, :-1], axis=1)  # later copies of a value
        # Redrawing only the repeats treats all values alike, so the result is uniform (by symmetry).
        sub[repeat] = rng.integers(low, high, size=int(repeat.sum()))
        out[todo] = sub
        todo = todo[repeat.any(axis=1)]
    return out


def _examples(x, y, prefix_len, pad, group, groups, vocab_size):
    t = torch.from_numpy
    return Examples(t(x), t(y), t(prefix_len), t(pad), t(group), groups, vocab_size)


# ---------------------------------------------------------------------------------------------------
# MQAR: multi-query associative recall (Zoology, Arora et al. 2023)

def idk_token(vocab_size):
    """The answer to a query whose key is not in the context: the last id, never a key or a value."""
    return vocab_size - 1


def mqar(n, *, vocab_size=8192, seq_len=256, num_pairs=16, num_queries=None, context_len=None,
         power_a=0.01, idk_frac=0.0, read_twice=False, seed=0, split="train", random_filler=False):
    """n MQAR examples. Layout of one pass (Zoology's, filler 0):

        k1 v1 k2 v2 ... (context_len tokens) | 0 .. k3 0 .. k1 0 .. (queries at even offsets)
        y is the value at each queried key's position (next-token style: the model reads the key and
        must output its value; the value itself is never in the input after the context), -100 elsewhere.

    vocab_size   8192  Zoology's default; keys come from [1, V/2), values from [V/2, V-1), V-1 is IDK
    seq_len      256   T, the whole row (with read_twice, each of the two passes is T/2)
    num_pairs    16    k key-value pairs, keys distinct and values distinct within an example
    num_queries  k     how many pairs are asked about, each once (fewer than k: a random subset)
    context_len  2k    length of the key-value region; longer spreads the pairs over random even
                       slots with filler between, so the context can grow without adding pairs
    power_a      0.01  query gaps drawn without replacement with weight i^(a-1): queries bunch early
    idk_frac     0.0   probability that a query asks for a key absent from the context; target idk_token(V)
    read_twice   False JRT-Prompt: the row is `kv, queries, kv, queries`, only the last block scored
    random_filler False every filler position (between queries, and between pairs when context_len > 2k)
                       holds a token drawn uniformly from [0, V-1), keys and values included, instead of 0:
                       Zoology's random_non_queries=True, its default. Harder: the model can no longer
                       tell a query by its neighbours being 0, and a filler key is not asked about.
                       Our default stays 0 (Zoology's random_non_queries=False) because every result
                       in results/ and the README was measured with it; pass True to compare with
                       Zoology's numbers. The labels are the same either way (same seed, same rows).
    """
    V, T, k = vocab_size, seq_len, num_pairs
    q = k if num_queries is None else num_queries
    C = 2 * k if context_len is None else context_len
    P = T // 2 if read_twice else T                                 # length of one pass
    _check(n >= 0, "n", n, "expected a number of examples >= 0")
    _check(T % (4 if read_twice else 2) == 0 and T > 0, "seq_len", T,
           "expected a positive multiple of 4 with read_twice, else of 2")
    _check(k >= 1, "num_pairs", k, "expected >= 1")
    _check(1 <= q <= k, "num_queries", q, f"expected 1..num_pairs={k}")
    _check(C % 2 == 0 and 2 * k <= C, "context_len", C, f"expected even and >= 2*num_pairs={2 * k}")
    S = (P - C) // 2                                  # query slots: even offsets after the context
    _check(S >= q, "seq_len", T, f"too short: {q} queries after a context of {C} need a pass of "
           f">= {C + 2 * q} tokens" + (", twice" if read_twice else ""))
    n_keys = k + (q if idk_frac > 0 else 0)           # absent keys (IDK queries) come from the same range
    _check(n_keys <= V // 2 - 1 and k <= V - 1 - V // 2, "vocab_size", V,
           f"too small for {n_keys} distinct keys in [1, V/2) and {k} distinct values in [V/2, V-1)")
    _check(power_a > 0, "power_a", power_a, "expected > 0 (1.0 = uniform query placement)")
    _check(0.0 <= idk_frac <= 1.0, "idk_frac", idk_frac, "expected a probability in [0, 1]")

    rng = _rng(seed, split)
    keys = _distinct(rng, 1, V // 2, n, n_keys)       # (N, k [+q]): k in the context, q absent ones
    values = _distinct(rng, V // 2, V - 1, n, k)                     # (N, k)
    rows = np.arange(n)[:, None]
    x = np.zeros((n, P), dtype=np.int64)                             # (N, P), 0 = filler
    y = np.full((n, P), -100, dtype=np.int64)                        # (N, P)

    slot = np.argsort(rng.random((n, C // 2)), axis=1)[:, :k]  # (N, k) random pair slots; all when C = 2k
    x[rows, 2 * slot] = keys[:, :k]
    x[rows, 2 * slot + 1] = values

    asked = np.argsort(rng.random((n, k)), axis=1)[:, :q]      # (N, q) the pairs queried, in random order
    absent = rng.random((n, q)) < idk_frac                           # (N, q)
    q_key = np.where(absent, keys[:, k:] if idk_frac > 0 else 0, np.take_along_axis(keys, asked, axis=1))
    q_val = np.where(absent, idk_token(V), np.take_along_axis(values, asked, axis=1))

    # Zoology draws the S query gaps without replacement with weight i^(a-1), i = 1..S. The top q of
    # log-weight + Gumbel noise is exactly that draw (Gumbel-top-k), for all rows at once.
    score = (power_a - 1.0) * np.log(np.arange(1, S + 1)) + rng.gumbel(size=(n, S))  # (N, S)
    q_pos = C + 2 * np.argsort(-score, axis=1)[:, :q]                # (N, q)
    x[rows, q_pos] = q_key
    y[rows, q_pos] = q_val

    if random_filler:                                 # drawn last: the rest is as with filler 0
        filler = x == 0                                              # (N, P); no key, value or IDK id is 0
        x[filler] = rng.integers(0, V - 1, size=int(filler.sum()))
    if read_twice:                                    # `kv, queries, kv, queries`; score the last block
        x = np.concatenate([x, x], axis=1)                           # (N, T)
        y = np.concatenate([np.full_like(y, -100), y], axis=1)       # (N, T)
    M = P + C if read_twice else C                    # everything before the scored query block
    name = f"T={T} k={k}" + (f" q={q}" if q != k else "") + (f" ctx={C}" if C != 2 * k else "") \
        + (f" idk={idk_frac}" if idk_frac else "") + (" x2" if read_twice else "") \
        + (" rand" if random_filler else "")
    return _examples(x, y, np.full(n, M, dtype=np.int64), np.zeros(x.shape, dtype=bool),
                     np.zeros(n, dtype=np.int64), [name], V)


# ---------------------------------------------------------------------------------------------------
# Set disjointness (JRT paper)

SD_VOCAB = 2048
SD_MASK, SD_START, SD_SEP, SD_CUE = 0, 1, 2, 3                 # 0 is also the left padding
SD_TRAIN_SHAPES = [(4, 16), (16, 4), (8, 32), (32, 8), (64, 16), (16, 64),
                   (4, 128), (128, 4), (16, 256), (256, 16), (4, 256), (256, 4)]  # (|A|, |B|): JRT paper
# The JRT paper gives the test mixture only as "adds (1,32)...(768,16) for length extrapolation". Our reading:
# the train shapes plus shorter and longer sets, in both orders.
SD_TEST_SHAPES = SD_TRAIN_SHAPES + [(1, 32), (32, 1), (512, 16), (16, 512), (768, 16), (16, 768)]


def disjoint_sets(n, *, shapes=SD_TRAIN_SHAPES, halves=False, seed=0, split="train"):
    """n examples of each (|A|, |B|) shape: `1 A 2 B 3`, the target at the last position is the one
    token A and B share. Shapes of different length are left-padded with 0 to the longest, and `pad`
    marks the padding, so one random batch can mix shapes as in the paper (pass one shape to avoid
    padding). Memory: 17 bytes per token, e.g. the paper's 20k per train shape is ~1.1 GB at T = 275.

    halves  False A and B are a fresh random split of ids 4..2047 for every example (drawn together,
                  distinct), as the official generator does: no token tells which set it came from.
            True  a shortcut layout, kept only to show the shortcut: fixed halves, A from ids
                  4..1025 and B from 1026..2047. The shared token is then the only B token from A's
                  half, i.e. always B's smallest, so a model can answer without remembering A.
    """
    H = (SD_VOCAB - 4) // 2                                           # 1022 ids per half
    _check(n >= 0, "n", n, "expected a number of examples per shape >= 0")
    _check(len(shapes) > 0, "shapes", shapes, "expected a non-empty list of (|A|, |B|)")
    for a, b in shapes:
        limit = f"each in 1..{H}" if halves else f"each >= 1 with |A|+|B| <= {SD_VOCAB - 4}"
        _check(1 <= min(a, b) and (max(a, b) <= H if halves else a + b <= SD_VOCAB - 4),
               "shapes", (a, b), f"(|A|, |B|) must be {limit}")
    rng = _rng(seed, split)
    T = max(a + b for a, b in shapes) + 3                             # the longest row
    rows = np.arange(n)
    xs, answers = [], []
    for a, b in shapes:
        if halves:
            A = _distinct(rng, 4, 4 + H, n, a)                        # (N, |A|)
            B = _distinct(rng, 4 + H, 4 + 2 * H, n, b)                # (N, |B|)
        else:
            AB = _distinct(rng, 4, SD_VOCAB, n, a + b)
            A, B = AB[:, :a], AB[:, a:]
        shared = A[rows, rng.integers(0, a, size=n)]                  # (N,)
        B[rows, rng.integers(0, b, size=n)] = shared  # copy one A token into B: exactly one in common
        col = lambda t: np.full((n, 1), t, dtype=np.int64)
        row = np.concatenate([col(SD_START), A, col(SD_SEP), B, col(SD_CUE)], axis=1)  # (N, |A|+|B|+3)
        xs.append(np.pad(row, ((0, 0), (T - row.shape[1], 0)), constant_values=SD_MASK))  # left-padded to T
        answers.append(shared)
    x = np.concatenate(xs)                                            # (N, T)
    y = np.full_like(x, -100)
    y[:, -1] = np.concatenate(answers)                                # answered at the cue, the last position
    group = np.repeat(np.arange(len(shapes)), n)                      # (N,)
    first = T - 3 - np.array([a + b for a, b in shapes])[group]       # (N,) where each row's `1` sits
    pad = np.arange(T) < first[:, None]                               # (N, T)
    names = [f"|A|={a} |B|={b}" for a, b in shapes]
    return _examples(x, y, np.full(len(x), T, dtype=np.int64), pad, group, names, SD_VOCAB)


def relabel(ex, vocab_size, seed=0):
    """Set disjointness over a smaller vocabulary: each row's set tokens (ids >= 4) are mapped one-to-one
    onto random ids in [4, vocab_size). A and B stay sets that share exactly one token, and uniformly drawn
    sets stay uniform. data.disjoint_sets always uses 2048 ids, and learning that many token identities
    takes far longer than a CPU run of a few minutes."""
    gen = torch.Generator().manual_seed(seed)
    x, y = ex.x.clone(), ex.y.clone()
    for r in range(len(x)):
        toks = x[r][x[r] >= 4].unique()                                        # the row's distinct set tokens
        if len(toks) > vocab_size - 4:
            raise ValueError(f"relabel: a row has {len(toks)} set tokens, more than vocab_size - 4 = "
                             f"{vocab_size - 4}")
        lut = torch.arange(max(SD_VOCAB, vocab_size))                     # old id -> new id
        lut[toks] = torch.randperm(vocab_size - 4, generator=gen)[:len(toks)] + 4
        x[r] = lut[x[r]]
        y[r] = torch.where(y[r] >= 4, lut[y[r].clamp(min=0)], y[r])
    return Examples(x, y, ex.prefix_len, ex.pad, ex.group, ex.groups, vocab_size)


def mqar_mixture(n, vocab_size, contexts, pairs, query_slots, idk_frac, seed=0):
    """MQAR over a mixture: n examples spread evenly over every (context length C, pairs k) with 2k <= C,
    each with query_slots query positions after its context (min(k, slots) of them asked), a share
    idk_frac about absent keys; left-padded to one length (pads never enter a state); M = C."""
    shapes = [(C, k) for C in contexts for k in pairs if 2 * k <= C]
    parts = [mqar(n // len(shapes), vocab_size=vocab_size, seq_len=C + 2 * query_slots, num_pairs=k,
                  num_queries=min(k, query_slots), context_len=C, idk_frac=idk_frac, seed=seed + i, split="train")
             for i, (C, k) in enumerate(shapes)]
    T = max(part.x.shape[1] for part in parts)
    left = lambda t, value: torch.cat([torch.full((len(t), T - t.shape[1]), value, dtype=t.dtype), t], 1)
    cat = lambda f: torch.cat([f(i, part) for i, part in enumerate(parts)])
    return Examples(cat(lambda i, p: left(p.x, 0)), cat(lambda i, p: left(p.y, -100)),
                    cat(lambda i, p: p.prefix_len), cat(lambda i, p: left(p.pad, True)),
                    cat(lambda i, p: torch.full((len(p),), i)),
                    [f"C={C} k={k}" for C, k in shapes], vocab_size)


# ---------------------------------------------------------------------------------------------------
# Text: a UTF-8 file, tokenised once into a uint16 memory-mapped file beside it (nanoGPT style)

# tokenizer -> (model vocabulary, [MASK] id for the prefix-LM objective, JRT paper); [MASK] is the last id
TEXT_VOCAB = {"gpt2": (50264, 50263), "bytes": (258, 257)}


def get_tokenizer(name):
    """A tiktoken Encoding: `gpt2` (the paper's, downloaded once by tiktoken) or `bytes` (built here)."""
    if name == "bytes":  # one token per UTF-8 byte, so any text round-trips and nothing is downloaded
        return tiktoken.Encoding(name="bytes", pat_str=r"[\s\S]{1,256}",
                                 mergeable_ranks={bytes([i]): i for i in range(256)},
                                 special_tokens={"<|endoftext|>": 256, "<|mask|>": 257})
    _check(name in TEXT_VOCAB, "tokenizer", name, f"expected one of {sorted(TEXT_VOCAB)}")
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # offline: tiktoken fetches its gpt2 files on first use
        raise RuntimeError(
            "tokenizer='gpt2' needs tiktoken's gpt2 files, which could not be loaded "
            f"({type(e).__name__}: {e}). Either run once with internet (tiktoken caches them), or set "
            "TIKTOKEN_CACHE_DIR to a folder holding that cache (copied from a machine that has it, "
            "by default <tmp>/data-gym-cache), or use --tokenizer=bytes, which needs no download.") from e


@dataclass
class TextData:
    bin_path: str         # the uint16 token file
    tokenizer: str        # "gpt2" or "bytes"
    vocab_size: int       # for the model, padded (JRT paper)
    mask_token: int       # [MASK] of the prefix-LM objective
    n_train: int          # tokens in the train split; the last n_val tokens are the val split
    n_val: int

    def split(self, split):
        _check(split in ("train", "val"), "split", split, "expected 'train' or 'val'")
        tokens = np.memmap(self.bin_path, dtype=np.uint16, mode="r")  # reopened per call, as nanoGPT does
        return tokens[:self.n_train] if split == "train" else tokens[self.n_train:]

    def get_batch(self, split, batch_size, seq_len, generator=None):
        """x, y (B, T) int64 at random offsets; y is x shifted by one (next-token training)."""
        data = self.split(split)
        _check(len(data) > seq_len, "seq_len", seq_len, f"must be < the {split} split's {len(data)} tokens")
        i = torch.randint(len(data) - seq_len, (batch_size,), generator=generator)       # (B,)
        xy = torch.stack([torch.from_numpy(data[j:j + seq_len + 1].astype(np.int64)) for j in i.tolist()])
        return xy[:, :-1], xy[:, 1:]                                                      # (B, T), (B, T)


def text(path, *, tokenizer="gpt2", val_frac=0.1):
    """Tokenise `path` into `path.<tokenizer>.bin`, unless that file holds the tokens of this very text:
    `path.<tokenizer>.bin.key` records the size and sha256 of the text it was made from (a modification
    time would miss a file replaced by an older one, e.g. `cp -p`). The last val_frac of the tokens is
    the val split."""
    _check(tokenizer in TEXT_VOCAB, "tokenizer", tokenizer, f"expected one of {sorted(TEXT_VOCAB)}")
    _check(0.0 < val_frac < 1.0, "val_frac", val_frac, "expected a fraction in (0, 1)")
    _check(os.path.isfile(path), "data_path", path, "not found; expected a UTF-8 text file")
    bin_path, key_path = f"{path}.{tokenizer}.bin", f"{path}.{tokenizer}.bin.key"
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):          # 16 MB at a time, not all of it in memory
            h.update(block)
    key = f"{os.path.getsize(path)} {h.hexdigest()}\n"
    fresh = os.path.exists(bin_path) and os.path.exists(key_path) and open(key_path).read() == key
    if not fresh:
        try:
            with open(path, encoding="utf-8") as f:
                txt = f.read()
        except UnicodeDecodeError as e:
            raise ValueError(f"data_path={path!r}: not UTF-8 text ({e.reason} at byte {e.start}); the text "
                             f"task needs a UTF-8 file (e.g. `iconv -t utf-8`)") from None
        ids = get_tokenizer(tokenizer).encode_ordinary(txt)
        if os.path.exists(key_path):
            os.remove(key_path)                                      # no key names a .bin in the making
        np.array(ids, dtype=np.uint16).tofile(bin_path + ".tmp")     # both vocabularies are < 2^16
        os.replace(bin_path + ".tmp", bin_path)                      # atomic: never a half-written file
        with open(key_path + ".tmp", "w") as f:
            f.write(key)
        os.replace(key_path + ".tmp", key_path)
    n = os.path.getsize(bin_path) // 2
    n_val = int(n * val_frac)
    vocab_size, mask = TEXT_VOCAB[tokenizer]
    return TextData(bin_path, tokenizer, vocab_size, mask, n - n_val, n_val)
