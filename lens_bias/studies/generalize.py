"""Cross-domain transfer, the seed studies' third claim: a mask learned on one domain tested on
every other (:func:`generalization_matrix`), each domain's own mask (:func:`domain_masks`) and how
much the domains' prunings overlap (:func:`overlap`)."""

from __future__ import annotations

from collections.abc import Sequence

from tqdm.auto import tqdm

from ..bridge import Bridge
from ..errors import LensBiasError
from ..masks import PruningMask
from ..measures.changes import js_reduction, matrix_noise, reduction_pct
from ..measures.evaluation import EvalSet, evaluate
from ..prompts.pairs import PairSet
from ..selection.topk import select
from ..vocab import GRADIENT_SCORERS, Kind


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
    permutation ``p`` and ``within_noise`` (:func:`lens_bias.measures.changes.js_reduction`).
    """
    shared = set(train.templates) & set(ev.pairs.templates)
    if shared:
        raise LensBiasError(f"train and held-out pairs share templates {sorted(shared)[:5]}; "
                            "split by template")
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
    red = {t: {d: reduction_pct(js_before[d], after[t][d]) for d in test_domains} for t in rows}
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
    from ..attribution.patching import capability_cost
    from ..attribution.scorers import score
    from ..prompts.pairs import neutral_text

    domains = list(domains or train.domains)
    kw = {"metric": metric, "batch_size": batch_size, "progress": progress} if scorer in GRADIENT_SCORERS \
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
    which is learned from every domain and so not a peer). ``pruned`` maps a name to its
    (layer, index) list, as in ``generalization_matrix(...)["pruned"]`` or
    ``PruningMask.pruned(kind)``."""
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

