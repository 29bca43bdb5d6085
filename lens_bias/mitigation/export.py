"""Fold a fitted intervention into the weights, check the folded model against the hooks, and write it.

The check is the one pruning has: the folded model's logits equal the bridge's under the
intervention's hooks within ``max(1e-5, 4 x rounding)``, the rounding being what an unmodified copy
of the weights and the bridge disagree by on their own (for a pruning mask, also: the weights are
exactly the source with the pruned slices zeroed). A failed check writes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..atomic import atomic_out
from ..bridge import Bridge, tokenizer_of
from .base import Intervention


def checked_fold(bridge: Bridge, iv: Intervention):
    """``(model, verification)`` of ``iv`` folded into a new HF model, or ``(None, None)`` when it cannot
    be folded (``iv.not_foldable`` says why)."""
    from ..weights.materialize import clean_hf_model
    from ..weights.verification import compare_under, materialize_checked, path_rounding

    if iv.mask is not None:
        return materialize_checked(bridge, iv.mask)
    if iv.fold is None:
        return None, None
    rounding = path_rounding(bridge, clean_hf_model(bridge))
    model = iv.fold()
    return model, compare_under(bridge, model, lambda: iv.simulate(bridge), rounding=rounding)


def export_check(bridge: Bridge, iv: Intervention, folder: str | Path | None = None) -> dict:
    """Fold, check and (with ``folder``, when the check passes) write ``iv`` as a Hugging Face folder;
    the check's record (``ok`` None: not foldable, with ``why``)."""
    model, v = checked_fold(bridge, iv)
    if v is None:
        return {"ok": None, "why": iv.not_foldable}
    rec = {**v.to_dict(), "summary": v.summary(), "folder": None}
    if v.ok and folder is not None:
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
