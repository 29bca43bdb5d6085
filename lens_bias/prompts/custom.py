"""Prompt pairs for your own use case: from templates (``lens-bias pairs``), a CSV file or a
``datasets.Dataset``. :func:`pairs_from_templates` fills your templates (see ``EXAMPLE``) with the
bundled group phrases and names, or your own, through the code that fills the bundled templates
(:func:`lens_bias.prompts.pairs.fill_templates`), and warns about names and words that tokenize unevenly."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from difflib import SequenceMatcher
from pathlib import Path

from ..errors import PairsError
from .pairs import (
    SUBJECT,
    ContrastivePair,
    PairSet,
    add_unique,
    check_text,
    fill_templates,
    load_names,
    parse_pair,
)

EXAMPLE = ('{"id": "housing-01", "domain": "housing", "text": "{subject} applied to rent the apartment. '
           'The landlord decided to", "pos": ["approve"], "neg": ["reject"]}')
FIELDS = ("id", "domain", "text", "pos", "neg", "gender", "numeric", "subject_kind")
GENDERS = ("female", "male", "neutral")
CSV_COLUMNS = ("id", "domain", "template", "black", "white")  # optional: pos, neg (|-separated), subject
PAIRED = '{"black": [...], "white": [...]} (paired in order)'


def _read_json(path: Path, what: str) -> object:
    """The JSON value of ``path``; a ``.jsonl`` file, or JSON objects one a line, gives the list of them."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeError) as e:
        raise PairsError(f"cannot read {what} file {path}: {getattr(e, 'strerror', None) or e} "
                         "(a UTF-8 text file)") from e
    if not text.strip():
        raise PairsError(f"{path}: the file is empty; write the {what}s as JSON, e.g. "
                         + (f"[{EXAMPLE}]" if what == "template" else PAIRED))
    if path.suffix != ".jsonl":
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as e:
            if getattr(e, "msg", "") != "Extra data" or what != "template":
                raise PairsError(f"{path}: malformed JSON ({e})") from e
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        try:
            rows += [json.loads(line)] if line.strip() else []
        except (ValueError, RecursionError) as e:
            raise PairsError(f"{path}:{n}: malformed JSON ({e}); write one {what} object a line") from e
    return rows


def _words(v: object, where: str, key: str) -> list[str]:
    v = [v] if isinstance(v, str) else v
    if not isinstance(v, list | tuple) or not all(isinstance(x, str) and x.strip() for x in v):
        raise PairsError(f'{where}: "{key}" must be a list of words, e.g. "{key}": ["approve"]')
    for x in v:
        check_text(x, where, key)
    return [x.strip() for x in v]


def _check_template(t: dict, where: str) -> tuple[dict, list[str]]:
    """One template, normalized, and the warnings about it (unknown fields)."""
    if not isinstance(t.get("domain"), str) or not t["domain"].strip():
        raise PairsError(f'{where}: no "domain"; add one, e.g. "domain": "housing" (pairs are counted and '
                         'split per domain)')
    if not isinstance(t.get("text"), str) or SUBJECT not in t["text"]:
        raise PairsError(f"{where}: the text has no {SUBJECT}; write {SUBJECT} where the name or group "
                         f"phrase goes, e.g. \"{SUBJECT} applied to rent the apartment. "
                         "The landlord decided to\"")
    check_text(t["text"], where, "text")
    out = {"id": str(t["id"]), "domain": t["domain"].strip(), "text": t["text"],
           "pos": _words(t.get("pos", []), where, "pos"), "neg": _words(t.get("neg", []), where, "neg")}
    if bool(out["pos"]) != bool(out["neg"]):
        raise PairsError(f"{where}: give both 'pos' and 'neg' words, or neither")
    if t.get("gender") not in (None, *GENDERS) or not isinstance(t.get("numeric", False), bool):
        raise PairsError(f"{where}: 'gender' must be one of {', '.join(GENDERS)} and 'numeric' true or false")
    out.update({k: t[k] for k in ("gender", "numeric") if t.get(k) is not None})
    unknown = sorted(set(t) - set(FIELDS))
    return out, ([f"{where}: unknown field(s) {unknown} ignored; a template has {', '.join(FIELDS[:6])}"]
                 if unknown else [])


def check_templates(raw: object, source: str = "templates") -> tuple[list[dict], list[str]]:
    """The templates of ``raw`` (a list, or ``{"templates": [...]}``), checked: each has a unique
    ``id``, a ``domain``, a ``text`` with ``{subject}``, optional ``pos``/``neg`` (both or neither)
    and ``gender``; and the warnings. Raises :class:`PairsError` naming ``source``, the template and the fix.

    Examples:
        >>> check_templates([{"id": "t1", "domain": "housing", "text": "The landlord met the tenant."}],
        ...                 "my.json")  # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        lens_bias.errors.PairsError: my.json: template 't1': the text has no {subject}; write {subject} where
            the name or group phrase goes, e.g. "{subject} applied to rent the apartment. The landlord
            decided to"
    """
    items = raw.get("templates") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise PairsError(f'{source}: no templates; write a list of them (or {{"templates": [...]}}), '
                         f'e.g. [{EXAMPLE}]')
    out, warnings, seen = [], [], set()
    for i, t in enumerate(items, start=1):
        tid = t.get("id") if isinstance(t, dict) else None
        if not isinstance(tid, str | int) or isinstance(tid, bool) or not str(tid).strip():
            raise PairsError(f'{source}: template #{i} has no "id" (or is not a JSON object); give every '
                             f'template a unique id, e.g. {EXAMPLE} (the held-out split holds out whole '
                             'templates)')
        where = f"{source}: template {str(tid)!r}"
        if str(tid) in seen:
            raise PairsError(f"{where}: duplicate id (template #{i}); give every template its own id")
        seen.add(str(tid))
        t, w = _check_template(t, where)
        out.append(t)
        warnings += w
    return out, warnings


def _paired(black: object, white: object, where: str) -> list[tuple[str, str]]:
    """Two lists of non-empty strings of equal length, paired in order, each pair differing, none twice."""
    for side, v in (("black", black), ("white", white)):
        if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
            raise PairsError(f"{where}: '{side}' must be a non-empty list of strings; write {PAIRED}")
    if len(black) != len(white):
        raise PairsError(f"{where}: {len(black)} black and {len(white)} white entries; they are paired in "
                         "order, so give as many of each")
    pairs = list(zip(black, white, strict=True))
    if bad := [b for b, w in pairs if b == w] + [b for i, (b, w) in enumerate(pairs) if (b, w) in pairs[:i]]:
        raise PairsError(f"{where}: {bad[0]!r} is paired with itself or listed twice; list each differing "
                         "pair once")
    return pairs


def _names(v: object) -> dict:
    """Names: ``{"black": [...], "white": [...]}``, by gender (``{"black": {"female": [...]}, ...}``)
    or the bundled ``names.json`` itself; from a JSON file or as the dict."""
    raw, src = (_read_json(Path(v), "names"), str(v)) if isinstance(v, str | Path) else (v, "names")
    raw = raw.get("names", raw) if isinstance(raw, dict) else raw
    b, w = (raw.get("black"), raw.get("white")) if isinstance(raw, dict) else (None, None)
    if isinstance(b, list) or isinstance(w, list):
        return {"black": {"neutral": [x for x, _ in _paired(b, w, src)]}, "white": {"neutral": w}}
    if not isinstance(b, dict) or not isinstance(w, dict) or set(b) != set(w) or not set(b) <= set(GENDERS):
        raise PairsError(f'{src}: names must be {PAIRED}, or by gender '
                         f'{{"black": {{"female": [...], "male": [...]}}, "white": {{...}}}} with the same '
                         f'genders ({", ".join(GENDERS)}) on both sides')
    for g in b:
        _paired(b[g], w[g], f"{src} ({g})")
    return {"black": dict(b), "white": dict(w)}


def _groups(v: object) -> list[dict]:
    """Group phrases: as :func:`_names` (not by gender), or a list of ``{"black", "white", "gender"}``."""
    raw, src = (_read_json(Path(v), "groups"), str(v)) if isinstance(v, str | Path) else (v, "groups")
    raw = raw.get("group_phrases", raw) if isinstance(raw, dict) else raw
    if isinstance(raw, dict) and {"black", "white"} <= set(raw):
        return [{"black": b, "white": w, "gender": "neutral"}
                for b, w in _paired(raw["black"], raw["white"], src)]
    if not isinstance(raw, list) or not all(isinstance(g, dict) and g.get("gender", "neutral") in GENDERS
                                            for g in raw):
        raise PairsError(f'{src}: groups must be {PAIRED} or a list of {{"black": "A Black tenant", "white": '
                         f'"A White tenant", "gender": "neutral"}} objects (gender: {", ".join(GENDERS)})')
    _paired([g.get("black") for g in raw], [g.get("white") for g in raw], src)
    return [{"black": g["black"], "white": g["white"], "gender": g.get("gender", "neutral")} for g in raw]


def pairs_from_templates(templates: str | Path | Sequence[dict] | dict, subjects: str = "both",
                         names: str | Path | dict | None = None,
                         groups: str | Path | dict | list | None = None,
                         tokenizer=None) -> tuple[PairSet, list[str]]:
    """Fill your templates (a JSON or JSONL file, or the list) with the bundled group phrases and/or
    names (``subjects``), or yours (``names`` / ``groups``: a JSON file or the value, ``{"black": [...],
    "white": [...]}`` paired in order, or the ``names.json`` format). Returns the pairs (id ``"<template
    id>:<subject id>"``) and the warnings, with a ``tokenizer`` those of :func:`token_warnings` too.

    Examples:
        >>> ps, warnings = pairs_from_templates([{"id": "housing-01", "domain": "housing",
        ...     "text": "{subject} applied to rent the flat. The landlord decided to",
        ...     "pos": ["approve"], "neg": ["reject"]}], subjects="names")
        >>> len(ps), ps[0].id, ps[0].template, ps[0].pos, warnings
        (18, 'housing-01:name-Lakisha-Emily', 'housing-01', ('approve',), [])
        >>> ps[0].black
        'Lakisha applied to rent the flat. The landlord decided to'
    """
    if subjects not in ("names", "groups", "both"):
        raise PairsError(f"subjects must be 'names', 'groups' or 'both', got {subjects!r}")
    file = isinstance(templates, str | Path)
    source = str(templates) if file else "templates"
    tpls, warnings = check_templates(_read_json(Path(templates), "template") if file else templates, source)
    lists = {**load_names(), **({"names": _names(names)} if names is not None else {}),
             **({"group_phrases": _groups(groups)} if groups is not None else {})}
    for given, kind, other in ((names, "names", "groups"), (groups, "groups", "names")):
        if given is not None and subjects == other:
            warnings.append(f"the {kind} given are not used: subjects={other!r}; use {kind!r} or 'both'")
    ps = PairSet(fill_templates({"domains": {}, "templates": tpls}, None, subjects, "template", names=lists))
    for t in tpls:
        if not any(p.template == t["id"] for p in ps):
            ps.skipped.append({"template": t["id"],
                               "reason": f"no {subjects} subject has gender {t.get('gender')!r}"})
            warnings.append(f"{source}: template {t['id']!r} gave no pairs: {ps.skipped[-1]['reason']}")
    if not ps:
        raise PairsError(f"{source}: no pairs were built; give the templates no 'gender' or add names of "
                         "that gender")
    return ps, warnings + (token_warnings(ps, tokenizer) if tokenizer is not None else [])


def _differing_words(black: str, white: str) -> tuple[str, str]:
    """The first words where two prompts differ (the name or group word), e.g. ``("Black", "White")``."""
    a, b = black.split(), white.split()
    for tag, i1, i2, j1, j2 in SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag != "equal":
            return " ".join(a[i1:i2]).strip(".,;:!?'\""), " ".join(b[j1:j2]).strip(".,;:!?'\"")
    return black, white


def token_warnings(pairs: PairSet | Sequence[ContrastivePair], tokenizer) -> list[str]:
    """Token checks with ``tokenizer`` (``bridge.lens_bias_tokenizer`` or any HF tokenizer), counted
    as :func:`lens_bias.model.batching.token_report` and :func:`lens_bias.measures.metrics.word_tokens` count:
    pairs whose prompts differ in token count (naming the words that differ), pos/neg words of
    more than one token (scored by their first token), pos and neg words sharing their first token.

    Examples:
        >>> from lens_bias.model.load import tiny_random_hf
        >>> ps = PairSet([ContrastivePair("1", "d", "t", "Zqxwvbrtlekisha is here.", "Emily is here.")])
        >>> token_warnings(ps, tiny_random_hf()[1])[0][:97]
        "1 of 1 pairs have Black and White prompts of different token counts: 'Zqxwvbrtlekisha' vs 'Emily'"
    """
    n = {t: len(tokenizer(t, add_special_tokens=False)["input_ids"])
         for p in pairs for t in (p.black, p.white)}
    uneven: dict[tuple[str, str], set[int]] = {}
    for p in pairs:
        if d := n[p.black] - n[p.white]:
            uneven.setdefault(_differing_words(p.black, p.white), set()).add(d)
    out = []
    if uneven:
        shown = [f"{b!r} vs {w!r} ({'/'.join(f'{d:+d}' for d in sorted(ds))})"
                 for (b, w), ds in uneven.items()]
        out.append(f"{sum(n[p.black] != n[p.white] for p in pairs)} of {len(pairs)} pairs have Black and "
                   f"White prompts of different token counts: {', '.join(shown[:12])}"
                   f"{' ...' if len(shown) > 12 else ''} (Black minus White tokens); the patch estimator "
                   "then aligns the prompts at their end only: prefer names of equal length (--names)")
    ids = {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"] for p in pairs for w in p.pos + p.neg}
    if multi := {w: len(v) for w, v in ids.items() if len(v) > 1}:
        out.append(f"{len(multi)} pos/neg word(s) are more than one token and are scored by their first "
                   f"token only: {', '.join(f'{w!r} ({k} tokens)' for w, k in sorted(multi.items()))}; "
                   "prefer single-token words")
    if clash := sorted({(w, v) for p in pairs for w in p.pos for v in p.neg if ids[w][0] == ids[v][0]}):
        out.append("pos and neg words share their first token, so the logit gap cannot tell them apart: "
                   f"{', '.join(f'{w!r}/{v!r}' for w, v in clash)}; choose words that start differently")
    return out


def _require(columns: Iterable, where: str) -> None:
    if missing := [c for c in CSV_COLUMNS if c not in set(columns)]:
        raise PairsError(f"{where}: missing column(s) {', '.join(missing)}; the columns are "
                         f"{', '.join(CSV_COLUMNS)} and optionally pos, neg (words separated by |), subject")


def _row_pairs(rows: Iterable[tuple[str, object]], source: str) -> PairSet:
    """Pairs from ``(where, row)`` rows with the :data:`CSV_COLUMNS` (pos/neg as lists or ``|``-separated)."""
    pairs, ids = [], set()
    for where, row in rows:
        if not isinstance(row, dict):
            raise PairsError(f"{where}: expected a row of columns, got {type(row).__name__} "
                             "(a pandas DataFrame: pass df.to_dict('records'))")
        _require(row, where)
        obj = {k: row[k] for k in CSV_COLUMNS} | {k: row[k] for k in ("subject",) if row.get(k)}
        if empty := [k for k in ("id", "domain", "template") if not str(obj[k] or "").strip()]:
            raise PairsError(f"{where}: empty {', '.join(empty)}; every row needs an id, a domain and a "
                             "template id")
        for k in ("pos", "neg"):
            v = row.get(k) or []
            obj[k] = [x.strip() for x in v.split("|") if x.strip()] if isinstance(v, str) else v
        add_unique(pairs, ids, parse_pair(obj, where), where)
    if not pairs:
        raise PairsError(f"{source}: no pairs (no rows); give one pair a row with columns "
                         f"{', '.join(CSV_COLUMNS)}")
    return PairSet(pairs)


def load_pairs_csv(path: str | Path) -> PairSet:
    """Read pairs from a CSV file with a header: ``id, domain, template, black, white`` and
    optionally ``pos``, ``neg`` (words separated by ``|``) and ``subject``.

    Examples:
        >>> import tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "pairs.csv"
        >>> _ = f.write_text("id,domain,template,black,white,pos,neg\\n"
        ...                  "1,housing,h1,Jamal rents. The landlord will,Greg rents. The landlord will,"
        ...                  "approve|accept,reject\\n")
        >>> ps = load_pairs_csv(f)
        >>> ps, ps[0].pos
        (PairSet(1 pairs: housing=1), ('approve', 'accept'))
    """
    path = Path(path)
    try:
        reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8-sig"), newline=""))
        _require(reader.fieldnames or ["the file is empty"], str(path))
        rows = [(f"{path}:{reader.line_num}", {k: v for k, v in row.items() if k is not None})
                for row in reader]
    except (OSError, UnicodeError) as e:
        raise PairsError(f"cannot read pairs CSV file {path}: {getattr(e, 'strerror', None) or e} "
                         "(a UTF-8 text file)") from e
    except csv.Error as e:
        raise PairsError(f"{path}:{reader.line_num}: malformed CSV ({e})") from e
    return _row_pairs(rows, str(path))


def pairs_from_dataset(ds: Iterable) -> PairSet:
    """Pairs from a ``datasets.Dataset`` (or any iterable of dict rows) with the columns of
    :func:`load_pairs_csv` (pos/neg as lists of words or ``|``-separated).

    Examples:
        >>> pairs_from_dataset([{"id": "1", "domain": "housing", "template": "h1",
        ...                      "black": "Jamal rents.", "white": "Greg rents.", "pos": [], "neg": []}])
        PairSet(1 pairs: housing=1)
    """
    cols = getattr(ds, "column_names", None)
    if isinstance(cols, dict):
        raise PairsError(f"a dataset of several splits ({', '.join(cols)}); pass one, e.g. ds['train']")
    if cols is not None:
        _require(cols, "the dataset")
    return _row_pairs(((f"dataset row {i}", row) for i, row in enumerate(ds)), "the dataset")

