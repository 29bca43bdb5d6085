"""Attribution patching: rank every MLP neuron and attention head by how much it drives the
Black/White difference, from one forward and one backward pass per batch of pairs.

Metric: m = mean over pairs of a pair metric (:mod:`lens_bias.measures.targets`): ``js`` or ``logit_gap`` (as
mean |gap|) at the prompts' last token, or ``seqgap`` (mean |gap| in summed sentence log-likelihood) on
sentence pairs.
A score is the *estimated reduction* of m when the component is removed (higher = prune first):

* ``ablate`` (what pruning does): score = -sum over both runs and all positions of
  (a_ref - a) * dm/da, with a_ref = 0 (zero ablation) or the mean activation on neutral text;
* ``patch`` (mediation): score = -sum over the aligned suffix of (a_W - a_B) * dm/da_B: how much of
  the difference flows through the component when the White activations are patched into the
  Black run.

``graddrop=True`` is the GradDrop fix of AtP* (Kramar et al. 2024) for false negatives from
cancelling paths: the backward pass is repeated once per layer l with the gradient through layer
l's attention and MLP outputs dropped, and the score is the mean over l of |estimate_l| (divided by
L - 1): a magnitude, for finding components that matter in either direction. AtP*'s other fix (the
exact softmax when a head's *queries or keys* are patched) does not apply to lens_bias's head
nodes: a head is scored at ``hook_z``, after its own softmax, so its attention pattern is not on
the linearised path.

:func:`capability_cost` estimates, the same way, what removing each unit costs language modelling. Every
scorer returns a :class:`~lens_bias.scores.Scores`. The baseline scorers and the one entry point for all of
them (:func:`lens_bias.attribution.scorers.score`) are in :mod:`lens_bias.attribution.scorers`; the slow exact
reference (one ablated forward per component) and :func:`lens_bias.attribution.validation.validate`, which
correlates the two, in :mod:`lens_bias.attribution.validation`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ..bridge import (
    Bridge,
    model_device,
    score_dtype,
    shape_of,
    tokenizer_of,
)
from ..errors import LensBiasError, NumericsError
from ..hooks.components import hook_name
from ..hooks.interventions import attached, collect
from ..measures.targets import (
    directional_only,
    sentence_tokens,
)
from ..model.batching import (
    Batch,
    chunks,
    encode,
    last_logits,
    tokenize_pairs,
    widened,
)
from ..model.memory import token_budget
from ..prompts.pairs import PairSet
from ..scores import Scores
from ..vocab import ESTIMATORS, KINDS, Kind, check_ablation, check_choice, is_sentence_metric
from .passes import ablation_contributions, ablation_ref, batch_metric, default_batch, expand_mask
from .provenance import provenance

# ---------------------------------------------------------------- alignment for the patch estimator


def aligned_suffix(batch: Batch, n: int) -> tuple[Bool[Tensor, "n pos"], Int[Tensor, "n pos"]]:
    """For each pair (row i = Black, row n+i = White): which Black positions are patched and the
    matching White position. Equal lengths: every position from the first differing token on (the
    positions before it are identical in both runs, so patching them changes nothing). Unequal
    lengths: the common token suffix (the prompts aligned at their end)."""
    ids, lengths = batch.ids.cpu(), batch.lengths.cpu()
    width = ids.shape[1]
    patch = torch.zeros(n, width, dtype=torch.bool)
    src = torch.zeros(n, width, dtype=torch.long)
    for i in range(n):
        lb, lw = int(lengths[i]), int(lengths[n + i])
        b, w = ids[i, :lb], ids[n + i, :lw]
        if lb == lw:
            diff = (b != w).nonzero()
            c = lb - int(diff[0]) if len(diff) else 0
        else:
            c = 0
            while c < min(lb, lw) and b[lb - 1 - c] == w[lw - 1 - c]:
                c += 1
        patch[i, lb - c: lb] = True
        src[i, lb - c: lb] = torch.arange(lw - c, lw)
    return patch.to(batch.ids.device), src.to(batch.ids.device)


# ---------------------------------------------------------------- gradient passes


def _capture_hooks(kinds: Sequence[Kind], n_layers: int, store: dict) -> list:
    """Hooks that store every layer's activations of ``kinds`` in ``store[(kind, layer)]``."""
    return [(hook_name(k, L), collect(store, k, L)) for k in kinds for L in range(n_layers)]


class _GradGate(torch.autograd.Function):
    """Identity forward; backward passes the gradient unless ``state["drop"] == layer``."""

    @staticmethod
    def forward(ctx, x, layer, state):
        ctx.layer, ctx.state = layer, state
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return (torch.zeros_like(g) if ctx.state["drop"] == ctx.layer else g), None, None


def _gate_hooks(n_layers: int, state: dict):
    def make(layer):
        def fn(x, hook):
            return _GradGate.apply(x, layer, state)
        return fn

    return [(f"blocks.{L}.{h}", make(L)) for L in range(n_layers) for h in ("hook_attn_out", "hook_mlp_out")]


def _contributions(kind, layer, a, g, mask, estimator, ablation, means, patch=None, src=None,
                   a_white=None) -> Float[Tensor, "pairs units"]:
    """One layer's first-order estimate per pair and component (sign: reduction), summed over
    positions (and the Black and White rows of a pair), reduced in float32 (float64 for a float64
    model) and left on the layer's device.

    ``ablate``: ``a``/``g`` are both runs' activations and gradients (Black rows, then White), ``mask``
    the padding mask (or None when the batch has no padding). ``patch``: ``a``/``g`` are the Black
    run's, ``a_white`` the White run's activations, ``patch``/``src`` from :func:`aligned_suffix`.
    """
    if estimator == "ablate":
        delta = -a if ablation == "zero" else ablation_ref(kind, layer, ablation, means, a) - a
        return ablation_contributions(kind, delta, g, mask)
    dims = (1,) if kind == "neurons" else (1, 3)
    acc = torch.promote_types(a.dtype, torch.float32)
    if g is None:
        return torch.zeros(a.shape[0], a.shape[2], dtype=acc, device=a.device)
    idx = src.to(a.device).view(*src.shape, *([1] * (a.ndim - 2))).expand_as(a)
    prod = (torch.gather(a_white, 1, idx) - a) * g * expand_mask(patch, a)
    return -prod.sum(dims, dtype=acc)


def _pair_pass(bridge: Bridge, chunk, target, estimator, ablation, means, kinds, tokenizer,
               graddrop: bool = False, batch: Batch | None = None) -> tuple[dict, Tensor]:
    """One forward + backward on a batch of pairs; returns per-layer contributions per pair
    ([pairs, units], on the layer's device) keyed ``(kind, layer)`` -- or ``(drop, kind, layer)``
    with ``graddrop``, one backward per dropped layer -- and the per-pair metric values.

    ``ablate`` runs both prompts of every pair with gradients. ``patch`` needs only the Black
    run's gradients: the White prompts run first without a graph (their activations are captured),
    then the Black prompts with one -- the shape of the floor, one plain forward plus one forward
    and backward. ``batch``: ``chunk``'s batch, padded from ids already tokenized (default:
    :func:`~lens_bias.model.batching.pair_batch`).
    """
    n_layers = bridge.cfg.n_layers
    if batch is None:
        batch = default_batch(bridge, chunk, target)
    n = len(chunk)
    lengths = batch.lengths.tolist()
    width = batch.ids.shape[1]
    store: dict = {}
    state = {"drop": None}
    hooks = _capture_hooks(kinds, n_layers, store) + (_gate_hooks(n_layers, state) if graddrop else [])
    drops = list(range(n_layers)) if graddrop else [None]
    contrib = {}
    if estimator == "patch":
        patch, src = aligned_suffix(batch, n)
        white: dict = {}
        with attached(bridge, _capture_hooks(kinds, n_layers, white)), torch.no_grad():
            last_w = widened(last_logits(bridge, batch.ids[n:], lengths[n:]))
        rows, mask = slice(0, n), None
    else:
        patch = src = white = last_w = None
        rows = slice(0, 2 * n)
        mask = None if all(x == width for x in lengths) else batch.mask
    with attached(bridge, hooks), torch.enable_grad():
        per_pair = batch_metric(bridge, batch, chunk, target, tokenizer, rows, last_w)
        keys = list(store)
        for i, drop in enumerate(drops):
            state["drop"] = drop
            grads = torch.autograd.grad(per_pair.sum(), [store[k] for k in keys], allow_unused=True,
                                        retain_graph=i < len(drops) - 1)
            for key, g in zip(keys, grads, strict=True):
                c = _contributions(*key, store[key].detach(), g, mask, estimator, ablation, means, patch, src,
                                   None if white is None else white[key])
                contrib[key if drop is None else (drop, *key)] = c
    return contrib, per_pair.detach()


def attribute(
    bridge: Bridge,
    pairs: PairSet,
    metric: str | Callable = "js",
    estimator: str = "ablate",
    ablation: str = "zero",
    components: Sequence[str] = KINDS,
    batch_size: int = 16,
    means: dict | None = None,
    progress: bool = True,
    graddrop: bool = False,
) -> Scores:
    """Score every neuron and head by attribution patching (see the module docstring).

    ``graddrop=True`` returns AtP*'s GradDrop magnitudes instead of signed estimates (one backward
    per layer: about ``n_layers`` times the cost).

    ``ablation="mean"`` needs ``means`` from :func:`lens_bias.hooks.capture.mean_activations` (computed on
    the bundled neutral text when omitted). Per-domain scores come from the same passes: batches
    mix domains, and each pair's contribution goes to its own domain's sums.

    Examples:
        >>> from lens_bias import load_model, build_pairs
        >>> b = load_model("tiny-random")
        >>> s = attribute(b, build_pairs(["finance"]).sample(4), progress=False)
        >>> tuple(s.neurons.shape), tuple(s.heads.shape)
        ((2, 128), (2, 4))
    """
    kinds, pairs, means = attribution_inputs(bridge, pairs, metric, estimator, ablation, components, means)
    sums, metric_sum = running_sums(bridge, pairs, metric, estimator, ablation, means, kinds, batch_size,
                                     graddrop, progress)
    return scores_from_sums(bridge, pairs, kinds, sums, metric_sum, graddrop,
                            {"scorer": estimator, "estimator": estimator, "metric": metric,
                             "ablation": ablation, "graddrop": graddrop})


def scores_from_sums(bridge: Bridge, pairs: PairSet, kinds: list[Kind], sums: dict, metric_sum: Tensor,
                     graddrop: bool, settings: dict) -> Scores:
    """The :class:`~lens_bias.scores.Scores` of :func:`running_sums`' per-domain sums: the means
    over pairs (:func:`_finish_scores`), with ``settings`` and the provenance, the metric before
    (overall and per domain) and the pairs per domain added to its settings."""
    counts = {d: len(sub) for d, sub in pairs.by_domain().items()}
    overall, by_domain = _finish_scores(bridge, sums, pairs.domains, kinds, counts, graddrop)
    metric_by = dict(zip(pairs.domains, metric_sum.cpu().tolist(), strict=True))
    settings = {
        **settings,
        **provenance(bridge, pairs),  # pairs_hash, n_pairs, domains, model, model_shape
        "metric_before": sum(metric_by.values()) / sum(counts.values()),
        "metric_before_by_domain": {d: metric_by[d] / counts[d] for d in counts},
        "n_pairs_by_domain": counts,
    }
    return Scores(overall.get("neurons", None) if "neurons" in kinds else None,
                  overall.get("heads", None) if "heads" in kinds else None, by_domain, settings)


def attribution_inputs(bridge: Bridge, pairs: PairSet, metric, estimator: str, ablation: str,
                        components: Sequence[str],
                        means: dict | None) -> tuple[list[Kind], PairSet, dict | None]:
    """:func:`attribute`'s checked inputs: the kinds to score, the pairs the metric can use, and
    the mean activations (computed on neutral text for mean ablation when not given)."""
    check_choice(estimator, ESTIMATORS, "estimator")
    check_ablation(ablation)
    if is_sentence_metric(metric) and estimator != "ablate":
        raise LensBiasError(f"metric {metric!r} is attributed with the 'ablate' estimator only (sentence "
                            f"pairs have no aligned suffix to patch); got {estimator!r}")
    kinds = [k for k in KINDS if k in components]
    if not kinds:
        raise LensBiasError(f"components must include 'neurons' and/or 'heads', got {components}")
    pairs = directional_only(pairs, metric)
    if not len(pairs):
        raise LensBiasError("no pairs to attribute on")
    if ablation == "mean" and means is None and estimator == "ablate":
        from ..hooks.capture import mean_activations
        from ..prompts.pairs import neutral_text

        means = mean_activations(bridge, neutral_text())
    return kinds, pairs, means


def running_sums(bridge: Bridge, pairs: PairSet, metric, estimator: str, ablation: str, means: dict | None,
                  kinds: list[Kind], batch_size: int, graddrop: bool, progress: bool,
                  by: str = "domain", pass_fn: Callable | None = None) -> tuple[dict, Tensor]:
    """Every batch's contributions added to its pairs' groups (``by``: the pair attribute
    ``"domain"`` or ``"template"``, groups sorted): per kind ``[groups,
    (dropped layer,) layer, units]``, and the metric ``[groups]``, both on the model's device.
    ``pass_fn(chunk, batch) -> (contributions, per-pair metric)`` replaces the estimator's own pass
    (integrated gradients, :mod:`lens_bias.attribution.integrated`)."""
    tok = tokenizer_of(bridge)
    n_layers = bridge.cfg.n_layers
    device = model_device(bridge)
    acc = torch.float32 if device.type == "mps" else torch.float64  # running sums stay on the device
    domains = pairs.domains if by == "domain" else pairs.templates
    which = {d: i for i, d in enumerate(domains)}
    lead = (n_layers,) if graddrop else ()
    # running sums per domain: [domains, (dropped layer,) layer, units], on the device
    sums = {k: torch.zeros(len(domains), *lead, *shape_of(bridge, k), dtype=acc, device=device)
            for k in kinds}
    metric_sum = torch.zeros(len(domains), dtype=acc, device=device)
    # length-sorted batches that mix domains (each pair's contribution goes to its own domain's sums)
    tokens = (sentence_tokens(bridge, pairs.pairs) if is_sentence_metric(metric)
              else tokenize_pairs(bridge, pairs))
    cap = token_budget(bridge)  # None on a CPU: the CPU default cap applies
    jobs = [(idx, [pairs.pairs[i] for i in idx])
            for idx in tokens.batches(batch_size, device, -1 if cap is None else cap)]
    desc = f"attribution ({estimator}{', graddrop' if graddrop else ''})"
    it = tqdm(jobs, desc=desc, leave=False) if progress else jobs
    for idx, chunk in it:
        if pass_fn is not None:
            contrib, per_pair = pass_fn(chunk, tokens.batch(idx, device))
        else:
            contrib, per_pair = _pair_pass(bridge, chunk, metric, estimator, ablation, means, kinds, tok,
                                           graddrop, tokens.batch(idx, device))
        dom = torch.tensor([which[getattr(p, by)] for p in chunk], device=device)
        for key, c in contrib.items():
            # .to(device): a no-op unless the model is split over devices
            if graddrop:
                drop, kind, layer = key
                sums[kind][:, drop, layer].index_add_(0, dom, c.to(device, acc))
            else:
                kind, layer = key
                sums[kind][:, layer].index_add_(0, dom, c.to(device, acc))
        metric_sum.index_add_(0, dom, per_pair.to(device, acc))
    return sums, metric_sum


def _finish_scores(bridge: Bridge, sums: dict, domains: list[str], kinds: list[Kind], counts: dict[str, int],
                   graddrop: bool) -> tuple[dict, dict]:
    """The overall and per-domain scores from the running sums: means over pairs (for GradDrop,
    AtP*'s mean over dropped layers of |estimate|), in :func:`lens_bias.bridge.score_dtype`."""
    n_layers = bridge.cfg.n_layers
    which = {d: i for i, d in enumerate(domains)}
    host = {k: v.cpu().double() for k, v in sums.items()}
    sums = {d: {k: host[k][which[d]] for k in kinds} for d in domains}
    total = sum(counts.values())
    dt = score_dtype(bridge)

    def finish(x: Tensor, count: int) -> Tensor:
        x = x / count
        if graddrop:  # AtP*: mean over dropped layers of |estimate|, normalised by L - 1
            x = x.abs().sum(0) / max(n_layers - 1, 1)
        return x.to(dt)

    overall = {k: finish(sum(sums[d][k] for d in sums), total) for k in kinds}
    by_domain = {d: {k: finish(sums[d][k], counts[d]) for k in kinds} for d in sums}
    for k, v in overall.items():
        if not torch.isfinite(v).all():
            raise NumericsError(f"non-finite attribution scores for {k}; run the model in float32")
    return overall, by_domain


COST_ESTIMATORS = ("fisher", "first_order")


def capability_cost(bridge: Bridge, texts: Sequence[str], ablation: str = "mean", means: dict | None = None,
                    estimator: str = "fisher", batch_size: int = 8, progress: bool = False) -> Scores:
    """Estimated language-modelling damage of ablating each neuron / head on ``texts``.
    Higher = more load-bearing (keep it).

    * ``fisher`` (default): sum over tokens of (delta . dL/da)^2 per token, the squared-Taylor
      (empirical Fisher) criterion. At a trained model the loss gradient averages out, so the
      plain first-order change is near zero even for units the model cannot do without; the
      squared per-token terms do not cancel.
    * ``first_order``: the mean first-order change of the loss, sum of delta . dL/da (signed).
    """
    from ..hooks.capture import mean_activations

    if estimator not in COST_ESTIMATORS:
        raise LensBiasError(f"cost estimator must be one of {COST_ESTIMATORS}, got {estimator!r}")
    if ablation == "mean" and means is None:
        means = mean_activations(bridge, texts)
    tok = tokenizer_of(bridge)
    n_layers = bridge.cfg.n_layers
    sums = {k: torch.zeros(shape_of(bridge, k), dtype=torch.float64) for k in KINDS}
    n_tok = 0
    device = model_device(bridge)
    it = chunks(len(texts), batch_size)
    if progress:
        it = tqdm(list(it), desc="capability cost", leave=False)
    for sl in it:
        batch = encode(tok, texts[sl], device=device)
        store: dict = {}
        with attached(bridge, _capture_hooks(KINDS, n_layers, store)), torch.enable_grad():
            logits = widened(bridge(batch.ids))
            logp = F.log_softmax(logits[:, :-1], -1).gather(-1, batch.ids[:, 1:, None])[..., 0]
            nll = -(logp * batch.mask[:, 1:]).sum()
            keys = list(store)
            grads = torch.autograd.grad(nll, [store[k] for k in keys], allow_unused=True)
        n_tok += int(batch.mask[:, 1:].sum())
        m = batch.mask
        for key, g in zip(keys, grads, strict=True):
            kind, layer = key
            a = store[key].detach()
            if g is None:
                continue
            mm = m.to(a.device, a.dtype).view(*m.shape, *([1] * (a.ndim - 2)))
            per_pos = (ablation_ref(kind, layer, ablation, means, a) - a) * mm * g
            if kind == "heads":
                per_pos = per_pos.sum(-1)  # [b, p, head]
            per_pos = per_pos.double()
            c = (per_pos ** 2).sum(dim=(0, 1)) if estimator == "fisher" else per_pos.sum(dim=(0, 1))
            sums[kind][layer] += c.cpu()
    out = {k: (v / max(n_tok, 1)).to(score_dtype(bridge)) for k, v in sums.items()}
    return Scores(out["neurons"], out["heads"], {}, {"scorer": "capability_cost", "estimator": estimator,
                                                       "ablation": ablation, "n_tokens": n_tok})
