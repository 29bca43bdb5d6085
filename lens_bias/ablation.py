"""Simulate pruning with TransformerLens hooks.

``with ablate(bridge, mask, mode="zero"|"mean"): ...`` replaces every pruned neuron's activation
(``blocks.L.mlp.hook_post``) and every pruned head's output (``blocks.L.attn.hook_z``) by zero or
by its mean over neutral text, at every position. The hooks are removed on exit, also when the
block raises. Zero ablation is exactly what :mod:`lens_bias.materialize` writes into the weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from .components import attached, head_hook, neuron_hook
from .errors import MaskError
from .masks import PruningMask

MODES = ("zero", "mean")


def _neuron_fn(keep: Bool[Tensor, " d_mlp"], ref: Float[Tensor, " d_mlp"] | None):
    def fn(act, hook):
        k = keep.to(act.device)
        if ref is None:
            return act * k.to(act.dtype)
        return torch.where(k, act, ref.to(act.device, act.dtype))
    return fn


def _head_fn(keep: Bool[Tensor, " n_heads"], ref: Float[Tensor, "n_heads d_head"] | None):
    def fn(z, hook):
        k = keep.to(z.device)[:, None]
        if ref is None:
            return z * k.to(z.dtype)
        return torch.where(k, z, ref.to(z.device, z.dtype))
    return fn


def ablation_hooks(bridge, mask: PruningMask, mode: str = "zero", means: dict | None = None) -> list:
    """The ``(hook name, function)`` list that removes ``mask``'s pruned units: one hook per layer
    that has pruned neurons (on ``blocks.L.mlp.hook_post`` [batch, pos, d_mlp]) or pruned heads
    (on ``blocks.L.attn.hook_z`` [batch, pos, n_heads, d_head]). ``mode="mean"`` needs ``means``
    from :func:`lens_bias.capture.mean_activations` (``neurons`` [n_layers, d_mlp], ``heads``
    [n_layers, n_heads, d_head]). Use :func:`ablate` unless you attach hooks yourself.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.masks import PruningMask
        >>> b = load_model("tiny-random", device="cpu")
        >>> m = PruningMask.keep_all(b); m.neurons[1, 7] = False; m.heads[0, 2] = False
        >>> [name for name, _ in ablation_hooks(b, m)]
        ['blocks.0.attn.hook_z', 'blocks.1.mlp.hook_post']
    """
    if mode not in MODES:
        raise MaskError(f"ablation mode must be one of {MODES}, got {mode!r}")
    if mode == "mean" and means is None:
        raise MaskError("mean ablation needs means=mean_activations(bridge, texts) (see lens_bias.capture)")
    mask.check(bridge)
    hooks = []
    for layer in range(bridge.cfg.n_layers):
        kn = mask.neurons[layer]
        if not kn.all():
            ref = None if mode == "zero" else means["neurons"][layer]
            hooks.append((neuron_hook(layer), _neuron_fn(kn, ref)))
        kh = mask.heads[layer]
        if not kh.all():
            ref = None if mode == "zero" else means["heads"][layer]
            hooks.append((head_hook(layer), _head_fn(kh, ref)))
    return hooks


@contextmanager
def ablate(bridge, mask: PruningMask, mode: str = "zero", means: dict | None = None) -> Iterator[None]:
    """Context manager: inside it, ``bridge`` runs as if ``mask``'s units were pruned.

    ``mode="zero"`` sets the pruned activations to 0 (what :mod:`lens_bias.materialize` writes into
    the weights); ``mode="mean"`` to their mean on neutral text (``means`` from
    :func:`lens_bias.capture.mean_activations`). Exactly these hooks are removed on exit.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.masks import PruningMask
        >>> b = load_model("tiny-random")
        >>> m = PruningMask.keep_all(b); m.neurons[0, :5] = False
        >>> with ablate(b, m):
        ...     _ = b(torch.tensor([[1, 2, 3]]))
    """
    with attached(bridge, ablation_hooks(bridge, mask, mode, means)):
        yield
