"""Learned masks: refine a selection by gradient descent, with the safeguards that keep it honest.

A score per unit (``theta``) is learned; the mask is always *exactly* the budget: the ``k``
highest-``theta`` units (among those the capability filter allows) are pruned. The forward pass
uses that hard top-k mask; the backward pass uses a sigmoid around the k-th score (a
straight-through top-k estimator), so ablation during training is the pruning that is exported.

Safeguards (a probe with relaxed gates removed more bias on new domains but damaged the model,
and more optimisation on the same templates overfit them):

* a capability term: the KL from the unpruned model on neutral text, next to the bias loss;
* worst-domain weighting (online group-DRO): domains whose bias falls least get more weight;
* early stopping on *validation templates* (train templates the loss never sees): the mask kept
  is the step with the lowest exact validation JS;
* that choice is made on the binary mask, and only among steps whose exact neutral-text
  perplexity rose at most ``max_ppl_increase`` %; step 0 is the initial selection, so the
  result is never worse than it on the validation templates.

``theta`` starts from the attribution scores (z-scored), so step 0 is the one-shot mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..bridge import Bridge
from ..errors import MaskError
from ..hooks.ablation import ablate
from ..hooks.components import hook_name
from ..hooks.interventions import attached
from ..masks import PruningMask
from ..measures.capability import neutral_kl, perplexity
from ..measures.metrics import js_divergence
from ..model.batching import last_logits, pair_batch, widened
from ..prompts.pairs import PairSet
from ..prompts.splits import validation_split
from ..scores import Scores
from ..vocab import Kind
from .registry import Selection, SelectionInputs, SelectorSpec, register
from .topk import Budget, allowed_units


@dataclass
class LearnConfig:
    """Settings of :func:`learn_mask` (recorded in the mask's metadata)."""

    steps: int = 30
    lr: float = 0.1
    temperature: float = 0.5  # width of the sigmoid the gradient flows through, in z-score units
    kl_weight: float = 5.0  # weight of the neutral-text KL (nats per token) against relative JS
    dro_eta: float = 1.0  # group-DRO step size (0: every domain weighs the same)
    pairs_per_domain: int = 8  # train pairs per domain in one step
    neutral_batch: int = 8  # neutral sentences in one step
    eval_every: int = 3
    patience: int = 4  # evaluations without a better validation JS before stopping
    max_ppl_increase: float = 2.0  # % on neutral text, checked on the binary mask
    seed: int = 0


def _prune_indicator(theta: Tensor, allowed: Tensor, k: int, temperature: float) -> Tensor:
    """1 for the ``k`` highest ``theta`` among ``allowed`` (forward), with the gradient of a sigmoid
    centred between the k-th and the (k+1)-th score (backward)."""
    t = theta.masked_fill(~allowed, -math.inf).flatten()
    top = torch.topk(t, k + 1)
    hard = torch.zeros_like(t)
    hard[top.indices[:k]] = 1.0
    thr = ((top.values[k - 1] + top.values[k]).detach() / 2 if torch.isfinite(top.values[k])
           else top.values[k - 1])
    soft = torch.sigmoid((theta.flatten() - thr) / temperature) * allowed.flatten()
    return (hard + soft - soft.detach()).view_as(theta)


def gate_hooks(kind: Kind, prune: Float[Tensor, "n_layers units"], n_layers: int) -> list:
    """Hooks multiplying each unit's activation by ``1 - prune`` (zero ablation, differentiable in
    ``prune``)."""
    def make(layer):
        def fn(act, hook):
            g = (1 - prune[layer]).to(act.device, act.dtype)
            return act * (g[:, None] if kind == "heads" else g)
        return fn
    return [(hook_name(kind, L), make(L)) for L in range(n_layers)]


def _pair_js(bridge: Bridge, pairs: Sequence) -> Tensor:
    batch = pair_batch(bridge, pairs)
    logp = F.log_softmax(widened(last_logits(bridge, batch.ids, batch.lengths.tolist())), -1)
    n = len(pairs)
    return js_divergence(logp[:n], logp[n:])


def validation_js(bridge: Bridge, val: PairSet, mask: PruningMask | None, batch_size: int = 16) -> float:
    ctx = ablate(bridge, mask) if mask is not None else torch.no_grad()
    total = 0.0
    with ctx, torch.no_grad():
        for i in range(0, len(val), batch_size):
            total += float(_pair_js(bridge, val.pairs[i:i + batch_size]).sum())
    return total / len(val)


def _mask_from(theta: Tensor, allowed: Tensor, k: int, kind: Kind, bridge: Bridge, meta: dict) -> PruningMask:
    mask = PruningMask.keep_all(bridge, **meta)
    idx = torch.topk(theta.masked_fill(~allowed, -math.inf).flatten(), k).indices
    mask.tensor(kind).view(-1)[idx] = False
    return mask


def learn_mask(bridge: Bridge, fit: PairSet, val: PairSet, budget: str | float | int | Budget, kind: Kind,
               init: Scores, neutral: Sequence[str], cost: Scores | None = None,
               max_cost_quantile: float | None = None, cfg: LearnConfig | None = None,
               progress: bool = True) -> tuple[PruningMask, list[dict]]:
    """Learn a mask of exactly ``budget`` units of ``kind`` on the ``fit`` pairs (zero ablation),
    early-stopped on the ``val`` pairs (templates the loss never sees); see the module docstring.
    Returns the mask and the history (one row per evaluation: step, validation JS, neutral
    perplexity change, whether it was allowed and kept)."""
    cfg = cfg or LearnConfig()
    if not len(fit) or not len(val):
        raise MaskError("learn_mask needs fit and validation pairs (a template split of the train pairs)")
    if set(fit.templates) & set(val.templates):
        raise MaskError("the validation pairs share templates with the fit pairs; split them by template")
    s0 = init.get(kind)
    if s0 is None:
        raise MaskError(f"the initial scores have no {kind}")
    k = Budget.parse(budget).count(bridge, kind)
    allowed = allowed_units(s0.float(), kind, None, cost, max_cost_quantile)
    z = s0.double()[allowed]
    theta = (((s0.double() - z.mean()) / (z.std() + 1e-30)).float().masked_fill(~allowed, 0.0)
             .requires_grad_(True))
    opt = torch.optim.Adam([theta], lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    domains = fit.by_domain()
    base = {d: validation_js(bridge, sub, None) for d, sub in domains.items()}
    q = torch.ones(len(domains), dtype=torch.float64) / len(domains)
    meta = {"selector": "learned", "budget": str(budget), "kind": kind,
            "max_cost_quantile": max_cost_quantile, "metric": "js", "domains": fit.domains,
            **{f"learn_{k_}": v for k_, v in vars(cfg).items()}}
    ppl0 = perplexity(bridge, neutral, progress=False)
    val0 = validation_js(bridge, val, None)
    history: list[dict] = []
    best = {"val_js": math.inf, "mask": None, "step": None}
    bad = 0
    steps = range(cfg.steps + 1)
    for step in tqdm(steps, desc="learned mask", leave=False) if progress else steps:
        if step % cfg.eval_every == 0 or step == cfg.steps:
            mask = _mask_from(theta.detach(), allowed, k, kind, bridge, meta)
            row = _evaluate_step(bridge, val, mask, neutral, ppl0, val0, step, cfg)
            history.append(row)
            if row["allowed"] and row["val_js"] < best["val_js"] - 1e-12:
                best, bad = {"val_js": row["val_js"], "mask": mask, "step": step}, 0
            else:
                bad += 1
            if bad > cfg.patience or step == cfg.steps:
                break
        q = _train_step(bridge, domains, base, theta, allowed, k, kind, neutral, q, opt, gen, cfg)
    if best["mask"] is None:
        raise MaskError(f"no step of the learned mask kept neutral-text perplexity within "
                        f"+{cfg.max_ppl_increase}%; lower the budget or raise the capability filter")
    for row in history:
        row["kept"] = row["step"] == best["step"]
    best["mask"].meta.update({"learn_best_step": best["step"]})
    return best["mask"], history


def _evaluate_step(bridge, val, mask, neutral, ppl0, val0, step, cfg) -> dict:
    js = validation_js(bridge, val, mask)
    with ablate(bridge, mask):
        ppl = perplexity(bridge, neutral, progress=False)
    dppl = 100 * (ppl / ppl0 - 1)
    return {"step": step, "val_js": js, "val_reduction_pct": 100 * (1 - js / val0),
            "neutral_ppl_change_pct": dppl, "allowed": dppl <= cfg.max_ppl_increase}


def _train_step(bridge, domains, base, theta, allowed, k, kind, neutral, q, opt, gen, cfg) -> Tensor:
    """One Adam step on ``theta``: group-DRO-weighted relative JS plus the weighted neutral KL."""
    opt.zero_grad()
    prune = _prune_indicator(theta, allowed, k, cfg.temperature)
    hooks = gate_hooks(kind, prune, bridge.cfg.n_layers)
    losses = []
    with torch.enable_grad():
        for d, sub in domains.items():
            idx = torch.randperm(len(sub), generator=gen)[:cfg.pairs_per_domain].tolist()
            with attached(bridge, hooks):
                losses.append(_pair_js(bridge, [sub.pairs[i] for i in idx]).mean() / max(base[d], 1e-12))
        lvec = torch.stack(losses)
        q = q * torch.exp(cfg.dro_eta * lvec.detach().double())
        q = q / q.sum()
        ni = torch.randperm(len(neutral), generator=gen)[:cfg.neutral_batch].tolist()
        kl = neutral_kl(bridge, [neutral[i] for i in ni], hooks)
        loss = (q.to(lvec.dtype) * lvec).sum() + cfg.kl_weight * kl
        loss.backward()
    opt.step()
    return q


@register("learned", "a straight-through top-k mask learned on part of the train templates, stopped on "
                     "the rest",
          options=tuple(f for f in LearnConfig.__dataclass_fields__ if f != "seed"))
def learned_selector(spec: SelectorSpec, inputs: SelectionInputs) -> Selection:
    """:func:`learn_mask` on a fit/validation split of the train templates
    (:func:`lens_bias.prompts.splits.validation_split`), started from the fit templates' scores."""
    fit, val = validation_split(inputs.pairs, inputs.seed)
    cfg = LearnConfig(**spec.options, seed=inputs.seed)
    mask, history = learn_mask(inputs.bridge, fit, val, inputs.budget, inputs.kind,
                               inputs.per_template().subset(fit.templates), inputs.neutral_text(),
                               inputs.cost, spec.max_cost_quantile, cfg, progress=inputs.progress)
    return Selection(mask, {"history": history})
