"""Optimal ablation: learn the constant each pruned unit outputs.

Zero ablation sets a pruned unit's output to 0, mean ablation to its mean over neutral text.
Neither is the constant that changes the model least. :func:`fit_constants` learns, for the units a
mask prunes, the constants that minimise the KL divergence of the pruned model's next-token
distributions from the unpruned model's on neutral text (Adam, from the means): optimal ablation,
with the KL to the original model as its loss.

A constant is the same for every input, so it carries nothing of the group word: what a unit
contributed *differently* for Black and White prompts stays removed, and only the part of its output
that does not depend on the input is given back. Whether that keeps the bias reduction is a
measurement (``benchmarks/optimal_ablation.py``), made on held-out pairs and WikiText-2, neither of
which the fit sees.

The constants have the layout of :func:`lens_bias.hooks.capture.mean_activations` (``neurons``
[n_layers, d_mlp], ``heads`` [n_layers, n_heads, d_head]; only the pruned entries differ from the
means), so they go wherever means go: ``ablate(bridge, mask, "mean", constants)`` simulates the
pruning and ``export_hf(bridge, mask, out, ablation="mean", means=constants)`` folds them into the
biases of ``down_proj`` / ``o_proj``, exactly (tested to 1e-5 in fp32).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..bridge import Bridge, model_device, tokenizer_of
from ..errors import MaskError
from ..hooks.ablation import ablation_hooks
from ..hooks.capture import mean_activations
from ..masks import PruningMask
from ..measures.capability import neutral_kl
from ..model.batching import encode
from ..vocab import KINDS


def constants_kl(bridge: Bridge, mask: PruningMask, constants: dict, texts: Sequence[str],
                 batch_size: int = 16) -> float:
    """The KL of :func:`neutral_kl` with ``mask``'s units set to ``constants``, over all of ``texts``
    (a token-weighted mean of the batches)."""
    tok = tokenizer_of(bridge)
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            chunk = list(texts[i:i + batch_size])
            tokens = int(encode(tok, chunk).mask.sum())
            total += float(neutral_kl(bridge, chunk,
                                      ablation_hooks(bridge, mask, "mean", constants))) * tokens
            n += tokens
    return total / max(n, 1)


def fit_constants(bridge: Bridge, mask: PruningMask, texts: Sequence[str], steps: int = 100, lr: float = 0.01,
                  batch_size: int = 16, init: dict | None = None, seed: int = 0,
                  progress: bool = True) -> tuple[dict[str, Tensor], dict]:
    """Learn the constants ``mask``'s pruned units output (see the module docstring).

    ``steps`` Adam steps (learning rate ``lr``) on batches of ``batch_size`` of ``texts`` (drawn
    with ``seed``), from ``init`` (default: the means over ``texts``). The fit never ends worse than
    it starts: the KL over all of ``texts`` is measured before and after, and the better constants
    are returned.

    Returns ``(constants, info)``: the constants (float32, CPU, the layout of
    :func:`lens_bias.hooks.capture.mean_activations`) and ``{"kl_init", "kl_fit", "kept", "losses"}``
    (the KL over ``texts`` before and after, which constants were kept, and each step's batch KL).
    """
    if steps < 0 or lr <= 0 or batch_size < 1 or not texts:
        raise MaskError("fit_constants needs texts, steps >= 0, lr > 0 and batch_size >= 1")
    mask.check(bridge)
    init = init if init is not None else mean_activations(bridge, texts)
    params = {k: init[k].detach().float().clone().to(model_device(bridge)).requires_grad_(True)
              for k in KINDS}
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(steps), desc="ablation constants", leave=False) if progress else range(steps):
        idx = torch.randperm(len(texts), generator=gen)[:batch_size].tolist()
        with torch.enable_grad():
            loss = neutral_kl(bridge, [texts[i] for i in idx], ablation_hooks(bridge, mask, "mean", params))
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for p, g in zip(params.values(), grads, strict=True):
            p.grad = torch.zeros_like(p) if g is None else g
        opt.step()
        losses.append(float(loss.detach()))
    fitted = {k: v.detach().cpu().float() for k, v in params.items()}
    start = {k: init[k].detach().cpu().float() for k in KINDS}
    kl_init = constants_kl(bridge, mask, start, texts, batch_size)
    kl_fit = constants_kl(bridge, mask, fitted, texts, batch_size) if steps else kl_init
    kept = "fit" if kl_fit <= kl_init else "init"
    return (fitted if kept == "fit" else start), {"kl_init": kl_init, "kl_fit": kl_fit, "kept": kept,
                                                   "losses": losses}
