"""Integrated gradients along the ablation path, against exact ablation (float64, tiny-random):
completeness on a set of units and through the API per layer, m = 1 midpoint against attribution
patching taken halfway, convergence in m, and the quadrature itself."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lens_bias import build_pairs, load_model
from lens_bias.attribution.integrated import integrated_gradients, path_scores, quadrature
from lens_bias.attribution.patching import attribute
from lens_bias.hooks.ablation import ablate
from lens_bias.hooks.components import hook_name
from lens_bias.hooks.interventions import attached
from lens_bias.masks import PruningMask
from lens_bias.measures.targets import pair_metric
from lens_bias.model.batching import last_logits, pair_batch, widened


@pytest.fixture(scope="module")
def b64():
    return load_model("tiny-random", device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def pairs():
    return build_pairs(["finance", "hiring"]).sample(3, seed=1)


def per_pair_metric(bridge, pairs, mask=None, metric="js"):
    """The metric of each pair, exactly, with ``mask``'s units zeroed."""
    batch = pair_batch(bridge, pairs.pairs)
    ctx = ablate(bridge, mask) if mask is not None else attached(bridge, [])
    with ctx, torch.no_grad():
        last = widened(last_logits(bridge, batch.ids, batch.lengths.tolist()))
        return pair_metric(metric, last, pairs.pairs, bridge.lens_bias_tokenizer)


def some_units(bridge, seed=0):
    """A set of units over both layers and kinds: the path, and the mask that ablates it."""
    g = torch.Generator().manual_seed(seed)
    on = {("neurons", 0): torch.rand(128, generator=g) < 0.1,
          ("neurons", 1): torch.rand(128, generator=g) < 0.1,
          ("heads", 1): torch.tensor([True, False, True, False])}
    mask = PruningMask.keep_all(bridge)
    for (kind, layer), units in on.items():
        mask.tensor(kind)[layer][units] = False
    return on, mask


def on_path_sum(scores, on):
    return sum((scores[key][:, units]).sum(1) for key, units in on.items())


def test_quadrature_integrates_polynomials_exactly():
    for m in (1, 2, 3, 5):
        x, w = quadrature(m)
        assert sum(w) == pytest.approx(1.0)
        for degree in range(2 * m):
            integral = sum(wi * xi ** degree for xi, wi in zip(x, w, strict=True))
            assert integral == pytest.approx(1 / (degree + 1))
    x, w = quadrature(4, "midpoint")
    assert x == [0.125, 0.375, 0.625, 0.875] and w == [0.25] * 4
    with pytest.raises(Exception, match="gauss, midpoint"):
        quadrature(2, "simpson")


def test_completeness_on_a_set_of_units(b64, pairs):
    """The scores of the units on the path add up, per pair, to the exact change of the metric when
    they are ablated together (as a reduction), to quadrature error."""
    on, mask = some_units(b64)
    exact = per_pair_metric(b64, pairs) - per_pair_metric(b64, pairs, mask)  # the reduction
    scores = path_scores(b64, pairs.pairs, "js", "zero", None, ["neurons", "heads"], on, steps=24)
    # tiny-random in float64 still rounds a few operations in float32: a floor of about 1e-8
    assert torch.allclose(on_path_sum(scores, on), exact, rtol=1e-5, atol=1e-8)


def test_convergence_in_m(b64, pairs):
    on, mask = some_units(b64, seed=3)
    exact = (per_pair_metric(b64, pairs) - per_pair_metric(b64, pairs, mask)).sum()
    errors = [abs(float(on_path_sum(path_scores(b64, pairs.pairs, "js", "zero", None, ["neurons", "heads"],
                                                on, steps=m), on).sum() - exact)) for m in (1, 2, 4, 8, 16)]
    assert errors[4] < errors[2] < errors[0] and errors[4] < errors[0] / 100
    assert errors[4] < 1e-5 * abs(float(exact))


def test_one_midpoint_is_attribution_patching_halfway(b64, pairs):
    """m = 1, midpoint, one layer's neurons on the path, zero ablation: the model at the midpoint has
    those neurons halved; attribution patching there estimates removing the remaining half, so IG
    (the whole step) is twice its estimate."""
    on = {("neurons", 1): torch.ones(128, dtype=torch.bool)}
    ig = path_scores(b64, pairs.pairs, "js", "zero", None, ["neurons"], on, steps=1, rule="midpoint")
    with attached(b64, [(hook_name("neurons", 1), lambda act, hook: 0.5 * act)]):
        atp = attribute(b64, pairs, estimator="ablate", components=["neurons"], progress=False)
    assert torch.allclose(ig[("neurons", 1)].mean(0), 2 * atp.neurons[1], rtol=1e-7, atol=1e-12)


def test_the_api_scores_each_layer_on_its_own_path(b64, pairs):
    """path="layer": a layer's scores are the mean over pairs of that layer's own path (the rest of
    the model clean), batched and accumulated per domain; completeness per path is tested above."""
    s = integrated_gradients(b64, pairs, steps=3, path="layer", batch_size=4, progress=False)
    for kind, width in (("neurons", 128), ("heads", 4)):
        for layer in range(2):
            on = {(kind, layer): torch.ones(width, dtype=torch.bool)}
            direct = path_scores(b64, pairs.pairs, "js", "zero", None, ["neurons", "heads"], on, steps=3)
            assert torch.allclose(s.get(kind)[layer], direct[(kind, layer)].mean(0), rtol=1e-9, atol=1e-15)
    assert s.settings["ig_path"] == "layer" and s.settings["ig_steps"] == 3
    assert set(s.by_domain) == {"finance", "hiring"}
    assert s.settings["metric_before"] == pytest.approx(float(per_pair_metric(b64, pairs).mean()))
    joint = integrated_gradients(b64, pairs, steps=2, path="joint", progress=False)
    assert joint.settings["ig_path"] == "joint" and not torch.allclose(joint.neurons, s.neurons)


def test_a_single_unit_path_is_its_exact_ablation(b64, pairs):
    """One unit alone on the path: IG converges to its exact ablation effect, which a first-order
    estimate at the clean point need not match."""
    atp = attribute(b64, pairs, estimator="ablate", components=["neurons"], progress=False)
    layer, unit = np.unravel_index(int(atp.neurons.abs().argmax()), atp.neurons.shape)
    on = {("neurons", int(layer)): torch.arange(128) == int(unit)}
    ig = path_scores(b64, pairs.pairs, "js", "zero", None, ["neurons"], on, steps=12)
    mask = PruningMask.keep_all(b64)
    mask.neurons[int(layer), int(unit)] = False
    exact = per_pair_metric(b64, pairs) - per_pair_metric(b64, pairs, mask)
    assert torch.allclose(ig[("neurons", int(layer))][:, int(unit)], exact, rtol=1e-5, atol=5e-8)


def test_the_ig_scorer_through_score_and_scan(tmp_path):
    """``score(..., "ig")`` and ``lens-bias scan --scorer ig --ig 2,joint``; GradDrop and a bad
    --ig are refused in one line."""
    from typer.testing import CliRunner

    from lens_bias.attribution.scorers import score
    from lens_bias.cli.main import app
    from lens_bias.errors import LensBiasError
    from lens_bias.scores import Scores

    b = load_model("tiny-random", device="cpu")
    ps = build_pairs(["hiring"]).sample(2)
    s = score(b, ps, "ig", ig_steps=2, ig_path="joint", progress=False)
    assert (s.settings["ig_steps"], s.settings["ig_path"], s.settings["ig_rule"]) == (2, "joint", "gauss")
    with pytest.raises(LensBiasError, match="GradDrop"):
        score(b, ps, "ig", graddrop=True)
    runner = CliRunner()
    out = tmp_path / "ig.safetensors"
    r = runner.invoke(app, ["scan", "--model", "tiny-random", "--domains", "hiring", "--per-domain", "4",
                            "--scorer", "ig", "--ig", "2,joint", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert Scores.load(out).settings["ig_path"] == "joint"
    # the IG scores validate from the CLI against exact ablation, on the pairs they were scanned on
    r = runner.invoke(app, ["validate", "--scores", str(out), "--model", "tiny-random", "--k", "3",
                            "--n-random", "2", "--json", "-q"])
    assert r.exit_code == 0, r.output
    v = json.loads(r.output)
    assert v["neurons"]["n"] == 5 and v["heads"]["n"] == 5 and v["neurons"]["reading"].startswith("neurons: ")
    r = runner.invoke(app, ["scan", "--model", "tiny-random", "--scorer", "ig", "--ig", "0,layer", "-o",
                            str(out)])
    assert r.exit_code == 2 and "--ig must be 'points[,path[,rule]]'" in r.output


def test_faithfulness_curves_against_direct_evaluation_and_an_oracle(b64, pairs):
    """Each point is the held-out evaluation of the scorer's top k removed together; an oracle
    scorer (every neuron's exact single-unit effect on the held-out pairs) removes the most at k = 1;
    the area is the mean fraction removed."""
    from lens_bias.attribution.validation import exact_effects
    from lens_bias.hooks.components import Component
    from lens_bias.measures.evaluation import EvalSet, evaluate
    from lens_bias.scores import Scores
    from lens_bias.selection.topk import select
    from lens_bias.studies.faithfulness import faithfulness_curves

    held = build_pairs(["finance", "hiring"]).sample(4, seed=5)
    comps = [Component("neurons", L, i) for L in range(2) for i in range(128)]
    exact = exact_effects(b64, held, comps, progress=False).view(2, 128)
    atp = attribute(b64, pairs, components=["neurons"], progress=False)
    scorers = {"oracle": Scores(exact, None, {}, {}), "atp": atp}
    r = faithfulness_curves(b64, held, scorers, ks=(1, 8), progress=False)
    point = {(row["scorer"], row["k"]): row for row in r["rows"]}
    direct = evaluate(b64, EvalSet(held), select(atp, 8, bridge=b64), lambada=False, sentences=False)
    assert point[("atp", 8)]["js"] == pytest.approx(direct["js"])
    assert point[("oracle", 1)]["reduction_pct"] >= point[("atp", 1)]["reduction_pct"] - 1e-9
    assert point[("oracle", 1)]["reduction_pct"] == pytest.approx(100 * float(exact.max()) / r["before"])
    for name in scorers:
        red = [point[(name, k)]["reduction_pct"] for k in (1, 8)]
        assert r["area"][name] == pytest.approx(sum(red) / 200)
    # the paired comparison with the first scorer is the difference of the two reductions
    assert point[("oracle", 8)]["vs_first"] is None and r["settings"]["reference"] == "oracle"
    vs = point[("atp", 8)]["vs_first"]
    gap = point[("atp", 8)]["reduction_pct"] - point[("oracle", 8)]["reduction_pct"]
    assert vs["more_pts"] == pytest.approx(gap)
    assert vs["more_ci"][0] <= vs["more_pts"] <= vs["more_ci"][1]


@pytest.mark.slow
def test_the_layer_path_only_rescales_attribution_patching_where_outputs_are_renormalized(gemma, monkeypatch):
    """Gemma-3 normalizes each attention output before the residual stream: scaling all of a layer's
    heads by 1 - alpha changes nothing until alpha nears 1, so the layer path's score is attribution
    patching's times sum_k w_k / (1 - alpha_k) (3 for two Gauss points); the scorer warns there."""
    from lens_bias import bridge as bridge_mod

    assert bridge_mod.renormalized_outputs(gemma)
    ps = build_pairs(["finance"]).sample(2, seed=1)
    atp = attribute(gemma, ps, components=["heads"], progress=False)
    on = {("heads", 5): torch.ones(gemma.cfg.n_heads, dtype=torch.bool)}
    ig = path_scores(gemma, ps.pairs, "js", "zero", None, ["heads"], on, steps=2)[("heads", 5)].mean(0)
    nodes, weights = quadrature(2)
    scale = sum(w / (1 - a) for a, w in zip(nodes, weights, strict=True))
    assert scale == pytest.approx(3.0)
    assert torch.allclose(ig.double(), scale * atp.heads[5].double(), rtol=0.02, atol=1e-7)
    # the warning, on a small model made to look renormalized
    tiny = load_model("tiny-random", device="cpu")
    monkeypatch.setattr("lens_bias.attribution.integrated.renormalized_outputs", lambda b: True)
    with pytest.warns(UserWarning, match="only rescales attribution patching"):
        integrated_gradients(tiny, ps, steps=1, path="layer", progress=False)
