"""How many padded tokens one batch of a backward pass may hold on the model's device.

On a GPU the budget comes from the memory the card has free when a pass starts
(``torch.cuda.mem_get_info`` plus what torch's own allocator holds unused), less a safety margin of
:data:`MEMORY_MARGIN` of the card, divided by what one token keeps for the backward pass
(:func:`backward_bytes_per_token`). So a large card runs large batches, a full one small batches, and
the peak stays the same for 64 pairs and for thousands (the batches are cut by tokens, not by the
number of pairs). On a CPU the fixed cap of :data:`lens_bias.model.batching.BATCH_MAX_TOKENS` applies
(a batch of that size already runs the matrix products at full speed). Accelerators without a
free-memory query (Apple's MPS) get :data:`WEIGHTS_SHARE` of the weights' bytes.

:func:`max_batch_tokens` (``lens-bias run --max-batch-tokens N``) replaces the budget on every
device: fewer tokens for a card that other work shares, a fixed number for batches that do not
depend on what else is in memory (on a GPU the budget, and so the batches and their rounding, follow
the free memory).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..bridge import Bridge, model_device, model_dtype, n_params
from ..errors import LensBiasError

MEMORY_MARGIN = 0.10  # share of the card's total memory that a batch never plans to use
MIN_TOKENS = 64  # the smallest budget (a long prompt pair still gets a batch of its own)
WEIGHTS_SHARE = 0.15  # accelerators without a free-memory query: this share of the weights' bytes
# One token's activations kept for the backward pass, over the count of the formula below, as measured
# on a Llama-3-8B shape in bf16 (about 9 MB a token; the formula gives 7): the attention's own buffers,
# the autograd graph's copies.
OVERHEAD = 1.3

CPU_BATCH_PAIRS = 16  # a CPU's batch (its token cap binds near there anyway)
ACCELERATOR_BATCH_PAIRS = 128  # a GPU's: the token budget, not the count, bounds a backward batch

_limit: list[int | None] = [None]


def default_batch_pairs(bridge: Bridge) -> int:
    """Pairs one batch holds at most when the user names no ``batch_size``: :data:`CPU_BATCH_PAIRS` on a
    CPU, :data:`ACCELERATOR_BATCH_PAIRS` elsewhere (forward passes keep the last position's logits
    only; backward batches are cut further by :func:`token_budget`).

    Examples:
        >>> from lens_bias import load_model
        >>> default_batch_pairs(load_model("tiny-random", device="cpu"))
        16
    """
    return CPU_BATCH_PAIRS if model_device(bridge).type == "cpu" else ACCELERATOR_BATCH_PAIRS


def backward_bytes_per_token(bridge: Bridge) -> int:
    """Bytes one padded token keeps for a backward pass: about ``n_layers x (4 d_mlp + 8 d_model)``
    activations in the model's dtype, and its logits (in the model's dtype, then float32 for the
    log-softmax and its gradient), times :data:`OVERHEAD`.

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> backward_bytes_per_token(b) > b.cfg.d_vocab * 4
        True
    """
    cfg, elem = bridge.cfg, model_dtype(bridge).itemsize
    acts = cfg.n_layers * (4 * (cfg.d_mlp or 4 * cfg.d_model) + 8 * cfg.d_model) * elem
    logits = cfg.d_vocab * (elem + 2 * 4)
    return int(OVERHEAD * (acts + logits))


def free_bytes(device: torch.device) -> int | None:
    """Bytes a new batch can take on ``device``: the card's free memory plus what torch's allocator
    holds unused; ``None`` where there is no such query (CPU, MPS)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def card_bytes(device: torch.device) -> int:
    """The total memory of the GPU ``device``."""
    return int(torch.cuda.get_device_properties(device).total_memory)


def token_budget(bridge: Bridge, bytes_per_token: int | None = None) -> int | None:
    """The most padded tokens in one backward batch on the bridge's (first) device (see the module
    docstring): the user's :func:`max_batch_tokens` when set, ``None`` on a CPU (its fixed cap applies),
    else what the free memory less the margin holds, at least :data:`MIN_TOKENS`.

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> token_budget(b) is None
        True
        >>> with max_batch_tokens(256):
        ...     token_budget(b)
        256
    """
    if _limit[0] is not None:
        return _limit[0]
    device = model_device(bridge)
    if device.type == "cpu":
        return None
    per_token = bytes_per_token or backward_bytes_per_token(bridge)
    free = free_bytes(device)
    if free is None:
        room = WEIGHTS_SHARE * n_params(bridge) * model_dtype(bridge).itemsize
    else:
        room = free - MEMORY_MARGIN * card_bytes(device)
    return max(MIN_TOKENS, int(room // per_token))


@contextmanager
def max_batch_tokens(n: int | None) -> Iterator[None]:
    """Within the block, every backward batch holds at most ``n`` padded tokens on any device
    (``None``: the budget of :func:`token_budget`)."""
    if n is not None and (not isinstance(n, int) or n < 1):
        raise LensBiasError(f"max_batch_tokens must be a positive number of tokens, got {n!r}")
    old, _limit[0] = _limit[0], n
    try:
        yield
    finally:
        _limit[0] = old
