"""Integrated gradients along the ablation path: attribution that does not assume the metric is
linear over a unit's whole removal.

Attribution patching (:mod:`lens_bias.attribution.patching`, ``ablate``) scores a unit by
``-(a_ref - a) . dm/da`` at the clean activation: a first-order estimate of what ablating it does.
Zeroing a strong unit is a large step, and the metric bends over it. Integrated gradients (IG)
average the gradient along the path instead. At a point ``alpha`` in [0, 1] every unit on the path
outputs ``a + alpha (a_ref - a)`` (``a``: what it would output there, ``a_ref``: 0 or its ablation
constant) and every other unit runs freely; a unit's score is

    score_i = - sum_k w_k  (a_ref,i - a_i(alpha_k)) . dm/dx_i (alpha_k)

summed over positions and the pair's two prompts, with the quadrature nodes ``alpha_k`` and weights
``w_k`` of :func:`quadrature` (Gauss-Legendre or the midpoint rule, ``m`` points). The scores of
the units on one path add up to the exact change of the metric when they are ablated together
(**completeness**), to quadrature error: ``d m / d alpha`` is exactly the sum of the terms above.

Which units share a path (``path``):

* ``"layer"`` (EAP-IG's "activations" variant, Hanna et al. 2024): each layer's neurons, and each
  layer's heads, move on their own path while the rest of the model runs clean; ``m`` forward and
  backward passes per layer and kind, so ``m x n_layers x kinds`` times attribution patching's cost;
* ``"joint"``: every scored unit of every layer moves at once; ``m`` passes in all, but the far end
  of the path is the model with all of them ablated, a long way from pruning 0.5 % of them.

``m = 1`` with the midpoint rule is attribution patching's estimate taken halfway along the path.

On a model whose attention and MLP outputs are normalized before they join the residual stream
(:func:`lens_bias.bridge.renormalized_outputs`: Gemma 2 and 3, OLMo 2), the layer path is
degenerate: scaling all of a layer's units by ``1 - alpha`` leaves the layer's output unchanged
until ``alpha`` nears 1, so each unit's gradient there is its clean gradient over ``1 - alpha``,
and every score is attribution patching's times ``sum_k w_k / (1 - alpha_k)`` (3 for two Gauss
points), at ``m x n_layers x kinds`` times its cost; :func:`integrated_gradients` warns.
Batched and streamed like :func:`lens_bias.attribution.patching.attribute` (memory flat in the
number of pairs).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..bridge import Bridge, renormalized_outputs, shape_of, tokenizer_of
from ..hooks.components import hook_name
from ..hooks.interventions import attached
from ..model.batching import Batch
from ..prompts.pairs import PairSet
from ..scores import Scores
from ..vocab import Kind, check_choice
from .passes import ablation_contributions, ablation_ref, batch_metric, default_batch
from .patching import attribution_inputs, running_sums, scores_from_sums

RULES = ("gauss", "midpoint")
PATHS = ("layer", "joint")
# (kind, layer) -> bool [units]: the units on a path (sizes differ by kind, so no jaxtyping axis)
OnPath = dict[tuple[str, int], Tensor]


def quadrature(m: int, rule: str = "gauss") -> tuple[list[float], list[float]]:
    """``m`` nodes in (0, 1) and their weights (summing to 1): Gauss-Legendre (exact for
    polynomials of degree ``2m - 1``) or the midpoint rule.

    Examples:
        >>> quadrature(1)
        ([0.5], [1.0])
        >>> [round(x, 4) for x in quadrature(2)[0]], quadrature(2, "midpoint")[0]
        ([0.2113, 0.7887], [0.25, 0.75])
    """
    check_choice(rule, RULES, "quadrature rule")
    if m < 1:
        raise ValueError(f"IG needs at least one point, got m = {m}")
    if rule == "midpoint":
        return [(k + 0.5) / m for k in range(m)], [1.0 / m] * m
    x, w = np.polynomial.legendre.leggauss(m)
    return [float((v + 1) / 2) for v in x], [float(v / 2) for v in w]


def _interpolate(kind: Kind, layer: int, alpha: float, on: Tensor | None, ablation: str, means: dict | None,
                 store: dict):
    """The hook of one layer's units at ``alpha``: units on the path output ``a + alpha (a_ref -
    a)``; ``store[(kind, layer)]`` keeps ``(a_ref - a, output)`` for the gradient and the score."""
    def fn(act, hook):
        delta = ablation_ref(kind, layer, ablation, means, act) - act
        if on is None or alpha == 0.0:
            out = act + 0.0 * delta  # a node of its own, so its gradient can be taken
        else:
            mask = on.to(act.device, act.dtype)
            mask = mask[:, None] if kind == "heads" else mask
            out = act + alpha * mask * delta
        store[(kind, layer)] = (delta.detach(), out)
        return out
    return fn


def path_scores(bridge: Bridge, chunk, metric, ablation: str, means: dict | None, kinds: Sequence[Kind],
                on_path: OnPath, steps: int = 4, rule: str = "gauss", batch: Batch | None = None,
                ) -> dict[tuple[str, int], Tensor]:
    """Every unit's integrated score (sign: reduction, see the module docstring) along one path, the
    units of ``on_path`` (``(kind, layer) -> bool [units]``) moving together; per pair, keyed
    ``(kind, layer)`` for every scored layer (units off the path get the path-averaged first-order
    estimate of their own ablation); each value ``[pairs, units of its kind]``."""
    tok = tokenizer_of(bridge)
    batch = default_batch(bridge, chunk, metric) if batch is None else batch
    width = batch.ids.shape[1]
    mask = None if all(x == width for x in batch.lengths.tolist()) else batch.mask
    out: dict = {}
    for alpha, weight in zip(*quadrature(steps, rule), strict=True):
        store: dict = {}
        hooks = [(hook_name(k, L), _interpolate(k, L, alpha, on_path.get((k, L)), ablation, means, store))
                 for k in kinds for L in range(bridge.cfg.n_layers)]
        with attached(bridge, hooks), torch.enable_grad():
            per_pair = batch_metric(bridge, batch, chunk, metric, tok)
            keys = list(store)
            grads = torch.autograd.grad(per_pair.sum(), [store[k][1] for k in keys], allow_unused=True)
        for key, g in zip(keys, grads, strict=True):
            out[key] = out.get(key, 0) + weight * ablation_contributions(key[0], store[key][0], g, mask)
    return out


def _paths(bridge: Bridge, kinds: Sequence[Kind], path: str) -> list[OnPath]:
    """The paths of ``path`` (see the module docstring): one per layer and kind, or one for all."""
    check_choice(path, PATHS, "IG path")
    full = {(k, L): torch.ones(shape_of(bridge, k)[1], dtype=torch.bool)
            for k in kinds for L in range(bridge.cfg.n_layers)}
    return [full] if path == "joint" else [{key: on} for key, on in full.items()]


def integrated_gradients(bridge: Bridge, pairs: PairSet, metric: str = "js", ablation: str = "zero",
                         components: Sequence[str] = ("neurons", "heads"), batch_size: int = 16,
                         means: dict | None = None, steps: int = 4, rule: str = "gauss", path: str = "layer",
                         progress: bool = True) -> Scores:
    """Score every neuron and head by integrated gradients along the ablation path (the module
    docstring); the same :class:`~lens_bias.scores.Scores` as attribution patching, overall and
    per domain.

    Examples:
        >>> from lens_bias import load_model, build_pairs
        >>> b = load_model("tiny-random")
        >>> s = integrated_gradients(b, build_pairs(["finance"]).sample(2), steps=2, progress=False)
        >>> tuple(s.neurons.shape), s.settings["estimator"], s.settings["ig_steps"]
        ((2, 128), 'ig', 2)
    """
    kinds, pairs, means = attribution_inputs(bridge, pairs, metric, "ablate", ablation, components, means)
    paths = _paths(bridge, kinds, path)
    if path == "layer" and renormalized_outputs(bridge):
        warnings.warn("this model normalizes each attention and MLP output before the residual stream, so "
                      "IG's layer path only rescales attribution patching's scores (at many times its cost); "
                      "use the ablate scorer, or path='joint'", UserWarning, stacklevel=2)

    def one_batch(chunk, batch):
        contrib = {}
        for on_path in paths:
            scored = path_scores(bridge, chunk, metric, ablation, means, kinds, on_path, steps, rule, batch)
            contrib.update({key: scored[key] for key in on_path})
        with torch.no_grad():
            per_pair = batch_metric(bridge, batch, chunk, metric, tokenizer_of(bridge))
        return contrib, per_pair

    sums, metric_sum = running_sums(bridge, pairs, metric, "ig", ablation, means, kinds, batch_size, False,
                                    progress, pass_fn=one_batch)
    return scores_from_sums(bridge, pairs, kinds, sums, metric_sum, False,
                            {"scorer": "ig", "estimator": "ig", "metric": metric, "ablation": ablation,
                             "graddrop": False, "ig_steps": steps, "ig_rule": rule, "ig_path": path})
