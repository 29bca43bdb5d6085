"""Optimal ablation (lens_bias.weights.optimal_ablation): the fitted constants against a grid search of
the same KL (the exact reference), never worse than the means they start from, and folded into
the exported weights exactly."""

import pytest
import torch

from lens_bias import build_pairs, load_model
from lens_bias.errors import MaskError
from lens_bias.hooks.ablation import ablate
from lens_bias.hooks.capture import mean_activations
from lens_bias.masks import PruningMask
from lens_bias.model.batching import pair_batch
from lens_bias.prompts.pairs import neutral_text
from lens_bias.weights.export import export_hf
from lens_bias.weights.optimal_ablation import constants_kl, fit_constants

TEXTS = neutral_text()[:6]


@pytest.fixture(scope="module")
def tiny64():
    return load_model("tiny-random", device="cpu", dtype=torch.float64)


def test_one_neuron_reaches_the_grid_searched_minimum(tiny64):
    """One pruned neuron: the KL is a function of one number, so a grid finds its minimum; the
    fit (full batch) lands next to it, far below where the mean starts."""
    m = PruningMask.keep_all(tiny64)
    m.neurons[1, 7] = False
    fitted, info = fit_constants(tiny64, m, TEXTS, steps=40, lr=0.004, batch_size=len(TEXTS), progress=False)
    start = mean_activations(tiny64, TEXTS)
    c0 = float(start["neurons"][1, 7])
    grid = torch.linspace(c0 - 0.03, c0 + 0.03, 31)
    kls = []
    for v in grid:
        c = {k: x.clone() for k, x in start.items()}
        c["neurons"][1, 7] = v
        kls.append(constants_kl(tiny64, m, c, TEXTS))
    best = min(range(len(kls)), key=kls.__getitem__)
    assert 0 < best < len(kls) - 1, "the grid must bracket the minimum"
    assert info["kept"] == "fit" and info["kl_fit"] < info["kl_init"]
    assert info["kl_fit"] - kls[best] <= 0.2 * (info["kl_init"] - kls[best])
    assert abs(float(fitted["neurons"][1, 7]) - float(grid[best])) <= 2 * float(grid[1] - grid[0])


def test_only_pruned_units_move_and_shapes_are_the_means(tiny):
    m = PruningMask.keep_all(tiny)
    m.neurons[0, :5] = False
    m.heads[1, 2] = False
    fitted, info = fit_constants(tiny, m, TEXTS, steps=8, lr=0.05, batch_size=3, progress=False)
    start = mean_activations(tiny, TEXTS)
    for kind in ("neurons", "heads"):
        assert fitted[kind].shape == start[kind].shape and fitted[kind].dtype == torch.float32
    kept_n, kept_h = m.neurons, m.heads
    assert torch.equal(fitted["neurons"][kept_n], start["neurons"][kept_n])
    assert torch.equal(fitted["heads"][kept_h], start["heads"][kept_h])
    assert info["kept"] == "fit" and info["kl_fit"] < info["kl_init"]
    assert not torch.equal(fitted["neurons"][~kept_n], start["neurons"][~kept_n])
    assert not torch.equal(fitted["heads"][~kept_h], start["heads"][~kept_h])
    assert len(info["losses"]) == 8


def test_fitted_constants_export_exactly(tiny, tmp_path):
    """Folded into the biases of down_proj / o_proj, the constants give the simulation's logits
    (max |diff| <= 1e-5 in fp32), which differ from zero ablation's."""
    from transformers import AutoModelForCausalLM

    m = PruningMask.keep_all(tiny)
    m.neurons[1, 3:9] = False
    m.heads[0, 1] = False
    fitted, _ = fit_constants(tiny, m, TEXTS, steps=5, lr=0.05, batch_size=3, progress=False)
    out = export_hf(tiny, m, tmp_path / "model", ablation="mean", means=fitted)
    back = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = pair_batch(tiny, build_pairs(["hiring"]).pairs[:3]).ids[:, :6]
    with torch.no_grad():
        with ablate(tiny, m, "mean", fitted):
            sim = tiny(ids).float()
        with ablate(tiny, m):
            zero = tiny(ids).float()
        got = back(input_ids=ids, use_cache=False).logits.float()
    assert float((got - sim).abs().max()) <= 1e-5
    assert float((got - zero).abs().max()) > 1e-4


def test_bad_settings_are_refused(tiny):
    m = PruningMask.keep_all(tiny)
    with pytest.raises(MaskError, match="steps >= 0"):
        fit_constants(tiny, m, TEXTS, steps=-1, progress=False)
    with pytest.raises(MaskError, match="needs texts"):
        fit_constants(tiny, m, [], progress=False)
