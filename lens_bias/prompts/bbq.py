"""BBQ, the Bias Benchmark for QA (Parrish et al. 2022), race / ethnicity category: a held-out
benchmark of questions about people.

Each row is a context (``ambig``: it does not say who; ``disambig``: it does), a question
(``neg``: who fits a harmful stereotype; ``nonneg``: the opposite) and three options: two people of
two groups and an "unknown" option. :func:`load_bbq` reads the JSONL file of the BBQ repository
(``../shared/data/bbq_race_ethnicity.jsonl`` when present) into :class:`BbqRow` records, with
the subsets ``black-white`` (the rows whose two people are a Black and a White person, by group
word or by name) and ``race`` (all rows).

Like CrowS-Pairs, BBQ is held out: lens_bias never scores units, selects, tunes or stops on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import PairsError
from .corpora import shared_data_file

BBQ_FILE = "bbq_race_ethnicity.jsonl"
SUBSETS = ("black-white", "race")
#: the group labels of BBQ's answer_info that name a Black or a White person (``F-``/``M-``: by name)
BLACK = frozenset({"Black", "African American", "F-Black", "M-Black"})
WHITE = frozenset({"White", "Caucasian", "European", "F-White", "M-White"})


@dataclass(frozen=True)
class BbqRow:
    """One BBQ question: ``answers`` (three options), ``label`` (the correct option's index),
    ``unknown`` (the unknown option's index), ``groups`` (each option's group label, ``unknown``
    for the unknown one), ``stereotyped`` (the indices of the options that name a group the
    question's stereotype targets), ``ambiguous`` (the context does not say who), ``negative``
    (the question asks who fits the harmful stereotype) and ``question_index`` (BBQ's template id,
    the cluster of the bootstrap)."""

    example_id: int
    question_index: str
    context: str
    question: str
    answers: tuple[str, str, str]
    label: int
    unknown: int
    groups: tuple[str, str, str]
    stereotyped: frozenset[int]
    ambiguous: bool
    negative: bool

    @property
    def people(self) -> list[int]:
        """The indices of the two options that name a person (not the unknown one)."""
        return [i for i in range(3) if i != self.unknown]


def _row(d: dict) -> BbqRow:
    info = [d["answer_info"][f"ans{i}"] for i in range(3)]
    groups = tuple(x[1] for x in info)
    unknown = [i for i, g in enumerate(groups) if g == "unknown"]
    if len(unknown) != 1:
        raise PairsError(f"BBQ row {d.get('example_id')} has {len(unknown)} unknown options; expected one")
    targets = {g.lower() for g in d["additional_metadata"]["stereotyped_groups"]}
    stereotyped = frozenset(i for i, g in enumerate(groups) if i != unknown[0]
                            and (g.split("-", 1)[-1].lower() in targets or g.lower() in targets))
    return BbqRow(int(d["example_id"]), str(d["question_index"]), d["context"], d["question"],
                  (d["ans0"], d["ans1"], d["ans2"]), int(d["label"]), unknown[0], groups, stereotyped,
                  d["context_condition"] == "ambig", d["question_polarity"] == "neg")


def is_black_white(row: BbqRow) -> bool:
    """Whether the row's two people are a Black and a White person."""
    people = {row.groups[i] for i in row.people}
    return len(people) == 2 and bool(people & BLACK) and bool(people & WHITE)


def stratified(rows: list[BbqRow], n: int) -> list[BbqRow]:
    """``n`` of ``rows`` (all when ``n`` is 0 or at least their number), spread evenly over BBQ's
    cells (template ``question_index`` x ambiguous or not x negative or not): each cell keeps its
    share of ``n`` (largest remainder), its rows evenly spaced by ``example_id``. Deterministic.

    Examples:
        >>> rows = [BbqRow(i, str(i % 2), "c", "q", ("a", "b", "u"), 2, 2, ("Black", "White", "unknown"),
        ...                frozenset({0}), i % 4 < 2, True) for i in range(8)]
        >>> [r.example_id for r in stratified(rows, 4)]
        [0, 1, 2, 3]
    """
    if n <= 0 or n >= len(rows):
        return list(rows)
    cells: dict[tuple, list[BbqRow]] = {}
    for r in sorted(rows, key=lambda r: r.example_id):
        cells.setdefault((r.question_index, r.ambiguous, r.negative), []).append(r)
    keys = sorted(cells)
    exact = {k: n * len(cells[k]) / len(rows) for k in keys}
    quota = {k: int(exact[k]) for k in keys}
    for k in sorted(keys, key=lambda k: (quota[k] - exact[k], keys.index(k)))[: n - sum(quota.values())]:
        quota[k] += 1
    keep = {cells[k][int(j * len(cells[k]) / quota[k])].example_id for k in keys for j in range(quota[k])}
    return [r for r in rows if r.example_id in keep]


def default_bbq_path() -> Path | None:
    """``../shared/data/bbq_race_ethnicity.jsonl`` when it is there, else ``None``."""
    return shared_data_file(BBQ_FILE)


def load_bbq(path: str | Path | None = None, subset: str = "black-white",
             limit: int | None = None) -> list[BbqRow]:
    """The BBQ rows of ``subset`` (``black-white`` or ``race``) from ``path`` (default:
    :func:`default_bbq_path`); ``limit``: the first rows of the subset (whole question templates
    are not kept together: use it for a quick look, not for a number).

    Examples:
        >>> rows = load_bbq()  # doctest: +SKIP
        >>> len(rows), sum(r.ambiguous for r in rows)  # doctest: +SKIP
        (800, 400)
    """
    if subset not in SUBSETS:
        raise PairsError(f"BBQ subset must be one of {', '.join(SUBSETS)}; got {subset!r}")
    path = Path(path) if path is not None else default_bbq_path()
    if path is None or not path.exists():
        raise PairsError(f"no BBQ file at {path or '../shared/data/' + BBQ_FILE}; pass the path of the BBQ "
                         "repository's race / ethnicity JSONL (bbq_race_ethnicity.jsonl)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(_row(json.loads(line)))
            except (KeyError, ValueError, IndexError) as e:
                raise PairsError(f"{path}:{n} is not a BBQ row ({e!r}); expected the fields context, "
                                 "question, ans0-ans2, label, context_condition, question_polarity, "
                                 "answer_info and additional_metadata.stereotyped_groups") from None
    if subset == "black-white":
        rows = [r for r in rows if is_black_white(r)]
    return rows[:limit] if limit is not None else rows
