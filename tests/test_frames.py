"""DataFrames of lens_bias results on tiny-random: every table holds exactly the values it came
from, and without pandas each one fails with the install command."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from lens_bias import build_pairs, frames, measure
from lens_bias.attribution.scorers import baseline_scores
from lens_bias.errors import LensBiasError
from lens_bias.measures import evaluation
from lens_bias.measures.metrics import PairMetrics
from lens_bias.prompts import splits
from lens_bias.scores import Scores
from lens_bias.studies import curve

DOMAINS = ["finance", "hiring"]


def same(a, b) -> bool:
    """Equal, with None and NaN the same missing value (a table holds NaN for a missing number)."""
    missing = [x is None or (isinstance(x, float) and math.isnan(x)) for x in (a, b)]
    return all(missing) if any(missing) else a == b


def cell(df, i: int, col: str):
    v = df[col].iloc[i]
    return v.item() if hasattr(v, "item") else v


@pytest.fixture(scope="module")
def split():
    return splits.template_split(build_pairs(DOMAINS).sample(6, seed=0), seed=0)


@pytest.fixture(scope="module")
def ev(split):
    return evaluation.EvalSet(pairs=split[1], neutral=["The weather was mild and the river ran slowly."])


def test_pair_metrics_one_row_per_pair(tiny, split):
    m = measure(tiny, split[0], progress=False)
    df = m.to_pandas()
    assert list(df.columns) == ["id", "domain", "template", "js", "logit_gap"] and len(df) == len(m.ids)
    assert (df["id"].tolist() == m.ids and df["domain"].tolist() == m.domains
            and df["template"].tolist() == m.templates)
    for metric, vals in m.values.items():
        assert all(same(cell(df, i, metric), v) for i, v in enumerate(vals))
    assert df["js"].tolist() == m.values["js"]  # floats kept bit for bit
    bare = PairMetrics(["a"], ["hiring"], {"js": [0.5]}).to_pandas()  # templates unknown
    assert bare["template"].tolist() == [None]


def test_scores_pivot_back_to_the_tensors(tiny, split):
    s = baseline_scores(tiny, split[0], "actdiff")
    s.by_domain = {d: {"neurons": torch.randn(2, 128, dtype=torch.float64), "heads": s.by_domain[d]["heads"]}
                   for d in s.by_domain}
    df = s.to_pandas()
    assert list(df.columns) == ["kind", "layer", "index", "domain", "score"]
    assert set(df["domain"]) == {"all", *DOMAINS}
    assert len(df) == (1 + len(DOMAINS)) * (s.neurons.numel() + s.heads.numel())
    for domain, tensors in [("all", {"neurons": s.neurons, "heads": s.heads}), *s.by_domain.items()]:
        for kind, t in tensors.items():
            part = df[(df["domain"] == domain) & (df["kind"] == kind)]
            back = part.pivot(index="layer", columns="index", values="score")
            assert (list(back.index) == list(range(t.shape[0]))
                    and list(back.columns) == list(range(t.shape[1])))
            assert torch.equal(torch.tensor(back.to_numpy(), dtype=t.dtype), t), (domain, kind)
    only_heads = Scores(None, torch.ones(1, 2), {}, {}).to_pandas()
    assert only_heads.values.tolist() == [["heads", 0, 0, "all", 1.0], ["heads", 0, 1, "all", 1.0]]
    assert list(Scores(None, None).to_pandas().columns) == ["kind", "layer", "index", "domain", "score"]


def test_curve_frame_holds_every_record(tiny, split, ev):
    s = baseline_scores(tiny, split[0], "random")
    before = evaluation.evaluate(tiny, ev, None, lambada=False, per_item=True, sentences=False)
    rows = curve.pruning_curve(tiny, ev, {"random": s}, kinds=("heads",), budgets=("10%", "30%"),
                               progress=False, before=before)
    df = frames.curve_frame(rows)
    assert len(df) == len(rows) == 4  # 2 budgets, and the random control
    for i, r in enumerate(rows):
        for k, v in r.items():
            if k == "by_domain":
                for d, dv in v.items():
                    assert all(same(cell(df, i, f"by_domain_{d}_{kk}"), vv) for kk, vv in dv.items())
            elif k == "js_reduction_ci":
                lo, hi = v if v is not None else (None, None)
                assert same(cell(df, i, "js_reduction_lo"), lo) and same(cell(df, i, "js_reduction_hi"), hi)
            else:
                assert same(cell(df, i, k), v), k


def test_validation_frame_one_row_per_unit(tiny, split):
    from lens_bias.attribution.patching import attribute
    from lens_bias.attribution.validation import validate
    from lens_bias.hooks.components import Component

    pairs = split[0].sample(2)
    scores = attribute(tiny, pairs, progress=False)
    res = validate(tiny, pairs, scores, k=2, n_random=2, kinds=("heads",), progress=False)
    df = frames.validation_frame(res)
    r = res["heads"]
    assert (list(df.columns) == ["kind", "layer", "index", "part", "predicted", "exact"]
            and len(df) == r["n"] == 4)
    assert df[["layer", "index"]].values.tolist() == r["components"]
    assert df["predicted"].tolist() == r["predicted"] and df["exact"].tolist() == r["exact"]
    assert df["part"].tolist() == ["top", "top", "random", "random"]
    comps = [Component("heads", 0, 1), Component("heads", 1, 3)]
    given = frames.validation_frame(validate(tiny, pairs, scores, kinds=("heads",), progress=False,
                                             components={"heads": comps}))
    assert given[["layer", "index", "part"]].values.tolist() == [[0, 1, "given"], [1, 3, "given"]]


def test_transfer_frame_rows_and_pooled(tiny, split, ev):
    from lens_bias.studies.transfer import leave_one_domain_out

    res = leave_one_domain_out(tiny, split[0], ev, budget="5%", max_cost_quantile=None, scorer="random",
                               progress=False)
    df = frames.transfer_frame(res)
    assert df["domain"].tolist() == [*DOMAINS, "pooled"]
    for i, r in enumerate([*res["rows"], res["pooled"]]):
        for k in ("n_pairs", "js_before", "js_left_out", "js_all"):
            assert same(cell(df, i, k), r[k])
        for mask in ("left_out", "all"):
            c = r[mask]
            lo, hi = c["reduction_ci"] or (None, None)
            assert same(cell(df, i, f"{mask}_reduction_pct"), c["reduction_pct"])
            assert (same(cell(df, i, f"{mask}_reduction_lo"), lo)
                    and same(cell(df, i, f"{mask}_reduction_hi"), hi))
            assert (same(cell(df, i, f"{mask}_p"), c["p"])
                    and cell(df, i, f"{mask}_within_noise") == c["within_noise"])
        assert same(cell(df, i, "loss_points"), r["loss"]["points"])
    assert df["jaccard_with_all"].tolist()[:-1] == [r["jaccard_with_all"] for r in res["rows"]]


def test_selectors_frame_flattens_the_tests(tiny, split, ev):
    from lens_bias.attribution.per_template import attribute_templates
    from lens_bias.selection.registry import SelectorSpec
    from lens_bias.studies.selectors import compare_selectors

    ts = attribute_templates(tiny, split[0], progress=False)
    res = compare_selectors(tiny, ts, split[0], ev, [SelectorSpec("oneshot", None)], ["5%", "10%"], None,
                            ev.neutral, lodo_budgets=("5%",), heads_at=(), progress=False)
    df = frames.selectors_frame(res)
    assert len(df) == len(res["rows"]) == 2
    for i, r in enumerate(res["rows"]):
        for key, c in r["tests"].items():
            for field, v in c.items():
                if field.endswith("_ci"):
                    lo, hi = v or (None, None)
                    assert (same(cell(df, i, f"{key}_{field[:-3]}_lo"), lo)
                            and same(cell(df, i, f"{key}_{field[:-3]}_hi"), hi))
                else:
                    assert same(cell(df, i, f"{key}_{field}"), v), (key, field)
        assert same(cell(df, i, "train_reduction_pct"), r["train"]["reduction_pct"])
        assert cell(df, i, "budget") == r["budget"] and cell(df, i, "n_pruned") == r["n_pruned"]
    assert {"js_pct", "js_pct_lo", "js_pct_hi", "js_p", "js_within_noise"} <= set(df.columns)
    # each row is the first at its budget
    assert "held_out_js" not in df.columns and df["vs_first"].isna().all()
    assert all(len(r["held_out_js"]) == len(ev.pairs) for r in res["rows"])
    lodo = res["rows"][0]["lodo"]["pooled"]
    assert same(cell(df, 0, "lodo_pooled_reduction_pct"), lodo["reduction_pct"])
    assert math.isnan(cell(df, 1, "lodo_pooled_reduction_pct"))  # no LODO at 10 %
    # the figures of the same result: the frontier's points and the train / held-out gap are the rows'
    from lens_bias.report import figures as viz
    fr = viz.selector_frontier(res).data[0]
    assert list(fr.y) == [-r["tests"]["js"]["pct"] for r in res["rows"]]
    assert list(fr.x) == [r["tests"]["wikitext_ppl"]["pct"] if "wikitext_ppl" in r["tests"]
                          else r["kl_neutral"] for r in res["rows"]]
    train, held = viz.train_vs_held_out(res).data
    assert list(train.x) == [r["train"]["reduction_pct"] for r in res["rows"]]
    assert list(held.x) == [-r["tests"]["js"]["pct"] for r in res["rows"]] and len(held.y) == 2


def test_flatten_refuses_two_values_for_one_column():
    with pytest.raises(LensBiasError, match="js_p"):
        frames.flatten({"js": {"p": 0.1}, "js_p": 0.2})


def test_without_pandas_every_table_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
    m = PairMetrics(["a"], ["hiring"], {"js": [0.5]})
    s = Scores(torch.ones(1, 2), None)
    calls = [m.to_pandas, s.to_pandas, lambda: frames.curve_frame([]), lambda: frames.validation_frame({}),
             lambda: frames.transfer_frame({"rows": [], "pooled": {}}),
             lambda: frames.selectors_frame({"rows": []})]
    for call in calls:
        with pytest.raises(LensBiasError, match=r"needs pandas.*pip install 'lens_bias\[pandas\]'"):
            call()
