"""The ``auto`` selector: honest model selection among the selectors, by cross-validation on the
train templates.

:func:`choose` picks a selector and its capability quantile: the train templates are dealt into
:data:`FOLDS` folds; in each fold every candidate selects on the other folds' templates only
(template-level scores make that free, no new attribution) and is measured exactly on the fold's
pairs (JS with the mask simulated), so every train template is validated once, by a mask that
never saw it. The candidate's mask on all train templates is measured on neutral text
(perplexity). The largest pooled validation JS reduction among the candidates within the
perplexity limit wins; the held-out split and CrowS-Pairs are never looked at. One validation
split of a third of the templates is too noisy for this: on SmolLM2 the same one-shot mask
removed 10 % of one such split's JS and 38 % of another's, so every template is used.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..attribution.per_template import TemplateScores
from ..bridge import Bridge
from ..hooks.ablation import ablate
from ..measures.capability import perplexity
from ..prompts.pairs import PairSet
from ..prompts.splits import template_folds, validation_split
from ..scores import Scores
from ..vocab import Kind
from .learned import validation_js
from .registry import Selection, SelectionInputs, SelectorSpec, register, select_units

QUANTILES = (0.25, 0.5)
FOLDS = 3


def default_candidates() -> list[SelectorSpec]:
    """What :func:`choose` compares by default: one-shot and stability selection, each at the
    capability quantiles :data:`QUANTILES`."""
    return [SelectorSpec(s, q) for s in ("oneshot", "stable") for q in QUANTILES]


def choose(bridge: Bridge, ts: TemplateScores, train: PairSet, budget: str | int | float, kind: Kind,
           cost: Scores | None, neutral: Sequence[str], candidates: Sequence[SelectorSpec] | None = None,
           max_ppl_increase: float = 2.0, seed: int = 0, batch_size: int = 16, folds: int = FOLDS) -> dict:
    """Pick the candidate with the largest cross-validated JS reduction on the train templates,
    among those whose mask (selected on all train templates) raised neutral-text perplexity by at
    most ``max_ppl_increase`` % (see the module docstring). ``folds=1``: one fit / validation split
    (:func:`~lens_bias.prompts.splits.validation_split`) instead of ``folds``-fold cross-validation
    by template (fewer folds when the train pairs have fewer templates).

    Returns ``{"chosen": SelectorSpec, "mask": its mask on all train templates, "rows": [...],
    "why": str, "folds", "n_fit_templates", "n_val_templates"}``; each row has the candidate, its
    validation JS reduction (%, pooled over the folds), the reduction of each fold and the neutral
    perplexity change (%)."""
    candidates = list(candidates or default_candidates())
    folds = min(folds, len({(p.domain, p.template) for p in train}))  # a small user file: fewer folds
    splits = template_folds(train, folds, seed + 1) if folds > 1 else [validation_split(train, seed)]
    base = [validation_js(bridge, val, None, batch_size) * len(val) for _, val in splits]
    ppl0 = perplexity(bridge, neutral, progress=False)

    def mask_of(spec: SelectorSpec, scores: TemplateScores, pairs: PairSet):
        inputs = SelectionInputs(bridge, pairs, budget, kind, cost, neutral, template_scores=scores,
                                 seed=seed, batch_size=batch_size)
        mask = select_units(spec, inputs).mask
        mask.meta.update({"selector": spec.selector, "max_cost_quantile": spec.max_cost_quantile,
                          **{f"selector_{k}": v for k, v in spec.options.items()}})  # which candidate it is
        return mask

    rows, masks = [], []
    for spec in candidates:
        after = [validation_js(bridge, val, mask_of(spec, ts.restrict(fit.templates), fit), batch_size)
                 * len(val) for fit, val in splits]
        masks.append(mask_of(spec, ts, train))
        with ablate(bridge, masks[-1]):
            ppl = perplexity(bridge, neutral, progress=False)
        rows.append({"selector": spec.selector, "max_cost_quantile": spec.max_cost_quantile,
                     "label": spec.label(), "val_reduction_pct": 100 * (1 - sum(after) / sum(base)),
                     "fold_reduction_pct": [100 * (1 - a / b) for a, b in zip(after, base, strict=True)],
                     "neutral_ppl_change_pct": 100 * (ppl / ppl0 - 1)})
    i, why = _pick(rows, splits, folds, max_ppl_increase)
    for j, r in enumerate(rows):
        r["chosen"] = j == i
    return {"chosen": candidates[i], "mask": masks[i], "rows": rows, "why": why, "folds": folds,
            "n_fit_templates": len(splits[0][0].templates),
            "n_val_templates": sum(len(val.templates) for _, val in splits)}


def _pick(rows: list[dict], splits: list, folds: int, max_ppl_increase: float) -> tuple[int, str]:
    """The winning row and why it won."""
    ok = [i for i, r in enumerate(rows) if r["neutral_ppl_change_pct"] <= max_ppl_increase]
    n_val = sum(len(val.templates) for _, val in splits)
    how = f"{folds}-fold cross-validation over the {n_val} train templates" if folds > 1 \
        else f"{n_val} validation templates"
    if ok:
        i = max(ok, key=lambda j: rows[j]["val_reduction_pct"])
        return i, (f"largest JS reduction by {how} ({rows[i]['val_reduction_pct']:.1f} %) among the "
                   f"{len(ok)} candidates within +{max_ppl_increase:g} % neutral-text perplexity")
    i = min(range(len(rows)), key=lambda j: rows[j]["neutral_ppl_change_pct"])
    return i, (f"no candidate stayed within +{max_ppl_increase:g} % neutral-text perplexity; "
               "the least damaging")


@register("auto", "whichever of one-shot and stable, at capability quantiles 0.25 and 0.5, cross-validation "
                  "on the train templates picks", options=("max_ppl_increase", "folds"))
def auto_selector(spec: SelectorSpec, inputs: SelectionInputs) -> Selection:
    """:func:`choose` among :func:`default_candidates` (the spec's own quantile is not used: the
    quantile is one of the choices); the mask records the comparison (``model_selection``) and the
    winner (``selector_chosen``)."""
    o = spec.options
    res = choose(inputs.bridge, inputs.per_template(), inputs.pairs, inputs.budget, inputs.kind, inputs.cost,
                 inputs.neutral_text(), max_ppl_increase=o.get("max_ppl_increase", 2.0), seed=inputs.seed,
                 batch_size=inputs.batch_size, folds=o.get("folds", FOLDS))
    mask = res["mask"]
    comparison = {k: v for k, v in res.items() if k not in ("chosen", "mask")}
    mask.meta["model_selection"] = comparison
    mask.meta.update({"selector": "auto", "selector_chosen": res["chosen"].label()})
    return Selection(mask, {"chosen": res["chosen"].label(), "model_selection": comparison})
