"""Prune a model from a scores file: what ``lens-bias prune`` selects, as an API.

:func:`mask_from_scores` selects the top units of a :class:`~lens_bias.scores.Scores` under the
capability filter, with the ablation the units will be pruned by: ``"zero"`` (their outputs set to
0) or ``"mean"`` (set to their mean on the neutral text, :func:`lens_bias.hooks.capture.mean_activations`,
later folded into biases on export). The capability cost is measured under that same ablation.
:func:`lens_bias.weights.formats.ablation_constants` gives back the constants a saved mask's units
output, so that a mask selected under mean ablation exports to the same model wherever it is
loaded again.
"""

from __future__ import annotations

from ..attribution.patching import capability_cost
from ..bridge import Bridge
from ..errors import MaskError
from ..hooks.capture import mean_activations
from ..masks import PruningMask
from ..prompts.pairs import PairSet, neutral_text
from ..scores import Scores
from ..vocab import KIND_CHOICES, PER_LAYER, check_ablation, check_choice
from .registry import SelectionInputs, SelectorSpec, check_selector, select_units
from .topk import parse_budget


def scores_ablation(scores: Scores, ablation: str | None = None) -> str:
    """The ablation to prune ``scores``' units by: ``ablation`` when given, else the one the scores
    were computed with (``settings["ablation"]``), else ``"zero"``; checked (:func:`check_ablation`).

    Examples:
        >>> s = Scores(None, None, {}, {"ablation": "mean"})
        >>> scores_ablation(s), scores_ablation(s, "zero"), scores_ablation(Scores(None, None, {}, {}))
        ('mean', 'zero', 'zero')
    """
    return check_ablation(ablation or scores.settings.get("ablation") or "zero")


def check_prune_choices(budget: str | float | int, kind: str, per_layer: str = "global") -> None:
    """Refuse a budget, kind or per-layer rule that no model accepts, before one is loaded.

    Examples:
        >>> check_prune_choices("0.5%", "neuron")
        Traceback (most recent call last):
        ...
        lens_bias.errors.ChoiceError: kind must be one of neurons, heads, both; got 'neuron'
    """
    parse_budget(budget)
    check_choice(kind, KIND_CHOICES, "kind")
    check_choice(per_layer, PER_LAYER, "per_layer")


def mask_from_scores(bridge: Bridge, scores: Scores, budget: str | float | int = "0.5%",
                     kind: str = "neurons", per_layer: str = "global", max_cost_quantile: float | None = 0.5,
                     ablation: str | None = None, selector: str = "oneshot", pairs: PairSet | None = None,
                     steps: int = 4, seed: int = 0, batch_size: int = 16,
                     progress: bool = False) -> tuple[PruningMask, dict | None]:
    """The mask ``lens-bias prune`` writes, and the constants its units output.

    ``ablation`` (default: the one the scores were computed with, ``scores.settings["ablation"]``,
    else ``"zero"``) decides what a pruned unit outputs, and under which ablation the capability
    cost of the filter (``max_cost_quantile``; ``None`` or >= 1: off) is measured. Returns the mask
    (``meta["ablation"]`` records it) and, for mean ablation, the means to export it with
    (:func:`lens_bias.weights.export.export_hf` ``ablation="mean"``), else ``None``.

    ``selector`` other than ``"oneshot"`` (the top scores) re-reads the pairs the scores were
    computed on, ``pairs``, through :func:`lens_bias.selection.registry.select_units`: ``iterative``
    (``steps`` rounds, the scores as its first), ``stable``, ``learned`` or ``auto``. Those need
    attribution scores (``lens-bias scan --scorer ablate``) and select globally.

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> import torch
        >>> s = Scores(torch.rand(2, 128), None, {}, {})
        >>> mask, means = mask_from_scores(b, s, 4, max_cost_quantile=None, ablation="mean")
        >>> mask.counts()["neurons"], mask.meta["ablation"], sorted(means)
        (4, 'mean', ['heads', 'neurons'])
    """
    check_prune_choices(budget, kind, per_layer)
    ablation = scores_ablation(scores, ablation)
    check_selector(selector, ablation)
    if selector != "oneshot":
        _check_selector_inputs(scores, selector, pairs, per_layer)
    neutral = neutral_text()
    means = mean_activations(bridge, neutral) if ablation == "mean" else None
    on = max_cost_quantile is not None and max_cost_quantile < 1
    cost = capability_cost(bridge, neutral, ablation=ablation, means=means) if on else None
    q = max_cost_quantile if on else None
    # one-shot takes these scores; the others re-read the pairs and reuse the scores only when
    # they are the attribution under this very ablation
    same = selector == "oneshot" or (scores.settings.get("ablation", "zero") == ablation
                                     and not scores.settings.get("graddrop"))
    options = ({"per_layer": per_layer} if selector == "oneshot"
               else {"steps": steps} if selector == "iterative" else {})
    inputs = SelectionInputs(bridge, pairs, budget, kind, cost, neutral, scores=scores if same else None,
                             metric=scores.settings.get("metric", "js"), ablation=ablation, means=means,
                             seed=seed, batch_size=batch_size, progress=progress)
    mask = select_units(SelectorSpec(selector, q, options), inputs).mask
    mask.meta["ablation"] = ablation
    return mask, means


def _check_selector_inputs(scores: Scores, selector: str, pairs: PairSet | None, per_layer: str) -> None:
    """Refuse a selector other than one-shot without what it needs, naming the fix."""
    if scores.settings.get("estimator") != "ablate":
        raise MaskError(f"the {selector} selector re-attributes, so it needs attribution scores; these are "
                        f"{scores.settings.get('scorer', 'unknown')!r} scores: scan with --scorer ablate, "
                        "or prune with --selector oneshot")
    if pairs is None:
        raise MaskError(f"the {selector} selector needs the pairs the scores were computed on")
    if per_layer != "global":
        raise MaskError(f"the {selector} selector chooses globally; use --per-layer global or "
                        "--selector oneshot")
