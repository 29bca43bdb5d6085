"""Bootstrap intervals and paired tests (lens_bias.stats) against constructed cases and hand computations."""

import math

import numpy as np
import pytest

from lens_bias.errors import LensBiasError
from lens_bias.stats import (
    Change,
    bootstrap_ci,
    mcnemar_exact,
    paired_bootstrap_change,
    paired_change,
    paired_permutation_test,
    perplexity_stat,
    resample_weights,
)


def test_bootstrap_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(1)
    hits = 0
    for i in range(200):
        x = rng.normal(3.0, 2.0, size=40)
        lo, hi = bootstrap_ci(x, n_boot=1000, seed=i)
        hits += lo <= 3.0 <= hi
    assert hits / 200 >= 0.90


def test_cluster_bootstrap_is_wider_than_item_bootstrap_on_clustered_data():
    rng = np.random.default_rng(0)
    groups = [g for g in range(8) for _ in range(10)]
    x = np.repeat(rng.normal(0, 1, 8), 10) + rng.normal(0, 0.1, 80)  # values move with their cluster
    lo_i, hi_i = bootstrap_ci(x)
    lo_c, hi_c = bootstrap_ci(x, groups=groups)
    assert hi_c - lo_c > 2 * (hi_i - lo_i)


def test_resample_weights_draw_whole_clusters():
    groups = ["a", "a", "b", "c", "c", "c"]
    w = resample_weights(6, groups, n_boot=50, seed=3)
    assert (w[:, 0] == w[:, 1]).all() and (w[:, 3] == w[:, 5]).all()
    # as many clusters are drawn as there are: the counts per cluster add up to 3
    assert (w[:, [0, 2, 3]].sum(axis=1) == 3).all()
    with pytest.raises(LensBiasError, match="2 group labels for 6 values"):
        resample_weights(6, ["a", "b"])


def test_bootstrap_is_deterministic_for_a_seed():
    x = np.random.default_rng(0).normal(size=30)
    assert bootstrap_ci(x, seed=5) == bootstrap_ci(x, seed=5)
    assert bootstrap_ci(x, seed=5) != bootstrap_ci(x, seed=6)
    b, a = x, x - 0.1
    assert paired_bootstrap_change(b, a, seed=2) == paired_bootstrap_change(b, a, seed=2)
    assert (paired_permutation_test(np.zeros(30), x, seed=1)
            == paired_permutation_test(np.zeros(30), x, seed=1))


def test_paired_bootstrap_change_of_a_constant_shift():
    rng = np.random.default_rng(0)
    b = rng.uniform(1, 2, 50)
    r = paired_bootstrap_change(b, b - 0.2)
    assert r["diff"] == pytest.approx(-0.2)
    assert r["diff_ci"][0] == pytest.approx(-0.2) and r["diff_ci"][1] == pytest.approx(-0.2)
    assert r["pct"] == pytest.approx(100 * (-0.2) / b.mean())
    lo, hi = r["pct_ci"]
    assert lo < r["pct"] < hi


def test_mcnemar_matches_a_hand_computation():
    # b = 8 pairs went from stereotyped to not, c = 2 back: p = 2 * sum_{k<=2} C(10, k) / 2^10
    before = [1] * 8 + [0] * 2 + [1] * 30 + [0] * 20
    after = [0] * 8 + [1] * 2 + [1] * 30 + [0] * 20
    r = mcnemar_exact(before, after)
    assert (r["b"], r["c"], r["n"]) == (8, 2, 60)
    assert r["p"] == pytest.approx(2 * (1 + 10 + 45) / 1024) == pytest.approx(0.109375)
    assert mcnemar_exact([1, 0], [1, 0])["p"] == 1.0  # no discordant pair
    assert mcnemar_exact([1, 0, 1], [0, 1, 1])["p"] == 1.0  # b = c = 1: min(1, 2 * 3/4)


def test_permutation_test_exact_on_a_tiny_hand_case():
    # differences 1, 2, -0.5: the observed |sum| = 2.5; of the 8 sign vectors, |+1 +2 +0.5| = 3.5,
    # |+1 +2 -0.5| = 2.5, and their negations reach it: 4 of 8
    r = paired_permutation_test([0.0, 0.0, 0.0], [1.0, 2.0, -0.5], wilcoxon=False)
    assert r["p"] == pytest.approx(4 / 8) and "exact" in r["test"]
    # by cluster: the first two pairs form one cluster (sum 3), the third another (0.5); observed 3.5,
    # reached by (+, +) and (-, -) of the 4 sign vectors
    r = paired_permutation_test([0.0, 0.0, 0.0], [1.0, 2.0, 0.5], groups=["t1", "t1", "t2"], wilcoxon=False)
    assert r["p"] == pytest.approx(2 / 4) and r["n_flipped"] == 2
    # clusters of sums 3 and -0.5: every sign vector reaches |2.5|
    r = paired_permutation_test([0.0, 0.0, 0.0], [1.0, 2.0, -0.5], groups=["t1", "t1", "t2"], wilcoxon=False)
    assert r["p"] == 1.0


def test_permutation_test_random_flips_find_a_clear_effect_and_no_effect():
    rng = np.random.default_rng(0)
    b = rng.normal(size=60)
    strong = paired_permutation_test(b, b - 1 + rng.normal(0, 0.3, 60))
    assert strong["p"] < 0.001 and strong["wilcoxon_p"] < 0.001 and "random" in strong["test"]
    none = paired_permutation_test(b, b + rng.normal(0, 0.3, 60))
    assert none["p"] > 0.05


def test_paired_change_records_and_within_noise():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.01, 0.05, 40)
    groups = [f"t{i // 4}" for i in range(40)]
    c = paired_change(b, b * 0.5, groups=groups)
    assert c.within_noise is False and c.p < 0.01 and c.extra["n_clusters"] == 10
    assert c.pct == pytest.approx(-50.0)
    noisy = paired_change(b, b + rng.normal(0, 0.02, 40), groups=groups)
    assert noisy.within_noise is (noisy.diff_ci[0] <= 0 <= noisy.diff_ci[1] or noisy.p >= 0.05)
    # an interval clear of 0 with a test that cannot reject (3 clusters: p >= 2/8) is still noise
    few = paired_change([1.0, 1.1, 0.9], [1.2, 1.3, 1.1], groups=["a", "b", "c"])
    assert few.diff_ci[0] > 0 and few.p == 0.25 and few.within_noise is True
    d = c.to_dict()
    assert set(d) >= {"before", "after", "diff", "diff_ci", "pct", "pct_ci", "p", "test", "n", "within_noise"}
    assert isinstance(d["diff_ci"], list)
    with pytest.raises(LensBiasError, match="test must be"):
        paired_change(b, b, test="t-test")


def test_perplexity_change_resamples_windows():
    nll_b = np.array([[300.0, 256], [280.0, 256], [310.0, 256], [100.0, 90]])
    nll_a = nll_b * np.array([[1.02, 1]])
    c = paired_change(nll_b, nll_a, stat=perplexity_stat,
                      test_values=(nll_b[:, 0] / nll_b[:, 1], nll_a[:, 0] / nll_a[:, 1]))
    ppl_b = math.exp(nll_b[:, 0].sum() / nll_b[:, 1].sum())
    assert c.before == pytest.approx(ppl_b) and c.after > c.before
    assert c.n == 4 and c.p == pytest.approx(2 / 16)  # every window worse: 2 of the 16 sign vectors


def test_change_without_an_interval_leaves_within_noise_unknown():
    assert Change(1.0, 1.0, 0.0, None, 0.0, None, None, "none", 0).within_noise is None
