"""Faithfulness curves: does a scorer find the units that matter *together*?

Single-unit validation (:mod:`lens_bias.attribution.validation`) asks whether a scorer orders units
by what removing each alone does. Pruning removes them together. A faithfulness curve removes each
scorer's top k units together, for k on a grid, and measures the exact metric on held-out pairs
(zero or mean ablation; with ``cost``, under the same capability filter for every scorer, as
``run`` prunes, so that the comparison isolates the bias ranking): the reduction of
the held-out mean JS with its 95 % interval and paired test by template at every k
(:func:`lens_bias.measures.changes.js_reduction`), and the curve's **normalized area**, the mean
over the grid of the fraction of the bias removed (as circuit benchmarks report the fraction of
the full effect recovered; here the full effect is all of the bias, so 1 = every point removes all
of it, 0 = none, below 0 = the units add bias). Every scorer after the first is also compared
with the first at the same k, paired by held-out pair (:func:`versus`): the difference of the two
reductions in points, with its interval and test, so "removes more than the reference" is a
tested claim, not two overlapping intervals.
"""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from ..bridge import Bridge
from ..measures.changes import js_reduction
from ..measures.evaluation import EvalSet, evaluate
from ..prompts.pairs import PairSet
from ..scores import Scores
from ..selection.topk import select
from ..stats import paired_change
from ..vocab import Kind


def versus(before: dict, reference: dict, other: dict, seed: int = 0) -> dict:
    """How many more points of the held-out bias ``other`` removes than ``reference`` (all three
    from ``evaluate(..., per_item=True)`` on the same pairs): ``{"more_pts", "more_ci", "p",
    "within_noise"}``, templates resampled and sign-flipped together.

    Examples:
        >>> items = {"templates": ["a", "b", "c", "d"], "domains": ["x"] * 4, "abs_logit_gap": [None] * 4}
        >>> before = {"js": 0.04, "per_item": {**items, "js": [0.04] * 4}}
        >>> ref = {"per_item": {**items, "js": [0.03] * 4}}
        >>> other = {"per_item": {**items, "js": [0.02] * 4}}
        >>> r = versus(before, ref, other)
        >>> round(r["more_pts"], 6), r["within_noise"]  # 50 % removed against 25 %: 25 points more
        (25.0, True)
    """
    scale = 100.0 / before["js"]
    ri, oi = reference["per_item"], other["per_item"]
    c = paired_change([scale * x for x in ri["js"]], [scale * x for x in oi["js"]], ri["templates"],
                      seed=seed)
    return {"more_pts": -c.diff, "more_ci": [-c.diff_ci[1], -c.diff_ci[0]], "p": c.p,
            "within_noise": c.within_noise}


def faithfulness_curves(bridge: Bridge, held: PairSet, scorers: dict[str, Scores], kind: Kind = "neurons",
                        ks: Sequence[int] = (10, 30, 100, 230, 460), ablation: str = "zero",
                        means: dict | None = None, cost: Scores | None = None,
                        max_cost_quantile: float | None = None, batch_size: int = 16, seed: int = 0,
                        progress: bool = True) -> dict:
    """Every scorer's curve on the held-out pairs ``held``: ``{"rows": [{scorer, k, js,
    reduction_pct, reduction_ci, p, within_noise, vs_first}], "area": {scorer: normalized area},
    "before": unpruned mean JS, "settings"}``; ``vs_first`` is :func:`versus` against the first
    scorer at the same k (None on the first scorer's own rows).

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> from lens_bias.attribution.scorers import score
        >>> b = load_model("tiny-random", device="cpu")
        >>> train, held = build_pairs(["hiring"]).sample(4).split(by="template", held_out=0.5)
        >>> s = {"random": score(b, train, "random")}
        >>> r = faithfulness_curves(b, held, s, ks=(5, 20), progress=False)
        >>> [row["k"] for row in r["rows"]], sorted(r["area"])
        ([5, 20], ['random'])
    """
    ev = EvalSet(held)
    before = evaluate(bridge, ev, None, lambada=False, sentences=False, batch_size=batch_size, per_item=True)
    jobs = [(name, k) for name in scorers for k in ks]
    rows, first = [], {}
    for name, k in tqdm(jobs, desc="faithfulness", leave=False) if progress else jobs:
        mask = select(scorers[name], k, kind=kind, bridge=bridge, cost=cost,
                      max_cost_quantile=max_cost_quantile)
        after = evaluate(bridge, ev, mask, ablation, means, lambada=False, sentences=False,
                         batch_size=batch_size, per_item=True)
        first.setdefault(k, after)  # the first scorer's evaluations come first
        vs = None if first[k] is after else versus(before, first[k], after, seed)
        rows.append({"scorer": name, "k": k, "js": after["js"], **js_reduction(before, after, seed=seed),
                     "vs_first": vs})
    area = {name: sum(r["reduction_pct"] for r in rows if r["scorer"] == name) / (100.0 * len(ks))
            for name in scorers}
    return {"rows": rows, "area": area, "before": before["js"],
            "settings": {"kind": kind, "ks": list(ks), "ablation": ablation, "n_held_out": len(held),
                         "max_cost_quantile": max_cost_quantile if cost is not None else None,
                         "n_templates": len(held.templates), "seed": seed,
                         "reference": next(iter(scorers), None)}}
