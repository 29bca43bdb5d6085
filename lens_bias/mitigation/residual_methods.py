"""The residual-stream methods of the family, each with its setting chosen on the train split
(:func:`lens_bias.mitigation.residual.choose`: lowest train JS within the neutral-KL budget):

* ``direction``: directional ablation of the Black-White direction read at one of the candidate
  layers, removed everywhere; folded into the weights (not on Gemma 2 / 3);
* ``direction-mean``: the same direction, its component set to its mean on neutral text instead
  of 0 (directional mean-ablation); folded with biases (not on Gemma 2 / 3);
* ``leace``: LEACE of the group at one candidate layer; simulated only;
* ``steer``: always-on steering, ``alpha v_L`` added at layer ``L`` (alpha in +-1, +-4, +-16);
  folded as one MLP bias;
* ``steer-conditional``: conditional steering toward the groups' midpoint (beta 0.5 or 1); simulated only.
"""

from __future__ import annotations

import torch

from ..bridge import Bridge
from ..errors import InterventionError
from .base import FitContext, Intervention, register
from .directions import (
    conditional_hooks,
    direction_hooks,
    direction_mean_hooks,
    fold_direction,
    fold_direction_mean,
    fold_steering,
    mean_projections,
    steering_hooks,
    unit,
)
from .leace import fit_eraser, leace_hooks
from .residual import candidate_layers, choose, pair_residuals

# alpha in units of the mean difference v_L, which is small beside the stream's norm (about 1 %
# on SmolLM2): the grid reaches far enough that the KL budget, not the grid, limits the strength
STEER_ALPHAS = (-16.0, -4.0, -1.0, 1.0, 4.0, 16.0)
CONDITIONAL_BETAS = (0.5, 1.0)


def _params_of_writers(bridge: Bridge) -> int:
    """Weights of the matrices that write to the residual stream (the embedding, o_proj, down_proj)."""
    c = bridge.cfg
    return c.d_vocab * c.d_model + c.n_layers * (c.n_heads * c.d_head + c.d_mlp) * c.d_model


def _foldable(bridge: Bridge, fold_fn, *args):
    """``(fold, None)``, or ``(None, why)`` when the fold refuses this model."""
    from .directions import refuse_renormalized

    try:
        refuse_renormalized(bridge, "this edit")
    except InterventionError as e:
        return None, str(e)
    return (lambda: fold_fn(bridge, *args)), None


@register("direction", "directional ablation of the Black-White direction everywhere (rank 1, folded)")
def _direction(ctx: FitContext) -> Intervention:
    res = ctx.residuals()
    diffs = res.mean_diff()
    settings = {f"layer {layer}": direction_hooks(ctx.bridge, diffs[i]) for i, layer in enumerate(res.layers)}
    best, tried = choose(ctx.bridge, ctx.tuning(), settings)
    i = list(settings).index(best)
    d = unit(diffs[i])
    fold, why = _foldable(ctx.bridge, fold_direction, d)
    cost = {"rank_removed": 1, "writers_edited": 2 * ctx.bridge.cfg.n_layers + 1,
            "params_changed": _params_of_writers(ctx.bridge)}
    return Intervention("direction", settings[best], cost,
                        {"read_at_layer": res.layers[i], "tried": tried}, fold, why)


@register("direction-mean", "directional mean-ablation: the Black-White component set to its "
                            "neutral-text mean everywhere (rank 1 and biases, folded)")
def _direction_mean(ctx: FitContext) -> Intervention:
    res = ctx.residuals()
    dirs = torch.stack([unit(v) for v in res.mean_diff()])
    means = mean_projections(ctx.bridge, dirs, ctx.tuning().neutral)  # [points, layers read]
    settings = {f"layer {layer}": direction_mean_hooks(ctx.bridge, dirs[i], means[:, i])
                for i, layer in enumerate(res.layers)}
    best, tried = choose(ctx.bridge, ctx.tuning(), settings)
    i = list(settings).index(best)
    fold, why = _foldable(ctx.bridge, fold_direction_mean, dirs[i], means[:, i])
    c = ctx.bridge.cfg
    cost = {"rank_removed": 1, "writers_edited": 2 * c.n_layers + 1, "vectors_added": 2 * c.n_layers + 1,
            "params_changed": _params_of_writers(ctx.bridge)}
    chosen = {"read_at_layer": res.layers[i], "tried": tried}
    return Intervention("direction-mean", settings[best], cost, chosen, fold, why)


@register("leace", "LEACE of the group from the residual stream at one layer (simulated only)")
def _leace(ctx: FitContext) -> Intervention:
    layers = candidate_layers(ctx.bridge)
    res = pair_residuals(ctx.bridge, ctx.train, layers, positions="all", batch_size=ctx.batch_size)
    erasers = [fit_eraser(res.x[i], res.z) for i in range(len(layers))]
    settings = {f"layer {layer}": leace_hooks(ctx.bridge, layer, erasers[i])
                for i, layer in enumerate(layers)}
    best, tried = choose(ctx.bridge, ctx.tuning(), settings)
    layer = layers[list(settings).index(best)]
    d = ctx.bridge.cfg.d_model
    cost = {"rank_removed": 1, "vectors_added": 3, "params_changed": 0, "params_added": 3 * d}
    why = ("LEACE edits the stream entering one layer; any weight edit of the writers before it also "
           "changes what earlier layers read, so no fold equals it")
    return Intervention("leace", settings[best], cost, {"layer": layer, "tried": tried}, None, why)


@register("steer", "always-on steering: alpha x the Black-White difference added at one layer (one vector)")
def _steer(ctx: FitContext) -> Intervention:
    res = ctx.residuals()
    diffs = res.mean_diff()
    options = {(layer, a): diffs[i] * a for i, layer in enumerate(res.layers) for a in STEER_ALPHAS}
    settings = {f"layer {layer}, alpha {a:+g}": steering_hooks(ctx.bridge, layer, v)
                for (layer, a), v in options.items()}
    best, tried = choose(ctx.bridge, ctx.tuning(), settings)
    (layer, a), vec = list(options.items())[list(settings).index(best)]
    fold, why = _foldable(ctx.bridge, fold_steering, layer, vec)
    cost = {"vectors_added": 1, "params_changed": 0, "params_added": ctx.bridge.cfg.d_model}
    return Intervention("steer", settings[best], cost, {"layer": layer, "alpha": a, "tried": tried},
                        fold, why)


@register("steer-conditional", "conditional steering toward the groups' midpoint where a probe reads race")
def _steer_conditional(ctx: FitContext) -> Intervention:
    res = ctx.residuals()
    black, white = res.black.mean(1), res.white.mean(1)
    options = [(i, layer, b) for i, layer in enumerate(res.layers) for b in CONDITIONAL_BETAS]
    settings = {f"layer {layer}, beta {b:g}": conditional_hooks(ctx.bridge, layer, black[i], white[i], b)
                for i, layer, b in options}
    best, tried = choose(ctx.bridge, ctx.tuning(), settings)
    _, layer, b = options[list(settings).index(best)]
    cost = {"vectors_added": 1, "params_changed": 0, "params_added": ctx.bridge.cfg.d_model + 2}
    why = "the probe's clamp makes the edit depend on the activation non-linearly; no weight edit equals it"
    chosen = {"layer": layer, "beta": b, "tried": tried}
    return Intervention("steer-conditional", settings[best], cost, chosen, None, why)
