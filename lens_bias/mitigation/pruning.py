"""The pruning methods of the family, all at the same number of units, all zero-ablated and exported
by zeroing their weights (:func:`lens_bias.weights.materialize.materialize`):

* ``prune``: ``lens-bias run``'s default (iterative selection on the per-template attribution, the
  capability filter on);
* ``wanda``: the top Wanda-style scores (Ma et al.), the same capability filter;
* ``random``: the same number of units at random (the control);
* ``optipfair`` and ``optipfair-0.45``: optiPfair's fairness pruning, its own functions
  (``analyze_neuron_bias`` on the train pairs, ``compute_fairness_pruning_scores`` with its default
  bias weight 0.8 or the thesis's 0.45), the highest fairness scores of every layer, the same count a
  layer as optiPfair's own pruning takes (neurons only).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from ..bridge import Bridge, tokenizer_of
from ..errors import InterventionError
from ..hooks.ablation import ablation_hooks
from ..masks import PruningMask
from ..measures.evaluation import pruned_params
from ..prompts.pairs import PairSet
from ..selection.registry import SelectionInputs, SelectorSpec, select_units
from ..selection.topk import budget_count, random_mask, select
from .base import FitContext, Intervention, register


def from_mask(bridge: Bridge, name: str, mask: PruningMask, settings: dict | None = None) -> Intervention:
    """A pruning method as an intervention: zero-ablation hooks, the units' parameters as its cost,
    and zeroed weights as its fold."""
    from ..weights.materialize import materialize

    c = mask.counts()
    cost = {"neurons_zeroed": c["neurons"], "heads_zeroed": c["heads"],
            "params_changed": pruned_params(bridge, mask)}
    return Intervention(name, ablation_hooks(bridge, mask), cost, settings or {},
                        fold=lambda: materialize(bridge, mask), mask=mask)


@register("prune", "lens_bias pruning: iterative selection on the attribution, capability filter on "
                   "(the run's default)")
def _prune(ctx: FitContext) -> Intervention:
    ts, cost = ctx.template_scores()
    inputs = SelectionInputs(ctx.bridge, ctx.train, ctx.budget, ctx.kind, cost, scores=ts.scores(),
                             template_scores=ts, metric="js", seed=ctx.seed, batch_size=ctx.batch_size,
                             progress=ctx.progress)
    spec = SelectorSpec("iterative", ctx.max_cost_quantile, {"steps": 4})
    return from_mask(ctx.bridge, "prune", select_units(spec, inputs).mask, {"selector": spec.label()})


@register("wanda", "top Wanda-style scores (|W| x activation-norm difference), capability filter on")
def _wanda(ctx: FitContext) -> Intervention:
    from ..attribution.scorers import baseline_scores

    _, cost = ctx.template_scores()
    scores = baseline_scores(ctx.bridge, ctx.train, "wanda", batch_size=ctx.batch_size)
    mask = select(scores, ctx.budget, ctx.kind, bridge=ctx.bridge, cost=cost,
                  max_cost_quantile=ctx.max_cost_quantile)
    return from_mask(ctx.bridge, "wanda", mask, {"scorer": "wanda"})


@register("random", "the same number of units chosen at random (the control)")
def _random(ctx: FitContext) -> Intervention:
    return from_mask(ctx.bridge, "random", random_mask(ctx.bridge, ctx.budget, ctx.kind, ctx.seed),
                     {"seed": ctx.seed})


def optipfair_functions():
    """optiPfair's ``analyze_neuron_bias`` and ``compute_fairness_pruning_scores``. ``optipfair.bias``
    imports its plotting code (the ``optipfair[viz]`` extra); without it, the module that holds the
    two functions (it needs only torch) is loaded from its file, unchanged."""
    try:
        import optipfair
    except ImportError:
        raise InterventionError("the optipfair methods need optiPfair: pip install optipfair==0.4.2 "
                                "(or leave them out of --methods)") from None
    try:
        from optipfair.bias import activations as mod
    except ImportError:
        path = Path(optipfair.__file__).parent / "bias" / "activations.py"
        spec = importlib.util.spec_from_file_location("optipfair_bias_activations", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    logging.getLogger(mod.__name__).setLevel(logging.WARNING)  # it logs every hook removal
    return mod.analyze_neuron_bias, mod.compute_fairness_pruning_scores


def per_layer_counts(n: int, n_layers: int) -> list[int]:
    """``n`` units spread over ``n_layers`` as evenly as counts allow (the first layers take the remainder).

    Examples:
        >>> per_layer_counts(10, 4)
        [3, 3, 2, 2]
    """
    return [n // n_layers + (1 if i < n % n_layers else 0) for i in range(n_layers)]


def optipfair_mask(bridge: Bridge, pairs: PairSet, n: int, bias_weight: float = 0.8,
                   model=None) -> tuple[PruningMask, dict[int, torch.Tensor]]:
    """The ``n`` neurons optiPfair's fairness pruning removes: its bias scores on ``pairs``, its fairness
    scores at ``bias_weight``, the highest of each layer (:func:`per_layer_counts`). ``model``: a clean
    HF copy of the bridge's weights (made when not given). Returns the mask and the fairness scores."""
    from ..weights.materialize import clean_hf_model

    if bridge.cfg.d_mlp is None or n <= 0:
        raise InterventionError("optiPfair's fairness pruning needs gated MLP neurons and a budget of "
                                "at least 1")
    analyze, fairness = optipfair_functions()
    model = clean_hf_model(bridge) if model is None else model
    bias = analyze(model, tokenizer_of(bridge), [(p.black, p.white) for p in pairs], show_progress=False)
    scores = fairness(model, bias, bias_weight=bias_weight)
    mask = PruningMask.keep_all(bridge, scorer=f"optipfair (bias_weight {bias_weight:g})", budget=str(n),
                                kind="neurons")
    for layer, k in enumerate(per_layer_counts(n, bridge.cfg.n_layers)):
        if k:
            mask.neurons[layer, torch.topk(scores[layer], k).indices] = False
    return mask, scores


def _optipfair(ctx: FitContext, weight: float, name: str) -> Intervention:
    if ctx.kind != "neurons":
        raise InterventionError(f"{name} prunes neurons only; run the arena with --kind neurons or "
                                "leave it out")
    n = budget_count(ctx.bridge, "neurons", ctx.budget)
    mask, _ = optipfair_mask(ctx.bridge, ctx.train, n, weight)
    return from_mask(ctx.bridge, name, mask, {"bias_weight": weight, "per_layer": "uniform"})


@register("optipfair", "optiPfair's fairness pruning, its default bias weight 0.8, the same count a layer")
def _optipfair_default(ctx: FitContext) -> Intervention:
    return _optipfair(ctx, 0.8, "optipfair")


@register("optipfair-0.45", "optiPfair's fairness pruning at the thesis's bias weight 0.45")
def _optipfair_thesis(ctx: FitContext) -> Intervention:
    return _optipfair(ctx, 0.45, "optipfair-0.45")
