"""Leave-one-domain-out transfer: how much of a pruning's bias reduction reaches a *use case it
never saw*.

For every domain d, the mask is learned on the train pairs of all the other domains and judged on
d's held-out pairs, next to the mask learned on every domain (d's train templates included) on the
same pairs (:func:`leave_one_domain_out`). The per-domain changes have few templates each; the
pooled change (every held-out pair after its own domain's leave-out mask) is the headline number,
with a 95 % cluster-bootstrap interval (templates resampled) and a sign-flip permutation p.

One scoring pass serves every domain: the ablate/patch attribution score is a mean over pairs of
per-pair terms, kept per domain, so the score on every domain but d follows exactly from the
per-domain means weighted by their pair counts (:func:`scores_without`). Where that is not exact
(GradDrop magnitudes, scores without per-domain parts or counts), the domain is rescored on the
other domains' pairs instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..bridge import Bridge
from ..errors import LensBiasError
from ..masks import PruningMask
from ..measures.changes import js_reduction
from ..measures.evaluation import EvalSet, evaluate
from ..prompts.pairs import PairSet
from ..scores import Scores
from ..stats import bootstrap_ci, paired_permutation_test
from ..vocab import GRADIENT_SCORERS, KINDS, Kind

#: scorers whose overall score is the pair-weighted mean of their per-domain scores (GradDrop aside)
SEPARABLE = ("ablate", "patch", "actdiff", "wanda")


class NotSeparable(LensBiasError):
    """:func:`scores_without` cannot take a domain out of these scores exactly; rescore on the other
    domains' pairs instead (:func:`leave_one_domain_out` does so by itself)."""


def _check_separable(scores: Scores) -> dict[str, int]:
    """The per-domain pair counts of ``scores``, or :class:`NotSeparable` saying why they do not
    split."""
    s = scores.settings
    name = s.get("estimator", s.get("scorer"))
    if s.get("graddrop"):
        raise NotSeparable("GradDrop scores take |estimate| after the mean over pairs, so the score "
                           "without a domain does not follow from the per-domain scores; rescore on the "
                           "other domains' pairs")
    if name not in SEPARABLE:
        raise NotSeparable(f"scorer {name!r} is not a mean over pairs kept per domain "
                           f"(those are {SEPARABLE}); rescore on the other domains' pairs")
    counts = s.get("n_pairs_by_domain")
    if not scores.by_domain or not counts:
        raise NotSeparable("these scores have no per-domain scores or no per-domain pair counts "
                           "(settings['n_pairs_by_domain']; older scores files lack it); "
                           "rescore on the other domains' pairs, or score again with this version")
    if set(counts) != set(scores.by_domain):
        raise NotSeparable(f"the pair counts name domains {sorted(counts)} but the per-domain scores "
                           f"{sorted(scores.by_domain)}; rescore on the other domains' pairs")
    return {d: int(n) for d, n in counts.items()}


def scores_without(scores: Scores, domain: str) -> Scores:
    """The scores the same scorer gives on the pairs of every domain of ``scores`` but ``domain``:
    the per-domain scores (means over each domain's pairs) weighted by their pair counts
    (``settings["n_pairs_by_domain"]``). Exact for the ablate/patch attribution estimators (a mean
    over pairs of per-pair terms) and the actdiff/wanda baselines (defined as the pair-weighted mean
    of their per-domain scores); :class:`NotSeparable` otherwise (GradDrop, random, scores without
    per-domain parts or counts), and a :class:`~lens_bias.errors.LensBiasError` for a domain the
    scores do not have or when no other domain is left.

    Examples:
        >>> import torch
        >>> by = {"a": {"neurons": torch.tensor([[1.0, 0.0]])}, "b": {"neurons": torch.tensor([[4.0, 3.0]])},
        ...       "c": {"neurons": torch.tensor([[0.0, 6.0]])}}
        >>> s = Scores(torch.tensor([[1.5, 2.5]]), None, by, {"scorer": "ablate", "estimator": "ablate",
        ...            "n_pairs_by_domain": {"a": 2, "b": 1, "c": 1}, "n_pairs": 4,
        ...            "domains": ["a", "b", "c"]})
        >>> w = scores_without(s, "c")
        >>> w.neurons.tolist(), w.settings["n_pairs"], w.settings["domains"]
        ([[2.0, 1.0]], 3, ['a', 'b'])
    """
    counts = _check_separable(scores)
    if domain not in scores.by_domain:
        raise LensBiasError(f"no scores for domain {domain!r}; have {sorted(scores.by_domain)}")
    rest = [d for d in sorted(scores.by_domain) if d != domain]
    if not rest:
        raise LensBiasError(f"{domain!r} is the only domain of these scores: nothing is left without it")
    total = sum(counts[d] for d in rest)
    out = {}
    for k in KINDS:
        if scores.get(k) is None:
            continue
        if any(k not in scores.by_domain[d] for d in rest):
            raise NotSeparable(f"some per-domain scores lack {k}; rescore on the other domains' pairs")
        acc = sum(scores.by_domain[d][k].double() * counts[d] for d in rest) / total
        out[k] = acc.to(scores.get(k).dtype)
    settings = {**scores.settings, "n_pairs": total, "domains": rest,
                "n_pairs_by_domain": {d: counts[d] for d in rest}, "left_out": domain}
    before = scores.settings.get("metric_before_by_domain")
    if isinstance(before, dict) and set(rest) <= set(before):
        settings["metric_before_by_domain"] = {d: before[d] for d in rest}
        settings["metric_before"] = sum(before[d] * counts[d] for d in rest) / total
    return Scores(out.get("neurons"), out.get("heads"), {d: scores.by_domain[d] for d in rest}, settings)


def _score_kwargs(scorer: str, settings: dict, metric, batch_size: int, progress: bool, seed: int) -> dict:
    """The keyword arguments of :func:`lens_bias.attribution.scorers.score` that reproduce
    ``settings`` (the scores being rescored on a subset), or the defaults of ``metric``."""
    if scorer in GRADIENT_SCORERS:
        ig = {k: settings[k] for k in ("ig_steps", "ig_rule", "ig_path") if k in settings}
        return {"metric": settings.get("metric", metric), "ablation": settings.get("ablation", "zero"),
                "graddrop": bool(settings.get("graddrop", False)), "batch_size": batch_size,
                "progress": progress, **ig}
    return {"batch_size": batch_size, "seed": settings.get("seed", seed)}


def _check_inputs(train: PairSet, ev: EvalSet, scores: Scores | None) -> list[str]:
    """The test domains (every held-out domain), after the checks: no shared templates, every test
    domain has train pairs (and scores), and at least two train domains."""
    shared = set(train.templates) & set(ev.pairs.templates)
    if shared:
        raise LensBiasError(f"train and held-out pairs share templates {sorted(shared)[:5]}; "
                            "split by template")
    domains = ev.pairs.domains
    if not domains:
        raise LensBiasError("no held-out pairs to evaluate on")
    if len(train.domains) < 2:
        raise LensBiasError("leave-one-domain-out needs train pairs of at least two domains; "
                            f"have {train.domains}")
    for d in domains:
        if d not in train.domains:
            raise LensBiasError(f"held-out domain {d!r} has no train pairs; have {train.domains}")
    if scores is not None:
        have = scores.settings.get("domains") or sorted(scores.by_domain)
        missing = [d for d in train.domains if d not in have]
        if missing:
            raise LensBiasError(f"the given scores were not computed on domains {missing}; "
                                "score on all train pairs")
    return domains


def _left_out_masks(train: PairSet, scores: Scores, domains: Sequence[str], pick: Callable,
                    rescore: Callable) -> tuple[dict[str, PruningMask], dict[str, dict]]:
    """Per domain: the mask learned without it, and what it was scored on (``domains``,
    ``n_pairs_by_domain``, ``rescored``: True where :func:`scores_without` refused)."""
    masks, scoring = {}, {}
    for d in domains:
        try:
            s, rescored = scores_without(scores, d), False
        except NotSeparable:
            s, rescored = rescore(train.filter(domains=[t for t in train.domains if t != d])), True
        masks[d] = pick(s)
        counts = s.settings.get("n_pairs_by_domain") or {}
        scoring[d] = {"domains": list(s.settings.get("domains", [])), "n_pairs_by_domain": dict(counts),
                      "rescored": rescored}
    return masks, scoring


def _jaccard(a: PruningMask, b: PruningMask, kind: Kind) -> float:
    sa, sb = set(a.pruned(kind)), set(b.pruned(kind))
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def unseen_loss(before: Sequence[float], left_out: Sequence[float], all_domains: Sequence[float],
                groups: Sequence[str], seed: int = 0) -> dict:
    """How many points of JS reduction pairs lose when their domain was not learned on: reduction
    with the all-domain mask minus reduction with the leave-out mask (both relative to the mean JS
    before), with a 95 % cluster-bootstrap interval (``groups`` resampled) and the sign-flip p of the
    paired JS after the two masks. ``within_noise``: the interval covers 0 or p >= 0.05.

    Examples:
        >>> r = unseen_loss([0.02, 0.04, 0.02, 0.04], [0.015, 0.03, 0.015, 0.03], [0.01, 0.02, 0.01, 0.02],
        ...                 ["a", "a", "b", "b"])
        >>> round(r["points"], 1), r["p"], r["within_noise"]  # 2 templates: p >= 2/4
        (25.0, 0.5, True)
    """
    v = np.column_stack([np.asarray(x, dtype=np.float64) for x in (before, left_out, all_domains)])

    def stat(values: np.ndarray, w: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return 100.0 * (w @ values[:, 1] - w @ values[:, 2]) / (w @ values[:, 0])

    point = float(stat(v, np.ones((1, len(v))))[0])
    ci = bootstrap_ci(v, list(groups), seed=seed, stat=stat)
    p = paired_permutation_test(all_domains, left_out, list(groups), seed=seed, wilcoxon=False)["p"]
    finite = ci is not None and all(np.isfinite(ci)) and np.isfinite(point)
    within = not finite or ci[0] <= 0 <= ci[1] or p is None or p >= 0.05
    return {"points": point if np.isfinite(point) else None, "ci": list(ci) if finite else None, "p": p,
            "within_noise": bool(within)}


def _items(res: dict, domain: str) -> dict:
    """The per-pair part of an evaluation, templates named ``domain/template`` (a pooled cluster
    never joins two domains' templates that share an id)."""
    pi = res["per_item"]
    return {"templates": [f"{domain}/{t}" for t in pi["templates"]], "domains": list(pi["domains"]),
            "js": [float(x) for x in pi["js"]]}


def _changes(items: dict[str, dict], seed: int) -> dict:
    """Mean JS before / after each mask, the two reductions and the unseen-domain loss of one set of pairs."""
    wrap = {k: {"per_item": v} for k, v in items.items()}
    js = {k: v["js"] for k, v in items.items()}
    groups = items["before"]["templates"]
    return {"n_pairs": len(js["before"]), "n_templates": len(set(groups)), "js_before": _mean(js["before"]),
            "js_left_out": _mean(js["left_out"]), "js_all": _mean(js["all"]),
            "left_out": js_reduction(wrap["before"], wrap["left_out"], seed=seed),
            "all": js_reduction(wrap["before"], wrap["all"], seed=seed),
            "loss": unseen_loss(js["before"], js["left_out"], js["all"], groups, seed)}


def _evaluate_domains(bridge: Bridge, ev: EvalSet, domains: Sequence[str], left: dict[str, PruningMask],
                      mask_all: PruningMask, batch_size: int, progress: bool) -> dict[str, dict[str, dict]]:
    """Per domain, its held-out pairs' per-pair JS before, with its leave-out mask and with the
    all-domain mask (the same batches each time, so the paired differences are the masks' alone)."""
    from tqdm.auto import tqdm

    out = {}
    for d in tqdm(domains, desc="leave one domain out", leave=False) if progress else domains:
        sub = EvalSet(pairs=ev.pairs.filter(domains=[d]))
        out[d] = {name: _items(evaluate(bridge, sub, m, lambada=False, batch_size=batch_size,
                                        per_item=True), d)
                  for name, m in (("before", None), ("left_out", left[d]), ("all", mask_all))}
    return out


def _pooled(items: dict[str, dict[str, dict]], rows: list[dict], seed: int) -> dict:
    """Every held-out pair together (each after its own domain's leave-out mask), and the
    unweighted mean over domains of the per-domain reductions."""
    cat = {k: {f: [x for d in items for x in items[d][k][f]] for f in ("templates", "domains", "js")}
           for k in ("before", "left_out", "all")}
    out = _changes(cat, seed)
    for k in ("left_out", "all"):
        vals = [r[k]["reduction_pct"] for r in rows if r[k]["reduction_pct"] is not None]
        out[f"mean_over_domains_{k}_pct"] = _mean(vals) if vals else None
    return out


def leave_one_domain_out(bridge: Bridge, train: PairSet, ev: EvalSet, budget: str = "0.5%",
                         kind: Kind = "neurons", scorer: str = "ablate",
                         max_cost_quantile: float | None = 0.5, metric: str = "js", batch_size: int = 16,
                         progress: bool = True, scores: Scores | None = None, cost: Scores | None = None,
                         seed: int = 0) -> dict:
    """The "unseen use case" number: for every held-out domain d, the held-out JS reduction on d's
    pairs of the mask learned without d (all other domains' train pairs) and of the mask learned
    on all domains, each with its 95 % interval, p and ``within_noise``
    (:func:`lens_bias.measures.changes.js_reduction`), and the loss between them (:func:`unseen_loss`).
    ``pooled`` holds the same over all held-out pairs (templates resampled, each pair after its own
    domain's leave-out mask); its ``js_before`` is the pair-weighted mean of the rows'.

    ``scores`` (on all of ``train``; scored here when ``None``) are split by :func:`scores_without`
    where exact, else the domain is rescored on the other domains' pairs with the same settings.
    ``cost`` (:func:`lens_bias.attribution.patching.capability_cost`; computed on ``ev.neutral``, or
    the bundled neutral text, when ``None`` and ``max_cost_quantile`` is set) and ``select`` as in
    :func:`lens_bias.studies.generalize.domain_masks`. ``train`` and ``ev.pairs`` must come from a
    split by template. Returns a JSON-ready dict: ``rows`` (one per domain), ``pooled``,
    ``n_pairs`` and ``n_train`` per domain, ``n_pruned``, ``jaccard_with_all``, ``pruned``,
    ``scoring`` (what each mask was scored on) and ``settings``."""
    from ..attribution.patching import capability_cost
    from ..attribution.scorers import score
    from ..prompts.pairs import neutral_text
    from ..selection.topk import select

    domains = _check_inputs(train, ev, scores)
    if scores is None:
        scores = score(bridge, train, scorer, **_score_kwargs(scorer, {}, metric, batch_size, progress, seed))
    name = scores.settings.get("estimator", scorer)
    if cost is None and max_cost_quantile is not None:
        cost = capability_cost(bridge, ev.neutral or neutral_text(), ablation="zero", progress=progress)

    def pick(s: Scores) -> PruningMask:
        return select(s, budget, kind=kind, bridge=bridge, cost=cost, max_cost_quantile=max_cost_quantile)

    def rescore(pairs: PairSet) -> Scores:
        return score(bridge, pairs, name,
                     **_score_kwargs(name, scores.settings, metric, batch_size, progress, seed))

    mask_all = pick(scores)
    left, scoring = _left_out_masks(train, scores, domains, pick, rescore)
    scoring["all"] = {"domains": list(scores.settings.get("domains", train.domains)),
                      "n_pairs_by_domain": dict(scores.settings.get("n_pairs_by_domain") or {}),
                      "rescored": False}
    items = _evaluate_domains(bridge, ev, domains, left, mask_all, batch_size, progress)
    return _result(train, ev, domains, items, left, mask_all, scoring, kind, seed,
                   {"budget": budget, "kind": kind, "scorer": name,
                    "metric": scores.settings.get("metric", metric), "max_cost_quantile": max_cost_quantile,
                    "batch_size": batch_size, "seed": seed})


def _result(train: PairSet, ev: EvalSet, domains: list[str], items: dict, left: dict[str, PruningMask],
            mask_all: PruningMask, scoring: dict, kind: Kind, seed: int, settings: dict) -> dict:
    """:func:`leave_one_domain_out`'s JSON-ready result from the per-domain per-pair JS and the masks."""
    n_pruned = {**{d: left[d].counts()[kind] for d in domains}, "all": mask_all.counts()[kind]}
    jac = {d: _jaccard(left[d], mask_all, kind) for d in domains}
    rows = [{"domain": d, **_changes(items[d], seed), "n_pruned_left_out": n_pruned[d],
             "jaccard_with_all": jac[d], "scoring_domains": scoring[d]["domains"],
             "rescored": scoring[d]["rescored"]} for d in domains]
    return {
        "domains": domains, "rows": rows, "pooled": _pooled(items, rows, seed),
        "n_pairs": {d: len(ev.pairs.filter(domains=[d])) for d in domains},
        "n_train": {d: len(train.filter(domains=[d])) for d in train.domains},
        "n_pruned": n_pruned, "jaccard_with_all": jac,
        "pruned": {**{d: left[d].pruned(kind) for d in domains}, "all": mask_all.pruned(kind)},
        "scoring": scoring,
        "settings": {**settings, "n_train": len(train), "n_held_out": len(ev.pairs),
                     "train_templates": train.templates, "held_out_templates": ev.pairs.templates},
    }


# ---------------------------------------------------------------- tables and readings


def _fmt1(x) -> str:
    return "-" if x is None else f"{x:.1f}"


TRANSFER_HEADER = ["tested on", "pairs", "JS before", "left out %", "95 % CI", "p", "all domains %",
                   "95 % CI", "p", "loss (points)", "Jaccard"]


def transfer_rows(res: dict) -> list[list]:
    """One row per domain and the pooled row: JS before, the reduction of each mask with its
    interval and p (``*`` after a number within noise), the unseen-domain loss and the Jaccard
    overlap of the leave-out mask with the all-domain mask."""
    from ..stats import fmt_ci

    def red(c: dict) -> list:
        v = c["reduction_pct"]
        shown = None if v is None else f"{v:.1f}{'*' if c['within_noise'] else ''}"
        return [shown, fmt_ci(c["reduction_ci"]).strip() or "-", c["p"]]

    recs = [*res["rows"], {**res["pooled"], "domain": "pooled", "jaccard_with_all": None}]
    return [[r["domain"], r["n_pairs"], r["js_before"], *red(r["left_out"]), *red(r["all"]),
             r["loss"]["points"], r["jaccard_with_all"]] for r in recs]


def transfer_reading(res: dict) -> str:
    """One paragraph reading of a :func:`leave_one_domain_out` result (the CLI's and the reports')."""
    from ..stats import fmt_ci

    p, s = res["pooled"], res["settings"]
    loss = p["loss"]
    return (f"Held-out JS reduction pooled over {len(res['domains'])} domains ({p['n_pairs']} pairs, "
            f"{p['n_templates']} templates), {s['kind']} at {s['budget']}: learned without the tested domain "
            f"{_fmt1(p['left_out']['reduction_pct'])} %, "
            f"learned on all domains {_fmt1(p['all']['reduction_pct'])} %; "
            f"an unseen domain loses {_fmt1(loss['points'])} points {fmt_ci(loss['ci']).strip()}"
            f"{' (within noise)' if loss['within_noise'] else ' (beyond noise)'}. "
            "* = within noise (the 95 % interval covers 0 or "
            f"p >= 0.05; per domain there are only a few held-out templates).")
