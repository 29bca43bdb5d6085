"""Turn a :class:`~lens_bias.masks.PruningMask` into real weights, and check them against the simulation.

Booting a TransformerBridge rewires the Hugging Face model it wraps (its submodules become bridge
components, parameters get ``._original_component`` aliases), so that model cannot be saved or
reused as is. Everything here therefore starts from :func:`clean_hf_model`: a fresh HF model of the
same class and config, filled with the bridge's weights. The bridge itself is never modified.

* :func:`materialize` -- ``mode="zero"``: pruned neurons get zero ``gate_proj``/``up_proj`` rows and
  a zero ``down_proj`` column; pruned heads a zero block of ``o_proj`` columns
  (``h*d_head:(h+1)*d_head``). Shapes are unchanged. ``mode="structural"``: pruned neurons are
  removed (``intermediate_size`` shrinks; needs the same count in every layer); heads are zeroed.
  Which rows and columns belong to a unit is read from :mod:`lens_bias.model.layout`.
The check that makes all of this trustworthy (logits of a materialized model equal the bridge's
logits under zero ablation, up to the measured rounding) is :mod:`lens_bias.weights.verification`.

The Hugging Face folder export is :mod:`lens_bias.weights.export`; other libraries' formats
(``torch.nn.utils.prune``, ``torch-pruning``, optiPfair) are :mod:`lens_bias.weights.interop`.

Supported layouts: decoder layers with ``mlp.gate_proj``/``up_proj``/``down_proj`` and
``self_attn.o_proj`` (Llama, Gemma, Mistral, Qwen... as loaded by :func:`lens_bias.load_model`).
"""

from __future__ import annotations

import copy
import warnings

import torch
from jaxtyping import Bool
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..bridge import Bridge
from ..errors import ChoiceError, LensBiasError, MaskError
from ..masks import PruningMask
from ..model.layout import find_decoder_layers, missing_parts, unit_slices
from ..vocab import MATERIALIZATIONS

STRUCTURAL_ATOL = 1e-4  # float32 summation-order differences of structurally pruned matrices

DEFAULT_TEXTS = (
    "The doctor said the results would be ready on Monday.",
    "My neighbor grew up in a small town and now works as an engineer.",
    "Water boils at one hundred degrees Celsius at sea level.",
)

_ORIG = "._original_component"


# ---------------------------------------------------------------- clean HF model


def clean_hf_model(bridge: Bridge, device: str | torch.device | None = None) -> PreTrainedModel:
    """A fresh, saveable Hugging Face model holding the bridge's weights (the bridge is not touched).

    The bridge's HF model (``bridge.original_model``) cannot be saved: booting the bridge wraps its
    submodules, so its state dict has ``._original_component`` segments and alias duplicates. This
    builds a new model of the same class from a copy of its config and fills every tensor from the
    bridge's state dict (the alias whose name, without ``._original_component``, is the HF name).
    Tied output embeddings are filled from the input embeddings when absent. A bridge-only tensor
    that is not an alias must be all zero (the bridge adds a zero ``lm_head.bias``), else this raises.

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> m = clean_hf_model(b)
        >>> type(m).__name__, m.config.intermediate_size
        ('LlamaForCausalLM', 128)
    """
    src = bridge.original_model
    first = next(src.parameters())
    dtype = first.dtype
    device = first.device if device is None else torch.device(device)
    config = copy.deepcopy(src.config)
    model = _blank_model(type(src), config, dtype, device)

    by_name = bridge_tensors(bridge)
    target = model.state_dict()
    filled, missing = _fill_from_bridge(by_name, target, type(src).__name__)
    if missing:
        _fill_tied(model, config, filled, missing)
    if missing:
        raise LensBiasError(
            f"cannot rebuild the HF model from the bridge: no tensor for {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}. This TransformerLens/transformers version names the "
            "wrapped weights differently; please report it with the model name."
        )
    _check_leftovers(by_name, target, filled, type(src).__name__)
    model.load_state_dict(filled, strict=True)
    model.eval()
    return model.to(device)


def _blank_model(cls: type, config, dtype: torch.dtype, device: torch.device) -> PreTrainedModel:
    """A model of ``cls`` built directly on ``device`` in ``dtype`` (its throwaway random init costs
    a second on a GPU, where an 8B model initialised on the CPU in float32 took a minute and 30 GB of
    host memory), without moving the global random state."""
    old = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.set_default_dtype(dtype)
        try:
            with torch.device(device):
                model = cls(config)
        finally:
            torch.set_default_dtype(old)
    return model.to(dtype)


def bridge_tensors(bridge: Bridge) -> dict[str, Tensor]:
    """The bridge's weights by their Hugging Face names (``._original_component`` segments removed;
    the first of several aliases kept). Views, not copies."""
    by_name: dict[str, Tensor] = {}
    for key, value in bridge.original_model.state_dict().items():
        by_name.setdefault(key.replace(_ORIG, ""), value)
    return by_name


def _fill_from_bridge(by_name: dict[str, Tensor], target: dict[str, Tensor],
                      cls: str) -> tuple[dict[str, Tensor], list[str]]:
    """The bridge's tensor for every key of ``target`` (shapes checked), and the keys it lacks."""
    filled: dict[str, Tensor] = {}
    missing = []
    for key, ref in target.items():
        value = by_name.get(key)
        if value is None:
            missing.append(key)
            continue
        if value.shape != ref.shape:
            raise LensBiasError(
                f"cannot rebuild the HF model from the bridge: {key} has shape {tuple(value.shape)} in the "
                f"bridge and {tuple(ref.shape)} in a fresh {cls}. Was the bridge's model "
                "pruned structurally in place? Reload it with load_model."
            )
        filled[key] = value
    return filled, missing


def _fill_tied(model: nn.Module, config, filled: dict[str, Tensor], missing: list[str]) -> None:
    """Fill a missing tied output embedding from the input embedding (removed from ``missing``)."""
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    out_name = names.get(id(out_emb.weight)) if out_emb is not None else None
    in_name = names.get(id(in_emb.weight)) if in_emb is not None else None
    tied = getattr(config, "tie_word_embeddings", False) or (
        out_emb is not None and out_emb.weight is in_emb.weight
    )
    for key in list(missing):
        if tied and key == out_name and in_name in filled:
            filled[key] = filled[in_name]
            missing.remove(key)


def _check_leftovers(by_name: dict[str, Tensor], target: dict[str, Tensor], filled: dict[str, Tensor],
                     cls: str) -> None:
    """A bridge-only tensor that is not an alias of a filled one must be all zero."""
    used = {t.data_ptr() for t in filled.values()}
    for key, value in by_name.items():
        if key in target or value.data_ptr() in used or value.numel() == 0:
            continue
        if bool((value != 0).any()):
            raise LensBiasError(
                f"the bridge holds a non-zero tensor {key} {tuple(value.shape)} that a plain "
                f"{cls} has no place for; exporting would change the model's outputs. "
                "Reload the model with load_model before materializing."
            )


# ---------------------------------------------------------------- mask against an HF model


def check_fits(model: nn.Module, mask: PruningMask) -> tuple[str, nn.ModuleList, int]:
    """Check the mask's shapes against an HF model; return (layers name, layers, d_head).

    Examples:
        >>> from lens_bias.model.load import tiny_random_hf
        >>> m = PruningMask(torch.ones(2, 128, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool))
        >>> name, layers, d_head = check_fits(tiny_random_hf()[0], m)
        >>> name, len(layers), d_head
        ('model.layers', 2, 16)
    """
    found = find_decoder_layers(model)
    if found is None or not all(hasattr(x, "self_attn") for x in found[1]):
        raise MaskError(
            f"{type(model).__name__} has no list of decoder layers with .mlp and .self_attn; lens_bias "
            "materializes decoder-only Llama/Gemma/Mistral/Qwen-style models (load them with load_model)."
        )
    prefix, layers = found
    n_layers, d_mlp = mask.neurons.shape
    n_heads = mask.heads.shape[1]
    if len(layers) != n_layers or mask.heads.shape[0] != n_layers:
        raise MaskError(
            f"mask has {n_layers} layers, the model {len(layers)}: build the mask for this model "
            f"(mask model: {mask.meta.get('model', '?')})."
        )
    d_head = None
    for i, layer in enumerate(layers):
        if missing_parts(layer):
            raise MaskError(
                f"layer {i} ({type(layer).__name__}) lacks mlp.gate_proj/up_proj/down_proj or "
                "self_attn.o_proj as nn.Linear; materialize supports gated-MLP decoders (Llama, Gemma, "
                "Mistral, Qwen)."
            )
        down, o_proj = layer.mlp.down_proj, layer.self_attn.o_proj
        if down.in_features != d_mlp:
            raise MaskError(
                f"layer {i} has {down.in_features} MLP neurons, the mask {d_mlp}: the model was already "
                "pruned structurally, or the mask is for another model. Use the unpruned model."
            )
        if o_proj.in_features % n_heads:
            raise MaskError(
                f"layer {i}: o_proj has {o_proj.in_features} inputs, not a multiple of the mask's "
                f"{n_heads} heads"
            )
        d_head = o_proj.in_features // n_heads
    return prefix, layers, d_head


def pruned(keep: Bool[Tensor, " n"]) -> list[int]:
    """Indices of the pruned (False) entries of one layer's keep tensor.

    Examples:
        >>> pruned(torch.tensor([True, False, True, False]))
        [1, 3]
    """
    return (~keep).nonzero().flatten().tolist()


@torch.no_grad()
def _zero_channels(lin: nn.Module, dim: int, idx: list[int]) -> None:
    """Zero weight rows (``dim`` 0, with their bias entries) or columns (``dim`` 1) ``idx`` of ``lin``."""
    index = torch.tensor(idx, dtype=torch.long, device=lin.weight.device)
    if dim == 0:
        lin.weight[index] = 0
        if lin.bias is not None:
            lin.bias[index] = 0
    else:
        lin.weight[:, index] = 0


@torch.no_grad()
def zero_units(layers: nn.ModuleList, mask: PruningMask, d_head: int, neurons: bool = True) -> None:
    """Zero, in place, the weight slices (:func:`lens_bias.model.layout.unit_slices`) of the mask's pruned
    heads and, with ``neurons``, of its pruned neurons."""
    for i, layer in enumerate(layers):
        slices = unit_slices(layer, "neurons", pruned(mask.neurons[i])) if neurons else []
        slices += unit_slices(layer, "heads", pruned(mask.heads[i]), d_head)
        for lin, dim, idx in slices:
            _zero_channels(lin, dim, idx)


def uniform_count(mask: PruningMask) -> int | None:
    """The number of pruned neurons per layer if every layer prunes the same number, else None."""
    counts = mask.per_layer("neurons")
    return counts[0] if len(set(counts)) == 1 else None


def warn_heads_zeroed(mask: PruningMask, what: str) -> None:
    """Warn (at the caller's caller) that pruned heads are zeroed, not removed."""
    if not mask.heads.all():
        warnings.warn(
            f"{what}: the mask prunes {mask.counts()['heads']} head(s); heads are zeroed (their o_proj "
            "columns set to 0), not removed: HF configs carry one head count for all layers, and removing "
            "a query head breaks grouped-query attention. The output is identical to removal.",
            UserWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------- materialize


def materialize(bridge: Bridge, mask: PruningMask, mode: str = "zero",
                device: str | torch.device | None = None,
                model: PreTrainedModel | None = None) -> PreTrainedModel:
    """A new HF model with ``mask``'s pruned units removed from the weights (the bridge is unchanged).

    * ``mode="zero"``: pruned neuron ``i`` of layer ``L`` gets ``down_proj.weight[:, i] = 0`` and zero
      rows ``i`` of ``gate_proj``/``up_proj`` (and their biases); pruned head ``h`` gets
      ``o_proj.weight[:, h*d_head:(h+1)*d_head] = 0``. Shapes are unchanged; logits equal those of
      ``ablate(bridge, mask, "zero")``.
    * ``mode="structural"``: pruned neurons are removed (rows of gate/up, columns of down) and
      ``config.intermediate_size`` shrinks. HF configs carry one ``intermediate_size``, so every layer
      must lose the same number of neurons (``select(..., per_layer="uniform")``). Pruned heads are
      zeroed as in zero mode, not removed (a warning says so).

    ``device`` defaults to the bridge's device. ``model``, a :func:`clean_hf_model` of this bridge,
    is pruned in place instead of a new one (:func:`lens_bias.weights.verification.materialize_checked`
    measures its rounding first).

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.masks import PruningMask
        >>> b = load_model("tiny-random", device="cpu")
        >>> m = PruningMask.keep_all(b); m.neurons[:, :8] = False
        >>> small = materialize(b, m, mode="structural")
        >>> small.config.intermediate_size
        120
        >>> from lens_bias.weights.verification import verify
        >>> verify(b, small, m) <= 1e-5
        True
    """
    if mode not in MATERIALIZATIONS:
        raise ChoiceError(f"materialize mode must be one of {', '.join(MATERIALIZATIONS)}; got {mode!r} "
                          "(mean ablation has no exact weight form; use mode='zero')")
    if not isinstance(mask, PruningMask):
        raise MaskError(f"materialize needs a PruningMask, got {type(mask).__name__}")
    mask.check(bridge)
    d_mlp = mask.neurons.shape[1]
    if mode == "structural":
        count = _structural_count(mask, d_mlp)
        warn_heads_zeroed(mask, "structural materialize")

    model = clean_hf_model(bridge, device=device) if model is None else model
    _, layers, d_head = check_fits(model, mask)
    if mode == "zero":
        zero_units(layers, mask, d_head)
        return model

    zero_units(layers, mask, d_head, neurons=False)
    _remove_neurons(layers, mask, d_mlp)
    model.config.intermediate_size = d_mlp - count
    return model


def _structural_count(mask: PruningMask, d_mlp: int) -> int:
    """The number of neurons structural pruning removes from every layer (refuses uneven masks)."""
    count = uniform_count(mask)
    if count is None:
        raise MaskError(
            "structural pruning needs the same number of pruned neurons in every layer, because a "
            "Hugging Face config holds one intermediate_size for all layers; this mask prunes "
            f"{mask.per_layer('neurons')} neurons per layer. Build the mask with "
            "select(..., per_layer='uniform'), or use mode='zero' (shape-preserving, same outputs)."
        )
    if count >= d_mlp:
        raise MaskError(f"the mask prunes all {d_mlp} neurons of every layer; lower the budget")
    return count


def _keep_channels(lin: nn.Module, dim: int, keep: Tensor) -> None:
    """Keep only weight rows (``dim`` 0, with their bias entries) or columns (``dim`` 1) ``keep``."""
    if dim == 0:
        lin.weight = nn.Parameter(lin.weight[keep].clone())
        if lin.bias is not None:
            lin.bias = nn.Parameter(lin.bias[keep].clone())
        lin.out_features = keep.numel()
    else:
        lin.weight = nn.Parameter(lin.weight[:, keep].clone())
        lin.in_features = keep.numel()


@torch.no_grad()
def _remove_neurons(layers: nn.ModuleList, mask: PruningMask, d_mlp: int) -> None:
    """Remove the pruned neurons' slices from every layer (shapes shrink)."""
    for i, layer in enumerate(layers):
        keep = mask.neurons[i].nonzero().flatten().to(layer.mlp.down_proj.weight.device)
        if keep.numel() == d_mlp:
            continue
        for lin, dim, _ in unit_slices(layer, "neurons", pruned(mask.neurons[i])):
            _keep_channels(lin, dim, keep)
        if hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = keep.numel()
