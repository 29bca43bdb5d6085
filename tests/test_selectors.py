"""Selectors that should generalize (stability selection, learned masks, honest model selection):
exact budgets, a planted biased unit found by every method, determinism, and the learned mask's
ablation equal to the simulation."""

from __future__ import annotations

import pytest
import torch

from lens_bias import build_pairs, load_model
from lens_bias.attribution.patching import attribute
from lens_bias.attribution.per_template import attribute_templates
from lens_bias.errors import MaskError, PairsError
from lens_bias.hooks.ablation import ablate
from lens_bias.hooks.interventions import attached
from lens_bias.measures.metrics import measure
from lens_bias.model.batching import pair_batch
from lens_bias.model.layout import decoder_layers
from lens_bias.prompts.pairs import neutral_text
from lens_bias.prompts.splits import template_folds, validation_split
from lens_bias.selection.auto import choose
from lens_bias.selection.learned import LearnConfig, _prune_indicator, gate_hooks, learn_mask
from lens_bias.selection.registry import SelectionInputs, SelectorSpec, select_units, selectors
from lens_bias.selection.stability import sign_agreement, stability_select
from lens_bias.selection.topk import select
from lens_bias.vocab import BUILTIN_SELECTORS

FAST = {"learned": {"steps": 3, "eval_every": 1, "pairs_per_domain": 4, "neutral_batch": 4},
        "iterative": {"steps": 2}, "stable": {"n_resamples": 10}}


def run_selector(spec, bridge, ts, pairs, budget, cost, neutral):
    return select_units(spec, SelectionInputs(bridge, pairs, budget, "neurons", cost, neutral,
                                              template_scores=ts))


def test_the_builtin_selectors_are_registered():
    assert set(BUILTIN_SELECTORS) <= set(selectors())


@pytest.fixture(scope="module")
def pairs():
    return build_pairs(["finance", "hiring"]).sample(12)


@pytest.fixture(scope="module")
def ts(tiny, pairs):
    return attribute_templates(tiny, pairs, progress=False)


def test_template_scores_equal_attribution(tiny, pairs, ts):
    a, s = attribute(tiny, pairs, progress=False), ts.scores()
    # the same passes, summed per template instead of per domain: float64 sums regrouped, then cast to
    # float32, so at most an ulp or two (rtol 1e-6 = 8 eps32)
    for k in ("neurons", "heads"):
        torch.testing.assert_close(s.get(k), a.get(k), rtol=1e-6, atol=1e-9)
    for d in a.by_domain:
        torch.testing.assert_close(s.by_domain[d]["neurons"], a.by_domain[d]["neurons"], rtol=1e-6, atol=1e-9)
    assert s.settings["n_pairs_by_domain"] == a.settings["n_pairs_by_domain"]
    assert s.settings["metric_before"] == pytest.approx(a.settings["metric_before"])
    # a subset of templates is the attribution of that subset's pairs
    sub = ts.templates[:3]
    sub_pairs = pairs.filter(templates=sub)
    # other batches (other padding) in this float32 model: float32 sums of a * g with cancellation, so the
    # error scales with the scores' scale (1.7e-6 of it measured, 2.5e-6 under a 1-ulp perturbation of
    # the attention softmax; a fixed atol of 1e-8 was 1.3e-6 of it). atol 1e-4 of the scale leaves 40x
    want = attribute(tiny, sub_pairs, progress=False).neurons
    torch.testing.assert_close(ts.subset(sub).neurons, want, rtol=1e-5, atol=1e-4 * float(want.abs().max()))


@pytest.mark.parametrize("selector", BUILTIN_SELECTORS)
@pytest.mark.parametrize("budget,want", [("2%", 5), (7, 7)])
def test_every_selector_hits_the_budget(tiny, pairs, ts, selector, budget, want):
    spec = SelectorSpec(selector, 0.5, FAST.get(selector, {}))
    from lens_bias.attribution.patching import capability_cost

    cost = capability_cost(tiny, neutral_text()[:8], ablation="zero")
    got = run_selector(spec, tiny, ts, pairs, budget, cost, neutral_text()[:8])
    assert got.mask.counts() == {"neurons": want, "heads": 0}
    assert got.record["selector"] == selector and got.record["options"] == FAST.get(selector, {})


def test_stability_selection_is_deterministic_for_a_seed(tiny, ts):
    a, fa = stability_select(ts, 6, "neurons", tiny, n_resamples=15, seed=3)
    b, fb = stability_select(ts, 6, "neurons", tiny, n_resamples=15, seed=3)
    assert torch.equal(a.neurons, b.neurons) and torch.equal(fa, fb)
    c, fc = stability_select(ts, 6, "neurons", tiny, n_resamples=15, seed=4)
    assert not torch.equal(fa, fc)  # another seed resamples other templates
    assert float(fa.max()) <= 1 and float(fa.min()) >= 0
    with pytest.raises(MaskError, match="fraction"):
        stability_select(ts, 6, "neurons", tiny, fraction=0.0)


def test_sign_filter(tiny, ts):
    share = sign_agreement(ts.scores(), "neurons")
    eligible = int((share >= 1.0).sum())
    assert 0 < eligible < 120
    m, _ = stability_select(ts, eligible, "neurons", tiny, n_resamples=3, min_sign_share=1.0)
    assert bool((share[~m.neurons] >= 1.0).all())  # only units positive in every domain
    with pytest.raises(MaskError, match="positive score"):
        stability_select(ts, eligible + 1, "neurons", tiny, n_resamples=3, min_sign_share=1.0)


@pytest.fixture(scope="module")
def planted():
    """tiny-random with one first-layer neuron built to carry the bias: its up-projection reads the
    mean Black-minus-White direction of the MLP input at the prompts' last token, its gate a
    constant (the mean input), and its output column writes a fixed random direction. Removing it
    takes mean JS back to the unmodified model's level (down by a third). In the first layer, no
    other neuron sits upstream of it (a planted unit in a later layer lends its effect to the
    earlier neurons that feed it, which is real but muddies the test)."""
    b = load_model("tiny-random", device="cpu")
    p = build_pairs(["finance", "hiring"]).sample(12)
    layer, unit = 0, 7
    store = {}
    with torch.no_grad(), attached(b, [(f"blocks.{layer}.mlp.hook_in", lambda a, hook: store.update(x=a))]):
        batch = pair_batch(b, p.pairs)
        b(batch.ids)
    n = len(p)
    x = store["x"][torch.arange(2 * n), batch.lengths - 1]
    dx, m = (x[:n] - x[n:]).mean(0), x.mean(0)
    mlp = decoder_layers(b.original_model)[1][layer].mlp
    v = torch.randn(b.cfg.d_model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mlp.gate_proj.weight[unit] = 3 * m / m.norm() ** 2
        mlp.up_proj.weight[unit] = 20 * dx / dx.norm() ** 2
        mlp.down_proj.weight[:, unit] = v / v.norm()
    return b, p, (layer, unit)


def test_planted_unit_carries_the_bias(planted):
    b, p, (layer, unit) = planted
    from lens_bias.masks import PruningMask

    m = PruningMask.keep_all(b)
    m.neurons[layer, unit] = False
    before = measure(b, p, progress=False).summary()["all"]["js"]
    with ablate(b, m):
        after = measure(b, p, progress=False).summary()["all"]["js"]
    assert after < 0.75 * before


@pytest.mark.parametrize("selector", BUILTIN_SELECTORS)
def test_every_selector_finds_the_planted_unit(planted, selector):
    b, p, unit = planted
    ts = attribute_templates(b, p, progress=False)
    got = run_selector(SelectorSpec(selector, None, FAST.get(selector, {})), b, ts, p, 3, None,
                       neutral_text()[:8])
    assert unit in got.mask.pruned("neurons")


def test_learned_mask_ablation_equals_the_simulation(tiny, pairs, ts):
    """The hard gates the learned mask trains with are exactly the exported mask's zero ablation."""
    fit, val = validation_split(pairs)
    mask, hist = learn_mask(tiny, fit, val, 6, "neurons", ts.subset(fit.templates), neutral_text()[:8],
                            cfg=LearnConfig(steps=3, eval_every=1, pairs_per_domain=4, neutral_batch=4),
                            progress=False)
    assert mask.counts()["neurons"] == 6 and sum(r["kept"] for r in hist) == 1
    theta = torch.where(mask.neurons, 0.0, 1.0)  # the pruned units score highest
    allowed = torch.ones_like(mask.neurons)
    prune = _prune_indicator(theta, allowed, 6, 0.5)
    assert torch.equal(prune.detach() > 0.5, ~mask.neurons)
    ids = pair_batch(tiny, pairs.pairs[:4]).ids
    with torch.no_grad():
        with attached(tiny, gate_hooks("neurons", prune.detach(), tiny.cfg.n_layers)):
            gated = tiny(ids)
        with ablate(tiny, mask):
            simulated = tiny(ids)
    assert float((gated - simulated).abs().max()) == 0.0


def test_learned_gradient_flows_to_every_allowed_unit(tiny):
    theta = torch.randn(2, 16, requires_grad=True)
    allowed = torch.ones(2, 16, dtype=torch.bool)
    allowed[0, :4] = False
    p = _prune_indicator(theta, allowed, 5, 1.0)
    assert int(p.detach().sum()) == 5 and not bool(p.detach()[0, :4].any())
    (p * torch.arange(32.0).view(2, 16)).sum().backward()
    assert bool((theta.grad[0, :4] == 0).all()) and bool((theta.grad[1] != 0).all())


def test_learned_refuses_overlapping_templates(tiny, pairs, ts):
    with pytest.raises(MaskError, match="share templates"):
        learn_mask(tiny, pairs, pairs, 4, "neurons", ts.scores(), neutral_text()[:4], progress=False)


def test_choose_cross_validates_on_the_train_templates_only(tiny, pairs, ts):
    """Model selection sees only the train pairs given: each fold's fit and validation templates
    are disjoint, every train template is validated once, and a candidate's cross-validated
    reduction equals the one recomputed by hand (select on the other folds, measure the fold)."""
    res = choose(tiny, ts, pairs, "2%", "neurons", None, neutral_text()[:8],
                 candidates=[SelectorSpec("oneshot", None), SelectorSpec("stable", None, {"n_resamples": 5})])
    folds = template_folds(pairs, 3, seed=1)
    assert all(not set(f.templates) & set(v.templates) for f, v in folds)
    assert sorted(t for _, v in folds for t in v.templates) == sorted(pairs.templates)
    assert sum(r["chosen"] for r in res["rows"]) == 1 and res["chosen"].selector in ("oneshot", "stable")
    assert res["n_val_templates"] == len(pairs.templates) and "3-fold cross-validation" in res["why"]
    before = after = 0.0
    for fit, val in folds:
        mask = select(ts.restrict(fit.templates).scores(), "2%", kind="neurons", bridge=tiny,
                      max_cost_quantile=None)
        before += sum(measure(tiny, val, progress=False).values["js"])
        with ablate(tiny, mask):
            after += sum(measure(tiny, val, progress=False).values["js"])
    assert res["rows"][0]["val_reduction_pct"] == pytest.approx(100 * (1 - after / before), abs=1e-3)
    one = choose(tiny, ts, pairs, "2%", "neurons", None, neutral_text()[:8],
                 candidates=[SelectorSpec("oneshot", None)], folds=1)
    fit, val = validation_split(pairs)
    assert one["n_val_templates"] == len(val.templates) and not set(fit.templates) & set(val.templates)


def test_template_folds_are_seeded_and_refuse_too_few_templates(pairs):
    assert ([v.templates for _, v in template_folds(pairs, 3, 5)]
            == [v.templates for _, v in template_folds(pairs, 3, 5)])
    assert ([v.templates for _, v in template_folds(pairs, 3, 5)]
            != [v.templates for _, v in template_folds(pairs, 3, 6)])
    with pytest.raises(PairsError, match="fewer folds"):
        template_folds(pairs, len(pairs.templates) + 1)


def test_folded_constants_export_exactly(tiny, tmp_path):
    """Mean ablation (any constants) folded into down_proj / o_proj biases: the saved and reloaded
    HF model equals the simulation to 1e-5 in float32."""
    from transformers import AutoModelForCausalLM

    from lens_bias.hooks.capture import mean_activations
    from lens_bias.selection.topk import random_mask
    from lens_bias.weights.folding import fold_constants

    means = mean_activations(tiny, neutral_text()[:8])
    mask = random_mask(tiny, 3, "both", seed=1)
    model = fold_constants(tiny, mask, means)
    model.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ids = pair_batch(tiny, build_pairs(["hiring"]).pairs[:3]).ids[:, :6]
    with torch.no_grad():
        with ablate(tiny, mask, "mean", means):
            sim = tiny(ids).float()
        zero = tiny(ids).float()
        for m in (model, back):
            out = m(input_ids=ids, use_cache=False).logits.float()
            assert float((out - sim).abs().max()) <= 1e-5
    assert float((zero - sim).abs().max()) > 1e-3  # the constants matter: a zero-ablation fold would fail
    assert back.config.mlp_bias and back.config.attention_bias


def test_the_curve_picks_the_ablate_scorers_units_with_the_selector(tiny, pairs):
    """experiment curve --selector: the ablate rows are the selector's masks, evaluated as usual;
    the other scorers keep their top scores."""
    from lens_bias.measures.evaluation import evaluate, standard_evalset
    from lens_bias.studies.curve import compare_scorers, selector_picks

    train, held = pairs.split(by="template", held_out=0.34, seed=0)
    ev = standard_evalset(held, ppl_tokens=256)
    ev.lambada, ev.crows, ev.wikitext = [], [], []
    res = compare_scorers(tiny, train, ev, scorers=("ablate", "actdiff"), kinds=("neurons",), budgets=("3%",),
                          max_cost_quantile=None, progress=False, selector="stable")
    by = {r["scorer"]: r for r in res["rows"]}
    assert by["ablate"]["selector"] == "stable" and by["actdiff"]["selector"] == "oneshot"
    assert res["settings"]["selector"] == "stable"
    _, pick = selector_picks(tiny, train, ev.neutral, "stable", "js", None, None, 0, 16, False)
    assert pick("actdiff", "neurons", "3%") is None
    mask = pick("ablate", "neurons", "3%")
    top = select(attribute_templates(tiny, train, progress=False).scores(), "3%", kind="neurons", bridge=tiny)
    assert not torch.equal(mask.neurons, top.neurons)  # stability selection keeps other units than the top
    want = evaluate(tiny, ev, mask, lambada=False, sentences=False)
    assert by["ablate"]["js"] == pytest.approx(want["js"], rel=1e-6)
    assert by["ablate"]["js"] != pytest.approx(
        evaluate(tiny, ev, top, lambada=False, sentences=False)["js"], rel=1e-6)


def test_experiments_filter_on_the_cost_of_the_ablation_they_prune_with(tiny, pairs):
    """Experiments prune with zero ablation, as `run` does: their capability filter is the Fisher
    cost of zero ablation (`run`'s), not the function's mean-ablation default."""
    from lens_bias.attribution.patching import capability_cost
    from lens_bias.attribution.per_template import template_scores

    _, cost = template_scores(tiny, pairs[:4], progress=False)
    zero = capability_cost(tiny, neutral_text(), ablation="zero")
    assert torch.equal(cost.neurons, zero.neurons)
    # mean ablation differs
    assert not torch.equal(cost.neurons, capability_cost(tiny, neutral_text()).neurons)


def test_versus_pairs_two_masks_on_the_same_held_out_pairs():
    """A mask's held-out JS against the first neuron row's at its budget, paired by template:
    halving every pair's JS is a 50 % reduction; the first row has no comparison, nor do rows
    without per-pair values; another budget has its own reference."""
    from lens_bias.studies.selectors import add_versus, selector_rows, versus

    pairs = {"templates": [f"t{i}" for i in range(8)], "domains": ["a"] * 8}
    rows = [{"kind": "neurons", "budget": "1%", "held_out_js": [0.02] * 8},
            {"kind": "neurons", "budget": "1%", "held_out_js": [0.01] * 8},
            {"kind": "neurons", "budget": "2%", "held_out_js": [0.04, 0.02] * 4},
            {"kind": "neurons", "budget": "2%", "held_out_js": [0.04, 0.02] * 4},
            {"kind": "neurons", "budget": "1%"}]
    res = {"rows": rows, "held_out_pairs": pairs}
    assert versus(res, rows[0]) is None and versus(res, rows[4]) is None
    v = versus(res, rows[1])
    assert v["reduction_pct"] == pytest.approx(50.0) and v["p"] < 0.05 and not v["within_noise"]
    assert (versus(res, rows[3])["reduction_pct"] == pytest.approx(0.0)
            and versus(res, rows[3])["within_noise"])
    assert versus({"rows": rows}, rows[1]) is None  # results written before per-pair values were kept
    for r in rows:
        r.update(label="x", n_pruned=1, train=None, tests={"js": None}, kl_neutral=None, select_seconds=0)
    table, header = selector_rows(add_versus(res))
    assert [t[header.index("held-out JS vs first row %")] for t in table][:2] == ["-", "50.0 [50.0, 50.0]"]
