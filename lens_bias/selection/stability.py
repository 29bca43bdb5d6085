"""Stability selection: keep the units that the train templates agree on.

One-shot selection takes the top of one attribution on the train pairs, and so also the units
that only the train *wording* makes look biased. Stability selection (Meinshausen and Buhlmann
2010, adapted to a fixed budget) resamples the train templates many times, selects the budget on
each resample, and keeps the units chosen most often; optionally only units whose score has the
same sign in most domains.

Resampling costs no extra forward pass. Attribution is a mean over pairs of per-pair
estimates, so :func:`attribute_templates` keeps the *sums per template* from the usual passes
(:class:`TemplateScores`), and the scores of any subset of templates are a weighted sum of those:
exactly what :func:`lens_bias.attribution.patching.attribute` would give on that subset's pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from ..attribution.patching import attribution_inputs, running_sums
from ..attribution.provenance import provenance
from ..bridge import Bridge, score_dtype
from ..errors import MaskError
from ..masks import PruningMask
from ..prompts.pairs import PairSet
from ..scores import Scores
from ..vocab import KINDS, Kind
from .topk import Budget, select


@dataclass
class TemplateScores:
    """Attribution kept per template: ``sums[kind]`` [templates, n_layers, units] (float64 sums of
    per-pair estimates), ``counts`` [templates] (pairs per template), each template's domain, and
    the settings of the attribution. :meth:`scores` turns any weighting of templates into a
    :class:`~lens_bias.scores.Scores`."""

    templates: list[str]
    domains: list[str]  # the domain of each template
    counts: Float[Tensor, " templates"]
    sums: dict[str, Tensor]
    settings: dict = field(default_factory=dict)
    metric_sums: Tensor | None = None  # [templates] the metric summed over each template's pairs

    def weights_for(self, templates: Sequence[str]) -> Tensor:
        """Weight 1 for each of ``templates`` (repeats count again), 0 for the others."""
        w = torch.zeros(len(self.templates), dtype=torch.float64)
        index = {t: i for i, t in enumerate(self.templates)}
        for t in templates:
            if t not in index:
                raise MaskError(f"template {t!r} was not scored; have {self.templates}")
            w[index[t]] += 1
        return w

    def scores(self, weights: Tensor | None = None) -> Scores:
        """The scores of the pairs of the templates with ``weights`` (default: all, once each):
        overall and per domain means over their pairs, as :func:`~lens_bias.attribution.patching.attribute`
        computes them."""
        w = torch.ones(len(self.templates), dtype=torch.float64) if weights is None else weights.double()
        dt = score_dtype_of(self)

        def mean(sel: Tensor) -> dict[str, Tensor]:
            ww = w * sel
            n = float((ww * self.counts).sum())
            return {k: (torch.einsum("t,t...->...", ww, v) / max(n, 1e-12)).to(dt) for k, v in self.sums.items()}

        doms = sorted(set(self.domains))
        dom_of = torch.tensor([doms.index(d) for d in self.domains])
        by_domain = {d: mean((dom_of == i).double()) for i, d in enumerate(doms)
                     if float((w * (dom_of == i)).sum()) > 0}
        overall = mean(torch.ones_like(w))
        used = [d for d in doms if d in by_domain]
        n = {d: int(round(float((w * (dom_of == doms.index(d)) * self.counts).sum()))) for d in used}
        settings = {**self.settings, "domains": used, "n_pairs": sum(n.values()), "n_pairs_by_domain": n}
        if weights is not None and not bool((weights == 1).all()):  # another set of pairs than the one hashed
            settings.pop("pairs_hash", None)
            settings["template_weights"] = True
        if self.metric_sums is not None:
            m = {d: float((w * (dom_of == doms.index(d)) * self.metric_sums).sum()) for d in used}
            settings["metric_before_by_domain"] = {d: m[d] / n[d] for d in used}
            settings["metric_before"] = sum(m.values()) / sum(n.values())
        return Scores(overall.get("neurons"), overall.get("heads"), by_domain, settings)

    def restrict(self, templates: Sequence[str]) -> TemplateScores:
        """The template scores of ``templates`` only (for selecting on part of the train templates)."""
        keep = [i for i, t in enumerate(self.templates) if t in set(templates)]
        if len(keep) != len(set(templates)):
            raise MaskError(f"templates not scored: {sorted(set(templates) - set(self.templates))}")
        return TemplateScores([self.templates[i] for i in keep], [self.domains[i] for i in keep], self.counts[keep],
                              {k: v[keep] for k, v in self.sums.items()},
                              {k: v for k, v in self.settings.items() if k != "pairs_hash"},
                              None if self.metric_sums is None else self.metric_sums[keep])

    def subset(self, templates: Sequence[str]) -> Scores:
        """The scores of the pairs of ``templates`` only."""
        return self.scores(self.weights_for(templates))


def score_dtype_of(ts: TemplateScores):
    return getattr(torch, ts.settings.get("score_dtype", "float32"))


def attribute_templates(bridge: Bridge, pairs: PairSet, metric: str = "js", ablation: str = "zero",
                        means: dict | None = None, components: Sequence[str] = KINDS, batch_size: int = 16,
                        progress: bool = True) -> TemplateScores:
    """Attribution (the ``ablate`` estimator) with the sums kept per template, from the same
    passes as :func:`~lens_bias.attribution.patching.attribute`; ``.scores()`` equals its result.

    Examples:
        >>> from lens_bias import load_model, build_pairs
        >>> b = load_model("tiny-random")
        >>> ts = attribute_templates(b, build_pairs(["finance"]).sample(6), progress=False)
        >>> len(ts.templates) > 1, tuple(ts.sums["neurons"].shape[1:])
        (True, (2, 128))
    """
    kinds, pairs, means = attribution_inputs(bridge, pairs, metric, "ablate", ablation, components, means)
    sums, metric_sums = running_sums(bridge, pairs, metric, "ablate", ablation, means, kinds, batch_size, False, progress,
                            by="template")
    templates = pairs.templates
    dom = {p.template: p.domain for p in pairs}
    counts = torch.tensor([sum(1 for p in pairs if p.template == t) for t in templates], dtype=torch.float64)
    settings = {"scorer": "ablate", "estimator": "ablate", "metric": metric, "ablation": ablation, "graddrop": False,
                **provenance(bridge, pairs), "score_dtype": str(score_dtype(bridge)).replace("torch.", "")}
    return TemplateScores(templates, [dom[t] for t in templates], counts,
                          {k: v.cpu().double() for k, v in sums.items()}, settings, metric_sums.cpu().double())


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
        m = select(ts.scores(resample_templates(ts, fraction, gen)), budget, kind=kind, bridge=bridge, cost=cost,
                   max_cost_quantile=max_cost_quantile)
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
        raise MaskError(f"fewer than {Budget.parse(budget).count(bridge, kind)} {kind} have a positive score in "
                        f"{min_sign_share:.0%} of the domains; lower min_sign_share or the budget")
    mask.meta.update({"selector": "stable", "n_resamples": n_resamples, "fraction": fraction,
                      "min_sign_share": min_sign_share, "seed": seed})
    return mask, freq.float()
