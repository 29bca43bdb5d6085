"""The mitigation arena on tiny-random: every method on the same measures, paired against the
unmodified model and the reference, folds checked, a table, a Pareto figure, the CLI."""

import json

import pytest
from typer.testing import CliRunner

from lens_bias import build_pairs
from lens_bias.cli.main import app
from lens_bias.measures.evaluation import EvalSet
from lens_bias.report.figures import arena_pareto
from lens_bias.studies import arena as A


@pytest.fixture(scope="module")
def split():
    return build_pairs(["hiring", "finance"]).sample(6, seed=0).split(by="template", held_out=0.34, seed=0)


@pytest.fixture(scope="module")
def result(tiny, split):
    train, held = split
    ev = EvalSet(pairs=held, neutral=["The weather was mild and the river ran slowly.",
                                      "She put the book back on the shelf."])
    return A.arena(tiny, train, ev, ["random", "direction", "leace"], budget="2%", measures=(), lodo=True,
                   progress=False)


def test_every_method_is_measured_against_before_and_the_reference(result):
    assert list(result["methods"]) == ["prune", "random", "direction", "leace"]  # the reference first
    for name, rec in result["methods"].items():
        assert rec["tests"]["js"]["before"] == pytest.approx(result["before"]["js"])
        assert rec["tests"]["js"]["after"] == pytest.approx(rec["metrics"]["js"])
        assert ("vs_reference" in rec) == (name != "prune")
        assert rec["lodo"]["js"]["n"] == result["n_held"]
        assert set(rec["lodo"]["by_domain"]) == {"finance", "hiring"}
    ref = result["methods"]["prune"]["metrics"]["js"]
    assert result["methods"]["random"]["vs_reference"]["js"]["before"] == pytest.approx(ref)
    json.dumps(result)


def test_leave_one_domain_out_never_fits_on_the_domain_it_measures(tiny, split, monkeypatch):
    """Each left-out domain: every method is fitted from one shared context without that domain, and
    measured on that domain's held-out pairs only."""
    from lens_bias.mitigation.base import FitContext
    from lens_bias.mitigation.registry import fit

    train, held = split
    fits, measured = [], []
    real_evaluate = A.evaluate

    def spy_fit(name, ctx):
        fits.append((name, id(ctx), tuple(ctx.train.domains)))
        return fit(name, ctx)

    def spy_evaluate(bridge, ev, **kw):
        measured.append(tuple(ev.pairs.domains))
        return real_evaluate(bridge, ev, **kw)

    monkeypatch.setattr(A, "fit", spy_fit)
    monkeypatch.setattr(A, "evaluate", spy_evaluate)
    ev = EvalSet(pairs=held)
    before = real_evaluate(tiny, ev, per_item=True, lambada=False, sentences=False)
    out = A.leave_one_domain_out(FitContext(tiny, train, "2%"), ["random", "direction"], ev, before, 16)
    assert [(n, d) for n, _, d in fits] == [("random", ("hiring",)), ("direction", ("hiring",)),
                                             ("random", ("finance",)), ("direction", ("finance",))]
    assert fits[0][1] == fits[1][1] != fits[2][1] == fits[3][1]  # one context a left-out domain
    assert measured == [("finance",), ("finance",), ("hiring",), ("hiring",)]
    assert out["random"]["js"]["n"] == len(held)
    assert set(out["direction"]["by_domain"]) == {"finance", "hiring"}


def test_folds_are_checked_and_simulated_methods_say_why(result):
    exp = {n: r["export"] for n, r in result["methods"].items()}
    assert exp["prune"]["ok"] and exp["random"]["ok"] and exp["direction"]["ok"]
    assert exp["leace"]["ok"] is None and "earlier layers" in exp["leace"]["why"]


def test_table_and_figure_have_one_row_and_point_per_method(result):
    rows, header = A.table(result)
    assert [r[0] for r in rows] == list(result["methods"]) and len(rows[0]) == len(header)
    assert rows[3][2] == "no (simulated)"
    fig = arena_pareto({**result, "methods": {n: {**r, "tests": {**r["tests"], "wikitext_ppl": {
        "pct": 1.0, "pct_ci": [0.5, 1.5]}}} for n, r in result["methods"].items()}})
    assert len(fig.data) == 4 and fig.data[3].marker.symbol == "circle-open"


def test_winners_move_toward_no_preference_beyond_noise_within_the_perplexity_limit():
    def t(before, after, noise=False):
        return {"before": before, "after": after, "within_noise": noise, "p": 0.01, "pct": None}
    res = {"methods": {
        "a": {"tests": {"js": t(1.0, 0.6), "crows_black_rate": t(64.0, 58.0), "wikitext_ppl": {"pct": 1.0}}},
        "b": {"tests": {"js": t(1.0, 0.3), "crows_black_rate": t(64.0, 40.0), "wikitext_ppl": {"pct": 5.0}}},
        "c": {"tests": {"js": t(1.0, 0.5, noise=True), "crows_black_rate": t(64.0, 38.0),
                        "wikitext_ppl": {"pct": 0.0}}}}}
    w = A.winners(res)
    assert w["js"]["method"] == "a"  # b costs too much perplexity, c is within noise
    assert w["crows_black_rate"]["method"] == "a"  # c overshoots: |38 - 50| > |64 - 50| is no gain
    assert w["seqgap"] is None


def test_cli_arena_writes_json_and_html_and_refuses_an_unknown_method(tmp_path):
    out = tmp_path / "arena"
    args = ["experiment", "arena", "--model", "tiny-random", "--per-domain", "4", "--held-per-domain", "3",
            "--domains", "finance,hiring", "--methods", "random,steer", "--measures", "", "--budget", "2%",
            "-q", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "result.json").read_text())
    assert list(res["methods"]) == ["prune", "random", "steer"] and "winners" in res
    assert (out / "report.html").read_text().count("plotly-graph-div") == 1
    bad = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "bad"), "--methods", "pruning"])
    assert bad.exit_code != 0 and "method must be one of" in bad.output
    assert not (tmp_path / "bad").exists()


def test_cli_arena_exports_into_its_own_output_folder(tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "arena"
    args = ["experiment", "arena", "--model", "tiny-random", "--per-domain", "4", "--held-per-domain", "3",
            "--domains", "finance,hiring", "--methods", "random,leace", "--measures", "", "--budget", "2%",
            "-q", "--export", "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "result.json").read_text())
    assert res["methods"]["random"]["export"]["folder"] == "models/random"
    assert res["methods"]["leace"]["export"]["ok"] is None  # simulated only: nothing written
    assert sorted(p.name for p in (out / "models").iterdir()) == ["prune", "random"]
    AutoModelForCausalLM.from_pretrained(out / "models" / "random")
    assert [p.name for p in tmp_path.iterdir()] == ["arena"]
