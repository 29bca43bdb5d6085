"""Stability selection: keep the units that the train templates agree on.

One-shot selection takes the top of one attribution on the train pairs, and so also the units
that only the train *wording* makes look biased. Stability selection (Meinshausen and Buhlmann
2010, adapted to a fixed budget) resamples the train templates many times, selects the budget on
each resample, and keeps the units chosen most often; optionally only units whose score has the
same sign in most domains.

Resampling costs no extra forward pass: the attribution kept per template
(:mod:`lens_bias.attribution.per_template`) gives the scores of any resample as a weighted sum.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..attribution.per_template import TemplateScores, attribute_templates  # noqa: F401 (0.1's names here)
from ..bridge import Bridge
from ..errors import MaskError
from ..masks import PruningMask
from ..scores import Scores
from ..vocab import KINDS, Kind
from .registry import Selection, SelectionInputs, SelectorSpec, register
from .topk import Budget, select


def resample_templates(ts: TemplateScores, fraction: float, gen: torch.Generator) -> Tensor:
    """Weights of one resample: in every domain, ``fraction`` of its templates (at least one)
    drawn without replacement."""
    w = torch.zeros(len(ts.templates), dtype=torch.float64)
    for d in sorted(set(ts.domains)):
        idx = [i for i, x in enumerate(ts.domains) if x == d]
        take = max(1, round(fraction * len(idx)))
        w[[idx[j] for j in torch.randperm(len(idx), generator=gen)[:take].tolist()]] = 1
    return w


def sign_agreement(scores: Scores, kind: Kind) -> Tensor:
    """Per unit, the share of domains in which its score is positive (removing it reduces the
    bias there)."""
    per = [d[kind] for d in scores.by_domain.values() if d.get(kind) is not None]
    if not per:
        raise MaskError("sign agreement needs per-domain scores")
    return torch.stack([(p > 0).double() for p in per]).mean(0)


def stability_select(ts: TemplateScores, budget: str | float | int | Budget, kind: Kind, bridge: Bridge,
                     n_resamples: int = 100, fraction: float = 0.5, min_sign_share: float | None = None,
                     cost: Scores | None = None, max_cost_quantile: float | None = None,
                     seed: int = 0) -> tuple[PruningMask, Tensor]:
    """Select ``budget`` units of ``kind`` by how often they are in the top ``budget`` over
    ``n_resamples`` resamples of the train templates (``fraction`` of each domain's templates;
    seeded), with the same capability filter as :func:`~lens_bias.selection.topk.select`; ties go to the
    higher score on all templates. ``min_sign_share``: only units whose score is positive in at
    least that share of domains may be chosen.

    Returns the mask and the selection frequency of every unit ([n_layers, units], in [0, 1]).

    Examples:
        >>> from lens_bias import load_model, build_pairs
        >>> b = load_model("tiny-random")
        >>> ts = attribute_templates(b, build_pairs(["finance", "hiring"]).sample(6), progress=False)
        >>> m, freq = stability_select(ts, 5, "neurons", b, n_resamples=20)
        >>> m.counts()["neurons"], float(freq.max()) <= 1
        (5, True)
    """
    if not 0 < fraction <= 1:
        raise MaskError(f"fraction must be in (0, 1], got {fraction}")
    if n_resamples < 1:
        raise MaskError(f"n_resamples must be at least 1, got {n_resamples}")
    if kind not in ts.sums:
        raise MaskError(f"the template scores have no {kind}")
    gen = torch.Generator().manual_seed(seed)
    freq = torch.zeros(ts.sums[kind].shape[1:], dtype=torch.float64)
    for _ in range(n_resamples):
        m = select(ts.scores(resample_templates(ts, fraction, gen)), budget, kind=kind, bridge=bridge,
                   cost=cost, max_cost_quantile=max_cost_quantile)
        freq += (~m.tensor(kind)).double()
    freq /= n_resamples
    full = ts.scores()
    s = full.get(kind).double()
    # frequency first; the full-data score only breaks ties (scaled below one resample's step)
    rank = freq + (s - s.min()) / (s.max() - s.min() + 1e-30) / (2 * n_resamples)
    if min_sign_share is not None:
        rank[sign_agreement(full, kind) < min_sign_share] = -1.0
    ranked = Scores(**{k: (rank.float() if k == kind else None) for k in KINDS}, settings=full.settings)
    mask = select(ranked, budget, kind=kind, bridge=bridge, cost=cost, max_cost_quantile=max_cost_quantile)
    if min_sign_share is not None and bool((rank[~mask.tensor(kind)] < 0).any()):
        raise MaskError(f"fewer than {Budget.parse(budget).count(bridge, kind)} {kind} have a positive score "
                        f"in {min_sign_share:.0%} of the domains; lower min_sign_share or the budget")
    mask.meta.update({"selector": "stable", "n_resamples": n_resamples, "fraction": fraction,
                      "min_sign_share": min_sign_share, "seed": seed})
    return mask, freq.float()


@register("stable", "stability selection: the units most often on top over resampled train templates",
          options=("n_resamples", "fraction", "min_sign_share"))
def stable_selector(spec: SelectorSpec, inputs: SelectionInputs) -> Selection:
    """:func:`stability_select` on the attribution kept per template."""
    o = spec.options
    mask, freq = stability_select(inputs.per_template(), inputs.budget, inputs.kind, inputs.bridge,
                                  n_resamples=o.get("n_resamples", 100), fraction=o.get("fraction", 0.5),
                                  min_sign_share=o.get("min_sign_share"), cost=inputs.cost,
                                  max_cost_quantile=spec.max_cost_quantile, seed=inputs.seed)
    return Selection(mask, {"max_frequency": float(freq.max())})
