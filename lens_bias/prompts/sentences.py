"""Counterfactual sentence pairs for sentence-level bias (the kind CrowS-Pairs measures).

Each bundled template (``lens_bias/data/sentences.json``, written for lens_bias) is one complete
declarative sentence that starts with ``{subject}`` and states something that reflects a stereotype
commonly held in the US about Black people (``"stereotyped": "black"``) or about White people
(``"stereotyped": "white"``). Filled with the same group phrases and first names as the prompt
pairs (:func:`lens_bias.prompts.pairs.subject_list`), a template gives pairs
(:class:`~lens_bias.prompts.pairs.ContrastivePair`) whose two sentences differ only in the subject and that
carry no pos/neg words. A sentence-level measure compares the summed log-likelihood of the two
sentences; :func:`stereotype_signs` says for each pair which of them is the stereotype-consistent one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from ..errors import PairsError
from .pairs import DATA, SUBJECT, ContrastivePair, PairSet, fill_templates, load_jsonl

STEREOTYPED = ("black", "white")
GENDERS = ("male", "female")


def _fail(where: str, problem: str, fix: str) -> PairsError:
    return PairsError(f"{where}: {problem}; {fix}")


def _check_template(t: object, n: int, domains: dict, seen: set[str], where: str) -> None:
    """Refuse one malformed template entry (``n``: its index in the file)."""
    if not isinstance(t, dict):
        raise _fail(where, f"template #{n} is a {type(t).__name__}, not an object",
                    'write {"id": ..., "domain": ..., "text": ..., "stereotyped": ...}')
    tid = t.get("id")
    if not isinstance(tid, str) or not tid:
        raise _fail(where, f"template #{n} has no string 'id'", "give every template a unique id")
    if tid in seen:
        raise _fail(where, f"duplicate template id {tid!r}", "make the ids unique")
    seen.add(tid)
    text = t.get("text")
    if not isinstance(text, str) or not text.startswith(SUBJECT) or text.count(SUBJECT) != 1:
        raise _fail(where, f"template {tid!r}: 'text' must start with the one {SUBJECT} placeholder, "
                    f"got {text!r}", f"write it as '{SUBJECT} did something.'")
    if not text.rstrip().endswith("."):
        raise _fail(where, f"template {tid!r}: 'text' is not one sentence ending with a period",
                    "end the sentence with '.'")
    if t.get("domain") not in domains:
        raise _fail(where, f"template {tid!r}: unknown domain {t.get('domain')!r}",
                    f"use one of {', '.join(sorted(domains))} or add it to 'domains'")
    if t.get("stereotyped") not in STEREOTYPED:
        raise _fail(where, f"template {tid!r}: 'stereotyped' is {t.get('stereotyped')!r}",
                    "set it to 'black' or 'white' (the group the sentence's stereotype is about)")
    if "gender" in t and t["gender"] not in GENDERS:
        raise _fail(where, f"template {tid!r}: 'gender' is {t['gender']!r}",
                    "set it to 'male' or 'female', or leave it out")


def validate_sentence_templates(data: object, where: str = "sentence templates") -> dict:
    """``data`` if it is a well-formed sentence-template file, else a :class:`PairsError` naming
    the problem (``where``: the file, for the message).

    Examples:
        >>> validate_sentence_templates({"domains": {"finance": "money"}, "templates": [
        ...     {"id": "s1", "domain": "finance", "text": "{subject} paid.", "stereotyped": "green"}]})
        ... # doctest: +NORMALIZE_WHITESPACE
        Traceback (most recent call last):
        ...
        lens_bias.errors.PairsError: sentence templates: template 's1': 'stereotyped' is 'green'; set it to
            'black' or 'white' (the group the sentence's stereotype is about)
    """
    if not isinstance(data, dict) or not isinstance(data.get("domains"), dict) \
            or not isinstance(data.get("templates"), list):
        raise _fail(where, "not a sentence-template file",
                    "write an object with 'domains' (name -> description) and a 'templates' list")
    if not data["templates"]:
        raise _fail(where, "no templates", "add at least one template")
    seen: set[str] = set()
    for n, t in enumerate(data["templates"]):
        _check_template(t, n, data["domains"], seen, where)
    return data


@cache
def _bundled() -> dict:
    path = DATA / "sentences.json"
    return validate_sentence_templates(json.loads(path.read_text(encoding="utf-8")), str(path))


def load_sentence_templates(path: str | Path | None = None) -> dict:
    """The sentence templates: the bundled ``lens_bias/data/sentences.json`` when ``path`` is
    ``None``, else that JSON file; validated (see :func:`validate_sentence_templates`).

    Examples:
        >>> t = load_sentence_templates()
        >>> len(t["templates"]), sorted(t["domains"]) == sorted({x["domain"] for x in t["templates"]})
        (54, True)
        >>> t["templates"][0]["text"].startswith("{subject}"), t["templates"][0]["stereotyped"]
        (True, 'black')
    """
    if path is None:
        return _bundled()
    path = Path(path)
    if not path.is_file():
        raise PairsError(f"sentence-template file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PairsError(f"{path}: not valid UTF-8 (byte {e.start}); save the file as UTF-8") from e
    except json.JSONDecodeError as e:
        raise PairsError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from e
    return validate_sentence_templates(data, str(path))


@cache
def _build_bundled(domains: tuple[str, ...] | None, subjects: str) -> tuple[ContrastivePair, ...]:
    return tuple(fill_templates(_bundled(), domains, subjects, "sentence"))


def build_sentence_pairs(domains: Sequence[str] | None = None, subjects: str = "both",
                         path: str | Path | None = None) -> PairSet:
    """Fill the sentence templates (bundled, or the file at ``path``) of ``domains`` (all when
    ``None``) with group phrases and/or names (``subjects``: ``"groups"``, ``"names"`` or
    ``"both"``); gendered templates get only subjects of their gender. Pairs have no pos/neg words;
    ``id`` is ``"<template id>:<subject id>"``.

    Examples:
        >>> ps = build_sentence_pairs(["policing"], subjects="groups")
        >>> p = ps[0]
        >>> p.id, p.black
        ('s-policing-01:group-00', 'A Black man was arrested for selling drugs on a street corner.')
        >>> p.white, p.pos, p.neg
        ('A White man was arrested for selling drugs on a street corner.', (), ())
        >>> len(build_sentence_pairs())
        1322
    """
    if path is not None:
        return PairSet(fill_templates(load_sentence_templates(path), domains, subjects, "sentence"))
    key = tuple(sorted(domains)) if domains is not None else None
    return PairSet(list(_build_bundled(key, subjects)))


def stereotype_signs(pairs: PairSet | Sequence[ContrastivePair], path: str | Path | None = None) -> list[int]:
    """Per pair: ``+1`` where its Black sentence is the stereotype-consistent one (template
    ``stereotyped`` = ``"black"``), ``-1`` where its White sentence is, ``0`` where its template is
    not one of the sentence templates (bundled, or those of ``path``) or its sentences are not that
    template's text (e.g. a user's own pairs file).

    Examples:
        >>> ps = build_sentence_pairs(["finance"], subjects="groups")
        >>> signs = stereotype_signs(ps)
        >>> sorted(set(signs)), len(signs) == len(ps)
        ([-1, 1], True)
        >>> stereotype_signs([ContrastivePair("x", "custom", "x", "Jamal ran.", "Greg ran.")])
        [0]
    """
    sign = {"black": 1, "white": -1}
    by_id = {t["id"]: t for t in load_sentence_templates(path)["templates"]}
    out = []
    for p in pairs:
        t = by_id.get(p.template)
        rest = t["text"][len(SUBJECT):] if t else None
        ok = t is not None and p.black.endswith(rest) and p.white.endswith(rest)
        out.append(sign[t["stereotyped"]] if ok else 0)
    return out


def load_sentence_pairs(path: str | Path | None = None, domains: Sequence[str] | None = None,
                        per_domain: int = 0, seed: int = 0, sample_file: bool = False) -> PairSet:
    """The sentence pairs a measure works on, as :func:`lens_bias.prompts.pairs.load_pairs` gives prompt
    pairs. Without ``path``: the bundled sentence templates of ``domains`` (all when ``None``), at
    most ``per_domain`` pairs per domain (seeded, ``0`` = all; :meth:`PairSet.sample`). With
    ``path``: the pairs of that JSONL file (the pairs format), restricted to ``domains`` when given,
    and sampled per domain too only when ``sample_file`` is set.

    Examples:
        >>> load_sentence_pairs(domains=["hiring", "education"], per_domain=5)
        PairSet(10 pairs: education=5, hiring=5)
    """
    if path is None:
        return build_sentence_pairs(domains=domains).sample(per_domain, seed=seed)
    ps = load_jsonl(path)
    if domains is not None:
        ps = ps.filter(domains=domains)
        if not len(ps):
            raise PairsError(f"{path}: no pairs in domain(s) {list(domains)}; the file's domains are "
                             f"{', '.join(load_jsonl(path).domains)}")
    return ps.sample(per_domain, seed=seed) if sample_file else ps
