"""Error types. Every failure a user can cause raises a subclass of :class:`LensBiasError`
whose message names the problem and the fix."""


class LensBiasError(Exception):
    """Base class of all errors lens_bias raises on bad input."""


class ModelLoadError(LensBiasError):
    """A model could not be found, installed, verified or wrapped."""


class PairsError(LensBiasError):
    """A pairs file or pair definition is malformed."""


class MaskError(LensBiasError):
    """A pruning mask is malformed or does not fit the model."""


class NumericsError(LensBiasError):
    """Non-finite numbers appeared in logits or scores."""


class RunError(LensBiasError):
    """A run could not start or finish (output folder, options)."""
