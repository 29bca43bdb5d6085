"""What every study starts from, the same for the ``lens-bias experiment`` commands and the
benchmarks: a model, the train pairs and the held-out evaluation set (:func:`study_inputs`). The
per-template attribution with the capability cost that the selectors need is
:func:`lens_bias.attribution.per_template.template_scores`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..bridge import Bridge
from ..measures.evaluation import EvalSet, standard_evalset
from ..model.load import load_model
from ..prompts.pairs import PairSet
from ..prompts.splits import split_pairs, split_sentences


def study_inputs(model: str, pairs: str | Path | None = None, domains: Sequence[str] | None = None,
                 per_domain: int = 24, held_per_domain: int = 26, seed: int = 0, load: dict | None = None,
                 ppl_tokens: int = 2048, generation: bool = False) -> tuple[Bridge, PairSet, EvalSet]:
    """The model, the train pairs and the held-out evaluation set of a study: bundled pairs split
    by template, then ``per_domain`` train and ``held_per_domain`` held-out pairs sampled per domain
    (:func:`lens_bias.prompts.splits.split_pairs`; JSONL pairs are sampled ``per_domain`` first,
    then split); the held-out sentence pairs of the same domains too (``seqgap``). ``load``: keyword
    arguments of :func:`lens_bias.model.load.load_model`. The evaluation set also holds 200 BBQ rows
    and the knowledge probe, and with ``generation`` the generation audit's prompts."""
    train, held = split_pairs(pairs, list(domains) if domains else None, per_domain, held_per_domain,
                              seed=seed, sample_file=True)
    s_held = split_sentences(held.domains, held_per_domain=held_per_domain, seed=seed)[1]
    ev = standard_evalset(held, ppl_tokens=ppl_tokens, sentences=s_held if len(s_held) else None,
                          bbq_rows=200, generation=generation)
    return load_model(model, **(load or {})), train, ev

