"""The public face: the flow's verbs import from ``lens_bias``; 0.1's module paths still work,
with a DeprecationWarning that names the new place."""

import importlib
import sys
import warnings

import pytest

import lens_bias
from lens_bias import _moved


def test_every_public_name_resolves_and_is_documented():
    for name in lens_bias.__all__:
        obj = getattr(lens_bias, name)
        if callable(obj):
            assert (obj.__doc__ or "").strip(), f"lens_bias.{name} has no docstring"
    assert set(lens_bias._LAZY) <= set(lens_bias.__all__) <= set(dir(lens_bias))


def test_the_flow_verbs_are_the_stage_functions():
    from lens_bias.attribution.patching import attribute
    from lens_bias.hooks.ablation import ablate
    from lens_bias.pipeline.stages import RunConfig, run
    from lens_bias.selection.topk import select

    assert (lens_bias.attribute, lens_bias.ablate, lens_bias.select) == (attribute, ablate, select)
    assert lens_bias.run is run and lens_bias.RunConfig is RunConfig
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        lens_bias.nonsense  # noqa: B018


@pytest.mark.parametrize("old", sorted(set(_moved.MOVED) - set(_moved.PACKAGES)))
def test_old_module_paths_import_the_new_module_with_a_warning(old):
    new = importlib.import_module(f"lens_bias.{_moved.MOVED[old]}")
    sys.modules.pop(f"lens_bias.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"lens_bias.{old} moved to lens_bias.{_moved.MOVED[old]}"):
        mod = importlib.import_module(f"lens_bias.{old}")
    assert mod is new


def test_old_names_of_a_package_resolve_with_a_warning():
    from lens_bias.attribution import patching
    from lens_bias.pipeline import stages

    for pkg, name in (("attribution", "capability_cost"), ("pipeline", "run")):
        package = importlib.import_module(f"lens_bias.{pkg}")
        package.__dict__.pop(name, None)  # a fresh look-up, as in a new process
        with pytest.warns(DeprecationWarning, match=f"lens_bias.{pkg}.{name} moved"):
            value = getattr(package, name)
        assert value is {"attribution": patching, "pipeline": stages}[pkg].__dict__[name]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert getattr(package, name) is value  # warned once: cached on the package
    from lens_bias import pipeline

    assert callable(pipeline.run)  # the old function, not a module of the same name
    with pytest.raises(AttributeError):
        pipeline.no_such_name  # noqa: B018


def test_every_moved_module_exists():
    for old, new in _moved.MOVED.items():
        assert importlib.util.find_spec(f"lens_bias.{new}") is not None, (old, new)
