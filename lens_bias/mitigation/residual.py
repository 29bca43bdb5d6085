"""The residual stream as the methods that edit it see it: where it is hooked, what is read from it
on the train pairs, and how a setting is chosen on the train split.

* :func:`resid_hook` names the residual stream entering layer ``L`` (``blocks.L.hook_resid_pre``;
  ``L = n_layers`` is the stream entering the final norm, ``ln_final.hook_in``).
* :func:`pair_residuals` reads it on both prompts of every pair: at each prompt's last token, or at
  every real position with the prompt's group as a label (what LEACE fits on).
* :func:`candidate_layers` and :func:`choose` pick a layer and a strength on the train pairs only:
  the setting with the lowest train JS among those whose KL on the tuning half of the bundled
  neutral text stays within a budget (the evaluation's own neutral lines are never read).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from ..bridge import Bridge, model_device
from ..hooks.interventions import attached
from ..measures.capability import kl_from_reference, reference_logprobs
from ..measures.metrics import measure
from ..model.batching import gather_last, tokenize_pairs
from ..prompts.pairs import PairSet, neutral_text

KL_BUDGET = 0.02
"""Default cap (nats a token) on the KL from the unmodified model, on the tuning lines of the neutral
text, of a setting :func:`choose` may pick: about ln(1.02), the rise in mean NLL of a +2 % perplexity."""


def resid_hook(bridge: Bridge, layer: int) -> str:
    """The hook of the residual stream entering ``layer`` (``n_layers``: entering the final norm).

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random")
        >>> resid_hook(b, 1), resid_hook(b, 2)
        ('blocks.1.hook_resid_pre', 'ln_final.hook_in')
    """
    if not 0 <= layer <= bridge.cfg.n_layers:
        raise ValueError(f"layer {layer} is outside 0..{bridge.cfg.n_layers}")
    return "ln_final.hook_in" if layer == bridge.cfg.n_layers else f"blocks.{layer}.hook_resid_pre"


def candidate_layers(bridge: Bridge) -> list[int]:
    """The layers a residual-stream method is tried at: a quarter, half and three quarters deep.

    Examples:
        >>> from lens_bias import load_model
        >>> candidate_layers(load_model("tiny-random"))
        [1]
    """
    n = bridge.cfg.n_layers
    return sorted({min(max(round(n * f), 1), n - 1) for f in (0.25, 0.5, 0.75)})


@dataclass
class Residuals:
    """Residual-stream vectors read on pairs: ``black`` and ``white`` [n_layers_read, n, d_model] at the
    last token; or, with ``positions="all"``, ``x`` [n_layers_read, rows, d_model] and ``z`` [rows]
    (1 = a Black prompt's position)."""

    layers: list[int]
    black: Tensor | None = None
    white: Tensor | None = None
    x: Tensor | None = None
    z: Tensor | None = None

    def mean_diff(self) -> Float[Tensor, "n_layers_read d_model"]:
        """Mean over pairs of the Black minus the White prompt's last-token vector, per layer read."""
        return (self.black - self.white).mean(1)


@torch.no_grad()
def pair_residuals(bridge: Bridge, pairs: PairSet, layers: Sequence[int], positions: str = "last",
                   batch_size: int = 16) -> Residuals:
    """The residual stream entering each of ``layers`` on both prompts of every pair, in float32 on the
    CPU: at the last token (``positions="last"``, pairs in their order) or at every real token
    (``"all"``, labelled by group)."""
    if positions not in ("last", "all"):
        raise ValueError(f"positions must be 'last' or 'all'; got {positions!r}")
    layers = list(layers)
    tokens = tokenize_pairs(bridge, pairs)
    device = model_device(bridge)
    got: dict[int, list[Tensor]] = {layer: [] for layer in layers}
    order: list[int] = []
    labels: list[Tensor] = []
    state: dict = {}

    def grab(layer: int) -> Callable:
        def fn(act, hook):
            a = act.detach().float()
            got[layer].append(gather_last(a, state["lengths"]).cpu() if positions == "last"
                              else a[state["mask"]].cpu())
        return fn

    with attached(bridge, [(resid_hook(bridge, layer), grab(layer)) for layer in layers]):
        for idx in tokens.batches(batch_size, device):
            batch = tokens.batch(idx, device)
            real = batch.mask.bool()
            state.update(lengths=batch.lengths, mask=real)
            bridge(batch.ids, return_type=None)
            order += idx
            rows = (torch.arange(2 * len(idx), device=real.device) < len(idx))[:, None].expand_as(real)
            labels.append(rows[real].float().cpu())
    if positions == "all":
        return Residuals(layers, x=torch.stack([torch.cat(got[layer]) for layer in layers]),
                         z=torch.cat(labels))
    black, white = [], []
    inv = torch.argsort(torch.tensor(order))  # batch order -> pair order
    for layer in layers:  # each batch: its n Black rows, then the same pairs' White rows
        halves = [t.chunk(2) for t in got[layer]]
        black.append(torch.cat([h[0] for h in halves])[inv])
        white.append(torch.cat([h[1] for h in halves])[inv])
    return Residuals(layers, black=torch.stack(black), white=torch.stack(white))


@dataclass
class Tuning:
    """What :func:`choose` compares settings on: train pairs, the neutral tuning lines and their
    unmodified log-probs, and the KL budget."""

    pairs: PairSet
    neutral: list[str]
    reference: object
    kl_budget: float = KL_BUDGET

    @classmethod
    def of(cls, bridge: Bridge, train: PairSet, per_domain: int = 8, seed: int = 0,
           kl_budget: float = KL_BUDGET) -> Tuning:
        """``per_domain`` train pairs a domain, and the neutral lines the evaluation does not read
        (it reads every third line, :func:`lens_bias.measures.evaluation.standard_evalset`)."""
        lines = [t for i, t in enumerate(neutral_text()) if i % 3]
        return cls(train.sample(per_domain, seed), lines, reference_logprobs(bridge, lines), kl_budget)


def train_js(bridge: Bridge, pairs: PairSet, hooks: list) -> float:
    """Mean JS of ``pairs`` with ``hooks`` attached."""
    with attached(bridge, hooks):
        return measure(bridge, pairs, progress=False).mean("js")


def choose(bridge: Bridge, tuning: Tuning, settings: dict[str, list]) -> tuple[str, list[dict]]:
    """The setting (a key of ``settings``: name -> hooks) with the lowest train JS among those whose
    neutral KL is within the budget (the lowest-KL one when none is); returns its name and every
    setting's ``{"setting", "train_js", "kl"}``."""
    tried = []
    for name, hooks in settings.items():
        kl = kl_from_reference(bridge, tuning.neutral, lambda h=hooks: attached(bridge, h),
                               reference=tuning.reference)
        tried.append({"setting": name, "train_js": train_js(bridge, tuning.pairs, hooks), "kl": kl})
    ok = [t for t in tried if t["kl"] <= tuning.kl_budget]
    best = min(ok, key=lambda t: t["train_js"]) if ok else min(tried, key=lambda t: t["kl"])
    return best["setting"], tried
