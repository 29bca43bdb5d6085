"""One family of ways to remove the bias: every method is fitted on the train split only, simulated
with hooks, costed, and folded into the weights where that is exact.

* :class:`Intervention` -- a fitted method: the hooks that simulate it, what it costs (units zeroed,
  rank removed, vectors added, parameters changed), what was chosen on the train split, and how to
  fold it into a new Hugging Face model (``None`` with the reason when it cannot be folded exactly).
* :class:`FitContext` -- what every method fits from (model, train pairs, budget, seed), with what
  several share computed once: the attribution kept per template, the capability cost, the
  residual-stream means at the candidate layers, the tuning set.
* :func:`register` -- how a method joins the registry (:mod:`lens_bias.mitigation.registry`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..bridge import Bridge
from ..hooks.interventions import attached
from ..masks import PruningMask
from ..prompts.pairs import PairSet
from .residual import KL_BUDGET, Residuals, Tuning, candidate_layers, pair_residuals


@dataclass
class Intervention:
    """A fitted method (see the module docstring). ``cost`` always has ``params_changed`` (weights that
    differ once folded, or that the hooks act through) and the method's own counts."""

    method: str
    hooks: list
    cost: dict
    settings: dict = field(default_factory=dict)
    fold: Callable | None = None  # () -> PreTrainedModel equal to the bridge under ``hooks``
    not_foldable: str | None = None  # why ``fold`` is None
    mask: PruningMask | None = None  # pruning methods: the mask
    fit_s: float = 0.0

    def simulate(self, bridge: Bridge):
        """Context manager: the bridge runs with the intervention's hooks attached."""
        return attached(bridge, self.hooks)

    @property
    def exportable(self) -> bool:
        return self.fold is not None

    def record(self) -> dict:
        """What ``result.json`` keeps of the method (no tensors)."""
        return {"method": self.method, "cost": self.cost, "settings": self.settings,
                "exportable": self.exportable, "not_foldable": self.not_foldable,
                "fit_s": round(self.fit_s, 2)}


@dataclass
class FitContext:
    """What the methods fit from; the shared pieces are computed on first use."""

    bridge: Bridge
    train: PairSet
    budget: str = "0.5%"
    kind: str = "neurons"
    max_cost_quantile: float | None = 0.5
    seed: int = 0
    batch_size: int = 16
    progress: bool = False
    tune_per_domain: int = 8
    kl_budget: float | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def cached(self, key: str, make: Callable):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def template_scores(self):
        """Attribution kept per template, and the capability cost (zero ablation): what the default
        pruning and the capability filter read."""
        from ..attribution.per_template import template_scores

        return self.cached("ts", lambda: template_scores(self.bridge, self.train, self.progress,
                                                         self.batch_size))

    def residuals(self) -> Residuals:
        """The last-token residual stream at :func:`candidate_layers` on every train pair."""
        return self.cached("resid", lambda: pair_residuals(
            self.bridge, self.train, candidate_layers(self.bridge), batch_size=self.batch_size))

    def tuning(self) -> Tuning:
        """Train pairs and neutral tuning lines that hook methods choose their setting on."""
        budget = self.kl_budget if self.kl_budget is not None else KL_BUDGET
        return self.cached("tuning", lambda: Tuning.of(self.bridge, self.train, self.tune_per_domain,
                                                       self.seed, budget))


@dataclass(frozen=True)
class Method:
    """A registered method: its name, a one-line summary and ``fit(ctx) -> Intervention``."""

    name: str
    summary: str
    fit: Callable[[FitContext], Intervention]


REGISTRY: dict[str, Method] = {}  # name -> method, filled by @register (read it through registry.methods())


def register(name: str, summary: str) -> Callable:
    """Decorator: register ``fit(ctx) -> Intervention`` as the method ``name``."""
    def deco(fn: Callable[[FitContext], Intervention]) -> Callable:
        REGISTRY[name] = Method(name, summary, fn)
        return fn
    return deco
