"""Edits of the residual stream along the Black-White difference: directional ablation, always-on
steering and conditional steering, as hooks, and folded into the weights where that is exact.

The direction read at layer ``L`` is the mean, over train pairs, of the Black minus the White
prompt's residual stream at the last token (``v_L``; ``d_L = v_L / |v_L|``).

* **Directional ablation** removes ``d`` from the residual stream everywhere: ``r - (r . d) d``
  wherever an attention, an MLP or the final norm reads it. In a pre-norm model this equals
  orthogonalizing every matrix that writes to the stream (the embedding, each ``o_proj`` and
  ``down_proj``) against ``d`` (:func:`fold_direction`; a tied output embedding is untied first, so
  the logits still read the original one). Rank 1 removed from each writer.
* **Always-on steering** adds ``alpha v_L`` to the stream entering layer ``L``: a constant, exactly a
  bias of layer ``L-1``'s ``down_proj`` (:func:`fold_steering`). One vector.
* **Conditional steering** moves each position toward the midpoint of the two groups along ``d``, by
  how far a linear probe (the projection on ``d``) puts it on one side: ``r - beta s(r) h d`` with
  ``s = clamp((r . d - c) / h, -1, 1)``, ``c`` the midpoint and ``h`` half the distance between the
  groups' mean projections. Positions the probe reads as neutral barely move. Not linear, so not
  foldable: simulated only.

Models whose attention and MLP outputs pass a norm of their own before the residual stream (Gemma
2 / 3) cannot have a write folded into a projection: :func:`fold_direction` and :func:`fold_steering`
refuse them, naming the reason.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformers import PreTrainedModel

from ..bridge import Bridge, renormalized_outputs
from ..errors import InterventionError
from ..model.layout import decoder_layers
from ..weights.folding import enable_biases
from ..weights.materialize import clean_hf_model
from .residual import resid_hook


def unit(v: Float[Tensor, " d_model"]) -> Float[Tensor, " d_model"]:
    """``v`` scaled to length 1 (refused when it is 0)."""
    n = float(v.norm())
    if not n > 0:
        raise InterventionError("the Black-White difference is 0 at this layer: there is no direction "
                                "to remove")
    return v / n


def project_out(d: Float[Tensor, " d_model"]):
    """A hook function ``r -> r - (r . d) d`` (``d`` of length 1)."""
    def fn(act, hook):
        u = d.to(act.device, act.dtype)
        return act - (act @ u)[..., None] * u
    return fn


def direction_hooks(bridge: Bridge, d: Float[Tensor, " d_model"]) -> list:
    """Directional ablation of ``d``: the projection on every residual stream an attention, an MLP
    or the final norm reads (entering each layer, between its attention and its MLP, and entering the
    final norm: ``2 n_layers + 1`` hooks)."""
    d = unit(d)
    n = bridge.cfg.n_layers
    names = ([resid_hook(bridge, layer) for layer in range(n + 1)]
             + [f"blocks.{i}.hook_resid_mid" for i in range(n)])
    return [(name, project_out(d)) for name in names]


def steering_hooks(bridge: Bridge, layer: int, vec: Float[Tensor, " d_model"]) -> list:
    """Add ``vec`` to the residual stream entering ``layer`` at every position."""
    def fn(act, hook):
        return act + vec.to(act.device, act.dtype)
    return [(resid_hook(bridge, layer), fn)]


def conditional_hooks(bridge: Bridge, layer: int, black_mean: Float[Tensor, " d_model"],
                      white_mean: Float[Tensor, " d_model"], beta: float = 1.0) -> list:
    """Conditional steering at ``layer`` (see the module docstring), from the groups' mean last-token
    residuals on the train pairs."""
    d = unit(black_mean - white_mean)
    c = float((black_mean + white_mean) @ d) / 2
    h = float((black_mean - white_mean) @ d) / 2

    def fn(act, hook):
        u = d.to(act.device, act.dtype)
        s = ((act @ u - c) / h).clamp(-1.0, 1.0)
        return act - (beta * h) * s[..., None] * u
    return [(resid_hook(bridge, layer), fn)]


def refuse_renormalized(bridge: Bridge, what: str) -> None:
    """Refuse to fold ``what`` into a model whose layer outputs are normalized before the stream."""
    if renormalized_outputs(bridge):
        raise InterventionError(f"{what} cannot be folded into {type(bridge.original_model).__name__}'s "
                                "weights: each attention and MLP output passes a norm of its own before the "
                                "residual stream, so no change of a projection equals the hook; it is "
                                "simulated only")


def _untie(model: PreTrainedModel) -> bool:
    """Give the output embedding its own copy when it is the input embedding; True when it was tied."""
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or out.weight.data_ptr() != emb.weight.data_ptr():
        return False
    out.weight = nn.Parameter(emb.weight.detach().clone())
    for cfg in (model.config, getattr(model.config, "text_config", None)):
        if cfg is not None and hasattr(cfg, "tie_word_embeddings"):
            cfg.tie_word_embeddings = False
    return True


@torch.no_grad()
def fold_direction(bridge: Bridge, d: Float[Tensor, " d_model"]) -> PreTrainedModel:
    """A new HF model whose embedding and every ``o_proj`` / ``down_proj`` write nothing along ``d``:
    its logits equal the bridge's under :func:`direction_hooks` (up to float rounding).

    Examples:
        >>> import torch
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> d = torch.randn(b.cfg.d_model)
        >>> m = fold_direction(b, d)
        >>> w = m.model.layers[0].mlp.down_proj.weight
        >>> float((unit(d) @ w).abs().max()) < 1e-5
        True
    """
    refuse_renormalized(bridge, "directional ablation")
    model = clean_hf_model(bridge)
    _untie(model)
    u = unit(d).double().to(next(model.parameters()).device)
    emb = model.get_input_embeddings().weight
    emb.copy_(emb.double() - (emb.double() @ u)[:, None] * u[None])
    for layer in decoder_layers(model)[1]:
        for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
            w = lin.weight.double()
            lin.weight.copy_(w - u[:, None] * (u @ w)[None])
            if lin.bias is not None:
                lin.bias.copy_(lin.bias.double() - u * (u @ lin.bias.double()))
    return model


@torch.no_grad()
def fold_steering(bridge: Bridge, layer: int, vec: Float[Tensor, " d_model"]) -> PreTrainedModel:
    """A new HF model that adds ``vec`` to the residual stream entering ``layer`` (>= 1): a bias of
    layer ``layer - 1``'s ``down_proj`` (the MLP biases are switched on, the others zero)."""
    refuse_renormalized(bridge, "steering")
    if layer < 1:
        raise InterventionError("steering at layer 0 adds to the embedding, which has no bias to fold "
                                "it into")
    model = clean_hf_model(bridge)
    layers = decoder_layers(model)[1]
    enable_biases(model, layers, "neurons")
    lin = layers[layer - 1].mlp.down_proj
    lin.bias += vec.to(lin.bias.device, lin.bias.dtype)
    return model
