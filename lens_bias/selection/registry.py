"""Selectors by name, and honest model selection among them by cross-validation on the train templates.

A *selector* turns attribution into a mask at a budget:

* ``oneshot``: the top units of one attribution on all train pairs (:func:`lens_bias.selection.topk.select`);
* ``stable``: stability selection over resampled train templates (:mod:`lens_bias.selection.stability`);
* ``iterative``: re-attribute after each part of the budget (:func:`lens_bias.selection.topk.select_iterative`);
* ``learned``: a straight-through top-k mask learned with safeguards (:mod:`lens_bias.selection.learned`);
* ``auto``: whichever of :func:`default_candidates` :func:`choose` picks by cross-validation on the train templates.

:func:`choose` picks a selector and its capability quantile the honest way, by cross-validation
over the train templates: they are dealt by template into :data:`FOLDS` folds; in each fold every
candidate selects on the other folds' templates only (template-level scores make that free, no
new attribution) and is measured exactly on the fold's pairs (JS with the mask simulated), so
every train template is validated once, by a mask that never saw it. The candidate's mask on all
train templates is measured on neutral text (perplexity). The largest pooled validation JS
reduction among the candidates within the perplexity limit wins; the held-out split and
CrowS-Pairs are never looked at. One validation split of a third of the templates is too noisy
for this: on SmolLM2 the same one-shot mask removed 10 % of one such split's JS and 38 % of
another's, so every template is used.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..bridge import Bridge
from ..errors import MaskError
from ..hooks.ablation import ablate
from ..masks import PruningMask
from ..measures.capability import perplexity
from ..prompts.pairs import PairSet, neutral_text
from ..prompts.splits import template_folds, template_split
from ..scores import Scores
from ..vocab import Kind, check_selector
from .learned import LearnConfig, learn_mask, validation_js
from .stability import TemplateScores, attribute_templates, stability_select
from .topk import select, select_iterative

QUANTILES = (0.25, 0.5)
VAL_SHARE = 1 / 3
FOLDS = 3


@dataclass
class SelectorSpec:
    """One way of selecting: a selector name, its capability quantile (None: no filter) and options."""

    selector: str = "oneshot"
    max_cost_quantile: float | None = 0.5
    options: dict = field(default_factory=dict)

    def label(self) -> str:
        q = "off" if self.max_cost_quantile is None else f"{self.max_cost_quantile:g}"
        extra = "".join(f", {k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.selector} (cost quantile {q}{extra})"


def make_mask(spec: SelectorSpec, bridge: Bridge, ts: TemplateScores, pairs: PairSet, budget: str | int | float, kind: Kind,
              cost: Scores | None, neutral: Sequence[str] = (), seed: int = 0, batch_size: int = 16,
              progress: bool = False) -> PruningMask:
    """The mask of ``spec`` from the template scores ``ts`` of ``pairs`` (the pairs are re-scored
    only by ``iterative``, and split into fit and validation templates by ``learned``)."""
    check_selector(spec.selector)
    q, o = spec.max_cost_quantile, spec.options
    if spec.selector == "auto":
        res = choose(bridge, ts, pairs, budget, kind, cost, neutral, seed=seed, batch_size=batch_size)
        mask = res["mask"]
        mask.meta["model_selection"] = {k: v for k, v in res.items() if k not in ("chosen", "mask")}
        mask.meta.update({"selector": "auto", "selector_chosen": res["chosen"].label()})
        return mask
    if spec.selector == "oneshot":
        mask = select(ts.scores(), budget, kind=kind, bridge=bridge, cost=cost, max_cost_quantile=q)
    elif spec.selector == "stable":
        mask = stability_select(ts, budget, kind, bridge, n_resamples=o.get("n_resamples", 100),
                                fraction=o.get("fraction", 0.5), min_sign_share=o.get("min_sign_share"),
                                cost=cost, max_cost_quantile=q, seed=seed)[0]
    elif spec.selector == "iterative":
        mask = select_iterative(bridge, pairs, budget, kind, o.get("steps", 4), ts.settings.get("metric", "js"),
                                cost=cost, max_cost_quantile=q, batch_size=batch_size, first=ts.scores(),
                                progress=progress)[0]
    else:
        fit, val = validation_split(pairs, seed)
        cfg = LearnConfig(**{k: v for k, v in o.items() if k in LearnConfig.__dataclass_fields__}, seed=seed)
        mask = learn_mask(bridge, fit, val, budget, kind, ts.subset(fit.templates), list(neutral), cost, q, cfg,
                          progress=progress)[0]
    mask.meta.update({"selector": spec.selector, "max_cost_quantile": q, **{f"selector_{k}": v for k, v in o.items()}})
    return mask


def select_with(selector: str, bridge: Bridge, pairs: PairSet, budget: str | int | float, kind: str = "neurons", *,
                scores: Scores | None = None, ts: TemplateScores | None = None, steps: int = 4, metric: str = "js",
                ablation: str = "zero", means: dict | None = None, cost: Scores | None = None,
                max_cost_quantile: float | None = 0.5, seed: int = 0, batch_size: int = 16,
                progress: bool = False) -> PruningMask:
    """The mask ``selector`` chooses from ``pairs`` at ``budget`` of ``kind`` (``neurons``, ``heads``
    or ``both``: one mask a kind, joined), what ``lens-bias run`` and ``lens-bias prune`` prune.

    ``scores`` is the attribution of ``pairs`` (the ``ablate`` estimator under ``ablation``):
    ``oneshot`` takes its top units and ``iterative`` (``steps`` rounds, under ``ablation``)
    reuses it as its first round; ``ts`` is the same attribution kept per template, which
    ``stable``, ``learned`` and ``auto`` need (computed here when not given; they work under zero
    ablation only)."""
    check_selector(selector)
    if ablation != "zero" and selector not in ("oneshot", "iterative"):
        raise MaskError(f"the {selector} selector works under zero ablation; use zero ablation, or the oneshot "
                        "or iterative selector")
    kinds = ["neurons", "heads"] if kind == "both" else [kind]
    q = max_cost_quantile
    def per_template() -> TemplateScores:  # the attribution under the same ablation, unless given
        return ts if ts is not None else attribute_templates(bridge, pairs, metric=metric, ablation=ablation,
                                                             means=means, batch_size=batch_size, progress=progress)

    if selector == "oneshot":
        return select(scores if scores is not None else per_template().scores(), budget, kind=kind, bridge=bridge,
                      cost=cost, max_cost_quantile=q)
    if selector == "iterative":
        parts = [select_iterative(bridge, pairs, budget, k, steps, metric, ablation, means, cost, q, batch_size,
                                  first=scores, progress=progress)[0] for k in kinds]
    else:
        tts = per_template()
        parts = [make_mask(SelectorSpec(selector, q), bridge, tts, pairs, budget, k, cost, neutral_text(), seed,
                           batch_size, progress) for k in kinds]
    return parts[0] if len(parts) == 1 else parts[0] | parts[1]


def validation_split(train: PairSet, seed: int = 0, share: float = VAL_SHARE) -> tuple[PairSet, PairSet]:
    """(fit, validation) pairs: the train pairs split again by template (another seed than the
    held-out split)."""
    return template_split(train, held_out=share, seed=seed + 1)


def default_candidates() -> list[SelectorSpec]:
    """What :func:`choose` compares by default: one-shot and stability selection, each at the
    capability quantiles :data:`QUANTILES`."""
    return [SelectorSpec(s, q) for s in ("oneshot", "stable") for q in QUANTILES]


def choose(bridge: Bridge, ts: TemplateScores, train: PairSet, budget: str | int | float, kind: Kind, cost: Scores | None,
           neutral: Sequence[str], candidates: Sequence[SelectorSpec] | None = None, max_ppl_increase: float = 2.0,
           seed: int = 0, batch_size: int = 16, progress: bool = False, folds: int = FOLDS) -> dict:
    """Pick the candidate with the largest cross-validated JS reduction on the train templates,
    among those whose mask (selected on all train templates) raised neutral-text perplexity by at
    most ``max_ppl_increase`` % (see the module docstring). ``folds=1``: one fit / validation split
    (:func:`validation_split`) instead of ``folds``-fold cross-validation by template (fewer folds
    when the train pairs have fewer templates).

    Returns ``{"chosen": SelectorSpec, "mask": its mask on all train templates, "rows": [...],
    "why": str, "folds", "n_fit_templates", "n_val_templates"}``; each row has the candidate, its validation JS reduction (%, pooled over
    the folds), the reduction of each fold and the neutral perplexity change (%)."""
    candidates = list(candidates or default_candidates())
    folds = min(folds, len({(p.domain, p.template) for p in train}))  # a small user file: fewer folds
    splits = template_folds(train, folds, seed + 1) if folds > 1 else [validation_split(train, seed)]
    base = [validation_js(bridge, val, None, batch_size) * len(val) for _, val in splits]
    ppl0 = perplexity(bridge, neutral, progress=False)
    rows, masks = [], []
    for spec in candidates:
        after = [validation_js(bridge, val, make_mask(spec, bridge, ts.restrict(fit.templates), fit, budget, kind, cost,
                                                neutral, seed, batch_size), batch_size) * len(val)
                 for fit, val in splits]
        masks.append(make_mask(spec, bridge, ts, train, budget, kind, cost, neutral, seed, batch_size))
        with ablate(bridge, masks[-1]):
            ppl = perplexity(bridge, neutral, progress=False)
        rows.append({"selector": spec.selector, "max_cost_quantile": spec.max_cost_quantile, "label": spec.label(),
                     "val_reduction_pct": 100 * (1 - sum(after) / sum(base)),
                     "fold_reduction_pct": [100 * (1 - a / b) for a, b in zip(after, base, strict=True)],
                     "neutral_ppl_change_pct": 100 * (ppl / ppl0 - 1)})
    ok = [i for i, r in enumerate(rows) if r["neutral_ppl_change_pct"] <= max_ppl_increase]
    n_val = sum(len(val.templates) for _, val in splits)
    how = f"{folds}-fold cross-validation over the {n_val} train templates" if folds > 1 else f"{n_val} validation templates"
    if ok:
        i = max(ok, key=lambda j: rows[j]["val_reduction_pct"])
        why = (f"largest JS reduction by {how} ({rows[i]['val_reduction_pct']:.1f} %) among the {len(ok)} "
               f"candidates within +{max_ppl_increase:g} % neutral-text perplexity")
    else:
        i = min(range(len(rows)), key=lambda j: rows[j]["neutral_ppl_change_pct"])
        why = f"no candidate stayed within +{max_ppl_increase:g} % neutral-text perplexity; the least damaging"
    for j, r in enumerate(rows):
        r["chosen"] = j == i
    return {"chosen": candidates[i], "mask": masks[i], "rows": rows, "why": why, "folds": folds,
            "n_fit_templates": len(splits[0][0].templates), "n_val_templates": n_val}


def selector_picks(bridge: Bridge, train: PairSet, neutral: Sequence[str], selector: str, metric: str,
                    cost: Scores | None, max_cost_quantile: float | None, seed: int, batch_size: int,
                   progress: bool) -> tuple[Scores, Callable[[str, str, str], PruningMask | None]]:
    """The ``ablate`` scores of ``train`` (kept per template) and the ``pick`` of
    :func:`lens_bias.studies.curve.pruning_curve` that chooses the ``ablate`` scorer's units with
    ``selector`` (:func:`make_mask`; ``None`` for the other scorers, which keep their top scores)."""
    ts = attribute_templates(bridge, train, metric=metric, batch_size=batch_size, progress=progress)
    spec = SelectorSpec(selector, max_cost_quantile)

    def pick(name: str, kind: str, budget: str) -> PruningMask | None:
        return make_mask(spec, bridge, ts, train, budget, kind, cost, neutral, seed, batch_size) \
            if name == "ablate" else None

    return ts.scores(), pick
