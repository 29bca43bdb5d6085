"""Pruning masks: which neurons and heads to keep.

A :class:`PruningMask` holds boolean *keep* tensors ``neurons`` [n_layers, d_mlp] and ``heads``
[n_layers, n_heads] (True = keep) and metadata. On disk (a stable format, see the File formats
page of the docs): ``mask.safetensors`` (the tensors, metadata as JSON in the header) and
``mask.json`` (readable: metadata plus the pruned (layer, index) pairs). Only safetensors and JSON
are ever read.

Choosing which units to prune (budgets, :func:`lens_bias.selection.topk.select`) is in
:mod:`lens_bias.selection.topk`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Bool
from torch import Tensor

from .bridge import Bridge, model_meta, shape_of
from .errors import MaskError
from .vocab import Kind, check_kind

MASK_VERSION = 1


@dataclass
class PruningMask:
    """Keep-masks for MLP neurons and attention heads, plus metadata (model, shapes, scorer...).

    ``neurons`` [n_layers, d_mlp] and ``heads`` [n_layers, n_heads] are boolean, True = keep.
    Build one with :func:`lens_bias.selection.topk.select` (from scores),
    :func:`lens_bias.selection.topk.random_mask` or :meth:`keep_all`; simulate
    it with :func:`lens_bias.hooks.ablation.ablate`; write it into weights with
    :func:`lens_bias.weights.materialize.materialize`.

    Examples:
        >>> from lens_bias import load_model
        >>> b = load_model("tiny-random", device="cpu")
        >>> m = PruningMask.keep_all(b)
        >>> m.neurons[0, [3, 9]] = False; m.heads[1, 2] = False
        >>> m.counts(), m.pruned("neurons"), m.per_layer("neurons")
        ({'neurons': 2, 'heads': 1}, [(0, 3), (0, 9)], [2, 0])
        >>> import tempfile
        >>> st, js = m.save(tempfile.mkdtemp())
        >>> again = PruningMask.load(st, b)
        >>> bool((again.neurons == m.neurons).all()), again.meta["model"]
        (True, 'tiny-random')
    """

    neurons: Bool[Tensor, "n_layers d_mlp"]
    heads: Bool[Tensor, "n_layers n_heads"]
    meta: dict = field(default_factory=dict)

    @classmethod
    def keep_all(cls, bridge: Bridge, **meta) -> PruningMask:
        """A mask that prunes nothing, shaped for ``bridge``, with its model metadata (and ``meta``)."""
        return cls(
            torch.ones(shape_of(bridge, "neurons"), dtype=torch.bool),
            torch.ones(shape_of(bridge, "heads"), dtype=torch.bool),
            {**model_meta(bridge), **meta},
        )

    def tensor(self, kind: Kind) -> Tensor:
        """The keep-tensor of ``kind`` (``"neurons"`` or ``"heads"``; a ``ValueError`` otherwise);
        edits to it change the mask."""
        return self.neurons if check_kind(kind) == "neurons" else self.heads

    def pruned(self, kind: Kind) -> list[tuple[int, int]]:
        """(layer, index) of every removed unit of ``kind``."""
        return [tuple(x) for x in (~self.tensor(kind)).nonzero().tolist()]

    def counts(self) -> dict[str, int]:
        """Number of pruned units per kind: ``{"neurons": n, "heads": n}``."""
        return {"neurons": int((~self.neurons).sum()), "heads": int((~self.heads).sum())}

    def per_layer(self, kind: Kind) -> list[int]:
        """Number of pruned units of ``kind`` in each layer (n_layers values)."""
        return (~self.tensor(kind)).sum(-1).tolist()

    def is_empty(self) -> bool:
        """True if the mask prunes nothing."""
        return bool(self.neurons.all() and self.heads.all())

    def __or__(self, other: PruningMask) -> PruningMask:
        """Union of the pruned sets (``mask_a | mask_b`` prunes what either prunes); metadata of the left one.

        Examples:
            >>> import torch
            >>> a = PruningMask(torch.tensor([[True, False]]), torch.tensor([[True]]))
            >>> b = PruningMask(torch.tensor([[False, True]]), torch.tensor([[True]]))
            >>> (a | b).neurons.tolist()
            [[False, False]]
        """
        return PruningMask(self.neurons & other.neurons, self.heads & other.heads, dict(self.meta))

    def check(self, bridge: Bridge) -> None:
        """Refuse a mask whose shapes or architecture differ from ``bridge``'s, naming both
        (raises :class:`~lens_bias.errors.MaskError`).

        Examples:
            >>> import torch
            >>> from lens_bias import load_model
            >>> b = load_model("tiny-random", device="cpu")
            >>> PruningMask(torch.ones(2, 64, dtype=torch.bool),
            ...             torch.ones(2, 4, dtype=torch.bool)).check(b)  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            lens_bias.errors.MaskError: mask does not fit the model: ...
        """
        want = {"neurons": shape_of(bridge, "neurons"), "heads": shape_of(bridge, "heads")}
        got = {"neurons": tuple(self.neurons.shape), "heads": tuple(self.heads.shape)}
        if want != got:
            raise MaskError(
                f"mask does not fit the model: mask shapes {got} (model {self.meta.get('model', '?')}), "
                f"model shapes {want} ({getattr(bridge, 'lens_bias_name', '?')}). "
                "Build the mask for this model."
            )
        arch = self.meta.get("architecture")
        mine = model_meta(bridge)["architecture"]
        if arch and arch != mine:
            raise MaskError(f"mask is for architecture {arch}, the model is {mine}")

    # ------------------------------------------------------------ files

    def save(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``mask.safetensors`` and ``mask.json`` into ``folder`` (or next to a .safetensors path);
        returns both paths. The formats are described in the docs (File formats)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        if folder.suffix == ".safetensors":
            st, js = folder, folder.with_suffix(".json")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            st, js = folder / "mask.safetensors", folder / "mask.json"
        meta = {"version": MASK_VERSION, **self.meta}
        header = {"lens_bias_mask": json.dumps(meta)}
        save_file({"neurons": self.neurons.to(torch.uint8).contiguous(),
                   "heads": self.heads.to(torch.uint8).contiguous()}, str(st), metadata=header)
        readable = {
            **meta,
            "shapes": {"neurons": list(self.neurons.shape), "heads": list(self.heads.shape)},
            "counts": self.counts(),
            "pruned": {"neurons": self.pruned("neurons"), "heads": self.pruned("heads")},
        }
        js.write_text(json.dumps(readable, indent=1))
        return st, js

    @classmethod
    def load(cls, path: str | Path, bridge: Bridge | None = None) -> PruningMask:
        """Read a mask: ``mask.safetensors`` (a file or the folder holding it) or the readable
        ``mask.json`` written next to it; with ``bridge``, check it fits.

        Only these two formats are read. A pickle or torch file (``.pt``, ``.bin``, or pickle bytes
        under any name) is refused before anything is parsed: nothing goes through ``torch.load``.

        Examples:
            >>> import tempfile
            >>> from lens_bias import load_model
            >>> from lens_bias.selection.topk import random_mask
            >>> b = load_model("tiny-random", device="cpu")
            >>> m = random_mask(b, 3, "neurons")
            >>> st, js = m.save(tempfile.mkdtemp())
            >>> PruningMask.load(js, b).pruned("neurons") == m.pruned("neurons")
            True
        """
        path = Path(path)
        if path.is_dir():
            path = path / "mask.safetensors"
        if not path.is_file():
            raise MaskError(f"mask file not found: {path}")
        kind = _sniff(path)
        if path.suffix in _PICKLE_SUFFIXES or kind == "pickle":
            raise MaskError(
                f"{path} looks like a pickle/torch file; lens_bias reads masks only from safetensors "
                "(mask.safetensors) and JSON (mask.json), never from pickles"
            )
        mask = _read_json(path) if path.suffix == ".json" or kind == "json" else _read_safetensors(path)
        if bridge is not None:
            mask.check(bridge)
        return mask


_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
_MAX_UNITS = 100_000_000  # a mask.json may not declare shapes larger than this (n_layers * units)


def _sniff(path: Path) -> str:
    """What the file's first bytes say it is: safetensors, pickle (or a torch zip), json or unknown.

    A safetensors file starts with the header length (8 bytes, little-endian) and then ``{``; that
    length may well begin with byte 0x80, so the pickle test comes second."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise MaskError(f"cannot read mask file {path}: {e.strerror or e}") from e
    if len(head) >= 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size:
        return "safetensors"
    if head[:1] == b"\x80" or head[:2] == b"PK":  # pickle protocol >= 2, or torch.save's zip
        return "pickle"
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        return "json"
    return "unknown"


def _keep_tensor(t: Tensor, name: str, path: Path) -> Tensor:
    """A 0/1 tensor of any dtype as a boolean keep-mask; anything else is refused."""
    if t.ndim != 2 or 0 in t.shape:
        raise MaskError(f"{path}: '{name}' must be a non-empty 2-D [n_layers, units] tensor, "
                        f"got shape {tuple(t.shape)}")
    try:
        v = t.to(torch.float32)
    except (RuntimeError, TypeError) as e:
        raise MaskError(f"{path}: '{name}' has dtype {t.dtype}, which is not a 0/1 mask") from e
    if not ((v == 0) | (v == 1)).all():
        raise MaskError(f"{path}: '{name}' holds values other than 0 and 1; not a lens_bias mask "
                        "(corrupted?)")
    return v.bool()


def _check_layers(neurons: Tensor, heads: Tensor, path: Path) -> None:
    if neurons.shape[0] != heads.shape[0]:
        raise MaskError(f"{path}: 'neurons' has {neurons.shape[0]} layers but 'heads' has {heads.shape[0]}")


def _read_safetensors(path: Path) -> PruningMask:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            keys = set(f.keys())
            if keys != {"neurons", "heads"}:
                raise MaskError(f"{path}: expected tensors 'neurons' and 'heads', found {sorted(keys)}")
            raw = {k: f.get_tensor(k) for k in ("neurons", "heads")}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise MaskError(f"{path}: not a readable safetensors mask ({e}); was the file truncated?") from e
    try:
        meta = json.loads(header.get("lens_bias_mask", "{}"))
    except (ValueError, RecursionError) as e:
        raise MaskError(f"{path}: corrupted mask metadata ({e})") from e
    if not isinstance(meta, dict):
        raise MaskError(f"{path}: corrupted mask metadata (a JSON {type(meta).__name__}, not an object)")
    neurons, heads = (_keep_tensor(raw[k], k, path) for k in ("neurons", "heads"))
    _check_layers(neurons, heads, path)
    return PruningMask(neurons, heads, {k: v for k, v in meta.items() if k != "version"})


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_json(path: Path) -> PruningMask:
    """A ``mask.json`` as :meth:`PruningMask.save` writes it: ``shapes`` and the ``pruned`` pairs."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as e:
        raise MaskError(f"{path}: not valid UTF-8 (byte {e.start})") from e
    except (ValueError, RecursionError) as e:
        raise MaskError(f"{path}: not a readable mask.json ({e}); was the file truncated?") from e
    except OSError as e:
        raise MaskError(f"cannot read mask file {path}: {e.strerror or e}") from e
    if (not isinstance(data, dict) or not isinstance(data.get("shapes"), dict)
            or not isinstance(data.get("pruned"), dict)):
        raise MaskError(f"{path}: not a lens_bias mask.json (needs 'shapes' and 'pruned' objects, as "
                        "PruningMask.save writes them)")
    keep = {}
    for k in ("neurons", "heads"):
        shape = data["shapes"].get(k)
        if not (isinstance(shape, list) and len(shape) == 2 and all(_is_int(x) and x > 0 for x in shape)
                and shape[0] * shape[1] <= _MAX_UNITS):
            raise MaskError(f"{path}: shapes.{k} must be two positive integers [n_layers, units], "
                            f"got {shape!r}")
        t = torch.ones(shape, dtype=torch.bool)
        pruned = data["pruned"].get(k, [])
        if not isinstance(pruned, list):
            raise MaskError(f"{path}: pruned.{k} must be a list of [layer, index] pairs")
        for item in pruned:
            if not (isinstance(item, list) and len(item) == 2 and all(_is_int(x) for x in item)
                    and 0 <= item[0] < shape[0] and 0 <= item[1] < shape[1]):
                raise MaskError(f"{path}: pruned.{k} entry {item!r} is not a [layer, index] pair "
                                f"inside {shape}")
            t[item[0], item[1]] = False
        keep[k] = t
    _check_layers(keep["neurons"], keep["heads"], path)
    meta = {k: v for k, v in data.items() if k not in ("version", "shapes", "counts", "pruned")}
    return PruningMask(keep["neurons"], keep["heads"], meta)

