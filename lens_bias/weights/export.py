"""Export a pruned model as a Hugging Face folder that plain ``transformers`` loads offline.

:func:`export_hf` materializes the mask and checks the result against the simulation in memory
(:func:`lens_bias.weights.verification.materialize_checked`), then writes it once (:func:`write_hf`):
sharded safetensors in the checkpoint's own dtype, the tokenizer and the mask, atomically
(:func:`lens_bias.atomic.atomic_out`). Nothing is read back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel

from ..atomic import atomic_out
from ..bridge import Bridge, model_dtype, tokenizer_of
from ..errors import MaskError, RunError
from ..masks import PruningMask
from .folding import fold_constants
from .materialize import DEFAULT_TEXTS, STRUCTURAL_ATOL, materialize
from .model_card import write_model_card
from .verification import materialize_checked, mode_and_ablation, why_different


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a path that is not a folder, and a non-empty folder unless ``overwrite``."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise RunError(f"{out_dir} exists and is not a folder; choose another output path")
        if any(out_dir.iterdir()) and not overwrite:
            raise RunError(
                f"{out_dir} exists and is not empty; choose a new folder or pass overwrite=True "
                "(--overwrite) to replace it"
            )


def export_hf(bridge: Bridge, mask: PruningMask, out_dir: str | Path, mode: str = "zero",
              overwrite: bool = False, check: bool = True, texts: Sequence[str] = DEFAULT_TEXTS,
              attn_implementation: str | None = "eager", dtype: torch.dtype | None = None,
              means: dict | None = None, ablation: str | None = None) -> Path:
    """Write the materialized model as a Hugging Face folder; return its path.

    The folder holds ``config.json``, the weights (``save_pretrained``: sharded safetensors), the
    tokenizer files, a model card (``README.md``, :func:`lens_bias.weights.model_card.model_card`: what was
    removed and how, without measurements) and, for provenance, the mask in ``lens_bias_mask/``
    (``mask.safetensors`` + ``mask.json``). ``transformers.AutoModelForCausalLM.from_pretrained(out_dir)``
    loads it offline without lens_bias. It is written to a temporary folder next to ``out_dir`` and
    renamed into place, so a crash never leaves a half-written model. An existing non-empty
    ``out_dir`` is refused unless ``overwrite``.

    With ``check`` (default) the model is compared with the bridge in memory before anything is
    written (:func:`lens_bias.weights.verification.materialize_checked`: the allowed difference is
    ``max(atol, 4 x`` the measured rounding between the bridge and a plain HF forward``)``, with
    ``atol`` 1e-5 for ``mode="zero"`` (either ablation), 1e-4 for ``"structural"``, whose shorter
    matrices sum in another order). A failed check raises :class:`~lens_bias.errors.MaskError` and
    writes nothing.

    ``ablation="mean"`` writes a mask selected under mean ablation: the pruned units output ``means``
    (:func:`lens_bias.hooks.capture.mean_activations`, as ``ablate(..., "mean", means)``), folded into
    ``down_proj`` / ``o_proj`` biases (:func:`lens_bias.weights.folding.fold_constants`) and checked
    against mean ablation; an architecture without those bias flags is refused. (``mode="mean"`` is
    the old spelling of ``ablation="mean"``.)

    ``dtype`` (default: the checkpoint's own dtype, ``bridge.lens_bias_source_dtype``) is the dtype
    the weights are written in: a bfloat16 checkpoint loaded in float32 is written back in bfloat16,
    exactly (zeroed weights stay zero, the others round-trip). By default
    (``attn_implementation="eager"``) ``config.json`` records the eager attention kernel the bridge
    runs, so a plain ``from_pretrained`` reproduces the simulation bit for bit in float32;
    ``attn_implementation=None`` leaves the choice to transformers (usually ``sdpa``: faster, but it
    rounds differently, max abs logit difference ~3e-5 on SmolLM2 / Gemma-3-270M).

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.selection.topk import random_mask
        >>> b = load_model("tiny-random", device="cpu")
        >>> import tempfile
        >>> path = export_hf(b, random_mask(b, 10, "neurons"), tempfile.mkdtemp() + "/pruned")
        >>> from transformers import AutoModelForCausalLM
        >>> type(AutoModelForCausalLM.from_pretrained(path)).__name__
        'LlamaForCausalLM'
    """
    out_dir = Path(out_dir).expanduser().resolve()
    mode, ablation = mode_and_ablation(mode, ablation)
    if ablation == "mean" and means is None:
        raise MaskError("ablation='mean' needs the units' means: pass "
                        "means=mean_activations(bridge, neutral_text()) (lens_bias.hooks.capture), the "
                        "constants the mask was selected with")
    _prepare_out_dir(out_dir, overwrite)
    if check:
        atol = STRUCTURAL_ATOL if mode == "structural" else 1e-5
        model, v = materialize_checked(bridge, mask, mode=mode, texts=texts, atol=atol, means=means,
                                       ablation=ablation)
        if not v.ok:
            raise MaskError(f"{v.summary()}. {why_different(bridge, model)} Nothing was written.")
    elif ablation == "mean":
        model = fold_constants(bridge, mask, means)
    else:
        model = materialize(bridge, mask, mode=mode)
    return write_hf(bridge, model, mask, out_dir, overwrite, attn_implementation, dtype)


def export_dtype(bridge: Bridge, dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype an export is written in: ``dtype``, else the checkpoint's own
    (``bridge.lens_bias_source_dtype``), else the model's."""
    return dtype or getattr(bridge, "lens_bias_source_dtype", None) or model_dtype(bridge)


def write_hf(bridge: Bridge, model: PreTrainedModel, mask: PruningMask, out_dir: str | Path,
             overwrite: bool = False, attn_implementation: str | None = "eager",
             dtype: torch.dtype | None = None) -> Path:
    """Write an already materialized (and checked) ``model`` as a Hugging Face folder, once, in
    :func:`export_dtype` (the model is cast in place), with the bridge's tokenizer, the mask and a
    model card (``README.md``, without measurements: a run rewrites it with its own)."""
    out_dir = Path(out_dir).expanduser().resolve()
    _prepare_out_dir(out_dir, overwrite)
    model.to(export_dtype(bridge, dtype))
    if attn_implementation is not None:
        # a config.json key that PreTrainedConfig reads back as the attention implementation
        model.config.attn_implementation = attn_implementation
    # an existing folder passed the checks above (empty, or overwrite): atomic_out may replace it
    with atomic_out(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer_of(bridge).save_pretrained(tmp)
        mask.save(tmp / "lens_bias_mask")
        write_model_card(tmp, mask, bridge)
        _prepare_out_dir(out_dir, overwrite)  # again: it may have appeared meanwhile
    return out_dir
