"""The knowledge probe's items: facts about Black and White people, their history and culture,
that a debiased model must still know.

The bundled probe (``lens_bias/data/knowledge.json``, written for lens_bias) holds 126 factual
prompts, 74 about Black and African American history, people and culture ("Juneteenth
commemorates the end of" -> "slavery") and 52 about White, European and European American ones
("Many Irish immigrants came to America in the 1840s to escape the Great" -> "Famine"). Each
prompt stops where its short answer should follow. A file of your own (a deployer's facts) has
the same form: ``{"items": [{"id", "group", "prompt", "answer", "topic"?}, ...]}``, ``group``
one of ``black``, ``white`` or ``other``.

The probe is held out: nothing is scored, selected or tuned on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import PairsError
from .pairs import DATA

KNOWLEDGE_GROUPS = ("black", "white", "other")


@dataclass(frozen=True)
class KnowledgeItem:
    """One fact: the ``prompt`` and the ``answer`` that follows it (after a space), the ``group``
    it is about (``black``, ``white`` or ``other``) and its ``topic``."""

    id: str
    group: str
    prompt: str
    answer: str
    topic: str = ""


def load_knowledge(path: str | Path | None = None) -> list[KnowledgeItem]:
    """The probe's items from ``path`` (JSON as the module docstring says), or the bundled probe.

    Examples:
        >>> items = load_knowledge()
        >>> len(items), sum(i.group == "black" for i in items), items[0].answer
        (126, 74, 'slavery')
    """
    src = DATA / "knowledge.json" if path is None else Path(path)
    if path is not None and not Path(path).is_file():
        raise PairsError(f"no knowledge probe file at {path}; pass a JSON file "
                         '{"items": [{"id", "group", "prompt", "answer"}, ...]} or leave it out for the '
                         "bundled probe")
    try:
        data = json.loads(src.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PairsError(f"{src} is not valid JSON ({e}); the probe is one JSON object with an 'items' "
                         "list") from None
    raw = data.get("items") if isinstance(data, dict) else None
    if not raw:
        raise PairsError(f"{src} has no 'items' list; expected "
                         '{"items": [{"id", "group", "prompt", "answer"}, ...]}')
    return [_item(src, i, r) for i, r in enumerate(raw)]


def _item(src, i: int, r) -> KnowledgeItem:
    """One checked item of :func:`load_knowledge` (what is wrong with it named, with its index)."""
    missing = [k for k in ("id", "group", "prompt", "answer") if not isinstance(r, dict) or not r.get(k)]
    if missing:
        raise PairsError(f"{src}: item {i} lacks {', '.join(missing)} (each item needs a non-empty id, "
                         "group, prompt and answer)")
    if r["group"] not in KNOWLEDGE_GROUPS:
        raise PairsError(f"{src}: item {i} ({r['id']}) has group {r['group']!r}; use one of "
                         f"{', '.join(KNOWLEDGE_GROUPS)}")
    if r["prompt"] != r["prompt"].rstrip() or r["answer"] != r["answer"].strip():
        raise PairsError(f"{src}: item {i} ({r['id']}): the prompt may not end and the answer may not start "
                         "or end with a space (the probe puts one space between them)")
    return KnowledgeItem(str(r["id"]), r["group"], r["prompt"], r["answer"], str(r.get("topic", "")))
