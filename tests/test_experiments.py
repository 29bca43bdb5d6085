"""Experiment code on tiny-random: shapes, parameter matching, held-out-only evaluation."""

import json

import pytest
import torch
from typer.testing import CliRunner

from lens_bias import build_pairs, load_model
from lens_bias.bridge import params_per_unit
from lens_bias.cli.main import app
from lens_bias.errors import LensBiasError
from lens_bias.measures import evaluation
from lens_bias.prompts import splits
from lens_bias.studies import curve, generalize


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def split():
    return build_pairs().sample(6, seed=0).split(by="template", held_out=0.25, seed=0)


@pytest.fixture(scope="module")
def ev(split):
    return evaluation.EvalSet(pairs=split[1], neutral=["The weather was mild and the river ran slowly.",
                                               "She put the book back on the shelf."])


def test_scorer_comparison_is_parameter_matched(tiny, split, ev):
    res = curve.compare_scorers(tiny, split[0], ev, scorers=("ablate", "actdiff", "random"),
                             budgets=("1%params", "2%params"), max_cost_quantile=None, progress=False)
    rows = res["rows"]
    assert len(rows) == 3 * 2 * 2
    slack = (params_per_unit(tiny, "neurons") + params_per_unit(tiny, "heads")) / 2
    for scorer in ("ablate", "actdiff", "random"):
        for b in ("1%params", "2%params"):
            n, h = (next(r for r in rows if r["scorer"] == scorer and r["kind"] == k and r["budget"] == b)
                    for k in ("neurons", "heads"))
            assert n["n_units"] > h["n_units"]  # counts differ ...
            assert abs(n["params"] - h["params"]) <= slack  # ... parameters do not
    for r in rows:
        assert r["js_reduction_pct"] == pytest.approx(
            100 * (res["before"]["js"] - r["js"]) / res["before"]["js"])
        lo, hi = r["js_reduction_ci"]
        assert lo <= r["js_reduction_pct"] <= hi and 0 < r["js_p"] <= 1
        assert r["js_within_noise"] == (lo <= 0 <= hi or r["js_p"] >= 0.05)
        assert "per_item" not in r
    assert "per_item" not in res["before"]
    json.dumps(res)  # the result.json of `experiment curve`
    w = res["winners"]
    assert set(w["best_scorer"]) == {"neurons", "heads"}
    assert set(w["neurons_minus_heads_pct_points"]) == {"ablate", "actdiff", "random"}


def test_the_curve_takes_the_user_measures(tiny, split):
    """``measures``: the knowledge probe at every point, with its change, interval and test against
    the unpruned model; an unknown measure is refused naming the valid ones."""
    from lens_bias.errors import ChoiceError
    from lens_bias.prompts.knowledge import load_knowledge

    ev_k = evaluation.EvalSet(pairs=split[1], knowledge=load_knowledge()[:16])
    res = curve.compare_scorers(tiny, split[0], ev_k, scorers=("random",), kinds=("neurons",),
                                budgets=("2%params",), max_cost_quantile=None, progress=False,
                                measures=("knowledge",))
    [row] = res["rows"]
    assert res["before"]["know_n"] == 16 and row["know_n"] == 16
    assert res["settings"]["measures"] == ["knowledge"]
    t = row["tests"]["know_logprob"]
    assert t["before"] == pytest.approx(res["before"]["know_logprob"]) and t["after"] == pytest.approx(
        row["know_logprob"])
    # the first 16 facts are about Black people: no White-facts score
    assert set(row["tests"]) == {"know_logprob", "know_logprob_black", "know_top1", "know_topk"}
    json.dumps(res)
    with pytest.raises(ChoiceError, match="bbq, generations, knowledge"):
        curve.pruning_curve(tiny, ev_k, {}, measures=("crows",))


def test_generalization_evaluates_only_held_out_templates(tiny, split, ev, monkeypatch):
    train, held = split
    seen = []
    real = evaluation.evaluate

    def spy(bridge, evs, mask=None, *a, **k):
        seen.append(set(evs.pairs.templates))
        return real(bridge, evs, mask, *a, **k)

    monkeypatch.setattr(generalize, "evaluate", spy)
    gm = generalize.generalization_matrix(tiny, train, ev, budget="5%", max_cost_quantile=None,
                                          progress=False)
    doms = train.domains
    assert len(doms) >= 5 and gm["rows"] == doms + ["all"] and gm["test_domains"] == held.domains
    assert len(seen) == 1 + len(gm["rows"])  # before + one per learned-on row
    for templates in seen:
        assert templates and not templates & set(train.templates)
    red = gm["reduction_pct"]
    for t in gm["rows"]:
        for d in gm["test_domains"]:
            b, a = gm["js_before"][d], gm["js_after"][t][d]
            assert red[t][d] == pytest.approx(100 * (b - a) / b)
            lo, hi = gm["reduction_ci"][t][d]
            assert lo - 1e-9 <= red[t][d] <= hi + 1e-9 and isinstance(gm["within_noise"][t][d], bool)
    diag = [red[d][d] for d in doms]
    assert gm["in_domain_mean_pct"] == pytest.approx(sum(diag) / len(diag))
    off = [red[t][d] for t in doms for d in doms if d != t]
    assert gm["cross_domain_mean_pct"] == pytest.approx(sum(off) / len(off))
    n = round(0.05 * tiny.cfg.n_layers * tiny.cfg.d_mlp)
    assert all(len(p) == n for p in gm["pruned"].values())


def test_generalization_refuses_shared_templates(tiny, split):
    train, _ = split
    with pytest.raises(LensBiasError, match="share templates"):
        generalize.generalization_matrix(tiny, train, evaluation.EvalSet(pairs=train), progress=False)


def test_domain_scores_come_from_their_own_pairs(tiny, split):
    """A domain's mask is selected from that domain's scores alone."""
    from lens_bias.attribution.patching import attribute
    from lens_bias.selection.topk import select

    train = split[0]
    masks = generalize.domain_masks(tiny, train, ["finance", "hiring"], "3%", max_cost_quantile=None,
                                    progress=False)
    alone = attribute(tiny, train.filter(domains=["finance"]), progress=False)
    want = select(alone, "3%", bridge=tiny)
    assert masks["finance"].pruned("neurons") == want.pruned("neurons")
    assert torch.equal(masks["all"].neurons,
                       select(attribute(tiny, train.filter(domains=["finance", "hiring"]), progress=False),
                              "3%", bridge=tiny).neurons)


def test_overlap_jaccard_and_layers():
    ov = generalize.overlap({"a": [(0, 1), (0, 2), (1, 3)], "b": [(0, 2), (1, 3), (1, 4)], "all": [(0, 1)]},
                            n_layers=2)
    assert ov["names"] == ["a", "b", "all"]
    assert ov["jaccard"][0][1] == pytest.approx(2 / 4) and ov["jaccard"][0][0] == 1
    assert ov["jaccard"][0][2] == pytest.approx(1 / 3)
    assert ov["by_layer"]["a"] == [2, 1] and ov["by_layer"]["b"] == [1, 2]
    assert ov["mean_offdiag_jaccard"] == pytest.approx(0.5)  # "all" is not a peer


def test_cli_generalize_writes_json_and_html(tmp_path):
    out = tmp_path / "gen"
    args = ["experiment", "generalize", "--model", "tiny-random", "--per-domain", "4", "--held-per-domain",
            "3", "--budget", "4%", "--domains", "finance,commerce,hiring", "--max-cost-quantile", "1", "-q",
            "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "result.json").read_text())
    assert res["rows"] == ["commerce", "finance", "hiring", "all"]
    assert "in-domain mean" in r.output
    html = (out / "report.html").read_text()
    assert html.count("plotly-graph-div") >= 2
    # a cell within noise shows its number in parentheses (per domain, 1 held-out template: always)
    assert all(res["within_noise"]["all"].values()) and "within noise" in html
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert [p.name for p in tmp_path.iterdir()] == ["gen"]


def test_curve_evaluates_each_distinct_mask_once(tiny, ev, monkeypatch):
    """0.1 %, 0.5 % and 1 % of the tiny model's 8 heads all round to one head: one evaluation,
    three identical records (budget apart). Every distinct selection is evaluated once."""
    from lens_bias.attribution.patching import attribute

    scores = attribute(tiny, build_pairs().sample(2), progress=False)
    calls = []
    real = evaluation.evaluate
    monkeypatch.setattr(curve, "evaluate", lambda *a, **k: calls.append(1) or real(*a, **k))
    rows = curve.pruning_curve(tiny, ev, {"ablate": scores}, budgets=("0.1%", "0.5%", "1%", "20%"),
                            random_control=False, progress=False)
    heads = [r for r in rows if r["kind"] == "heads"]
    assert [r["n_units"] for r in heads] == [1, 1, 1, 2]
    distinct = {(r["kind"], r["n_units"]) for r in rows}  # same scores, same count: same units
    assert len(calls) == len(distinct) < len(rows)
    first = {k: v for k, v in heads[0].items() if k != "budget"}
    assert all({k: v for k, v in r.items() if k != "budget"} == first for r in heads[1:3])


def test_evalset_reuses_the_kl_reference_until_the_weights_change(tiny, ev):
    """evaluate() computes the unpruned model's neutral-text log-probs once per EvalSet; its KL
    equals the two-pass KL; an in-place weight change makes it compute them again."""
    import torch

    from lens_bias.hooks.ablation import ablate
    from lens_bias.measures.capability import kl_from_reference
    from lens_bias.selection.topk import random_mask

    e = evaluation.EvalSet(pairs=ev.pairs, neutral=ev.neutral)
    mask = random_mask(tiny, 15, "neurons", seed=2)
    first = evaluation.evaluate(tiny, e, mask, lambada=False)["kl_neutral"]
    ref = e._kl_ref
    assert ref is not None
    assert evaluation.evaluate(tiny, e, mask, lambada=False)["kl_neutral"] == first
    assert e._kl_ref is ref  # reused
    assert first == pytest.approx(kl_from_reference(tiny, ev.neutral, lambda: ablate(tiny, mask)), rel=1e-6)
    with torch.no_grad():
        next(tiny.parameters()).mul_(1.0)
    evaluation.evaluate(tiny, e, mask, lambada=False)
    assert e._kl_ref is not ref  # recomputed after the in-place change


def test_template_split_needs_two_templates_per_domain():
    from lens_bias.prompts.pairs import PairSet

    one_template = PairSet([p for p in build_pairs(["finance"])
                            if p.template == build_pairs(["finance"])[0].template])
    with pytest.raises(LensBiasError, match="every domain needs at least two templates"):
        splits.template_split(one_template)
    train, held = splits.template_split(one_template, check=False)
    assert len(train) == len(one_template) and len(held) == 0


def test_figures_mark_points_and_cells_within_noise():
    from lens_bias.report import figures as viz

    rows = [{"scorer": "ablate", "kind": "neurons", "params_pct": x, "js": 0.02, "js_within_noise": w}
            for x, w in ((0.1, True), (0.5, False))]
    fig = viz.pruning_curves(rows, "js", "kl_neutral", before={"js": 0.03, "kl_neutral": 0.0})
    assert list(fig.data[0].marker.symbol) == ["circle", "circle-open", "circle"]
    gm = {"rows": ["a", "all"], "test_domains": ["a"],
          "reduction_pct": {"a": {"a": 40.0}, "all": {"a": 12.0}},
          "within_noise": {"a": {"a": False}, "all": {"a": True}}, "kind": "neurons", "budget": "1%",
          "scorer": "ablate"}
    fig = viz.generalization_heatmap(gm)
    assert ([list(r) for r in fig.data[0].text] == [["40"], ["(12)"]]
            and "within noise" in fig.layout.title.text)
