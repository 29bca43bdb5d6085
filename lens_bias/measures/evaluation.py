"""The evaluation of a (simulated) pruning: :class:`EvalSet` (held-out pairs and capability
texts), :func:`evaluate` (every bias and capability measure with and without a mask) and
:func:`standard_evalset` (what every run and study evaluates on)."""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from ..bridge import Bridge, params_per_unit
from ..errors import MaskError
from ..hooks.ablation import ablate
from ..hooks.interventions import attached
from ..masks import PruningMask
from ..prompts.pairs import PairSet
from ..vocab import renamed
from .bbq import bbq_scores
from .capability import (
    CrowsScores,
    ReferenceLogprobs,
    crows_scores,
    kl_from_reference,
    lambada_correct,
    perplexity_windows,
    reference_logprobs,
)
from .generations import generation_audit
from .knowledge import DEFAULT_K, knowledge_scores
from .metrics import measure
from .targets import sentence_gaps

MEASURE_LISTENERS: list = []
"""Callables ``listener(measure_name, event)`` called with ``event`` = ``"start"`` and ``"end"``
around every measure :func:`evaluate` takes (``pairs``, ``wikitext``, ``lambada``, ``seqgap``,
``crows``, ``bbq``, ``generations``, ``knowledge``, ``kl``): ``benchmarks/bench_run.py`` times
them this way."""


@contextmanager
def announced(listeners: list, name: str):
    """Call every ``listener(name, "start")`` before the block and ``listener(name, "end")`` after
    it, even when it fails (the run's stages announce themselves the same way)."""
    for listener in listeners:
        listener(name, "start")
    try:
        yield
    finally:
        for listener in listeners:
            listener(name, "end")


def _measuring(name: str):
    return announced(MEASURE_LISTENERS, name)


@dataclass
class EvalSet:
    """What a pruning is evaluated on: held-out pairs, and capability texts (neutral text for KL,
    WikiText-2 lines for perplexity, LAMBADA passages), CrowS-Pairs and BBQ rows and the generation
    audit's prompts and the knowledge probe's facts, each optional but the pairs."""

    pairs: PairSet
    neutral: list[str] = field(default_factory=list)
    wikitext: list[str] = field(default_factory=list)
    lambada: list[str] = field(default_factory=list)
    crows: list = field(default_factory=list)
    ppl_tokens: int = 4096
    sentences: PairSet | None = None  # held-out counterfactual sentence pairs (seqgap)
    sentence_signs: list[int] = field(default_factory=list)  # +1: the Black sentence is the stereotyped one
    bbq: list = field(default_factory=list)  # BBQ rows (lens_bias.prompts.bbq.BbqRow)
    generation: list = field(default_factory=list)  # lens_bias.prompts.generation.GenerationPrompt
    gen_k: int = 2  # continuations sampled per generation prompt
    gen_tokens: int = 20  # tokens per continuation
    knowledge: list = field(default_factory=list)  # lens_bias.prompts.knowledge.KnowledgeItem
    know_k: int = DEFAULT_K  # the k of the knowledge probe's top-k accuracy
    _kl_ref: ReferenceLogprobs | None = field(default=None, repr=False, compare=False)

    def kl_reference(self, bridge: Bridge, batch_size: int = 16) -> ReferenceLogprobs:
        """The unpruned model's log-probs on the neutral text, computed on first use and again only
        when the texts or the weights change (every evaluation then needs one KL pass, not two)."""
        if self._kl_ref is None or not self._kl_ref.matches(bridge, self.neutral, batch_size):
            self._kl_ref = reference_logprobs(bridge, self.neutral, batch_size)
        return self._kl_ref


def evaluate(bridge: Bridge, ev: EvalSet, mask: PruningMask | None = None, ablation: str | None = None,
             means: dict | None = None, crows: bool = False, lambada: bool = True, batch_size: int = 32,
             per_item: bool = False, sentences: bool = True, *, mode: str | None = None,
             bbq: bool = False, generations: bool = False, knowledge: bool = False,
             hooks: list | None = None) -> dict:
    """Bias on the held-out pairs (mean JS and mean |logit gap|, overall and per domain) and
    capability (perplexity, KL from the unpruned model, LAMBADA, optionally CrowS-Pairs: the
    stereotype rate of the ``black`` and ``race-color`` rows and the mean log-likelihood
    difference), with ``mask`` simulated by ablation hooks under ``ablation`` (``zero``, the default,
    or ``mean`` with ``means``; ``None`` mask = the unpruned model; ``mode=`` is the old name). With
    ``sentences`` and held-out sentence pairs in ``ev``, also ``seqgap`` (:func:`_seqgap`); with
    ``bbq`` and BBQ rows in ``ev``, BBQ's accuracies and bias scores
    (:meth:`lens_bias.measures.bbq.BbqScores.summary`); with ``generations`` and generation prompts
    in ``ev``, the generation audit's gaps (:meth:`lens_bias.measures.generations.GenerationAudit.summary`);
    with ``knowledge`` and probe items in ``ev``, the knowledge probe
    (:meth:`lens_bias.measures.knowledge.KnowledgeScores.summary`). ``hooks`` (a list of ``(hook name,
    function)``, e.g. an intervention of :mod:`lens_bias.mitigation`): simulate any other edit instead
    of a mask.

    With ``per_item``, ``out["per_item"]`` holds what the paired statistics of
    :mod:`lens_bias.stats` resample: per held-out pair its template, JS and |logit gap| (``None``
    without pos/neg words), per CrowS-Pairs row its log-likelihood difference, per WikiText window
    its (NLL, tokens), per LAMBADA passage whether it was right, per sentence pair its |gap|
    (``seqgap``) and template (``seqgap_templates``), BBQ's answers (``bbq``, a
    :class:`~lens_bias.measures.bbq.BbqScores`) and the continuations (``generations``, a
    :class:`~lens_bias.measures.generations.GenerationAudit`) and the probe's answers (``knowledge``, a
    :class:`~lens_bias.measures.knowledge.KnowledgeScores`)."""

    ablation = renamed(ablation, mode, "ablation", "mode", "zero")

    if hooks and mask is not None:
        raise MaskError("evaluate takes a mask or hooks, not both")
    masked = mask is not None and not mask.is_empty()

    def ctx():
        return (attached(bridge, hooks) if hooks else ablate(bridge, mask, ablation, means) if masked
                else nullcontext())

    out: dict = {}
    items: dict = {}
    with ctx():
        _pair_measures(bridge, ev, batch_size, out, items)
        _capability_measures(bridge, ev, out, items, lambada, sentences, crows)
        _user_measures(bridge, ev, out, items, bbq, generations, knowledge, batch_size)
    if ev.neutral:
        if not (masked or hooks):
            out["kl_neutral"] = 0.0
        else:
            with _measuring("kl"):
                ref = ev.kl_reference(bridge)
                out["kl_neutral"] = kl_from_reference(bridge, ev.neutral, ctx, batch_size=ref.batch_size,
                                                      reference=ref)
    if per_item:
        out["per_item"] = items
    return out


def _pair_measures(bridge: Bridge, ev: EvalSet, batch_size: int, out: dict, items: dict) -> None:
    """:func:`evaluate`'s held-out pairs: mean JS and |logit gap|, overall and per domain."""
    with _measuring("pairs"):
        m = measure(bridge, ev.pairs, batch_size=batch_size, progress=False)
    s = m.summary()
    abs_gap = [None if v is None else abs(v) for v in m.values["logit_gap"]]
    gaps = [v for v in abs_gap if v is not None]
    out["js"] = s["all"]["js"]
    out["abs_logit_gap"] = sum(gaps) / len(gaps) if gaps else None
    out["by_domain"] = {d: {"js": s[d]["js"], "logit_gap": s[d]["logit_gap"], "n_pairs": s[d]["n_pairs"]}
                        for d in ev.pairs.domains}
    items.update(templates=[p.template for p in ev.pairs], domains=[p.domain for p in ev.pairs],
                 js=m.values["js"], abs_logit_gap=abs_gap)


def _capability_measures(bridge: Bridge, ev: EvalSet, out: dict, items: dict, lambada: bool, sentences: bool,
                         crows: bool) -> None:
    """:func:`evaluate`'s WikiText-2 perplexity, LAMBADA, seqgap and CrowS-Pairs, where asked and present."""
    if ev.wikitext:
        with _measuring("wikitext"):
            items["wikitext_windows"] = perplexity_windows(bridge, ev.wikitext, max_tokens=ev.ppl_tokens,
                                                           progress=False)
        w = items["wikitext_windows"]
        out["wikitext_ppl"] = math.exp(sum(x for x, _ in w) / max(sum(n for _, n in w), 1))
    if lambada and ev.lambada:
        with _measuring("lambada"):
            items["lambada_correct"] = lambada_correct(bridge, ev.lambada, progress=False)
        out["lambada_acc"] = sum(items["lambada_correct"]) / len(ev.lambada)
    if sentences and ev.sentences is not None and len(ev.sentences):
        with _measuring("seqgap"):
            out.update(_seqgap(bridge, ev, items))
    if crows and ev.crows:
        with _measuring("crows"):
            cs = crows_scores(bridge, ev.crows, progress=False)
        items["crows"] = cs
        out.update(crows_outputs(cs))


def _user_measures(bridge: Bridge, ev: EvalSet, out: dict, items: dict, bbq: bool, generations: bool,
                   knowledge: bool, batch_size: int) -> None:
    """:func:`evaluate`'s bias as users see it: BBQ, the generation audit, the knowledge probe."""
    if bbq and ev.bbq:
        with _measuring("bbq"):
            items["bbq"] = bbq_scores(bridge, ev.bbq, batch_size=min(batch_size, 16))
        out.update(items["bbq"].summary())
    if generations and ev.generation:
        with _measuring("generations"):
            items["generations"] = generation_audit(bridge, ev.generation, ev.gen_k, ev.gen_tokens,
                                                    batch_size=8 * batch_size)
        out.update(items["generations"].summary())
    if knowledge and ev.knowledge:
        with _measuring("knowledge"):
            items["knowledge"] = knowledge_scores(bridge, ev.knowledge, ev.know_k, batch_size=batch_size)
        out.update(items["knowledge"].summary())


def _seqgap(bridge: Bridge, ev: EvalSet, items: dict) -> dict:
    """The sentence-level measures of :func:`evaluate`: ``seqgap`` (mean |gap| in summed
    log-likelihood between the held-out sentence pairs' two sentences) and ``seqgap_stereo`` (mean
    gap in the stereotyped sentence's favour, over the pairs whose direction is known)."""
    gaps = sentence_gaps(bridge, ev.sentences)
    items.update(seqgap=[abs(g) for g in gaps], seqgap_templates=[p.template for p in ev.sentences])
    signed = [s * g for s, g in zip(ev.sentence_signs, gaps, strict=False) if s]
    return {"seqgap": sum(items["seqgap"]) / len(gaps), "seqgap_n": len(gaps),
            "seqgap_stereo": sum(signed) / len(signed) if signed else None}


def crows_outputs(cs: CrowsScores) -> dict:
    """The CrowS-Pairs numbers of :func:`evaluate`: ``crows_black_rate`` (the 282 race-color rows
    naming a Black group), ``crows_race_color_rate`` (all 516 race-color rows), their ``_n`` and
    ``_ci`` and the mean log-likelihood difference of the Black rows, ``crows_black_mean_diff``."""
    out: dict = {}
    for name, key in (("black", "crows_black"), ("race-color", "crows_race_color")):
        sm = cs.summary([name]).get(name)
        if sm is not None:
            out.update({f"{key}_rate": sm["rate"], f"{key}_rate_ci": sm["rate_ci"], f"{key}_n": sm["n_pairs"],
                        f"{key}_mean_diff": sm["mean_diff"], f"{key}_mean_diff_ci": sm["mean_diff_ci"]})
    return out


def pruned_params(bridge: Bridge, mask: PruningMask) -> int:
    """Parameters removed by ``mask``: its neurons and heads times the parameters of one unit."""
    c = mask.counts()
    return c["neurons"] * params_per_unit(bridge, "neurons") + c["heads"] * params_per_unit(bridge, "heads")



def capability_files(wikitext: str | Path | None = None, lambada: str | Path | None = None,
                     crows: str | Path | None = None, bbq: str | Path | None = None,
                     bold: str | Path | None = None) -> dict:
    """``{"wikitext", "lambada", "crows", "bbq", "bold"}``: the given files or, when not given, the
    ones in ``../shared/data`` if present (``None`` when neither, or for ``bbq=""`` / ``bold=""``:
    none)."""
    from ..prompts.corpora import shared_data_file

    return {"wikitext": wikitext or shared_data_file("wikitext2_test.txt"),
            "lambada": lambada or shared_data_file("lambada_openai_test.jsonl"),
            "crows": crows or shared_data_file("crows_pairs_anonymized.csv"),
            "bbq": None if bbq == "" else bbq or shared_data_file("bbq_race_ethnicity.jsonl"),
            "bold": None if bold == "" else bold or shared_data_file("bold_race_prompts.json")}


def standard_evalset(held: PairSet, wikitext: str | Path | None = None, lambada: str | Path | None = None,
                     crows: str | Path | None = None, ppl_tokens: int = 4096, lambada_limit: int = 200,
                     neutral_every: int = 3, sentences: PairSet | None = None,
                     bbq: str | Path | None = None, bbq_rows: int = 0, generation: bool = False,
                     bold: str | Path | None = None, bold_per_group: int = 40,
                     knowledge: str | Path | None = None, files: dict | None = None) -> EvalSet:
    """The evaluation every experiment and run uses: the held-out pairs, every third line of the
    bundled neutral text (KL), and WikiText-2 / LAMBADA / CrowS-Pairs from the given files or,
    when not given, from ``../shared/data`` if present (:func:`capability_files`); ``sentences``:
    held-out counterfactual sentence pairs for ``seqgap`` (e.g.
    :func:`lens_bias.prompts.splits.split_sentences`); BBQ's Black / White rows from ``bbq`` or
    ``../shared/data`` (:func:`lens_bias.prompts.bbq.load_bbq`), ``bbq_rows`` of them spread over
    its templates when not 0 (:func:`lens_bias.prompts.bbq.stratified`); with ``generation``, the
    generation audit's prompts: our pairs and ``bold_per_group`` BOLD people a group from ``bold``
    or ``../shared/data`` (:func:`lens_bias.prompts.generation.audit_prompts`); the knowledge
    probe's items from ``knowledge`` (a path; ``None``: the bundled probe, ``""``: none;
    :func:`lens_bias.prompts.knowledge.load_knowledge`). ``files``: the capability files already
    resolved by :func:`capability_files` (then the file arguments are not read)."""
    from ..prompts.bbq import load_bbq, stratified
    from ..prompts.corpora import load_crows_pairs, load_lambada, load_wikitext
    from ..prompts.generation import audit_prompts
    from ..prompts.knowledge import load_knowledge
    from ..prompts.pairs import neutral_text
    from ..prompts.sentences import stereotype_signs

    files = files if files is not None else capability_files(wikitext, lambada, crows, bbq, bold)
    wt, la, cr, bq = files["wikitext"], files["lambada"], files["crows"], files["bbq"]
    return EvalSet(
        pairs=held,
        neutral=neutral_text()[::neutral_every],
        wikitext=load_wikitext(wt) if wt else [],
        lambada=load_lambada(la, lambada_limit) if la else [],
        crows=load_crows_pairs(cr, subset="race-color") if cr else [],
        ppl_tokens=ppl_tokens,
        sentences=sentences,
        sentence_signs=stereotype_signs(sentences) if sentences is not None else [],
        bbq=stratified(load_bbq(bq), bbq_rows) if bq else [],
        generation=audit_prompts(files["bold"], bold_per_group) if generation else [],
        knowledge=[] if knowledge == "" else load_knowledge(knowledge),
    )


