"""Capability metrics: what pruning may cost the model besides its bias.

* CrowS-Pairs stereotype-preference rate (:func:`crows_rate`), from sentence log-likelihoods;
* perplexity on WikiText-2 or any text (:func:`perplexity`);
* LAMBADA last-word accuracy (:func:`lambada_accuracy`);
* KL divergence from the unmodified model on neutral text (:func:`kl_from_reference`), with the
  reference's log-probabilities cached once (:func:`reference_logprobs`).

The files these read come from :mod:`lens_bias.corpora`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .batching import Batch, check_finite, chunks, encode, logits_at, pad_rows
from .bridge import Bridge, context_length, model_device, tokenizer_of, weights_version
from .corpora import CrowsPair
from .errors import LensBiasError, PairsError

# ---------------------------------------------------------------- sentence log-likelihoods


def token_logprobs(bridge: Bridge, batch: Batch) -> Float[Tensor, "batch pos_minus_1"]:
    """log P(ids[:, t+1] | ids[:, :t+1]), [batch, pos - 1], with padded targets set to 0.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.batching import encode
        >>> b = load_model("tiny-random", device="cpu")
        >>> batch = encode(b.lens_bias_tokenizer, ["A short text.", "A somewhat longer text here."])
        >>> lp = token_logprobs(b, batch)
        >>> lp.shape == (2, batch.ids.shape[1] - 1), bool((lp <= 0).all())
        (True, True)
    """
    logits = bridge(batch.ids).float()
    check_finite(logits)
    logp = F.log_softmax(logits[:, :-1], dim=-1)
    tgt = batch.ids[:, 1:]
    lp = logp.gather(-1, tgt[..., None])[..., 0]
    return lp * batch.mask[:, 1:]


CROWS_SCORING = ("sum", "mean", "shared")


def per_token_logprobs(bridge: Bridge, texts: Sequence[str], batch_size: int = 16) -> list[tuple[list[int], Tensor]]:
    """For each text: its token ids (after BOS) and log P of each of them given its prefix (a
    tensor of the same length).

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> [(ids, lp)] = per_token_logprobs(b, ["A short text."])
        >>> len(ids) == len(lp)
        True
    """
    tok = tokenizer_of(bridge)
    device = model_device(bridge)
    out = []
    for sl in chunks(len(texts), batch_size):
        batch = encode(tok, texts[sl], max_len=context_length(bridge), device=device)
        with torch.inference_mode():
            lp = token_logprobs(bridge, batch).cpu()
        for i, n in enumerate(batch.lengths.tolist()):
            out.append((batch.ids[i, 1:n].tolist(), lp[i, : n - 1]))
    return out


def _shared_score(ids: list[int], lp: Tensor, other: list[int]) -> float:
    """Sum of log-probs over the tokens this sentence shares with ``other``: the common prefix and
    the common suffix (the unmodified tokens, as in CrowS-Pairs' own metric)."""
    pre = 0
    while pre < min(len(ids), len(other)) and ids[pre] == other[pre]:
        pre += 1
    suf = 0
    while suf < min(len(ids), len(other)) - pre and ids[-1 - suf] == other[-1 - suf]:
        suf += 1
    return float(lp[:pre].sum() + (lp[len(ids) - suf:].sum() if suf else 0.0))


def crows_rate(bridge: Bridge, crows: Sequence[CrowsPair], batch_size: int = 16, scoring: str = "sum",
               progress: bool = True) -> dict:
    """CrowS-Pairs stereotype-preference rate: % of pairs whose stereotypical sentence scores higher
    (50 % = no preference). ``scoring``: ``sum`` (sentence log-likelihood, the default), ``mean``
    (per-token mean) or ``shared`` (log-likelihood of the tokens both sentences share, the causal
    analogue of CrowS-Pairs' pseudo-likelihood of unmodified tokens).

    Returns ``{"rate": percent, "n_pairs": n, "scoring": scoring}``.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.corpora import CrowsPair
        >>> b = load_model("tiny-random", device="cpu")
        >>> pairs = [CrowsPair("1", "Black people are poor.", "White people are poor.", "stereo")]
        >>> crows_rate(b, pairs, progress=False)["rate"] in (0.0, 100.0)
        True
    """
    if scoring not in CROWS_SCORING:
        raise PairsError(f"CrowS-Pairs scoring must be one of {CROWS_SCORING}, got {scoring!r}")
    n = len(crows)
    texts = [c.stereo for c in crows] + [c.anti for c in crows]
    toks: list[tuple[list[int], Tensor]] = []
    it = chunks(len(texts), batch_size * 4)
    if progress:
        it = tqdm(list(it), desc="crows-pairs", leave=False)
    for sl in it:
        toks += per_token_logprobs(bridge, texts[sl], batch_size)
    prefer = []
    for i in range(n):
        (a_ids, a), (b_ids, b) = toks[i], toks[n + i]
        if scoring == "sum":
            sa, sb = float(a.sum()), float(b.sum())
        elif scoring == "mean":
            sa, sb = float(a.mean()), float(b.mean())
        else:
            sa, sb = _shared_score(a_ids, a, b_ids), _shared_score(b_ids, b, a_ids)
        prefer.append(sa > sb)
    return {"rate": 100.0 * sum(prefer) / n if n else None, "n_pairs": n, "scoring": scoring}


# ---------------------------------------------------------------- capability


def leading_tokens(tokenizer, texts: Sequence[str], n: int, margin: int = 64) -> list[int]:
    """The first ``n`` tokens of ``"\\n".join(texts)``, tokenizing only as many lines as needed (twice
    as many until ``n + margin`` tokens come out, so that the cut never splits a word).

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.pairs import neutral_text
        >>> tok = load_model("tiny-random", device="cpu").lens_bias_tokenizer
        >>> full = tok("\\n".join(neutral_text()), add_special_tokens=False)["input_ids"]
        >>> leading_tokens(tok, neutral_text(), 100) == full[:100]
        True
    """
    lines = 16
    while True:
        ids = tokenizer("\n".join(texts[:lines]), add_special_tokens=False)["input_ids"]
        if len(ids) >= n + margin or lines >= len(texts):
            return ids[:n]
        lines *= 2


def perplexity(bridge: Bridge, texts: Sequence[str], max_tokens: int = 20_000, window: int = 256,
               batch_size: int = 8, progress: bool = True) -> float:
    """Perplexity over the concatenated texts (first ``max_tokens`` tokens), in non-overlapping
    windows of ``window`` tokens, each with BOS first.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.pairs import neutral_text
        >>> b = load_model("tiny-random", device="cpu")
        >>> perplexity(b, neutral_text(), max_tokens=256, progress=False) > 1
        True
    """
    tok = tokenizer_of(bridge)
    ids = leading_tokens(tok, texts, max_tokens)
    device = model_device(bridge)
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    rows = [bos + ids[i: i + window] for i in range(0, len(ids), window)]
    rows = [r for r in rows if len(r) > 1 + len(bos) - 1]
    total, count = 0.0, 0
    it = chunks(len(rows), batch_size)
    if progress:
        it = tqdm(list(it), desc="perplexity", leave=False)
    for sl in it:
        batch = pad_rows(rows[sl]).to(device)
        with torch.inference_mode():
            lp = token_logprobs(bridge, batch)
        total += float(-lp.sum())
        count += int(batch.mask[:, 1:].sum())
    return math.exp(total / max(count, 1))


def lambada_accuracy(bridge: Bridge, texts: Sequence[str], batch_size: int = 16, progress: bool = True) -> float:
    """Last-word accuracy in [0, 1]: greedy decoding of the last word's tokens given the context
    (a passage counts only if every token of its last word is predicted).

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> 0.0 <= lambada_accuracy(b, ["The bank decided to approve the loan"], progress=False) <= 1.0
        True
    """
    tok = tokenizer_of(bridge)
    device = model_device(bridge)
    rows, targets = [], []
    for t in texts:
        head, _, last = t.rpartition(" ")
        targets.append(tok(" " + last, add_special_tokens=False)["input_ids"])
        rows.append(encode(tok, [head]).ids[0].tolist() + targets[-1])
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))  # less padding
    correct = 0
    it = chunks(len(texts), batch_size)
    if progress:
        it = tqdm(list(it), desc="lambada", leave=False)
    for sl in it:
        idx = order[sl]
        # the unembedding runs only at the positions that predict a last-word token
        keep = sorted({p for i in idx for p in range(len(rows[i]) - len(targets[i]) - 1, len(rows[i]) - 1)})
        col = {p: j for j, p in enumerate(keep)}
        with torch.inference_mode():
            pred = logits_at(bridge, pad_rows([rows[i] for i in idx]).ids.to(device), keep).argmax(-1).cpu()
        for b, i in enumerate(idx):
            start = len(rows[i]) - len(targets[i])
            correct += int([int(pred[b, col[p]]) for p in range(start - 1, len(rows[i]) - 1)] == targets[i])
    return correct / max(len(texts), 1)


@dataclass
class ReferenceLogprobs:
    """The unmodified model's log-probabilities on ``texts`` (real tokens only, one [tokens, vocab]
    tensor per batch), computed once so that the KL of many interventions costs one forward pass
    each instead of two. Memory: tokens x vocab floats (about 1 GB for 1,000 tokens of Gemma-3's
    262k vocabulary)."""

    texts: tuple[str, ...]
    batch_size: int
    logprobs: list[Tensor]
    version: tuple[int, ...]

    def matches(self, bridge: Bridge, texts: Sequence[str], batch_size: int) -> bool:
        return self.texts == tuple(texts) and self.batch_size == batch_size and self.version == weights_version(bridge)


def _kl_batches(bridge: Bridge, texts: Sequence[str], batch_size: int) -> Iterator[Batch]:
    tok = tokenizer_of(bridge)
    device = model_device(bridge)
    for sl in chunks(len(texts), batch_size):
        yield encode(tok, texts[sl], max_len=context_length(bridge), device=device)


def _real_logprobs(bridge: Bridge, batch: Batch) -> Float[Tensor, "tokens vocab"]:
    with torch.inference_mode():
        return F.log_softmax(bridge(batch.ids).float(), -1)[batch.mask.bool()]


def reference_logprobs(bridge: Bridge, texts: Sequence[str], batch_size: int = 16) -> ReferenceLogprobs:
    """The bridge's own log-probs on ``texts``, for :func:`kl_from_reference` (``reference=``).

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.pairs import neutral_text
        >>> b = load_model("tiny-random", device="cpu")
        >>> ref = reference_logprobs(b, neutral_text()[:4])
        >>> ref.logprobs[0].shape[1] == b.cfg.d_vocab, ref.matches(b, neutral_text()[:4], 16)
        (True, True)
    """
    return ReferenceLogprobs(tuple(texts), batch_size,
                             [_real_logprobs(bridge, b) for b in _kl_batches(bridge, texts, batch_size)],
                             weights_version(bridge))


def kl_from_reference(bridge: Bridge, texts: Sequence[str], intervention: Callable[[], AbstractContextManager] | None,
                      batch_size: int = 16, reference: ReferenceLogprobs | None = None) -> float:
    """Mean per-token KL(reference || intervened) on ``texts``; the reference is the bridge without
    ``intervention`` (e.g. ``lambda: ablate(bridge, mask)``). Pass ``reference`` (from
    :func:`reference_logprobs` on the same texts and batch size) to skip the reference's forward
    passes; a reference computed before the weights changed is refused.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.ablation import ablate
        >>> from lens_bias.selection import random_mask
        >>> from lens_bias.pairs import neutral_text
        >>> b = load_model("tiny-random", device="cpu")
        >>> mask = random_mask(b, 10, "neurons")
        >>> kl_from_reference(b, neutral_text()[:4], lambda: ablate(b, mask)) > 0
        True
        >>> kl_from_reference(b, neutral_text()[:4], None)
        0.0
    """
    if reference is not None and not reference.matches(bridge, texts, batch_size):
        raise LensBiasError("the KL reference was computed on other texts, another batch size or before the "
                            "weights changed; compute it again with reference_logprobs(bridge, texts, batch_size)")
    total, count = 0.0, 0
    for i, batch in enumerate(_kl_batches(bridge, texts, batch_size)):
        ref = reference.logprobs[i] if reference is not None else _real_logprobs(bridge, batch)
        with intervention() if intervention else nullcontext():
            new = _real_logprobs(bridge, batch)
        total += float((ref.exp() * (ref - new)).sum())
        count += ref.shape[0]
    return total / max(count, 1)
