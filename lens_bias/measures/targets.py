"""The bias targets that attribution differentiates and validation measures exactly: one value per
pair, differentiable through the model's hooks.

* ``js`` and ``logit_gap`` (next-token bias): from the logits at the last token of a pair's two
  prompts. ``js`` is the Jensen-Shannon divergence of the two next-token distributions;
  ``logit_gap`` is |gap| between the favourable/unfavourable words (pairs without pos/neg give 0).
* ``seqgap`` (sentence-level bias, the kind CrowS-Pairs measures): for a pair of counterfactual
  *sentences* (the same sentence about a Black and about a White subject),
  |log P(Black sentence) - log P(White sentence)|, each log-likelihood summed over every token of
  the sentence conditioned on the prefix token (BOS, else EOS), exactly as
  :func:`lens_bias.measures.capability.sentence_logliks` scores CrowS-Pairs. The two sentences may tokenize
  to different lengths (names do); each row is summed over its own tokens, so padding never
  misaligns them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..bridge import Bridge, tokenizer_of
from ..errors import LensBiasError
from ..model.batching import Batch, PairTokens, pad_id, widened
from ..prompts.pairs import ContrastivePair, PairSet
from ..vocab import check_metric, is_sentence_metric
from .capability import sentence_logliks, sentence_rows
from .metrics import js_divergence, logit_gap, word_tokens


def directional_only(pairs: PairSet, target) -> PairSet:
    """The pairs ``target`` can use: ``logit_gap`` needs pos/neg words, the others take every pair."""
    if isinstance(target, str) and target == "logit_gap":
        sub = pairs.filter(directional=True)
        if not len(sub):
            raise LensBiasError("metric 'logit_gap' needs pairs with pos/neg words; none have them")
        return sub
    return pairs


def pair_metric(target, last_logits: Float[Tensor, "rows vocab"], pairs: Sequence[ContrastivePair],
                tokenizer) -> Float[Tensor, " n"]:
    """Per-pair metric values (differentiable) from the last-token logits of a pair batch (n Black
    rows, then n White rows): ``js``; ``logit_gap`` as |gap| (pairs without pos/neg give 0); or a
    callable ``f(logits_black, logits_white, pairs) -> [n]`` (e.g. for tests)."""
    n = len(pairs)
    if callable(target):
        return target(last_logits[:n], last_logits[n:], pairs)
    if is_sentence_metric(target):
        raise LensBiasError(f"{target!r} is a sentence target: use sentence_gap on the whole sequence")
    logp = F.log_softmax(last_logits, -1)
    logp_b, logp_w = logp[:n], logp[n:]
    if target == "js":
        return js_divergence(logp_b, logp_w)
    if target == "logit_gap":
        wt = word_tokens(tokenizer, pairs)
        has = [i for i, p in enumerate(pairs) if p.pos and p.neg]
        out = torch.zeros(len(pairs), dtype=logp_b.dtype, device=logp_b.device)
        if has:
            g = logit_gap(logp_b[has], logp_w[has], [wt.pos[i] for i in has], [wt.neg[i] for i in has])
            out = out.index_put((torch.tensor(has, device=out.device),), g.abs())
        return out
    check_metric(target)
    raise LensBiasError(f"target {target!r} has no per-pair value")  # unreachable: every name has one


# ---------------------------------------------------------------- sentence pairs


def sentence_tokens(bridge: Bridge, pairs: Sequence[ContrastivePair]) -> PairTokens:
    """Both sentences of every pair as token rows ``[prefix token, *sentence tokens]`` (the rows
    :func:`lens_bias.measures.capability.sentence_logliks` scores), for batching with :class:`PairTokens`.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.prompts.pairs import ContrastivePair
        >>> b = load_model("tiny-random", device="cpu")
        >>> p = ContrastivePair("s:1", "general", "s", "Jamal is late.", "Greg is late.")
        >>> t = sentence_tokens(b, [p])
        >>> t.black[0][0] == t.white[0][0] == b.lens_bias_tokenizer.bos_token_id
        True
    """
    rows = sentence_rows(bridge, [p.black for p in pairs] + [p.white for p in pairs])
    n = len(pairs)
    return PairTokens(rows[:n], rows[n:], pad_id(tokenizer_of(bridge)))


def row_logliks(logits: Float[Tensor, "rows pos vocab"], batch: Batch) -> Float[Tensor, " rows"]:
    """Each row's summed log-likelihood of its own tokens after the first (padding excluded),
    differentiable."""
    logp = F.log_softmax(widened(logits[:, :-1]), dim=-1)
    lp = logp.gather(-1, batch.ids[:, 1:, None].to(logp.device))[..., 0]
    return (lp * batch.mask[:, 1:].to(lp.device, lp.dtype)).sum(-1)


def sentence_gap(logits: Float[Tensor, "rows pos vocab"], batch: Batch) -> Float[Tensor, " n"]:
    """Signed per-pair gap log P(Black sentence) - log P(White sentence) from the full logits of a
    sentence batch (n Black rows, then n White rows); differentiable. ``seqgap`` is its absolute
    value."""
    ll = row_logliks(logits, batch)
    n = ll.shape[0] // 2
    return ll[:n] - ll[n:]


def sentence_gaps(bridge: Bridge, pairs: PairSet, batch_size: int = 16) -> list[float]:
    """The signed gap of every pair (no gradients; with whatever hooks are attached now).

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.prompts.pairs import ContrastivePair
        >>> b = load_model("tiny-random", device="cpu")
        >>> p = ContrastivePair("s:1", "general", "s", "Jamal is late.", "Greg is late again.")
        >>> [g] = sentence_gaps(b, PairSet([p]))
        >>> isinstance(g, float)
        True
    """
    texts = [p.black for p in pairs] + [p.white for p in pairs]
    ll = sentence_logliks(bridge, texts, batch_size=batch_size)
    n = len(pairs)
    return [b - w for b, w in zip(ll[:n], ll[n:], strict=True)]


def seqgap_summary(gaps: Sequence[float], pairs: PairSet, signs: Sequence[int] = ()) -> dict:
    """What ``measure --seqgap`` prints, overall (``"all"``) and per domain: ``n_pairs``; ``seqgap``,
    the mean |gap| (nats) with its 95 % interval (pairs resampled by sentence template); where the
    direction is known (``signs``, :func:`lens_bias.prompts.sentences.stereotype_signs`), ``stereo_gap``,
    the mean gap in the stereotyped sentence's favour, and ``stereo_rate``, the % of pairs whose
    stereotyped sentence is the likelier (50 = no preference).

    Examples:
        >>> ps = PairSet([ContrastivePair(f"t{i}:x", "d", f"t{i}", "a", "b") for i in range(4)])
        >>> s = seqgap_summary([1.0, -0.5, 2.0, 0.5], ps, [1, 1, -1, 1])
        >>> s["all"]["seqgap"], s["all"]["stereo_gap"], s["all"]["stereo_rate"]
        (1.0, -0.25, 50.0)
    """
    from ..stats import bootstrap_ci

    out = {}
    doms = sorted({p.domain for p in pairs})
    for d in ["all", *doms]:
        idx = [i for i, p in enumerate(pairs) if d == "all" or p.domain == d]
        groups = [pairs[i].template for i in idx]
        absg = [abs(gaps[i]) for i in idx]
        row = {"n_pairs": len(idx), "seqgap": sum(absg) / len(idx), "seqgap_ci": bootstrap_ci(absg, groups)}
        known = [i for i in idx if i < len(signs) and signs[i]]
        if known:
            st = [signs[i] * gaps[i] for i in known]
            prefer = [100.0 * (v > 0) for v in st]
            kg = [pairs[i].template for i in known]
            row.update(stereo_gap=sum(st) / len(st), stereo_gap_ci=bootstrap_ci(st, kg),
                       stereo_rate=sum(prefer) / len(prefer), stereo_rate_ci=bootstrap_ci(prefer, kg))
        out[d] = row
    return out


def load_metric_pairs(path: str | Path | None = None, domains: Sequence[str] | None = None,
                      per_domain: int = 0, seed: int = 0, metric: str = "js") -> PairSet:
    """What a command scores with ``metric``: the pairs of ``path``, else the bundled prompt pairs,
    or the bundled sentence pairs for a sentence target (``seqgap``), at most ``per_domain`` per
    domain (``0`` = all).

    Examples:
        >>> load_metric_pairs(domains=["finance"], per_domain=3, metric="seqgap")[0].pos
        ()
    """
    from ..prompts.pairs import load_pairs
    from ..prompts.sentences import load_sentence_pairs

    if is_sentence_metric(metric) and not path:
        return load_sentence_pairs(None, domains, per_domain, seed)
    return load_pairs(path, domains, per_domain, seed)
