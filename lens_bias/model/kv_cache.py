"""Run a prompt once and continue it from its key-value cache, with the bridge's hooks active.

Scoring several continuations of one prompt (BBQ's three options, sampled generations) costs the
prompt's forward pass once instead of once per continuation.

**Why a module.** transformers 5.x hands the cache to each attention layer as ``cache`` (the old
``past_key_values`` is deprecated until 5.40); TransformerLens 4.3's attention bridges read only
``past_key_values`` or ``layer_past``, so without help the cache stays empty and a continuation
silently ignores its prompt. :func:`prompt_cache` and :func:`continue_from` hand the cache to the
attention bridges under the name they read, only while they run (nothing outside them changes), and
:func:`cache_is_faithful` checks, on any model, that a continuation equals the full forward pass
(``tests/test_kv_cache.py`` runs it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

from ..bridge import Bridge

_ORIGINAL = AttentionBridge._update_kv_cache


def _reads_cache(self, k: Tensor, v: Tensor, **kwargs: Any) -> tuple[Tensor, Tensor]:
    if kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None and "cache" in kwargs:
        kwargs["past_key_values"] = kwargs["cache"]
    return _ORIGINAL(self, k, v, **kwargs)


@contextmanager
def _cache_reaches_attention() -> Iterator[None]:
    AttentionBridge._update_kv_cache = _reads_cache
    try:
        yield
    finally:
        AttentionBridge._update_kv_cache = _ORIGINAL


def prompt_cache(bridge: Bridge,
                 ids: Int[Tensor, "batch pos"]) -> tuple[Float[Tensor, "batch pos vocab"], Any]:
    """The logits of ``ids`` (unpadded: rows of one length, so that the cache is exact) and the
    key-value cache to continue them from (a transformers ``Cache``; repeat its rows with
    ``cache.batch_repeat_interleave(k)`` to continue each prompt k ways)."""
    with _cache_reaches_attention():
        logits, cache = bridge(ids, return_type="logits_and_cache", use_cache=True)
    return logits, cache


def continue_from(bridge: Bridge, ids: Int[Tensor, "batch new"],
                  cache: Any) -> Float[Tensor, "batch new vocab"]:
    """The logits of ``ids`` given the prompts in ``cache`` (which grows by ``ids``). Rows may be
    right-padded: causal attention keeps padding from changing the tokens before it."""
    with _cache_reaches_attention():
        return bridge(ids, cache=cache, use_cache=True)


def cache_is_faithful(bridge: Bridge, ids: Int[Tensor, "batch pos"], split: int, atol: float = 1e-4) -> bool:
    """Whether ``ids[:, split:]`` continued from the cache of ``ids[:, :split]`` gives the full
    pass's logits (to ``atol``)."""
    with torch.inference_mode():
        full = bridge(ids)
        _, cache = prompt_cache(bridge, ids[:, :split])
        rest = continue_from(bridge, ids[:, split:], cache)
    return bool(torch.allclose(rest.float(), full[:, split:].float(), atol=atol))
