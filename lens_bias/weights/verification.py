"""Is the materialized model the simulated one? The check behind every export.

A mask is simulated with hooks (:func:`lens_bias.hooks.ablation.ablate`) and materialized into the
weights (:func:`lens_bias.weights.materialize.materialize`). Both should give the same logits. They are
computed by two code paths, though (the bridge's hooked modules and a plain Hugging Face forward),
which may pick other kernels and reduction orders: on a CPU in float32 with the eager attention
kernel they agree bit for bit, on a GPU an 8B-parameter model differs by about 1e-4 in float32 and
by far more in bfloat16, whatever the mask.

So the difference is judged against two measured quantities, on the same texts:

* **rounding** ``r``: max |logit difference| between the bridge and the *unpruned* clean HF model
  (same weights, no mask): what the two code paths disagree by on their own, at this dtype and
  device;
* **effect** ``e``: max |logit difference| between the unpruned and the simulated bridge: how much
  the mask changes the model.

The rule: the check passes when the materialized-vs-simulated difference ``d`` is at most
``max(atol, 4 r)`` (``atol`` = 1e-5 by default, the float32 floor) **and**, for zero-mode
materialization, the weights are exactly the source's with the mask's slices zeroed
(:func:`weight_problems`: exact, whatever the dtype). The logit comparison is *conclusive* when the
mask's effect is more than twice its tolerance (``e > 2 tol``): then a model that ignored the mask
would fail it on its own. In bfloat16 on a GPU the rounding can be as large as a small mask's
effect (measured: 0.38 against 0.80 on a random Llama-3-8B shape); the report then says that the
logit comparison was not conclusive and the exact weight check decides. Never a silent pass. A mask
off by one unit fails both checks in float32 (tests on tiny-random and SmolLM2) and the weight check
at any dtype.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..bridge import Bridge, model_device, tokenizer_of
from ..errors import ChoiceError, MaskError
from ..hooks.ablation import ablate
from ..masks import PruningMask
from ..model.layout import unit_channels
from ..vocab import MATERIALIZATIONS, check_ablation, check_choice, renamed
from .materialize import DEFAULT_TEXTS, bridge_tensors, check_fits, clean_hf_model, materialize, pruned

ROUNDING_FACTOR = 4.0  # the tolerance is this many times the measured rounding between the two paths
ABS_FLOOR = 1e-5  # float32 floor: differences below this always pass


@dataclass(frozen=True)
class Verification:
    """The outcome of comparing a materialized model with the simulation (see the module docstring).

    Examples:
        >>> v = Verification(max_diff=2e-5, rounding=1e-5, effect=0.3, tolerance=4e-5, dtype="torch.bfloat16",
        ...                  device="cuda:0")
        >>> v.ok, v.conclusive
        (True, True)
        >>> Verification(0.0, 0.0, 1e-6, 1e-5, "torch.float32", "cpu").conclusive
        False
    """

    max_diff: float  # materialized vs simulated logits (max abs)
    rounding: float | None  # unpruned HF model vs bridge: the paths' own difference (None: not measured)
    effect: float  # unpruned vs simulated bridge: the mask's own effect on the logits
    tolerance: float
    dtype: str
    device: str
    # None: weights not checked (structural, or verify() alone)
    weight_problems: tuple[str, ...] | None = None

    @property
    def ok(self) -> bool:
        return self.max_diff <= self.tolerance and not self.weight_problems

    @property
    def conclusive(self) -> bool:
        return self.effect > 2 * self.tolerance

    def summary(self) -> str:
        """One line for logs, the CLI and the report."""
        head = ("export matches the simulation" if self.ok
                else "EXPORT CHECK FAILED: the model differs from the simulation")
        rnd = "not measured" if self.rounding is None else f"{self.rounding:.2g}"
        weights = ("weights not checked" if self.weight_problems is None else
                   "weights: exactly the source with the pruned slices zeroed"
                   if not self.weight_problems else
                   f"weights: {'; '.join(self.weight_problems[:3])}")
        tail = "" if self.conclusive or not self.ok else (
            "; the logit comparison alone is not conclusive at this dtype (the mask's own effect is within "
            "its tolerance)" + ("" if self.weight_problems is None else ": the exact weight check decides"))
        return (f"{head}: {weights}; max |logit diff| {self.max_diff:.2g} (allowed {self.tolerance:.2g} = "
                f"max({ABS_FLOOR:g}, {ROUNDING_FACTOR:g} x rounding {rnd}); mask effect {self.effect:.2g}; "
                f"{self.dtype} on {self.device}){tail}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["weight_problems"] = None if self.weight_problems is None else list(self.weight_problems)
        return {**d, "ok": self.ok, "conclusive": self.conclusive,
                "rule": "weights exactly the source with the pruned slices zeroed, and max_diff <= "
                        "max(atol, 4 x rounding)"}


def tolerance(rounding: float | None, atol: float = ABS_FLOOR) -> float:
    """``max(atol, 4 x rounding)``: the allowed materialized-vs-simulated difference.

    Examples:
        >>> tolerance(None), tolerance(1e-7), tolerance(5e-5)
        (1e-05, 1e-05, 0.0002)
    """
    return max(atol, ROUNDING_FACTOR * (rounding or 0.0))


def _ids(bridge: Bridge, texts: Sequence[str]) -> list[Tensor]:
    if not texts:
        raise MaskError("verify needs at least one text")
    tok, out = tokenizer_of(bridge), []
    for text in texts:
        ids = tok(text, return_tensors="pt").input_ids
        if ids.shape[1] == 0:
            raise MaskError(f"text {text!r} tokenizes to nothing; give non-empty texts")
        out.append(ids)
    return out


def _hf_logits(hf_model: nn.Module, ids: Tensor) -> Tensor:
    return hf_model(input_ids=ids.to(next(hf_model.parameters()).device),
                    use_cache=False).logits.float().cpu()


def _bridge_logits(bridge: Bridge, ids: Tensor) -> Tensor:
    return bridge(ids.to(model_device(bridge)), return_type="logits").float().cpu()


def _max_abs(a: Tensor, b: Tensor, what: str) -> float:
    if a.shape != b.shape:
        raise MaskError(f"logit shapes differ: bridge {tuple(a.shape)}, HF model {tuple(b.shape)}")
    d = float((a - b).abs().max())
    if d != d:  # NaN
        raise MaskError(f"non-finite logits while verifying ({what})")
    return d


@torch.no_grad()
def path_rounding(bridge: Bridge, hf_model: nn.Module, texts: Sequence[str] = DEFAULT_TEXTS) -> float:
    """Max |logit difference| between the bridge and an *unpruned* HF model with the same weights:
    how much the two code paths disagree on their own at this dtype and device.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.weights.materialize import clean_hf_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> path_rounding(b, clean_hf_model(b)) <= 1e-6
        True
    """
    return max(_max_abs(_bridge_logits(bridge, ids), _hf_logits(hf_model, ids), "rounding")
               for ids in _ids(bridge, texts))


@torch.no_grad()
def compare(bridge: Bridge, hf_model: nn.Module, mask: PruningMask, texts: Sequence[str] = DEFAULT_TEXTS,
            atol: float = ABS_FLOOR, rounding: float | None = None, ablation: str = "zero",
            means: dict | None = None) -> Verification:
    """Compare ``hf_model`` with the bridge under ``ablate(bridge, mask, ablation, means)`` on
    ``texts`` (each run alone, no padding, logits in float32) and measure the mask's own effect;
    the tolerance is :func:`tolerance` of ``rounding`` (give it from :func:`path_rounding`; None =
    the floor only)."""
    return compare_under(bridge, hf_model, lambda: ablate(bridge, mask, ablation, means), texts, atol,
                         rounding)


@torch.no_grad()
def compare_under(bridge: Bridge, hf_model: nn.Module, simulation, texts: Sequence[str] = DEFAULT_TEXTS,
                  atol: float = ABS_FLOOR, rounding: float | None = None) -> Verification:
    """Compare ``hf_model`` with the bridge inside ``simulation()`` (a context manager factory, e.g.
    the hooks an intervention attaches) on ``texts``; what :func:`compare` does for a mask, for any
    intervention folded into weights."""
    worst = effect = 0.0
    for ids in _ids(bridge, texts):
        with simulation():
            sim = _bridge_logits(bridge, ids)
        worst = max(worst, _max_abs(sim, _hf_logits(hf_model, ids), "materialized"))
        effect = max(effect, _max_abs(sim, _bridge_logits(bridge, ids), "effect"))
    p = next(hf_model.parameters())
    return Verification(worst, rounding, effect, tolerance(rounding, atol), str(p.dtype), str(p.device))


EXACT_TOL = 1e-8  # float64: the floor of the float64 comparison of a fold with its hooks
EXACT_SHARE = 1 / 16  # ... and its share of the float32 rounding (see exact_tolerance)


def exact_tolerance(rounding: float) -> float:
    """What the float64 comparison of a fold with its hooks may show: ``max(1e-8, rounding / 16)``.
    Not float64's own epsilon: Hugging Face attention takes its softmax in float32 (an up-cast for
    half precision, a down-cast in a float64 model), so two float64 paths that differ by float64
    rounding before a softmax differ by float32 rounding after it (about 1e-6 in SmolLM2's logits,
    against 1e-4 of float32 rounding). A fold off by more than a sixteenth of the float32 rounding
    is not exact.

    Examples:
        >>> exact_tolerance(0.0), exact_tolerance(1.6e-4)
        (1e-08, 1e-05)
    """
    return max(EXACT_TOL, rounding * EXACT_SHARE)


@contextmanager
def in_float64(bridge: Bridge):
    """The bridge in float64 inside the block, back in its dtype after it (float32 and bfloat16
    values survive the round trip bit for bit)."""
    dtype = next(bridge.parameters()).dtype
    bridge.to(torch.float64)
    try:
        yield
    finally:
        bridge.to(dtype)


@torch.no_grad()
def fold_rounding(bridge: Bridge, hf_model: nn.Module, build: Callable[[], nn.Module], simulation,
                  texts: Sequence[str] = DEFAULT_TEXTS) -> tuple[float, float]:
    """For an intervention folded into weights, which changes the order of the arithmetic (a
    projection applied to the weights instead of the activations): ``(rounding, exact_diff)``.
    ``build()`` folds it again while the bridge is in float64; ``exact_diff`` is the max |logit
    difference| between that float64 fold and the float64 bridge under ``simulation()`` (an exact fold
    stays within :func:`exact_tolerance` of the rounding), and ``rounding`` the larger of how far
    ``hf_model`` and the bridge's own simulation each are from their float64 twins: the float32
    rounding a correct fold may show."""
    ids = _ids(bridge, texts)
    hook32, fold32 = [], []
    for x in ids:
        with simulation():
            hook32.append(_bridge_logits(bridge, x).double())
        fold32.append(_hf_logits(hf_model, x).double())
    rounding = exact = 0.0
    with in_float64(bridge):
        model64 = build()
        for x, h32, f32 in zip(ids, hook32, fold32, strict=True):
            with simulation():
                h64 = bridge(x.to(model_device(bridge)), return_type="logits").cpu()
            f64 = model64(input_ids=x.to(next(model64.parameters()).device), use_cache=False).logits.cpu()
            exact = max(exact, float((h64 - f64).abs().max()))
            rounding = max(rounding, float((h32 - h64).abs().max()), float((f32 - f64).abs().max()))
        del model64
    return rounding, exact


def verify(bridge: Bridge, hf_model: nn.Module, mask: PruningMask, texts: Sequence[str] = DEFAULT_TEXTS,
           atol: float = ABS_FLOOR, rounding: float | None = None) -> float:
    """Max abs difference between ``hf_model``'s logits and the bridge's under
    ``ablate(bridge, mask, "zero")``; raises :class:`~lens_bias.errors.MaskError` when it is above the
    tolerance (:func:`compare`) or not finite.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.weights.materialize import materialize
        >>> from lens_bias.selection.topk import random_mask
        >>> b = load_model("tiny-random", device="cpu")
        >>> m = random_mask(b, 10, "neurons")
        >>> verify(b, materialize(b, m), m) <= 1e-5
        True
    """
    v = compare(bridge, hf_model, mask, texts, atol, rounding)
    if not v.ok:
        raise MaskError(f"the materialized model differs from the bridge under zero ablation by "
                        f"{v.max_diff:.3g} (max abs logit difference, allowed {v.tolerance:g}). "
                        f"{why_different(bridge, hf_model)}")
    return v.max_diff


@torch.no_grad()
def weight_problems(bridge: Bridge, model: nn.Module, mask: PruningMask, most: int = 5) -> tuple[str, ...]:
    """What keeps a zero-mode materialization from being exact: every pruned slice
    (:func:`lens_bias.model.layout.unit_channels`) must be zero, and every other weight equal to the
    bridge's, bit for bit. Empty when the weights implement the mask exactly; at most ``most``
    problems are named. Independent of rounding: it catches a wrong mask at any dtype.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.selection.topk import random_mask
        >>> b = load_model("tiny-random", device="cpu")
        >>> m = random_mask(b, 5, "neurons")
        >>> weight_problems(b, materialize(b, m), m)
        ()
        >>> weight_problems(b, clean_hf_model(b), m)[0]
        'model.layers.0.mlp.gate_proj.weight: a pruned slice is not zero'
    """
    ref = bridge_tensors(bridge)
    prefix, layers, d_head = check_fits(model, mask)
    zero: dict[str, list[tuple[int, list[int]]]] = {}
    for i in range(len(layers)):
        for kind, keep in (("neurons", mask.neurons[i]), ("heads", mask.heads[i])):
            for name, dim, idx in unit_channels(kind, pruned(keep), d_head):
                zero.setdefault(f"{prefix}.{i}.{name}.weight", []).append((dim, idx))
                if dim == 0:
                    zero.setdefault(f"{prefix}.{i}.{name}.bias", []).append((0, idx))
    problems: list[str] = []
    for key, w in model.state_dict().items():
        if key not in ref or len(problems) >= most:
            continue
        diff = w != ref[key].to(w.device)
        for dim, idx in zero.get(key, []):
            index = torch.tensor(idx, device=w.device)
            if w.index_select(dim, index).any() and not any(p.startswith(key) for p in problems):
                problems.append(f"{key}: a pruned slice is not zero")
            diff.index_fill_(dim, index, False)
        if diff.any():
            problems.append(f"{key}: {int(diff.sum())} kept weights differ from the source")
    return tuple(problems[:most])


def mode_and_ablation(mode: str, ablation: str | None) -> tuple[str, str]:
    """How a mask enters the weights (``mode``: ``zero`` or ``structural``) and what its pruned
    units output (``ablation``: ``zero`` or ``mean``), checked together. ``mode="mean"`` is the old
    spelling of ``ablation="mean"`` (a :class:`DeprecationWarning`).

    Examples:
        >>> mode_and_ablation("structural", None)
        ('structural', 'zero')
        >>> mode_and_ablation("structural", "mean")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_bias.errors.ChoiceError: mean ablation is written into the weights as folded biases...
    """
    if mode == "mean":
        ablation, mode = renamed(ablation, "mean", "ablation", "mode", "zero"), "zero"
    check_choice(mode, MATERIALIZATIONS, "mode")
    ablation = check_ablation(ablation or "zero")
    if ablation == "mean" and mode != "zero":
        raise ChoiceError("mean ablation is written into the weights as folded biases, with the shapes kept: "
                          "use mode='zero' (--mode zero) with ablation='mean'")
    return mode, ablation


def materialize_checked(bridge: Bridge, mask: PruningMask, mode: str = "zero",
                        texts: Sequence[str] = DEFAULT_TEXTS, atol: float = ABS_FLOOR,
                        means: dict | None = None,
                        ablation: str | None = None) -> tuple[PreTrainedModel, Verification]:
    """Materialize ``mask`` and judge it in memory, before anything is written: a clean HF model is
    built, its rounding against the bridge measured (:func:`path_rounding`), then the mask is
    written into it in place and the result compared with the simulation (:func:`compare`).
    ``ablation="mean"``: the pruned units' ``means`` are folded into biases
    (:func:`lens_bias.weights.folding.fold_constants`) and compared with mean ablation.
    Returns the model and the :class:`Verification`; raises nothing on a failed check (the caller
    decides), only on unusable input.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.selection.topk import random_mask
        >>> b = load_model("tiny-random", device="cpu")
        >>> model, v = materialize_checked(b, random_mask(b, 10, "neurons"))
        >>> v.ok, v.conclusive, v.max_diff <= 1e-5
        (True, True, True)
    """
    mode, ablation = mode_and_ablation(mode, ablation)
    model = clean_hf_model(bridge)
    rounding = path_rounding(bridge, model, texts)
    if ablation == "mean":
        from .folding import fold_constants

        model = fold_constants(bridge, mask, means, model=model)
        return model, compare(bridge, model, mask, texts, atol, rounding, "mean", means)
    model = materialize(bridge, mask, mode=mode, model=model)
    v = compare(bridge, model, mask, texts, atol, rounding)
    if mode == "zero":
        v = replace(v, weight_problems=weight_problems(bridge, model, mask))
    return model, v


def why_different(bridge: Bridge, hf_model: nn.Module) -> str:
    """The likely cause of a failed :func:`verify`: another attention kernel, or another model."""
    mine = getattr(bridge.original_model.config, "_attn_implementation", None)
    theirs = getattr(getattr(hf_model, "config", None), "_attn_implementation", None)
    if mine and theirs and mine != theirs:
        return (
            f"The HF model uses {theirs} attention and the bridge {mine}; the kernels round differently "
            f"(a few 1e-5 on logits of real models). Load it with attn_implementation={mine!r} for an "
            "exact comparison; if the difference stays, the model does not implement this mask."
        )
    return (
        "The model does not implement this mask: was it built from another mask or model, or modified "
        "afterwards? Rebuild it with materialize."
    )
