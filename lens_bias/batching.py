"""Tokenize prompts into right-padded batches and read the logits at each prompt's last token.

Right padding keeps every real token at its natural position and, with a causal model, real
tokens never attend to padding; so a prompt's logits do not depend on what it is batched with and
no attention mask or position-id bookkeeping is needed. Padded positions are excluded from every
statistic with :attr:`Batch.mask`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from .errors import NumericsError, PairsError


@dataclass
class Batch:
    """Right-padded token ids [batch, pos] and the true length of each row [batch].

    Examples:
        >>> import torch
        >>> b = Batch(torch.tensor([[5, 6, 7], [5, 8, 0]]), torch.tensor([3, 2]))
        >>> b.mask.tolist(), b.last.tolist()
        ([[True, True, True], [True, True, False]], [2, 1])
    """

    ids: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]

    @property
    def mask(self) -> Bool[Tensor, "batch pos"]:
        """True at real tokens, False at padding, [batch, pos]."""
        pos = torch.arange(self.ids.shape[1], device=self.ids.device)
        return pos[None, :] < self.lengths[:, None]

    @property
    def last(self) -> Int[Tensor, " batch"]:
        """Position of each row's last real token, [batch]."""
        return self.lengths - 1

    def to(self, device) -> Batch:
        """The same batch on ``device``."""
        return Batch(self.ids.to(device), self.lengths.to(device))


def context_length(bridge) -> int:
    """The longest prompt (in tokens) the model takes: ``max_position_embeddings`` of its HF config.

    Examples:
        >>> from lens_bias import load_model
        >>> context_length(load_model("tiny-random", device="cpu"))
        256
    """
    cfg = bridge.original_model.config
    return int(getattr(cfg, "max_position_embeddings", None) or bridge.cfg.n_ctx)


def token_ids(tokenizer, text: str, prepend_bos: bool = True) -> list[int]:
    """Token ids of ``text`` without the tokenizer's own special tokens, BOS first when the
    tokenizer has one and ``prepend_bos``.

    Examples:
        >>> from lens_bias.models import tiny_random_hf
        >>> _, tok = tiny_random_hf()
        >>> ids = token_ids(tok, "A Black man")
        >>> ids[0] == tok.bos_token_id, token_ids(tok, "A Black man", prepend_bos=False) == ids[1:]
        (True, True)
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if prepend_bos and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def tokenize(tokenizer, prompts: Sequence[str], prepend_bos: bool = True, max_len: int | None = None) -> list[list[int]]:
    """Token-id rows of ``prompts`` (BOS first when the tokenizer has one), unpadded; refuses empty
    prompts and prompts longer than ``max_len``."""
    if not prompts:
        return []
    rows = [list(r) for r in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]]
    if prepend_bos and tokenizer.bos_token_id is not None:
        rows = [[tokenizer.bos_token_id, *r] for r in rows]
    for r, p in zip(rows, prompts, strict=True):
        if max_len is not None and len(r) > max_len:
            raise PairsError(
                f"prompt of {len(r)} tokens is longer than the model's context ({max_len}): {p[:80]!r}...; "
                "shorten it"
            )
        if len(r) == 0:
            raise PairsError("empty prompt: every prompt needs at least one token")
    return rows


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def encode(tokenizer, prompts: Sequence[str], prepend_bos: bool = True, max_len: int | None = None,
           device=None) -> Batch:
    """Tokenize ``prompts`` (BOS first when the tokenizer has one) into a right-padded :class:`Batch`."""
    batch = pad_rows(tokenize(tokenizer, prompts, prepend_bos, max_len), pad_id(tokenizer))
    return batch.to(device) if device is not None else batch


def pad_rows(rows: Sequence[Sequence[int]], pad: int = 0) -> Batch:
    """Right-pad token-id rows into a :class:`Batch` (``ids`` [n_rows, longest row]).

    Examples:
        >>> pad_rows([[1, 2, 3], [4]], pad=0).ids.tolist()
        [[1, 2, 3], [4, 0, 0]]
    """
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    return Batch(ids, torch.tensor([len(r) for r in rows], dtype=torch.long))


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``size`` items covering ``range(n)``.

    Examples:
        >>> list(chunks(5, 2))
        [slice(0, 2, None), slice(2, 4, None), slice(4, 5, None)]
    """
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


# The fixed cost of one forward pass (Python, hooks, kernel launches), in padded tokens: on a CPU a
# token is expensive and small batches cost little; on an accelerator a pass of few tokens is
# nearly free and the launches dominate. It changes where batches are cut, never the results.
BATCH_OVERHEAD_TOKENS = {"cpu": 16}
DEFAULT_OVERHEAD_TOKENS = 2048
# The most padded tokens (rows x positions) in one batch, which bounds the memory of a pass. On a
# CPU a batch of this size already runs the matrix products at full speed, so the cap costs no
# time; it keeps the peak memory the same for a few pairs and for thousands. Elsewhere: no cap.
BATCH_MAX_TOKENS = {"cpu": 512}


def length_batches(lengths: Sequence[int], max_size: int, overhead: int | float | None = None,
                   device=None, max_tokens: int | None = -1) -> list[list[int]]:
    """Group item indices into batches of at most ``max_size`` items and at most ``max_tokens``
    padded tokens (``len(batch) * max length in it``; a longer single item still gets a batch of
    its own) that carry little padding.

    The items are sorted by length and cut into contiguous runs that minimise the total padded
    tokens plus ``overhead`` tokens per batch, by dynamic programming. ``overhead`` and
    ``max_tokens`` default to :data:`BATCH_OVERHEAD_TOKENS` and :data:`BATCH_MAX_TOKENS` for the
    device type (``max_tokens=None``: no cap). Every index appears exactly once; within a batch
    indices are in increasing length order.

    Examples:
        >>> length_batches([5, 30, 6, 29], 2)
        [[0, 2], [3, 1]]
        >>> length_batches([10, 10, 10, 10], 4, max_tokens=20)
        [[0, 1], [2, 3]]
    """
    n = len(lengths)
    if n == 0:
        return []
    if max_size < 1:
        raise ValueError(f"batch size must be at least 1, got {max_size}")
    kind = torch.device(device).type if device is not None else "cpu"
    if overhead is None:
        overhead = BATCH_OVERHEAD_TOKENS.get(kind, DEFAULT_OVERHEAD_TOKENS)
    if max_tokens == -1:
        max_tokens = BATCH_MAX_TOKENS.get(kind)
    order = sorted(range(n), key=lambda i: (lengths[i], i))
    sl = [lengths[i] for i in order]
    best = [0.0] + [float("inf")] * n  # best[i]: cost of the first i sorted items
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        width = sl[i - 1]  # the longest item of any batch ending at i
        for j in range(i - 1, max(0, i - max_size) - 1, -1):
            if max_tokens is not None and j < i - 1 and (i - j) * width > max_tokens:
                break
            c = best[j] + (i - j) * width + overhead
            if c < best[i]:
                best[i], cut[i] = c, j
    out = []
    i = n
    while i > 0:
        out.append(order[cut[i]: i])
        i = cut[i]
    return out[::-1]


def gather_last(x: Float[Tensor, "batch pos *rest"], lengths: Int[Tensor, " batch"]) -> Float[Tensor, " batch *rest"]:
    """``x[i, lengths[i] - 1]`` for every row: [batch, pos, *rest] -> [batch, *rest].

    Examples:
        >>> import torch
        >>> x = torch.arange(6.0).view(2, 3)
        >>> gather_last(x, torch.tensor([3, 1])).tolist()
        [2.0, 3.0]
    """
    return x[torch.arange(x.shape[0], device=x.device), lengths.to(x.device) - 1]


def check_finite(logits: Tensor, where: str = "logits") -> None:
    """Raise :class:`NumericsError` (with a dtype hint) if ``logits`` hold NaN or inf, so that they
    never reach a score or a metric.

    Examples:
        >>> check_finite(torch.zeros(2, 5))  # fine: returns None
        >>> check_finite(torch.tensor([[float("inf")]]), "scores")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_bias.errors.NumericsError: non-finite values (NaN/inf) in scores: 0 NaN and 1 inf of 1 values...
    """
    if torch.isfinite(logits.sum()):  # fast path: any NaN or inf makes the sum NaN or inf
        return
    if not torch.isfinite(logits).all():  # (a finite sum can still overflow; the exact check decides)
        dtype = logits.dtype
        n_nan, n_inf = int(torch.isnan(logits).sum()), int(torch.isinf(logits).sum())
        what = f"{n_nan} NaN and {n_inf} inf of {logits.numel()} values"
        if dtype in (torch.float16, torch.bfloat16):
            hint = (f" They are {dtype}, which overflows (float16 above 65504); load the model in float32 "
                    "(load_model(..., dtype=torch.float32)).")
        else:
            hint = (" If the model runs in float16 or bfloat16, it probably overflowed (float16 above 65504): "
                    "load it in float32 (load_model(..., dtype=torch.float32)); otherwise check the model "
                    "weights and the inputs.")
        raise NumericsError(f"non-finite values (NaN/inf) in {where}: {what}.{hint}")


def model_device(bridge) -> torch.device:
    """The device of the model's parameters (where batches must go).

    Examples:
        >>> from lens_bias import load_model
        >>> model_device(load_model("tiny-random", device="cpu"))
        device(type='cpu')
    """
    return next(bridge.original_model.parameters()).device
