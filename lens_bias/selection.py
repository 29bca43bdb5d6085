"""Iterative selection: prune part of the budget, re-attribute with that part ablated, repeat.

One attribution pass scores every unit against the *unpruned* model, so redundant units (two
neurons that carry the same bias signal) are both ranked high and the second one buys little once
the first is gone. Re-scoring under the ablation of what is already chosen lets the later rounds
see the model as it will be. ``steps=1`` is the plain one-shot selection.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .ablation import ablate
from .attribution import Scores, attribute
from .errors import MaskError
from .masks import PruningMask, budget_count, select
from .pairs import PairSet


def select_iterative(
    bridge,
    pairs: PairSet,
    budget: str | float | int,
    kind: str = "neurons",
    steps: int = 4,
    metric: str | Callable = "js",
    ablation: str = "zero",
    means: dict | None = None,
    cost: Scores | None = None,
    max_cost_quantile: float | None = None,
    batch_size: int = 16,
    first: Scores | None = None,
    progress: bool = True,
) -> tuple[PruningMask, list[Scores]]:
    """Choose ``budget`` units of ``kind`` ("neurons" or "heads") in ``steps`` rounds of equal
    size; round r attributes on ``pairs`` with the units of rounds < r ablated (``ablation``) and
    takes the best of the rest (with the same capability filter as :func:`lens_bias.masks.select`).
    ``first`` reuses an attribution of the unpruned model for round 1.

    Returns the mask and the scores of every round.

    Examples:
        >>> from lens_bias import load_model, build_pairs
        >>> b = load_model("tiny-random")
        >>> m, rounds = select_iterative(b, build_pairs(["finance"]).sample(4), 6, steps=2, progress=False)
        >>> m.counts()["neurons"], len(rounds)
        (6, 2)
    """
    if kind not in ("neurons", "heads"):
        raise MaskError(f"iterative selection takes kind 'neurons' or 'heads', got {kind!r}")
    if steps < 1:
        raise MaskError(f"steps must be at least 1, got {steps}")
    total = budget_count(bridge, kind, budget)
    steps = min(steps, total)
    mask = PruningMask.keep_all(bridge)
    rounds: list[Scores] = []
    done = 0
    for r in range(steps):
        want = round(total * (r + 1) / steps) - done
        if r == 0 and first is not None:
            s = first
        else:
            with ablate(bridge, mask, ablation, means):
                s = attribute(bridge, pairs, metric=metric, ablation=ablation, means=means, components=(kind,),
                              batch_size=batch_size, progress=progress)
        rounds.append(s)
        avail = s.get(kind).clone().float()
        avail[~mask.tensor(kind)] = -torch.inf  # already pruned
        step_scores = Scores(**{k: (avail if k == kind else None) for k in ("neurons", "heads")},
                             settings=s.settings)
        new = select(step_scores, want, kind=kind, bridge=bridge, cost=cost, max_cost_quantile=max_cost_quantile)
        mask = mask | new
        done += want
    mask.meta.update({"scorer": rounds[0].settings.get("estimator"), "metric": rounds[0].settings.get("metric"),
                      "budget": str(budget), "kind": kind, "steps": steps, "max_cost_quantile": max_cost_quantile,
                      "domains": pairs.domains})
    _check_layers(mask, kind)
    return mask, rounds


def _check_layers(mask: PruningMask, kind: str) -> None:
    empty = [la for la, row in enumerate(mask.tensor(kind)) if not bool(row.any())]
    if empty:
        raise MaskError(f"iterative selection removed every {kind[:-1]} of layer(s) {empty}; use a smaller budget")


def rounds_summary(rounds: Sequence[Scores]) -> list[dict]:
    """What each round saw: the metric on the (partly pruned) model before that round."""
    return [{"round": i + 1, "metric_before": s.settings.get("metric_before")} for i, s in enumerate(rounds)]
