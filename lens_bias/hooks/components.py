"""Components (MLP neurons and attention heads) and the TransformerLens hooks that carry them.

* a neuron is one unit of ``blocks.L.mlp.hook_post`` [batch pos d_mlp]: the activation that feeds
  ``mlp.down_proj``;
* a head is one slice of ``blocks.L.attn.hook_z`` [batch pos head d_head]: what feeds ``attn.o_proj``.

What to do at a hook (zero, mean, patch, collect) and attaching hooks for a block of code are in
:mod:`lens_bias.hooks.interventions`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..vocab import Kind, check_kind


def neuron_hook(layer: int) -> str:
    """The hook of layer ``layer``'s MLP neurons, activations [batch, pos, d_mlp].

    Examples:
        >>> neuron_hook(3)
        'blocks.3.mlp.hook_post'
    """
    return f"blocks.{layer}.mlp.hook_post"


def head_hook(layer: int) -> str:
    """The hook of layer ``layer``'s attention heads, outputs [batch, pos, n_heads, d_head].

    Examples:
        >>> head_hook(3)
        'blocks.3.attn.hook_z'
    """
    return f"blocks.{layer}.attn.hook_z"


def hook_name(kind: Kind, layer: int) -> str:
    """The hook of ``kind`` (``"neurons"`` or ``"heads"``) at ``layer``; raises ``ValueError`` otherwise.

    Examples:
        >>> hook_name("heads", 0)
        'blocks.0.attn.hook_z'
    """
    return neuron_hook(layer) if check_kind(kind) == "neurons" else head_hook(layer)


@dataclass(frozen=True, order=True)
class Component:
    """One neuron (``kind="neurons"``) or head (``kind="heads"``) at ``layer``, ``index``.

    Hashable and ordered (by kind, layer, index); ``str()`` is the short name used in tables.

    Examples:
        >>> c = Component("neurons", 12, 801)
        >>> str(c), str(Component("heads", 3, 5))
        ('L12N801', 'L3H5')
    """

    kind: Kind
    layer: int
    index: int

    def __str__(self) -> str:
        return f"L{self.layer}{'N' if self.kind == 'neurons' else 'H'}{self.index}"
