"""Streamed per-neuron and per-head statistics through TransformerLens hooks.

Statistics are running sums over batches (memory does not grow with the number of prompts) and
padded positions never enter them (:attr:`lens_bias.model.batching.Batch.mask`). The pair scan
tokenizes every prompt once and batches pairs by length (:meth:`lens_bias.model.batching.PairTokens.batches`),
so its batches carry little padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from ..bridge import Bridge, context_length, model_device, tokenizer_of
from ..model.batching import chunks, encode, gather_last, tokenize_pairs
from ..prompts.pairs import PairSet
from .components import head_hook, neuron_hook
from .interventions import attached


def _progress(it, desc, progress):
    return tqdm(list(it), desc=desc, leave=False) if progress else it


def mean_activations(bridge: Bridge, texts: Sequence[str], batch_size: int = 16,
                     progress: bool = False) -> dict[str, Tensor]:
    """Mean activation of every neuron [n_layers, d_mlp] and head output [n_layers, n_heads, d_head]
    over all (unpadded) tokens of ``texts``: the reference values of mean ablation.

    Returns ``{"neurons": Tensor, "heads": Tensor}`` (float32, CPU), accumulated in float64.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.prompts.pairs import neutral_text
        >>> b = load_model("tiny-random", device="cpu")
        >>> means = mean_activations(b, neutral_text()[:8])
        >>> tuple(means["neurons"].shape), tuple(means["heads"].shape)
        ((2, 128), (2, 4, 16))
    """
    cfg = bridge.cfg
    tok = tokenizer_of(bridge)
    sums = {
        "neurons": torch.zeros(cfg.n_layers, cfg.d_mlp, dtype=torch.float64),
        "heads": torch.zeros(cfg.n_layers, cfg.n_heads, cfg.d_head, dtype=torch.float64),
    }
    count = 0
    state = {}

    def make(kind, layer):
        def fn(act, hook):
            m = state["mask"].to(act.device, act.dtype)
            s = torch.einsum("bp,bp...->...", m, act).double().cpu()
            sums[kind][layer] += s
        return fn

    hooks = [(neuron_hook(L), make("neurons", L)) for L in range(cfg.n_layers)]
    hooks += [(head_hook(L), make("heads", L)) for L in range(cfg.n_layers)]
    device = model_device(bridge)
    with attached(bridge, hooks), torch.inference_mode():
        for sl in _progress(chunks(len(texts), batch_size), "mean activations", progress):
            batch = encode(tok, texts[sl], max_len=context_length(bridge), device=device)
            state["mask"] = batch.mask
            bridge(batch.ids, logits_to_keep=1)
            count += int(batch.mask.sum())
    return {k: (v / max(count, 1)).float() for k, v in sums.items()}


def last_token_activations(bridge: Bridge, pairs: PairSet, batch_size: int = 32, progress: bool = False,
                           max_tokens: int | None = -1):
    """Streamed sums over pairs, at each prompt's last token: |a_B - a_W| per neuron and per head
    (L2 over d_head), and the squared norms of a_B and a_W per neuron (for Wanda-style scores).

    Batches hold at most ``batch_size`` pairs and ``max_tokens`` padded tokens (default: the
    device's :data:`lens_bias.model.batching.BATCH_MAX_TOKENS`; ``None``: no cap), so memory depends on
    neither the number of pairs nor their lengths.

    Returns a dict of float tensors divided by the number of pairs (means), keys ``neuron_absdiff``
    [L, d_mlp], ``head_absdiff`` [L, H], ``neuron_sq_black``/``neuron_sq_white`` [L, d_mlp].

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> s = last_token_activations(b, build_pairs(["hiring"])[:4])
        >>> {k: tuple(v.shape) for k, v in s.items()}["head_absdiff"]
        (2, 4)
    """
    cfg = bridge.cfg
    L = cfg.n_layers
    device = model_device(bridge)
    # the running sums stay on the model's device (float64): one transfer at the end, not one per hook
    acc = {
        "neuron_absdiff": torch.zeros(L, cfg.d_mlp, dtype=torch.float64, device=device),
        "head_absdiff": torch.zeros(L, cfg.n_heads, dtype=torch.float64, device=device),
        "neuron_sq_black": torch.zeros(L, cfg.d_mlp, dtype=torch.float64, device=device),
        "neuron_sq_white": torch.zeros(L, cfg.d_mlp, dtype=torch.float64, device=device),
    }
    state = {}

    def neuron_fn(layer):
        def fn(act, hook):
            last = gather_last(act, state["lengths"]).double()
            n = last.shape[0] // 2
            # .to(device): a no-op unless the model is split over devices
            acc["neuron_absdiff"][layer] += (last[:n] - last[n:]).abs().sum(0).to(device)
            acc["neuron_sq_black"][layer] += (last[:n] ** 2).sum(0).to(device)
            acc["neuron_sq_white"][layer] += (last[n:] ** 2).sum(0).to(device)
        return fn

    def head_fn(layer):
        def fn(z, hook):
            last = gather_last(z, state["lengths"]).double()
            n = last.shape[0] // 2
            acc["head_absdiff"][layer] += (last[:n] - last[n:]).norm(dim=-1).sum(0).to(device)
        return fn

    hooks = ([(neuron_hook(i), neuron_fn(i)) for i in range(L)]
             + [(head_hook(i), head_fn(i)) for i in range(L)])
    tokens = tokenize_pairs(bridge, pairs)
    # a batch holds the Black rows of some pairs, then the White rows of the same pairs
    with attached(bridge, hooks), torch.inference_mode():
        for idx in _progress(tokens.batches(batch_size, device, max_tokens), "activations", progress):
            batch = tokens.batch(idx, device)
            state["lengths"] = batch.lengths
            bridge(batch.ids, logits_to_keep=1)
    n = max(len(pairs), 1)
    return {k: (v / n).float().cpu() for k, v in acc.items()}


def activation_diff(bridge: Bridge, pairs: PairSet,
                    batch_size: int = 32) -> dict[str, Float[Tensor, " n_layers"]]:
    """optiPfair-style activation difference: mean |a_B - a_W| at the last token, per layer, for MLP
    neurons and for head outputs (the measure that grows with depth in Fairness Pruning).

    Returns ``{"neurons": Tensor[n_layers], "heads": Tensor[n_layers]}``; a head's difference is the
    L2 norm over ``d_head``.

    Examples:
        >>> from lens_bias import build_pairs, load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> d = activation_diff(b, build_pairs(["hiring"])[:4])
        >>> tuple(d["neurons"].shape), bool((d["heads"] >= 0).all())
        ((2,), True)
    """
    s = last_token_activations(bridge, pairs, batch_size)
    return {"neurons": s["neuron_absdiff"].mean(-1), "heads": s["head_absdiff"].mean(-1)}
