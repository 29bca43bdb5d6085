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


def encode(tokenizer, prompts: Sequence[str], prepend_bos: bool = True, max_len: int | None = None,
           device=None) -> Batch:
    """Tokenize ``prompts`` (BOS first when the tokenizer has one) into a right-padded :class:`Batch`
    (``ids`` [n_prompts, longest], ``lengths`` [n_prompts]); raises :class:`PairsError` for an
    empty prompt or one longer than ``max_len``.

    Examples:
        >>> from lens_bias.models import tiny_random_hf
        >>> _, tok = tiny_random_hf()
        >>> b = encode(tok, ["A Black man", "A White man applied for a loan"])
        >>> b.ids.shape[0], bool(b.lengths[0] < b.lengths[1]), int(b.ids[0, -1]) == tok.pad_token_id
        (2, True, True)
    """
    rows = [token_ids(tokenizer, p, prepend_bos) for p in prompts]
    for r, p in zip(rows, prompts, strict=True):
        if max_len is not None and len(r) > max_len:
            raise PairsError(
                f"prompt of {len(r)} tokens is longer than the model's context ({max_len}): {p[:80]!r}...; "
                "shorten it"
            )
        if len(r) == 0:
            raise PairsError("empty prompt: every prompt needs at least one token")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batch = pad_rows(rows, pad)
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
    if not torch.isfinite(logits).all():
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
