"""Module paths from before the stages became subpackages (0.1: ``lens_bias.attribution``,
``lens_bias.pairs``, ...) keep working for a while, with a :class:`DeprecationWarning` that names
the new path. Nothing in lens_bias imports through here; :func:`install` runs once, from
``lens_bias/__init__.py``."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

#: old module (under lens_bias) -> its new place
MOVED = {
    "pairs": "prompts.pairs", "sentences": "prompts.sentences", "usecase": "prompts.custom",
    "splits": "prompts.splits", "corpora": "prompts.corpora", "layout": "model.layout", "zoo": "model.zoo",
    "devices": "model.devices", "chat": "model.chat", "models": "model.load", "batching": "model.batching",
    "components": "hooks.components", "interventions": "hooks.interventions", "capture": "hooks.capture",
    "ablation": "hooks.ablation", "metrics": "measures.metrics", "capability": "measures.capability",
    "targets": "measures.targets", "changes": "measures.changes", "evaluation": "measures.evaluation",
    "attribution": "attribution.patching", "baselines": "attribution.scorers",
    "validation": "attribution.validation", "provenance": "attribution.provenance",
    "selection": "selection.topk", "stability": "selection.stability", "learned": "selection.learned",
    "model_selection": "selection.auto", "pruning": "selection.from_scores",
    "materialize": "weights.materialize", "folding": "weights.folding",
    "optimal_ablation": "weights.optimal_ablation", "verification": "weights.verification",
    "export": "weights.export", "interop": "weights.interop", "model_card": "weights.model_card",
    "hub": "weights.hub", "curve": "studies.curve", "generalize": "studies.generalize",
    "transfer": "studies.transfer", "selector_study": "studies.selectors", "viz": "report.figures",
    "report": "report.html", "pipeline": "pipeline.stages", "run_record": "pipeline.record",
    "cli": "cli.main", "cli_common": "cli.common", "cli_experiment": "cli.experiment",
    "cli_pairs": "cli.pairs", "cli_prune": "cli.prune",
}
#: old modules whose name is now a stage's package: their names resolve through the package
PACKAGES = {old: new for old, new in MOVED.items() if new.split(".")[0] == old}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; import it from there (the old path will be removed)",
                  DeprecationWarning, stacklevel=3)


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``lens_bias.<old>`` as the module that now lives at ``lens_bias.<new>``."""

    def find_spec(self, fullname, path=None, target=None):
        old = fullname.removeprefix("lens_bias.")
        if fullname.startswith("lens_bias.") and old in MOVED and old not in PACKAGES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        new = "lens_bias." + MOVED[spec.name.removeprefix("lens_bias.")]
        _warn(spec.name, new)
        return importlib.import_module(new)

    def exec_module(self, module):
        pass


def forward(package: str):
    """A module ``__getattr__`` for a stage package whose name an old module had: an old name
    (``lens_bias.attribution.attribute``) resolves in the module that now holds it, with a warning."""
    old = package.removeprefix("lens_bias.")
    new = "lens_bias." + MOVED[old]

    def __getattr__(name: str):
        if not name.startswith("_"):
            module = importlib.import_module(new)
            if hasattr(module, name):
                _warn(f"{package}.{name}", f"{new}.{name}")
                value = getattr(module, name)
                setattr(sys.modules[package], name, value)  # warn once; later look-ups find it directly
                return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def install() -> None:
    if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
        sys.meta_path.append(_OldPaths())
