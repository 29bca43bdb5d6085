"""A :class:`~lens_bias.masks.PruningMask` in other pruning libraries' formats.

* :func:`to_torch_prune` / :func:`undo_torch_prune` -- ``torch.nn.utils.prune`` masks, reversible
  bit for bit.
* :func:`torch_pruning_indices` / :func:`apply_torch_pruning` -- index lists for, and pruning with,
  the ``torch-pruning`` package (optional: ``pip install torch-pruning==1.6.1``).
* :func:`optipfair_scores` / :func:`optipfair_neuron_indices` -- inputs for optiPfair
  (``fairness_scores`` of ``prune_model_mlp_glu``; ``zero_neurons_mlp``).

The weight rows and columns of each unit come from :mod:`lens_bias.model.layout`, as in
:func:`lens_bias.weights.materialize.materialize`, so every format prunes exactly the same weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..bridge import Bridge
from ..errors import MaskError
from ..masks import PruningMask
from ..model.layout import unit_channels, unit_slices
from ..vocab import KINDS
from .materialize import check_fits, clean_hf_model, pruned, uniform_count, warn_heads_zeroed, zero_units

TORCH_PRUNING_INSTALL = "pip install torch-pruning==1.6.1"


# ---------------------------------------------------------------- torch.nn.utils.prune


def to_torch_prune(model: nn.Module, mask: PruningMask) -> nn.Module:
    """Apply ``mask`` to an HF model in place with ``torch.nn.utils.prune.custom_from_mask``.

    Row masks on ``gate_proj``/``up_proj``, column masks on ``down_proj`` and head column blocks on
    ``o_proj``; only modules with pruned units get a mask. The model then computes exactly what
    ``materialize(..., mode="zero")`` does, and keeps the originals in ``<module>.weight_orig``.
    ``torch.nn.utils.prune.remove`` would make the pruning permanent; :func:`undo_torch_prune`
    restores the original weights bit for bit.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.selection.topk import random_mask
        >>> from lens_bias.weights.materialize import clean_hf_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> m = clean_hf_model(b)
        >>> _ = to_torch_prune(m, random_mask(b, 10, "neurons"))
        >>> undo_torch_prune(m)
        6
    """
    from torch.nn.utils import prune

    _, layers, d_head = check_fits(model, mask)
    for i, layer in enumerate(layers):
        for kind in KINDS:
            for lin, dim, idx in unit_slices(layer, kind, pruned(getattr(mask, kind)[i]), d_head):
                keep = torch.ones_like(lin.weight)
                keep.index_fill_(dim, torch.tensor(idx, device=keep.device), 0)
                prune.custom_from_mask(lin, "weight", keep)
    return model


def undo_torch_prune(model: nn.Module) -> int:
    """Remove every ``torch.nn.utils.prune`` reparametrization and restore the original weights.

    Unlike ``prune.remove`` (which keeps the pruned values), this puts back each ``<name>_orig``
    parameter itself, so the weights are the originals bit for bit. Returns the number of
    pruned tensors restored.

    Examples:
        >>> import torch
        >>> from torch.nn.utils import prune
        >>> lin = torch.nn.Linear(3, 2); w = lin.weight.clone()
        >>> _ = prune.custom_from_mask(lin, "weight", torch.zeros(2, 3))
        >>> undo_torch_prune(lin), torch.equal(lin.weight, w)
        (1, True)
    """
    from torch.nn.utils.prune import BasePruningMethod

    restored = 0
    for module in model.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if not isinstance(hook, BasePruningMethod):
                continue
            name = hook._tensor_name
            orig = module._parameters.pop(name + "_orig")
            module._buffers.pop(name + "_mask", None)
            if hasattr(module, name):
                delattr(module, name)
            module.register_parameter(name, orig)
            del module._forward_pre_hooks[key]
            restored += 1
    return restored


# ---------------------------------------------------------------- torch-pruning


def torch_pruning_indices(mask: PruningMask, model: nn.Module | None = None, d_head: int | None = None,
                          prefix: str = "model.layers") -> dict[str, list[int]]:
    """Channel indices to prune, per HF module name, for ``torch_pruning``'s ``prune_linear_*``.

    * ``<prefix>.L.mlp.down_proj``: input channels (``prune_linear_in_channels``);
    * ``<prefix>.L.mlp.gate_proj`` / ``up_proj``: output channels (``prune_linear_out_channels``);
    * ``<prefix>.L.self_attn.o_proj``: input channels of the pruned heads (``h*d_head ...``). Removing
      them alone would break the attention reshape; zero them instead (:func:`apply_torch_pruning` does).

    Only layers with pruned units appear. With ``model`` the layer prefix and ``d_head`` are read
    from it; otherwise ``prefix`` (``model.layers`` for Llama/Gemma/Mistral/Qwen) and ``d_head``
    (needed only if heads are pruned) are used.

    Examples:
        >>> import torch
        >>> m = PruningMask(torch.ones(2, 8, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool))
        >>> m.neurons[1, 3] = False
        >>> torch_pruning_indices(m)["model.layers.1.mlp.down_proj"]
        [3]
    """
    if model is not None:
        prefix, _, d_head = check_fits(model, mask)
    if d_head is None and not mask.heads.all():
        raise MaskError("the mask prunes heads: pass model= (or d_head=) so head channels can be computed")
    out: dict[str, list[int]] = {}
    for i in range(mask.neurons.shape[0]):
        for kind in KINDS:
            for name, _, idx in unit_channels(kind, pruned(getattr(mask, kind)[i]), d_head):
                out[f"{prefix}.{i}.{name}"] = idx
    return out


def _import_torch_pruning():
    try:
        import torch_pruning
    except ImportError as e:
        raise ImportError(
            f"apply_torch_pruning needs the optional package torch-pruning: {TORCH_PRUNING_INSTALL}"
        ) from e
    return torch_pruning


def apply_torch_pruning(model: nn.Module, mask: PruningMask) -> nn.Module:
    """Remove ``mask``'s neurons from an HF model in place with the ``torch-pruning`` package.

    Uses ``torch_pruning.prune_linear_out_channels`` on ``gate_proj``/``up_proj`` and
    ``prune_linear_in_channels`` on ``down_proj`` (the slices of :func:`lens_bias.model.layout.unit_slices`,
    as in :func:`torch_pruning_indices`).
    Sets ``config.intermediate_size`` when every layer lost the same number of neurons (otherwise
    warns: the model runs, but its config cannot describe it for ``save_pretrained``). Pruned heads are
    zeroed (``o_proj`` columns), not removed, as in structural
    :func:`~lens_bias.weights.materialize.materialize`. Needs ``pip install torch-pruning==1.6.1``.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.masks import PruningMask
        >>> from lens_bias.weights.materialize import clean_hf_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> mk = PruningMask.keep_all(b); mk.neurons[:, :8] = False
        >>> apply_torch_pruning(clean_hf_model(b), mk).config.intermediate_size
        120
    """
    tp = _import_torch_pruning()
    _, layers, d_head = check_fits(model, mask)
    d_mlp = mask.neurons.shape[1]
    if (~mask.neurons).sum(-1).max() >= d_mlp:
        raise MaskError("the mask prunes every neuron of some layer; lower the budget")
    warn_heads_zeroed(mask, "apply_torch_pruning")
    zero_units(layers, mask, d_head, neurons=False)
    for i, layer in enumerate(layers):
        slices = unit_slices(layer, "neurons", pruned(mask.neurons[i]))
        for lin, dim, idx in slices:
            (tp.prune_linear_out_channels if dim == 0 else tp.prune_linear_in_channels)(lin, idx)
        if slices and hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = layer.mlp.down_proj.in_features
    count = uniform_count(mask)
    config = getattr(model, "config", None)
    if count is not None and config is not None:
        config.intermediate_size = d_mlp - count
    elif count is None:
        warnings.warn(
            f"the mask prunes {mask.per_layer('neurons')} neurons per layer: the model runs, but its config "
            "(one intermediate_size) cannot describe it, so save_pretrained/from_pretrained will not "
            "round-trip. Use select(..., per_layer='uniform') for a saveable model.",
            UserWarning,
            stacklevel=2,
        )
    return model


# ---------------------------------------------------------------- optiPfair


def optipfair_scores(scores_neurons: Float[Tensor, "n_layers d_mlp"], normalize: str = "layer",
                     layers: Sequence[int] | None = None) -> dict[int, Float[Tensor, " d_mlp"]]:
    """lens_bias neuron scores as optiPfair ``fairness_scores`` ({layer: Tensor[d_mlp]}, CPU, fp32).

    Both libraries rank the same way: a high score marks a pruning candidate (lens_bias: largest
    estimated bias reduction; optiPfair's ``prune_model_mlp_glu(fairness_scores=...)`` keeps the
    lowest scores and removes the highest). optiPfair requires scores in [0, 1], so they are min-max
    scaled: per layer (``normalize="layer"``, like optiPfair's own ``compute_fairness_pruning_scores``)
    or over all layers (``"global"``, keeps layers comparable). Either keeps each layer's order, which
    is all its pruner uses. ``layers`` restricts the dict (optiPfair prunes other layers by weight
    magnitude).

    Examples:
        >>> import torch
        >>> s = optipfair_scores(torch.tensor([[0.0, 2.0, 1.0], [5.0, 5.0, 6.0]]))
        >>> s[0].tolist(), s[1].tolist()
        ([0.0, 1.0, 0.5], [0.0, 0.0, 1.0])
    """
    if normalize not in ("layer", "global"):
        raise MaskError(f"normalize must be 'layer' or 'global', got {normalize!r}")
    s = scores_neurons.detach().float().cpu()
    if not torch.isfinite(s).all():
        raise MaskError(
            "neuron scores contain NaN or inf; optiPfair needs finite scores. Recompute them, or replace "
            "excluded units by the minimum score."
        )
    if normalize == "global":
        lo, hi = s.min(), s.max()
    else:
        lo, hi = s.min(dim=1, keepdim=True).values, s.max(dim=1, keepdim=True).values
    span = hi - lo
    scaled = torch.where(span > 0, (s - lo) / torch.where(span > 0, span, 1.0), torch.zeros_like(s))
    scaled = scaled.clamp(0.0, 1.0)
    rows = range(s.shape[0]) if layers is None else layers
    bad = [r for r in rows if not 0 <= r < s.shape[0]]
    if bad:
        raise MaskError(f"layers {bad} out of range 0..{s.shape[0] - 1}")
    return {int(r): scaled[r].clone() for r in rows}


def optipfair_neuron_indices(mask: PruningMask) -> dict[int, list[int]]:
    """The mask's pruned neurons as optiPfair ``zero_neurons_mlp`` input ({layer: [indices]}).

    Examples:
        >>> import torch
        >>> m = PruningMask(torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool))
        >>> m.neurons[1, 2] = False
        >>> optipfair_neuron_indices(m)
        {1: [2]}
    """
    return {i: idx for i in range(mask.neurons.shape[0]) if (idx := pruned(mask.neurons[i]))}


def torch_prune_masks(m: PruningMask, bridge: Bridge) -> dict:
    """``<module>.weight_mask`` tensors of mask ``m`` on ``bridge``'s model, as
    ``torch.nn.utils.prune.custom_from_mask`` takes them (``lens-bias export -f torch-prune``)."""
    m.check(bridge)
    hf = clean_hf_model(bridge)
    to_torch_prune(hf, m)
    return {f"{name}.weight_mask": buf.to(dtype=buf.dtype).contiguous()
            for name, mod in hf.named_modules() for bname, buf in mod.named_buffers(recurse=False)
            if bname == "weight_mask"}
