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
    return f"blocks.{layer}.mlp.hook_post"


def head_hook(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def hook_name(kind: str, layer: int) -> str:
    if kind == "neurons":
        return neuron_hook(layer)
    if kind == "heads":
        return head_hook(layer)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


@dataclass(frozen=True, order=True)
class Component:
    """One neuron (``kind="neurons"``) or head (``kind="heads"``) at ``layer``, ``index``."""

    kind: str
    layer: int
    index: int

    def __str__(self) -> str:
        return f"L{self.layer}{'N' if self.kind == 'neurons' else 'H'}{self.index}"


def shape_of(bridge, kind: str) -> tuple[int, int]:
    """[n_layers, d_mlp] for neurons, [n_layers, n_heads] for heads."""
    cfg = bridge.cfg
    return (cfg.n_layers, cfg.d_mlp) if kind == "neurons" else (cfg.n_layers, cfg.n_heads)


def params_per_unit(bridge, kind: str) -> int:
    """Parameters removed with one unit: a gated-MLP neuron has 3 * d_model (its gate and up rows and
    its down column; lens_bias supports gated MLPs only), a head d_model * d_head in o_proj plus its
    q_proj rows (k/v are shared in GQA and stay)."""
    cfg = bridge.cfg
    if kind == "neurons":
        return 3 * cfg.d_model
    return 2 * cfg.d_model * cfg.d_head


@contextmanager
def attached(bridge, hooks: Sequence[tuple[str, Callable]]) -> Iterator[None]:
    """Attach forward hooks for the duration of the block; exactly these are removed on exit,
    also when the block raises."""
    handles = []
    try:
        for name, fn in hooks:
            hp = bridge.hook_dict[name]
            handles.append((hp, hp.add_hook(fn)))
        yield
    finally:
        for hp, h in handles:
            h.hook.remove()
            if h in hp.fwd_hooks:
                hp.fwd_hooks.remove(h)
