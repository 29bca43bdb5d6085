"""LEACE (least-squares concept erasure, Belrose et al. 2023) of the group from the residual stream.

Fitted with the ``concept-erasure`` package on the residual stream entering one layer, at every real
position of both prompts of the train pairs, the concept being the prompt's group (Black = 1). The
eraser is the affine map ``x - L R^T (x - mu)`` (``L``, ``R`` [d_model, 1] for a binary concept):
after it, no linear classifier does better than a constant at telling the groups apart on that
data, while the stream moves as little as possible in the least-squares sense.

It is simulated only: the map changes the stream entering one layer, while any change of the
weights that write to the stream also changes what the earlier layers read, so no weight edit of a
pre-norm transformer equals it exactly.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..bridge import Bridge
from ..errors import InterventionError
from .residual import resid_hook


def _fitter_class():
    try:
        from concept_erasure import LeaceFitter
    except ImportError:
        raise InterventionError("LEACE needs the concept-erasure package: pip install concept-erasure "
                                "(or leave leace out of --methods)") from None
    return LeaceFitter


def fit_eraser(x: Float[Tensor, "rows d_model"], z: Float[Tensor, " rows"]) -> dict[str, Tensor]:
    """The LEACE eraser of the binary concept ``z`` from ``x``: ``{"left", "right", "mean"}`` (float32)."""
    if x.shape[0] != z.shape[0] or not (z.min() == 0 and z.max() == 1):
        raise InterventionError("LEACE needs rows of both groups, one label (0 or 1) a row")
    fitter = _fitter_class()(x.shape[1], 1, dtype=torch.float64)
    fitter.update(x.double(), z.double()[:, None])
    e = fitter.eraser
    return {"left": e.proj_left.float(), "right": e.proj_right.float(), "mean": e.bias.float()}


def erase(eraser: dict[str, Tensor], x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
    """Apply a :func:`fit_eraser` eraser to ``x`` (any leading shape)."""
    left, right, mu = (eraser[k].to(x.device, x.dtype) for k in ("left", "right", "mean"))
    return x - ((x - mu) @ right.mT) @ left.mT


def leace_hooks(bridge: Bridge, layer: int, eraser: dict[str, Tensor]) -> list:
    """The eraser applied to the residual stream entering ``layer`` at every position."""
    def fn(act, hook):
        return erase(eraser, act)
    return [(resid_hook(bridge, layer), fn)]
