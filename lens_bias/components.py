"""Components (MLP neurons and attention heads), their hook names, and a hook context manager.

* a neuron is one unit of ``blocks.L.mlp.hook_post`` [batch pos d_mlp]: the activation that feeds
  ``mlp.down_proj``;
* a head is one slice of ``blocks.L.attn.hook_z`` [batch pos head d_head]: what feeds ``attn.o_proj``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

KINDS = ("neurons", "heads")


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


def hook_name(kind: str, layer: int) -> str:
    """The hook of ``kind`` (``"neurons"`` or ``"heads"``) at ``layer``; raises ``ValueError`` otherwise.

    Examples:
        >>> hook_name("heads", 0)
        'blocks.0.attn.hook_z'
    """
    if kind == "neurons":
        return neuron_hook(layer)
    if kind == "heads":
        return head_hook(layer)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


@dataclass(frozen=True, order=True)
class Component:
    """One neuron (``kind="neurons"``) or head (``kind="heads"``) at ``layer``, ``index``.

    Hashable and ordered (by kind, layer, index); ``str()`` is the short name used in tables.

    Examples:
        >>> c = Component("neurons", 12, 801)
        >>> str(c), str(Component("heads", 3, 5))
        ('L12N801', 'L3H5')
    """

    kind: str
    layer: int
    index: int

    def __str__(self) -> str:
        return f"L{self.layer}{'N' if self.kind == 'neurons' else 'H'}{self.index}"


def shape_of(bridge, kind: str) -> tuple[int, int]:
    """The shape of one score or mask tensor: [n_layers, d_mlp] for neurons, [n_layers, n_heads] for heads.

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> shape_of(b, "neurons"), shape_of(b, "heads")
        ((2, 128), (2, 4))
    """
    cfg = bridge.cfg
    return (cfg.n_layers, cfg.d_mlp) if kind == "neurons" else (cfg.n_layers, cfg.n_heads)


def params_per_unit(bridge, kind: str) -> int:
    """Parameters removed with one unit: a gated-MLP neuron has 3 * d_model (its gate and up rows and
    its down column; lens_bias supports gated MLPs only), a head d_model * d_head in o_proj plus its
    q_proj rows (k/v are shared in GQA and stay).

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")  # d_model 64, d_head 16
        >>> params_per_unit(b, "neurons"), params_per_unit(b, "heads")
        (192, 2048)
    """
    cfg = bridge.cfg
    if kind == "neurons":
        return 3 * cfg.d_model
    return 2 * cfg.d_model * cfg.d_head


@contextmanager
def attached(bridge, hooks: Sequence[tuple[str, Callable]]) -> Iterator[None]:
    """Attach forward hooks for the duration of the block; exactly these are removed on exit,
    also when the block raises.

    ``hooks`` is a list of ``(hook name, fn)``; ``fn(activation, hook)`` may return a replacement
    activation of the same shape (or ``None`` to leave it).

    Examples:
        >>> import torch
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> seen = []
        >>> with attached(b, [(neuron_hook(0), lambda act, hook: seen.append(tuple(act.shape)))]):
        ...     _ = b(torch.tensor([[1, 2, 3]]))
        >>> seen
        [(1, 3, 128)]
    """
    handles = []
    points = bridge.hook_dict if hooks else {}  # TransformerBridge rebuilds this dict on every access
    try:
        for name, fn in hooks:
            hp = points[name]
            handles.append((hp, hp.add_hook(fn)))
        yield
    finally:
        for hp, h in handles:
            h.hook.remove()
            if h in hp.fwd_hooks:
                hp.fwd_hooks.remove(h)
