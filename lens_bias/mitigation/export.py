"""Fold a fitted intervention into the weights, check the folded model against the hooks, and write it.

The check is the one pruning has: the folded model's logits equal the bridge's under the
intervention's hooks within ``max(1e-5, 4 x rounding)`` (for a pruning mask, also: the weights are
exactly the source with the pruned slices zeroed). A fold that moves a projection from the
activations into the weights changes the order of the float32 arithmetic, so there the fold is also
made and compared in float64, where it must agree to a sixteenth of the float32 rounding
(:func:`lens_bias.weights.verification.exact_tolerance`), and the float32 rounding is measured
against those float64 twins (:func:`checked_fold`). A failed check writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_out
from ..bridge import Bridge, tokenizer_of
from .base import Intervention


def checked_fold(bridge: Bridge, iv: Intervention):
    """``(model, verification, exact_diff)`` of ``iv`` folded into a new HF model, or ``(None, None,
    None)`` when it cannot be folded (``iv.not_foldable`` says why). A pruning mask is checked as
    :func:`lens_bias.weights.verification.materialize_checked` does (``exact_diff`` 0: its weights are
    checked exactly). Any other fold reorders the arithmetic, so on a CPU it is also built and compared
    in float64, where an exact fold agrees with the hooks to float64 rounding (``exact_diff``), and the
    float32 tolerance is set by the float32 rounding measured against those float64 twins
    (:func:`lens_bias.weights.verification.fold_rounding`); on a GPU the rounding of the two code paths
    (:func:`lens_bias.weights.verification.path_rounding`) sets it and ``exact_diff`` is None."""
    from ..bridge import model_device
    from ..weights.materialize import clean_hf_model
    from ..weights.verification import compare_under, fold_rounding, materialize_checked, path_rounding

    if iv.mask is not None:
        return (*materialize_checked(bridge, iv.mask), 0.0)
    if iv.fold is None:
        return None, None, None
    model = iv.fold()
    simulation = lambda: iv.simulate(bridge)  # noqa: E731
    if model_device(bridge).type == "cpu":
        rounding, exact = fold_rounding(bridge, model, iv.fold, simulation)
    else:
        rounding, exact = path_rounding(bridge, clean_hf_model(bridge)), None
    return model, compare_under(bridge, model, simulation, rounding=rounding), exact


def export_check(bridge: Bridge, iv: Intervention, folder: str | Path | None = None) -> dict:
    """Fold, check and (with ``folder``, when the check passes) write ``iv`` as a Hugging Face folder;
    the check's record (``ok`` None: not foldable, with ``why``)."""
    from ..weights.verification import exact_tolerance

    model, v, exact = checked_fold(bridge, iv)
    if v is None:
        return {"ok": None, "why": iv.not_foldable}
    ok = v.ok and (exact is None or exact <= exact_tolerance(v.rounding or 0.0))
    summary = v.summary() if exact is None else f"{v.summary()}; float64: max |logit diff| {exact:.2g}"
    if v.ok and not ok:
        summary = f"EXPORT CHECK FAILED in float64 (the fold is not exact): {summary}"
    rec = {**v.to_dict(), "ok": ok, "exact_max_diff": exact, "summary": summary, "folder": None}
    if ok and folder is not None:
        rec["folder"] = str(write_folded(bridge, model, iv, folder))
    return rec


def write_folded(bridge: Bridge, model, iv: Intervention, folder: str | Path) -> Path:
    """Write a checked folded model: the weights, the tokenizer, ``lens_bias_intervention.json`` (the
    method, its settings and cost) and a short model card; a pruning mask goes the way of
    :func:`lens_bias.weights.export.write_hf` (its mask and card)."""
    from ..weights.export import export_dtype, write_hf

    if iv.mask is not None:
        return write_hf(bridge, model, iv.mask, folder, overwrite=True)
    folder = Path(folder).expanduser().resolve()
    model.to(export_dtype(bridge))
    with atomic_out(folder, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer_of(bridge).save_pretrained(tmp)
        record = iv.record()
        record["settings"] = {k: v for k, v in record["settings"].items() if k != "tried"}
        (tmp / "lens_bias_intervention.json").write_text(json.dumps(record, indent=1))
        (tmp / "README.md").write_text(_card(bridge, iv, record))
    return folder


def _card(bridge: Bridge, iv: Intervention, record: dict) -> str:
    name = getattr(bridge, "lens_bias_name", type(bridge.original_model).__name__)
    settings = ", ".join(f"{k} {v}" for k, v in record["settings"].items())
    cost = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in iv.cost.items())
    return (f"---\ntags: [lens_bias, bias-mitigation]\n---\n# {name}, {iv.method} (lens_bias)\n\n"
            f"The weights of {name} with the `{iv.method}` intervention of lens_bias folded in ({settings}; "
            f"{cost}). Its logits equal the original model's under the intervention's hooks, checked before "
            "this folder was written. What it does to bias and capability is measured by "
            "`lens-bias experiment arena`, on held-out wording; read that report before using it.\n")
