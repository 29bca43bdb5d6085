"""Baseline scorers, and the one entry point for every scorer.

The baselines share the :class:`~lens_bias.scores.Scores` interface with the attribution
estimators of :mod:`lens_bias.attribution.patching` (``ablate``, ``patch``) and integrated gradients
(``ig``, :mod:`lens_bias.attribution.integrated`):

* ``actdiff``: mean |a_B - a_W| at the last token (optiPfair-style);
* ``wanda``: the |W_out| column norm times the difference of activation norms between Black and
  White prompts (Ma et al.);
* ``random``: seeded uniform scores (a control).

:data:`REGISTRY` maps each scorer's name to a callable ``(bridge, pairs, **kwargs) -> Scores``;
:func:`score` dispatches through it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import reduce
from torch import Tensor, nn

from ..bridge import Bridge, shape_of
from ..errors import LensBiasError
from ..model.layout import decoder_layers
from ..prompts.pairs import PairSet
from ..scores import Scores
from ..vocab import BASELINES, ESTIMATORS, KINDS, SCORERS, check_choice
from .integrated import integrated_gradients
from .patching import attribute
from .provenance import provenance

Scorer = Callable[..., Scores]


def baseline_scores(bridge: Bridge, pairs: PairSet, scorer: str, batch_size: int = 32,
                    seed: int = 0) -> Scores:
    """``actdiff``: mean |a_B - a_W| at the last token (optiPfair-style); ``wanda``: |W_out| column
    norm times the difference of activation norms between Black and White prompts (Ma et al.);
    ``random``: seeded uniform scores.

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> s = baseline_scores(b, build_pairs(["hiring"]).sample(2), "actdiff")
        >>> tuple(s.neurons.shape), sorted(s.by_domain)
        ((2, 128), ['hiring'])
    """
    from ..hooks.capture import last_token_activations

    settings = {"scorer": scorer, "estimator": scorer, "metric": "-",
                "model": getattr(bridge, "lens_bias_name", "?"),
                **provenance(bridge, pairs),  # pairs_hash, n_pairs, domains, model, model_shape
                "n_pairs_by_domain": {d: len(sub) for d, sub in pairs.by_domain().items()}}
    if scorer == "random":
        g = torch.Generator().manual_seed(seed)
        return Scores(torch.rand(shape_of(bridge, "neurons"), generator=g),
                      torch.rand(shape_of(bridge, "heads"), generator=g), {}, {**settings, "seed": seed})
    check_choice(scorer, BASELINES, "baseline scorer")
    per_domain = _FROM_ACTIVATIONS[scorer]
    by_domain = {d: per_domain(bridge, last_token_activations(bridge, sub, batch_size))
                 for d, sub in pairs.by_domain().items()}
    total = len(pairs)
    overall = {k: sum(by_domain[d][k] * len(pairs.filter(domains=[d])) for d in by_domain) / total
               for k in KINDS}
    return Scores(overall["neurons"], overall["heads"], by_domain, settings)


def _actdiff(bridge: Bridge, s: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"neurons": s["neuron_absdiff"], "heads": s["head_absdiff"]}


def _wanda(bridge: Bridge, s: dict[str, Tensor]) -> dict[str, Tensor]:
    layers = decoder_layers(bridge.original_model)[1]
    w_norm = torch.stack([layer.mlp.down_proj.weight.detach().abs().sum(0).float().cpu() for layer in layers])
    xn = (s["neuron_sq_black"].sqrt() - s["neuron_sq_white"].sqrt()).abs()
    o_norm = torch.stack([_o_proj_head_norms(bridge, layer) for layer in layers])
    return {"neurons": w_norm * xn, "heads": o_norm * s["head_absdiff"]}


def _o_proj_head_norms(bridge: Bridge, layer: nn.Module) -> Tensor:
    """|o_proj| summed over each head's columns (and all rows): [n_heads]."""
    w = layer.self_attn.o_proj.weight.detach().abs().float().cpu()
    return reduce(w, "d_model (head d_head) -> head", "sum", head=bridge.cfg.n_heads,
                  d_head=bridge.cfg.d_head)


# the baselines computed from last-token activation statistics (lens_bias.hooks.capture), per domain
_FROM_ACTIVATIONS: dict[str, Callable[[Bridge, dict[str, Tensor]], dict[str, Tensor]]] = {
    "actdiff": _actdiff, "wanda": _wanda,
}


def _estimator(name: str) -> Scorer:
    def run(bridge: Bridge, pairs: PairSet, **kwargs) -> Scores:
        return attribute(bridge, pairs, estimator=name, **kwargs)
    return run


def _integrated(bridge: Bridge, pairs: PairSet, graddrop: bool = False, ig_steps: int = 4,
                ig_rule: str = "gauss", ig_path: str = "layer", **kwargs) -> Scores:
    if graddrop:
        raise LensBiasError("GradDrop applies to the ablate and patch estimators, not to ig")
    return integrated_gradients(bridge, pairs, steps=ig_steps, rule=ig_rule, path=ig_path, **kwargs)


def _baseline(name: str) -> Scorer:
    def run(bridge: Bridge, pairs: PairSet, batch_size: int = 32, seed: int = 0, **ignored) -> Scores:
        return baseline_scores(bridge, pairs, name, batch_size=batch_size, seed=seed)
    return run


#: scorer name -> ``(bridge, pairs, **kwargs) -> Scores``; ``ig`` also takes ``ig_steps``,
#: ``ig_rule`` and ``ig_path``; the baselines take ``batch_size`` and ``seed`` and ignore the
#: attribution settings (metric, ablation, progress...)
REGISTRY: dict[str, Scorer] = {**{e: _estimator(e) for e in ESTIMATORS}, "ig": _integrated,
                               **{b: _baseline(b) for b in BASELINES}}


def score(bridge: Bridge, pairs: PairSet, scorer: str = "ablate", **kwargs) -> Scores:
    """One entry point for every scorer: attribution estimators and baselines (see :data:`REGISTRY`).

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> score(b, build_pairs(["hiring"]).sample(2), "random", seed=1).settings["seed"]
        1
        >>> score(b, build_pairs(["hiring"]).sample(2), "magic")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_bias.errors.ChoiceError: scorer must be one of ablate, patch, ig, actdiff, ...; got 'magic'
    """
    check_choice(scorer, SCORERS, "scorer")
    return REGISTRY[scorer](bridge, pairs, **kwargs)
