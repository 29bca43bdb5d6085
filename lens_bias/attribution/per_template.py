"""Attribution kept per template.

Attribution is a mean over pairs of per-pair estimates, so :func:`attribute_templates` keeps the
*sums per template* from the usual passes (:class:`TemplateScores`), and the scores of any subset
or weighting of templates are a weighted sum of those: exactly what
:func:`lens_bias.attribution.patching.attribute` would give on that subset's pairs. Stability
selection resamples templates, cross-validation selects on some and validates on the others, and
neither costs another forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from ..bridge import Bridge, score_dtype
from ..errors import MaskError
from ..prompts.pairs import PairSet, neutral_text
from ..scores import Scores
from ..vocab import KINDS
from .patching import attribution_inputs, capability_cost, running_sums
from .provenance import provenance


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
            return {k: (torch.einsum("t,t...->...", ww, v) / max(n, 1e-12)).to(dt)
                    for k, v in self.sums.items()}

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
        return TemplateScores([self.templates[i] for i in keep], [self.domains[i] for i in keep],
                              self.counts[keep], {k: v[keep] for k, v in self.sums.items()},
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
    sums, metric_sums = running_sums(bridge, pairs, metric, "ablate", ablation, means, kinds, batch_size,
                                     False, progress, by="template")
    templates = pairs.templates
    dom = {p.template: p.domain for p in pairs}
    counts = torch.tensor([sum(1 for p in pairs if p.template == t) for t in templates], dtype=torch.float64)
    settings = {"scorer": "ablate", "estimator": "ablate", "metric": metric, "ablation": ablation,
                "graddrop": False, **provenance(bridge, pairs),
                "score_dtype": str(score_dtype(bridge)).replace("torch.", "")}
    return TemplateScores(templates, [dom[t] for t in templates], counts,
                          {k: v.cpu().double() for k, v in sums.items()}, settings,
                          metric_sums.cpu().double())


def template_scores(bridge: Bridge, train: PairSet, progress: bool = True,
                    batch_size: int = 16) -> tuple[TemplateScores, Scores]:
    """Attribution per template on the train pairs (zero ablation), and the capability cost on
    neutral text under zero ablation: what the selectors of :mod:`lens_bias.selection` and the
    pruning methods of :mod:`lens_bias.mitigation` take."""
    return (attribute_templates(bridge, train, batch_size=batch_size, progress=progress),
            capability_cost(bridge, neutral_text(), ablation="zero"))
