"""Bias metrics on next-token distributions, and capability metrics.

Per pair, at each prompt's last token (p_B for the Black variant, p_W for the White one):

* ``js``: Jensen-Shannon divergence in nats, symmetric, 0 iff p_B == p_W (the headline metric);
* ``logit_gap``: [log P(pos) - log P(neg)] under W minus the same under B (signed; needs pos/neg);
* ``numeric``: greedy-decoded number after a ``$`` prompt; disparity as a standardized mean
  difference (W - B) across pairs, as in Ma et al.;
* ``activation_diff`` lives in :mod:`lens_bias.capture` (it needs hooks).

Capability: CrowS-Pairs stereotype-preference rate, WikiText-2 perplexity, LAMBADA last-word
accuracy and KL divergence from the unpruned model on neutral text.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from .batching import Batch, check_finite, chunks, context_length, encode, gather_last, model_device, pad_rows
from .pairs import ContrastivePair, CrowsPair, PairSet

METRICS = ("js", "logit_gap")  # differentiable pair metrics (attribution targets)

# ---------------------------------------------------------------- pure functions


def js_divergence(logp: Float[Tensor, "n vocab"], logq: Float[Tensor, "n vocab"]) -> Float[Tensor, " n"]:
    """Jensen-Shannon divergence (nats) between rows of two log-probability tensors.

    ``logp``, ``logq``: [n, vocab] log-probabilities; returns [n], each in [0, log 2].

    Examples:
        >>> import torch
        >>> p = torch.log(torch.tensor([[1.0, 0.0]]).clamp_min(1e-30))
        >>> q = torch.log(torch.tensor([[0.0, 1.0]]).clamp_min(1e-30))
        >>> round(js_divergence(p, q).item(), 4)  # log 2 for disjoint supports
        0.6931
    """
    logm = torch.logaddexp(logp, logq) - math.log(2.0)
    kl_pm = (logp.exp() * (logp - logm)).sum(-1)
    kl_qm = (logq.exp() * (logq - logm)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


def word_score(logp: Float[Tensor, "n vocab"], ids: Sequence[Sequence[int]]) -> Float[Tensor, " n"]:
    """log of the total probability of each row's word set (logsumexp over the first tokens).

    ``logp``: [n, vocab] log-probabilities; ``ids``: n lists of token ids; returns [n].

    Examples:
        >>> import torch
        >>> logp = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
        >>> round(word_score(logp, [[1, 2]]).exp().item(), 4)
        0.5
    """
    out = []
    for i, row in enumerate(ids):
        out.append(torch.logsumexp(logp[i, list(row)], dim=0))
    return torch.stack(out)


def logit_gap(logp_b: Float[Tensor, "n vocab"], logp_w: Float[Tensor, "n vocab"],
              pos: Sequence[Sequence[int]], neg: Sequence[Sequence[int]]) -> Float[Tensor, " n"]:
    """[log P(pos) - log P(neg)] under W minus the same under B; positive = White favoured.

    ``logp_b``, ``logp_w``: [n, vocab] log-probabilities of the Black and White prompts;
    ``pos``, ``neg``: n lists of first-token ids (:func:`word_tokens`); returns [n].

    Examples:
        >>> import torch
        >>> lb = torch.log(torch.tensor([[0.2, 0.8]]))  # Black prompt: "deny" (1) likelier
        >>> lw = torch.log(torch.tensor([[0.8, 0.2]]))  # White prompt: "approve" (0) likelier
        >>> round(logit_gap(lb, lw, pos=[[0]], neg=[[1]]).item(), 3)
        2.773
    """
    gap_w = word_score(logp_w, pos) - word_score(logp_w, neg)
    gap_b = word_score(logp_b, pos) - word_score(logp_b, neg)
    return gap_w - gap_b


def standardized_mean_difference(white: Sequence[float], black: Sequence[float]) -> float:
    """Cohen's d of paired values: mean(W - B) / pooled standard deviation (0 when constant).

    Examples:
        >>> round(standardized_mean_difference([110, 120, 130], [100, 110, 120]), 3)
        1.0
    """
    w = torch.tensor(list(white), dtype=torch.float64)
    b = torch.tensor(list(black), dtype=torch.float64)
    if len(w) < 2:
        return 0.0
    pooled = torch.sqrt((w.var() + b.var()) / 2)
    return 0.0 if pooled == 0 else float((w - b).mean() / pooled)


# ---------------------------------------------------------------- word tokens


@dataclass(frozen=True)
class WordTokens:
    """First-token ids of each pair's pos/neg words, and the words that are not single tokens.

    ``pos`` and ``neg`` hold one list of token ids per pair; built by :func:`word_tokens`.

    Examples:
        >>> WordTokens(pos=[[12]], neg=[[40, 41]], multi_token={"approve": 2}).multi_token
        {'approve': 2}
    """

    pos: list[list[int]]
    neg: list[list[int]]
    multi_token: dict[str, int]  # word -> number of tokens (only the first token is scored)


def word_tokens(tokenizer, pairs: Sequence[ContrastivePair]) -> WordTokens:
    """Map pos/neg words to the first token of " word". Multi-token words are scored by their first
    token and reported in ``multi_token``.

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> pairs = build_pairs(["finance"]).filter(directional=True)[:2]
        >>> wt = word_tokens(b.lens_bias_tokenizer, pairs.pairs)
        >>> len(wt.pos), all(isinstance(i, int) for i in wt.pos[0])
        (2, True)
    """
    cache: dict[str, list[int]] = {}

    def tok(w: str) -> list[int]:
        if w not in cache:
            cache[w] = tokenizer(" " + w, add_special_tokens=False)["input_ids"]
        return cache[w]

    pos = [sorted({tok(w)[0] for w in p.pos}) for p in pairs]
    neg = [sorted({tok(w)[0] for w in p.neg}) for p in pairs]
    multi = {w: len(ids) for w, ids in cache.items() if len(ids) > 1}
    return WordTokens(pos, neg, multi)


# ---------------------------------------------------------------- running the model on pairs


def tokenizer_of(bridge):
    """The tokenizer lens_bias uses for ``bridge`` (the one :func:`lens_bias.load_model` attached,
    else the bridge's own).

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> tokenizer_of(b) is b.lens_bias_tokenizer
        True
    """
    return getattr(bridge, "lens_bias_tokenizer", None) or bridge.tokenizer


def pair_batch(bridge, pairs: Sequence[ContrastivePair]) -> Batch:
    """One right-padded batch of 2n rows: the n Black prompts, then the n White prompts, on the
    model's device (``ids`` [2n, pos], ``lengths`` [2n]).

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> batch = pair_batch(b, build_pairs(["hiring"])[:3].pairs)
        >>> batch.ids.shape[0], batch.lengths.shape
        (6, torch.Size([6]))
    """
    prompts = [p.black for p in pairs] + [p.white for p in pairs]
    return encode(tokenizer_of(bridge), prompts, max_len=context_length(bridge), device=model_device(bridge))


def last_logits(bridge, batch: Batch) -> Float[Tensor, "batch vocab"]:
    """Logits at each row's last real token, [batch, vocab]; the unembedding runs only at those
    positions.

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> batch = pair_batch(b, build_pairs(["hiring"])[:3].pairs)
        >>> tuple(last_logits(b, batch).shape) == (6, b.cfg.d_vocab)
        True
    """
    keep, where = torch.unique(batch.last, return_inverse=True)
    logits = bridge(batch.ids, logits_to_keep=keep)
    return logits[torch.arange(batch.ids.shape[0], device=logits.device), where]


def last_logprobs(bridge, batch: Batch) -> Float[Tensor, "batch vocab"]:
    """Log-probabilities (float32) at each row's last real token, [batch, vocab]; raises
    :class:`~lens_bias.errors.NumericsError` on NaN or inf.

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> lp = last_logprobs(b, pair_batch(b, build_pairs(["hiring"])[:2].pairs)).detach()
        >>> round(float(lp.exp().sum(-1)[0]), 4)
        1.0
    """
    last = last_logits(bridge, batch).float()
    check_finite(last)
    return F.log_softmax(last, dim=-1)


def by_length(pairs: Sequence[ContrastivePair], tokenizer) -> list[int]:
    """Pair indices sorted by token length (the longer prompt of each pair; ties by index), so that
    batches carry little padding.

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> order = by_length(build_pairs(["hiring"])[:5].pairs, b.lens_bias_tokenizer)
        >>> sorted(order)
        [0, 1, 2, 3, 4]
    """
    n = [max(len(tokenizer(p.black, add_special_tokens=False)["input_ids"]),
             len(tokenizer(p.white, add_special_tokens=False)["input_ids"])) for p in pairs]
    return sorted(range(len(pairs)), key=lambda i: (n[i], i))


def iter_pair_logprobs(bridge, pairs: PairSet, batch_size: int = 32, desc: str | None = None,
                       ) -> Iterator[tuple[list[int], Tensor, Tensor]]:
    """Yield (pair indices, logp_black, logp_white) at the last token, batch by batch, without
    gradients. Pairs are visited in order of token length (less padding); ``logp_black`` and
    ``logp_white`` are [n_batch, vocab], row i belonging to pair ``indices[i]``.

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> for idx, lb, lw in iter_pair_logprobs(b, build_pairs(["hiring"])[:4], batch_size=2):
        ...     print(len(idx), tuple(lb.shape) == tuple(lw.shape))
        2 True
        2 True
    """
    order = by_length(pairs.pairs, tokenizer_of(bridge))
    it = chunks(len(pairs), batch_size)
    if desc:
        it = tqdm(list(it), desc=desc, leave=False)
    for sl in it:
        idx = order[sl]
        chunk = [pairs.pairs[i] for i in idx]
        with torch.inference_mode():
            logp = last_logprobs(bridge, pair_batch(bridge, chunk))
        n = len(chunk)
        yield idx, logp[:n], logp[n:]


@dataclass
class PairMetrics:
    """Per-pair metric values (aligned with ``ids``) and their means per domain.

    ``values["js"]`` and ``values["logit_gap"]`` hold one float per pair (``None`` where a metric
    does not apply, e.g. ``logit_gap`` without pos/neg words). Returned by :func:`measure`.

    Examples:
        >>> m = PairMetrics(["a", "b"], ["hiring", "finance"], {"js": [0.01, 0.03], "logit_gap": [0.5, None]})
        >>> m.mean("js"), m.mean("logit_gap"), m.mean("js", domain="finance")
        (0.02, 0.5, 0.03)
    """

    ids: list[str]
    domains: list[str]
    values: dict[str, list[float | None]]
    multi_token_words: dict[str, int] = field(default_factory=dict)
    numeric: dict[str, dict] = field(default_factory=dict)

    def mean(self, metric: str = "js", domain: str | None = None) -> float | None:
        """Mean of ``metric`` over the pairs where it is defined (of ``domain`` only, if given);
        ``None`` if there are none."""
        vals = [
            v for v, d in zip(self.values[metric], self.domains, strict=True)
            if v is not None and (domain is None or d == domain)
        ]
        return sum(vals) / len(vals) if vals else None

    def summary(self) -> dict:
        """``{"n_pairs", "all": {metric: mean}, <domain>: {metric: mean, "n_pairs"}, ...}``, plus
        ``numeric_smd`` per domain and ``multi_token_words`` when present (what ``lens-bias measure
        --json`` prints).

        Examples:
            >>> m = PairMetrics(["a"], ["hiring"], {"js": [0.01], "logit_gap": [None]})
            >>> m.summary()
            {'n_pairs': 1, 'all': {'js': 0.01, 'logit_gap': None}, 'hiring': {'js': 0.01, 'logit_gap': None, 'n_pairs': 1}}
        """
        out: dict = {"n_pairs": len(self.ids), "all": {m: self.mean(m) for m in self.values}}
        for d in sorted(set(self.domains)):
            out[d] = {m: self.mean(m, d) for m in self.values}
            out[d]["n_pairs"] = sum(x == d for x in self.domains)
        if self.numeric:
            for d, v in self.numeric.items():
                out.setdefault(d, {})["numeric_smd"] = v["smd"]
        if self.multi_token_words:
            out["multi_token_words"] = self.multi_token_words
        return out


def measure(bridge, pairs: PairSet, batch_size: int = 32, numeric: bool = False, progress: bool = True) -> PairMetrics:
    """``js`` and ``logit_gap`` for every pair (and the numeric disparity with ``numeric=True``).

    Examples:
        >>> from lens_bias import load_model, build_pairs
        >>> m = measure(load_model("tiny-random"), build_pairs(["finance"])[:4], progress=False)
        >>> m.mean("js") > 0
        True
    """
    tok = tokenizer_of(bridge)
    js: list[float | None] = [None] * len(pairs)
    gap: list[float | None] = [None] * len(pairs)
    multi: dict[str, int] = {}
    for idx, lb, lw in iter_pair_logprobs(bridge, pairs, batch_size, "measure" if progress else None):
        chunk = [pairs.pairs[i] for i in idx]
        for i, v in zip(idx, js_divergence(lb, lw).tolist(), strict=True):
            js[i] = v
        wt = word_tokens(tok, chunk)
        multi.update(wt.multi_token)
        has = [k for k, p in enumerate(chunk) if p.pos and p.neg]
        if has:
            vals = logit_gap(lb[has], lw[has], [wt.pos[k] for k in has], [wt.neg[k] for k in has]).tolist()
            for k, v in zip(has, vals, strict=True):
                gap[idx[k]] = v
    out = PairMetrics([p.id for p in pairs], [p.domain for p in pairs], {"js": js, "logit_gap": gap}, multi)
    if numeric:
        out.numeric = numeric_disparity(bridge, pairs, batch_size)
    return out


# ---------------------------------------------------------------- numeric disparity

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def parse_number(text: str) -> float | None:
    """The first number in ``text`` (thousands separators allowed), or ``None``.

    Examples:
        >>> parse_number("1,250.50 for the car"), parse_number("no idea")
        (1250.5, None)
    """
    m = _NUMBER.search(text)
    if not m:
        return None
    try:
        return float(m.group(0).replace(",", ""))
    except ValueError:
        return None


def greedy_continuations(bridge, prompts: Sequence[str], max_new_tokens: int = 8, batch_size: int = 32) -> list[str]:
    """Greedy continuations with the bridge's hooks active (manual loop, one forward per token):
    one decoded string of ``max_new_tokens`` tokens per prompt.

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> outs = greedy_continuations(b, ["The bank decided to"], max_new_tokens=3)
        >>> len(outs), isinstance(outs[0], str)
        (1, True)
    """
    tok = tokenizer_of(bridge)
    device = model_device(bridge)
    outs: list[str] = []
    for sl in chunks(len(prompts), batch_size):
        batch = encode(tok, prompts[sl], device=device)
        n = batch.ids.shape[0]
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((n, batch.ids.shape[1] + max_new_tokens), pad, dtype=torch.long, device=device)
        ids[:, : batch.ids.shape[1]] = batch.ids
        lengths = batch.lengths.clone()
        rows = torch.arange(n, device=device)
        new = []
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                logits = bridge(ids[:, : int(lengths.max())])
                nxt = gather_last(logits, lengths).argmax(-1)
                ids[rows, lengths] = nxt
                new.append(nxt)
                lengths = lengths + 1
        new = torch.stack(new, dim=1).tolist()
        outs += [tok.decode(n, skip_special_tokens=True) for n in new]
    return outs


def numeric_disparity(bridge, pairs: PairSet, batch_size: int = 32) -> dict[str, dict]:
    """Per domain with numeric pairs: mean numbers for B and W and the standardized mean difference.

    Returns ``{domain: {"n_pairs", "n_parsed", "mean_black", "mean_white", "smd"}}``; pairs whose
    continuations hold no number are counted in ``n_pairs`` but not in ``n_parsed``.

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> res = numeric_disparity(b, build_pairs(["commerce"]).sample(2))
        >>> sorted(res["commerce"])
        ['mean_black', 'mean_white', 'n_pairs', 'n_parsed', 'smd']
    """
    num = [p for p in pairs if p.numeric]
    if not num:
        return {}
    conts = greedy_continuations(bridge, [p.black for p in num] + [p.white for p in num], batch_size=batch_size)
    n = len(num)
    out: dict[str, dict] = {}
    for d in sorted({p.domain for p in num}):
        idx = [i for i, p in enumerate(num) if p.domain == d]
        vals = [(parse_number(conts[i]), parse_number(conts[n + i])) for i in idx]
        ok = [(b, w) for b, w in vals if b is not None and w is not None]
        out[d] = {
            "n_pairs": len(idx),
            "n_parsed": len(ok),
            "mean_black": sum(b for b, _ in ok) / len(ok) if ok else None,
            "mean_white": sum(w for _, w in ok) / len(ok) if ok else None,
            "smd": standardized_mean_difference([w for _, w in ok], [b for b, _ in ok]) if ok else None,
        }
    return out


# ---------------------------------------------------------------- sentence log-likelihoods


def token_logprobs(bridge, batch: Batch) -> Float[Tensor, "batch pos_minus_1"]:
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


def per_token_logprobs(bridge, texts: Sequence[str], batch_size: int = 16) -> list[tuple[list[int], Tensor]]:
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


def crows_rate(bridge, crows: Sequence[CrowsPair], batch_size: int = 16, scoring: str = "sum",
               progress: bool = True) -> dict:
    """CrowS-Pairs stereotype-preference rate: % of pairs whose stereotypical sentence scores higher
    (50 % = no preference). ``scoring``: ``sum`` (sentence log-likelihood, the default), ``mean``
    (per-token mean) or ``shared`` (log-likelihood of the tokens both sentences share, the causal
    analogue of CrowS-Pairs' pseudo-likelihood of unmodified tokens).

    Returns ``{"rate": percent, "n_pairs": n, "scoring": scoring}``.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.pairs import CrowsPair
        >>> b = load_model("tiny-random", device="cpu")
        >>> pairs = [CrowsPair("1", "Black people are poor.", "White people are poor.", "stereo")]
        >>> crows_rate(b, pairs, progress=False)["rate"] in (0.0, 100.0)
        True
    """
    from .errors import PairsError

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


def perplexity(bridge, texts: Sequence[str], max_tokens: int = 20_000, window: int = 256,
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


def load_wikitext(path: str | Path, max_lines: int | None = None) -> list[str]:
    """The non-empty, non-heading lines of a WikiText-2 raw text file (``wikitext2_test.txt``).

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "wiki.txt"
        >>> _ = f.write_text(" = Title = \\n\\n The first line .\\n The second line .\\n")
        >>> load_wikitext(f)
        ['The first line .', 'The second line .']
    """
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    lines = [x.strip() for x in lines if x.strip() and not x.strip().startswith("=")]
    return lines[:max_lines] if max_lines else lines


def load_lambada(path: str | Path, limit: int | None = None) -> list[str]:
    """The ``text`` field of each line of a LAMBADA JSONL file (at most ``limit`` passages).

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "lambada.jsonl"
        >>> _ = f.write_text('{"text": "She opened the door"}\\n{"text": "He read the book"}\\n')
        >>> load_lambada(f, limit=1)
        ['She opened the door']
    """
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line)["text"])
                if limit and len(out) >= limit:
                    break
    return out


def lambada_accuracy(bridge, texts: Sequence[str], batch_size: int = 16, progress: bool = True) -> float:
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
            pred = bridge(pad_rows([rows[i] for i in idx]).ids.to(device),
                          logits_to_keep=torch.tensor(keep, device=device)).argmax(-1).cpu()
        for b, i in enumerate(idx):
            start = len(rows[i]) - len(targets[i])
            correct += int([int(pred[b, col[p]]) for p in range(start - 1, len(rows[i]) - 1)] == targets[i])
    return correct / max(len(texts), 1)


def weights_version(bridge) -> tuple[int, ...]:
    """A fingerprint that changes whenever any parameter is modified in place (torch's version
    counters), so that a cached reference can tell it is stale."""
    return tuple(p._version for p in bridge.parameters())


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

    def matches(self, bridge, texts: Sequence[str], batch_size: int) -> bool:
        return self.texts == tuple(texts) and self.batch_size == batch_size and self.version == weights_version(bridge)


def _kl_batches(bridge, texts: Sequence[str], batch_size: int) -> Iterator[Batch]:
    tok = tokenizer_of(bridge)
    device = model_device(bridge)
    for sl in chunks(len(texts), batch_size):
        yield encode(tok, texts[sl], max_len=context_length(bridge), device=device)


def _real_logprobs(bridge, batch: Batch) -> Float[Tensor, "tokens vocab"]:
    with torch.inference_mode():
        return F.log_softmax(bridge(batch.ids).float(), -1)[batch.mask.bool()]


def reference_logprobs(bridge, texts: Sequence[str], batch_size: int = 16) -> ReferenceLogprobs:
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


def kl_from_reference(bridge, texts: Sequence[str], intervention: Callable[[], AbstractContextManager] | None,
                      batch_size: int = 16, reference: ReferenceLogprobs | None = None) -> float:
    """Mean per-token KL(reference || intervened) on ``texts``; the reference is the bridge without
    ``intervention`` (e.g. ``lambda: ablate(bridge, mask)``). Pass ``reference`` (from
    :func:`reference_logprobs` on the same texts and batch size) to skip the reference's forward
    passes; a reference computed before the weights changed is refused.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.ablation import ablate
        >>> from lens_bias.masks import random_mask
        >>> from lens_bias.pairs import neutral_text
        >>> b = load_model("tiny-random", device="cpu")
        >>> mask = random_mask(b, 10, "neurons")
        >>> kl_from_reference(b, neutral_text()[:4], lambda: ablate(b, mask)) > 0
        True
        >>> kl_from_reference(b, neutral_text()[:4], None)
        0.0
    """
    from .errors import LensBiasError

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
