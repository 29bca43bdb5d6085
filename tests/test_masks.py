import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lens_bias import MaskError, build_pairs
from lens_bias.attribution.patching import attribute
from lens_bias.hooks.ablation import ablate
from lens_bias.masks import PruningMask
from lens_bias.scores import Scores
from lens_bias.selection.topk import budget_count, parse_budget, random_mask, select


@pytest.fixture(scope="module")
def scores(tiny):
    return attribute(tiny, build_pairs().sample(2), progress=False)


def test_save_load_round_trip_exact(tiny, tmp_path, scores):
    mask = select(scores, 3, kind="both", bridge=tiny)
    st_path, js_path = mask.save(tmp_path)
    back = PruningMask.load(st_path, bridge=tiny)
    assert torch.equal(back.neurons, mask.neurons) and torch.equal(back.heads, mask.heads)
    assert back.meta["architecture"] == "LlamaForCausalLM" and back.meta["budget"] == "3"
    import json

    readable = json.loads(js_path.read_text())
    assert readable["counts"] == {"neurons": 3, "heads": 3}
    assert sorted(map(tuple, readable["pruned"]["heads"])) == mask.pruned("heads")


def test_mask_for_another_model_is_refused_naming_both_shapes(tiny, tmp_path):
    other = PruningMask(torch.ones(30, 1536, dtype=torch.bool), torch.ones(30, 9, dtype=torch.bool),
                        {"model": "smollm2-135m", "architecture": "LlamaForCausalLM"})
    other.save(tmp_path)
    with pytest.raises(MaskError, match=r"\(30, 1536\).*\(2, 128\)"):
        PruningMask.load(tmp_path, bridge=tiny)


def test_pickle_and_truncated_files_are_refused(tmp_path):
    p = tmp_path / "mask.pt"
    p.write_bytes(pickle.dumps({"neurons": [1, 2]}))
    with pytest.raises(MaskError, match="pickle"):
        PruningMask.load(p)
    disguised = tmp_path / "evil.safetensors"
    disguised.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(MaskError, match="pickle"):
        PruningMask.load(disguised)
    good = PruningMask(torch.ones(2, 8, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool))
    st_path, _ = good.save(tmp_path / "m")
    data = st_path.read_bytes()
    st_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MaskError, match="truncated|not a readable"):
        PruningMask.load(st_path)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_mask_loader_fuzz_only_project_errors(tmp_path_factory, data):
    f = tmp_path_factory.mktemp("m") / "mask.safetensors"
    f.write_bytes(data)
    try:
        PruningMask.load(f)
    except MaskError:
        pass


@pytest.mark.parametrize("budget, expected", [
    ("0.5%", ("fraction", 0.005)), ("230", ("count", 230.0)), (230, ("count", 230.0)),
    ("0.13%params", ("params", 0.0013)), (0.01, ("fraction", 0.01)),
])
def test_parse_budget(budget, expected):
    kind, value = parse_budget(budget)
    assert kind == expected[0] and value == pytest.approx(expected[1])


@pytest.mark.parametrize("budget, message", [
    ("0", "positive"),
    ("-1%", "positive"),
    ("150%", "over 100"),
    ("lots", "invalid budget"),
    ("2.5", "whole number"),
])
def test_bad_budgets(budget, message):
    with pytest.raises(MaskError, match=message):
        parse_budget(budget)


def test_budget_counts_and_layer_emptying(tiny, scores):
    assert budget_count(tiny, "neurons", "10%") == round(0.1 * 256)
    # a parameter budget: one head costs 2 * d_model * d_head parameters
    n = budget_count(tiny, "heads", "1%params")
    assert n >= 1
    with pytest.raises(MaskError, match="every neuron of layer"):
        select(scores, 128, kind="neurons", bridge=tiny, layers=[0])
    m = select(scores, 10, kind="neurons", bridge=tiny, per_layer="uniform")
    assert m.per_layer("neurons") == [5, 5]
    m = select(scores, 6, kind="neurons", bridge=tiny, layers=[1])
    assert m.per_layer("neurons") == [0, 6]


def test_select_takes_highest_scores(tiny):
    neurons = torch.zeros(2, 128)
    neurons[1, 7], neurons[0, 3] = 5.0, 4.0
    s = Scores(neurons, torch.zeros(2, 4), {}, {"estimator": "test"})
    m = select(s, 2, kind="neurons", bridge=tiny)
    assert m.pruned("neurons") == [(0, 3), (1, 7)]


def test_capability_filter_excludes_costly_units(tiny):
    neurons = torch.zeros(2, 128)
    neurons[0, 0] = 9.0  # the best bias score but also the most costly
    neurons[0, 1] = 1.0
    cost = Scores(torch.zeros(2, 128), torch.zeros(2, 4), {}, {})
    cost.neurons[0, 0] = 100.0
    m = select(Scores(neurons, torch.zeros(2, 4), {}, {}), 1, kind="neurons", bridge=tiny, cost=cost,
               max_cost_quantile=0.5)
    assert m.pruned("neurons") == [(0, 1)]


def test_ablate_removes_its_hooks_also_on_error(tiny):
    mask = random_mask(tiny, 5, "both", seed=1)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        clean = tiny(ids)
        with ablate(tiny, mask):
            ablated = tiny(ids)
        assert not torch.allclose(clean, ablated)
        with pytest.raises(RuntimeError), ablate(tiny, mask):
            raise RuntimeError("boom")
        assert all(not hp.fwd_hooks for hp in tiny.hook_dict.values())
        assert torch.equal(tiny(ids), clean)


def test_mean_ablation_uses_means(tiny):
    from lens_bias.hooks.capture import mean_activations
    from lens_bias.prompts.pairs import neutral_text

    means = mean_activations(tiny, neutral_text()[:10])
    assert means["neurons"].shape == (2, 128) and means["heads"].shape == (2, 4, 16)
    mask = PruningMask.keep_all(tiny)
    mask.neurons[0, 3] = False
    seen = {}

    def rec(t, hook):
        seen["v"] = t[..., 3].clone()

    from lens_bias.hooks.interventions import attached

    with torch.no_grad(), ablate(tiny, mask, "mean", means), attached(
            tiny, [("blocks.0.mlp.hook_post", rec)]):
        tiny(torch.tensor([[1, 5, 6, 7]]))
    assert torch.allclose(seen["v"], means["neurons"][0, 3].expand_as(seen["v"]))
    with pytest.raises(MaskError, match="mean ablation needs"):
        with ablate(tiny, mask, "mean"):
            pass
