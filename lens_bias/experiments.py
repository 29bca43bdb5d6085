"""Experiments composed from scoring, selection and ablation: the evaluation of a (simulated)
pruning, and pruning curves over budgets, scorers and component kinds."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .ablation import ablate
from .attribution import Scores
from .components import params_per_unit
from .masks import PruningMask, budget_count, n_params, random_mask, select
from .metrics import crows_rate, kl_from_reference, lambada_accuracy, measure, perplexity
from .pairs import PairSet


@dataclass
class EvalSet:
    """What a pruning is evaluated on: held-out pairs, and capability texts (neutral text for KL,
    WikiText-2 lines for perplexity, LAMBADA passages, CrowS-Pairs), each optional but the pairs."""

    pairs: PairSet
    neutral: list[str] = field(default_factory=list)
    wikitext: list[str] = field(default_factory=list)
    lambada: list[str] = field(default_factory=list)
    crows: list = field(default_factory=list)
    ppl_tokens: int = 4096


def evaluate(bridge, ev: EvalSet, mask: PruningMask | None = None, mode: str = "zero", means: dict | None = None,
             crows: bool = False, lambada: bool = True, batch_size: int = 32) -> dict:
    """Bias on the held-out pairs (mean JS and mean |logit gap|, overall and per domain) and
    capability (perplexity, KL from the unpruned model, LAMBADA, optionally CrowS-Pairs), with
    ``mask`` simulated by ablation hooks (``None`` = the unpruned model)."""

    def ctx():
        return ablate(bridge, mask, mode, means) if mask is not None and not mask.is_empty() else nullcontext()

    out: dict = {}
    with ctx():
        m = measure(bridge, ev.pairs, batch_size=batch_size, progress=False)
        s = m.summary()
        gaps = [abs(v) for v in m.values["logit_gap"] if v is not None]
        out["js"] = s["all"]["js"]
        out["abs_logit_gap"] = sum(gaps) / len(gaps) if gaps else None
        out["by_domain"] = {d: {"js": s[d]["js"], "logit_gap": s[d]["logit_gap"], "n_pairs": s[d]["n_pairs"]}
                            for d in ev.pairs.domains}
        if ev.wikitext:
            out["wikitext_ppl"] = perplexity(bridge, ev.wikitext, max_tokens=ev.ppl_tokens, progress=False)
        if lambada and ev.lambada:
            out["lambada_acc"] = lambada_accuracy(bridge, ev.lambada, progress=False)
        if crows and ev.crows:
            out["crows_rate"] = crows_rate(bridge, ev.crows, progress=False)["rate"]
    if ev.neutral:
        out["kl_neutral"] = 0.0 if mask is None or mask.is_empty() else kl_from_reference(bridge, ev.neutral, ctx)
    return out


def pruned_params(bridge, mask: PruningMask) -> int:
    c = mask.counts()
    return c["neurons"] * params_per_unit(bridge, "neurons") + c["heads"] * params_per_unit(bridge, "heads")


def pruning_curve(
    bridge,
    ev: EvalSet,
    scorers: dict[str, Scores],
    kinds: Sequence[str] = ("neurons", "heads"),
    budgets: Sequence[str] = ("0.1%", "0.25%", "0.5%", "1%", "2%"),
    mode: str = "zero",
    means: dict | None = None,
    cost: Scores | None = None,
    max_cost_quantile: float | None = None,
    random_control: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> list[dict]:
    """Held-out bias and capability for every scorer x kind x budget (plus a random control), as
    a list of records (one per point) with the number of removed units and parameters."""
    jobs = [(name, kind, b) for name in scorers for kind in kinds for b in budgets]
    if random_control:
        jobs += [("random", kind, b) for kind in kinds for b in budgets]
    it = tqdm(jobs, desc="pruning curve", leave=False) if progress else jobs
    total = n_params(bridge)
    rows = []
    for name, kind, b in it:
        if name == "random":
            mask = random_mask(bridge, b, kind, seed=seed)
        else:
            mask = select(scorers[name], b, kind=kind, bridge=bridge, cost=cost, max_cost_quantile=max_cost_quantile)
        res = evaluate(bridge, ev, mask, mode, means, lambada=False)
        p = pruned_params(bridge, mask)
        rows.append({"scorer": name, "kind": kind, "budget": b, "n_units": budget_count(bridge, kind, b),
                     "params": p, "params_pct": 100.0 * p / total, **res})
    return rows
