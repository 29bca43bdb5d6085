"""How sure a number is: bootstrap intervals and paired tests for every before / after change.

* :func:`bootstrap_ci`: a percentile 95 % interval of a statistic (the mean by default),
  resampling items, or whole clusters when ``groups`` is given (a template's pairs share their
  wording, so they are resampled together);
* :func:`paired_bootstrap_change`: the interval of ``stat(after) - stat(before)`` and of the
  relative change in %, resampling the pairs (or clusters) jointly;
* :func:`mcnemar_exact`: the exact McNemar test of two paired yes/no outcomes (CrowS-Pairs: how
  many pairs went from stereotyped to not, and back);
* :func:`paired_permutation_test`: the sign-flip test of the mean paired difference (exact when
  there are at most 16 pairs or clusters), with the Wilcoxon signed-rank p beside it;
* :func:`paired_change`: all of it in one :class:`Change` record, the form ``metrics.json`` holds.

Everything is vectorised over resamples (numpy); a bootstrap over 600 numbers with 2,000
resamples takes a few milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .errors import LensBiasError

N_BOOT = 2000
N_PERM = 10_000
EXACT_MAX = 16  # sign-flip tests enumerate every sign vector up to this many pairs / clusters
Values = Sequence | np.ndarray | torch.Tensor
Stat = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _arr(x: Values) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The mean of ``values`` [n] under each row of resampling weights [n_boot, n] (counts).

    Examples:
        >>> import numpy as np
        >>> weighted_mean(np.array([1.0, 3.0]), np.array([[1, 1], [2, 0]])).tolist()
        [2.0, 1.0]
    """
    return weights @ values / weights.sum(axis=1)


def resample_weights(n: int, groups: Sequence | None = None, n_boot: int = N_BOOT,
                     seed: int = 0) -> np.ndarray:
    """How many times each of ``n`` items is drawn in each of ``n_boot`` bootstrap resamples,
    [n_boot, n]. With ``groups`` (one label per item), whole clusters are drawn with replacement
    (as many as there are clusters) and every item of a drawn cluster comes with it.

    Examples:
        >>> w = resample_weights(4, groups=["a", "a", "b", "b"], n_boot=3)
        >>> w.shape, bool((w[:, 0] == w[:, 1]).all()), w.sum(axis=1).tolist()
        ((3, 4), True, [4.0, 4.0, 4.0])
    """
    if groups is None:
        codes, g = np.arange(n), n
    else:
        if len(groups) != n:
            raise LensBiasError(f"{len(groups)} group labels for {n} values")
        _, codes = np.unique(np.asarray([str(x) for x in groups]), return_inverse=True)
        g = int(codes.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, g, size=(n_boot, g))
    counts = np.bincount((draws + g * np.arange(n_boot)[:, None]).ravel(), minlength=n_boot * g)
    return counts.reshape(n_boot, g)[:, codes].astype(np.float64)


def _percentile(x: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    x = x[np.isfinite(x)]
    if not len(x):
        return (math.nan, math.nan)
    lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2])
    return (float(lo), float(hi))


def bootstrap_ci(values: Values, groups: Sequence | None = None, n_boot: int = N_BOOT, seed: int = 0,
                 stat: Stat = weighted_mean) -> tuple[float, float] | None:
    """Percentile 95 % bootstrap interval of ``stat`` (the mean by default) of ``values`` [n]
    (or [n, k] with a ``stat`` that reads k columns), resampling items or, with ``groups``,
    clusters. ``None`` for no values.

    ``stat(values, weights)`` gets the values and the resampling weights [n_boot, n] and returns
    one number per resample (see :func:`weighted_mean`).

    Examples:
        >>> lo, hi = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0])
        >>> lo < 3.0 < hi
        True
        >>> bootstrap_ci([2.0, 2.0]), bootstrap_ci([])
        ((2.0, 2.0), None)
    """
    v = _arr(values)
    if not len(v):
        return None
    return _percentile(stat(v, resample_weights(len(v), groups, n_boot, seed)))


def perplexity_stat(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Perplexity of scored windows under resampling weights: ``values`` [n_windows, 2] holds
    each window's summed NLL and its token count; exp(total NLL / total tokens) per resample.

    Examples:
        >>> import numpy as np
        >>> v = np.array([[2.0, 1.0], [0.0, 1.0]])
        >>> np.round(perplexity_stat(v, np.array([[1, 1], [2, 0]])), 4).tolist()
        [2.7183, 7.3891]
    """
    return np.exp(weights @ values[:, 0] / (weights @ values[:, 1]))


def fmt_ci(ci: Sequence[float] | None) -> str:
    """An interval for a table cell: `` [lo, hi]`` with 3 significant digits, ``""`` for none.

    Examples:
        >>> fmt_ci((-0.01234, 0.5)), fmt_ci(None)
        (' [-0.0123, 0.5]', '')
    """
    return "" if ci is None else f" [{ci[0]:.3g}, {ci[1]:.3g}]"


def _pct(before, after):
    with np.errstate(divide="ignore", invalid="ignore"):
        return 100.0 * (np.asarray(after) / np.asarray(before) - 1.0)


def paired_bootstrap_change(before: Values, after: Values, groups: Sequence | None = None,
                            n_boot: int = N_BOOT, seed: int = 0, stat: Stat = weighted_mean) -> dict:
    """The change ``stat(after) - stat(before)`` of paired values and the relative change in %
    (``100 * (stat(after) / stat(before) - 1)``, a ratio of means), each with a 95 % interval from
    resampling the pairs (or clusters) jointly.

    Returns ``{"before", "after", "diff", "diff_ci", "pct", "pct_ci"}`` (``pct`` is ``None`` when
    ``stat(before)`` is 0).

    Examples:
        >>> r = paired_bootstrap_change([1.0, 2.0, 3.0, 4.0], [0.5, 1.0, 1.5, 2.0])
        >>> r["diff"], r["pct"], r["pct_ci"]
        (-1.25, -50.0, (-50.0, -50.0))
    """
    b, a = _arr(before), _arr(after)
    if b.shape != a.shape:
        raise LensBiasError(f"paired values of different shapes: {b.shape} before, {a.shape} after")
    if not len(b):
        return {"before": None, "after": None, "diff": None, "diff_ci": None, "pct": None, "pct_ci": None}
    ones = np.ones((1, len(b)))
    sb, sa = float(stat(b, ones)[0]), float(stat(a, ones)[0])
    w = resample_weights(len(b), groups, n_boot, seed)
    bb, ba = stat(b, w), stat(a, w)
    pct = None if sb == 0 else float(_pct(sb, sa))
    return {"before": sb, "after": sa, "diff": sa - sb, "diff_ci": _percentile(ba - bb),
            "pct": pct, "pct_ci": None if pct is None else _percentile(_pct(bb, ba))}


def mcnemar_exact(before: Values, after: Values) -> dict:
    """Exact McNemar test of paired yes/no outcomes: ``b`` pairs went from yes to no, ``c`` from
    no to yes, and p = min(1, 2 P(X <= min(b, c))) for X ~ Binomial(b + c, 1/2) (1 when b + c = 0).

    Examples:
        >>> mcnemar_exact([1] * 8 + [0] * 2 + [1] * 5, [0] * 8 + [1] * 2 + [1] * 5)
        {'b': 8, 'c': 2, 'p': 0.109375, 'n': 15}
    """
    x, y = _arr(before).astype(bool), _arr(after).astype(bool)
    if x.shape != y.shape:
        raise LensBiasError(f"paired outcomes of different shapes: {x.shape} before, {y.shape} after")
    b, c = int((x & ~y).sum()), int((~x & y).sum())
    n = b + c
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n)
    return {"b": b, "c": c, "p": p, "n": int(x.size)}


def _cluster_sums(d: np.ndarray, groups: Sequence | None) -> np.ndarray:
    """The paired differences summed per cluster (each item its own cluster without ``groups``)."""
    if groups is None:
        return d
    _, codes = np.unique(np.asarray([str(x) for x in groups]), return_inverse=True)
    return np.bincount(codes, weights=d)


def paired_permutation_test(before: Values, after: Values, groups: Sequence | None = None,
                            n_perm: int = N_PERM, seed: int = 0, wilcoxon: bool = True) -> dict:
    """Two-sided sign-flip permutation test of the mean paired difference ``after - before``:
    under no effect each pair's difference (with ``groups``, each cluster's summed differences) is
    as likely negated. Exact (every sign vector) for at most 16 pairs / clusters, else ``n_perm``
    random flips with p = (hits + 1) / (n_perm + 1).

    Returns ``{"p", "test", "n", "n_flipped"}`` and, with ``wilcoxon``, the Wilcoxon signed-rank
    p of the same differences (pairs, not clusters) for comparison.

    Examples:
        >>> r = paired_permutation_test([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], wilcoxon=False)
        >>> r["p"], r["test"]  # 2 of the 8 sign vectors are as extreme: all + and all -
        (0.25, 'sign-flip permutation (exact)')
    """
    b, a = _arr(before), _arr(after)
    if b.shape != a.shape:
        raise LensBiasError(f"paired values of different shapes: {b.shape} before, {a.shape} after")
    d = a - b
    s = _cluster_sums(d, groups)
    k = len(s)
    if k == 0:
        return {"p": None, "test": "sign-flip permutation", "n": 0, "n_flipped": 0}
    observed = abs(s.sum())
    tol = 1e-12 * max(1.0, float(np.abs(s).sum()))
    if k <= EXACT_MAX:
        signs = 1 - 2 * ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1)
        p = float((np.abs(signs @ s) >= observed - tol).mean())
        test = "sign-flip permutation (exact)"
    else:
        rng = np.random.default_rng(seed)
        hits = 0
        for start in range(0, n_perm, 2000):
            signs = rng.choice(np.array([-1.0, 1.0]), size=(min(2000, n_perm - start), k))
            hits += int((np.abs(signs @ s) >= observed - tol).sum())
        p = (hits + 1) / (n_perm + 1)
        test = f"sign-flip permutation ({n_perm} random)"
    out = {"p": p, "test": test + (", by cluster" if groups is not None else ""), "n": int(len(d)),
           "n_flipped": k}
    if wilcoxon:
        out["wilcoxon_p"] = _wilcoxon(d)
    return out


def _wilcoxon(d: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p of the differences (``None`` when all are 0)."""
    from scipy.stats import wilcoxon

    if not np.any(d != 0):
        return None
    return float(wilcoxon(d).pvalue)


@dataclass
class Change:
    """One before / after change with its uncertainty, as ``metrics.json`` holds it.

    ``diff`` = after - before (points for rates in %), ``pct`` the relative change in %, each with
    its 95 % interval; ``p`` from ``test``; ``within_noise`` is True when the interval of ``diff``
    covers 0 or the test's p is 0.05 or more (with few clusters the percentile interval can be
    too narrow while the exact test cannot go below 2 / 2^clusters: either one is enough to call a
    change luck). ``extra`` holds what the test adds (McNemar's ``b`` and ``c``, the Wilcoxon p, ...).

    Examples:
        >>> Change(1.0, 0.5, -0.5, (-0.7, -0.3), -50.0, (-60.0, -40.0), 0.01, "t", 36).within_noise
        False
    """

    before: float | None
    after: float | None
    diff: float | None
    diff_ci: tuple[float, float] | None
    pct: float | None
    pct_ci: tuple[float, float] | None
    p: float | None
    test: str
    n: int
    extra: dict = field(default_factory=dict)
    within_noise: bool | None = None

    def __post_init__(self):
        if self.within_noise is None and self.diff_ci is not None and not any(map(math.isnan, self.diff_ci)):
            self.within_noise = (bool(self.diff_ci[0] <= 0 <= self.diff_ci[1])
                                 or (self.p is not None and self.p >= 0.05))

    def to_dict(self) -> dict:
        """A JSON-ready dict (intervals as ``[lo, hi]`` lists, ``extra`` merged in)."""
        d = asdict(self)
        extra = d.pop("extra")
        for k in ("diff_ci", "pct_ci"):
            d[k] = list(d[k]) if d[k] is not None else None
        return {**d, **extra}


def paired_change(before: Values, after: Values, groups: Sequence | None = None, test: str = "permutation",
                  n_boot: int = N_BOOT, seed: int = 0, stat: Stat = weighted_mean,
                  test_values: tuple[Values, Values] | None = None) -> Change:
    """The :class:`Change` of paired values: the paired bootstrap interval of the change and the
    paired test, ``"permutation"`` (:func:`paired_permutation_test`, by cluster with ``groups``)
    or ``"mcnemar"`` (:func:`mcnemar_exact`; pass the outcomes as 0/100 to get the change of a
    rate in points). ``test_values`` (before, after): what the test reads when ``stat`` is not a
    mean of one column (perplexity: the bootstrap resamples windows of (NLL, tokens), the test
    flips the per-token NLL differences of the windows).

    Examples:
        >>> c = paired_change([100, 100, 0, 100] * 5, [0, 100, 0, 100] * 5, test="mcnemar")
        >>> c.diff, c.extra["b"], c.extra["c"], round(c.p, 4), c.test
        (-25.0, 5, 0, 0.0625, 'exact McNemar')
    """
    r = paired_bootstrap_change(before, after, groups, n_boot, seed, stat)
    tb, ta = test_values if test_values is not None else (before, after)
    if test == "mcnemar":
        t = mcnemar_exact(_arr(tb) > 0, _arr(ta) > 0)
        extra, name = {"b": t["b"], "c": t["c"]}, "exact McNemar"
    elif test == "permutation":
        t = paired_permutation_test(tb, ta, groups, seed=seed)
        extra, name = {k: t[k] for k in ("wilcoxon_p", "n_flipped") if k in t}, t["test"]
    else:
        raise LensBiasError(f"test must be permutation or mcnemar, got {test!r}")
    if groups is not None:
        extra["n_clusters"] = len(set(map(str, groups)))
    return Change(r["before"], r["after"], r["diff"], r["diff_ci"], r["pct"], r["pct_ci"], t["p"], name,
                  len(_arr(before)), extra)
