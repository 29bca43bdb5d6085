"""The choices a user makes, each defined once: a ``Literal`` type, the tuple of its values and
a checker that raises :class:`~lens_bias.errors.ChoiceError` listing the valid ones.

========================  ==============================================  ==========================
choice                    values                                          where it is chosen
========================  ==============================================  ==========================
:data:`Kind`              neurons, heads                                  ``--kind``, ``kind=``
:data:`Ablation`          zero, mean: what a pruned unit outputs          ``--ablation``, ``ablation=``
:data:`Materialization`   zero, structural: how a mask enters weights     ``--mode``, ``mode=``
:data:`Estimator`         ablate, patch: the attribution estimators       ``--estimator``
:data:`Scorer`            the estimators, ig and the baselines            ``--scorer``
:data:`Metric`            js, logit_gap, seqgap: what attribution lowers  ``--metric``, ``metric=``
:data:`Selector`          oneshot, stable, iterative, learned, auto (+)   ``--selector``
:data:`PerLayer`          global, uniform                                 ``--per-layer``
:data:`ExportFormat`      hf, torch-prune, torch-pruning, optipfair       ``--format`` of export
:data:`UserMeasure`       bbq, generations, knowledge                     ``--measures`` of experiments
========================  ==============================================  ==========================

(+) selectors are an open set: their registry, :mod:`lens_bias.selection.registry`, checks them.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

from .errors import ChoiceError

Kind: TypeAlias = Literal["neurons", "heads"]
KINDS: tuple[Kind, ...] = ("neurons", "heads")
Ablation: TypeAlias = Literal["zero", "mean"]
ABLATIONS: tuple[Ablation, ...] = ("zero", "mean")
Materialization: TypeAlias = Literal["zero", "structural"]
MATERIALIZATIONS: tuple[Materialization, ...] = ("zero", "structural")
Estimator: TypeAlias = Literal["ablate", "patch"]
ESTIMATORS: tuple[Estimator, ...] = ("ablate", "patch")
Baseline: TypeAlias = Literal["actdiff", "wanda", "random"]
BASELINES: tuple[Baseline, ...] = ("actdiff", "wanda", "random")
#: integrated gradients along the ablation path (lens_bias.attribution.integrated)
INTEGRATED: tuple[str, ...] = ("ig",)
SCORERS: tuple[str, ...] = ESTIMATORS + INTEGRATED + BASELINES
#: the scorers that differentiate a metric (they take ``metric``, ``ablation``, ``progress``)
GRADIENT_SCORERS: tuple[str, ...] = ESTIMATORS + INTEGRATED
#: what a budget may apply to: one kind of unit, or each kind separately
KIND_CHOICES: tuple[str, ...] = (*KINDS, "both")
Metric: TypeAlias = Literal["js", "logit_gap", "seqgap"]
METRICS: tuple[Metric, ...] = ("js", "logit_gap", "seqgap")
SENTENCE_METRICS: tuple[Metric, ...] = ("seqgap",)
#: the built-in selectors; the set is open: :mod:`lens_bias.selection.registry` holds every registered
#: one and checks a name against it (``check_selector``)
Selector: TypeAlias = Literal["oneshot", "stable", "iterative", "learned", "auto"]
BUILTIN_SELECTORS: tuple[Selector, ...] = ("oneshot", "stable", "iterative", "learned", "auto")
PerLayer: TypeAlias = Literal["global", "uniform"]
PER_LAYER: tuple[PerLayer, ...] = ("global", "uniform")
ExportFormat: TypeAlias = Literal["hf", "torch-prune", "torch-pruning", "optipfair"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("hf", "torch-prune", "torch-pruning", "optipfair")
#: the measures of bias as users see it, each a flag of lens_bias.measures.evaluation.evaluate
UserMeasure: TypeAlias = Literal["bbq", "generations", "knowledge"]
USER_MEASURES: tuple[UserMeasure, ...] = ("bbq", "generations", "knowledge")


def check_choice(value, valid: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``valid``; else a :class:`ChoiceError` ``"<what> must be one of
    <valid>; got <value>"``.

    Examples:
        >>> check_choice("mean", ABLATIONS, "ablation")
        'mean'
        >>> check_choice("half", ABLATIONS, "--ablation")
        Traceback (most recent call last):
        ...
        lens_bias.errors.ChoiceError: --ablation must be one of zero, mean; got 'half'
    """
    if not isinstance(value, str) or value not in valid:
        raise ChoiceError(f"{what} must be one of {', '.join(valid)}; got {value!r}")
    return value


def check_kind(kind) -> Kind:
    """``kind`` itself if it is ``"neurons"`` or ``"heads"``; a :class:`ChoiceError` otherwise.

    Examples:
        >>> check_kind("heads")
        'heads'
    """
    if kind not in KINDS:
        raise ChoiceError(f"kind must be 'neurons' or 'heads', got {kind!r}")
    return kind


def check_ablation(ablation, what: str = "ablation") -> Ablation:
    return check_choice(ablation, ABLATIONS, what)  # type: ignore[return-value]


def check_metric(metric, what: str = "metric") -> Metric:
    """A metric name: the bias measure attribution lowers (a callable passes through:
    attribution accepts any function of the logits as its target)."""
    return metric if callable(metric) else check_choice(metric, METRICS, what)  # type: ignore[return-value]


def is_sentence_metric(metric) -> bool:
    """Whether ``metric`` scores whole sentences (so its pairs are sentence pairs).

    Examples:
        >>> is_sentence_metric("seqgap"), is_sentence_metric("js")
        (True, False)
    """
    return isinstance(metric, str) and metric in SENTENCE_METRICS


def renamed(new_value, old_value, new: str, old: str, default):
    """The value of a keyword that was renamed from ``old`` to ``new``: ``old_value`` with a
    :class:`DeprecationWarning` when only the old name was used, else ``new_value`` (``None``:
    ``default``); both at once is refused.

    Examples:
        >>> renamed(None, None, "ablation", "mode", "zero")
        'zero'
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as w:
        ...     warnings.simplefilter("always")
        ...     renamed(None, "mean", "ablation", "mode", "zero"), str(w[0].message)
        ('mean', 'mode= is now ablation=; the old name will be removed')
    """
    import warnings

    if old_value is None:
        return default if new_value is None else new_value
    if new_value is not None:
        raise ChoiceError(f"{old}= is the old name of {new}=; pass only {new}=")
    warnings.warn(f"{old}= is now {new}=; the old name will be removed", DeprecationWarning, stacklevel=3)
    return old_value


def measure_flags(names, what: str = "measures") -> dict[str, bool]:
    """The ``evaluate`` keywords that turn on the :data:`UserMeasure` ``names`` (each checked).

    Examples:
        >>> measure_flags(["knowledge", "bbq"])
        {'bbq': True, 'knowledge': True}
        >>> measure_flags(["crows"], "--measures")
        Traceback (most recent call last):
        ...
        lens_bias.errors.ChoiceError: --measures must be one of bbq, generations, knowledge; got 'crows'
    """
    given = {check_choice(n, USER_MEASURES, what) for n in names}
    return {m: True for m in USER_MEASURES if m in given}
