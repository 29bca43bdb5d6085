"""The mitigation arena: every method of :mod:`lens_bias.mitigation` fitted on the same train pairs and
judged on the same held-out measures, each change with its 95 % interval and paired test, against
the unmodified model and against a reference method (``run``'s default pruning).

Data flow::

    train pairs --fit--> Intervention --hooks--> evaluate(held-out set) --> changes vs before, vs reference
                                      \\--fold--> HF model --check vs hooks--> (export)

:func:`arena` returns ``result.json``'s content: ``before`` (the unmodified model's measures),
``methods`` (one record per method: fit, cost, measures, ``tests`` vs before, ``vs_reference``,
``export``, with ``--lodo`` its leave-one-domain-out JS change), and :func:`winners` (per bias
measure, the method that moves it furthest toward no preference beyond noise, at perplexity within
``ppl_limit`` %).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from ..bridge import Bridge
from ..measures.changes import evaluation_changes, run_tests, without_items
from ..measures.evaluation import EvalSet, evaluate
from ..mitigation.base import FitContext, Intervention
from ..mitigation.export import export_check
from ..mitigation.registry import check_method, fit
from ..prompts.pairs import PairSet
from ..stats import paired_change

DEFAULT_METHODS = ("prune", "prune-combined", "wanda", "random", "optipfair", "optipfair-0.45", "direction",
                   "leace", "steer", "steer-conditional")
USER_MEASURES = ("crows", "bbq", "generations", "knowledge")
# bias measures and what "no preference" is for each: a mean to lower, a rate toward 50, a signed gap toward 0
BIAS_MEASURES = {"js": "lower", "abs_logit_gap": "lower", "seqgap": "lower", "crows_black_rate": "50",
                 "crows_race_color_rate": "50", "bbq_s_dis": "0", "bbq_s_amb": "0",
                 "gen_pairs_sentiment_gap": "0", "gen_pairs_negative_gap": "0", "gen_pairs_crime_gap": "0",
                 "gen_bold_sentiment_gap": "0", "gen_bold_negative_gap": "0", "gen_bold_crime_gap": "0"}
PPL_LIMIT = 2.0  # % perplexity a method may cost and still win a measure


def _evaluate(bridge: Bridge, ev: EvalSet, hooks: list | None, measures: Sequence[str],
              batch_size: int) -> dict:
    return evaluate(bridge, ev, hooks=hooks or None, per_item=True, batch_size=batch_size,
                    crows="crows" in measures, bbq="bbq" in measures, generations="generations" in measures,
                    knowledge="knowledge" in measures)


def arena(bridge: Bridge, train: PairSet, ev: EvalSet, methods: Sequence[str] = DEFAULT_METHODS,
          budget: str = "0.5%", kind: str = "neurons", max_cost_quantile: float | None = 0.5, seed: int = 0,
          measures: Sequence[str] = USER_MEASURES, reference: str = "prune", lodo: bool = False,
          export_dir: str | Path | None = None, batch_size: int = 16, progress: bool = True) -> dict:
    """Fit, simulate, measure and check every method in ``methods`` (see the module docstring).
    ``export_dir``: write each method that folds and passes its check to ``export_dir/<method>/``
    (its record's ``export["folder"]`` is that path relative to ``export_dir``'s parent, the study's
    output folder)."""
    methods = list(dict.fromkeys(methods))
    for name in methods:
        check_method(name)
    if reference not in methods:
        methods.insert(0, reference)
    ctx = FitContext(bridge, train, budget, kind, max_cost_quantile, seed, batch_size, progress)
    _say(progress, "measuring the unmodified model")
    before = _evaluate(bridge, ev, None, measures, batch_size)
    afters: dict[str, dict] = {}
    records: dict[str, dict] = {}
    for name in methods:
        _say(progress, f"fitting {name}")
        iv = fit(name, ctx)
        _say(progress, f"measuring {name} ({iv.fit_s:.0f} s to fit)")
        afters[name] = _evaluate(bridge, ev, iv.hooks, measures, batch_size)
        records[name] = {**iv.record(), "metrics": without_items(afters[name]),
                         "tests": run_tests(before, afters[name], seed=seed),
                         "export": _export(bridge, iv, export_dir)}
    if lodo:
        _say(progress, "leave-one-domain-out: every method fitted without each domain")
        for name, rec in leave_one_domain_out(ctx, methods, ev, before, batch_size).items():
            records[name]["lodo"] = rec
    for name in methods:
        if name != reference:
            changes = evaluation_changes(afters[reference], afters[name], seed=seed)
            records[name]["vs_reference"] = {k: c.to_dict() for k, c in changes.items()}
    out = {"before": without_items(before), "methods": records, "reference": reference, "budget": budget,
           "kind": kind, "measures": list(measures), "n_train": len(train), "n_held": len(ev.pairs)}
    out["winners"] = winners(out)
    return out


def _export(bridge: Bridge, iv: Intervention, export_dir: str | Path | None) -> dict:
    """The export check of ``iv``, written to ``export_dir/<method>`` when asked and passed."""
    if export_dir is None:
        return export_check(bridge, iv)
    export_dir = Path(export_dir)
    rec = export_check(bridge, iv, export_dir / iv.method)
    if rec.get("folder"):
        rec["folder"] = Path(rec["folder"]).relative_to(export_dir.resolve().parent).as_posix()
    return rec


def leave_one_domain_out(ctx: FitContext, methods: Sequence[str], ev: EvalSet, before: dict,
                         batch_size: int) -> dict[str, dict | None]:
    """Fit every method of ``methods`` on every train domain but one and measure the held-out pairs of
    the one left out: per method, the pooled JS change over all domains (by template) and each
    domain's. The methods of one left-out domain share one fit context (its attribution, residuals and
    tuning set are computed once)."""
    domains = ctx.train.domains
    if len(domains) < 2:
        return {name: None for name in methods}
    bi = before["per_item"]
    js_b: list[float] = []
    groups: list[str] = []
    js_a: dict[str, list[float]] = {name: [] for name in methods}
    by_domain: dict[str, dict] = {name: {} for name in methods}
    for d in tqdm(domains, desc="leave-one-domain-out", disable=not ctx.progress):
        sub = FitContext(ctx.bridge, ctx.train.filter(domains=[x for x in domains if x != d]), ctx.budget,
                         ctx.kind, ctx.max_cost_quantile, ctx.seed, ctx.batch_size, False)
        held = EvalSet(ev.pairs.filter(domains=[d]))
        idx = [i for i, x in enumerate(bi["domains"]) if x == d]
        b, g = [bi["js"][i] for i in idx], [bi["templates"][i] for i in idx]
        for name in methods:
            iv: Intervention = fit(name, sub)
            a = evaluate(ctx.bridge, held, hooks=iv.hooks or None, per_item=True, lambada=False,
                         sentences=False, batch_size=batch_size)["per_item"]["js"]
            by_domain[name][d] = paired_change(b, a, g, seed=ctx.seed).to_dict()
            js_a[name] += a
        js_b += b
        groups += g
    return {name: {"js": paired_change(js_b, js_a[name], groups, seed=ctx.seed).to_dict(),
                   "by_domain": by_domain[name]} for name in methods}


def _toward(goal: str, t: dict) -> float | None:
    """How far a change moved a measure toward no preference (> 0: toward), in the measure's units."""
    b, a = t.get("before"), t.get("after")
    if b is None or a is None:
        return None
    if goal == "lower":
        return b - a
    target = 50.0 if goal == "50" else 0.0
    return abs(b - target) - abs(a - target)


def winners(result: dict, ppl_limit: float = PPL_LIMIT) -> dict:
    """Per bias measure: the method that moved it furthest toward no preference with a change beyond
    noise, among those whose WikiText-2 perplexity rose by at most ``ppl_limit`` % (all methods when
    perplexity was not measured); ``None`` when no method moved it beyond noise."""
    out = {}
    for key, goal in BIAS_MEASURES.items():
        best = None
        for name, rec in result["methods"].items():
            t, ppl = rec["tests"].get(key), rec["tests"].get("wikitext_ppl")
            if t is None or t.get("within_noise") is not False:
                continue
            if ppl is not None and ppl.get("pct") is not None and ppl["pct"] > ppl_limit:
                continue
            gain = _toward(goal, t)
            if gain is not None and gain > 0 and (best is None or gain > best[1]):
                best = (name, gain, t)
        out[key] = None if best is None else {"method": best[0], "before": best[2]["before"],
                                              "after": best[2]["after"], "diff_ci": best[2].get("diff_ci"),
                                              "pct": best[2].get("pct"), "p": best[2].get("p")}
    return out


def _say(progress: bool, what: str) -> None:
    if progress:
        print(f"[arena] {what} ...", flush=True)


# the arena table's measure columns: header, key of ``tests``, the change shown ("pct": reduction %,
# "diff", "pct_up": a rise in %), decimals
COLUMNS = (("held-out JS red. %", "js", "pct", 1), ("|logit gap| red. %", "abs_logit_gap", "pct", 1),
           ("seqgap red. %", "seqgap", "pct", 1), ("CrowS Black (pts)", "crows_black_rate", "diff", 1),
           ("BBQ s_DIS (pts)", "bbq_s_dis", "diff", 1), ("BBQ s_AMB (pts)", "bbq_s_amb", "diff", 1),
           ("written sentiment gap, pairs", "gen_pairs_sentiment_gap", "diff", 3),
           ("written sentiment gap, BOLD", "gen_bold_sentiment_gap", "diff", 3),
           ("knowledge top-k (pts)", "know_topk", "diff", 1), ("WikiText ppl %", "wikitext_ppl", "pct_up", 1))


def cell(t: dict | None, shown: str, digits: int) -> str:
    """One change as the table shows it (``format_cell``; ``pct_up``: a rise in %, e.g. perplexity)."""
    from .selectors import format_cell

    if shown == "pct_up":  # a rise shown as a rise (perplexity): the relative change, not negated
        return "-" if not t else format_cell({**t, "pct_up": t["pct"], "pct_up_ci": t["pct_ci"]}, "pct_up",
                                             digits)
    return format_cell(t, shown, digits)


def _cost(rec: dict) -> str:
    c = rec["cost"]
    parts = [f"{c[k]} {k.split('_')[0]}" for k in ("neurons_zeroed", "heads_zeroed") if c.get(k)]
    if c.get("rank_removed"):
        parts.append(f"rank {c['rank_removed']} removed")
    if c.get("vectors_added"):
        parts.append(f"{c['vectors_added']} vector(s) added")
    return ", ".join(parts) or "-"


def table(result: dict) -> tuple[list[list], list[str]]:
    """The arena table, ``(rows, header)``: one row per method (changes vs the unmodified model, ``~``
    within noise)."""
    header = ["method", "changes", "exported", *[c[0] for c in COLUMNS], "KL neutral", "LODO JS red. %",
              "fit s"]
    rows = []
    for name, rec in result["methods"].items():
        exp = rec["export"]
        exported = "no (simulated)" if exp["ok"] is None else "yes, checked" if exp["ok"] else "CHECK FAILED"
        kl = rec["tests"].get("kl_neutral", {}).get("after")
        lodo = rec.get("lodo")
        cells = [cell(rec["tests"].get(k), s, d) for _, k, s, d in COLUMNS]
        rows.append([name, _cost(rec), exported, *cells, None if kl is None else round(kl, 4),
                     cell(lodo["js"], "pct", 1) if lodo else "-", rec["fit_s"]])
    return rows, header


def reading(result: dict) -> str:
    """One paragraph: which method wins which bias measure (beyond noise, perplexity within the limit)."""
    won = {k: w for k, w in result["winners"].items() if w}
    if not won:
        return ("No method moved any bias measure toward no preference beyond noise at a perplexity cost "
                f"within +{PPL_LIMIT:g} %.")
    parts = [f"{k}: {w['method']} ({w['before']:.4g} -> {w['after']:.4g}, p = {w['p']:.3g})"
             for k, w in won.items()]
    measured = {k for r in result["methods"].values() for k in r["tests"]}
    lost = [k for k, w in result["winners"].items() if not w and k in measured]
    tail = f" No method moved {', '.join(lost)} beyond noise." if lost else ""
    return (f"Winners (beyond noise, perplexity within +{PPL_LIMIT:g} %): " + "; ".join(parts) + "." + tail)
