"""Hook builders (zero, mean, patch, collect) and ``attached``: the hooks a block attaches are
removed on exit and on an exception, and nobody else's hooks are touched."""

import pytest
import torch

from lens_bias.hooks.components import Component, hook_name
from lens_bias.hooks.interventions import attached, collect, mean, patch, zero
from lens_bias.scores import Scores

NAME = "blocks.0.mlp.hook_post"


def _mine(bridge) -> dict[str, int]:
    """Forward hooks per hook point (a point listed under several alias names counts once)."""
    points = {id(hp): hp for hp in bridge.hook_dict.values()}
    return {hp.name: len(hp.fwd_hooks) for hp in points.values() if hp.fwd_hooks}


def _at(bridge, name: str) -> str:
    return bridge.hook_dict[name].name


def _noop(act, hook):
    return None


def test_attached_removes_only_its_own_hooks(tiny):
    ids = torch.tensor([[1, 2, 3]])
    clean = tiny(ids)
    mlp, heads = _at(tiny, NAME), _at(tiny, hook_name("heads", 1))
    other = tiny.hook_dict[NAME].add_hook(_noop)  # attached by someone else, before the block
    inner = None
    try:
        with attached(tiny, [(NAME, _noop), (hook_name("heads", 1), _noop)]):
            assert _mine(tiny) == {mlp: 2, heads: 1}
            inner = tiny.hook_dict[NAME].add_hook(_noop)  # attached by someone else, inside the block
        assert _mine(tiny) == {mlp: 2}
        with pytest.raises(RuntimeError, match="boom"), attached(tiny, [(NAME, _noop)]):
            assert _mine(tiny) == {mlp: 3}
            raise RuntimeError("boom")
        assert _mine(tiny) == {mlp: 2}
    finally:
        for h in (other, inner):
            if h is not None:
                h.hook.remove()
                tiny.hook_dict[NAME].fwd_hooks.remove(h)
    assert _mine(tiny) == {}
    assert torch.equal(tiny(ids), clean)


def test_attached_nests_and_refuses_unknown_names(tiny):
    with attached(tiny, [(NAME, _noop)]), attached(tiny, [(NAME, _noop)]):
        assert _mine(tiny) == {_at(tiny, NAME): 2}
    assert _mine(tiny) == {}
    with pytest.raises(KeyError), attached(tiny, [("blocks.0.mlp.hook_nope", _noop)]):
        pass
    assert _mine(tiny) == {}
    with attached(tiny, []):
        assert _mine(tiny) == {}


def test_builders_on_the_model(tiny):
    ids = torch.tensor([[1, 5, 6, 7]])
    store: dict = {}
    keep = torch.ones(tiny.cfg.d_mlp, dtype=torch.bool)
    keep[3] = False
    ref = torch.full((tiny.cfg.d_mlp,), 2.5)
    with torch.no_grad():
        with attached(tiny, [(NAME, zero("neurons", keep)),
                             ("blocks.0.mlp.hook_out", collect(store, "neurons", 0))]):
            tiny(ids)
        out_zero = store[("neurons", 0)].clone()
        seen = {}
        with attached(tiny, [(NAME, mean("neurons", keep, ref)),
                             (NAME, lambda a, hook: seen.setdefault("a", a))]):
            tiny(ids)
    assert (seen["a"][..., 3] == 2.5).all() and not (seen["a"][..., 4] == 2.5).all()
    assert out_zero.shape[-1] == tiny.cfg.d_model


def test_heads_and_patch_builders():
    z = torch.ones(1, 2, 3, 4)  # [batch, pos, heads, d_head]
    assert zero("heads", torch.tensor([True, False, True]))(z, None)[0, 0, :, 0].tolist() == [1.0, 0.0, 1.0]
    with pytest.raises((ValueError, TypeError)):
        zero("head", torch.tensor([True]))
    act = torch.arange(2 * 3 * 2 * 1.0).view(2, 3, 2, 1)  # pair: row 0 Black, row 1 White
    where = torch.tensor([[False, True, True]])
    src = torch.tensor([[0, 1, 2]])
    out = patch(Component("heads", 0, 1).index, where, src)(act, None)
    assert out[0, :, 1, 0].tolist() == [1.0, 9.0, 11.0] and out[0, :, 0, 0].tolist() == [0.0, 2.0, 4.0]
    assert torch.equal(out[1], act[1])


def test_scores_refuse_an_unknown_kind():
    s = Scores(torch.zeros(2, 3), torch.ones(2, 2), {}, {})
    assert s.get("heads") is s.heads
    with pytest.raises((ValueError, TypeError), match="neuron"):  # TypeError where beartype checks `Kind`
        s.get("neuron")
