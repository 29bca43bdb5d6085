"""Sampled (or greedy) continuations with the bridge's hooks active and a key-value cache.

Each prompt runs once; its ``k`` samples continue from its cache one token a step
(:mod:`lens_bias.model.kv_cache`), so a pruning simulated by ablation hooks writes exactly what
the exported model would. Prompts of similar length share a batch without padding: the batch's
shortest length runs as one pass, then each row is fed its own remaining prompt tokens before its
samples (so the cache is exact).

**Common random numbers.** Every (prompt, sample, step) draws its token with one uniform number
fixed by ``seed`` and the prompt's position, not by the batch: the same prompts sampled before and
after a pruning share their randomness, and where the two models' distributions agree they pick the
same token. That makes the before / after difference a paired one with much less noise than two
independent samples. A token is drawn by inverting, at the uniform, the cumulative distribution of
the ``top_k`` most likely tokens (and of their nucleus of ``top_p``), renormalized.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from ..bridge import Bridge, model_device, tokenizer_of
from .batching import chunks, tokenize, widened
from .chat import chat_enabled
from .kv_cache import continue_from, prompt_cache


def pick_tokens(logits: Float[Tensor, "rows vocab"], u: Float[Tensor, " rows"], top_k: int = 50,
                top_p: float = 1.0, temperature: float = 1.0) -> Int[Tensor, " rows"]:
    """One token per row: the argmax when ``temperature`` is 0; else, at ``temperature``, among the
    ``top_k`` most likely tokens (0: all) the nucleus of ``top_p`` (the most likely whose
    probabilities add up to it), renormalized and sampled by inverting its cumulative
    distribution at ``u`` (in [0, 1)). The defaults are Hugging Face ``generate``'s sampling.

    Examples:
        >>> import torch
        >>> logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
        >>> [int(pick_tokens(logits, torch.tensor([u]))) for u in (0.1, 0.6, 0.9)]
        [0, 1, 2]
        >>> int(pick_tokens(logits, torch.tensor([0.9]), top_p=0.7))  # the nucleus is {0, 1}
        1
        >>> int(pick_tokens(logits, torch.tensor([0.9]), top_k=1))
        0
    """
    if temperature == 0:
        return logits.argmax(-1)
    probs = F.softmax(widened(logits).double() / temperature, -1)
    if 0 < top_k < probs.shape[-1]:
        p, idx = probs.topk(top_k, -1)  # sorted, descending
    else:
        p, idx = probs.sort(-1, descending=True)
    cum = p.cumsum(-1)
    p = torch.where(cum - p < top_p * cum[:, -1:], p, torch.zeros_like(p))  # the first token always stays
    cum = p.cumsum(-1)
    target = (u.to(cum)[:, None] * cum[:, -1:]).clamp(max=cum[:, -1:] * (1 - 1e-12))
    j = torch.searchsorted(cum, target).clamp(max=p.shape[-1] - 1)
    return idx.gather(-1, j)[:, 0]


def sample_continuations(bridge: Bridge, prompts: Sequence[str], k: int = 1, max_new_tokens: int = 20,
                         seed: int = 0, top_k: int = 50, top_p: float = 1.0, temperature: float = 1.0,
                         batch_size: int = 32, progress: bool = False) -> list[list[list[int]]]:
    """``k`` continuations of each prompt, ``max_new_tokens`` token ids each (``[prompt][sample]``),
    with the hooks attached to ``bridge`` active; ``temperature=0``: greedy (the ``k`` samples are
    equal). Prompts are tokenized as :func:`lens_bias.measures.metrics.greedy_continuations` does
    (BOS first, the chat template when the bridge uses it). Cut them at EOS with :func:`decode`."""
    tok = tokenizer_of(bridge)
    rows = tokenize(tok, list(prompts), True, None, chat_enabled(bridge))
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(len(rows), k, max_new_tokens, generator=gen, dtype=torch.float64)
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i]), i))
    batches = [order[sl] for sl in chunks(len(order), max(1, batch_size // k))]
    out: list[list[list[int]]] = [[] for _ in rows]
    for idx in tqdm(batches, desc="generate", leave=False) if progress else batches:
        ids = _sample_batch(bridge, [rows[i] for i in idx], u[idx], k, (top_k, top_p, temperature))
        for j, i in enumerate(idx):
            out[i] = ids[j]
    return out


def _sample_batch(bridge: Bridge, rows: list[list[int]], u: Tensor, k: int,
                  how: tuple[int, float, float]) -> list[list[list[int]]]:
    """Prompts of different lengths in one batch without padding: the shortest length runs as one
    pass, then every row steps one token at a time, fed its own next prompt token while it has one
    (forced) and its sampled token after; each row's sequence is exactly its prompt and samples."""
    dev, new = model_device(bridge), u.shape[-1]
    lengths = torch.tensor([len(r) for r in rows]).repeat_interleave(k)
    lo, steps = int(lengths.min()), int(lengths.max()) + new - int(lengths.min())
    forced = torch.zeros(len(rows) * k, int(lengths.max()), dtype=torch.long)
    for i, r in enumerate(rows):
        forced[i * k:(i + 1) * k, :len(r)] = torch.tensor(r)
    draws = u.reshape(len(rows) * k, new)
    picked = torch.zeros(len(rows) * k, new, dtype=torch.long)
    span = torch.arange(len(lengths))
    with torch.inference_mode():
        logits, cache = prompt_cache(bridge, torch.tensor([r[:lo] for r in rows], device=dev))
        cache.batch_repeat_interleave(k)
        last = logits[:, -1].repeat_interleave(k, 0)
        for step in range(steps):
            j = lo + step - lengths  # the sample this step draws, per row (< 0: still in the prompt)
            nxt = pick_tokens(last, draws[span, j.clamp(0, new - 1)], *how).cpu()
            ok = (j >= 0) & (j < new)
            picked[span[ok], j[ok]] = nxt[ok]
            nxt = torch.where(j < 0, forced[:, min(lo + step, forced.shape[1] - 1)], nxt)
            if step + 1 < steps:
                last = continue_from(bridge, nxt[:, None].to(dev), cache)[:, -1]
    return picked.reshape(len(rows), k, new).tolist()


def decode(tokenizer, ids: Sequence[int]) -> str:
    """The text of generated ``ids`` up to the first EOS (special tokens skipped)."""
    eos = tokenizer.eos_token_id
    ids = list(ids)
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True)
