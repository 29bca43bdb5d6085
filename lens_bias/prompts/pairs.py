"""Contrastive Black/White prompt pairs.

A :class:`ContrastivePair` is two prompts that differ only in a group phrase ("A Black man" / "A White
man") or a first name ("Lakisha" / "Emily"). Pairs are built from the bundled, domain-labelled templates
(``lens_bias/data/templates.json``), read from a JSONL file (the pairs format of ``docs/formats.md``), and
split by template and by name so that held-out means unseen wording.

CrowS-Pairs, an evaluation corpus, is read by :func:`lens_bias.prompts.corpora.load_crows_pairs`.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

from ..errors import PairsError

DATA = resources.files("lens_bias") / "data"
SUBJECT = "{subject}"


@dataclass(frozen=True)
class ContrastivePair:
    """Two prompts that differ only in the group word or name.

    ``pos``/``neg`` are optional single-word continuations (favourable / unfavourable) that give
    the pair a direction for the ``logit_gap`` metric. ``subject`` identifies the substituted
    group phrase or name pair (used for by-name splits).

    Examples:
        >>> p = ContrastivePair(id="loan-1", domain="finance", template="loan",
        ...                     black="Jamal asked for a loan. The bank decided to",
        ...                     white="Greg asked for a loan. The bank decided to",
        ...                     pos=("approve",), neg=("deny",))
        >>> p.to_json()["pos"], p.to_json()["neg"]
        (['approve'], ['deny'])
    """

    id: str
    domain: str
    template: str
    black: str
    white: str
    pos: tuple[str, ...] = ()
    neg: tuple[str, ...] = ()
    numeric: bool = False
    subject: str = ""

    def to_json(self) -> dict:
        """The pair as one JSONL object (the pairs file format); defaults are left out."""
        d = asdict(self)
        d["pos"], d["neg"] = list(self.pos), list(self.neg)
        if not self.numeric:
            d.pop("numeric")
        if not self.subject:
            d.pop("subject")
        return d


@dataclass
class PairSet:
    """An ordered collection of :class:`ContrastivePair` with domain views and splits.

    Indexing gives a pair, slicing a new :class:`PairSet`; ``skipped`` lists what a builder did not
    build and why (nothing is dropped silently).

    Examples:
        >>> ps = build_pairs(domains=["finance", "hiring"])
        >>> ps.domains, len(ps[:3])
        (['finance', 'hiring'], 3)
        >>> train, held_out = ps.sample(8).split(by="template", held_out=0.25)
        >>> set(train.templates) & set(held_out.templates)
        set()
    """

    pairs: list[ContrastivePair] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # what was not built and why

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[ContrastivePair]:
        return iter(self.pairs)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return PairSet(self.pairs[i])
        return self.pairs[i]

    def __repr__(self) -> str:
        counts = ", ".join(f"{d}={len(p)}" for d, p in self.by_domain().items())
        return f"PairSet({len(self)} pairs: {counts})"

    @property
    def domains(self) -> list[str]:
        """The domains present, sorted."""
        return sorted({p.domain for p in self.pairs})

    @property
    def templates(self) -> list[str]:
        """The template ids present, sorted."""
        return sorted({p.template for p in self.pairs})

    def by_domain(self) -> dict[str, PairSet]:
        """``{domain: PairSet of that domain}``, domains sorted."""
        return {d: self.filter(domains=[d]) for d in self.domains}

    def filter(self, domains: Iterable[str] | None = None, templates: Iterable[str] | None = None,
               directional: bool | None = None) -> PairSet:
        """The pairs in ``domains`` and ``templates`` (``None`` = any); ``directional=True`` keeps only
        pairs with pos/neg words, ``False`` only those without.

        Examples:
            >>> build_pairs(["finance"]).filter(directional=True)[0].pos != ()
            True
        """
        ds = set(domains) if domains is not None else None
        ts = set(templates) if templates is not None else None
        return PairSet([p for p in self.pairs
                        if (ds is None or p.domain in ds) and (ts is None or p.template in ts)
                        and (directional is None or bool(p.pos and p.neg) == directional)])

    def sample(self, per_domain: int, seed: int = 0) -> PairSet:
        """At most ``per_domain`` pairs from each domain, drawn round-robin over its templates (so
        every template is represented), seeded; the original order is kept. ``per_domain <= 0``
        keeps everything.

        Examples:
            >>> build_pairs().sample(4)
            PairSet(24 pairs: commerce=4, education=4, finance=4, general=4, hiring=4, policing=4)
        """
        if per_domain <= 0:
            return PairSet(list(self.pairs))
        rng = random.Random(seed)
        keep: set[int] = set()
        for d in self.domains:
            by_t: dict[str, list[int]] = {}
            for i, p in enumerate(self.pairs):
                if p.domain == d:
                    by_t.setdefault(p.template, []).append(i)
            queues = [rng.sample(v, len(v)) for _, v in sorted(by_t.items())]
            rng.shuffle(queues)
            taken = 0
            while taken < per_domain and any(queues):
                for q in queues:
                    if q and taken < per_domain:
                        keep.add(q.pop())
                        taken += 1
        return PairSet([p for i, p in enumerate(self.pairs) if i in keep])

    def split(self, by: str = "template", held_out: float = 0.25, seed: int = 0) -> tuple[PairSet, PairSet]:
        """Split into (train, held-out) by template, by name/subject, or by both.

        ``by="template"``: within each domain, a seeded fraction of the templates is held out, so
        held-out pairs use unseen wording. ``by="subject"``: a fraction of the group phrases / name
        pairs is held out. ``by="both"``: held-out pairs have unseen templates *and* unseen subjects;
        pairs that mix seen and unseen parts are dropped from both sides.

        Examples:
            >>> train, test = build_pairs(["hiring"]).split(by="subject", held_out=0.25, seed=0)
            >>> {p.subject for p in train} & {p.subject for p in test}
            set()
        """
        if not 0 < held_out < 1:
            raise PairsError(f"held_out must be a fraction in (0, 1), got {held_out}")
        if by not in ("template", "subject", "both"):
            raise PairsError(f"split by must be 'template', 'subject' or 'both', got {by!r}")
        rng = random.Random(seed)
        test_templates: set[str] = set()
        for d in self.domains:
            ts = sorted({p.template for p in self.pairs if p.domain == d})
            k = max(1, round(len(ts) * held_out)) if len(ts) > 1 else 0
            test_templates.update(rng.sample(ts, k))
        subjects = sorted({p.subject for p in self.pairs})
        k = max(1, round(len(subjects) * held_out)) if len(subjects) > 1 else 0
        test_subjects = set(rng.sample(subjects, k))
        train, test = [], []
        for p in self.pairs:
            t_out, s_out = p.template in test_templates, p.subject in test_subjects
            if by == "template":
                (test if t_out else train).append(p)
            elif by == "subject":
                (test if s_out else train).append(p)
            elif t_out and s_out:
                test.append(p)
            elif not t_out and not s_out:
                train.append(p)
        return PairSet(train), PairSet(test)

    def to_jsonl(self, path: str | Path) -> None:
        """Write the pairs as a JSONL file (one object per line, UTF-8), readable by :func:`load_jsonl`.

        Examples:
            >>> import tempfile, pathlib
            >>> f = pathlib.Path(tempfile.mkdtemp()) / "pairs.jsonl"
            >>> build_pairs(["finance"])[:5].to_jsonl(f)
            >>> len(PairSet.from_jsonl(f))
            5
        """
        with open(path, "w", encoding="utf-8") as f:
            for p in self.pairs:
                f.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")

    @classmethod
    def from_jsonl(cls, path: str | Path) -> PairSet:
        """Same as :func:`load_jsonl`."""
        return load_jsonl(path)


# ---------------------------------------------------------------- bundled templates


@cache
def load_templates() -> dict:
    """The bundled templates file (``lens_bias/data/templates.json``): ``domains`` and ``templates``
    (each with ``id``, ``domain``, ``text`` containing ``{subject}``, optional ``pos``/``neg``).

    Examples:
        >>> t = load_templates()
        >>> len(t["templates"]), "{subject}" in t["templates"][0]["text"]
        (94, True)
    """
    return json.loads((DATA / "templates.json").read_text(encoding="utf-8"))


@cache
def load_names() -> dict:
    """Group phrases and first names (``lens_bias/data/names.json``), with their source.

    Examples:
        >>> n = load_names()
        >>> n["names"]["black"]["female"][0], n["names"]["white"]["female"][0]
        ('Lakisha', 'Emily')
    """
    return json.loads((DATA / "names.json").read_text(encoding="utf-8"))


def bundled_text_corpus() -> list[str]:
    """All bundled text (templates filled with every subject, plus the neutral text): what the
    ``tiny-random`` tokenizer is trained on.

    Examples:
        >>> len(bundled_text_corpus()) > 2 * len(build_pairs())
        True
    """
    lines = [p.black for p in build_pairs()] + [p.white for p in build_pairs()]
    return lines + neutral_text()


@cache
def _neutral() -> tuple[str, ...]:
    text = (DATA / "neutral.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def neutral_text() -> list[str]:
    """Bundled race-free sentences, for mean activations and language-modelling cost.

    Examples:
        >>> texts = neutral_text()
        >>> len(texts) > 10, all(isinstance(t, str) and t for t in texts)
        (True, True)
    """
    return list(_neutral())


def subject_list(kind: str, names: dict | None = None) -> list[tuple[str, str, str, str]]:
    """(subject id, black, white, gender) for group phrases and/or names: those of ``names`` (the
    format of ``lens_bias/data/names.json``, genders in its order), else the bundled ones."""
    names = load_names() if names is None else names
    out = []
    if kind in ("groups", "both"):
        for i, g in enumerate(names["group_phrases"]):
            out.append((f"group-{i:02d}", g["black"], g["white"], g.get("gender", "neutral")))
    if kind in ("names", "both"):
        for gender in names["names"]["black"]:
            for b, w in zip(names["names"]["black"][gender], names["names"]["white"][gender], strict=True):
                out.append((f"name-{b}-{w}", b, w, gender))
    if not out:
        raise PairsError(f"subjects must be 'groups', 'names' or 'both', got {kind!r}")
    return out


def fill_subject(text: str, subject: str) -> str:
    return text.replace(SUBJECT, subject)


def fill_templates(data: dict, domains: Sequence[str] | None, subjects: str, kind: str = "bundled",
                   names: dict | None = None) -> list[ContrastivePair]:
    """Every template of ``data`` in ``domains`` (all when ``None``) filled with every subject of
    its gender (``subject_list``, of ``names`` when given); pos/neg words and ``numeric`` carried
    over when present. The one expansion of the bundled, sentence and your own templates."""
    if domains is not None and (unknown := [d for d in domains if d not in data["domains"]]):
        raise PairsError(f"unknown domain(s) {unknown}; {kind} domains: {', '.join(sorted(data['domains']))}")
    return [ContrastivePair(id=f"{t['id']}:{sid}", domain=t["domain"], template=t["id"],
                            black=fill_subject(t["text"], b), white=fill_subject(t["text"], w),
                            pos=tuple(t.get("pos", ())), neg=tuple(t.get("neg", ())),
                            numeric=bool(t.get("numeric", False)), subject=sid)
            for t in data["templates"] if domains is None or t["domain"] in domains
            for sid, b, w, gender in subject_list(subjects, names)
            if not t.get("gender") or gender == t["gender"]]


@cache
def _build(domains: tuple[str, ...] | None, subjects: str) -> tuple[ContrastivePair, ...]:
    return tuple(fill_templates(load_templates(), domains, subjects))


def build_pairs(domains: Sequence[str] | None = None, subjects: str = "both") -> PairSet:
    """Fill the bundled templates with group phrases and/or Black/White-associated names.

    Examples:
        >>> ps = build_pairs(domains=["finance"], subjects="groups")
        >>> ps[0].black.startswith("A Black") or ps[0].black.startswith("An African")
        True
    """
    key = tuple(sorted(domains)) if domains is not None else None
    return PairSet(list(_build(key, subjects)))


# ---------------------------------------------------------------- JSONL

_REQUIRED = ("black", "white")


def check_text(text: str, where: str, key: str) -> None:
    """Refuse text that cannot be encoded (an unpaired UTF-16 surrogate such as ``"\\ud800"`` is
    valid JSON but no tokenizer can read it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start:e.end].encode("unicode_escape").decode("ascii")
        raise PairsError(f"{where}: '{key}' contains an unpaired surrogate ({bad}) that is not valid text; "
                         "write the character itself or a valid \\uXXXX\\uXXXX pair") from e


def parse_pair(obj: object, where: str) -> ContrastivePair:
    if not isinstance(obj, dict):
        raise PairsError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in _REQUIRED if k not in obj]
    if missing:
        raise PairsError(f"{where}: missing field(s) {missing}; each line needs 'black' and 'white' prompts")
    for k in ("black", "white"):
        if not isinstance(obj[k], str) or not obj[k].strip():
            raise PairsError(f"{where}: '{k}' must be a non-empty string")
        check_text(obj[k], where, k)
    if obj["black"] == obj["white"]:
        raise PairsError(f"{where}: 'black' and 'white' prompts are identical; they must differ in the group "
                         "word or name")
    words = {}
    for k in ("pos", "neg"):
        v = obj.get(k, [])
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise PairsError(f"{where}: '{k}' must be a list of words")
        for x in v:
            check_text(x, where, k)
        words[k] = tuple(x.strip() for x in v)
    if bool(words["pos"]) != bool(words["neg"]):
        raise PairsError(f"{where}: give both 'pos' and 'neg' words, or neither")
    for k in ("id", "domain", "template", "subject"):
        if k in obj and not isinstance(obj[k], str | int):
            raise PairsError(f"{where}: '{k}' must be a string")
        if isinstance(obj.get(k), str):
            check_text(obj[k], where, k)
    return ContrastivePair(
        id=str(obj.get("id", where)), domain=str(obj.get("domain", "custom")),
        template=str(obj.get("template", obj.get("id", where))), black=obj["black"], white=obj["white"],
        pos=words["pos"], neg=words["neg"], numeric=bool(obj.get("numeric", False)),
        subject=str(obj.get("subject", "")),
    )


def load_jsonl(path: str | Path) -> PairSet:
    """Read pairs from a JSONL file (one object a line; the pairs format of ``docs/formats.md``).

    Raises :class:`PairsError` naming the file and line of the first malformed entry.

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "pairs.jsonl"
        >>> _ = f.write_text('{"id": "1", "domain": "housing", "template": "t1", '
        ...                  '"black": "Jamal applied to rent the flat. The landlord", '
        ...                  '"white": "Greg applied to rent the flat. The landlord"}')
        >>> load_jsonl(f)
        PairSet(1 pairs: housing=1)
    """
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"pairs file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PairsError(f"{path}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from e
    except OSError as e:
        raise PairsError(f"cannot read pairs file {path}: {e.strerror or e}") from e
    pairs, ids = [], set()
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise PairsError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from e
        except ValueError as e:  # e.g. an integer of more than 4,300 digits
            raise PairsError(f"{where}: malformed JSON ({e})") from e
        except RecursionError as e:
            raise PairsError(f"{where}: malformed JSON (nested too deeply)") from e
        add_unique(pairs, ids, parse_pair(obj, where), where)
    if not pairs:
        raise PairsError(f"{path}: no pairs (the file is empty); write one JSON object a line")
    return PairSet(pairs)


def add_unique(pairs: list[ContrastivePair], ids: set[str], p: ContrastivePair, where: str) -> None:
    """Append ``p`` to ``pairs`` unless its id is in ``ids`` (a :class:`PairsError` at ``where``)."""
    if p.id in ids:
        raise PairsError(f"{where}: duplicate id {p.id!r}; ids must be unique")
    ids.add(p.id)
    pairs.append(p)


# ---------------------------------------------------------------- the pairs a command works on


def load_pairs(path: str | Path | None = None, domains: Sequence[str] | None = None, per_domain: int = 0,
               seed: int = 0, sample_file: bool = False) -> PairSet:
    """The pairs a command or run works on. Without ``path``: the bundled templates of ``domains``
    (all when ``None``), at most ``per_domain`` pairs per domain (seeded, ``0`` = all; see
    :meth:`PairSet.sample`). With ``path``: the pairs of that JSONL file, restricted to ``domains``
    when given, and sampled per domain too only when ``sample_file`` is set.

    Examples:
        >>> load_pairs(domains=["finance", "hiring"], per_domain=4, seed=0)
        PairSet(8 pairs: finance=4, hiring=4)
    """
    if not path:
        return build_pairs(domains=domains).sample(per_domain, seed=seed)
    ps = load_jsonl(path)
    if domains:
        ps = ps.filter(domains=domains)
    return ps.sample(per_domain, seed=seed) if sample_file else ps
