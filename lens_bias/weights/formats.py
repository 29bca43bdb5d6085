"""A saved mask in the format a pruning library reads: what ``lens-bias export`` writes, as an API.

:func:`export_mask` writes one of :data:`lens_bias.vocab.EXPORT_FORMATS`:

* ``hf``: the pruned Hugging Face folder (:func:`lens_bias.weights.export.export_hf`, checked
  against the simulation; a mask selected under mean ablation gets its constants folded in);
* ``torch-prune``: ``<module>.weight_mask`` tensors for ``torch.nn.utils.prune.custom_from_mask``;
* ``torch-pruning``: the index lists torch-pruning removes (JSON);
* ``optipfair``: optiPfair's per-layer fairness scores (a scores file's, or the mask's own).

:func:`check_export` refuses a format, materialization or upload that cannot work before any
model is loaded; the model is loaded (``load()``) only by the formats that need it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..bridge import Bridge
from ..errors import LensBiasError, MaskError
from ..hooks.capture import mean_activations
from ..masks import PruningMask
from ..prompts.pairs import neutral_text
from ..scores import Scores
from ..vocab import EXPORT_FORMATS, MATERIALIZATIONS, check_ablation, check_choice
from .export import export_hf
from .interop import optipfair_scores, torch_prune_masks, torch_pruning_indices


def ablation_constants(bridge: Bridge, mask: PruningMask) -> dict | None:
    """The constants ``mask``'s pruned units output: their mean activations on the neutral text
    when the mask was selected under mean ablation (``mask.meta["ablation"] == "mean"``, as
    ``lens-bias run --ablation mean`` and ``lens-bias prune --ablation mean`` record it), else
    ``None`` (zero ablation). They are recomputed on ``bridge``, the same numbers on the same model.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.selection.topk import random_mask
        >>> b = load_model("tiny-random", device="cpu")
        >>> m = random_mask(b, 3, "neurons")
        >>> ablation_constants(b, m) is None
        True
        >>> m.meta["ablation"] = "mean"
        >>> ablation_constants(b, m)["neurons"].shape
        torch.Size([2, 128])
    """
    if check_ablation(mask.meta.get("ablation") or "zero") == "zero":
        return None
    return mean_activations(bridge, neutral_text())


def check_export(ablation: str | None, format: str, mode: str = "zero") -> None:
    """Refuse an export that cannot work, before a model is loaded: an unknown ``format`` or
    ``mode``, or one that would drop the means of a mask
    selected under mean ablation (``ablation``, e.g. its ``meta["ablation"]``): its units output
    constants, which torch.nn.utils.prune masks, torch-pruning removal and structural
    materialization all replace by zero; only the HF export in ``zero`` mode folds them into biases.

    Examples:
        >>> check_export("mean", "hf")
        >>> check_export("zero", "torch-pruning")
        >>> check_export("mean", "torch-pruning")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_bias.errors.MaskError: the mask was selected under mean ablation: ...
    """
    check_choice(format, EXPORT_FORMATS, "--format")
    check_choice(mode, MATERIALIZATIONS, "--mode")
    if ablation == "mean" and (format in ("torch-prune", "torch-pruning") or mode != "zero"):
        raise MaskError("the mask was selected under mean ablation: its units output their means, which "
                        f"--format {format} --mode {mode} would drop; export it with --format hf --mode zero "
                        "(means folded into biases)")


def export_mask(mask: PruningMask, out: str | Path, format: str = "hf",
                load: Callable[[], Bridge] | None = None, mode: str = "zero", overwrite: bool = False,
                scores: Scores | None = None) -> Path:
    """Write ``mask`` to ``out`` in ``format`` (see the module docstring) and return ``out``.
    ``load()`` gives the model the mask was selected on, called only when the format needs it
    (``hf``, ``torch-prune``, ``torch-pruning`` without ``d_head`` in the mask); ``scores``:
    the scores ``optipfair`` converts (default: the mask itself, pruned units 1). An existing
    ``out`` is refused unless ``overwrite``.

    Examples:
        >>> import tempfile
        >>> from lens_bias import load_model
        >>> from lens_bias.selection.topk import random_mask
        >>> b = load_model("tiny-random", device="cpu")
        >>> out = export_mask(random_mask(b, 4, "neurons"), tempfile.mkdtemp() + "/m.json", "torch-pruning",
        ...                   load=lambda: b)
        >>> sorted(json.loads(out.read_text()))
        ['format', 'indices']
    """
    from safetensors.torch import save_file

    out = Path(out)
    check_export(mask.meta.get("ablation"), format, mode)
    if format != "hf" and out.exists() and not overwrite:
        raise LensBiasError(f"{out} exists; pass --overwrite to replace it")
    if format == "hf":
        bridge = _loaded(load, format)
        mask.check(bridge)
        means = ablation_constants(bridge, mask)
        return export_hf(bridge, mask, out, mode=mode, overwrite=overwrite, means=means,
                         ablation="mean" if means is not None else "zero")
    if format == "torch-pruning":
        d_head = mask.meta.get("d_head")
        known = mask.heads.all() or d_head
        idx = torch_pruning_indices(mask, d_head=d_head if known else _loaded(load, format).cfg.d_head)
        out.write_text(json.dumps({"format": "torch-pruning index lists (lens_bias)", "indices": idx},
                                  indent=1))
    elif format == "torch-prune":
        save_file(torch_prune_masks(mask, _loaded(load, format)), str(out),
                  metadata={"format": "torch.nn.utils.prune custom_from_mask masks (lens_bias)"})
    else:
        s = scores.neurons if scores is not None else (~mask.neurons).float()
        fs = optipfair_scores(s.float())
        save_file({str(k): v.contiguous() for k, v in fs.items()}, str(out),
                  metadata={"format": "optiPfair fairness_scores {layer: Tensor[d_mlp]} (lens_bias)",
                            "n_pruned_per_layer": json.dumps(mask.per_layer("neurons"))})
    return out


def _loaded(load: Callable[[], Bridge] | None, format: str) -> Bridge:
    if load is None:
        raise LensBiasError(f"--format {format} needs the model the mask was selected on: pass load=")
    return load()
