"""lens_bias: find, remove and verify the components that drive Black/White bias in language models."""

from .batching import token_report
from .capability import crows_rate, perplexity
from .corpora import load_crows_pairs
from .errors import LensBiasError, MaskError, ModelLoadError, NumericsError, PairsError, RunError
from .metrics import js_divergence, logit_gap, measure
from .models import load_hf, load_model, wrap
from .pairs import ContrastivePair, PairSet, build_pairs, load_jsonl
from .zoo import DEFAULT_MODEL, ZOO

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "ZOO",
    "ContrastivePair",
    "LensBiasError",
    "MaskError",
    "ModelLoadError",
    "NumericsError",
    "PairSet",
    "PairsError",
    "RunError",
    "build_pairs",
    "crows_rate",
    "js_divergence",
    "load_crows_pairs",
    "load_hf",
    "load_jsonl",
    "load_model",
    "logit_gap",
    "measure",
    "perplexity",
    "token_report",
    "wrap",
]
