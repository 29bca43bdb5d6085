"""Turn a :class:`~lens_bias.masks.PruningMask` into real weights, and export it.

Booting a TransformerBridge rewires the Hugging Face model it wraps (its submodules become bridge
components, parameters get ``._original_component`` aliases), so that model cannot be saved or
reused as is. Everything here therefore starts from :func:`clean_hf_model`: a fresh HF model of the
same class and config, filled with the bridge's weights. The bridge itself is never modified.

* :func:`materialize` -- ``mode="zero"``: pruned neurons get zero ``gate_proj``/``up_proj`` rows and
  a zero ``down_proj`` column; pruned heads a zero block of ``o_proj`` columns
  (``h*d_head:(h+1)*d_head``). Shapes are unchanged. ``mode="structural"``: pruned neurons are
  removed (``intermediate_size`` shrinks; needs the same count in every layer); heads are zeroed.
* :func:`export_hf` -- a ``save_pretrained`` folder (safetensors + tokenizer) that plain
  ``transformers`` loads offline, written atomically.
* :func:`to_torch_prune` / :func:`undo_torch_prune` -- ``torch.nn.utils.prune`` masks, reversible
  bit for bit.
* :func:`torch_pruning_indices` / :func:`apply_torch_pruning` -- index lists for, and pruning with,
  the ``torch-pruning`` package (optional: ``pip install torch-pruning==1.6.1``).
* :func:`optipfair_scores` / :func:`optipfair_neuron_indices` -- inputs for optiPfair
  (``fairness_scores`` of ``prune_model_mlp_glu``; ``zero_neurons_mlp``).
* :func:`verify` -- the check that makes all of this trustworthy: logits of a materialized model
  equal the bridge's logits under zero ablation (:func:`lens_bias.ablation.ablate`).

Supported layouts: decoder layers with ``mlp.gate_proj``/``up_proj``/``down_proj`` and
``self_attn.o_proj`` (Llama, Gemma, Mistral, Qwen... as loaded by :func:`lens_bias.load_model`).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformers import PreTrainedModel

from .ablation import ablate
from .errors import LensBiasError, MaskError, RunError
from .masks import PruningMask

MODES = ("zero", "structural")
TORCH_PRUNING_INSTALL = "pip install torch-pruning==1.6.1"

DEFAULT_TEXTS = (
    "The doctor said the results would be ready on Monday.",
    "My neighbor grew up in a small town and now works as an engineer.",
    "Water boils at one hundred degrees Celsius at sea level.",
)

_ORIG = "._original_component"


# ---------------------------------------------------------------- clean HF model


def clean_hf_model(bridge, device: str | torch.device | None = None) -> PreTrainedModel:
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
    with torch.random.fork_rng(devices=[]):  # the throwaway random init must not move the global RNG
        model = type(src)(config)
    model = model.to(dtype)

    by_name: dict[str, Tensor] = {}
    for key, value in src.state_dict().items():
        by_name.setdefault(key.replace(_ORIG, ""), value)

    target = model.state_dict()
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
                f"bridge and {tuple(ref.shape)} in a fresh {type(src).__name__}. Was the bridge's model "
                "pruned structurally in place? Reload it with load_model."
            )
        filled[key] = value
    if missing:
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
    if missing:
        raise LensBiasError(
            f"cannot rebuild the HF model from the bridge: no tensor for {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}. This TransformerLens/transformers version names the "
            "wrapped weights differently; please report it with the model name."
        )

    used = {t.data_ptr() for t in filled.values()}
    for key, value in by_name.items():
        if key in target or value.data_ptr() in used or value.numel() == 0:
            continue
        if bool((value != 0).any()):
            raise LensBiasError(
                f"the bridge holds a non-zero tensor {key} {tuple(value.shape)} that a plain "
                f"{type(src).__name__} has no place for; exporting would change the model's outputs. "
                "Reload the model with load_model before materializing."
            )

    model.load_state_dict(filled, strict=True)
    model.eval()
    return model.to(device)


# ---------------------------------------------------------------- layout helpers


def _decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(dotted name, ModuleList) of the decoder layers: the list whose items have mlp and self_attn."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and all(
            hasattr(x, "mlp") and hasattr(x, "self_attn") for x in module
        ):
            return name, module
    raise MaskError(
        f"{type(model).__name__} has no list of decoder layers with .mlp and .self_attn; lens_bias "
        "materializes decoder-only Llama/Gemma/Mistral/Qwen-style models (load them with load_model)."
    )


def _parts(layer: nn.Module, index: int) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    mlp, attn = layer.mlp, layer.self_attn
    names = ("gate_proj", "up_proj", "down_proj")
    if not all(isinstance(getattr(mlp, n, None), nn.Linear) for n in names) or not isinstance(
        getattr(attn, "o_proj", None), nn.Linear
    ):
        raise MaskError(
            f"layer {index} ({type(layer).__name__}) lacks mlp.gate_proj/up_proj/down_proj or self_attn.o_proj "
            "as nn.Linear; materialize supports gated-MLP decoders (Llama, Gemma, Mistral, Qwen)."
        )
    return mlp.gate_proj, mlp.up_proj, mlp.down_proj, attn.o_proj


def _check_fits(model: nn.Module, mask: PruningMask) -> tuple[str, nn.ModuleList, int]:
    """Check the mask's shapes against an HF model; return (layers name, layers, d_head)."""
    prefix, layers = _decoder_layers(model)
    n_layers, d_mlp = mask.neurons.shape
    n_heads = mask.heads.shape[1]
    if len(layers) != n_layers or mask.heads.shape[0] != n_layers:
        raise MaskError(
            f"mask has {n_layers} layers, the model {len(layers)}: build the mask for this model "
            f"(mask model: {mask.meta.get('model', '?')})."
        )
    d_head = None
    for i, layer in enumerate(layers):
        _, _, down, o_proj = _parts(layer, i)
        if down.in_features != d_mlp:
            raise MaskError(
                f"layer {i} has {down.in_features} MLP neurons, the mask {d_mlp}: the model was already "
                "pruned structurally, or the mask is for another model. Use the unpruned model."
            )
        if o_proj.in_features % n_heads:
            raise MaskError(
                f"layer {i}: o_proj has {o_proj.in_features} inputs, not a multiple of the mask's {n_heads} heads"
            )
        d_head = o_proj.in_features // n_heads
    return prefix, layers, d_head


def _pruned(keep: Bool[Tensor, " n"]) -> list[int]:
    return (~keep).nonzero().flatten().tolist()


def _head_columns(keep: Bool[Tensor, " n_heads"], d_head: int) -> list[int]:
    return [h * d_head + j for h in _pruned(keep) for j in range(d_head)]


@torch.no_grad()
def _zero_units(layers: nn.ModuleList, mask: PruningMask, d_head: int, neurons: bool = True) -> None:
    for i, layer in enumerate(layers):
        gate, up, down, o_proj = _parts(layer, i)
        if neurons:
            idx = torch.tensor(_pruned(mask.neurons[i]), dtype=torch.long, device=down.weight.device)
            if idx.numel():
                down.weight[:, idx] = 0
                for lin in (gate, up):
                    lin.weight[idx] = 0
                    if lin.bias is not None:
                        lin.bias[idx] = 0
        cols = _head_columns(mask.heads[i], d_head)
        if cols:
            o_proj.weight[:, torch.tensor(cols, device=o_proj.weight.device)] = 0


def _uniform_count(mask: PruningMask) -> int | None:
    counts = mask.per_layer("neurons")
    return counts[0] if len(set(counts)) == 1 else None


def _warn_heads_zeroed(mask: PruningMask, what: str) -> None:
    if not mask.heads.all():
        warnings.warn(
            f"{what}: the mask prunes {mask.counts()['heads']} head(s); heads are zeroed (their o_proj "
            "columns set to 0), not removed: HF configs carry one head count for all layers, and removing "
            "a query head breaks grouped-query attention. The output is identical to removal.",
            UserWarning,
            stacklevel=3,
        )


# ---------------------------------------------------------------- materialize


def materialize(bridge, mask: PruningMask, mode: str = "zero",
                device: str | torch.device | None = None) -> PreTrainedModel:
    """A new HF model with ``mask``'s pruned units removed from the weights (the bridge is unchanged).

    * ``mode="zero"``: pruned neuron ``i`` of layer ``L`` gets ``down_proj.weight[:, i] = 0`` and zero
      rows ``i`` of ``gate_proj``/``up_proj`` (and their biases); pruned head ``h`` gets
      ``o_proj.weight[:, h*d_head:(h+1)*d_head] = 0``. Shapes are unchanged; logits equal those of
      ``ablate(bridge, mask, "zero")``.
    * ``mode="structural"``: pruned neurons are removed (rows of gate/up, columns of down) and
      ``config.intermediate_size`` shrinks. HF configs carry one ``intermediate_size``, so every layer
      must lose the same number of neurons (``select(..., per_layer="uniform")``). Pruned heads are
      zeroed as in zero mode, not removed (a warning says so).

    ``device`` defaults to the bridge's device.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.masks import PruningMask
        >>> b = load_model("tiny-random", device="cpu")
        >>> m = PruningMask.keep_all(b); m.neurons[:, :8] = False
        >>> small = materialize(b, m, mode="structural")
        >>> small.config.intermediate_size
        120
        >>> verify(b, small, m) <= 1e-5
        True
    """
    if mode not in MODES:
        raise MaskError(
            f"materialize mode must be one of {MODES}, got {mode!r} (mean ablation has no exact weight form; "
            "use mode='zero')"
        )
    if not isinstance(mask, PruningMask):
        raise MaskError(f"materialize needs a PruningMask, got {type(mask).__name__}")
    mask.check(bridge)
    n_layers, d_mlp = mask.neurons.shape
    if mode == "structural":
        count = _uniform_count(mask)
        if count is None:
            raise MaskError(
                "structural pruning needs the same number of pruned neurons in every layer, because a "
                "Hugging Face config holds one intermediate_size for all layers; this mask prunes "
                f"{mask.per_layer('neurons')} neurons per layer. Build the mask with "
                "select(..., per_layer='uniform'), or use mode='zero' (shape-preserving, same outputs)."
            )
        if count >= d_mlp:
            raise MaskError(f"the mask prunes all {d_mlp} neurons of every layer; lower the budget")
        _warn_heads_zeroed(mask, "structural materialize")

    model = clean_hf_model(bridge, device=device)
    _, layers, d_head = _check_fits(model, mask)
    if mode == "zero":
        _zero_units(layers, mask, d_head)
        return model

    _zero_units(layers, mask, d_head, neurons=False)
    with torch.no_grad():
        for i, layer in enumerate(layers):
            gate, up, down, _ = _parts(layer, i)
            keep = mask.neurons[i].nonzero().flatten().to(down.weight.device)
            if keep.numel() == d_mlp:
                continue
            for lin in (gate, up):
                lin.weight = nn.Parameter(lin.weight[keep].clone())
                if lin.bias is not None:
                    lin.bias = nn.Parameter(lin.bias[keep].clone())
                lin.out_features = keep.numel()
            down.weight = nn.Parameter(down.weight[:, keep].clone())
            down.in_features = keep.numel()
            if hasattr(layer.mlp, "intermediate_size"):
                layer.mlp.intermediate_size = keep.numel()
    model.config.intermediate_size = d_mlp - count
    return model


# ---------------------------------------------------------------- verify


STRUCTURAL_ATOL = 1e-4  # float32 summation-order differences of structurally pruned matrices


@torch.no_grad()
def verify(bridge, hf_model: nn.Module, mask: PruningMask, texts: Sequence[str] = DEFAULT_TEXTS,
           atol: float = 1e-5) -> float:
    """Max abs difference between ``hf_model``'s logits and the bridge's under ``ablate(bridge, mask, "zero")``.

    Each text is tokenized with the bridge's tokenizer and run alone (no padding); logits are
    compared in fp32 (the 1e-5 default assumes fp32 models). Raises :class:`MaskError` if the
    difference is above ``atol`` or not finite.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.masks import random_mask
        >>> b = load_model("tiny-random", device="cpu")
        >>> m = random_mask(b, 10, "neurons")
        >>> verify(b, materialize(b, m), m) <= 1e-5
        True
    """
    if not texts:
        raise MaskError("verify needs at least one text")
    tok = bridge.lens_bias_tokenizer
    b_dev = next(bridge.original_model.parameters()).device
    h_dev = next(hf_model.parameters()).device
    worst = 0.0
    for text in texts:
        ids = tok(text, return_tensors="pt").input_ids
        if ids.shape[1] == 0:
            raise MaskError(f"text {text!r} tokenizes to nothing; give non-empty texts")
        with ablate(bridge, mask, "zero"):
            ref = bridge(ids.to(b_dev), return_type="logits").float().cpu()
        got = hf_model(input_ids=ids.to(h_dev), use_cache=False).logits.float().cpu()
        if ref.shape != got.shape:
            raise MaskError(f"logit shapes differ: bridge {tuple(ref.shape)}, HF model {tuple(got.shape)}")
        diff = float((ref - got).abs().max())
        if diff != diff:  # NaN
            raise MaskError(f"non-finite logits while verifying on {text!r}")
        worst = max(worst, diff)
    if worst > atol:
        mine = getattr(bridge.original_model.config, "_attn_implementation", None)
        theirs = getattr(getattr(hf_model, "config", None), "_attn_implementation", None)
        why = (
            "The model does not implement this mask: was it built from another mask or model, or modified "
            "afterwards? Rebuild it with materialize."
        )
        if mine and theirs and mine != theirs:
            why = (
                f"The HF model uses {theirs} attention and the bridge {mine}; the kernels round differently "
                f"(a few 1e-5 on logits of real models). Load it with attn_implementation={mine!r} for an "
                "exact comparison; if the difference stays, the model does not implement this mask."
            )
        raise MaskError(
            f"the materialized model differs from the bridge under zero ablation by {worst:.3g} "
            f"(max abs logit difference, allowed {atol:g}). {why}"
        )
    return worst


# ---------------------------------------------------------------- export


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise RunError(f"{out_dir} exists and is not a folder; choose another output path")
        if any(out_dir.iterdir()) and not overwrite:
            raise RunError(
                f"{out_dir} exists and is not empty; choose a new folder or pass overwrite=True "
                "(--overwrite) to replace it"
            )


def export_hf(bridge, mask: PruningMask, out_dir: str | Path, mode: str = "zero", overwrite: bool = False,
              check: bool = True, texts: Sequence[str] = DEFAULT_TEXTS,
              attn_implementation: str | None = "eager") -> Path:
    """Write the materialized model as a Hugging Face folder; return its path.

    The folder holds ``config.json``, ``model.safetensors`` (``save_pretrained``), the tokenizer
    files and, for provenance, the mask in ``lens_bias_mask/`` (``mask.safetensors`` + ``mask.json``).
    ``transformers.AutoModelForCausalLM.from_pretrained(out_dir)`` loads it offline without lens_bias.
    It is written to a temporary folder next to ``out_dir`` and renamed into place, so a crash never
    leaves a half-written model. An existing non-empty ``out_dir`` is refused unless ``overwrite``.
    With ``check`` (default) the model is first compared with the bridge (:func:`verify`): within
    1e-5 for ``mode="zero"``, 1e-4 for ``"structural"`` (shorter matrices sum in another order; the
    difference is a few 1e-5 on SmolLM2 in float32 and 0 in float64).

    The weights are exact. By default (``attn_implementation="eager"``) the folder's ``config.json``
    records the eager attention kernel the bridge runs, so a plain ``from_pretrained`` reproduces the
    simulation bit for bit. ``attn_implementation=None`` leaves the choice to transformers (usually
    ``sdpa``: faster, but it rounds differently, max abs logit difference ~3e-5 on SmolLM2 /
    Gemma-3-270M).

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.masks import random_mask
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
    tokenizer = getattr(bridge, "lens_bias_tokenizer", None) or bridge.tokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    old = None
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        mask.save(tmp / "lens_bias_mask")
        _prepare_out_dir(out_dir, overwrite)  # again: it may have appeared meanwhile
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            old.rmdir()
            out_dir.rename(old)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out_dir.exists():
            old.rename(out_dir)
            old = None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out_dir


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
        >>> from lens_bias.masks import random_mask
        >>> b = load_model("tiny-random", device="cpu")
        >>> m = clean_hf_model(b)
        >>> _ = to_torch_prune(m, random_mask(b, 10, "neurons"))
        >>> undo_torch_prune(m)
        6
    """
    from torch.nn.utils import prune

    _, layers, d_head = _check_fits(model, mask)
    for i, layer in enumerate(layers):
        gate, up, down, o_proj = _parts(layer, i)
        idx = _pruned(mask.neurons[i])
        if idx:
            for lin, dim in ((gate, 0), (up, 0), (down, 1)):
                keep = torch.ones_like(lin.weight)
                keep.index_fill_(dim, torch.tensor(idx, device=keep.device), 0)
                prune.custom_from_mask(lin, "weight", keep)
        cols = _head_columns(mask.heads[i], d_head)
        if cols:
            keep = torch.ones_like(o_proj.weight)
            keep[:, torch.tensor(cols, device=keep.device)] = 0
            prune.custom_from_mask(o_proj, "weight", keep)
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
        prefix, _, d_head = _check_fits(model, mask)
    if d_head is None and not mask.heads.all():
        raise MaskError("the mask prunes heads: pass model= (or d_head=) so head channels can be computed")
    out: dict[str, list[int]] = {}
    for i in range(mask.neurons.shape[0]):
        idx = _pruned(mask.neurons[i])
        if idx:
            for name in ("gate_proj", "up_proj", "down_proj"):
                out[f"{prefix}.{i}.mlp.{name}"] = list(idx)
        if not mask.heads[i].all():
            out[f"{prefix}.{i}.self_attn.o_proj"] = _head_columns(mask.heads[i], d_head)
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
    ``prune_linear_in_channels`` on ``down_proj`` (indices from :func:`torch_pruning_indices`).
    Sets ``config.intermediate_size`` when every layer lost the same number of neurons (otherwise
    warns: the model runs, but its config cannot describe it for ``save_pretrained``). Pruned heads are
    zeroed (``o_proj`` columns), not removed, as in structural :func:`materialize`.
    Needs ``pip install torch-pruning==1.6.1``.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.masks import PruningMask
        >>> b = load_model("tiny-random", device="cpu")
        >>> mk = PruningMask.keep_all(b); mk.neurons[:, :8] = False
        >>> apply_torch_pruning(clean_hf_model(b), mk).config.intermediate_size
        120
    """
    tp = _import_torch_pruning()
    prefix, layers, d_head = _check_fits(model, mask)
    d_mlp = mask.neurons.shape[1]
    if (~mask.neurons).sum(-1).max() >= d_mlp:
        raise MaskError("the mask prunes every neuron of some layer; lower the budget")
    _warn_heads_zeroed(mask, "apply_torch_pruning")
    _zero_units(layers, mask, d_head, neurons=False)
    indices = torch_pruning_indices(mask, d_head=d_head, prefix=prefix)
    for i, layer in enumerate(layers):
        gate, up, down, _ = _parts(layer, i)
        key = f"{prefix}.{i}.mlp."
        if key + "down_proj" not in indices:
            continue
        tp.prune_linear_out_channels(gate, indices[key + "gate_proj"])
        tp.prune_linear_out_channels(up, indices[key + "up_proj"])
        tp.prune_linear_in_channels(down, indices[key + "down_proj"])
        if hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = down.in_features
    count = _uniform_count(mask)
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
    return {i: idx for i in range(mask.neurons.shape[0]) if (idx := _pruned(mask.neurons[i]))}
