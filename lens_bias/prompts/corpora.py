"""Readers for the evaluation corpora: CrowS-Pairs, WikiText-2 and LAMBADA.

These files are not part of the package: they are read from a path the user gives, or from
``../shared/data/`` next to the checkout (:func:`shared_data_file`). CrowS-Pairs is for
evaluation only; the bias pairs that attribution and pruning use come from
:mod:`lens_bias.prompts.pairs`. The capability metrics that score a model on these texts live in
:mod:`lens_bias.measures.capability`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import PairsError

# ---------------------------------------------------------------- CrowS-Pairs


@dataclass(frozen=True)
class CrowsPair:
    """A CrowS-Pairs row. ``more`` (``sent_more``) is the more stereotypical sentence and ``less``
    (``sent_less``) the less stereotypical one, for ``stereo`` and ``antistereo`` rows alike: a
    ``stereo`` row states a stereotype about a disadvantaged group, an ``antistereo`` row violates
    one about an advantaged group; in both, ``sent_more`` is the one the stereotype favours.

    Examples:
        >>> c = CrowsPair("0", "Black people are lazy.", "White people are lazy.", "stereo")
        >>> c.more, c.subsets
        ('Black people are lazy.', ('race-color', 'black', 'black-white'))
    """

    id: str
    more: str
    less: str
    direction: str  # "stereo" or "antistereo"
    bias_type: str = "race-color"

    @property
    def subsets(self) -> tuple[str, ...]:
        """The subsets of :data:`CROWS_SUBSETS` this row belongs to, ``all`` left out."""
        return tuple(s for s in CROWS_SUBSETS[:-1] if in_subset(self, s))


_BLACK = re.compile(r"\b(black|african[- ]?american)s?\b", re.I)
_WHITE = re.compile(r"\b(white|caucasian|european[- ]?american)s?\b", re.I)
CROWS_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")


def shared_data_file(name: str) -> Path | None:
    """``../shared/data/<name>`` next to the project checkout (or the working directory), if present.

    Examples:
        >>> shared_data_file("no-such-file.txt") is None
        True
    """
    here = Path(__file__).resolve().parents[2]  # lens_bias/prompts/corpora.py -> the checkout
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


CROWS_SUBSETS = ("race-color", "black", "black-white", "all")


def in_subset(pair: CrowsPair, subset: str) -> bool:
    """Whether a row belongs to a subset:

    * ``race-color``: the row's ``bias_type`` is race-color (516 pairs of the standard file);
    * ``black``: a race-color row where either sentence names a Black group ("black",
      "African American", plural or not; 282 pairs), the headline subset: 252 of them contrast it
      with White, 30 with another group or with no group word;
    * ``black-white``: a race-color row where one sentence names a Black group and the other a
      White one ("white", "Caucasian", "European American"; 252 pairs);
    * ``all``: every row (1,508 pairs).

    Examples:
        >>> c = CrowsPair("1", "The black man was a thief.", "The Asian man was a thief.", "stereo")
        >>> [in_subset(c, s) for s in ("race-color", "black", "black-white", "all")]
        [True, True, False, True]
    """
    if subset == "all":
        return True
    if pair.bias_type != "race-color":
        return False
    more, less = pair.more, pair.less
    if subset == "black":
        return bool(_BLACK.search(more) or _BLACK.search(less))
    if subset == "black-white":
        return bool((_BLACK.search(more) and _WHITE.search(less))
                    or (_WHITE.search(more) and _BLACK.search(less)))
    return subset == "race-color"


def load_crows_pairs(path: str | Path, subset: str = "black") -> list[CrowsPair]:
    """Read CrowS-Pairs (Nangia et al. 2020): the rows of ``subset`` (:func:`in_subset`:
    ``black``, the default, 282 pairs; ``black-white``, 252; ``race-color``, 516; ``all``, 1,508).
    Each row keeps ``sent_more`` as :attr:`CrowsPair.more`, whatever its direction.

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "crows.csv"
        >>> _ = f.write_text("sent_more,sent_less,stereo_antistereo,bias_type\\n"
        ...                  "Black men are violent.,White men are violent.,stereo,race-color\\n")
        >>> [c.more for c in load_crows_pairs(f)]
        ['Black men are violent.']
    """
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"CrowS-Pairs file not found: {path}")
    if subset not in CROWS_SUBSETS:
        raise PairsError(f"subset must be one of {', '.join(CROWS_SUBSETS)}; got {subset!r}")
    try:
        # -sig: a spreadsheet's byte-order mark is not a column name
        f = open(path, encoding="utf-8-sig", newline="")
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
        if (not isinstance(more, str) or not isinstance(less, str)
                or direction not in ("stereo", "antistereo")):
            raise PairsError(f"{path}: row {i + 2} is malformed (need sent_more, sent_less, "
                             "stereo_antistereo)")
        pair = CrowsPair(id=str(r.get("") or i), more=more, less=less, direction=direction,
                         bias_type=bias if isinstance(bias, str) else "")
        if in_subset(pair, subset):
            out.append(pair)
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
