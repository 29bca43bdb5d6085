"""Error types. Every failure a user can cause raises a subclass of :class:`LensBiasError`
whose message names the problem and the fix."""


class LensBiasError(Exception):
    """Base class of all errors lens_bias raises on bad input; catch it to handle them all.

    Examples:
        >>> from lens_bias import load_model
        >>> try:
        ...     load_model("no-such-model")
        ... except LensBiasError as e:
        ...     print(type(e).__name__)
        ModelLoadError
    """


class ModelLoadError(LensBiasError):
    """A model could not be found, installed, verified or wrapped.

    Examples:
        >>> from lens_bias import load_model
        >>> load_model("no-such-model")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_bias.errors.ModelLoadError: unknown model 'no-such-model'. Valid zoo names: ...
    """


class PairsError(LensBiasError):
    """A pairs file or pair definition is malformed.

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "pairs.jsonl"
        >>> _ = f.write_text('{"black": "A Black man is", "white": "A Black man is"}')
        >>> from lens_bias import load_jsonl
        >>> load_jsonl(f)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_bias.errors.PairsError: ...: 'black' and 'white' prompts are identical; ...
    """


class MaskError(LensBiasError):
    """A pruning mask is malformed or does not fit the model.

    Examples:
        >>> from lens_bias.selection.topk import parse_budget
        >>> parse_budget("150%")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_bias.errors.MaskError: budget '150%' is over 100 %
    """


class InterventionError(LensBiasError):
    """A mitigation method cannot be fitted, applied or folded into the weights as asked.

    Examples:
        >>> import torch
        >>> from lens_bias.mitigation.directions import unit
        >>> unit(torch.zeros(3))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_bias.errors.InterventionError: the Black-White difference is 0 ...
    """


class ChoiceError(LensBiasError, ValueError):
    """A value outside a fixed set of choices (a kind of unit, an ablation, a selector, a
    scorer, a target, an export format); the message lists the valid ones. It is also a
    ``ValueError``, as such checks raised before.

    Examples:
        >>> from lens_bias.bridge import check_kind
        >>> check_kind("neuron")
        Traceback (most recent call last):
        ...
        lens_bias.errors.ChoiceError: kind must be 'neurons' or 'heads', got 'neuron'
    """


class ProvenanceError(LensBiasError):
    """A scores file is used with pairs or a model other than those it was computed on (see
    :mod:`lens_bias.attribution.provenance`); the message names both sides and the option that accepts it.

    Examples:
        >>> from lens_bias.attribution.provenance import check_scores_match
        >>> from lens_bias.scores import Scores
        >>> from lens_bias import build_pairs
        >>> ps = build_pairs(["hiring"]).sample(2)
        >>> check_scores_match(Scores(None, None, {}, {"pairs_hash": "0" * 16, "n_pairs": 9}),
        ...                    ps)  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        lens_bias.errors.ProvenanceError: the scores were computed on 9 pairs (hash 0000000000000000, ...)
            but validate was given 2 other pairs ...
    """


class NumericsError(LensBiasError):
    """Non-finite numbers appeared in logits or scores.

    Examples:
        >>> import torch
        >>> from lens_bias.model.batching import check_finite
        >>> check_finite(torch.tensor([[0.0, float("nan")]]))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_bias.errors.NumericsError: non-finite values (NaN/inf) in logits...
    """


class RunError(LensBiasError):
    """A run could not start or finish (output folder, options).

    Examples:
        >>> from lens_bias.pipeline.stages import RunConfig, run
        >>> run(RunConfig(model="tiny-random", selector="stable", steps=3),
        ...     "/tmp/lens_bias_doc_run")  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        lens_bias.errors.RunError: --steps > 1 is the iterative selector; it cannot be combined with
            --selector stable
    """


class ExportCheckError(RunError):
    """A run measured everything but its pruned model failed the export check (the materialized
    weights differ from the simulation by more than rounding allows). The run folder is written all
    the same, without ``model/``: ``metrics.json`` and ``report.html`` keep what was measured and
    say that the check failed. ``folder`` is that run folder, ``metrics`` its contents.

    Examples:
        >>> e = ExportCheckError("differs by 0.3", folder="runs/r", metrics={})
        >>> isinstance(e, RunError), e.folder
        (True, 'runs/r')
    """

    def __init__(self, message: str, folder=None, metrics: dict | None = None):
        super().__init__(message)
        self.folder = folder
        self.metrics = metrics or {}
