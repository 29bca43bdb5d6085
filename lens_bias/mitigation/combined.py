"""``prune-combined``: pruning toward a target that includes the sentence-level gap.

The next-token target (JS on the train pairs) does not by itself change which sentence a model
prefers. This method scores units on both targets -- the attribution of JS on the train pairs and of
``seqgap`` (the gap in summed log-likelihood between the two sentences of a pair) on the train
sentence pairs -- and prunes the top of ``js / |js| + w seqgap / |seqgap|`` (each normalized by its
total positive score), one shot, under the same capability filter as ``prune``.

The weight ``w`` is chosen by two-fold cross-validation on the train templates only: for each
``w`` in :data:`WEIGHTS`, select on one half of the templates (pairs and sentences) and measure the
relative reductions of JS and of mean |seqgap| on the other half; the ``w`` with the best mean of the
two reductions over both folds wins. Held-out templates, CrowS-Pairs, BBQ and the rest are never read.
"""

from __future__ import annotations

import random

import torch

from ..attribution.per_template import TemplateScores, attribute_templates
from ..errors import InterventionError
from ..hooks.ablation import ablate
from ..measures.metrics import measure
from ..measures.targets import sentence_gaps
from ..prompts.pairs import PairSet
from ..prompts.splits import split_sentences
from ..scores import Scores
from ..selection.topk import select
from .base import FitContext, Intervention, register
from .pruning import from_mask

WEIGHTS = (0.0, 0.5, 1.0, 2.0)


def _normalized(s: torch.Tensor | None) -> torch.Tensor | None:
    if s is None:
        return None
    total = float(s.clamp_min(0).sum())
    return s / total if total > 0 else s


def combined_scores(js: Scores, seq: Scores, w: float) -> Scores:
    """``js / |js| + w seq / |seq|`` per kind (each divided by its total positive score)."""
    def mix(a, b):
        return None if a is None else _normalized(a) + w * _normalized(b)
    return Scores(mix(js.neurons, seq.neurons), mix(js.heads, seq.heads), {},
                  {"scorer": f"combined (js + {w:g} x seqgap)", "metric": "js+seqgap"})


def _folds(templates: list[str], seed: int) -> tuple[list[str], list[str]]:
    t = sorted(set(templates))
    random.Random(seed).shuffle(t)
    return t[::2], t[1::2]


def _bias(ctx: FitContext, pairs: PairSet, sentences: PairSet, mask=None) -> tuple[float, float]:
    """Mean JS of ``pairs`` and mean |seqgap| of ``sentences`` (with ``mask`` zero-ablated)."""
    if mask is None:
        return (measure(ctx.bridge, pairs, progress=False).mean("js"),
                sum(abs(g) for g in sentence_gaps(ctx.bridge, sentences)) / len(sentences))
    with ablate(ctx.bridge, mask):
        return _bias(ctx, pairs, sentences)


def _cross_validate(ctx: FitContext, ts: TemplateScores, ts_seq: TemplateScores, sentences: PairSet,
                    cost) -> dict[float, float]:
    """Each weight's mean relative reduction of JS and |seqgap| on the held-in half, over two folds."""
    p_folds = _folds(ts.templates, ctx.seed)
    s_folds = _folds(ts_seq.templates, ctx.seed)
    gain = {w: 0.0 for w in WEIGHTS}
    for k in (0, 1):
        fit_p, test_p = p_folds[1 - k], p_folds[k]
        fit_s, test_s = s_folds[1 - k], s_folds[k]
        pairs = ctx.train.filter(templates=test_p)
        sents = sentences.filter(templates=test_s)
        js0, sq0 = _bias(ctx, pairs, sents)
        for w in WEIGHTS:
            mask = select(combined_scores(ts.subset(fit_p), ts_seq.subset(fit_s), w), ctx.budget, ctx.kind,
                          bridge=ctx.bridge, cost=cost, max_cost_quantile=ctx.max_cost_quantile)
            js1, sq1 = _bias(ctx, pairs, sents, mask)
            gain[w] += ((js0 - js1) / js0 + (sq0 - sq1) / sq0) / 4  # mean of two reductions, two folds
    return gain


@register("prune-combined", "pruning toward JS plus the sentence-level gap, the weight chosen by "
                            "cross-validation on train templates")
def _prune_combined(ctx: FitContext) -> Intervention:
    ts, cost = ctx.template_scores()
    sentences = split_sentences(ctx.train.domains, seed=ctx.seed)[0]
    if not len(sentences):
        raise InterventionError(f"prune-combined needs the bundled sentence pairs; none cover "
                                f"{ctx.train.domains}")
    ts_seq = attribute_templates(ctx.bridge, sentences, metric="seqgap", batch_size=ctx.batch_size,
                                 progress=ctx.progress)
    gain = _cross_validate(ctx, ts, ts_seq, sentences, cost)
    w = max(WEIGHTS, key=lambda x: (gain[x], -x))
    mask = select(combined_scores(ts.scores(), ts_seq.scores(), w), ctx.budget, ctx.kind, bridge=ctx.bridge,
                  cost=cost, max_cost_quantile=ctx.max_cost_quantile)
    return from_mask(ctx.bridge, "prune-combined", mask,
                     {"weight": w, "cv_gain": {f"{k:g}": round(v, 4) for k, v in gain.items()},
                      "selector": "oneshot", "n_sentence_pairs": len(sentences)})
