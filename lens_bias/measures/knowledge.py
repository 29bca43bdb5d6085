"""The knowledge probe: does the model still know facts about Black and White people, their
history and culture (:mod:`lens_bias.prompts.knowledge`)? A pruning that removes this has damaged
the model, not debiased it.

**How an answer is scored.** The prompt (after the prefix token of
:func:`lens_bias.measures.capability.prefix_token`) is followed by ``" " + answer``, each tokenized
without special tokens, as lm-evaluation-harness scores a continuation:

* ``logprob``: the answer's log-probability, the sum over its tokens of log P(token | prompt,
  earlier answer tokens), in nats;
* ``rank``: the answer's worst rank over its tokens (0: every token was the most likely one), so
  the answer is *in the top k* when each of its tokens is among the k most likely given the prompt
  and the answer's earlier tokens; for k = 1 that is exactly "greedy decoding writes the answer".

**The scores:** the mean log-probability (all items, and the ``black`` and ``white`` items apart),
top-1 and top-k accuracy in %, each with a bootstrap interval over items (every item is its own
fact). **Changes** (before / after): the paired bootstrap over items; the mean log-probability with
the sign-flip permutation test, the accuracies with the exact McNemar test.
:func:`knowledge_damage` names the measures that fell beyond noise: the report's flag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from ..bridge import Bridge, context_length, model_device, tokenizer_of
from ..errors import PairsError
from ..model.batching import check_finite, chunks, length_order, pad_rows, widened
from ..prompts.knowledge import KnowledgeItem
from ..stats import Change, bootstrap_ci, paired_change
from .capability import prefix_token

DEFAULT_K = 10  # the k of top-k accuracy
# summary key -> the changes of knowledge_changes that can flag damage (logprob: overall and per group)
DAMAGE_KEYS = ("know_logprob", "know_logprob_black", "know_logprob_white", "know_top1", "know_topk")


def tokenized(bridge: Bridge, items: Sequence[KnowledgeItem]) -> tuple[list[list[int]], list[list[int]]]:
    """Each item's prompt (after the prefix token) and its answer (``" " + answer``), as token ids."""
    tok = tokenizer_of(bridge)
    pre = prefix_token(tok)
    prompts = tok([i.prompt for i in items], add_special_tokens=False)["input_ids"] if items else []
    answers = tok([" " + i.answer for i in items], add_special_tokens=False)["input_ids"] if items else []
    for it, p, a in zip(items, prompts, answers, strict=True):
        if not p or not a or len(p) + len(a) + 1 > context_length(bridge):
            raise PairsError(f"knowledge item {it.id} cannot be scored (empty, or longer than the context)")
    return [[pre, *p] for p in prompts], answers


def answer_logprob_ranks(bridge: Bridge, prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                         batch_size: int = 16) -> tuple[Float[Tensor, " items"], Int[Tensor, " items"]]:
    """Each answer's summed log-probability after its prompt and its worst rank over its tokens
    (the number of tokens more likely than it), one forward pass per batch of right-padded rows."""
    rows = [[*p, *a] for p, a in zip(prompts, answers, strict=True)]
    logprob = torch.zeros(len(rows), dtype=torch.float64)
    rank = torch.zeros(len(rows), dtype=torch.long)
    order = length_order([len(r) for r in rows])
    for sl in chunks(len(rows), batch_size):
        idx = order[sl]
        batch = pad_rows([rows[i] for i in idx]).to(model_device(bridge))
        with torch.inference_mode():
            logits = widened(bridge(batch.ids))
            check_finite(logits)
            logp = F.log_softmax(logits, -1)
        for j, i in enumerate(idx):
            start, n = len(prompts[i]), len(answers[i])
            tgt = torch.tensor(list(answers[i]), device=logp.device)
            lp = logp[j, start - 1:start - 1 + n]  # the position before each answer token predicts it
            chosen = lp.gather(-1, tgt[:, None])
            logprob[i] = chosen.double().sum().cpu()
            rank[i] = int((lp > chosen).sum(-1).max())
    return logprob, rank


@dataclass
class KnowledgeScores:
    """Per item: the answer's log-probability and worst rank, its group and id; ``k`` of top-k.
    :meth:`summary` gives the scores with their intervals."""

    logprob: np.ndarray
    rank: np.ndarray
    groups: list[str]
    ids: list[str]
    k: int = DEFAULT_K

    def top(self, k: int) -> np.ndarray:
        """1.0 where the answer is within the top ``k`` (every token), else 0.0."""
        return (self.rank < k).astype(np.float64)

    def columns(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """What each score averages, and its index of items (``None``: all): the log-probability
        (all, black, white) and top-1 / top-k in %."""
        g = np.asarray(self.groups)
        return {"know_logprob": (self.logprob, None),
                "know_logprob_black": (self.logprob, np.flatnonzero(g == "black")),
                "know_logprob_white": (self.logprob, np.flatnonzero(g == "white")),
                "know_top1": (100.0 * self.top(1), None),
                "know_topk": (100.0 * self.top(self.k), None)}

    def summary(self, n_boot: int = 2000, seed: int = 0) -> dict:
        """``know_logprob`` (mean, nats), ``know_logprob_black`` / ``_white``, ``know_top1`` and
        ``know_topk`` (%), each with its ``_ci``; ``know_n`` items and ``know_k``."""
        out: dict = {"know_n": len(self.ids), "know_k": self.k}
        for name, (v, idx) in self.columns().items():
            x = v if idx is None else v[idx]
            if len(x):
                out[name] = float(x.mean())
                out[f"{name}_ci"] = bootstrap_ci(x, n_boot=n_boot, seed=seed)
        return out


def knowledge_scores(bridge: Bridge, items: Sequence[KnowledgeItem], k: int = DEFAULT_K,
                     batch_size: int = 16) -> KnowledgeScores:
    """Every item's answer scored (see the module docstring)."""
    prompts, answers = tokenized(bridge, items)
    lp, rank = answer_logprob_ranks(bridge, prompts, answers, batch_size)
    return KnowledgeScores(lp.numpy(), rank.numpy(), [i.group for i in items], [i.id for i in items], k)


def knowledge_changes(before: KnowledgeScores, after: KnowledgeScores, n_boot: int = 2000,
                      seed: int = 0) -> dict[str, Change]:
    """The paired change of every score between two scorings of the same items."""
    out = {}
    cb, ca = before.columns(), after.columns()
    for name, (vb, idx) in cb.items():
        va = ca[name][0]
        if idx is not None:
            vb, va = vb[idx], va[idx]
        if len(vb):
            out[name] = paired_change(vb, va, test="mcnemar" if "top" in name else "permutation",
                                      n_boot=n_boot, seed=seed)
    return out


def knowledge_damage(tests: dict, prefix: str = "") -> list[str]:
    """The probe's measures that fell beyond noise in a ``tests`` block (change dicts, as
    ``metrics.json`` holds them; ``prefix``: ``"random_"`` for the random mask's).

    Examples:
        >>> t = {"know_logprob": {"diff": -0.4, "within_noise": False},
        ...      "know_top1": {"diff": 2.0, "within_noise": False},
        ...      "know_topk": {"diff": -3.0, "within_noise": True}}
        >>> knowledge_damage(t)
        ['know_logprob']
    """
    return [k for k in DAMAGE_KEYS
            if (t := tests.get(prefix + k)) and t.get("within_noise") is False and (t.get("diff") or 0) < 0]
