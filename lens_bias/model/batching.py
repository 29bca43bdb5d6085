"""Tokenize once; run pairs in length-bucketed batches; read the logits at each prompt's last token.

Every stage that runs the model on contrastive pairs (:func:`lens_bias.measures.metrics.measure`,
attribution, the activation scan of :mod:`lens_bias.hooks.capture`) goes through this module: the
pairs are tokenized once (:func:`tokenize_pairs`), their indices are cut into batches of similar
length (:meth:`PairTokens.batches`, :meth:`PairTokens.sorted_chunks`), each batch is padded from
the ids already computed (:meth:`PairTokens.batch`), and :func:`last_logits` runs the model with
the unembedding only at each row's last real token.

Right padding keeps every real token at its natural position and, with a causal model, real tokens never
attend to padding; so a prompt's logits do not depend on what it is batched with and no attention mask or
position-id bookkeeping is needed. Padded positions are excluded from every statistic with :attr:`Batch.mask`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ..bridge import Bridge, context_length, model_device, tokenizer_of
from ..errors import NumericsError, PairsError
from ..prompts.pairs import ContrastivePair
from .chat import chat_enabled, chat_rows


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


def tokenize(tokenizer, prompts: Sequence[str], prepend_bos: bool = True, max_len: int | None = None,
             chat: bool = False) -> list[list[int]]:
    """Token-id rows of ``prompts`` (BOS first when the tokenizer has one), unpadded; refuses empty
    prompts and prompts longer than ``max_len``. ``chat``: each prompt as one user turn of the
    chat template (:func:`lens_bias.model.chat.chat_rows`, exactly one BOS first)."""
    if not prompts:
        return []
    rows = (chat_rows(tokenizer, prompts) if chat else
            [list(r) for r in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]])
    if prepend_bos and not chat and tokenizer.bos_token_id is not None:
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
           device=None, chat: bool = False) -> Batch:
    """Tokenize ``prompts`` (BOS first when the tokenizer has one; ``chat``: through the chat
    template, see :func:`tokenize`) into a right-padded :class:`Batch`."""
    batch = pad_rows(tokenize(tokenizer, prompts, prepend_bos, max_len, chat), pad_id(tokenizer))
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


def length_order(lengths: Sequence[int]) -> list[int]:
    """Item indices sorted by length, ties by index: the order of every length-bucketed batch.

    Examples:
        >>> length_order([5, 3, 5, 1])
        [3, 1, 0, 2]
    """
    return sorted(range(len(lengths)), key=lambda i: (lengths[i], i))


def length_batches(lengths: Sequence[int], max_size: int, overhead: int | float | None = None,
                   device=None, max_tokens: int | None = -1) -> list[list[int]]:
    """Group item indices into batches of at most ``max_size`` items and at most ``max_tokens``
    padded tokens (``len(batch) * max length in it``; a longer single item still gets a batch of
    its own) that carry little padding.

    The items are sorted by length and cut into contiguous runs that minimise the total padded tokens plus
    ``overhead`` tokens per batch, by dynamic programming. ``overhead`` and ``max_tokens`` default to
    :data:`BATCH_OVERHEAD_TOKENS` and :data:`BATCH_MAX_TOKENS` for the device type (``max_tokens=None``: no
    cap). Every index appears exactly once; within a batch indices are in increasing length order.

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
    order = length_order(lengths)
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


def pair_batches(widths: Sequence[int], batch_size: int, device,
                 max_tokens: int | None = -1) -> list[list[int]]:
    """Pair indices in length-sorted batches (:func:`length_batches`) for a pair scan: ``widths[i]``
    is the longer prompt of pair ``i``, and a pair is two rows, so the token cap (``-1``: the
    device's :data:`BATCH_MAX_TOKENS`; ``None``: no cap) counts both.

    The cap makes the peak memory of a pass (autograd keeps about 2 MiB per padded token for
    SmolLM2) the same for a few pairs and for thousands: without it, 64 mixed-length pairs never
    build a batch as large as 1024 pairs do.

    Examples:
        >>> pair_batches([5, 30, 6, 29], 2, "cpu")
        [[0, 2], [3, 1]]
    """
    cap = BATCH_MAX_TOKENS.get(torch.device(device).type) if max_tokens == -1 else max_tokens
    return length_batches(widths, batch_size, device=device,
                          max_tokens=None if cap is None else max(1, cap // 2))


# ---------------------------------------------------------------- pairs, tokenized once


@dataclass(frozen=True)
class PairTokens:
    """The token ids of every pair's two prompts, tokenized once (BOS first when the tokenizer has
    one): ``black[i]`` and ``white[i]`` belong to pair ``i``; ``pad`` fills the padding.

    Built by :func:`tokenize_pairs`. :meth:`batches` and :meth:`sorted_chunks` cut the pair indices
    into batches; :meth:`batch` pads one batch from the ids already here.

    Examples:
        >>> t = PairTokens(black=[[1, 5, 6], [1, 7]], white=[[1, 8], [1, 9, 9, 9]], pad=0)
        >>> t.widths
        [3, 4]
        >>> t.batch([1, 0]).ids.tolist()
        [[1, 7, 0, 0], [1, 5, 6, 0], [1, 9, 9, 9], [1, 8, 0, 0]]
    """

    black: list[list[int]]
    white: list[list[int]]
    pad: int = 0

    def __len__(self) -> int:
        return len(self.black)

    @property
    def widths(self) -> list[int]:
        """The longer prompt of each pair, in tokens (BOS included)."""
        return [max(len(b), len(w)) for b, w in zip(self.black, self.white, strict=True)]

    def batch(self, idx: Iterable[int], device=None) -> Batch:
        """One right-padded batch of 2n rows: the Black prompts of the n pairs ``idx``, then their
        White prompts, in that order (``ids`` [2n, longest of those rows], ``lengths`` [2n])."""
        idx = list(idx)
        batch = pad_rows([self.black[i] for i in idx] + [self.white[i] for i in idx], self.pad)
        return batch.to(device) if device is not None else batch

    def batches(self, batch_size: int, device, max_tokens: int | None = -1) -> list[list[int]]:
        """Pair indices cut by :func:`pair_batches`: at most ``batch_size`` pairs and ``max_tokens``
        padded tokens a batch, with little padding (attribution and the activation scan)."""
        return pair_batches(self.widths, batch_size, device, max_tokens)

    def sorted_chunks(self, batch_size: int) -> list[list[int]]:
        """Pair indices in :func:`length_order` of their widths, cut into consecutive runs of
        ``batch_size`` pairs (:func:`lens_bias.measures.metrics.measure`).

        Examples:
            >>> PairTokens([[1, 2, 3], [1], [1, 2]], [[1], [1], [1]]).sorted_chunks(2)
            [[1, 2], [0]]
        """
        order = length_order(self.widths)
        return [order[sl] for sl in chunks(len(order), batch_size)]


def tokenize_pairs(bridge: Bridge, pairs: Iterable[ContrastivePair]) -> PairTokens:
    """Tokenize both prompts of every pair once with the bridge's tokenizer, through its chat template
    when the bridge says so (:func:`lens_bias.model.chat.use_chat_template`); refuses prompts longer than
    the model's context (:func:`lens_bias.bridge.context_length`).

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> t = tokenize_pairs(b, build_pairs(["hiring"])[:3])
        >>> len(t), t.black[0][0] == b.lens_bias_tokenizer.bos_token_id
        (3, True)
    """
    pairs = list(pairs)
    tok = tokenizer_of(bridge)
    rows = tokenize(tok, [p.black for p in pairs] + [p.white for p in pairs], max_len=context_length(bridge),
                    chat=chat_enabled(bridge))
    return PairTokens(rows[: len(pairs)], rows[len(pairs):], pad_id(tok))


def pair_batch(bridge: Bridge, pairs: Sequence[ContrastivePair]) -> Batch:
    """One right-padded batch of 2n rows: the n Black prompts, then the n White prompts, on the
    model's device (``ids`` [2n, pos], ``lengths`` [2n]).

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> batch = pair_batch(b, build_pairs(["hiring"])[:3].pairs)
        >>> batch.ids.shape[0], batch.lengths.shape
        (6, torch.Size([6]))
    """
    return tokenize_pairs(bridge, pairs).batch(range(len(pairs)), model_device(bridge))


def token_report(pairs: Iterable[ContrastivePair], tokenizer) -> dict:
    """Token counts per pair (names often split into several tokens) and a summary.

    Returns ``{"pairs": [{id, black_tokens, white_tokens, diff}], "equal": n, "unequal": n,
    "max_diff": k}``.

    Examples:
        >>> from lens_bias import build_pairs
        >>> from lens_bias.model.load import tiny_random_hf
        >>> _, tok = tiny_random_hf()
        >>> r = token_report(build_pairs(["finance"])[:4], tok)
        >>> r["equal"] + r["unequal"], sorted(r["pairs"][0])
        (4, ['black_tokens', 'diff', 'id', 'white_tokens'])
    """
    rows = []
    for p in pairs:
        nb = len(tokenizer(p.black, add_special_tokens=False)["input_ids"])
        nw = len(tokenizer(p.white, add_special_tokens=False)["input_ids"])
        rows.append({"id": p.id, "black_tokens": nb, "white_tokens": nw, "diff": nb - nw})
    eq = sum(r["diff"] == 0 for r in rows)
    return {
        "pairs": rows,
        "equal": eq,
        "unequal": len(rows) - eq,
        "max_diff": max((abs(r["diff"]) for r in rows), default=0),
    }


# ---------------------------------------------------------------- logits at chosen positions


def logits_at(bridge: Bridge, ids: Int[Tensor, "batch pos"],
              keep: Sequence[int]) -> Float[Tensor, "batch kept vocab"]:
    """The model's logits at the positions ``keep`` only (sorted, distinct), [batch, len(keep),
    vocab]: the unembedding runs at no other position (``logits_to_keep``).

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> ids = pair_batch(b, build_pairs(["hiring"])[:1].pairs).ids
        >>> tuple(logits_at(b, ids, [1, 2]).shape) == (2, 2, b.cfg.d_vocab)
        True
    """
    return bridge(ids, logits_to_keep=torch.tensor(list(keep), dtype=torch.long, device=ids.device))


def last_logits(bridge: Bridge, ids: Int[Tensor, "batch pos"], lengths: Sequence[int] | Int[Tensor, " batch"],
                ) -> Float[Tensor, "batch vocab"]:
    """Logits at each row's last real token (row ``i`` has ``lengths[i]`` tokens), [batch, vocab],
    in the model's dtype; the unembedding runs only at the distinct last positions.

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> batch = pair_batch(b, build_pairs(["hiring"])[:3].pairs)
        >>> tuple(last_logits(b, batch.ids, batch.lengths).shape) == (6, b.cfg.d_vocab)
        True
    """
    lengths = lengths.tolist() if isinstance(lengths, Tensor) else list(lengths)
    keep = sorted({n - 1 for n in lengths})
    col = {p: j for j, p in enumerate(keep)}
    logits = logits_at(bridge, ids, keep)
    where = torch.tensor([col[n - 1] for n in lengths], dtype=torch.long, device=logits.device)
    return logits[torch.arange(len(lengths), device=logits.device), where]


def widened(t: Tensor) -> Tensor:
    """``t`` in at least float32: half precision is widened, float64 kept (so a float64 model's
    log-probs stay float64). ``widened(bf16).dtype == float32``, ``widened(f64).dtype == float64``."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def last_logprobs(bridge: Bridge, batch: Batch) -> Float[Tensor, "batch vocab"]:
    """Log-probabilities (float32, float64 for a float64 model) at each row's last real token, [batch, vocab];
    raises :class:`~lens_bias.errors.NumericsError` on NaN or inf.

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> lp = last_logprobs(b, pair_batch(b, build_pairs(["hiring"])[:2].pairs)).detach()
        >>> round(float(lp.exp().sum(-1)[0]), 4)
        1.0
    """
    last = widened(last_logits(bridge, batch.ids, batch.lengths))
    check_finite(last)
    return F.log_softmax(last, dim=-1)


def iter_pair_logprobs(bridge: Bridge, pairs: Iterable[ContrastivePair], batch_size: int = 32,
                       desc: str | None = None) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """Yield (pair indices, logp_black, logp_white) at the last token, batch by batch, without
    gradients. Pairs are visited in order of token length (:meth:`PairTokens.sorted_chunks`, less
    padding); ``logp_black`` and ``logp_white`` are [n_batch, vocab], row i belonging to pair
    ``indices[i]``. ``desc``: show a progress bar with this label.

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> for idx, lb, lw in iter_pair_logprobs(b, build_pairs(["hiring"])[:4], batch_size=2):
        ...     print(len(idx), tuple(lb.shape) == tuple(lw.shape))
        2 True
        2 True
    """
    tokens = tokenize_pairs(bridge, pairs)
    device = model_device(bridge)
    batches = tokens.sorted_chunks(batch_size)
    for idx in tqdm(batches, desc=desc, leave=False) if desc else batches:
        with torch.inference_mode():
            logp = last_logprobs(bridge, tokens.batch(idx, device))
        yield idx, logp[: len(idx)], logp[len(idx):]


# ---------------------------------------------------------------- reading results


def gather_last(x: Float[Tensor, "batch pos *rest"],
                lengths: Int[Tensor, " batch"]) -> Float[Tensor, " batch *rest"]:
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
            hint = (" If the model runs in float16 or bfloat16, it probably overflowed (float16 above "
                    "65504): load it in float32 (load_model(..., dtype=torch.float32)); otherwise check the "
                    "model weights and the inputs.")
        raise NumericsError(f"non-finite values (NaN/inf) in {where}: {what}.{hint}")

