"""Mean (or any constant) ablation written into the weights exactly: fold the constants into biases.

Replacing a pruned neuron's activation by a constant ``c`` at every position adds ``c * W_down[:, i]``
to the MLP output everywhere: a constant vector, which is a bias of ``down_proj``. A pruned head whose
``hook_z`` is replaced by a constant ``c_h`` ([d_head]) adds ``W_o[:, head block] @ c_h``: a bias of
``o_proj``. So :func:`fold_constants` zeroes the pruned units' weights (as zero ablation does) and adds
those vectors as biases; the result equals ``ablate(bridge, mask, "mean", means=constants)`` up to
float rounding, and it loads back as a plain Hugging Face model.

Hugging Face Llama-family configs turn biases on per block (``mlp_bias``: gate/up/down;
``attention_bias``: q/k/v/o); the biases that were absent are added as zeros. Architectures without
such a flag are refused with a message.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from ..bridge import Bridge
from ..errors import MaskError
from ..masks import PruningMask
from ..vocab import KINDS
from .materialize import check_fits, clean_hf_model, pruned, zero_units

BIAS_FLAGS = {"neurons": ("mlp_bias", ("gate_proj", "up_proj", "down_proj")),
              "heads": ("attention_bias", ("q_proj", "k_proj", "v_proj", "o_proj"))}


def _add_zero_bias(lin: nn.Module) -> None:
    if lin.bias is None:
        lin.bias = nn.Parameter(torch.zeros(lin.out_features, dtype=lin.weight.dtype,
                                            device=lin.weight.device))


def enable_biases(model: PreTrainedModel, layers: nn.ModuleList, kind: str) -> None:
    flag, names = BIAS_FLAGS[kind]
    if not hasattr(model.config, flag):
        raise MaskError(f"{type(model).__name__} has no {flag!r} config flag, so folded {kind} constants "
                        "could not be saved as biases; use zero ablation for this architecture")
    for layer in layers:
        block = layer.mlp if kind == "neurons" else layer.self_attn
        for n in names:
            _add_zero_bias(getattr(block, n))
    setattr(model.config, flag, True)


@torch.no_grad()
def fold_constants(bridge: Bridge, mask: PruningMask, constants: dict,
                   device: str | torch.device | None = None,
                   model: PreTrainedModel | None = None) -> PreTrainedModel:
    """A new HF model in which ``mask``'s pruned units output ``constants`` (``neurons`` [n_layers,
    d_mlp], ``heads`` [n_layers, n_heads, d_head], e.g. :func:`lens_bias.hooks.capture.mean_activations`)
    at every position: their weights zeroed, the constants folded into ``down_proj`` / ``o_proj``
    biases. Logits equal ``ablate(bridge, mask, "mean", constants)``.

    Examples:
        >>> from lens_bias import load_model
        >>> from lens_bias.hooks.capture import mean_activations
        >>> from lens_bias.prompts.pairs import neutral_text
        >>> from lens_bias.selection.topk import random_mask
        >>> b = load_model("tiny-random", device="cpu")
        >>> m = fold_constants(b, random_mask(b, 6, "neurons"), mean_activations(b, neutral_text()[:8]))
        >>> m.config.mlp_bias, float(m.model.layers[0].mlp.gate_proj.bias.abs().max())
        (True, 0.0)
    """
    mask.check(bridge)
    model = clean_hf_model(bridge, device=device) if model is None else model
    _, layers, d_head = check_fits(model, mask)
    biases = {}
    for i, layer in enumerate(layers):  # from the weights before they are zeroed
        if not mask.neurons[i].all():
            idx = pruned(mask.neurons[i])
            w = layer.mlp.down_proj.weight
            c = constants["neurons"][i][idx].to(w.device, torch.float64)
            biases[("neurons", i)] = w[:, idx].double() @ c
        if not mask.heads[i].all():
            w = layer.self_attn.o_proj.weight
            cols = [h * d_head + j for h in pruned(mask.heads[i]) for j in range(d_head)]
            c = torch.cat([constants["heads"][i][h]
                           for h in pruned(mask.heads[i])]).to(w.device, torch.float64)
            biases[("heads", i)] = w[:, cols].double() @ c
    for kind in KINDS:
        if any(k == kind for k, _ in biases):
            enable_biases(model, layers, kind)
    zero_units(layers, mask, d_head)
    for (kind, i), b in biases.items():
        lin = layers[i].mlp.down_proj if kind == "neurons" else layers[i].self_attn.o_proj
        lin.bias += b.to(lin.bias.dtype)
    return model
