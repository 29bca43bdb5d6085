"""Readers for the evaluation corpora: CrowS-Pairs, WikiText-2 and LAMBADA.

These files are not part of the package: they are read from a path the user gives, or from
``../shared/data/`` next to the checkout (:func:`shared_data_file`). CrowS-Pairs is for
evaluation only; the bias pairs that attribution and pruning use come from
:mod:`lens_bias.pairs`. The capability metrics that score a model on these texts live in
:mod:`lens_bias.capability`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import PairsError

# ---------------------------------------------------------------- CrowS-Pairs


@dataclass(frozen=True)
class CrowsPair:
    """A CrowS-Pairs row: ``stereo`` is the sentence that expresses the stereotype.

    Examples:
        >>> CrowsPair("0", "Black people are lazy.", "White people are lazy.", "stereo").stereo
        'Black people are lazy.'
    """

    id: str
    stereo: str
    anti: str
    direction: str  # "stereo" or "antistereo"


_BLACK = re.compile(r"\b(black|african[- ]?american)s?\b", re.I)
_WHITE = re.compile(r"\b(white|caucasian|european[- ]?american)s?\b", re.I)
CROWS_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")


def shared_data_file(name: str) -> Path | None:
    """``../shared/data/<name>`` next to the project checkout (or the working directory), if present.

    Examples:
        >>> shared_data_file("no-such-file.txt") is None
        True
    """
    here = Path(__file__).resolve().parent.parent
    cands = [here.parent / "shared" / "data" / name, Path.cwd().parent / "shared" / "data" / name]
    return next((c for c in cands if c.is_file()), None)


def default_crows_path() -> Path | None:
    """``$LENS_BIAS_CROWS``, else ``../shared/data/crows_pairs_anonymized.csv``, if present (else None).

    Examples:
        >>> p = default_crows_path()
        >>> p is None or p.name.endswith(".csv")
        True
    """
    env = os.environ.get("LENS_BIAS_CROWS")
    if env and Path(env).is_file():
        return Path(env)
    return shared_data_file("crows_pairs_anonymized.csv")


CROWS_SUBSETS = ("black", "black-white", "race-color", "all")


def load_crows_pairs(path: str | Path, subset: str = "black") -> list[CrowsPair]:
    """Read CrowS-Pairs (Nangia et al. 2020).

    ``subset``:
      * ``black`` (default, 282 pairs): race-color rows where either sentence names a Black group
        ("black", "African American"); most contrast it with White, 30 with another group;
      * ``black-white`` (252 pairs): only rows where one sentence names Black and the other White;
      * ``race-color`` (516) or ``all`` (1,508).

    The stereotypical sentence is ``sent_more`` for "stereo" rows and ``sent_less`` for "antistereo".

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "crows.csv"
        >>> _ = f.write_text("sent_more,sent_less,stereo_antistereo,bias_type\\n"
        ...                  "Black men are violent.,White men are violent.,stereo,race-color\\n")
        >>> [c.stereo for c in load_crows_pairs(f)]
        ['Black men are violent.']
    """
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"CrowS-Pairs file not found: {path}")
    if subset not in CROWS_SUBSETS:
        raise PairsError(f"subset must be one of {', '.join(CROWS_SUBSETS)}; got {subset!r}")
    try:
        f = open(path, encoding="utf-8-sig", newline="")  # -sig: a spreadsheet's byte-order mark is not a column name
        with f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            missing = [c for c in CROWS_COLUMNS if c not in cols]
            if missing:
                raise PairsError(
                    f"{path}: not a CrowS-Pairs file: missing column(s) {missing} (found {cols[:8]}); "
                    "use crows_pairs_anonymized.csv from the CrowS-Pairs repository"
                )
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise PairsError(f"{path}: not valid UTF-8 ({e.reason})") from e
    except csv.Error as e:
        raise PairsError(f"{path}: malformed CSV ({e})") from e
    except OSError as e:
        raise PairsError(f"cannot read CrowS-Pairs file {path}: {e.strerror or e}") from e
    out = []
    for i, r in enumerate(rows):
        more, less, direction, bias = (r.get(c) for c in CROWS_COLUMNS)
        if not isinstance(more, str) or not isinstance(less, str) or direction not in ("stereo", "antistereo"):
            raise PairsError(f"{path}: row {i + 2} is malformed (need sent_more, sent_less, stereo_antistereo)")
        if subset != "all" and bias != "race-color":
            continue
        if subset == "black" and not (_BLACK.search(more) or _BLACK.search(less)):
            continue
        if subset == "black-white":
            contrast = (_BLACK.search(more) and _WHITE.search(less)) or (_WHITE.search(more) and _BLACK.search(less))
            if not contrast:
                continue
        stereo, anti = (more, less) if direction == "stereo" else (less, more)
        out.append(CrowsPair(id=str(r.get("") or i), stereo=stereo, anti=anti, direction=direction))
    return out


# ---------------------------------------------------------------- WikiText-2 and LAMBADA


def load_wikitext(path: str | Path, max_lines: int | None = None) -> list[str]:
    """The non-empty, non-heading lines of a WikiText-2 raw text file (``wikitext2_test.txt``).

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "wiki.txt"
        >>> _ = f.write_text(" = Title = \\n\\n The first line .\\n The second line .\\n")
        >>> load_wikitext(f)
        ['The first line .', 'The second line .']
    """
    lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    lines = [x.strip() for x in lines if x.strip() and not x.strip().startswith("=")]
    return lines[:max_lines] if max_lines else lines


def load_lambada(path: str | Path, limit: int | None = None) -> list[str]:
    """The ``text`` field of each line of a LAMBADA JSONL file (at most ``limit`` passages).

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "lambada.jsonl"
        >>> _ = f.write_text('{"text": "She opened the door"}\\n{"text": "He read the book"}\\n')
        >>> load_lambada(f, limit=1)
        ['She opened the door']
    """
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line)["text"])
                if limit and len(out) >= limit:
                    break
    return out
