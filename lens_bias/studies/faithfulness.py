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
of it, 0 = none, below 0 = the units add bias).
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
from ..vocab import Kind


def faithfulness_curves(bridge: Bridge, held: PairSet, scorers: dict[str, Scores], kind: Kind = "neurons",
                        ks: Sequence[int] = (10, 30, 100, 230, 460), ablation: str = "zero",
                        means: dict | None = None, cost: Scores | None = None,
                        max_cost_quantile: float | None = None, batch_size: int = 16, seed: int = 0,
                        progress: bool = True) -> dict:
    """Every scorer's curve on the held-out pairs ``held``: ``{"rows": [{scorer, k, js,
    reduction_pct, reduction_ci, p, within_noise}], "area": {scorer: normalized area}, "before":
    unpruned mean JS, "settings"}``.

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
    rows = []
    for name, k in tqdm(jobs, desc="faithfulness", leave=False) if progress else jobs:
        mask = select(scorers[name], k, kind=kind, bridge=bridge, cost=cost,
                      max_cost_quantile=max_cost_quantile)
        after = evaluate(bridge, ev, mask, ablation, means, lambada=False, sentences=False,
                         batch_size=batch_size, per_item=True)
        rows.append({"scorer": name, "k": k, "js": after["js"], **js_reduction(before, after, seed=seed)})
    area = {name: sum(r["reduction_pct"] for r in rows if r["scorer"] == name) / (100.0 * len(ks))
            for name in scorers}
    return {"rows": rows, "area": area, "before": before["js"],
            "settings": {"kind": kind, "ks": list(ks), "ablation": ablation, "n_held_out": len(held),
                         "max_cost_quantile": max_cost_quantile if cost is not None else None,
                         "n_templates": len(held.templates), "seed": seed}}
