"""Selection: which units to prune, from scores and a budget.

* :class:`Budget` is a parsed budget: a count (``230``), a fraction of a kind's units (``"0.5%"``)
  or of the model's parameters (``"0.13%params"``); :func:`parse_budget` and :func:`budget_count`
  are its thin functional face.
* :func:`select` prunes the top-scoring units (globally or the same count per layer, optionally
  never the units a capability cost marks as load-bearing); :func:`random_mask` is the control.
* :func:`select_iterative` prunes part of the budget, re-attributes with that part ablated, and
  repeats. One attribution pass scores every unit against the *unpruned* model, so redundant units
  (two neurons that carry the same bias signal) are both ranked high and the second one buys
  little once the first is gone. Re-scoring under the ablation of what is already chosen lets the
  later rounds see the model as it will be. ``steps=1`` is the plain one-shot selection.

Both are registered selectors (:mod:`lens_bias.selection.registry`): ``oneshot`` (option
``per_layer``) and ``iterative`` (option ``steps``, default 4).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from ..attribution.patching import attribute
from ..bridge import Bridge, n_params, params_per_unit, shape_of
from ..errors import MaskError
from ..hooks.ablation import ablate
from ..masks import PruningMask
from ..prompts.pairs import PairSet
from ..scores import Scores
from ..vocab import ABLATIONS, KINDS, PER_LAYER, Kind, check_choice
from .registry import Selection, SelectionInputs, SelectorSpec, register

BudgetUnit = Literal["count", "fraction", "params"]

_BUDGET = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(%p|%|p)?\s*$")


@dataclass(frozen=True)
class Budget:
    """A parsed budget: ``unit`` ``"count"`` (``value`` units), ``"fraction"`` (of the kind's units)
    or ``"params"`` (a fraction of the model's parameters); ``given`` is what was parsed (for
    messages; it takes no part in equality).

    Examples:
        >>> Budget.parse("0.5%"), Budget.parse(230) == Budget("count", 230.0)
        (Budget(unit='fraction', value=0.005), True)
        >>> from lens_bias import load_model
        >>> Budget.parse("2%").count(load_model("tiny-random", device="cpu"), "neurons")  # 2 x 128 neurons
        5
    """

    unit: BudgetUnit
    value: float
    given: str | float | int | None = field(default=None, compare=False, repr=False)

    def __str__(self) -> str:
        """The budget as given, else written the way :meth:`parse` reads it."""
        if self.given is not None:
            return str(self.given)
        if self.unit == "count":
            return str(int(self.value))
        return f"{self.value * 100:g}%" + ("params" if self.unit == "params" else "")

    @classmethod
    def parse(cls, budget: str | float | int | Budget) -> Budget:
        """``"0.5%"`` -> fraction of the kind's units; ``"0.13%params"`` / ``"0.13%p"`` -> fraction of
        model parameters; an int ``230`` -> a count; a float below 1 -> a fraction of units."""
        if isinstance(budget, Budget):
            return budget
        if isinstance(budget, bool):
            raise MaskError(f"invalid budget {budget!r}")
        if isinstance(budget, int):
            unit, value = "count", float(budget)
        elif isinstance(budget, float):
            unit, value = ("fraction", budget) if budget < 1 else ("count", budget)
        else:
            unit, value = _parse_text(budget)
        if not math.isfinite(value) or value <= 0:
            raise MaskError(f"budget must be positive, got {budget!r} (a budget of 0 prunes nothing)")
        if unit in ("fraction", "params") and value > 1:
            raise MaskError(f"budget {budget!r} is over 100 %")
        if unit == "count" and value != int(value):
            raise MaskError(f"a count budget must be a whole number, got {budget!r}")
        return cls(unit, value, budget)

    def count(self, bridge: Bridge, kind: Kind, *, stacklevel: int = 2) -> int:
        """How many units of ``kind`` this budget means on ``bridge``'s model (at least 1, with a
        warning when it means less than one)."""
        shown = self if self.given is None else self.given
        total = math.prod(shape_of(bridge, kind))
        if self.unit == "count":
            n = int(self.value)
        elif self.unit == "fraction":
            n = round(self.value * total)
        else:
            n = round(self.value * n_params(bridge) / params_per_unit(bridge, kind))
        if n > total:
            raise MaskError(f"budget {shown!r} asks for {n} {kind}, the model has only {total}")
        if n < 1:
            warnings.warn(f"budget {shown!r} is less than one {kind[:-1]} on this model ({total} {kind}); "
                          f"pruning 1 {kind[:-1]}", UserWarning, stacklevel=stacklevel)
            return 1
        return n


def _parse_text(budget) -> tuple[BudgetUnit, float]:
    s = str(budget).strip().lower().replace("params", "p").replace("param", "p")
    m = _BUDGET.match(s)
    if not m:
        raise MaskError(
            f"invalid budget {budget!r}: use a count (230), a percentage of units (0.5%) or of model "
            "parameters (0.13%params)"
        )
    value = float(m.group(1))
    unit = m.group(2) or ""
    if unit == "%p":
        return "params", value / 100
    if unit == "%":
        return "fraction", value / 100
    if value < 1 and "." in m.group(1):
        return "fraction", value
    return "count", value


def parse_budget(budget: str | float | int) -> tuple[str, float]:
    """``"0.5%"`` -> fraction of the kind's units; ``"0.13%params"`` / ``"0.13%p"`` -> fraction of
    model parameters; an int ``230`` -> a count; a float below 1 -> a fraction of units.

    Returns ``(kind, value)`` with kind ``"count"``, ``"fraction"`` or ``"params"``.

    Examples:
        >>> parse_budget("0.5%"), parse_budget("0.13%params"), parse_budget(230)
        (('fraction', 0.005), ('params', 0.0013), ('count', 230.0))
    """
    b = Budget.parse(budget)
    return b.unit, b.value


def budget_count(bridge: Bridge, kind: Kind, budget: str | float | int | Budget) -> int:
    """How many units of ``kind`` a budget means on this model (at least 1).

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> budget_count(b, "neurons", "2%"), budget_count(b, "neurons", 7)  # 2 x 128 neurons
        (5, 7)
    """
    return Budget.parse(budget).count(bridge, kind, stacklevel=3)


def select(
    scores: Scores,
    budget: str | float | int | Budget,
    kind: Kind | Literal["both"] = "neurons",
    per_layer: str = "global",
    layers: list[int] | None = None,
    bridge: Bridge | None = None,
    cost: Scores | None = None,
    max_cost_quantile: float | None = None,
) -> PruningMask:
    """Prune the top-scoring units (highest score = largest estimated bias reduction).

    * ``budget``: a count, a fraction of the kind's units (``"0.5%"``) or of model parameters
      (``"0.13%params"``); with ``kind="both"`` the budget applies to each kind separately.
    * ``per_layer="global"`` ranks all layers together; ``"uniform"`` takes the same count from
      every (allowed) layer, which structural pruning needs.
    * ``layers``: restrict pruning to these layers.
    * ``cost`` (a :class:`~lens_bias.scores.Scores` from
      :func:`lens_bias.attribution.patching.capability_cost`) and ``max_cost_quantile``:
      capability-aware selection; units whose first-order capability cost is above that quantile
      (per kind) are never pruned.

    Refuses a selection that would remove every unit of a layer.

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> from lens_bias.attribution.patching import attribute
        >>> b = load_model("tiny-random", device="cpu")
        >>> scores = attribute(b, build_pairs(["hiring"]).sample(4), progress=False)
        >>> mask = select(scores, "2%", kind="neurons", bridge=b)
        >>> mask.counts()
        {'neurons': 5, 'heads': 0}
        >>> select(scores, 2, kind="neurons", per_layer="uniform", bridge=b).per_layer("neurons")
        [1, 1]
    """
    if not isinstance(scores, Scores):
        raise MaskError("select needs a Scores object (from attribute / a baseline scorer)")
    check_choice(per_layer, PER_LAYER, "per_layer")
    kinds = list(KINDS) if kind == "both" else [kind]
    if bridge is None:
        raise MaskError("select needs the bridge (for shapes and parameter counts)")
    mask = PruningMask.keep_all(bridge, scorer=scores.settings.get("estimator"),
                                metric=scores.settings.get("metric"), domains=scores.settings.get("domains"),
                                budget=str(budget), kind=kind, per_layer=per_layer,
                                max_cost_quantile=max_cost_quantile)
    for k in kinds:
        s = scores.get(k)
        if s is None:
            raise MaskError(f"the scores have no {k}; scan with components including {k!r}")
        s = s.detach().float().clone()
        n = Budget.parse(budget).count(bridge, k, stacklevel=3)
        allowed = allowed_units(s, k, layers, cost, max_cost_quantile)
        s[~allowed] = -float("inf")
        if per_layer == "global":
            keep, per = _top_global(s, n, allowed, k), None
        else:
            rows = layers if layers is not None else list(range(s.shape[0]))
            per = max(1, n // len(rows))
            keep = _top_per_layer(s, per, allowed, k, rows)
        _refuse_emptied_layers(keep, k, per)
        setattr(mask, k, keep)
    return mask


def allowed_units(s: Tensor, kind: Kind, layers: list[int] | None, cost: Scores | None,
             max_cost_quantile: float | None) -> Tensor:
    """Which units of ``kind`` may be pruned: those of ``layers`` whose capability cost is at most
    the ``max_cost_quantile`` quantile."""
    allowed = torch.ones_like(s, dtype=torch.bool)
    if layers is not None:
        bad = [x for x in layers if not 0 <= x < s.shape[0]]
        if bad:
            raise MaskError(f"layers {bad} out of range 0..{s.shape[0] - 1}")
        allowed[:] = False
        allowed[layers] = True
    if cost is not None and max_cost_quantile is not None and cost.get(kind) is not None:
        if not 0 < max_cost_quantile <= 1:
            raise MaskError(f"max_cost_quantile must be in (0, 1], got {max_cost_quantile}")
        c = cost.get(kind).float()
        allowed &= c <= torch.quantile(c.flatten(), max_cost_quantile)
    return allowed


def _top_global(s: Tensor, n: int, allowed: Tensor, kind: Kind) -> Tensor:
    """The keep-mask without the ``n`` best-scoring units over all layers."""
    keep = torch.ones_like(s, dtype=torch.bool)
    if n > int(allowed.sum()):
        raise MaskError(f"budget of {n} {kind} is larger than the {int(allowed.sum())} allowed units")
    idx = torch.topk(s.flatten(), n).indices
    keep.view(-1)[idx] = False
    return keep


def _top_per_layer(s: Tensor, per: int, allowed: Tensor, kind: Kind, rows: list[int]) -> Tensor:
    """The keep-mask without the ``per`` best-scoring units of each layer in ``rows``."""
    keep = torch.ones_like(s, dtype=torch.bool)
    for r in rows:
        n_ok = int(allowed[r].sum())
        if per >= s.shape[1]:
            keep[r] = False  # the whole layer: refused by _refuse_emptied_layers
        elif per > n_ok:
            raise MaskError(f"per_layer='uniform' takes {per} {kind} from layer {r}, which has only {n_ok} "
                            f"allowed (of {s.shape[1]}; the capability filter excludes the rest); "
                            "lower the budget or raise max_cost_quantile")
        else:
            keep[r, torch.topk(s[r], per).indices] = False
    return keep


def _refuse_emptied_layers(keep: Tensor, kind: Kind, per: int | None) -> None:
    """Refuse a selection that removes every unit of a layer (``per``: the uniform count, or None)."""
    full = (~keep).all(-1)
    if full.any():
        fix = (f"lower the budget (uniform takes {per} per layer, a layer has {keep.shape[1]})"
               if per is not None else "lower the budget or use per_layer='uniform'")
        raise MaskError(
            f"the budget would remove every {kind[:-1]} of layer(s) "
            f"{full.nonzero().flatten().tolist()}; {fix}"
        )


def random_mask(bridge: Bridge, budget: str | float | int | Budget, kind: Kind | Literal["both"] = "neurons",
                seed: int = 0) -> PruningMask:
    """A mask removing the same number of units chosen uniformly at random (a control), seeded.

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> random_mask(b, "2%", "neurons", seed=0).counts()
        {'neurons': 5, 'heads': 0}
    """
    gen = torch.Generator().manual_seed(seed)
    mask = PruningMask.keep_all(bridge, scorer="random", budget=str(budget), kind=kind, seed=seed)
    for k in (list(KINDS) if kind == "both" else [kind]):
        n = Budget.parse(budget).count(bridge, k, stacklevel=3)
        t = mask.tensor(k)
        idx = torch.randperm(t.numel(), generator=gen)[:n]
        t.view(-1)[idx] = False
    return mask


def select_iterative(
    bridge: Bridge,
    pairs: PairSet,
    budget: str | float | int | Budget,
    kind: Kind = "neurons",
    steps: int = 4,
    metric: str | Callable = "js",
    ablation: str = "zero",
    means: dict | None = None,
    cost: Scores | None = None,
    max_cost_quantile: float | None = None,
    batch_size: int = 16,
    first: Scores | None = None,
    progress: bool = True,
) -> tuple[PruningMask, list[Scores]]:
    """Choose ``budget`` units of ``kind`` ("neurons" or "heads") in ``steps`` rounds of equal
    size; round r attributes on ``pairs`` with the units of rounds < r ablated (``ablation``) and
    takes the best of the rest (with the same capability filter as :func:`select`).
    ``first`` reuses an attribution of the unpruned model for round 1.

    Returns the mask and the scores of every round.

    Examples:
        >>> from lens_bias import load_model, build_pairs
        >>> b = load_model("tiny-random")
        >>> m, rounds = select_iterative(b, build_pairs(["finance"]).sample(4), 6, steps=2, progress=False)
        >>> m.counts()["neurons"], len(rounds)
        (6, 2)
    """
    if kind not in KINDS:
        raise MaskError(f"iterative selection takes kind 'neurons' or 'heads', got {kind!r}")
    if steps < 1:
        raise MaskError(f"steps must be at least 1, got {steps}")
    total = Budget.parse(budget).count(bridge, kind, stacklevel=3)
    steps = min(steps, total)
    mask = PruningMask.keep_all(bridge)
    rounds: list[Scores] = []
    done = 0
    for r in range(steps):
        want = round(total * (r + 1) / steps) - done
        if r == 0 and first is not None:
            s = first
        else:
            with ablate(bridge, mask, ablation, means):
                s = attribute(bridge, pairs, metric=metric, ablation=ablation, means=means,
                              components=(kind,), batch_size=batch_size, progress=progress)
        rounds.append(s)
        avail = s.get(kind).clone().float()
        avail[~mask.tensor(kind)] = -torch.inf  # already pruned
        step_scores = Scores(**{k: (avail if k == kind else None) for k in KINDS},
                             settings=s.settings)
        new = select(step_scores, want, kind=kind, bridge=bridge, cost=cost,
                     max_cost_quantile=max_cost_quantile)
        mask = mask | new
        done += want
    mask.meta.update({"scorer": rounds[0].settings.get("estimator"),
                      "metric": rounds[0].settings.get("metric"), "budget": str(budget), "kind": kind,
                      "steps": steps, "max_cost_quantile": max_cost_quantile, "domains": pairs.domains})
    _check_layers(mask, kind)
    return mask, rounds


def _check_layers(mask: PruningMask, kind: Kind) -> None:
    empty = [la for la, row in enumerate(mask.tensor(kind)) if not bool(row.any())]
    if empty:
        raise MaskError(f"iterative selection removed every {kind[:-1]} of layer(s) {empty}; "
                        "use a smaller budget")


@register("oneshot", "the top units of one attribution of the train pairs (any scorer's scores)",
          ablations=ABLATIONS, options=("per_layer",), joint_kinds=True)
def oneshot_selector(spec: SelectorSpec, inputs: SelectionInputs) -> Selection:
    """:func:`select` on the attribution of the inputs, globally unless ``per_layer="uniform"``."""
    return Selection(select(inputs.attribution(), inputs.budget, kind=inputs.kind,
                            per_layer=spec.options.get("per_layer", "global"), bridge=inputs.bridge,
                            cost=inputs.cost, max_cost_quantile=spec.max_cost_quantile))


@register("iterative", "re-attribute after each of `steps` parts of the budget (default 4)",
          ablations=ABLATIONS, options=("steps",))
def iterative_selector(spec: SelectorSpec, inputs: SelectionInputs) -> Selection:
    """:func:`select_iterative` in ``steps`` rounds; the inputs' attribution, when given, is round 1."""
    ts = inputs.template_scores
    first = inputs.scores if inputs.scores is not None else (ts.scores() if ts is not None else None)
    mask, rounds = select_iterative(inputs.bridge, inputs.pairs, inputs.budget, inputs.kind,
                                    spec.options.get("steps", 4), inputs.resolved_metric(), inputs.ablation,
                                    inputs.means, inputs.cost, spec.max_cost_quantile, inputs.batch_size,
                                    first=first, progress=inputs.progress)
    return Selection(mask, {"rounds": len(rounds)})
