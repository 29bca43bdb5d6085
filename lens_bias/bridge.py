"""One typed view of a loaded model: the facts every stage reads about a TransformerBridge.

lens_bias works on a TransformerLens :class:`~transformer_lens.model_bridge.TransformerBridge`
wrapping a Hugging Face causal LM (``bridge.original_model``). Stages need a handful of facts about
it (its tokenizer, the device batches go to, how long a prompt may be, its dtype, its sizes, a
fingerprint of its weights). They are read here and nowhere else, so that a model that stores a fact
differently needs one change.

``Kind`` names the two kinds of prunable unit: ``"neurons"`` (one unit of ``blocks.L.mlp.hook_post``)
and ``"heads"`` (one slice of ``blocks.L.attn.hook_z``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import torch

from .vocab import Kind, check_kind

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    Bridge: TypeAlias = TransformerBridge
else:
    # Importing TransformerLens costs about 5 s, and a bridge exists only once it is imported: at run
    # time (beartype in the tests) ``Bridge`` checks the base class, an nn.Module.
    Bridge: TypeAlias = torch.nn.Module



def tokenizer_of(bridge: Bridge):
    """The tokenizer lens_bias uses for ``bridge`` (the one :func:`lens_bias.load_model` attached,
    else the bridge's own).

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> tokenizer_of(b) is b.lens_bias_tokenizer
        True
    """
    return getattr(bridge, "lens_bias_tokenizer", None) or bridge.tokenizer


def context_length(bridge: Bridge) -> int:
    """The longest prompt (in tokens) the model takes: ``max_position_embeddings`` of its HF config.

    Examples:
        >>> from lens_bias import load_model
        >>> context_length(load_model("tiny-random", device="cpu"))
        256
    """
    cfg = bridge.original_model.config
    return int(getattr(cfg, "max_position_embeddings", None) or bridge.cfg.n_ctx)


def model_device(bridge: Bridge) -> torch.device:
    """The device of the model's first parameters (where batches go; per-layer results gather there).

    Examples:
        >>> from lens_bias import load_model
        >>> model_device(load_model("tiny-random", device="cpu"))
        device(type='cpu')
    """
    return next(bridge.original_model.parameters()).device


def model_dtype(bridge: Bridge) -> torch.dtype:
    """The dtype of the model's weights. Scores (:func:`score_dtype`) are float32, accumulated in
    float64, unless the model itself runs in float64.

    Examples:
        >>> import torch
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu", dtype=torch.bfloat16)
        >>> model_dtype(b), score_dtype(b)
        (torch.bfloat16, torch.float32)
    """
    return next(bridge.original_model.parameters()).dtype


def score_dtype(bridge: Bridge) -> torch.dtype:
    """float64 for a float64 model, else float32 (see :func:`model_dtype`)."""
    return torch.float64 if model_dtype(bridge) == torch.float64 else torch.float32


def shape_of(bridge: Bridge, kind: Kind) -> tuple[int, int]:
    """The shape of one score or mask tensor: [n_layers, d_mlp] for neurons, [n_layers, n_heads] for heads.

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> shape_of(b, "neurons"), shape_of(b, "heads")
        ((2, 128), (2, 4))
    """
    cfg = bridge.cfg
    return (cfg.n_layers, cfg.d_mlp) if check_kind(kind) == "neurons" else (cfg.n_layers, cfg.n_heads)


def params_per_unit(bridge: Bridge, kind: Kind) -> int:
    """Parameters removed with one unit: a gated-MLP neuron has 3 * d_model (its gate and up rows and
    its down column; lens_bias supports gated MLPs only), a head d_model * d_head in o_proj plus its
    q_proj rows (k/v are shared in GQA and stay).

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")  # d_model 64, d_head 16
        >>> params_per_unit(b, "neurons"), params_per_unit(b, "heads")
        (192, 2048)
    """
    cfg = bridge.cfg
    if check_kind(kind) == "neurons":
        return 3 * cfg.d_model
    return 2 * cfg.d_model * cfg.d_head


def n_params(bridge: Bridge) -> int:
    """Number of parameters of the wrapped HF model (what ``%params`` budgets are relative to).

    Examples:
        >>> from lens_bias import load_model
        >>> n_params(load_model("tiny-random", device="cpu")) > 0
        True
    """
    return sum(p.numel() for p in bridge.original_model.parameters())


def renormalized_outputs(bridge: Bridge) -> bool:
    """Whether each attention and MLP output passes through a norm of its own before it joins the
    residual stream (Gemma 2 and 3, OLMo 2: a ``post_feedforward_layernorm`` in every layer). Such a
    layer's output does not change when all its heads, or all its neurons, are scaled together.

    Examples:
        >>> from lens_bias import load_model
        >>> renormalized_outputs(load_model("tiny-random", device="cpu"))  # Llama: pre-norms only
        False
    """
    names = (name for name, _ in bridge.original_model.named_modules())
    return any(name.endswith("post_feedforward_layernorm") for name in names)


def model_meta(bridge: Bridge) -> dict:
    """The metadata a mask or a scores file records about its model: name, architecture and shapes.

    Examples:
        >>> from lens_bias import load_model
        >>> model_meta(load_model("tiny-random", device="cpu"))  # doctest: +NORMALIZE_WHITESPACE
        {'model': 'tiny-random', 'architecture': 'LlamaForCausalLM', 'n_layers': 2, 'd_mlp': 128,
         'n_heads': 4}
    """
    hf = bridge.original_model.config
    return {
        "model": getattr(bridge, "lens_bias_name", getattr(hf, "_name_or_path", "?")),
        "architecture": (getattr(hf, "architectures", None) or [type(bridge.original_model).__name__])[0],
        "n_layers": bridge.cfg.n_layers,
        "d_mlp": bridge.cfg.d_mlp,
        "n_heads": bridge.cfg.n_heads,
    }


def weights_version(bridge: Bridge) -> tuple[int, ...]:
    """A fingerprint that changes whenever any parameter is modified in place (torch's version
    counters), so that a cached reference can tell it is stale.

    Examples:
        >>> import torch
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> v = weights_version(b)
        >>> with torch.no_grad():
        ...     _ = b.original_model.lm_head.weight.mul_(1.0)
        >>> weights_version(b) == v
        False
    """
    return tuple(p._version for p in bridge.parameters())


@dataclass(frozen=True)
class ModelView:
    """The facts above, read once: a snapshot for reports and for code that needs several of them.

    Examples:
        >>> from lens_bias import load_model
        >>> v = view(load_model("tiny-random", device="cpu"))
        >>> v.name, v.n_layers, v.d_mlp, v.n_heads, v.d_head, v.context_length, str(v.dtype)
        ('tiny-random', 2, 128, 4, 16, 256, 'torch.float32')
    """

    name: str
    architecture: str
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    context_length: int
    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_head: int
    d_vocab: int
    n_params: int


def view(bridge: Bridge) -> ModelView:
    """A :class:`ModelView` of ``bridge``."""
    meta, cfg = model_meta(bridge), bridge.cfg
    return ModelView(
        name=meta["model"], architecture=meta["architecture"], tokenizer=tokenizer_of(bridge),
        device=model_device(bridge), dtype=model_dtype(bridge), context_length=context_length(bridge),
        n_layers=cfg.n_layers, d_model=cfg.d_model, d_mlp=cfg.d_mlp, n_heads=cfg.n_heads,
        d_head=cfg.d_head, d_vocab=cfg.d_vocab, n_params=n_params(bridge),
    )
