"""The train / held-out splits every command, experiment and run makes, in one place.

Pairs are split **by template** within each domain, so held-out pairs use wording the scores never
saw. For the bundled pairs the split comes first and the sampling second: all bundled pairs are
split, then at most ``per_domain`` train pairs and ``held_per_domain`` held-out pairs are drawn per
domain (round-robin over the templates, seeded). That gives the default held-out split the
statistical power its intervals need (26 pairs a domain, 156 in all) without growing the train
side. A user's JSONL file is split as it is (``sample_file`` samples it per domain first).

The counterfactual sentence pairs of the sentence-level measure (``seqgap``) are split the same
way, by sentence template.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from ..errors import PairsError
from .pairs import PairSet, load_pairs

HELD_PER_DOMAIN = 26  # 6 bundled domains x 26 = 156 held-out pairs


def template_split(pairs: PairSet, held_out: float = 0.25, seed: int = 0,
                   check: bool = True) -> tuple[PairSet, PairSet]:
    """(train, held-out) split by template (:meth:`PairSet.split`), as every command, experiment
    and run makes it. With ``check``, a split that leaves either side empty is refused.

    Examples:
        >>> from lens_bias.prompts.pairs import build_pairs
        >>> train, held = template_split(build_pairs(["finance"]).sample(8))
        >>> len(train) > 0 and len(held) > 0, set(train.templates) & set(held.templates)
        (True, set())
    """
    train, held = pairs.split(by="template", held_out=held_out, seed=seed)
    if check and (not len(train) or not len(held)):
        raise PairsError(f"the template split left {len(train)} train and {len(held)} held-out pairs; "
                         "every domain needs at least two templates")
    return train, held


VAL_SHARE = 1 / 3  # the validation templates' share of the train templates


def validation_split(train: PairSet, seed: int = 0, share: float = VAL_SHARE) -> tuple[PairSet, PairSet]:
    """(fit, validation) pairs: the train pairs split again by template, with another seed than
    the held-out split's (``seed + 1``), so that a selector can stop early or choose on templates
    it did not fit on."""
    return template_split(train, held_out=share, seed=seed + 1)


def template_folds(pairs: PairSet, k: int = 3, seed: int = 0) -> list[tuple[PairSet, PairSet]]:
    """``k`` (fit, validation) splits by template for cross-validation: within each domain the
    templates are shuffled (seeded) and dealt to the folds in turn, so every template is validated
    exactly once and never fitted in its own fold. Refused when there are fewer templates than folds.

    Examples:
        >>> from lens_bias.prompts.pairs import build_pairs
        >>> pairs = build_pairs(["finance", "hiring"]).sample(20)
        >>> folds = template_folds(pairs, k=3)
        >>> ([set(f.templates) & set(v.templates) for f, v in folds],
        ...  sum(len(v) for _, v in folds) == len(pairs))
        ([set(), set(), set()], True)
    """
    keys = sorted({(p.domain, p.template) for p in pairs})
    if k < 2 or len(keys) < k:
        raise PairsError(f"{k}-fold cross-validation needs k >= 2 and at least k templates; the pairs "
                         f"have {len(keys)}: use fewer folds or more templates")
    rng, fold, n = random.Random(seed), {}, 0
    for d in sorted({d for d, _ in keys}):
        ts = [t for d2, t in keys if d2 == d]
        rng.shuffle(ts)
        for t in ts:  # dealt on from where the last domain stopped, so small domains spread over the folds
            fold[(d, t)], n = n % k, n + 1
    return [(PairSet([p for p in pairs if fold[(p.domain, p.template)] != f]),
             PairSet([p for p in pairs if fold[(p.domain, p.template)] == f])) for f in range(k)]


def split_pairs(path: str | Path | None = None, domains: Sequence[str] | None = None, per_domain: int = 24,
                held_per_domain: int = HELD_PER_DOMAIN, held_out: float = 0.25, seed: int = 0,
                sample_file: bool = False) -> tuple[PairSet, PairSet]:
    """The (train, held-out) pairs of a run or experiment. Bundled pairs (``path=None``): every
    template of ``domains`` split by template, then ``per_domain`` train and ``held_per_domain``
    held-out pairs sampled per domain (``0`` = all). A JSONL file: its pairs (sampled
    ``per_domain`` per domain first only with ``sample_file``), split by template.

    Examples:
        >>> train, held = split_pairs(domains=["finance", "hiring"], per_domain=6, held_per_domain=5)
        >>> len(train), len(held), set(train.templates) & set(held.templates)
        (12, 10, set())
    """
    if path:
        return template_split(load_pairs(path, domains, per_domain, seed, sample_file=sample_file),
                              held_out, seed)
    train, held = template_split(load_pairs(None, domains, 0, seed), held_out, seed)
    return train.sample(per_domain, seed=seed), held.sample(held_per_domain, seed=seed)


def split_sentences(domains: Sequence[str] | None = None, per_domain: int = 24,
                    held_per_domain: int = HELD_PER_DOMAIN, held_out: float = 0.25,
                    seed: int = 0) -> tuple[PairSet, PairSet]:
    """The bundled counterfactual sentence pairs (:mod:`lens_bias.prompts.sentences`) of ``domains`` that
    have any, split by sentence template and sampled like :func:`split_pairs`.

    Examples:
        >>> train, held = split_sentences(["finance"], per_domain=4, held_per_domain=4)
        >>> len(train), len(held), set(train.templates) & set(held.templates)
        (4, 4, set())
    """
    from .sentences import build_sentence_pairs, load_sentence_templates

    known = set(load_sentence_templates()["domains"])
    doms = [d for d in domains if d in known] if domains is not None else None
    if doms is not None and not doms:
        return PairSet([]), PairSet([])
    train, held = template_split(build_sentence_pairs(doms), held_out, seed)
    return train.sample(per_domain, seed=seed), held.sample(held_per_domain, seed=seed)
