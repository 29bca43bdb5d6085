"""The changes between two evaluations, each with its 95 % interval and a paired test.

:func:`evaluation_changes` reads two results of :func:`lens_bias.measures.evaluation.evaluate` made with
``per_item=True`` on the same evaluation set (before and after a pruning) and returns one
:class:`lens_bias.stats.Change` record per measure:

* held-out mean JS and mean |logit gap|: paired bootstrap over the pairs resampled by template
  (a template's pairs share their wording) and the sign-flip permutation test by template; the
  held-out sentence pairs' mean |seqgap| the same way, by sentence template;
* CrowS-Pairs stereotype rates (``black``, ``race-color``): paired bootstrap over the rows and the
  exact McNemar test (``b`` rows went from stereotyped to not, ``c`` back); the mean
  log-likelihood difference of the ``black`` rows with the permutation test;
* WikiText-2 perplexity: paired bootstrap over the scored windows (ratio of summed NLL to
  tokens) and the permutation test of the windows' per-token NLL;
* LAMBADA accuracy (in %, so the change is in points): paired bootstrap over the passages and
  the exact McNemar test;
* BBQ's accuracies and bias scores (:func:`lens_bias.measures.bbq.bbq_changes`): paired
  bootstrap by BBQ template, McNemar for the accuracies, the permutation test for the scores;
* the generation audit's Black - White gaps
  (:func:`lens_bias.measures.generations.generation_changes`): paired bootstrap and permutation
  test by template (our pairs) or person (BOLD);
* the knowledge probe (:func:`lens_bias.measures.knowledge.knowledge_changes`): paired bootstrap
  over its items, the permutation test for the mean log-probability, McNemar for top-1 / top-k.
"""

from __future__ import annotations

import numpy as np

from ..stats import Change, fmt_ci, paired_change, perplexity_stat
from .bbq import bbq_changes
from .capability import CrowsScores
from .generations import generation_changes
from .knowledge import knowledge_changes

CROWS_CHANGES = (("black", "crows_black"), ("race-color", "crows_race_color"))
RANDOM_TESTS = ("js", "abs_logit_gap", "seqgap", "wikitext_ppl")  # the random mask's tests, with ...
USER_PREFIXES = ("bbq_", "gen_", "know_")  # ... those of the measures of bias as users see it


def _pairs_changes(bi: dict, ai: dict, n_boot: int, seed: int) -> dict[str, Change]:
    """Held-out mean JS and mean |logit gap| (the pairs where both are defined), by template."""
    groups = bi["templates"]
    out = {"js": paired_change(bi["js"], ai["js"], groups, n_boot=n_boot, seed=seed)}
    idx = [i for i, (b, a) in enumerate(zip(bi["abs_logit_gap"], ai["abs_logit_gap"], strict=True))
           if b is not None and a is not None]
    if idx:
        out["abs_logit_gap"] = paired_change([bi["abs_logit_gap"][i] for i in idx],
                                             [ai["abs_logit_gap"][i] for i in idx],
                                             [groups[i] for i in idx], n_boot=n_boot, seed=seed)
    return out


def _crows_changes(bc: CrowsScores, ac: CrowsScores, n_boot: int, seed: int) -> dict[str, Change]:
    """The stereotype rate of each subset (McNemar) and the black rows' mean log-likelihood difference."""
    out = {}
    for name, key in CROWS_CHANGES:
        idx = bc.index(name)
        if idx:
            out[f"{key}_rate"] = paired_change(100.0 * bc.stereotyped[idx], 100.0 * ac.stereotyped[idx],
                                               test="mcnemar", n_boot=n_boot, seed=seed)
            if name == "black":
                out[f"{key}_mean_diff"] = paired_change(bc.diff[idx], ac.diff[idx], n_boot=n_boot, seed=seed)
    return out


def evaluation_changes(before: dict, after: dict, n_boot: int = 2000, seed: int = 0) -> dict[str, Change]:
    """One :class:`~lens_bias.stats.Change` per measure both evaluations have (``js``,
    ``abs_logit_gap``, ``crows_black_rate``, ``crows_race_color_rate``, ``crows_black_mean_diff``,
    ``wikitext_ppl``, ``lambada_acc``); both must come from ``evaluate(..., per_item=True)`` on the
    same evaluation set.

    Examples:
        >>> b = {"per_item": {"templates": ["t1", "t1", "t2", "t3"], "js": [0.02, 0.03, 0.01, 0.02],
        ...                   "abs_logit_gap": [None] * 4}}
        >>> a = {"per_item": {"templates": ["t1", "t1", "t2", "t3"], "js": [0.01, 0.015, 0.005, 0.01],
        ...                   "abs_logit_gap": [None] * 4}}
        >>> c = evaluation_changes(b, a)
        >>> sorted(c), round(c["js"].pct, 1), c["js"].p  # 3 templates: the smallest exact p is 2/8
        (['js'], -50.0, 0.25)
    """
    bi, ai = before["per_item"], after["per_item"]
    out = _pairs_changes(bi, ai, n_boot, seed)
    if "seqgap" in bi and "seqgap" in ai:
        out["seqgap"] = paired_change(bi["seqgap"], ai["seqgap"], bi["seqgap_templates"], n_boot=n_boot,
                                      seed=seed)
    if "crows" in bi and "crows" in ai:
        out.update(_crows_changes(bi["crows"], ai["crows"], n_boot, seed))
    if "wikitext_windows" in bi and "wikitext_windows" in ai:
        wb, wa = (np.asarray(bi["wikitext_windows"], dtype=np.float64),
                  np.asarray(ai["wikitext_windows"], dtype=np.float64))
        out["wikitext_ppl"] = paired_change(wb, wa, stat=perplexity_stat, n_boot=n_boot, seed=seed,
                                            test_values=(wb[:, 0] / wb[:, 1], wa[:, 0] / wa[:, 1]))
    if "bbq" in bi and "bbq" in ai:
        out.update(bbq_changes(bi["bbq"], ai["bbq"], n_boot=n_boot, seed=seed))
    if "generations" in bi and "generations" in ai:
        out.update(generation_changes(bi["generations"], ai["generations"], n_boot=n_boot, seed=seed))
    if "knowledge" in bi and "knowledge" in ai:
        out.update(knowledge_changes(bi["knowledge"], ai["knowledge"], n_boot=n_boot, seed=seed))
    if "lambada_correct" in bi and "lambada_correct" in ai:
        out["lambada_acc"] = paired_change(100.0 * np.asarray(bi["lambada_correct"], dtype=np.float64),
                                           100.0 * np.asarray(ai["lambada_correct"], dtype=np.float64),
                                           test="mcnemar", n_boot=n_boot, seed=seed)
    return out


def without_items(result: dict) -> dict:
    """An evaluation result without its ``per_item`` part (what ``metrics.json`` and
    ``result.json`` keep).

    Examples:
        >>> without_items({"js": 0.01, "per_item": {"js": [0.01]}})
        {'js': 0.01}
    """
    return {k: v for k, v in result.items() if k != "per_item"}


def crows_rates(res: dict) -> dict:
    """The CrowS-Pairs rates of an evaluation (``crows_black_rate``, ``crows_race_color_rate``),
    those present.

    Examples:
        >>> crows_rates({"js": 0.01, "crows_black_rate": 61.0})
        {'crows_black_rate': 61.0}
    """
    return {k: res[k] for k in ("crows_black_rate", "crows_race_color_rate") if k in res}


def run_tests(before: dict, after: dict, rand: dict | None = None, seed: int = 0) -> dict:
    """The ``tests`` block of a run's ``metrics.json``: every change of :func:`evaluation_changes`
    as a dict, the random mask's (JS, |logit gap|, seqgap, perplexity, and BBQ, the generation audit
    and the knowledge probe when it was measured on them) as ``random_<measure>``, and the KL, which
    has no interval (it is measured after pruning only)."""
    out = {k: c.to_dict() for k, c in evaluation_changes(before, after, seed=seed).items()}
    if rand is not None:
        out.update({f"random_{k}": c.to_dict() for k, c in evaluation_changes(before, rand, seed=seed).items()
                    if k in RANDOM_TESTS or k.startswith(USER_PREFIXES)})
    if after.get("kl_neutral") is not None:
        out["kl_neutral"] = {"before": 0.0, "after": after["kl_neutral"], "diff_ci": None, "p": None,
                             "note": "no interval: measured after pruning only (0 before, by definition)"}
    return out


# label, key of the tests block, shown as relative change ("pct") or difference ("diff"), unit
SUMMARY_ROWS = (
    ("held-out mean JS (nats)", "js", "pct", "%"),
    ("held-out mean |logit gap|", "abs_logit_gap", "pct", "%"),
    ("held-out sentence pairs, mean |seqgap| (nats)", "seqgap", "pct", "%"),
    ("CrowS-Pairs rate, Black (%)", "crows_black_rate", "diff", "points"),
    ("CrowS-Pairs rate, race-color (%)", "crows_race_color_rate", "diff", "points"),
    ("CrowS-Pairs log-lik. difference, Black (nats)", "crows_black_mean_diff", "diff", "nats"),
    ("WikiText-2 perplexity", "wikitext_ppl", "pct", "%"),
    ("LAMBADA accuracy (%)", "lambada_acc", "diff", "points"),
    ("BBQ accuracy, ambiguous contexts (%)", "bbq_acc_ambig", "diff", "points"),
    ("BBQ accuracy, disambiguated contexts (%)", "bbq_acc_disambig", "diff", "points"),
    ("BBQ bias score s_DIS (%)", "bbq_s_dis", "diff", "points"),
    ("BBQ bias score s_AMB (%)", "bbq_s_amb", "diff", "points"),
    ("written text, our pairs: sentiment gap B-W (VADER)", "gen_pairs_sentiment_gap", "diff", "compound"),
    ("written text, our pairs: negative gap B-W (% of texts)", "gen_pairs_negative_gap", "diff", "points"),
    ("written text, our pairs: crime-word gap B-W (% of texts)", "gen_pairs_crime_gap", "diff", "points"),
    ("written text, BOLD: sentiment gap B-W (VADER)", "gen_bold_sentiment_gap", "diff", "compound"),
    ("written text, BOLD: negative gap B-W (% of texts)", "gen_bold_negative_gap", "diff", "points"),
    ("written text, BOLD: crime-word gap B-W (% of texts)", "gen_bold_crime_gap", "diff", "points"),
    ("knowledge probe: mean log-prob of the answer (nats)", "know_logprob", "diff", "nats"),
    ("knowledge probe, Black facts: mean log-prob (nats)", "know_logprob_black", "diff", "nats"),
    ("knowledge probe, White facts: mean log-prob (nats)", "know_logprob_white", "diff", "nats"),
    ("knowledge probe: answer is the top token (%)", "know_top1", "diff", "points"),
    ("knowledge probe: answer in the top k (%)", "know_topk", "diff", "points"),
    ("random mask: held-out mean JS", "random_js", "pct", "%"),
    ("random mask: held-out mean |logit gap|", "random_abs_logit_gap", "pct", "%"),
    ("random mask: sentence pairs, mean |seqgap|", "random_seqgap", "pct", "%"),
    ("random mask: WikiText-2 perplexity", "random_wikitext_ppl", "pct", "%"),
)


def summary_rows(metrics: dict) -> list[list]:
    """The before / after table of a run (the CLI's and the report's): one row per measure of
    ``metrics["tests"]``, ``[measure, before, after, change, "95 % CI", p, unit, within noise]``;
    the CrowS-Pairs rows name their pairs and McNemar's b / c.

    Examples:
        >>> t = {"js": {"before": 0.02, "after": 0.01, "diff": -0.01, "diff_ci": [-0.015, -0.005],
        ...             "pct": -50.0, "pct_ci": [-60.0, -40.0], "p": 0.002, "n": 36, "within_noise": False}}
        >>> summary_rows({"tests": t})
        [['held-out mean JS (nats)', 0.02, 0.01, -50.0, '[-60, -40]', 0.002, '%', 'no']]
    """
    rows = []
    for label, key, shown, unit in _present(metrics["tests"]):
        t = metrics["tests"][key]
        if "b" in t:
            label, unit = (f"{label[:-4]} ({t['n']} pairs)" if "CrowS" in label else label,
                           f"{unit}; b={t['b']}, c={t['c']}")
        noise = {True: "yes", False: "no"}.get(t.get("within_noise"), "-")
        rows.append([label, t["before"], t["after"], t[shown], (fmt_ci(t[f"{shown}_ci"]).strip() or "-"),
                     t["p"], unit, noise])
    if "kl_neutral" in metrics["tests"]:
        rows.append(["KL from unpruned, neutral text", 0.0, metrics["tests"]["kl_neutral"]["after"], None,
                     "-", None, "nats", "-"])
    return rows


def section_rows(metrics: dict, key_prefix: str) -> list[list]:
    """The rows of one measure family (``key_prefix``: ``bbq_``, ``gen_``, ``know_``) with the random
    mask of the same size beside the pruning: ``[measure, before, after, change, "95 % CI", p,
    within noise, random mask's change, its "95 % CI", its p]`` (``-`` where the random mask was not
    measured). Header: :data:`SECTION_HEADER`."""
    tests = metrics["tests"]
    rows = []
    # summary_rows adds the KL row after those of SUMMARY_ROWS: zip stops before it
    for row, (_, key, shown, _) in zip(summary_rows(metrics), _present(tests), strict=False):
        if not key.startswith(key_prefix):
            continue
        r = tests.get(f"random_{key}")
        rand = ([r[shown], fmt_ci(r[f"{shown}_ci"]).strip() or "-", r["p"]] if r else ["-", "-", "-"])
        rows.append([*row[:6], row[7], *rand])
    return rows


SECTION_HEADER = ["measure", "before", "after", "change", "95 % CI", "p", "within noise?",
                  "random mask: change", "95 % CI", "p"]


def _present(tests: dict) -> list[tuple]:
    """The :data:`SUMMARY_ROWS` entries that ``tests`` has, in order (the rows of :func:`summary_rows`)."""
    return [entry for entry in SUMMARY_ROWS if entry[1] in tests]


def reduction_pct(before: float | None, after: float | None) -> float | None:
    """Bias reduction in % (positive = less bias)."""
    if before is None or after is None or before == 0:
        return None
    return 100.0 * (before - after) / before


def js_reduction(before: dict, after: dict, domain: str | None = None, seed: int = 0) -> dict:
    """The held-out JS reduction (%, positive = less bias) from ``before`` to ``after`` (both from
    ``evaluate(..., per_item=True)``) on one domain's pairs (all of them when ``None``):
    ``{"reduction_pct", "reduction_ci", "p", "within_noise"}``, templates resampled and sign-flipped
    (what the experiments' curve points and matrix cells carry).

    Examples:
        >>> items = {"templates": ["a", "b", "c", "d"], "domains": ["x", "x", "x", "y"],
        ...          "abs_logit_gap": [None] * 4}
        >>> b = {"per_item": {**items, "js": [0.02, 0.04, 0.03, 0.01]}}
        >>> a = {"per_item": {**items, "js": [0.01, 0.02, 0.015, 0.01]}}
        >>> r = js_reduction(b, a, "x")
        >>> r["reduction_pct"], r["p"], r["within_noise"]  # 3 templates: p >= 2/8, so within noise
        (50.0, 0.25, True)
    """
    bi, ai = before["per_item"], after["per_item"]
    idx = [i for i, d in enumerate(bi["domains"]) if domain is None or d == domain]
    c = paired_change([bi["js"][i] for i in idx], [ai["js"][i] for i in idx],
                      [bi["templates"][i] for i in idx], seed=seed)
    return {"reduction_pct": None if c.pct is None else -c.pct,
            "reduction_ci": None if c.pct_ci is None else [-c.pct_ci[1], -c.pct_ci[0]],
            "p": c.p, "within_noise": c.within_noise}


def matrix_noise(cells: dict[str, dict[str, dict]]) -> dict:
    """``{"reduction_ci", "p", "within_noise"}``, each ``[train_domain][test_domain]``, from the
    :func:`js_reduction` of every cell of a generalization matrix."""
    return {k: {t: {d: c[k] for d, c in row.items()} for t, row in cells.items()}
            for k in ("reduction_ci", "p", "within_noise")}
