"""Bias metrics on next-token distributions, and :func:`measure`, which computes them for every pair.

Per pair, at each prompt's last token (p_B for the Black variant, p_W for the White one):

* ``js``: Jensen-Shannon divergence in nats, symmetric, 0 iff p_B == p_W (the headline metric);
* ``logit_gap``: [log P(pos) - log P(neg)] under W minus the same under B (signed; needs pos/neg);
* ``numeric``: greedy-decoded number after a ``$`` prompt; disparity as a standardized mean
  difference (W - B) across pairs, as in Ma et al.;
* ``activation_diff`` lives in :mod:`lens_bias.hooks.capture` (it needs hooks).

The model runs on the pairs through :mod:`lens_bias.model.batching`. Capability metrics (CrowS-Pairs,
perplexity, LAMBADA, KL on neutral text) live in :mod:`lens_bias.measures.capability`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from ..bridge import Bridge, model_device, tokenizer_of
from ..model.batching import chunks, encode, gather_last, iter_pair_logprobs
from ..model.chat import chat_enabled
from ..prompts.pairs import ContrastivePair, PairSet
from ..stats import bootstrap_ci

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
        >>> round(standardized_mean_difference([110.0, 120.0, 130.0], [100.0, 110.0, 120.0]), 3)
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


# ---------------------------------------------------------------- measure


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
    templates: list[str] = field(default_factory=list)  # each pair's template: the bootstrap's clusters

    def mean(self, metric: str = "js", domain: str | None = None) -> float | None:
        """Mean of ``metric`` over the pairs where it is defined (of ``domain`` only, if given);
        ``None`` if there are none."""
        vals = [
            v for v, d in zip(self.values[metric], self.domains, strict=True)
            if v is not None and (domain is None or d == domain)
        ]
        return sum(vals) / len(vals) if vals else None

    def interval(self, metric: str = "js", domain: str | None = None,
                 seed: int = 0) -> tuple[float, float] | None:
        """95 % bootstrap interval of :meth:`mean`, resampling templates (each pair its own cluster
        when the templates are not known); ``None`` where the metric is defined for no pair."""
        keep = [i for i, (v, d) in enumerate(zip(self.values[metric], self.domains, strict=True))
                if v is not None and (domain is None or d == domain)]
        groups = [self.templates[i] for i in keep] if self.templates else None
        return bootstrap_ci([self.values[metric][i] for i in keep], groups, seed=seed)

    def summary(self, ci: bool = False) -> dict:
        """``{"n_pairs", "all": {metric: mean}, <domain>: {metric: mean, "n_pairs"}, ...}``, plus
        ``numeric_smd`` per domain and ``multi_token_words`` when present (what ``lens-bias measure
        --json`` prints); with ``ci``, each mean's 95 % interval as ``<metric>_ci`` (:meth:`interval`).

        Examples:
            >>> m = PairMetrics(["a"], ["hiring"], {"js": [0.01], "logit_gap": [None]})
            >>> m.summary()  # doctest: +NORMALIZE_WHITESPACE
            {'n_pairs': 1, 'all': {'js': 0.01, 'logit_gap': None},
             'hiring': {'js': 0.01, 'logit_gap': None, 'n_pairs': 1}}
            >>> m.summary(ci=True)["all"]
            {'js': 0.01, 'logit_gap': None, 'js_ci': (0.01, 0.01), 'logit_gap_ci': None}
        """
        out: dict = {"n_pairs": len(self.ids), "all": {m: self.mean(m) for m in self.values}}
        for d in sorted(set(self.domains)):
            out[d] = {m: self.mean(m, d) for m in self.values}
            out[d]["n_pairs"] = sum(x == d for x in self.domains)
        if ci:
            for d in ["all", *sorted(set(self.domains))]:
                out[d].update({f"{m}_ci": self.interval(m, None if d == "all" else d) for m in self.values})
        if self.numeric:
            for d, v in self.numeric.items():
                out.setdefault(d, {})["numeric_smd"] = v["smd"]
        if self.multi_token_words:
            out["multi_token_words"] = self.multi_token_words
        return out

    def to_pandas(self):
        """A pandas DataFrame with one row per pair: ``id``, ``domain``, ``template`` (None when
        the templates are not known) and one column per metric of ``values`` (NaN where it does
        not apply). Needs pandas (``pip install 'lens_bias[pandas]'``).

        Examples:
            >>> m = PairMetrics(["a", "b"], ["hiring", "finance"], {"js": [0.01, 0.03]},
            ...                 templates=["t1", "t2"])
            >>> m.to_pandas().values.tolist()
            [['a', 'hiring', 't1', 0.01], ['b', 'finance', 't2', 0.03]]
        """
        from ..frames import require_pandas

        pd = require_pandas("PairMetrics.to_pandas")
        return pd.DataFrame({"id": self.ids, "domain": self.domains,
                             "template": self.templates or [None] * len(self.ids), **self.values})


def measure(bridge: Bridge, pairs: PairSet, batch_size: int = 32, numeric: bool = False,
            progress: bool = True) -> PairMetrics:
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
    out = PairMetrics([p.id for p in pairs], [p.domain for p in pairs], {"js": js, "logit_gap": gap}, multi,
                      templates=[p.template for p in pairs])
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


def greedy_continuations(bridge: Bridge, prompts: Sequence[str], max_new_tokens: int = 8,
                         batch_size: int = 32) -> list[str]:
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
        batch = encode(tok, prompts[sl], device=device, chat=chat_enabled(bridge))
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


def numeric_disparity(bridge: Bridge, pairs: PairSet, batch_size: int = 32) -> dict[str, dict]:
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
    conts = greedy_continuations(bridge, [p.black for p in num] + [p.white for p in num],
                                 batch_size=batch_size)
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
