"""Edits of the residual stream along the Black-White difference: directional ablation, always-on
steering and conditional steering, as hooks, and folded into the weights where that is exact.

The direction read at layer ``L`` is the mean, over train pairs, of the Black minus the White
prompt's residual stream at the last token (``v_L``; ``d_L = v_L / |v_L|``).

* **Directional ablation** removes ``d`` from the residual stream everywhere: ``r - (r . d) d``
  wherever an attention, an MLP or the final norm reads it. In a pre-norm model this equals
  orthogonalizing every matrix that writes to the stream (the embedding, each ``o_proj`` and
  ``down_proj``) against ``d`` (:func:`fold_direction`; a tied output embedding is untied first, so
  the logits still read the original one). Rank 1 removed from each writer.
* **Directional mean-ablation** sets the projection on ``d`` to its mean on neutral text at each
  of those points instead of 0, so the stream keeps its average offset along ``d``; the fold adds
  the constants as biases (:func:`fold_direction_mean`).
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
    """``v`` scaled to length 1, in float64 (so that a projection applied again changes nothing to
    float64 rounding; refused when ``v`` is 0)."""
    v = v.double()
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
    return [(name, project_out(unit(d))) for name in read_points(bridge)]


def read_points(bridge: Bridge) -> list[str]:
    """Every point where a layer or the final norm reads the residual stream, in order: entering each
    layer, between its attention and its MLP, and entering the final norm."""
    n = bridge.cfg.n_layers
    return [name for i in range(n) for name in (resid_hook(bridge, i), f"blocks.{i}.hook_resid_mid")] + \
        [resid_hook(bridge, n)]


@torch.no_grad()
def mean_projections(bridge: Bridge, directions: Float[Tensor, "k d_model"], texts: list[str]) -> Tensor:
    """The mean projection of the residual stream on each of ``directions`` (unit length), over every
    token of ``texts``, at each :func:`read_points` point: [points, k]."""
    from ..bridge import model_device, tokenizer_of
    from ..hooks.interventions import attached

    points = read_points(bridge)
    sums = torch.zeros(len(points), directions.shape[0], dtype=torch.float64)
    count = [0]

    def grab(i: int):
        def fn(act, hook):
            sums[i] += (act.double() @ directions.T.to(act.device, torch.float64)).sum((0, 1)).cpu()
        return fn

    tok = tokenizer_of(bridge)
    with attached(bridge, [(name, grab(i)) for i, name in enumerate(points)]):
        for text in texts:
            ids = tok(text, return_tensors="pt").input_ids.to(model_device(bridge))
            bridge(ids, return_type=None)
            count[0] += ids.shape[1]
    return (sums / max(count[0], 1)).float()


def direction_mean_hooks(bridge: Bridge, d: Float[Tensor, " d_model"],
                         means: Float[Tensor, " points"]) -> list:
    """Directional mean-ablation: at every :func:`read_points` point the projection on ``d`` is set to
    its mean there (``means``, from :func:`mean_projections`) instead of 0."""
    d = unit(d)

    def at(c: float):
        def fn(act, hook):
            u = d.to(act.device, act.dtype)
            return act - (act @ u - c)[..., None] * u
        return fn
    return [(name, at(float(c))) for name, c in zip(read_points(bridge), means, strict=True)]


def steering_hooks(bridge: Bridge, layer: int, vec: Float[Tensor, " d_model"]) -> list:
    """Add ``vec`` to the residual stream entering ``layer`` at every position."""
    def fn(act, hook):
        return act + vec.to(act.device, act.dtype)
    return [(resid_hook(bridge, layer), fn)]


def conditional_hooks(bridge: Bridge, layer: int, black_mean: Float[Tensor, " d_model"],
                      white_mean: Float[Tensor, " d_model"], beta: float = 1.0) -> list:
    """Conditional steering at ``layer`` (see the module docstring), from the groups' mean last-token
    residuals on the train pairs."""
    black_mean, white_mean = black_mean.double(), white_mean.double()
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
        >>> float((unit(d).float() @ w).abs().max()) < 1e-5
        True
    """
    refuse_renormalized(bridge, "directional ablation")
    model = clean_hf_model(bridge)
    _untie(model)
    u = unit(d).to(next(model.parameters()).device)
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
def fold_direction_mean(bridge: Bridge, d: Float[Tensor, " d_model"],
                        means: Float[Tensor, " points"]) -> PreTrainedModel:
    """:func:`fold_direction`, plus the constants of :func:`direction_mean_hooks`: ``c_0 d`` added to
    every embedding row, and each layer's ``o_proj`` and ``down_proj`` biases carrying the step from
    the constant of the point before them to the one after (attention and MLP biases switched on)."""
    model = fold_direction(bridge, d)
    u = unit(d)
    c = means.double()
    emb = model.get_input_embeddings().weight
    emb += (c[0] * u).to(emb.device, emb.dtype)
    layers = decoder_layers(model)[1]
    enable_biases(model, layers, "heads")
    enable_biases(model, layers, "neurons")
    for j, layer in enumerate(layers):
        for lin, step in ((layer.self_attn.o_proj, c[2 * j + 1] - c[2 * j]),
                          (layer.mlp.down_proj, c[2 * j + 2] - c[2 * j + 1])):
            lin.bias += (step * u).to(lin.bias.device, lin.bias.dtype)
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
