"""Experiments composed from scoring, selection and ablation: the evaluation of a (simulated)
pruning, pruning curves over budgets, scorers and component kinds, and the three claims of the
seed studies -- neurons vs heads and bias-aware vs plain rankings (:func:`compare_scorers`, at
equal parameters), and cross-domain transfer (:func:`generalization_matrix`, :func:`overlap`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .ablation import ablate
from .bridge import Bridge, Kind, n_params, params_per_unit
from .capability import (
    CrowsScores,
    ReferenceLogprobs,
    crows_scores,
    kl_from_reference,
    lambada_correct,
    perplexity_windows,
    reference_logprobs,
)
from .changes import js_reduction, matrix_noise, without_items
from .errors import LensBiasError
from .masks import PruningMask
from .metrics import measure
from .pairs import PairSet
from .scores import Scores
from .selection import budget_count, random_mask, select
from .splits import template_split  # noqa: F401  (re-exported: experiments.template_split)
from .targets import sentence_gaps


@dataclass
class EvalSet:
    """What a pruning is evaluated on: held-out pairs, and capability texts (neutral text for KL,
    WikiText-2 lines for perplexity, LAMBADA passages, CrowS-Pairs), each optional but the pairs."""

    pairs: PairSet
    neutral: list[str] = field(default_factory=list)
    wikitext: list[str] = field(default_factory=list)
    lambada: list[str] = field(default_factory=list)
    crows: list = field(default_factory=list)
    ppl_tokens: int = 4096
    sentences: PairSet | None = None  # held-out counterfactual sentence pairs (seqgap)
    sentence_signs: list[int] = field(default_factory=list)  # +1: the Black sentence is the stereotyped one
    _kl_ref: ReferenceLogprobs | None = field(default=None, repr=False, compare=False)

    def kl_reference(self, bridge: Bridge, batch_size: int = 16) -> ReferenceLogprobs:
        """The unpruned model's log-probs on the neutral text, computed on first use and again only
        when the texts or the weights change (every evaluation then needs one KL pass, not two)."""
        if self._kl_ref is None or not self._kl_ref.matches(bridge, self.neutral, batch_size):
            self._kl_ref = reference_logprobs(bridge, self.neutral, batch_size)
        return self._kl_ref


def evaluate(bridge: Bridge, ev: EvalSet, mask: PruningMask | None = None, mode: str = "zero", means: dict | None = None,
             crows: bool = False, lambada: bool = True, batch_size: int = 32, per_item: bool = False,
             sentences: bool = True) -> dict:
    """Bias on the held-out pairs (mean JS and mean |logit gap|, overall and per domain) and
    capability (perplexity, KL from the unpruned model, LAMBADA, optionally CrowS-Pairs: the
    stereotype rate of the ``black`` and ``race-color`` rows and the mean log-likelihood
    difference), with ``mask`` simulated by ablation hooks (``None`` = the unpruned model). With
    ``sentences`` and held-out sentence pairs in ``ev``, also ``seqgap`` (:func:`_seqgap`).

    With ``per_item``, ``out["per_item"]`` holds what the paired statistics of
    :mod:`lens_bias.stats` resample: per held-out pair its template, JS and |logit gap| (``None``
    without pos/neg words), per CrowS-Pairs row its log-likelihood difference, per WikiText window
    its (NLL, tokens), per LAMBADA passage whether it was right, per sentence pair its |gap|
    (``seqgap``) and template (``seqgap_templates``)."""

    def ctx():
        return ablate(bridge, mask, mode, means) if mask is not None and not mask.is_empty() else nullcontext()

    out: dict = {}
    items: dict = {}
    with ctx():
        m = measure(bridge, ev.pairs, batch_size=batch_size, progress=False)
        s = m.summary()
        abs_gap = [None if v is None else abs(v) for v in m.values["logit_gap"]]
        gaps = [v for v in abs_gap if v is not None]
        out["js"] = s["all"]["js"]
        out["abs_logit_gap"] = sum(gaps) / len(gaps) if gaps else None
        out["by_domain"] = {d: {"js": s[d]["js"], "logit_gap": s[d]["logit_gap"], "n_pairs": s[d]["n_pairs"]}
                            for d in ev.pairs.domains}
        items.update(templates=[p.template for p in ev.pairs], domains=[p.domain for p in ev.pairs], js=m.values["js"],
                     abs_logit_gap=abs_gap)
        if ev.wikitext:
            items["wikitext_windows"] = perplexity_windows(bridge, ev.wikitext, max_tokens=ev.ppl_tokens, progress=False)
            w = items["wikitext_windows"]
            out["wikitext_ppl"] = math.exp(sum(x for x, _ in w) / max(sum(n for _, n in w), 1))
        if lambada and ev.lambada:
            items["lambada_correct"] = lambada_correct(bridge, ev.lambada, progress=False)
            out["lambada_acc"] = sum(items["lambada_correct"]) / len(ev.lambada)
        if sentences and ev.sentences is not None and len(ev.sentences):
            out.update(_seqgap(bridge, ev, items))
        if crows and ev.crows:
            cs = crows_scores(bridge, ev.crows, progress=False)
            items["crows"] = cs
            out.update(crows_outputs(cs))
    if ev.neutral:
        if mask is None or mask.is_empty():
            out["kl_neutral"] = 0.0
        else:
            ref = ev.kl_reference(bridge)
            out["kl_neutral"] = kl_from_reference(bridge, ev.neutral, ctx, batch_size=ref.batch_size, reference=ref)
    if per_item:
        out["per_item"] = items
    return out


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


def pruning_curve(
    bridge: Bridge,
    ev: EvalSet,
    scorers: dict[str, Scores],
    kinds: Sequence[Kind] = ("neurons", "heads"),
    budgets: Sequence[str] = ("0.1%", "0.25%", "0.5%", "1%", "2%"),
    mode: str = "zero",
    means: dict | None = None,
    cost: Scores | None = None,
    max_cost_quantile: float | None = None,
    random_control: bool = True,
    seed: int = 0,
    progress: bool = True,
    before: dict | None = None,
    pick: Callable[[str, str, str], PruningMask | None] | None = None,
) -> list[dict]:
    """Held-out bias and capability for every scorer x kind x budget (plus a random control), as
    a list of records (one per point) with the number of removed units and parameters. A scorer's
    units are its top scores (:func:`lens_bias.selection.select`), unless ``pick(scorer, kind,
    budget)`` returns a mask for it (another selector, :func:`compare_scorers`). Given
    ``before`` (the unpruned model's ``evaluate(..., per_item=True)``), each record also holds its
    held-out JS reduction with a 95 % interval, p and ``within_noise``
    (:func:`lens_bias.changes.js_reduction`).

    Budgets that select the very same units (on a small model 0.1 % and 0.5 % of heads can both
    round to one head) are evaluated once and the record is repeated under each budget."""
    jobs = [(name, kind, b) for name in scorers for kind in kinds for b in budgets]
    if random_control:
        jobs += [("random", kind, b) for kind in kinds for b in budgets]
    it = tqdm(jobs, desc="pruning curve", leave=False) if progress else jobs
    total = n_params(bridge)
    rows = []
    seen: dict[bytes, dict] = {}
    for name, kind, b in it:
        if name == "random":
            mask = random_mask(bridge, b, kind, seed=seed)
        else:
            mask = pick(name, kind, b) if pick is not None else None
            if mask is None:
                mask = select(scorers[name], b, kind=kind, bridge=bridge, cost=cost, max_cost_quantile=max_cost_quantile)
        key = mask.neurons.numpy().tobytes() + mask.heads.numpy().tobytes()
        if key not in seen:
            seen[key] = evaluate(bridge, ev, mask, mode, means, lambada=False, per_item=before is not None,
                                 sentences=False)  # seqgap is measured at the run's budget, not at each point
        res = seen[key]
        noise = {} if before is None else {f"js_{k}": v for k, v in js_reduction(before, res, seed=seed).items()}
        p = pruned_params(bridge, mask)
        rows.append({"scorer": name, "kind": kind, "budget": b, "n_units": budget_count(bridge, kind, b),
                     "params": p, "params_pct": 100.0 * p / total, **without_items(res), **noise})
    return rows


# ---------------------------------------------------------------- the three claims of the seed studies

PARAM_BUDGETS = ("0.1%params", "0.2%params", "0.5%params", "1%params")
COMPARED_SCORERS = ("ablate", "patch", "actdiff", "wanda", "random")


def capability_files(wikitext: str | Path | None = None, lambada: str | Path | None = None,
                     crows: str | Path | None = None) -> dict:
    """``{"wikitext", "lambada", "crows"}``: the given files or, when not given, the ones in
    ``../shared/data`` if present (``None`` when neither)."""
    from .corpora import shared_data_file

    return {"wikitext": wikitext or shared_data_file("wikitext2_test.txt"),
            "lambada": lambada or shared_data_file("lambada_openai_test.jsonl"),
            "crows": crows or shared_data_file("crows_pairs_anonymized.csv")}


def standard_evalset(held: PairSet, wikitext: str | Path | None = None, lambada: str | Path | None = None,
                     crows: str | Path | None = None, ppl_tokens: int = 4096, lambada_limit: int = 200,
                     neutral_every: int = 3, sentences: PairSet | None = None) -> EvalSet:
    """The evaluation every experiment and run uses: the held-out pairs, every third line of the
    bundled neutral text (KL), and WikiText-2 / LAMBADA / CrowS-Pairs from the given files or,
    when not given, from ``../shared/data`` if present (:func:`capability_files`); ``sentences``:
    held-out counterfactual sentence pairs for ``seqgap`` (e.g. :func:`lens_bias.splits.split_sentences`)."""
    from .corpora import load_crows_pairs, load_lambada, load_wikitext
    from .pairs import neutral_text
    from .sentences import stereotype_signs

    files = capability_files(wikitext, lambada, crows)
    wt, la, cr = files["wikitext"], files["lambada"], files["crows"]
    return EvalSet(
        pairs=held,
        neutral=neutral_text()[::neutral_every],
        wikitext=load_wikitext(wt) if wt else [],
        lambada=load_lambada(la, lambada_limit) if la else [],
        crows=load_crows_pairs(cr, subset="race-color") if cr else [],
        ppl_tokens=ppl_tokens,
        sentences=sentences,
        sentence_signs=stereotype_signs(sentences) if sentences is not None else [],
    )


def _reduction(before: float | None, after: float | None) -> float | None:
    """Bias reduction in % (positive = less bias)."""
    if before is None or after is None or before == 0:
        return None
    return 100.0 * (before - after) / before


def compare_scorers(
    bridge: Bridge,
    train: PairSet,
    ev: EvalSet,
    scorers: Sequence[str] = COMPARED_SCORERS,
    kinds: Sequence[Kind] = ("neurons", "heads"),
    budgets: Sequence[str] = PARAM_BUDGETS,
    max_cost_quantile: float | None = 0.5,
    metric: str = "js",
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    selector: str = "oneshot",
) -> dict:
    """Claims 1 and 2 of the seed studies in one table: every scorer x kind x budget, scored on
    ``train`` and evaluated on ``ev`` (held-out templates). Budgets are in % of parameters, so a
    head and the neurons it is compared with remove the same number of parameters. The same
    capability filter (Fisher cost on neutral text, ``max_cost_quantile``) applies to every
    scorer, ``random`` included, so the comparison isolates the bias ranking. ``selector``
    (:data:`lens_bias.model_selection.SELECTORS`) picks the ``ablate`` scorer's units from its
    scores kept per template (:func:`lens_bias.model_selection.make_mask`); the other scorers keep
    their top scores. Each row records the ``selector`` it used.

    Returns ``{"before", "rows", "winners", "settings"}``; each row holds ``js_reduction_pct``
    with its 95 % interval ``js_reduction_ci`` (templates resampled), ``js_p`` and
    ``js_within_noise``, and the capability change, next to the raw measures.
    """
    from .attribution import capability_cost
    from .baselines import score
    from .model_selection import selector_picks
    from .pairs import neutral_text

    before = evaluate(bridge, ev, None, lambada=False, batch_size=batch_size, per_item=True)
    cost = None
    if max_cost_quantile is not None:
        cost = capability_cost(bridge, ev.neutral or neutral_text(), ablation="zero", progress=progress)
    scored, pick = {}, None
    for name in scorers:
        kw = {"metric": metric, "batch_size": batch_size, "progress": progress} if name in ("ablate", "patch") \
            else {"batch_size": batch_size, "seed": seed}
        if name == "ablate" and selector != "oneshot":
            scored[name], pick = selector_picks(bridge, train, ev.neutral or neutral_text(), selector, metric, cost,
                                                 max_cost_quantile, seed, batch_size, progress)
        else:
            scored[name] = score(bridge, train, name, **kw)
    rows = pruning_curve(bridge, ev, scored, kinds=kinds, budgets=budgets, cost=cost,
                         max_cost_quantile=max_cost_quantile, random_control=False, seed=seed, progress=progress,
                         before=before, pick=pick)
    before = without_items(before)
    for r in rows:
        r["selector"] = selector if r["scorer"] == "ablate" else "oneshot"
        r["js_reduction_pct"] = _reduction(before["js"], r["js"])
        r["gap_reduction_pct"] = _reduction(before.get("abs_logit_gap"), r.get("abs_logit_gap"))
        if before.get("wikitext_ppl") and r.get("wikitext_ppl"):
            r["ppl_change_pct"] = 100.0 * (r["wikitext_ppl"] / before["wikitext_ppl"] - 1)
    return {"before": before, "rows": rows, "winners": winners(rows),
            "settings": {"scorers": list(scorers), "kinds": list(kinds), "budgets": list(budgets),
                         "max_cost_quantile": max_cost_quantile, "metric": metric, "selector": selector,
                         "n_train": len(train),
                         "n_held_out": len(ev.pairs), "seed": seed}}


def winners(rows: Sequence[dict]) -> dict:
    """Mean held-out JS reduction per scorer/kind over the budgets, the best scorer per kind, and
    neurons vs heads for each scorer (both at equal parameters)."""
    mean: dict[str, dict[str, float]] = {}
    for r in rows:
        if r.get("js_reduction_pct") is None:
            continue
        mean.setdefault(r["scorer"], {}).setdefault(r["kind"], []).append(r["js_reduction_pct"])
    mean = {s: {k: sum(v) / len(v) for k, v in ks.items()} for s, ks in mean.items()}
    kinds = sorted({k for ks in mean.values() for k in ks})
    best = {k: max((s for s in mean if k in mean[s]), key=lambda s: mean[s][k]) for k in kinds}
    nvh = {s: ks["neurons"] - ks["heads"] for s, ks in mean.items() if "neurons" in ks and "heads" in ks}
    return {"mean_js_reduction_pct": mean, "best_scorer": best,
            "neurons_minus_heads_pct_points": nvh}


def generalization_matrix(
    bridge: Bridge,
    train: PairSet,
    ev: EvalSet,
    train_domains: Sequence[str] | None = None,
    test_domains: Sequence[str] | None = None,
    budget: str = "0.5%",
    kind: Kind = "neurons",
    scorer: str = "ablate",
    include_all: bool = True,
    max_cost_quantile: float | None = 0.5,
    metric: str = "js",
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Claim 3 (Ma et al.): score on each train domain (and on all of them), prune at ``budget``,
    and measure the held-out bias reduction on every test domain. ``train`` and ``ev.pairs`` must
    come from a split by template, so a domain's own pruning is judged on wording it never saw.

    One scoring pass gives every domain's scores (they are kept per domain). Returns the matrix
    ``reduction_pct[train_domain][test_domain]`` (in %, positive = less bias), the raw JS before
    and after, the in-domain (diagonal) and cross-domain (off-diagonal) means, each mask's pruned
    units (for :func:`overlap`) and the perplexity per row when WikiText is available. Every cell
    has its 95 % interval (``reduction_ci``, the test domain's templates resampled), the
    permutation ``p`` and ``within_noise`` (:func:`lens_bias.changes.js_reduction`).
    """
    shared = set(train.templates) & set(ev.pairs.templates)
    if shared:
        raise LensBiasError(f"train and held-out pairs share templates {sorted(shared)[:5]}; split by template")
    train_domains = list(train_domains or train.domains)
    test_domains = list(test_domains or ev.pairs.domains)
    for d in train_domains:
        if d not in train.domains:
            raise LensBiasError(f"train domain {d!r} has no train pairs; have {train.domains}")
    for d in test_domains:
        if d not in ev.pairs.domains:
            raise LensBiasError(f"test domain {d!r} has no held-out pairs; have {ev.pairs.domains}")
    masks = domain_masks(bridge, train, train_domains, budget, kind, scorer, include_all, ev.neutral,
                         max_cost_quantile, metric, batch_size, progress)
    rows = list(masks)
    ev_test = EvalSet(ev.pairs.filter(domains=test_domains), ev.neutral, ev.wikitext, [], [], ev.ppl_tokens)
    before = evaluate(bridge, ev_test, None, lambada=False, batch_size=batch_size, per_item=True)
    it = tqdm(rows, desc="generalization matrix", leave=False) if progress else rows
    after, ppl, cells = {}, {}, {}
    for t in it:
        res = evaluate(bridge, ev_test, masks[t], lambada=False, batch_size=batch_size, per_item=True)
        after[t] = {d: res["by_domain"][d]["js"] for d in test_domains}
        cells[t] = {d: js_reduction(before, res, d) for d in test_domains}
        ppl[t] = res.get("wikitext_ppl")
    js_before = {d: before["by_domain"][d]["js"] for d in test_domains}
    red = {t: {d: _reduction(js_before[d], after[t][d]) for d in test_domains} for t in rows}
    diag = [red[t][t] for t in train_domains if t in test_domains]
    off = [red[t][d] for t in train_domains for d in test_domains if d != t]
    return {
        "train_domains": train_domains, "test_domains": test_domains, "rows": rows,
        "budget": budget, "kind": kind, "scorer": scorer, "max_cost_quantile": max_cost_quantile,
        "js_before": js_before, "js_after": after, "reduction_pct": red, **matrix_noise(cells),
        "in_domain_mean_pct": sum(diag) / len(diag) if diag else None,
        "cross_domain_mean_pct": sum(off) / len(off) if off else None,
        "all_row_mean_pct": (sum(red["all"].values()) / len(test_domains)) if include_all else None,
        "wikitext_ppl_before": before.get("wikitext_ppl"), "wikitext_ppl_after": ppl,
        "pruned": {t: m.pruned(kind) for t, m in masks.items()},
        "n_train": {d: len(train.filter(domains=[d])) for d in train_domains},
        "n_held_out": {d: len(ev.pairs.filter(domains=[d])) for d in test_domains},
        "train_templates": train.templates, "held_out_templates": ev.pairs.templates,
    }


def domain_masks(bridge: Bridge, train: PairSet, domains: Sequence[str] | None = None, budget: str = "0.5%",
                 kind: Kind = "neurons", scorer: str = "ablate", include_all: bool = True,
                 neutral: Sequence[str] = (), max_cost_quantile: float | None = 0.5, metric: str = "js",
                 batch_size: int = 16, progress: bool = True) -> dict[str, PruningMask]:
    """One pruning mask per train domain (and ``"all"``), from a single scoring pass (scores are
    kept per domain), with the capability filter computed on ``neutral`` (the bundled neutral
    text when empty)."""
    from .attribution import capability_cost
    from .baselines import score
    from .pairs import neutral_text

    domains = list(domains or train.domains)
    kw = {"metric": metric, "batch_size": batch_size, "progress": progress} if scorer in ("ablate", "patch") \
        else {"batch_size": batch_size}
    scores = score(bridge, train.filter(domains=domains), scorer, **kw)
    cost = None
    if max_cost_quantile is not None:
        cost = capability_cost(bridge, list(neutral) or neutral_text(), ablation="zero", progress=progress)
    out = {}
    for t in domains + (["all"] if include_all else []):
        s = scores if t == "all" else scores.for_domain(t)
        out[t] = select(s, budget, kind=kind, bridge=bridge, cost=cost, max_cost_quantile=max_cost_quantile)
    return out


def overlap(pruned: dict[str, Sequence[Sequence[int]]], n_layers: int) -> dict:
    """Jaccard overlap between the unit sets pruned for each name (e.g. each train domain), and
    the count per layer of each set (``mean_offdiag_jaccard`` leaves out a set named ``"all"``,
    which is learned from every domain and so not a peer). ``pruned`` maps a name to its (layer, index) list, as in
    ``generalization_matrix(...)["pruned"]`` or ``PruningMask.pruned(kind)``."""
    names = list(pruned)
    sets = {n: {(int(la), int(i)) for la, i in pruned[n]} for n in names}

    def jac(a, b):
        u = sets[a] | sets[b]
        return len(sets[a] & sets[b]) / len(u) if u else 1.0

    by_layer = {n: [0] * n_layers for n in names}
    for n in names:
        for la, _ in sets[n]:
            by_layer[n][la] += 1
    m = [[jac(a, b) for b in names] for a in names]
    doms = [i for i, n in enumerate(names) if n != "all"]  # "all" contains every domain: not a peer
    offdiag = [m[i][j] for i in doms for j in doms if i != j]
    return {"names": names, "jaccard": m, "by_layer": by_layer, "n_pruned": {n: len(sets[n]) for n in names},
            "mean_offdiag_jaccard": sum(offdiag) / len(offdiag) if offdiag else None}
