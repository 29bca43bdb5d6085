"""The :class:`Scores` file type: one score per MLP neuron and attention head (higher = prune first).

Every scorer (the attribution estimators of :mod:`lens_bias.attribution.patching` and the baselines of
:mod:`lens_bias.attribution.scorers`) returns a :class:`Scores`; selection
(:mod:`lens_bias.selection.topk`) reads one. On disk it is one safetensors file: the tensors ``neurons``
and ``heads``, the per-domain tensors as ``domain/<domain>/<kind>``, and the settings as JSON in the
header (key ``lens_bias_scores``, with a ``version``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from .errors import LensBiasError
from .vocab import KINDS, Kind, check_kind

SCORES_VERSION = 1


@dataclass
class Scores:
    """Per-component scores: ``neurons`` [n_layers, d_mlp], ``heads`` [n_layers, n_heads], the same
    per domain in ``by_domain``, and the settings that produced them. Higher = prune first.

    Examples:
        >>> import tempfile, torch
        >>> s = Scores(torch.tensor([[0.25, 0.75], [0.5, 0.125]]), None, {}, {"scorer": "test"})
        >>> s.top("neurons", 2)
        [(0, 1, 0.75), (1, 0, 0.5)]
        >>> back = Scores.load(s.save(tempfile.mkdtemp() + "/s.safetensors"))
        >>> torch.equal(back.neurons, s.neurons), back.heads, back.settings
        (True, None, {'scorer': 'test'})
        >>> try:  # an unknown kind is refused (a TypeError where beartype checks the Literal first)
        ...     s.get("neuron")
        ... except (ValueError, TypeError):
        ...     print("refused")
        refused
    """

    neurons: Float[Tensor, "n_layers d_mlp"] | None
    heads: Float[Tensor, "n_layers n_heads"] | None
    by_domain: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def get(self, kind: Kind) -> Tensor | None:
        """The scores of ``kind`` (None when not scored); a ``ValueError`` for an unknown kind."""
        return self.neurons if check_kind(kind) == "neurons" else self.heads

    def for_domain(self, domain: str) -> Scores:
        if domain not in self.by_domain:
            raise LensBiasError(f"no scores for domain {domain!r}; have {sorted(self.by_domain)}")
        d = self.by_domain[domain]
        return Scores(d.get("neurons"), d.get("heads"), {}, {**self.settings, "domains": [domain]})

    def top(self, kind: Kind = "neurons", k: int = 20) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring (layer, index, score)."""
        s = self.get(kind)
        if s is None:
            return []
        vals, idx = torch.topk(s.flatten(), min(k, s.numel()))
        cols = s.shape[1]
        return [(int(i) // cols, int(i) % cols, float(v)) for v, i in zip(vals, idx, strict=True)]

    def to_pandas(self):
        """A pandas DataFrame in long form: one row per unit and domain, with the columns ``kind``,
        ``layer``, ``index``, ``domain`` (``"all"`` for the overall scores, else the domain's name)
        and ``score``. Needs pandas (``pip install 'lens_bias[pandas]'``).

        Examples:
            >>> s = Scores(torch.tensor([[0.25, 0.75]]), None,
            ...            {"finance": {"neurons": torch.tensor([[1.0, 2.0]])}})
            >>> s.to_pandas().values.tolist()  # doctest: +NORMALIZE_WHITESPACE
            [['neurons', 0, 0, 'all', 0.25], ['neurons', 0, 1, 'all', 0.75],
             ['neurons', 0, 0, 'finance', 1.0], ['neurons', 0, 1, 'finance', 2.0]]
        """
        from .frames import require_pandas

        pd = require_pandas("Scores.to_pandas")
        parts = []
        for domain, tensors in [("all", {k: self.get(k) for k in KINDS}), *self.by_domain.items()]:
            for kind in KINDS:
                t = tensors.get(kind)
                if t is None:
                    continue
                n_layers, n = t.shape
                parts.append(pd.DataFrame({
                    "kind": kind, "layer": torch.arange(n_layers).repeat_interleave(n).numpy(),
                    "index": torch.arange(n).repeat(n_layers).numpy(), "domain": domain,
                    "score": t.detach().cpu().double().flatten().numpy()}))
        columns = ["kind", "layer", "index", "domain", "score"]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)

    def save(self, path: str | Path) -> Path:
        """Write a safetensors file (settings as JSON in its header)."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {}
        for k in KINDS:
            if self.get(k) is not None:
                tensors[k] = self.get(k).float().contiguous().cpu()
        for d, ts in self.by_domain.items():
            for k, t in ts.items():
                tensors[f"domain/{d}/{k}"] = t.float().contiguous().cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        save_file(tensors, str(tmp),
                  metadata={"lens_bias_scores": json.dumps({"version": SCORES_VERSION, **self.settings})})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Scores:
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise LensBiasError(f"scores file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("lens_bias_scores", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
            raise LensBiasError(f"{path}: not a lens_bias scores file ({e})") from e
        by_domain: dict[str, dict[str, Tensor]] = {}
        for k, t in tensors.items():
            if k.startswith("domain/"):
                _, d, kind = k.split("/")
                by_domain.setdefault(d, {})[kind] = t
        meta.pop("version", None)
        return cls(tensors.get("neurons"), tensors.get("heads"), by_domain, meta)
