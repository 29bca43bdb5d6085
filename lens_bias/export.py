"""Export a pruned model as a Hugging Face folder that plain ``transformers`` loads offline.

:func:`export_hf` materializes the mask (:func:`lens_bias.materialize.materialize`), checks the
result against the simulation (:func:`lens_bias.materialize.verify`) and writes
``save_pretrained`` output, the tokenizer and the mask atomically (:func:`lens_bias.atomic.atomic_out`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .atomic import atomic_out
from .bridge import Bridge, tokenizer_of
from .errors import RunError
from .masks import PruningMask
from .materialize import DEFAULT_TEXTS, STRUCTURAL_ATOL, materialize, verify


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


def export_hf(bridge: Bridge, mask: PruningMask, out_dir: str | Path, mode: str = "zero", overwrite: bool = False,
              check: bool = True, texts: Sequence[str] = DEFAULT_TEXTS,
              attn_implementation: str | None = "eager") -> Path:
    """Write the materialized model as a Hugging Face folder; return its path.

    The folder holds ``config.json``, ``model.safetensors`` (``save_pretrained``), the tokenizer
    files and, for provenance, the mask in ``lens_bias_mask/`` (``mask.safetensors`` + ``mask.json``).
    ``transformers.AutoModelForCausalLM.from_pretrained(out_dir)`` loads it offline without lens_bias.
    It is written to a temporary folder next to ``out_dir`` and renamed into place, so a crash never
    leaves a half-written model. An existing non-empty ``out_dir`` is refused unless ``overwrite``.
    With ``check`` (default) the model is first compared with the bridge (:func:`~lens_bias.materialize.verify`): within
    1e-5 for ``mode="zero"``, 1e-4 for ``"structural"`` (shorter matrices sum in another order; the
    difference is a few 1e-5 on SmolLM2 in float32 and 0 in float64).

    The weights are exact. By default (``attn_implementation="eager"``) the folder's ``config.json``
    records the eager attention kernel the bridge runs, so a plain ``from_pretrained`` reproduces the
    simulation bit for bit. ``attn_implementation=None`` leaves the choice to transformers (usually
    ``sdpa``: faster, but it rounds differently, max abs logit difference ~3e-5 on SmolLM2 /
    Gemma-3-270M).

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.selection import random_mask
        >>> b = load_model("tiny-random", device="cpu")
        >>> import tempfile
        >>> path = export_hf(b, random_mask(b, 10, "neurons"), tempfile.mkdtemp() + "/pruned")
        >>> from transformers import AutoModelForCausalLM
        >>> type(AutoModelForCausalLM.from_pretrained(path)).__name__
        'LlamaForCausalLM'
    """
    out_dir = Path(out_dir).expanduser().resolve()
    _prepare_out_dir(out_dir, overwrite)
    model = materialize(bridge, mask, mode=mode)
    if check:
        # structural removal changes the order of the float32 sums in down_proj / o_proj: logits
        # then differ from the hooks by a few 1e-5 on real models (0 in float64), so allow 1e-4
        verify(bridge, model, mask, texts=texts, atol=STRUCTURAL_ATOL if mode == "structural" else 1e-5)
    if attn_implementation is not None:
        # a config.json key that PreTrainedConfig reads back as the attention implementation
        model.config.attn_implementation = attn_implementation
    # an existing folder passed the checks above (empty, or overwrite): atomic_out may replace it
    with atomic_out(out_dir, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer_of(bridge).save_pretrained(tmp)
        mask.save(tmp / "lens_bias_mask")
        _prepare_out_dir(out_dir, overwrite)  # again: it may have appeared meanwhile
    return out_dir
