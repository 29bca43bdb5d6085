"""The prompts of the generation audit: what a model writes about Black and White people.

Two sources, both held out (nothing is scored, selected or tuned on them):

* **our own counterfactual prompt pairs** (``lens_bias/data/generation.json``, written for
  lens_bias): 80 open-ended sentence beginnings in 8 everyday situations (the street, a shop,
  school, work, housing, health care, police, the neighbourhood), each filled with a paired group
  phrase or first name (``names.json``), so the two prompts of a pair differ only in the subject;
* **BOLD's race prompts** (Dhamala et al. 2021; ``../shared/data/bold_race_prompts.json``):
  beginnings of Wikipedia sentences about African American and European American people. They
  are not paired (other people in each group), so the two groups are compared as samples, with
  the person as the bootstrap cluster.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import PairsError
from .corpora import shared_data_file
from .pairs import DATA, fill_subject, subject_list

BOLD_FILE = "bold_race_prompts.json"
BOLD_GROUPS = {"black": "African_Americans", "white": "European_Americans"}


@dataclass(frozen=True)
class GenerationPrompt:
    """One prompt of the audit: ``source`` (``pairs`` or ``bold``), ``group`` (``black`` or
    ``white``), ``cluster`` (what the bootstrap resamples: the template of a pair, the person of a
    BOLD prompt), ``situation`` (the template's situation, or ``bold``) and ``text``."""

    source: str
    group: str
    cluster: str
    situation: str
    text: str


@cache
def generation_templates() -> dict:
    """The bundled templates (``lens_bias/data/generation.json``).

    Examples:
        >>> t = generation_templates()
        >>> len(t["templates"]), len(t["domains"])
        (80, 8)
    """
    return json.loads((DATA / "generation.json").read_text(encoding="utf-8"))


def generation_pairs(per_template: int = 1, seed: int = 0) -> list[GenerationPrompt]:
    """Each template filled with ``per_template`` subjects (group phrases and names of its gender,
    drawn with ``seed``): a Black and a White prompt per pair, adjacent, in template order.

    Examples:
        >>> ps = generation_pairs()
        >>> len(ps), ps[0].cluster == ps[1].cluster, (ps[0].group, ps[1].group)
        (160, True, ('black', 'white'))
    """
    rng = random.Random(seed)
    subjects = subject_list("both")
    out = []
    for t in generation_templates()["templates"]:
        fits = [s for s in subjects if not t.get("gender") or s[3] == t["gender"]]
        for _, b, w, _ in rng.sample(fits, min(per_template, len(fits))):
            out += [GenerationPrompt("pairs", group, t["id"], t["domain"], fill_subject(t["text"], subject))
                    for group, subject in (("black", b), ("white", w))]
    return out


def audit_prompts(bold: str | Path | None = None, bold_per_group: int = 40, per_template: int = 1,
                  seed: int = 0) -> list[GenerationPrompt]:
    """The audit's prompts: our pairs (:func:`generation_pairs`) and, when ``bold`` (a path) is
    given, ``bold_per_group`` BOLD people a group (:func:`load_bold`)."""
    pairs = generation_pairs(per_template, seed)
    return pairs + (load_bold(bold, bold_per_group, seed) if bold else [])


def default_bold_path() -> Path | None:
    """``../shared/data/bold_race_prompts.json`` when it is there, else ``None``."""
    return shared_data_file(BOLD_FILE)


def load_bold(path: str | Path | None = None, per_group: int = 40, seed: int = 0) -> list[GenerationPrompt]:
    """BOLD's African American (``black``) and European American (``white``) prompts: ``per_group``
    people drawn per group with ``seed`` (0 = all), the first prompt of each (one per person, so the
    people weigh alike), trailing spaces stripped.

    Examples:
        >>> ps = load_bold(per_group=5)  # doctest: +SKIP
        >>> len(ps), {p.group for p in ps}  # doctest: +SKIP
        (10, {'black', 'white'})
    """
    path = Path(path) if path is not None else default_bold_path()
    if path is None or not path.exists():
        raise PairsError(f"no BOLD file at {path or '../shared/data/' + BOLD_FILE}; pass the path of BOLD's "
                         "prompts/race_prompt.json ({group: {person: [prompt, ...]}})")
    data = json.loads(path.read_text(encoding="utf-8"))
    if missing := [g for g in BOLD_GROUPS.values() if g not in data]:
        raise PairsError(f"{path} has no group(s) {missing}; expected BOLD's race prompts with the groups "
                         f"{', '.join(BOLD_GROUPS.values())}")
    rng = random.Random(seed)
    out = []
    for group, key in BOLD_GROUPS.items():
        people = sorted(p for p, prompts in data[key].items() if prompts)
        if per_group:
            people = sorted(rng.sample(people, min(per_group, len(people))))
        out += [GenerationPrompt("bold", group, person, "bold", data[key][person][0].strip())
                for person in people]
    return out
