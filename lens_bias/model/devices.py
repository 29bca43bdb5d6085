"""Where a model runs: the default device, and a model split over several GPUs.

:func:`split_device_map` cuts the decoder layers (:func:`lens_bias.model.layout.find_decoder_layers`) into
contiguous runs of about equal weight bytes, one per device; :func:`dispatch` spreads a model with
accelerate; :func:`final_hidden_to_input_device` routes a split model's last hidden states back to
where its inputs are. :func:`lens_bias.model.load.wrap` and :func:`lens_bias.model.load.load_model` use them.
"""

from __future__ import annotations

import torch

from ..errors import ModelLoadError
from .layout import find_decoder_layers


def split_device_map(model, devices=None) -> dict[str, str]:
    """A device map that splits ``model``'s decoder layers over ``devices`` (default: every visible
    GPU) for :func:`lens_bias.model.load.wrap` / :func:`lens_bias.model.load.load_model` (``device_map=``).

    The layers go in contiguous runs of about equal weight bytes; the modules outside them (the
    embeddings, the final norm, the unembedding, the rotary tables) go to the first device, which
    is where batches enter. The model may be on the meta device (to build it directly onto its
    devices, layer by layer).

    Examples:
        >>> from lens_bias.model.load import tiny_random_hf
        >>> model, _ = tiny_random_hf(n_layers=4, d_model=64, d_mlp=1024)
        >>> split_device_map(model, ["cuda:0", "cuda:1"])  # doctest: +NORMALIZE_WHITESPACE
        {'model.layers.0': 'cuda:0', 'model.layers.1': 'cuda:0', 'model.layers.2': 'cuda:1',
         'model.layers.3': 'cuda:1', 'lm_head': 'cuda:0', 'model.embed_tokens': 'cuda:0',
         'model.norm': 'cuda:0', 'model.rotary_emb': 'cuda:0'}
    """
    if devices is None:
        devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    devices = [str(torch.device(d)) for d in devices]
    if not devices:
        raise ModelLoadError("split_device_map needs at least one device (no GPU is visible)")
    found = find_decoder_layers(model)
    if found is None:
        raise ModelLoadError(f"{type(model).__name__} has no list of decoder layers to split")
    name, layers = found

    def size(m) -> int:
        return sum(p.numel() * p.element_size() for p in m.parameters())

    out: dict[str, str] = {}
    others: list[str] = []  # the siblings of the layer list and of each of its ancestors
    parts = name.split(".")
    for depth in range(len(parts)):
        parent = ".".join(parts[:depth])
        mod = model.get_submodule(parent) if parent else model
        for child, _ in mod.named_children():
            if child != parts[depth]:
                others.append(f"{parent}.{child}" if parent else child)
    used = sum(size(model.get_submodule(o)) for o in others)
    target = (used + size(layers)) / len(devices)
    for i, layer in enumerate(layers):
        s = size(layer)
        out[f"{name}.{i}"] = devices[min(len(devices) - 1, int((used + s / 2) / target))]
        used += s
    for o in others:
        out[o] = devices[0]
    return out


def dispatch(model, device_map):
    """Spread ``model`` over devices with accelerate: ``device_map`` is a dict (module name ->
    device, as Hugging Face takes it), a list of devices or ``"auto"`` (all visible GPUs), the last
    two through :func:`split_device_map`."""
    from accelerate import dispatch_model

    if isinstance(device_map, str):
        if device_map != "auto":
            raise ModelLoadError(f"device_map must be a dict, a list of devices or 'auto', "
                                 f"got {device_map!r}")
        device_map = split_device_map(model)
    elif not isinstance(device_map, dict):
        device_map = split_device_map(model, list(device_map))
    emb = model.get_input_embeddings()
    emb_name = next(n for n, m in model.named_modules() if m is emb)
    owner = max((k for k in device_map if k == "" or emb_name == k or emb_name.startswith(k + ".")),
                key=len, default=None)
    if owner is None:
        raise ModelLoadError(f"device_map does not place the input embedding ({emb_name})")
    # main_device: where inputs enter and outputs return (accelerate would pick any of the devices)
    dispatch_model(model, device_map, main_device=device_map[owner], force_hooks=True)
    return model


def final_hidden_to_input_device(model) -> None:
    """On a model split over devices, move the decoder's last hidden states back to the device of
    the input embedding, where the inputs (``logits_to_keep`` positions included) are: the HF head
    indexes the hidden states with them, and a CUDA tensor cannot be indexed from another GPU."""
    base = getattr(model, "base_model", None)
    if base is None or base is model or getattr(base, "_lens_bias_routed", False):
        return
    dev = next(model.get_input_embeddings().parameters()).device

    def hook(module, args, output):
        if isinstance(output, torch.Tensor):
            return output.to(dev)
        h = getattr(output, "last_hidden_state", None)
        if isinstance(h, torch.Tensor):
            output.last_hidden_state = h.to(dev)
        elif isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (output[0].to(dev), *output[1:])
        return output

    base.register_forward_hook(hook)
    base._lens_bias_routed = True



def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``: where :func:`lens_bias.model.load.load_model`
    puts a model.

    Examples:
        >>> default_device() in ("cuda", "cpu")
        True
    """
    return "cuda" if torch.cuda.is_available() else "cpu"

