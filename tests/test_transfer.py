"""Leave-one-domain-out transfer on tiny-random: exact per-domain score removal, the result's
consistency, the left-out domain never scored, and the CLI command."""

import json

import pytest
import torch
from typer.testing import CliRunner

from lens_bias import build_pairs
from lens_bias.attribution import scorers as baselines
from lens_bias.attribution.patching import attribute
from lens_bias.attribution.scorers import baseline_scores
from lens_bias.cli.main import app
from lens_bias.errors import LensBiasError
from lens_bias.measures.evaluation import EvalSet
from lens_bias.prompts.splits import template_split
from lens_bias.scores import Scores
from lens_bias.studies import transfer as tr

DOMAINS = ["commerce", "finance", "hiring"]


@pytest.fixture(scope="module")
def split():
    return template_split(build_pairs(DOMAINS).sample(8, seed=0), seed=0)


@pytest.fixture(scope="module")
def ev(split):
    return EvalSet(pairs=split[1], neutral=["The weather was mild and the river ran slowly.",
                                            "She put the book back on the shelf."])


def _others(train, d):
    return train.filter(domains=[x for x in train.domains if x != d])


@pytest.mark.parametrize("estimator", ["ablate", "patch"])
def test_scores_without_equals_scoring_without_the_domain(tiny, split, estimator):
    train = split[0]
    full = attribute(tiny, train, estimator=estimator, progress=False)
    assert full.settings["n_pairs_by_domain"] == {d: len(train.filter(domains=[d])) for d in DOMAINS}
    for d in DOMAINS:
        got, want = (tr.scores_without(full, d),
                     attribute(tiny, _others(train, d), estimator=estimator, progress=False))
        for kind in ("neurons", "heads"):
            scale = float(want.get(kind).abs().max())
            assert scale > 0
            # exact in arithmetic, but `want` batches other pairs together (other padding) in this float32
            # model: per-pair terms a * g are summed over positions in float32 with cancellation, so the
            # error scales with the scores' scale: measured 1e-7 of it, 4e-6 under a 1-ulp perturbation of
            # the attention softmax. atol 1e-4 of the scale leaves 25x; a 1e-3 error or a pair left in fails
            torch.testing.assert_close(got.get(kind), want.get(kind), rtol=1e-5, atol=1e-4 * scale)
        assert got.settings["n_pairs_by_domain"] == want.settings["n_pairs_by_domain"]
        assert (got.settings["n_pairs"] == want.settings["n_pairs"]
                and got.settings["domains"] == want.settings["domains"])
        # mean float32 JS from other batches: 7e-7 relative under a 1-ulp softmax perturbation
        assert got.settings["metric_before"] == pytest.approx(want.settings["metric_before"], rel=1e-5)
        assert sorted(got.by_domain) == sorted(want.by_domain) and d not in got.by_domain


def test_scores_without_is_exact_for_a_baseline_too(tiny, split):
    train = split[0]
    full = baseline_scores(tiny, train, "actdiff")
    got, want = tr.scores_without(full, "hiring"), baseline_scores(tiny, _others(train, "hiring"), "actdiff")
    # float32 means of |a_B - a_W| regrouped by domain and batched otherwise (other padding): each
    # activation carries float32 error of the size of the activations, not of their difference, so the
    # bound scales with the largest score (measured 1.2e-7 at 1.7, a fixed atol of 1e-7 was below one
    # ulp there; 1e-6 at 0.85 under 1-ulp noise on every attention probability). 1e-5 of the scale leaves
    # ~10x; a 1e-3 error on the large scores or a dropped domain fails
    for kind in ("neurons", "heads"):
        scale = float(want.get(kind).abs().max())
        torch.testing.assert_close(got.get(kind), want.get(kind), rtol=1e-5, atol=1e-5 * scale)


def test_scores_without_refuses_what_is_not_exact(tiny, split):
    train = split[0]
    gd = attribute(tiny, train, graddrop=True, progress=False)
    with pytest.raises(tr.NotSeparable, match="GradDrop"):
        tr.scores_without(gd, "finance")
    plain = attribute(tiny, train, progress=False)
    no_counts = Scores(plain.neurons, plain.heads, plain.by_domain,
                       {k: v for k, v in plain.settings.items() if k != "n_pairs_by_domain"})
    with pytest.raises(tr.NotSeparable, match="pair counts"):
        tr.scores_without(no_counts, "finance")
    with pytest.raises(tr.NotSeparable, match="not a mean over pairs"):
        tr.scores_without(baseline_scores(tiny, train, "random"), "finance")
    with pytest.raises(LensBiasError, match="no scores for domain 'policing'"):
        tr.scores_without(plain, "policing")
    assert issubclass(tr.NotSeparable, LensBiasError)


def _check_changes(c: dict) -> None:
    lo, hi = c["reduction_ci"]
    assert lo - 1e-9 <= c["reduction_pct"] <= hi + 1e-9
    assert 0 < c["p"] <= 1 and isinstance(c["within_noise"], bool)
    assert c["within_noise"] == (lo <= 0 <= hi or c["p"] >= 0.05)


def test_leave_one_domain_out_rows_pooled_and_scoring_set(tiny, split, ev, monkeypatch):
    train, held = split
    calls = []
    real = tr.evaluate

    def spy(bridge, evs, mask=None, *a, **k):
        calls.append(set(evs.pairs.domains))
        return real(bridge, evs, mask, *a, **k)

    monkeypatch.setattr(tr, "evaluate", spy)
    res = tr.leave_one_domain_out(tiny, train, ev, budget="5%", progress=False)
    json.dumps(res)
    assert res["domains"] == DOMAINS and [r["domain"] for r in res["rows"]] == DOMAINS
    assert calls == [{d} for d in DOMAINS for _ in range(3)]  # before, left out, all: each on its own domain
    n = round(0.05 * tiny.cfg.n_layers * tiny.cfg.d_mlp)
    assert set(res["n_pruned"].values()) == {n}
    for r in res["rows"]:
        d = r["domain"]
        # the leave-out mask came from the other domains' train pairs only
        assert d not in r["scoring_domains"] and not r["rescored"]
        assert res["scoring"][d]["n_pairs_by_domain"] == {x: len(train.filter(domains=[x]))
                                                          for x in DOMAINS if x != d}
        assert r["n_pairs"] == res["n_pairs"][d] == len(held.filter(domains=[d]))
        for key in ("left_out", "all"):
            _check_changes(r[key])
            js = r["js_left_out" if key == "left_out" else "js_all"]
            assert r[key]["reduction_pct"] == pytest.approx(100 * (r["js_before"] - js) / r["js_before"])
        assert r["loss"]["points"] == pytest.approx(
            r["all"]["reduction_pct"] - r["left_out"]["reduction_pct"])
        assert 0 <= r["jaccard_with_all"] <= 1 and r["jaccard_with_all"] == res["jaccard_with_all"][d]
    p, rows = res["pooled"], res["rows"]
    total = sum(r["n_pairs"] for r in rows)
    assert p["n_pairs"] == total == len(held)
    for key in ("js_before", "js_left_out", "js_all"):
        assert p[key] == pytest.approx(sum(r["n_pairs"] * r[key] for r in rows) / total)
    for key in ("left_out", "all"):
        _check_changes(p[key])
        assert p[f"mean_over_domains_{key}_pct"] == pytest.approx(
            sum(r[key]["reduction_pct"] for r in rows) / 3)
    assert p["loss"]["points"] == pytest.approx(p["all"]["reduction_pct"] - p["left_out"]["reduction_pct"])
    assert p["n_templates"] == len(held.templates) and p["n_templates"] == sum(r["n_templates"] for r in rows)


def test_leave_one_domain_out_rescores_without_the_domain_when_not_separable(tiny, split, ev, monkeypatch):
    """GradDrop scores cannot be split: each domain is rescored on the other domains' pairs only,
    with the same settings."""
    train = split[0]
    gd = attribute(tiny, train, graddrop=True, progress=False)
    scored = []
    real = baselines.score

    def spy(bridge, pairs, scorer="ablate", **kw):
        scored.append((set(pairs.domains), scorer, kw.get("graddrop")))
        return real(bridge, pairs, scorer, **kw)

    monkeypatch.setattr(baselines, "score", spy)
    res = tr.leave_one_domain_out(tiny, train, ev, budget="5%", max_cost_quantile=None, progress=False,
                                  scores=gd)
    assert scored == [(set(DOMAINS) - {d}, "ablate", True) for d in DOMAINS]
    assert all(r["rescored"] and r["domain"] not in r["scoring_domains"] for r in res["rows"])


def test_leave_one_domain_out_refuses_bad_inputs(tiny, split, ev):
    train, held = split
    with pytest.raises(LensBiasError, match="share templates"):
        tr.leave_one_domain_out(tiny, train, EvalSet(pairs=train), progress=False)
    with pytest.raises(LensBiasError, match="at least two domains"):
        tr.leave_one_domain_out(tiny, train.filter(domains=["finance"]),
                                EvalSet(pairs=held.filter(domains=["finance"])), progress=False)
    with pytest.raises(LensBiasError, match="has no train pairs"):
        tr.leave_one_domain_out(tiny, train.filter(domains=["finance", "hiring"]), ev, progress=False)


def test_unseen_loss_sign_and_noise():
    r = tr.unseen_loss([0.02] * 6, [0.02] * 6, [0.01] * 6, ["a", "a", "b", "b", "c", "c"])
    assert r["points"] == pytest.approx(50.0) and r["ci"] == pytest.approx([50.0, 50.0])
    assert r["p"] == pytest.approx(0.25) and r["within_noise"]  # 3 templates: p >= 2/8


def test_cli_transfer_writes_json_and_html(tmp_path):
    out = tmp_path / "lodo"
    args = ["experiment", "transfer", "--model", "tiny-random", "--per-domain", "4", "--held-per-domain",
            "3", "--budget", "4%", "--domains", "finance,commerce,hiring", "--max-cost-quantile", "1", "-q",
            "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "result.json").read_text())
    assert res["domains"] == DOMAINS and res["model"] == "tiny-random" and "pooled" in res
    assert "pooled" in r.output and "an unseen domain loses" in r.output
    html = (out / "report.html").read_text()
    assert (html.count("plotly-graph-div") >= 1 and "within noise" in html
            and "learned without the domain" in html)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert [p.name for p in tmp_path.iterdir()] == ["lodo"]
