"""What to do to a component's activation, as small TransformerLens hook builders.

Each builder returns a hook function ``fn(activation, hook)`` for one kind of unit; *where* it acts
is the hook name of that kind and layer (:func:`lens_bias.hooks.components.hook_name`):

* :func:`zero`: set the units a keep-mask drops to 0 (what pruning does);
* :func:`mean`: set them to a reference activation (their mean on neutral text);
* :func:`patch`: put a source run's activation of one unit into the other run of a pair batch;
* :func:`collect`: store the activation (for gradients and statistics).

:func:`attached` attaches a list of ``(hook name, fn)`` for the duration of a block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from ..bridge import Bridge
from ..vocab import Kind, check_kind

HookFn = Callable[..., Tensor | None]


def _keep_on(kind: Kind, keep: Tensor, act: Tensor) -> Tensor:
    """``keep`` on ``act``'s device, broadcastable over ``act``'s unit axis (a head's d_head too)."""
    k = keep.to(act.device)
    return k[:, None] if check_kind(kind) == "heads" else k


def zero(kind: Kind, keep: Bool[Tensor, " units"]) -> HookFn:
    """Multiply the activation by ``keep`` (True = keep): the dropped units become 0.

    Examples:
        >>> import torch
        >>> fn = zero("neurons", torch.tensor([True, False, True]))
        >>> fn(torch.ones(1, 2, 3), None)[0, 0].tolist()
        [1.0, 0.0, 1.0]
    """
    def fn(act, hook):
        return act * _keep_on(kind, keep, act).to(act.dtype)
    return fn


def mean(kind: Kind, keep: Bool[Tensor, " units"], ref: Float[Tensor, "units ..."]) -> HookFn:
    """Replace the dropped units by ``ref`` (``[d_mlp]`` for neurons, ``[n_heads, d_head]`` for heads).

    Examples:
        >>> import torch
        >>> fn = mean("heads", torch.tensor([False, True]), torch.full((2, 1), 5.0))
        >>> fn(torch.ones(1, 1, 2, 1), None).flatten().tolist()
        [5.0, 1.0]
    """
    def fn(act, hook):
        return torch.where(_keep_on(kind, keep, act), act, ref.to(act.device, act.dtype))
    return fn


def patch(index: int, where: Bool[Tensor, "n pos"], src: Int[Tensor, "n pos"]) -> HookFn:
    """For a batch of ``n`` pairs (rows ``:n`` one run, rows ``n:`` the other): unit ``index`` of
    the first run takes, at each position where ``where`` is True, the second run's activation at
    position ``src`` (see :func:`lens_bias.attribution.patching.aligned_suffix`).

    Examples:
        >>> import torch
        >>> fn = patch(1, torch.tensor([[False, True]]), torch.tensor([[0, 0]]))
        >>> act = torch.arange(8.0).view(2, 2, 2)  # 2 rows, 2 positions, 2 neurons
        >>> fn(act, None)[0].tolist()
        [[0.0, 1.0], [2.0, 5.0]]
    """
    n = where.shape[0]

    def fn(act, hook):
        a = act.clone()
        idx = src.view(n, -1, *([1] * (a.ndim - 2))).expand_as(a[:n])
        a_w = torch.gather(act[n:], 1, idx)
        sel = (slice(None), slice(None), index)
        pm = where if a.ndim == 3 else where[..., None]
        a[:n][sel] = torch.where(pm, a_w[sel], a[:n][sel])
        return a
    return fn


def collect(store: dict, kind: Kind, layer: int) -> HookFn:
    """Store the activation as ``store[(kind, layer)]`` (the tensor itself: gradients flow to it).

    Examples:
        >>> import torch
        >>> store = {}
        >>> _ = collect(store, "heads", 2)(torch.zeros(1), None)
        >>> list(store)
        [('heads', 2)]
    """
    key = (check_kind(kind), layer)

    def fn(act, hook):
        store[key] = act
        return act
    return fn


@contextmanager
def attached(bridge: Bridge, hooks: Sequence[tuple[str, Callable]]) -> Iterator[None]:
    """Attach forward hooks for the duration of the block; exactly these are removed on exit,
    also when the block raises. Hooks attached by others (before or inside the block) stay.

    ``hooks`` is a list of ``(hook name, fn)``; ``fn(activation, hook)`` may return a replacement
    activation of the same shape (or ``None`` to leave it). The work is TransformerLens's own
    context (``bridge.hooks``), which removes only the handles it added.

    Examples:
        >>> import torch
        >>> from lens_bias import load_model
        >>> from lens_bias.hooks.components import neuron_hook
        >>> b = load_model("tiny-random", device="cpu")
        >>> seen = []
        >>> with attached(b, [(neuron_hook(0), lambda act, hook: seen.append(tuple(act.shape)))]):
        ...     _ = b(torch.tensor([[1, 2, 3]]))
        >>> seen
        [(1, 3, 128)]
    """
    if not hooks:  # nothing to attach: skip TransformerLens's hook-dict rebuild
        yield
        return
    with bridge.hooks(fwd_hooks=list(hooks)):
        yield
