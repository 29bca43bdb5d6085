"""What the gradient scorers share, batch by batch: the batch of a chunk of pairs, the per-pair
metric they differentiate, what an ablated unit outputs, and the first-order terms
``-(delta . g)`` summed per pair and unit. Attribution patching
(:mod:`lens_bias.attribution.patching`) evaluates them at the clean activations, integrated
gradients (:mod:`lens_bias.attribution.integrated`) along the ablation path."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..bridge import Bridge, model_device
from ..measures.targets import pair_metric, sentence_gap, sentence_tokens
from ..model.batching import Batch, check_finite, last_logits, pair_batch, widened
from ..vocab import Kind, is_sentence_metric


def ablation_ref(kind: Kind, layer: int, ablation: str, means: dict | None, like: Tensor) -> Tensor:
    """What one layer's units of ``kind`` output when ablated: 0, or their ``means`` (broadcastable
    to ``like``, on its device and in its dtype)."""
    if ablation == "zero":
        return torch.zeros((), dtype=like.dtype, device=like.device)
    return means[kind][layer].to(like.device, like.dtype)


def expand_mask(x: Tensor, like: Tensor) -> Tensor:
    """A [rows, pos] mask as ``like``'s dtype on ``like``'s device (a layer of a model split over
    devices), broadcastable to ``like`` ([rows, pos, ...])."""
    return x.to(like.device, like.dtype).view(*x.shape, *([1] * (like.ndim - 2)))


def ablation_contributions(kind: Kind, delta: Tensor, g: Tensor | None, mask: Tensor | None
                           ) -> Float[Tensor, "pairs units"]:
    """``-(delta . g)`` per pair and unit: summed over positions (``mask``: the padding mask, or
    None without padding), a head's ``d_head`` and the pair's two runs (Black rows, then White),
    reduced in float32 (float64 for a float64 model); zeros when the unit got no gradient."""
    acc = torch.promote_types(delta.dtype, torch.float32)
    n = delta.shape[0] // 2
    if g is None:
        return torch.zeros(n, delta.shape[2], dtype=acc, device=delta.device)
    prod = delta * g if mask is None else delta * g * expand_mask(mask, delta)
    rows = prod.sum((1,) if kind == "neurons" else (1, 3), dtype=acc)
    return -(rows[:n] + rows[n:])


def default_batch(bridge: Bridge, chunk, metric) -> Batch:
    """``chunk``'s batch when none is given: its sentence pairs for a sentence metric, else its
    prompt pairs (:func:`~lens_bias.model.batching.pair_batch`); Black rows, then White."""
    if is_sentence_metric(metric):
        return sentence_tokens(bridge, chunk).batch(range(len(chunk)), model_device(bridge))
    return pair_batch(bridge, chunk)


def batch_metric(bridge: Bridge, batch: Batch, chunk, metric, tokenizer, rows: slice = slice(None),
                 last_white: Tensor | None = None) -> Float[Tensor, " pairs"]:
    """The per-pair metric attribution differentiates: the |gap| in summed log-likelihood of the
    sentence pairs, or the pair metric at the prompts' last token, from the rows ``rows`` of the
    batch followed by ``last_white`` (the White run's last logits, run apart) when given."""
    if is_sentence_metric(metric):  # the whole sequence: each sentence's summed log-likelihood
        logits = bridge(batch.ids)
        check_finite(logits, "logits during attribution")
        return sentence_gap(logits, batch).abs()
    last = widened(last_logits(bridge, batch.ids[rows], batch.lengths.tolist()[rows]))
    if last_white is not None:
        last = torch.cat([last, last_white])
    check_finite(last, "logits during attribution")
    return pair_metric(metric, last, chunk, tokenizer)
