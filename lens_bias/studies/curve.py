"""Pruning curves over budgets, scorers and component kinds, and the seed studies' first two
claims at equal parameters: neurons vs heads, bias-aware vs plain rankings (:func:`compare_scorers`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from ..bridge import Bridge, n_params
from ..masks import PruningMask
from ..measures.changes import USER_PREFIXES, evaluation_changes, js_reduction, reduction_pct, without_items
from ..measures.evaluation import EvalSet, evaluate, pruned_params
from ..prompts.pairs import PairSet
from ..scores import Scores
from ..selection.topk import budget_count, random_mask, select
from ..vocab import GRADIENT_SCORERS, Kind, measure_flags


def pruning_curve(
    bridge: Bridge,
    ev: EvalSet,
    scorers: dict[str, Scores],
    kinds: Sequence[Kind] = ("neurons", "heads"),
    budgets: Sequence[str] = ("0.1%", "0.25%", "0.5%", "1%", "2%"),
    ablation: str = "zero",
    means: dict | None = None,
    cost: Scores | None = None,
    max_cost_quantile: float | None = None,
    random_control: bool = True,
    seed: int = 0,
    progress: bool = True,
    before: dict | None = None,
    pick: Callable[[str, str, str], PruningMask | None] | None = None,
    measures: Sequence[str] = (),
) -> list[dict]:
    """Held-out bias and capability for every scorer x kind x budget (plus a random control), as
    a list of records (one per point) with the number of removed units and parameters. A scorer's
    units are its top scores (:func:`lens_bias.selection.topk.select`), unless ``pick(scorer, kind,
    budget)`` returns a mask for it (another selector, :func:`compare_scorers`). Given
    ``before`` (the unpruned model's ``evaluate(..., per_item=True)``), each record also holds its
    held-out JS reduction with a 95 % interval, p and ``within_noise``
    (:func:`lens_bias.measures.changes.js_reduction`). ``measures``: the measures of bias as users
    see it (:data:`lens_bias.vocab.UserMeasure`) also taken at every point.

    Budgets that select the very same units (on a small model 0.1 % and 0.5 % of heads can both
    round to one head) are evaluated once and the record is repeated under each budget."""
    jobs = [(name, kind, b) for name in scorers for kind in kinds for b in budgets]
    if random_control:
        jobs += [("random", kind, b) for kind in kinds for b in budgets]
    it = tqdm(jobs, desc="pruning curve", leave=False) if progress else jobs
    total = n_params(bridge)
    flags = measure_flags(measures)
    rows = []
    seen: dict[bytes, dict] = {}
    for name, kind, b in it:
        if name == "random":
            mask = random_mask(bridge, b, kind, seed=seed)
        else:
            mask = pick(name, kind, b) if pick is not None else None
            if mask is None:
                mask = select(scorers[name], b, kind=kind, bridge=bridge, cost=cost,
                              max_cost_quantile=max_cost_quantile)
        key = mask.neurons.numpy().tobytes() + mask.heads.numpy().tobytes()
        if key not in seen:
            # seqgap is measured at the run's budget, not at each point
            seen[key] = evaluate(bridge, ev, mask, ablation, means, lambada=False,
                                 per_item=before is not None, sentences=False, **flags)
        res = seen[key]
        noise = ({} if before is None
                 else {f"js_{k}": v for k, v in js_reduction(before, res, seed=seed).items()})
        if flags and before is not None:  # the user measures' changes, each with its interval and test
            noise["tests"] = {k: c.to_dict() for k, c in evaluation_changes(before, res, seed=seed).items()
                              if k.startswith(USER_PREFIXES)}
        p = pruned_params(bridge, mask)
        rows.append({"scorer": name, "kind": kind, "budget": b, "n_units": budget_count(bridge, kind, b),
                     "params": p, "params_pct": 100.0 * p / total, **without_items(res), **noise})
    return rows



PARAM_BUDGETS = ("0.1%params", "0.2%params", "0.5%params", "1%params")
COMPARED_SCORERS = ("ablate", "patch", "actdiff", "wanda", "random")


def compare_scorers(
    bridge: Bridge,
    train: PairSet,
    ev: EvalSet,
    scorers: Sequence[str] = COMPARED_SCORERS,
    kinds: Sequence[Kind] = ("neurons", "heads"),
    budgets: Sequence[str] = PARAM_BUDGETS,
    max_cost_quantile: float | None = 0.5,
    metric: str = "js",
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    selector: str = "oneshot",
    measures: Sequence[str] = (),
) -> dict:
    """Claims 1 and 2 of the seed studies in one table: every scorer x kind x budget, scored on
    ``train`` and evaluated on ``ev`` (held-out templates). Budgets are in % of parameters, so a
    head and the neurons it is compared with remove the same number of parameters. The same
    capability filter (Fisher cost on neutral text, ``max_cost_quantile``) applies to every
    scorer, ``random`` included, so the comparison isolates the bias ranking. ``selector``
    (a registered selector, :mod:`lens_bias.selection.registry`) picks the ``ablate`` scorer's units
    from its scores kept per template (:func:`selector_picks`); the other scorers keep their top
    scores (``oneshot``). Each row records the ``selector`` it used. ``measures``: BBQ, the
    generation audit or the knowledge probe at every point too (:data:`lens_bias.vocab.UserMeasure`).

    Returns ``{"before", "rows", "winners", "settings"}``; each row holds ``js_reduction_pct``
    with its 95 % interval ``js_reduction_ci`` (templates resampled), ``js_p`` and
    ``js_within_noise``, and the capability change, next to the raw measures.
    """
    from ..attribution.patching import capability_cost
    from ..attribution.scorers import score
    from ..prompts.pairs import neutral_text
    before = evaluate(bridge, ev, None, lambada=False, batch_size=batch_size, per_item=True,
                      **measure_flags(measures))
    cost = None
    if max_cost_quantile is not None:
        cost = capability_cost(bridge, ev.neutral or neutral_text(), ablation="zero", progress=progress)
    scored, pick = {}, None
    for name in scorers:
        kw = ({"metric": metric, "batch_size": batch_size, "progress": progress}
              if name in GRADIENT_SCORERS else {"batch_size": batch_size, "seed": seed})
        if name == "ablate" and selector != "oneshot":
            scored[name], pick = selector_picks(bridge, train, ev.neutral or neutral_text(), selector, metric,
                                                 cost, max_cost_quantile, seed, batch_size, progress)
        else:
            scored[name] = score(bridge, train, name, **kw)
    rows = pruning_curve(bridge, ev, scored, kinds=kinds, budgets=budgets, cost=cost,
                         max_cost_quantile=max_cost_quantile, random_control=False, seed=seed,
                         progress=progress, before=before, pick=pick, measures=measures)
    before = without_items(before)
    for r in rows:
        r["selector"] = selector if r["scorer"] == "ablate" else "oneshot"
        r["js_reduction_pct"] = reduction_pct(before["js"], r["js"])
        r["gap_reduction_pct"] = reduction_pct(before.get("abs_logit_gap"), r.get("abs_logit_gap"))
        if before.get("wikitext_ppl") and r.get("wikitext_ppl"):
            r["ppl_change_pct"] = 100.0 * (r["wikitext_ppl"] / before["wikitext_ppl"] - 1)
    return {"before": before, "rows": rows, "winners": winners(rows),
            "settings": {"scorers": list(scorers), "kinds": list(kinds), "budgets": list(budgets),
                         "max_cost_quantile": max_cost_quantile, "metric": metric, "selector": selector,
                         "measures": list(measures), "n_train": len(train),
                         "n_held_out": len(ev.pairs), "seed": seed}}


def winners(rows: Sequence[dict]) -> dict:
    """Mean held-out JS reduction per scorer/kind over the budgets, the best scorer per kind, and
    neurons vs heads for each scorer (both at equal parameters)."""
    mean: dict[str, dict[str, float]] = {}
    for r in rows:
        if r.get("js_reduction_pct") is None:
            continue
        mean.setdefault(r["scorer"], {}).setdefault(r["kind"], []).append(r["js_reduction_pct"])
    mean = {s: {k: sum(v) / len(v) for k, v in ks.items()} for s, ks in mean.items()}
    kinds = sorted({k for ks in mean.values() for k in ks})
    best = {k: max((s for s in mean if k in mean[s]), key=lambda s: mean[s][k]) for k in kinds}
    nvh = {s: ks["neurons"] - ks["heads"] for s, ks in mean.items() if "neurons" in ks and "heads" in ks}
    return {"mean_js_reduction_pct": mean, "best_scorer": best,
            "neurons_minus_heads_pct_points": nvh}




def selector_picks(bridge: Bridge, train: PairSet, neutral: Sequence[str], selector: str, metric: str,
                   cost: Scores | None, max_cost_quantile: float | None, seed: int, batch_size: int,
                   progress: bool) -> tuple[Scores, Callable[[str, str, str], PruningMask | None]]:
    """The ``ablate`` scores of ``train`` (kept per template) and the ``pick`` of
    :func:`pruning_curve` that chooses the ``ablate`` scorer's units with ``selector``
    (:func:`lens_bias.selection.registry.select_units`; ``None`` for the other scorers, which
    keep their top scores)."""
    from ..attribution.per_template import attribute_templates
    from ..selection.registry import SelectionInputs, SelectorSpec, check_selector, select_units

    check_selector(selector)
    ts = attribute_templates(bridge, train, metric=metric, batch_size=batch_size, progress=progress)
    spec = SelectorSpec(selector, max_cost_quantile)

    def pick(name: str, kind: str, budget: str) -> PruningMask | None:
        if name != "ablate":
            return None
        inputs = SelectionInputs(bridge, train, budget, kind, cost, neutral, template_scores=ts, seed=seed,
                                 batch_size=batch_size)
        return select_units(spec, inputs).mask

    return ts.scores(), pick
