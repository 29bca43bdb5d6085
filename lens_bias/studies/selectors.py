"""Which selection generalizes? The learning curve over training templates, and the comparison of
selectors, every number with its interval.

* :func:`wording_curve`: held-out and leave-one-domain-out JS reduction against the number of
  train templates per domain the scores come from (several random draws of templates each).
* :func:`compare_selectors`: every selector of :mod:`lens_bias.selection.registry` at several budgets:
  train, held-out and leave-one-domain-out JS, |logit gap|, seqgap, CrowS-Pairs (McNemar),
  WikiText-2 perplexity, KL and the time the selection took.

Scores are computed once, per template (:func:`lens_bias.attribution.per_template.attribute_templates`); every
subset of templates (a draw of the curve, the domains a leave-out mask may see) is a weighted sum
of them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..attribution.per_template import TemplateScores
from ..bridge import Bridge
from ..masks import PruningMask
from ..measures.changes import js_reduction, run_tests
from ..measures.evaluation import EvalSet, evaluate, pruned_params
from ..prompts.pairs import PairSet
from ..scores import Scores
from ..selection.registry import SelectionInputs, SelectorSpec, select_units
from ..selection.topk import select
from ..vocab import Kind, measure_flags


def js_items(bridge: Bridge, pairs: PairSet, mask: PruningMask | None, batch_size: int) -> dict:
    """The evaluation of ``pairs`` under ``mask`` (None: unpruned) with per-item JS (``per_item``)."""
    return evaluate(bridge, EvalSet(pairs), mask, lambada=False, batch_size=batch_size, per_item=True)


def _concat(parts: Sequence[dict]) -> dict:
    """Per-item JS of several evaluations as one (templates named ``domain/template``)."""
    keys = ("templates", "domains", "js")
    out = {k: [] for k in keys}
    for r in parts:
        pi = r["per_item"]
        out["templates"] += [f"{d}/{t}" for d, t in zip(pi["domains"], pi["templates"], strict=True)]
        out["domains"] += list(pi["domains"])
        out["js"] += [float(x) for x in pi["js"]]
    return {"per_item": out}


def lodo(bridge: Bridge, ts: TemplateScores, pairs: PairSet, ev_pairs: PairSet, pick,
         before: dict | None = None, batch_size: int = 16, seed: int = 0) -> dict:
    """Leave-one-domain-out with any selector: for every domain d, ``pick(ts_without_d, pairs_without_d)``
    gives the mask, which is measured on d's held-out pairs; pooled over all held-out pairs
    (templates resampled). ``before``: the per-domain evaluations of the unpruned model (reused)."""
    doms = [d for d in ev_pairs.domains if d in set(ts.domains)]
    before = before or {d: js_items(bridge, ev_pairs.filter(domains=[d]), None, batch_size) for d in doms}
    after = {}
    for d in doms:
        rest = [t for t, x in zip(ts.templates, ts.domains, strict=True) if x != d]
        mask = pick(ts.restrict(rest), pairs.filter(domains=[x for x in pairs.domains if x != d]))
        after[d] = js_items(bridge, ev_pairs.filter(domains=[d]), mask, batch_size)
    pooled = js_reduction(_concat([before[d] for d in doms]), _concat([after[d] for d in doms]), seed=seed)
    per = {d: js_reduction(before[d], after[d], seed=seed)["reduction_pct"] for d in doms}
    return {"pooled": pooled, "by_domain": per}


def wording_curve(bridge: Bridge, ts: TemplateScores, pairs: PairSet, ev_pairs: PairSet, budget: str = "0.5%",
                  kind: Kind = "neurons", cost: Scores | None = None, max_cost_quantile: float | None = 0.5,
                  ks: Sequence[int] = (1, 2, 4, 8, 0), draws: int = 3, seed: int = 0, batch_size: int = 16,
                  progress: bool = True) -> dict:
    """One-shot selection from the scores of ``k`` random train templates per domain (``0`` = all),
    ``draws`` times each; per draw the held-out JS reduction (with interval) and the pooled
    leave-one-domain-out reduction. Returns ``{"rows": [...], "settings": {...}}``."""
    gen = torch.Generator().manual_seed(seed)
    base = js_items(bridge, ev_pairs, None, batch_size)
    base_dom = {d: js_items(bridge, ev_pairs.filter(domains=[d]), None, batch_size) for d in ev_pairs.domains}
    per_dom = {d: [t for t, x in zip(ts.templates, ts.domains, strict=True) if x == d]
               for d in sorted(set(ts.domains))}

    def pick(sub: TemplateScores, _pairs) -> PruningMask:
        return select(sub.scores(), budget, kind=kind, bridge=bridge, cost=cost,
                      max_cost_quantile=max_cost_quantile)

    rows = []
    jobs = [(k, i) for k in ks for i in range(draws if k else 1)]
    for k, i in tqdm(jobs, desc="wording curve", leave=False) if progress else jobs:
        chosen = [t for d, ts_d in per_dom.items()
                  for t in ([ts_d[j] for j in torch.randperm(len(ts_d), generator=gen)[:k].tolist()]
                            if k else ts_d)]
        sub = ts.restrict(chosen)
        held = js_reduction(base, js_items(bridge, ev_pairs, pick(sub, None), batch_size), seed=seed)
        lo = lodo(bridge, sub, pairs, ev_pairs, pick, base_dom, batch_size, seed)
        rows.append({"templates_per_domain": k or max(len(v) for v in per_dom.values()), "draw": i,
                     "n_templates": len(chosen), "n_pairs": int(sub.counts.sum()), "held_out": held,
                     "lodo": lo["pooled"]})
    return {"rows": rows, "settings": {"budget": budget, "kind": kind, "max_cost_quantile": max_cost_quantile,
                                       "draws": draws, "seed": seed, "n_held_out": len(ev_pairs)}}


def compare_selectors(bridge: Bridge, ts: TemplateScores, train: PairSet, ev: EvalSet,
                      specs: Sequence[SelectorSpec], budgets: Sequence[str], cost: Scores | None,
                      neutral: Sequence[str],
                      lodo_budgets: Sequence[str] = ("0.5%",), lodo_selectors: Sequence[str] | None = None,
                      heads_at: Sequence[str] = ("0.5%",), seed: int = 0, batch_size: int = 16,
                      progress: bool = True, measures: Sequence[str] = ("bbq", "knowledge")) -> dict:
    """Every ``spec`` at every budget (neurons), and the head versions of one-shot and stable at
    the parameters of the neuron mask of each ``heads_at`` budget: one row each with the selection's
    time, the train JS reduction and the held-out tests of :func:`lens_bias.measures.changes.run_tests`; the
    leave-one-domain-out pooled reduction at ``lodo_budgets`` (for ``lodo_selectors``: all when None).
    ``measures``: the measures of bias as users see it taken for every row
    (:data:`lens_bias.vocab.UserMeasure`; BBQ and the knowledge probe by default)."""
    flags = measure_flags(measures)
    before = evaluate(bridge, ev, None, crows=True, lambada=False, batch_size=batch_size, per_item=True,
                      **flags)
    train_before = js_items(bridge, train, None, batch_size)
    base_dom = {d: js_items(bridge, ev.pairs.filter(domains=[d]), None, batch_size) for d in ev.pairs.domains}
    jobs = [(s, b, "neurons") for s in specs for b in budgets]
    rows = []
    for spec, budget, kind in tqdm(jobs, desc="selectors", leave=False) if progress else jobs:
        rows.append(selector_row(bridge, ts, train, ev, spec, budget, kind, cost, neutral, before,
                                 train_before, base_dom,
                                 budget in lodo_budgets
                                 and (lodo_selectors is None or spec.selector in lodo_selectors),
                                 seed, batch_size, flags))
        if budget in heads_at and spec.selector in ("oneshot", "stable") and "heads" in ts.sums:
            frac = 100 * rows[-1]["params"] / sum(p.numel() for p in bridge.parameters())
            rows.append(selector_row(bridge, ts, train, ev, spec, f"{frac:.4f}%params", "heads", cost,
                                     neutral, before, train_before, base_dom, False, seed, batch_size,
                                     flags))
    return add_versus({"rows": rows, "before": {k: v for k, v in before.items() if k != "per_item"},
            "held_out_pairs": held_out_pairs(before),
            "settings": {"budgets": list(budgets), "lodo_budgets": list(lodo_budgets), "seed": seed,
                         "n_train": len(train), "n_held_out": len(ev.pairs),
                         "measures": list(flags), "n_train_templates": len(train.templates),
                         "n_held_out_templates": len(ev.pairs.templates)}})


def selector_row(bridge, ts, train, ev, spec, budget, kind, cost, neutral, before, train_before, base_dom,
                 with_lodo, seed, batch_size, flags: dict | None = None) -> dict:
    """One :func:`compare_selectors` row: ``spec``'s mask at ``budget``, its train and held-out tests
    (and leave-one-domain-out when ``with_lodo``); ``flags``: the user measures' ``evaluate`` keywords."""
    def pick(sub: TemplateScores, pairs: PairSet) -> PruningMask:
        inputs = SelectionInputs(bridge, pairs, budget, kind, cost, neutral, template_scores=sub, seed=seed,
                                 batch_size=batch_size)
        return select_units(spec, inputs).mask

    t0 = time.time()
    mask = pick(ts, train)
    seconds = time.time() - t0
    after = evaluate(bridge, ev, mask, crows=True, lambada=False, batch_size=batch_size, per_item=True,
                     **(flags or {}))
    row = {"selector": spec.selector, "label": spec.label(), "max_cost_quantile": spec.max_cost_quantile,
           "budget": budget, "kind": kind, "n_pruned": mask.counts()[kind],
           "params": pruned_params(bridge, mask),
           "select_seconds": round(seconds, 1),
           "train": js_reduction(train_before, js_items(bridge, train, mask, batch_size), seed=seed),
           "tests": run_tests(before, after, seed=seed), "kl_neutral": after.get("kl_neutral"),
           "chosen": mask.meta.get("selector_chosen"), "model_selection": mask.meta.get("model_selection"),
           "held_out_js": [float(x) for x in after["per_item"]["js"]]}
    if with_lodo:
        row["lodo"] = lodo(bridge, ts, train, ev.pairs, pick, base_dom, batch_size, seed)
    return row


def held_out_pairs(before: dict) -> dict:
    """The held-out pairs' templates and domains (what pairs a row's ``held_out_js`` for tests)."""
    return {k: list(before["per_item"][k]) for k in ("templates", "domains")}


def versus(res: dict, row: dict, reference: dict | None = None) -> dict | None:
    """The held-out JS left by ``row``'s mask relative to ``reference``'s (default: the first
    neuron row at the same budget, one-shot in the usual order), paired on the same held-out pairs
    and tested by template (:func:`lens_bias.measures.changes.js_reduction`): ``reduction_pct`` > 0 when
    ``row`` leaves less bias. A much stronger test than comparing two intervals against the
    unpruned model. ``None`` without per-pair values (results written before they were kept)."""
    reference = reference or next(
        (r for r in res["rows"] if r["kind"] == "neurons" and r["budget"] == row["budget"]), None)
    pairs = res.get("held_out_pairs")
    if (reference is None or reference is row or not pairs or "held_out_js" not in row
            or "held_out_js" not in reference):
        return None
    return js_reduction({"per_item": {**pairs, "js": reference["held_out_js"]}},
                        {"per_item": {**pairs, "js": row["held_out_js"]}},
                        seed=res.get("settings", {}).get("seed", 0))


def add_versus(res: dict) -> dict:
    """``res`` with ``vs_first`` (:func:`versus`) on every neuron row, ``None`` on the others."""
    for r in res["rows"]:
        r["vs_first"] = versus(res, r) if r["kind"] == "neurons" else None
    return res


def format_cell(c: dict | None, key: str = "pct", digits: int = 1) -> str:
    """``value [lo, hi]`` (``digits`` decimals) with a ``~`` when within noise (a Change dict or a
    js_reduction dict)."""
    if not c:
        return "-"
    if "reduction_pct" in c:
        v, ci = c["reduction_pct"], c["reduction_ci"]
    else:
        sign = -1 if key == "pct" and c.get("test") != "mcnemar" else 1
        v, ci = c[key], c[f"{key}_ci"]
        if sign < 0 and v is not None:
            v, ci = -v, None if ci is None else [-ci[1], -ci[0]]
    if v is None:
        return "-"
    rng = "" if ci is None else f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    return f"{v:.{digits}f}{rng}{' ~' if c.get('within_noise') else ''}"


SELECTOR_HEADER = ["selector", "kind", "budget", "n", "train JS red. %", "held-out JS red. %",
                   "held-out JS vs first row %", "LODO JS red. %",
                   "|logit gap| red. %", "seqgap red. %", "CrowS Black change (pts)",
                   "CrowS race-color change (pts)", "BBQ ambig. accuracy change (pts)",
                   "BBQ s_DIS change (pts)", "written: sentiment gap change (pairs)",
                   "knowledge log-prob change (nats)", "ppl change %",
                   "KL", "select s"]


def selector_rows(res: dict) -> tuple[list[list], list[str]]:
    """One table row per :func:`compare_selectors` row; reductions are positive when bias falls,
    ``~`` marks a change within noise. "vs first row": the held-out JS a neuron mask leaves
    relative to the first neuron row's at its budget, paired by template (the rows' ``vs_first``,
    from :func:`add_versus`)."""
    out = []
    for r in res["rows"]:
        t = r["tests"]
        ppl = t.get("wikitext_ppl")
        out.append([r["label"] + (f" -> {r['chosen']}" if r.get("chosen") else ""), r["kind"], r["budget"],
                    r["n_pruned"], format_cell(r["train"]), format_cell(t["js"]),
                    format_cell(r.get("vs_first")) if r["kind"] == "neurons" else "-",
                    format_cell((r.get("lodo") or {}).get("pooled")),
                    format_cell(t.get("abs_logit_gap")), format_cell(t.get("seqgap")),
                    format_cell(t.get("crows_black_rate"), "diff"),
                    format_cell(t.get("crows_race_color_rate"), "diff"),
                    format_cell(t.get("bbq_acc_ambig"), "diff"), format_cell(t.get("bbq_s_dis"), "diff"),
                    format_cell(t.get("gen_pairs_sentiment_gap"), "diff", 3),
                    format_cell(t.get("know_logprob"), "diff", 2),
                    "-" if ppl is None
                    else f"{ppl['pct']:+.1f} [{ppl['pct_ci'][0]:.1f}, {ppl['pct_ci'][1]:.1f}]",
                    "-" if r["kl_neutral"] is None else f"{r['kl_neutral']:.4f}", r["select_seconds"]])
    return out, SELECTOR_HEADER


def wording_rows(res: dict) -> tuple[list[list], list[str]]:
    """One table row per draw of :func:`wording_curve`."""
    rows = [[r["templates_per_domain"], r["draw"], r["n_templates"], r["n_pairs"], format_cell(r["held_out"]),
             format_cell(r["lodo"])] for r in res["rows"]]
    return rows, ["templates / domain", "draw", "templates", "pairs", "held-out JS red. %", "LODO JS red. %"]
