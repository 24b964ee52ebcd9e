"""
JRT-Prompt: show the context twice before the question (JRT paper, SPEC §1, §5).

The interface every evaluated model offers (our `Model` through `ModelLM`; others through adapters):

    lm.vocab_size                      int
    lm.prefill(idx, pad_mask=None)     idx (B, T) int64, left-padded where pad_mask (B, T) is True
                                       -> (logits (B, V) fp32 for the next token, cache)
    lm.step(idx_t, cache)              idx_t (B,) -> (logits (B, V), cache): one more token per row
    lm.select(cache, rows)             the cache of the given batch rows (a LongTensor of indices), in order

Tokenisation is not part of it: builders work on strings or on token ids, and the harness takes a
tokenizer (a tiktoken Encoding) where text is involved.
"""
import torch
from torch.utils._pytree import tree_map


class ModelLM:
    """Our `Model` behind the interface above: parallel prefill, then constant-size recurrent steps."""

    def __init__(self, model, prefix_len=None):
        self.model, self.prefix_len = model, prefix_len  # prefix_len: M for pla layers (None: the config's)
        self.vocab_size = model.config.vocab_size

    def prefill(self, idx, pad_mask=None):
        logits, cache = self.model.prefill(idx, prefix_len=self.prefix_len, pad_mask=pad_mask)
        return logits.float(), cache

    def step(self, idx_t, cache):
        logits, cache = self.model.step(idx_t, cache)
        return logits.float(), cache

    def select(self, cache, rows):
        # every tensor in the cache has the batch first; ints (positions) are shared by all rows
        return tree_map(lambda t: t.index_select(0, rows) if isinstance(t, torch.Tensor) else t, cache)


def left_pad(seqs, pad_id=0, device=None):
    """Token lists of any lengths -> idx (B, T) and pad_mask (B, T), padded on the left."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long, device=device)
    pad = torch.ones(len(seqs), T, dtype=torch.bool, device=device)
    for b, s in enumerate(seqs):
        if len(s):
            idx[b, T - len(s):] = torch.as_tensor(s, dtype=torch.long)
            pad[b, T - len(s):] = False
    return idx, pad
