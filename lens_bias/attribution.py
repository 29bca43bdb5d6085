"""Attribution patching: rank every MLP neuron and attention head by how much it drives the
Black/White difference, from one forward and one backward pass per batch of pairs.

Target: m = mean over pairs of a pair metric (``js``, or ``logit_gap`` as mean |gap|).
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

:func:`exact_effects` is the slow reference (one ablated forward per component) and
:func:`validate` correlates the two. Baseline scorers share the :class:`Scores` interface:
``actdiff`` (optiPfair-style mean |a_B - a_W|), ``wanda`` (|W| times the activation-norm
difference, Ma et al.) and ``random``.
"""

from __future__ import annotations

import json
import random as _random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from .batching import Batch, check_finite, chunks, context_length, encode, model_device, tokenize
from .components import KINDS, Component, attached, hook_name, shape_of
from .errors import LensBiasError, NumericsError
from .masks import PruningMask
from .metrics import js_divergence, last_logits, logit_gap, pair_batch, tokenizer_of, word_tokens
from .pairs import ContrastivePair, PairSet

ESTIMATORS = ("ablate", "patch")
BASELINES = ("actdiff", "wanda", "random")
SCORERS = ESTIMATORS + BASELINES
TARGETS = ("js", "logit_gap")
SCORES_VERSION = 1


# ---------------------------------------------------------------- the score container


@dataclass
class Scores:
    """Per-component scores: ``neurons`` [n_layers, d_mlp], ``heads`` [n_layers, n_heads], the same
    per domain in ``by_domain``, and the settings that produced them. Higher = prune first."""

    neurons: Float[Tensor, "n_layers d_mlp"] | None
    heads: Float[Tensor, "n_layers n_heads"] | None
    by_domain: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def get(self, kind: str) -> Tensor | None:
        return self.neurons if kind == "neurons" else self.heads

    def for_domain(self, domain: str) -> Scores:
        if domain not in self.by_domain:
            raise LensBiasError(f"no scores for domain {domain!r}; have {sorted(self.by_domain)}")
        d = self.by_domain[domain]
        return Scores(d.get("neurons"), d.get("heads"), {}, {**self.settings, "domains": [domain]})

    def top(self, kind: str = "neurons", k: int = 20) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring (layer, index, score)."""
        s = self.get(kind)
        if s is None:
            return []
        vals, idx = torch.topk(s.flatten(), min(k, s.numel()))
        cols = s.shape[1]
        return [(int(i) // cols, int(i) % cols, float(v)) for v, i in zip(vals, idx, strict=True)]

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (settings as JSON in its header)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {}
        for k in KINDS:
            if self.get(k) is not None:
                tensors[k] = self.get(k).float().contiguous().cpu()
        for d, ts in self.by_domain.items():
            for k, t in ts.items():
                tensors[f"domain/{d}/{k}"] = t.float().contiguous().cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file(tensors, str(tmp), metadata={"lens_bias_scores": json.dumps({"version": SCORES_VERSION, **self.settings})})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Scores:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise LensBiasError(f"scores file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("lens_bias_scores", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
            raise LensBiasError(f"{path}: not a lens_bias scores file ({e})") from e
        by_domain: dict[str, dict[str, Tensor]] = {}
        for k, t in tensors.items():
            if k.startswith("domain/"):
                _, d, kind = k.split("/")
                by_domain.setdefault(d, {})[kind] = t
        meta.pop("version", None)
        return cls(tensors.get("neurons"), tensors.get("heads"), by_domain, meta)


# ---------------------------------------------------------------- differentiable pair metrics


def pair_metric(target, last_logits: Float[Tensor, "rows vocab"], pairs: Sequence[ContrastivePair],
                tokenizer) -> Float[Tensor, " n"]:
    """Per-pair metric values (differentiable) from the last-token logits of a pair batch (n Black
    rows, then n White rows): ``js``; ``logit_gap`` as |gap| (pairs without pos/neg give 0); or a
    callable ``f(logits_black, logits_white, pairs) -> [n]`` (e.g. for tests)."""
    n = len(pairs)
    if callable(target):
        return target(last_logits[:n], last_logits[n:], pairs)
    logp = F.log_softmax(last_logits, -1)
    logp_b, logp_w = logp[:n], logp[n:]
    if target == "js":
        return js_divergence(logp_b, logp_w)
    if target == "logit_gap":
        wt = word_tokens(tokenizer, pairs)
        has = [i for i, p in enumerate(pairs) if p.pos and p.neg]
        out = torch.zeros(len(pairs), dtype=logp_b.dtype, device=logp_b.device)
        if has:
            g = logit_gap(logp_b[has], logp_w[has], [wt.pos[i] for i in has], [wt.neg[i] for i in has])
            out = out.index_put((torch.tensor(has, device=out.device),), g.abs())
        return out
    raise LensBiasError(f"metric must be one of {TARGETS}, got {target!r}")


def _directional_only(pairs: PairSet, target) -> PairSet:
    if isinstance(target, str) and target == "logit_gap":
        sub = pairs.filter(directional=True)
        if not len(sub):
            raise LensBiasError("metric 'logit_gap' needs pairs with pos/neg words; none have them")
        return sub
    return pairs


def _upcast(x: Tensor) -> Tensor:
    """float32 for half-precision logits; float64 stays float64 (exactness tests)."""
    return x if x.dtype == torch.float64 else x.float()


def _score_dtype(bridge) -> torch.dtype:
    """Scores are float32 (accumulated in float64) unless the model itself runs in float64."""
    return torch.float64 if next(bridge.original_model.parameters()).dtype == torch.float64 else torch.float32


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


def _capture_hooks(kinds: Sequence[str], n_layers: int, store: dict):
    def make(kind, layer):
        def fn(act, hook):
            store[(kind, layer)] = act
            return act
        return fn

    return [(hook_name(k, L), make(k, L)) for k in kinds for L in range(n_layers)]


def _ref(kind: str, layer: int, ablation: str, means: dict | None, like: Tensor) -> Tensor:
    if ablation == "zero":
        return torch.zeros((), dtype=like.dtype, device=like.device)
    return means[kind][layer].to(like.device, like.dtype)


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


def _expand(x: Tensor, like: Tensor) -> Tensor:
    """A [rows, pos] mask as ``like``'s dtype on ``like``'s device (a layer of a model split over
    devices), broadcastable to ``like`` ([rows, pos, ...])."""
    return x.to(like.device, like.dtype).view(*x.shape, *([1] * (like.ndim - 2)))


def _contributions(kind, layer, a, g, mask, estimator, ablation, means, patch=None, src=None,
                   a_white=None) -> Float[Tensor, "pairs units"]:
    """One layer's first-order estimate per pair and component (sign: reduction), summed over
    positions (and the Black and White rows of a pair), reduced in float32 (float64 for a float64
    model) and left on the layer's device.

    ``ablate``: ``a``/``g`` are both runs' activations and gradients (Black rows, then White), ``mask``
    the padding mask (or None when the batch has no padding). ``patch``: ``a``/``g`` are the Black
    run's, ``a_white`` the White run's activations, ``patch``/``src`` from :func:`aligned_suffix`.
    """
    dims = (1,) if kind == "neurons" else (1, 3)
    acc = torch.promote_types(a.dtype, torch.float32)
    n = a.shape[0] // 2 if estimator == "ablate" else a.shape[0]
    if g is None:
        return torch.zeros(n, a.shape[2], dtype=acc, device=a.device)
    if estimator == "ablate":
        delta = -a if ablation == "zero" else _ref(kind, layer, ablation, means, a) - a
        prod = delta * g if mask is None else delta * g * _expand(mask, a)
        rows = prod.sum(dims, dtype=acc)
        return -(rows[:n] + rows[n:])
    idx = src.to(a.device).view(*src.shape, *([1] * (a.ndim - 2))).expand_as(a)
    prod = (torch.gather(a_white, 1, idx) - a) * g * _expand(patch, a)
    return -prod.sum(dims, dtype=acc)


def _keep(lengths: Sequence[int], device) -> tuple[Tensor, Tensor]:
    """``logits_to_keep`` positions (the distinct last positions) and each row's index into them,
    from lengths already on the host (no device synchronisation)."""
    keep = sorted({x - 1 for x in lengths})
    where = [keep.index(x - 1) for x in lengths]
    return torch.tensor(keep, device=device), torch.tensor(where, device=device)


def _last_logits_of(bridge, ids: Tensor, lengths: Sequence[int]) -> Tensor:
    keep, where = _keep(lengths, ids.device)
    logits = bridge(ids, logits_to_keep=keep)
    return _upcast(logits[torch.arange(len(lengths), device=logits.device), where])


def _pair_pass(bridge, chunk, target, estimator, ablation, means, kinds, tokenizer,
               graddrop: bool = False) -> tuple[dict, Tensor]:
    """One forward + backward on a batch of pairs; returns per-layer contributions per pair
    ([pairs, units], on the layer's device) keyed ``(kind, layer)`` -- or ``(drop, kind, layer)``
    with ``graddrop``, one backward per dropped layer -- and the per-pair metric values.

    ``ablate`` runs both prompts of every pair with gradients. ``patch`` needs only the Black
    run's gradients: the White prompts run first without a graph (their activations are captured),
    then the Black prompts with one -- the shape of the floor, one plain forward plus one forward
    and backward.
    """
    n_layers = bridge.cfg.n_layers
    batch = pair_batch(bridge, chunk)
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
            last_w = _last_logits_of(bridge, batch.ids[n:], lengths[n:])
        rows, mask = slice(0, n), None
    else:
        patch = src = white = last_w = None
        rows = slice(0, 2 * n)
        mask = None if all(x == width for x in lengths) else batch.mask
    with attached(bridge, hooks), torch.enable_grad():
        last = _last_logits_of(bridge, batch.ids[rows], lengths[rows])
        if last_w is not None:
            last = torch.cat([last, last_w])
        check_finite(last, "logits during attribution")
        per_pair = pair_metric(target, last, chunk, tokenizer)
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


def _length_batches(tokenizer, pairs: PairSet, batch_size: int, bridge) -> list[list[int]]:
    """Pair indices in batches of similar token length (less padding than consecutive chunks),
    capped at ``batch_size`` pairs and, on the CPU, at :data:`~lens_bias.batching.BATCH_MAX_TOKENS`
    padded tokens (both prompts of a pair count). Batches mix domains (contributions are kept per
    pair until they are added to their domain's sums), so every batch but the last of a length is
    full. The token cap makes the peak memory (autograd keeps about 2 MiB per padded token for
    SmolLM2) the same for a few pairs and for thousands: without it, 64 mixed-length pairs never
    build a batch as large as 1024 pairs do. The order of pairs never changes a score beyond float
    summation order."""
    from .capture import pair_batches

    widths = [max(len(b), len(w)) for b, w in zip(
        tokenize(tokenizer, [p.black for p in pairs.pairs], max_len=context_length(bridge)),
        tokenize(tokenizer, [p.white for p in pairs.pairs], max_len=context_length(bridge)), strict=True)]
    return pair_batches(widths, batch_size, model_device(bridge))


def attribute(
    bridge,
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

    ``ablation="mean"`` needs ``means`` from :func:`lens_bias.capture.mean_activations` (computed on
    the bundled neutral text when omitted). Per-domain scores come from the same passes: batches
    mix domains, and each pair's contribution goes to its own domain's sums.

    Examples:
        >>> from lens_bias import load_model, build_pairs
        >>> b = load_model("tiny-random")
        >>> s = attribute(b, build_pairs(["finance"]).sample(4), progress=False)
        >>> tuple(s.neurons.shape), tuple(s.heads.shape)
        ((2, 128), (2, 4))
    """
    if estimator not in ESTIMATORS:
        raise LensBiasError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if ablation not in ("zero", "mean"):
        raise LensBiasError(f"ablation must be 'zero' or 'mean', got {ablation!r}")
    kinds = [k for k in KINDS if k in components]
    if not kinds:
        raise LensBiasError(f"components must include 'neurons' and/or 'heads', got {components}")
    pairs = _directional_only(pairs, metric)
    if not len(pairs):
        raise LensBiasError("no pairs to attribute on")
    if ablation == "mean" and means is None and estimator == "ablate":
        from .capture import mean_activations
        from .pairs import neutral_text

        means = mean_activations(bridge, neutral_text())
    tok = tokenizer_of(bridge)
    n_layers = bridge.cfg.n_layers
    device = model_device(bridge)
    acc = torch.float32 if device.type == "mps" else torch.float64  # running sums stay on the device
    domains = pairs.domains
    which = {d: i for i, d in enumerate(domains)}
    lead = (n_layers,) if graddrop else ()
    # running sums per domain: [domains, (dropped layer,) layer, units], on the device
    sums = {k: torch.zeros(len(domains), *lead, *shape_of(bridge, k), dtype=acc, device=device) for k in kinds}
    metric_sum = torch.zeros(len(domains), dtype=acc, device=device)
    jobs = [[pairs.pairs[i] for i in idx] for idx in _length_batches(tok, pairs, batch_size, bridge)]
    desc = f"attribution ({estimator}{', graddrop' if graddrop else ''})"
    it = tqdm(jobs, desc=desc, leave=False) if progress else jobs
    for chunk in it:
        contrib, per_pair = _pair_pass(bridge, chunk, metric, estimator, ablation, means, kinds, tok, graddrop)
        dom = torch.tensor([which[p.domain] for p in chunk], device=device)
        for key, c in contrib.items():
            # .to(device): a no-op unless the model is split over devices
            if graddrop:
                drop, kind, layer = key
                sums[kind][:, drop, layer].index_add_(0, dom, c.to(device, acc))
            else:
                kind, layer = key
                sums[kind][:, layer].index_add_(0, dom, c.to(device, acc))
        metric_sum.index_add_(0, dom, per_pair.to(device, acc))
    counts = {d: len(sub) for d, sub in pairs.by_domain().items()}
    host = {k: v.cpu().double() for k, v in sums.items()}
    sums = {d: {k: host[k][which[d]] for k in kinds} for d in domains}
    metric_sum = dict(zip(domains, metric_sum.cpu().tolist(), strict=True))
    total = sum(counts.values())
    dt = _score_dtype(bridge)

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
    settings = {
        "scorer": estimator, "estimator": estimator, "metric": metric, "ablation": ablation, "graddrop": graddrop,
        "model": getattr(bridge, "lens_bias_name", "?"), "n_pairs": total, "domains": pairs.domains,
        "metric_before": sum(metric_sum.values()) / total,
        "metric_before_by_domain": {d: metric_sum[d] / counts[d] for d in counts},
    }
    return Scores(overall.get("neurons", None) if "neurons" in kinds else None,
                  overall.get("heads", None) if "heads" in kinds else None, by_domain, settings)


COST_ESTIMATORS = ("fisher", "first_order")


def capability_cost(bridge, texts: Sequence[str], ablation: str = "mean", means: dict | None = None,
                    estimator: str = "fisher", batch_size: int = 8, progress: bool = False) -> Scores:
    """Estimated language-modelling damage of ablating each neuron / head on ``texts``.
    Higher = more load-bearing (keep it).

    * ``fisher`` (default): sum over tokens of (delta . dL/da)^2 per token, the squared-Taylor
      (empirical Fisher) criterion. At a trained model the loss gradient averages out, so the
      plain first-order change is near zero even for units the model cannot do without; the
      squared per-token terms do not cancel.
    * ``first_order``: the mean first-order change of the loss, sum of delta . dL/da (signed).
    """
    from .capture import mean_activations

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
            logits = _upcast(bridge(batch.ids))
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
            per_pos = (_ref(kind, layer, ablation, means, a) - a) * mm * g
            if kind == "heads":
                per_pos = per_pos.sum(-1)  # [b, p, head]
            per_pos = per_pos.double()
            c = (per_pos ** 2).sum(dim=(0, 1)) if estimator == "fisher" else per_pos.sum(dim=(0, 1))
            sums[kind][layer] += c.cpu()
    out = {k: (v / max(n_tok, 1)).to(_score_dtype(bridge)) for k, v in sums.items()}
    return Scores(out["neurons"], out["heads"], {}, {"scorer": "capability_cost", "estimator": estimator,
                                                       "ablation": ablation, "n_tokens": n_tok})


# ---------------------------------------------------------------- baselines


def baseline_scores(bridge, pairs: PairSet, scorer: str, batch_size: int = 32, seed: int = 0) -> Scores:
    """``actdiff``: mean |a_B - a_W| at the last token (optiPfair-style); ``wanda``: |W_out| column
    norm times the difference of activation norms between Black and White prompts (Ma et al.);
    ``random``: seeded uniform scores."""
    from .capture import last_token_activations

    settings = {"scorer": scorer, "estimator": scorer, "metric": "-", "model": getattr(bridge, "lens_bias_name", "?"),
                "n_pairs": len(pairs), "domains": pairs.domains}
    if scorer == "random":
        g = torch.Generator().manual_seed(seed)
        return Scores(torch.rand(shape_of(bridge, "neurons"), generator=g),
                      torch.rand(shape_of(bridge, "heads"), generator=g), {}, {**settings, "seed": seed})
    if scorer not in BASELINES:
        raise LensBiasError(f"scorer must be one of {SCORERS}, got {scorer!r}")

    def one(ps: PairSet) -> dict[str, Tensor]:
        s = last_token_activations(bridge, ps, batch_size)
        if scorer == "actdiff":
            return {"neurons": s["neuron_absdiff"], "heads": s["head_absdiff"]}
        w_norm = torch.stack([_down_proj(bridge, L).weight.detach().abs().sum(0).float().cpu()
                              for L in range(bridge.cfg.n_layers)])
        xn = (s["neuron_sq_black"].sqrt() - s["neuron_sq_white"].sqrt()).abs()
        o_norm = torch.stack([_o_proj_head_norms(bridge, L) for L in range(bridge.cfg.n_layers)])
        return {"neurons": w_norm * xn, "heads": o_norm * s["head_absdiff"]}

    by_domain = {d: one(sub) for d, sub in pairs.by_domain().items()}
    total = len(pairs)
    overall = {k: sum(by_domain[d][k] * len(pairs.filter(domains=[d])) for d in by_domain) / total for k in KINDS}
    return Scores(overall["neurons"], overall["heads"], by_domain, settings)


def _layers(bridge):
    return bridge.original_model.model.layers


def _down_proj(bridge, layer: int):
    mlp = _layers(bridge)[layer].mlp
    return getattr(mlp, "down_proj", None) or mlp.out


def _o_proj_head_norms(bridge, layer: int) -> Tensor:
    attn = _layers(bridge)[layer].self_attn
    o = getattr(attn, "o_proj", None) or attn.o
    w = o.weight.detach().abs().float().cpu()
    return w.view(w.shape[0], bridge.cfg.n_heads, bridge.cfg.d_head).sum(dim=(0, 2))


def score(bridge, pairs: PairSet, scorer: str = "ablate", **kwargs) -> Scores:
    """One entry point for every scorer: attribution estimators and baselines."""
    if scorer in ESTIMATORS:
        return attribute(bridge, pairs, estimator=scorer, **kwargs)
    keep = {k: v for k, v in kwargs.items() if k in ("batch_size", "seed")}
    return baseline_scores(bridge, pairs, scorer, **keep)


# ---------------------------------------------------------------- exact reference and validation


def metric_value(bridge, pairs: PairSet, metric="js", batch_size: int = 32) -> float:
    """m = mean over pairs of the target metric, with whatever hooks are attached now."""
    pairs = _directional_only(pairs, metric)
    tok = tokenizer_of(bridge)
    total = 0.0
    for sl in chunks(len(pairs), batch_size):
        chunk = pairs.pairs[sl]
        with torch.inference_mode():
            last = _upcast(last_logits(bridge, pair_batch(bridge, chunk)))
            check_finite(last)
            total += float(pair_metric(metric, last, chunk, tok).sum())
    return total / len(pairs)


def exact_effects(bridge, pairs: PairSet, components: Sequence[Component], metric: str | Callable = "js",
                  ablation: str = "zero", means: dict | None = None, batch_size: int = 32,
                  progress: bool = True) -> Float[Tensor, " n"]:
    """The slow reference: ablate each component alone and measure the exact reduction of m."""
    from .ablation import ablate

    if ablation == "mean" and means is None:
        from .capture import mean_activations
        from .pairs import neutral_text

        means = mean_activations(bridge, neutral_text())
    base = metric_value(bridge, pairs, metric, batch_size)
    out = []
    it = tqdm(components, desc="exact ablation", leave=False) if progress else components
    for c in it:
        mask = PruningMask.keep_all(bridge)
        mask.tensor(c.kind)[c.layer, c.index] = False
        with ablate(bridge, mask, ablation, means):
            out.append(base - metric_value(bridge, pairs, metric, batch_size))
    return torch.tensor(out, dtype=torch.float64)


def exact_patch_effects(bridge, pairs: PairSet, components: Sequence[Component], metric: str | Callable = "js",
                        batch_size: int = 16, progress: bool = True) -> Float[Tensor, " n"]:
    """Exact activation patching: for each component, the White run's activation is patched into
    the Black run on the aligned suffix; returns the exact reduction of m."""
    tok = tokenizer_of(bridge)
    pairs = _directional_only(pairs, metric)

    def run(comp: Component | None) -> float:
        total = 0.0
        for sl in chunks(len(pairs), batch_size):
            chunk = pairs.pairs[sl]
            batch = pair_batch(bridge, chunk)
            n = len(chunk)
            hooks = []
            if comp is not None:
                patch, src = aligned_suffix(batch, n)

                def fn(act, hook, comp=comp, patch=patch, src=src, n=n):
                    a = act.clone()
                    idx = src.view(n, -1, *([1] * (a.ndim - 2))).expand_as(a[:n])
                    a_w = torch.gather(act[n:], 1, idx)
                    sel = (slice(None), slice(None), comp.index)
                    pm = patch if a.ndim == 3 else patch[..., None]
                    a[:n][sel] = torch.where(pm, a_w[sel], a[:n][sel])
                    return a
                hooks = [(hook_name(comp.kind, comp.layer), fn)]
            with attached(bridge, hooks), torch.inference_mode():
                last = _upcast(last_logits(bridge, batch))
            total += float(pair_metric(metric, last, chunk, tok).sum())
        return total / len(pairs)

    base = run(None)
    it = tqdm(components, desc="exact patching", leave=False) if progress else components
    return torch.tensor([base - run(c) for c in it], dtype=torch.float64)


def _sample_components(scores: Scores, kind: str, k: int, n_random: int, seed: int) -> list[Component]:
    s = scores.get(kind)
    cols = s.shape[1]
    top = torch.topk(s.abs().flatten(), min(k, s.numel())).indices.tolist()
    rest = sorted(set(range(s.numel())) - set(top))
    rng = _random.Random(seed)
    rand = rng.sample(rest, min(n_random, len(rest)))
    return [Component(kind, i // cols, i % cols) for i in top + rand]


def _correlations(pred: Tensor, true: Tensor) -> tuple[float, float]:
    from scipy.stats import pearsonr, spearmanr

    if len(pred) <= 2 or float(pred.std()) == 0 or float(true.std()) == 0:
        return float("nan"), float("nan")
    return (float(spearmanr(pred.numpy(), true.numpy()).statistic),
            float(pearsonr(pred.numpy(), true.numpy()).statistic))


def sample_parts(pred: Float[Tensor, " n"], ref: Float[Tensor, " n"], n_top: int | None) -> dict:
    """Where an estimate fails on a sample made of ``n_top`` top units followed by random ones:
    the Spearman of each part (None for both when the split is unknown; NaN for a part of two
    units or fewer) and the fraction of units whose prediction and reference have the same sign."""
    top_sp, rand_sp = (None, None) if n_top is None else \
        (_correlations(pred[:n_top], ref[:n_top])[0], _correlations(pred[n_top:], ref[n_top:])[0])
    same = float((torch.sign(pred) == torch.sign(ref)).double().mean()) if len(pred) else float("nan")
    return {"spearman_top": top_sp, "spearman_random": rand_sp, "sign_agreement": same}


def validate(bridge, pairs: PairSet, scores: Scores, k: int = 200, n_random: int = 50, seed: int = 0,
             kinds: Sequence[str] = KINDS, batch_size: int = 32, progress: bool = True,
             components: dict[str, Sequence[Component]] | None = None) -> dict:
    """Compare predicted scores with exact ablation (or exact patching for ``patch`` scores) on the
    top-``k`` components by |score| plus ``n_random`` random ones, per kind -- or on the given
    ``components`` per kind (to compare two scorers on the same sample).

    Returns ``{kind: {"spearman", "pearson", "spearman_abs", "pearson_abs", "spearman_top",
    "spearman_random", "sign_agreement", "n", "components", "predicted", "exact"}}``; the ``_abs``
    pair correlates magnitudes (|predicted| vs |exact|), which is what GradDrop scores are compared
    on (their main correlation is with |exact| too). ``spearman_top`` / ``spearman_random`` split
    the sample into its top-k and its random part (None for a given ``components`` sample): a first-
    order estimate is usually close to exact on small effects and loses rank order among the large
    ones. ``sign_agreement`` is the fraction of components whose predicted and exact change have
    the same sign.
    """
    st = scores.settings
    metric = st.get("metric") if st.get("metric") in TARGETS else "js"
    out = {}
    for kind in kinds:
        if scores.get(kind) is None:
            continue
        comps = list(components[kind]) if components and kind in components else \
            _sample_components(scores, kind, k, n_random, seed)
        pred = torch.tensor([float(scores.get(kind)[c.layer, c.index]) for c in comps])
        if st.get("estimator") == "patch":
            true = exact_patch_effects(bridge, pairs, comps, metric, batch_size, progress)
        else:
            true = exact_effects(bridge, pairs, comps, metric, st.get("ablation", "zero"), None, batch_size, progress)
        magnitude = bool(st.get("graddrop"))  # GradDrop scores are magnitudes: compare with |exact|
        ref = true.abs() if magnitude else true
        sp, pe = _correlations(pred, ref)
        sp_abs, pe_abs = _correlations(pred.abs(), true.abs())
        # where the estimate fails: among the top-k (large effects, where first order is weakest)
        # or among the random units (small effects); the split is unknown for a given sample
        n_top = None if components and kind in components else min(k, scores.get(kind).numel())
        out[kind] = {
            "spearman": sp, "pearson": pe, "spearman_abs": sp_abs, "pearson_abs": pe_abs,
            **sample_parts(pred, ref, n_top),
            "compared_with": "|exact|" if magnitude else "exact",
            "n": len(comps), "k": k, "n_random": n_random,
            "components": [[c.layer, c.index] for c in comps],
            "predicted": pred.tolist(), "exact": true.tolist(),
        }
    return out
