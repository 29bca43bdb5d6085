"""The Hugging Face decoder layout lens_bias prunes: where the decoder layers are, and which weight
rows and columns belong to one unit.

lens_bias supports decoder-only models with a gated MLP (Llama, Gemma, Mistral, Qwen): each decoder
layer has ``mlp.gate_proj``, ``mlp.up_proj``, ``mlp.down_proj`` and ``self_attn.o_proj`` as
``nn.Linear``. A unit is

* a neuron ``i`` of layer ``L``: row ``i`` of ``gate_proj`` and of ``up_proj`` (dim 0, the output
  features) and column ``i`` of ``down_proj`` (dim 1, the input features);
* a head ``h`` of layer ``L``: the columns ``h*d_head : (h+1)*d_head`` of ``o_proj`` (dim 1).

:func:`unit_channels` says this once, by module name (no model needed); :func:`unit_slices` returns
the same slices as modules of one layer. Materialization, the structural export,
``torch.nn.utils.prune`` and ``torch-pruning`` all read them from here, like a ``torch-pruning``
``Group`` lists every (module, dim, indices) coupled to one pruning unit.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import ModelLoadError
from ..vocab import Kind, check_kind

MLP_PARTS = ("gate_proj", "up_proj", "down_proj")
PARTS = (*(f"mlp.{n}" for n in MLP_PARTS), "self_attn.o_proj")

UnitChannels = tuple[str, int, list[int]]  # (module name inside a layer, weight dim, channel indices)
# (an nn.Linear, or its bridge wrapper; weight dim; channel indices)
UnitSlice = tuple[nn.Module, int, list[int]]


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(dotted name, ModuleList) of the decoder layers: the first non-empty ``nn.ModuleList`` whose
    items all have an ``.mlp``; ``None`` if the model has none.

    Examples:
        >>> from lens_bias.model.load import tiny_random_hf
        >>> name, layers = find_decoder_layers(tiny_random_hf()[0])
        >>> name, len(layers)
        ('model.layers', 2)
        >>> find_decoder_layers(nn.Linear(2, 2)) is None
        True
    """
    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)
                 and all(hasattr(x, "mlp") for x in m)), None)


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Like :func:`find_decoder_layers`, but raises :class:`~lens_bias.errors.ModelLoadError` when
    the model has no decoder layers.

    Examples:
        >>> from lens_bias.model.load import tiny_random_hf
        >>> decoder_layers(tiny_random_hf()[0])[0]
        'model.layers'
        >>> decoder_layers(nn.Linear(2, 2))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        lens_bias.errors.ModelLoadError: Linear has no list of decoder layers with an .mlp module; ...
    """
    found = find_decoder_layers(model)
    if found is None:
        raise ModelLoadError(
            f"{type(model).__name__} has no list of decoder layers with an .mlp module; lens_bias supports "
            "decoder-only models with a gated MLP (Llama, Gemma, Mistral, Qwen)."
        )
    return found


def missing_parts(layer: nn.Module) -> list[str]:
    """The names in :data:`PARTS` that ``layer`` lacks as ``nn.Linear`` (empty for a supported layer).

    Examples:
        >>> from lens_bias.model.load import tiny_random_hf
        >>> missing_parts(tiny_random_hf()[0].model.layers[0])
        []
        >>> missing_parts(nn.Module())
        ['mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj', 'self_attn.o_proj']
    """
    missing = []
    for name in PARTS:
        owner, _, leaf = name.partition(".")
        if not isinstance(getattr(getattr(layer, owner, None), leaf, None), nn.Linear):
            missing.append(name)
    return missing


def check_layout(model: nn.Module) -> None:
    """lens_bias removes gated-MLP neurons (``mlp.gate_proj``/``up_proj``/``down_proj``) and heads
    (``self_attn.o_proj``) from decoder layers; say what a model lacks before anything runs.

    Raises :class:`~lens_bias.errors.ModelLoadError` naming the architecture and what it lacks.

    Examples:
        >>> from lens_bias.model.load import tiny_random_hf
        >>> check_layout(tiny_random_hf()[0])
    """
    arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    found = find_decoder_layers(model)
    if found is None:
        raise ModelLoadError(
            f"architecture {arch} is not supported: no list of decoder layers with an .mlp module. "
            "lens_bias supports decoder-only models with a gated MLP (Llama, Gemma, Mistral, Qwen)."
        )
    first = found[1][0]
    missing = missing_parts(first)
    if missing:
        gated = " its MLP is not gated;" if "mlp.gate_proj" in missing else ""
        found_names = ", ".join(n for n, _ in first.mlp.named_children()) or "-"
        raise ModelLoadError(
            f"architecture {arch} is not supported:{gated} its decoder layers ({type(first).__name__}) have "
            f"no {', '.join(missing)} as nn.Linear (the MLP has: {found_names}). lens_bias prunes gated-MLP "
            "neurons and attention heads through those modules: use a Llama, Gemma, Mistral or Qwen-style "
            "model."
        )


def head_columns(heads: Sequence[int], d_head: int) -> list[int]:
    """The ``o_proj`` input columns of ``heads``: ``h*d_head ... (h+1)*d_head - 1`` for each, in order.

    Examples:
        >>> head_columns([0, 2], 2)
        [0, 1, 4, 5]
    """
    return [h * d_head + j for h in heads for j in range(d_head)]


def unit_channels(kind: Kind, units: Sequence[int], d_head: int | None = None) -> list[UnitChannels]:
    """The weight channels that belong to ``units`` (indices of one layer's neurons or heads), as
    (module name inside the decoder layer, weight dim, channel indices); dim 0 is a weight row (an
    output feature, and its bias entry), dim 1 a weight column (an input feature). ``d_head`` is
    needed for heads only. Empty for no units.

    Examples:
        >>> unit_channels("neurons", [3, 5])
        [('mlp.gate_proj', 0, [3, 5]), ('mlp.up_proj', 0, [3, 5]), ('mlp.down_proj', 1, [3, 5])]
        >>> unit_channels("heads", [1], d_head=2)
        [('self_attn.o_proj', 1, [2, 3])]
    """
    units = [int(u) for u in units]
    if check_kind(kind) == "neurons":
        return [(f"mlp.{n}", 1 if n == "down_proj" else 0, list(units)) for n in MLP_PARTS] if units else []
    if not units:
        return []
    if d_head is None:
        raise ValueError("unit_channels needs d_head for heads")
    return [("self_attn.o_proj", 1, head_columns(units, d_head))]


def unit_slices(layer: nn.Module, kind: Kind, units: Sequence[int],
                d_head: int | None = None) -> list[UnitSlice]:
    """:func:`unit_channels` with the modules of the decoder layer ``layer``:
    ``[(nn.Linear, dim, indices), ...]`` (for neurons: gate rows, up rows, down columns; for heads:
    o_proj columns). On a bridge's ``original_model`` the modules are TransformerLens wrappers that
    hold the same ``.weight``.

    Examples:
        >>> from lens_bias.model.load import tiny_random_hf
        >>> layer = tiny_random_hf()[0].model.layers[0]
        >>> [(lin.out_features, dim, idx) for lin, dim, idx in unit_slices(layer, "neurons", [7])]
        [(128, 0, [7]), (128, 0, [7]), (64, 1, [7])]
        >>> [(dim, idx) for _, dim, idx in unit_slices(layer, "heads", [3], d_head=16)][0][1][:3]
        [48, 49, 50]
    """
    return [(layer.get_submodule(name), dim, idx) for name, dim, idx in unit_channels(kind, units, d_head)]
