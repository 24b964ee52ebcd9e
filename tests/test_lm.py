"""lm.py: the cache-tree walk, row selection, the one greedy decoder; and Model.forward with the head on
the scored positions only, against the full forward."""
import pytest
import torch

from lm import ModelLM, decode, map_tensors, select_rows
from model import Config, Model, masked_ce


def tiny(layers=("conv", "pla"), vocab=64, seed=0):
    torch.manual_seed(seed)
    return Model(Config(vocab_size=vocab, d_model=32, n_head=2, feature_dim=4, layers=layers,
                        prefix_len=8, init_std=0.2)).eval()


def test_map_tensors_keeps_the_structure_and_leaves_the_original_alone():
    class Holder:                                    # a plain object, like transformers' cache classes
        def __init__(self, t):
            self.t, self.name = t, "h"
    tree = {"a": [torch.ones(2, 3), (torch.zeros(2), 5)], "b": Holder(torch.arange(4.0))}
    out = map_tensors(tree, lambda t: t + 1)
    assert torch.equal(out["a"][0], torch.full((2, 3), 2.0)) and isinstance(out["a"][1], tuple)
    assert out["a"][1][1] == 5 and torch.equal(out["b"].t, torch.arange(1.0, 5.0)) and out["b"].name == "h"
    assert torch.equal(tree["a"][0], torch.ones(2, 3)) and torch.equal(tree["b"].t, torch.arange(4.0))


def test_select_rows_indexes_batch_first_tensors_only_when_told_the_batch():
    cache = {"k": torch.arange(12).view(3, 4), "shared": torch.arange(5), "pos": 7}
    sub = select_rows(cache, [2, 0], batch_size=3)
    assert torch.equal(sub["k"], cache["k"][[2, 0]]) and torch.equal(sub["shared"], torch.arange(5))
    assert sub["pos"] == 7
    assert torch.equal(select_rows(cache, [1])["shared"], torch.tensor([1]))   # no batch_size: every tensor


def test_decode_drops_stopped_rows_and_matches_generate():
    model = tiny()
    idx = torch.randint(0, 64, (4, 6), generator=torch.Generator().manual_seed(1))
    free = model.generate(idx, 8, temperature=0)[:, 6:]
    stop = int(free[1, 2])                              # row 1 stops by its third token
    logits, cache = ModelLM(model).prefill(idx)
    rows = decode(ModelLM(model), logits, cache, 8, stop=(stop,))
    for r, (tokens, stopped) in enumerate(rows):
        ref = free[r].tolist()
        assert tokens == (ref[:ref.index(stop)] if stop in ref else ref) and stopped == (stop in ref)
    assert rows[1][1] and len(rows[1][0]) <= 2                     # row 1 stopped and left the batch


@pytest.mark.parametrize("layers", [("conv", "pla"), ("la", "swa")])
def test_scored_only_forward_equals_the_full_forward_at_scored_positions(layers):
    model = tiny(layers)
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 64, (3, 10), generator=g)
    targets = torch.full((3, 10), -100)
    targets[0, 4], targets[2, [1, 9]] = 7, torch.tensor([3, 5])
    pad = torch.zeros(3, 10, dtype=torch.bool)
    pad[1, :4] = True
    full, loss = model(idx, targets, 5, pad)
    scored, scored_loss = model(idx, targets, 5, pad, scored_only=True)
    torch.testing.assert_close(scored, full[targets != -100], rtol=1e-5, atol=1e-5)   # (n, V), row by row
    torch.testing.assert_close(scored_loss, loss)
    torch.testing.assert_close(loss, masked_ce(full, targets))
    with pytest.raises(ValueError, match="scored_only=True puts the head where targets are scored"):
        model(idx, scored_only=True)
