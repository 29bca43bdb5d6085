"""lens_bias: find, remove and verify the components that drive Black/White bias in language models.

The flow, one verb a stage (each importable from here):

    bridge = load_model("smollm2-135m")            # model:       a TransformerLens bridge
    pairs = build_pairs()                           # prompts:     contrastive Black/White pairs
    measure(bridge, pairs)                          # measures:    JS and logit gap per pair
    scores = attribute(bridge, pairs)               # attribution: every neuron's and head's score
    validate(bridge, pairs, scores)                 #              against exact ablation
    mask = select(scores, "0.5%", bridge=bridge)    # selection:   the units to prune
    with ablate(bridge, mask): ...                  # hooks:       the pruning, simulated
    model = materialize(bridge, mask)               # weights:     the pruning, in the weights
    export_hf(bridge, mask, "pruned/")              #              as a Hugging Face folder
    run(RunConfig(), "runs/r1")                     # pipeline:    all of it, with a report

The stages are subpackages, in this order: prompts, model, hooks, measures, attribution,
selection, weights, studies, report, pipeline, cli.
"""

from . import _moved
from .errors import LensBiasError, MaskError, ModelLoadError, NumericsError, PairsError, RunError
from .masks import PruningMask
from .measures.capability import crows_rate, perplexity
from .measures.metrics import js_divergence, logit_gap, measure
from .model.batching import token_report
from .model.load import load_hf, load_model, wrap
from .model.zoo import DEFAULT_MODEL, ZOO
from .prompts.corpora import load_crows_pairs
from .prompts.pairs import ContrastivePair, PairSet, build_pairs, load_jsonl
from .scores import Scores

__version__ = "0.1.0"

_moved.install()  # 0.1's module paths (lens_bias.pairs, ...) still import, with a warning

# the later stages' verbs load on first use, so `import lens_bias` stays as light as the first stages
_LAZY = {
    "attribute": "attribution.patching", "validate": "attribution.validation", "select": "selection.topk",
    "ablate": "hooks.ablation", "materialize": "weights.materialize", "export_hf": "weights.export",
    "run": "pipeline.stages", "RunConfig": "pipeline.stages",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "PruningMask",
    "RunConfig",
    "RunError",
    "Scores",
    "ablate",
    "attribute",
    "build_pairs",
    "crows_rate",
    "export_hf",
    "js_divergence",
    "load_crows_pairs",
    "load_hf",
    "load_jsonl",
    "load_model",
    "logit_gap",
    "materialize",
    "measure",
    "perplexity",
    "run",
    "select",
    "token_report",
    "validate",
    "wrap",
]
