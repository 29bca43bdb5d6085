"""Simulate pruning with TransformerLens hooks.

``with ablate(bridge, mask, ablation="zero"|"mean"): ...`` replaces every pruned neuron's activation
(``blocks.L.mlp.hook_post``) and every pruned head's output (``blocks.L.attn.hook_z``) by zero or
by its mean over neutral text, at every position. The hooks are removed on exit, also when the
block raises. Zero ablation is exactly what :mod:`lens_bias.weights.materialize` writes into the
weights. The hook functions are :func:`lens_bias.hooks.interventions.zero` and
:func:`lens_bias.hooks.interventions.mean`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from ..bridge import Bridge
from ..errors import MaskError
from ..masks import PruningMask
from ..vocab import KINDS, check_ablation, renamed
from . import interventions
from .components import hook_name
from .interventions import attached


def ablation_hooks(bridge: Bridge, mask: PruningMask, ablation: str | None = None,
                   means: dict | None = None, *, mode: str | None = None) -> list:
    """The ``(hook name, function)`` list that removes ``mask``'s pruned units: one hook per layer
    that has pruned neurons (on ``blocks.L.mlp.hook_post`` [batch, pos, d_mlp]) or pruned heads
    (on ``blocks.L.attn.hook_z`` [batch, pos, n_heads, d_head]). ``ablation="mean"`` needs ``means``
    from :func:`lens_bias.hooks.capture.mean_activations` (``neurons`` [n_layers, d_mlp], ``heads``
    [n_layers, n_heads, d_head]). Use :func:`ablate` unless you attach hooks yourself.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.masks import PruningMask
        >>> b = load_model("tiny-random", device="cpu")
        >>> m = PruningMask.keep_all(b); m.neurons[1, 7] = False; m.heads[0, 2] = False
        >>> [name for name, _ in ablation_hooks(b, m)]
        ['blocks.0.attn.hook_z', 'blocks.1.mlp.hook_post']
    """
    ablation = check_ablation(renamed(ablation, mode, "ablation", "mode", "zero"))
    if ablation == "mean" and means is None:
        raise MaskError("mean ablation needs means=mean_activations(bridge, texts) "
                        "(see lens_bias.hooks.capture)")
    mask.check(bridge)
    hooks = []
    for layer in range(bridge.cfg.n_layers):
        for kind in KINDS:
            keep = mask.tensor(kind)[layer]
            if keep.all():
                continue
            fn = interventions.zero(kind, keep) if ablation == "zero" else \
                interventions.mean(kind, keep, means[kind][layer])
            hooks.append((hook_name(kind, layer), fn))
    return hooks


@contextmanager
def ablate(bridge: Bridge, mask: PruningMask, ablation: str | None = None, means: dict | None = None, *,
           mode: str | None = None) -> Iterator[None]:
    """Context manager: inside it, ``bridge`` runs as if ``mask``'s units were pruned.

    ``ablation="zero"`` (the default) sets the pruned activations to 0 (what
    :mod:`lens_bias.weights.materialize` writes into the weights); ``ablation="mean"`` to their
    mean on neutral text (``means`` from :func:`lens_bias.hooks.capture.mean_activations`).
    Exactly these hooks are removed on exit. (``mode=`` is the old name of ``ablation=``.)

    Examples:
        >>> import torch
        >>> from lens_bias import load_model
        >>> from lens_bias.masks import PruningMask
        >>> b = load_model("tiny-random")
        >>> m = PruningMask.keep_all(b); m.neurons[0, :5] = False
        >>> with ablate(b, m):
        ...     _ = b(torch.tensor([[1, 2, 3]]))
    """
    ablation = renamed(ablation, mode, "ablation", "mode", "zero")
    with attached(bridge, ablation_hooks(bridge, mask, ablation, means)):
        yield
