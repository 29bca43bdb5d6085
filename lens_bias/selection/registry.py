"""The selectors by name: one signature, one result, one dispatcher.

A *selector* turns the attribution of the train pairs into a mask at a budget. Every selector is
a function ``(spec: SelectorSpec, inputs: SelectionInputs) -> Selection`` registered under its
name with :func:`register`; :func:`select_units` runs one by name, and ``lens-bias run``,
``lens-bias prune``, ``lens-bias experiment curve`` and ``selectors`` all go through it.

* :class:`SelectorSpec` says *how* to select: the selector's name, its capability quantile and
  its options (``{"steps": 4}`` for ``iterative``);
* :class:`SelectionInputs` says *from what*: the model, the train pairs, the budget and kind,
  the attribution (whole, and per template), the capability cost, the ablation;
* :class:`Selection` is what comes back: the mask and a record of how it was chosen.

The built-in selectors register when :mod:`lens_bias.selection` is imported: ``oneshot`` and
``iterative`` (:mod:`~lens_bias.selection.topk`), ``stable``
(:mod:`~lens_bias.selection.stability`), ``learned`` (:mod:`~lens_bias.selection.learned`) and
``auto`` (:mod:`~lens_bias.selection.auto`). Adding one is one new module whose function carries
``@register("name", "what it does")``, imported from ``lens_bias/selection/__init__.py``; code
outside lens_bias calls :func:`register` before it runs or prunes.

Examples:
    >>> from lens_bias import build_pairs, load_model
    >>> b = load_model("tiny-random", device="cpu")
    >>> inputs = SelectionInputs(b, build_pairs(["finance"]).sample(4), budget=3, cost=None)
    >>> got = select_units(SelectorSpec("oneshot", None), inputs)
    >>> got.mask.counts()["neurons"], got.record["selector"]
    (3, 'oneshot')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from ..attribution.per_template import TemplateScores, attribute_templates
from ..bridge import Bridge
from ..errors import ChoiceError
from ..masks import PruningMask
from ..prompts.pairs import PairSet, neutral_text
from ..scores import Scores
from ..vocab import KIND_CHOICES, KINDS, check_ablation, check_choice


@dataclass
class SelectorSpec:
    """How to select: a selector name, its capability quantile (None: no filter) and its options."""

    selector: str = "oneshot"
    max_cost_quantile: float | None = 0.5
    options: dict = field(default_factory=dict)

    def label(self) -> str:
        q = "off" if self.max_cost_quantile is None else f"{self.max_cost_quantile:g}"
        extra = "".join(f", {k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.selector} (cost quantile {q}{extra})"


@dataclass
class SelectionInputs:
    """What a selector selects from.

    ``pairs`` are the train pairs (``None`` for ``oneshot`` on given ``scores``); ``budget`` a count,
    ``"0.5%"`` or ``"0.13%params"``; ``kind`` ``neurons``, ``heads`` or ``both`` (each kind at the budget,
    joined). ``scores`` is the attribution of ``pairs`` under ``ablation`` and ``template_scores`` the
    same kept per template (each computed when a selector needs it and it is not given). ``cost`` is the
    capability cost of :func:`lens_bias.attribution.patching.capability_cost` (``None``: no filter);
    ``neutral`` the neutral text for selectors that check perplexity (``None``: the bundled text);
    ``metric`` the target (``None``: the attribution's, else ``js``)."""

    bridge: Bridge
    pairs: PairSet | None
    budget: str | int | float
    kind: str = "neurons"
    cost: Scores | None = None
    neutral: Sequence[str] | None = None
    scores: Scores | None = None
    template_scores: TemplateScores | None = None
    metric: str | None = None
    ablation: str = "zero"
    means: dict | None = None
    seed: int = 0
    batch_size: int = 16
    progress: bool = False

    def resolved_metric(self) -> str:
        """The metric selection lowers: ``metric``, else the attribution's, else ``js``."""
        for source in (self.scores, self.template_scores):
            if self.metric is None and source is not None:
                return source.settings.get("metric", "js")
        return self.metric or "js"

    def per_template(self) -> TemplateScores:
        """The attribution kept per template (computed on first use under ``ablation``)."""
        if self.template_scores is None:
            self.template_scores = attribute_templates(self.bridge, self.pairs, metric=self.resolved_metric(),
                                                       ablation=self.ablation, means=self.means,
                                                       batch_size=self.batch_size, progress=self.progress)
        return self.template_scores

    def attribution(self) -> Scores:
        """The attribution of all the pairs: ``scores``, else the per-template one's sum."""
        return self.scores if self.scores is not None else self.per_template().scores()

    def neutral_text(self) -> list[str]:
        return list(self.neutral) if self.neutral is not None else neutral_text()


@dataclass
class Selection:
    """A selector's result: the mask and how it was chosen (``selector``, ``max_cost_quantile``,
    ``options`` and what the selector adds, e.g. ``auto``'s comparison or ``learned``'s history)."""

    mask: PruningMask
    record: dict = field(default_factory=dict)


SelectorFn = Callable[[SelectorSpec, SelectionInputs], Selection]


@dataclass(frozen=True)
class Entry:
    """A registered selector: its function, a one-line summary, the ablations it works under, the
    options it takes and whether it selects ``kind="both"`` itself (else once a kind, joined)."""

    name: str
    fn: SelectorFn
    summary: str
    ablations: tuple[str, ...] = ("zero",)
    options: tuple[str, ...] = ()
    joint_kinds: bool = False


_REGISTRY: dict[str, Entry] = {}


def register(name: str, summary: str, *, ablations: Sequence[str] = ("zero",), options: Sequence[str] = (),
             joint_kinds: bool = False, replace_existing: bool = False) -> Callable[[SelectorFn], SelectorFn]:
    """Register the decorated function as the selector ``name`` (see the module docstring).

    ``ablations``: the ablations it selects under (a selector that learns or compares under zero
    ablation only says ``("zero",)``); ``options``: the keys of :attr:`SelectorSpec.options` it
    reads (others are refused); ``joint_kinds``: it handles ``kind="both"`` itself."""
    for a in ablations:
        check_ablation(a)

    def decorate(fn: SelectorFn) -> SelectorFn:
        if name in _REGISTRY and not replace_existing:
            raise ChoiceError(f"a selector named {name!r} is already registered; pick another name, or pass "
                              "replace_existing=True")
        _REGISTRY[name] = Entry(name, fn, summary, tuple(ablations), tuple(options), joint_kinds)
        return fn

    return decorate


def unregister(name: str) -> None:
    """Remove the selector ``name`` (a no-op when it is not registered)."""
    _REGISTRY.pop(name, None)


def selectors() -> dict[str, Entry]:
    """The registered selectors, by name, in registration order."""
    return dict(_REGISTRY)


def check_selector(name, ablation: str | None = None, what: str = "selector") -> Entry:
    """The entry of the selector ``name``; a :class:`~lens_bias.errors.ChoiceError` naming the
    registered ones when there is none, or when it does not work under ``ablation``.

    Examples:
        >>> check_selector("stable", "mean", "--selector")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_bias.errors.ChoiceError: --selector stable works under zero ablation only; ...
    """
    check_choice(name, tuple(_REGISTRY), what)
    entry = _REGISTRY[name]
    if ablation is not None and check_ablation(ablation) not in entry.ablations:
        works = [n for n, e in _REGISTRY.items() if ablation in e.ablations]
        raise ChoiceError(f"{what} {name} works under {' or '.join(entry.ablations)} ablation only; use that "
                          f"ablation, or one of the selectors that work under {ablation} ablation: "
                          f"{', '.join(works)}")
    return entry


def check_options(spec: SelectorSpec, entry: Entry | None = None) -> None:
    """Refuse options the selector does not read, naming the ones it does."""
    entry = entry or check_selector(spec.selector)
    unknown = sorted(set(spec.options) - set(entry.options))
    if unknown:
        takes = ", ".join(entry.options) or "none"
        raise ChoiceError(f"the {entry.name} selector takes no option {', '.join(map(repr, unknown))} "
                          f"(its options: {takes})")


def select_units(spec: SelectorSpec | str, inputs: SelectionInputs) -> Selection:
    """Run the selector ``spec`` (a :class:`SelectorSpec`, or a name with the default quantile
    0.5 and no options) on ``inputs``. With ``kind="both"`` a selector that selects one kind runs
    once a kind and the masks are joined (the record keeps each kind's under ``per_kind``)."""
    spec = spec if isinstance(spec, SelectorSpec) else SelectorSpec(spec)
    entry = check_selector(spec.selector, inputs.ablation)
    check_options(spec, entry)
    check_choice(inputs.kind, KIND_CHOICES, "kind")
    if inputs.kind != "both" or entry.joint_kinds:
        got = entry.fn(spec, inputs)
        return Selection(got.mask, _record(spec, got.record))
    parts = {}
    for k in KINDS:
        one = replace(inputs, kind=k)
        parts[k] = entry.fn(spec, one)
        inputs.template_scores = one.template_scores  # computed once, shared by the kinds
    mask = parts["neurons"].mask | parts["heads"].mask
    return Selection(mask, _record(spec, {"per_kind": {k: p.record for k, p in parts.items()}}))


def _record(spec: SelectorSpec, extra: dict) -> dict:
    return {"selector": spec.selector, "max_cost_quantile": spec.max_cost_quantile,
            "options": dict(spec.options), **extra}

