"""The registry of mitigation methods by name: :func:`methods`, :func:`check_method`, :func:`fit`.

Each method module registers its methods with :func:`lens_bias.mitigation.base.register` when it is
imported; this module imports them all.
"""

from __future__ import annotations

import time

from ..errors import ChoiceError
from . import combined, pruning, residual_methods  # noqa: F401  (they register themselves)
from .base import REGISTRY, FitContext, Intervention, Method


def methods() -> dict[str, Method]:
    """Every registered method by name, in registration order."""
    return dict(REGISTRY)


def check_method(name: str) -> Method:
    """The method ``name``, or a :class:`~lens_bias.errors.ChoiceError` listing the registered ones."""
    known = methods()
    if name not in known:
        raise ChoiceError(f"method must be one of {', '.join(known)}; got {name!r}")
    return known[name]


def fit(name: str, ctx: FitContext) -> Intervention:
    """Fit the method ``name`` on ``ctx``'s train split; ``fit_s`` is the time it took (shared pieces
    computed for it included)."""
    method = check_method(name)
    t = time.time()
    out = method.fit(ctx)
    out.fit_s = time.time() - t
    return out
