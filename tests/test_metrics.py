import math

import pytest
import torch
from conftest import CROWS

from lens_bias import build_pairs, crows_rate, js_divergence, load_crows_pairs, logit_gap, measure
from lens_bias.metrics import parse_number, perplexity, standardized_mean_difference
from lens_bias.pairs import PairSet, neutral_text


def logp(*rows):
    return torch.tensor(rows, dtype=torch.float64).clamp_min(1e-300).log()


def test_js_identical_is_zero_and_symmetric():
    p = torch.randn(5, 11).log_softmax(-1)
    q = torch.randn(5, 11).log_softmax(-1)
    assert torch.allclose(js_divergence(p, p), torch.zeros(5), atol=1e-7)
    assert torch.allclose(js_divergence(p, q), js_divergence(q, p), atol=1e-7)
    assert (js_divergence(p, q) > 0).all()
    assert (js_divergence(p, q) <= math.log(2) + 1e-6).all()


def test_js_known_two_token_value():
    # p = (1, 0), q = (.5, .5): m = (.75, .25)
    expected = 0.5 * (math.log(1 / 0.75) + 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    got = js_divergence(logp([1.0, 0.0]), logp([0.5, 0.5])).item()
    assert got == pytest.approx(expected, abs=1e-9)
    assert js_divergence(logp([1.0, 0.0]), logp([0.0, 1.0])).item() == pytest.approx(math.log(2), abs=1e-9)


def test_logit_gap_hand_computed():
    lb = logp([0.2, 0.6, 0.2])
    lw = logp([0.5, 0.25, 0.25])
    # pos = token 0, neg = token 1
    expected = (math.log(0.5) - math.log(0.25)) - (math.log(0.2) - math.log(0.6))
    assert logit_gap(lb, lw, [[0]], [[1]]).item() == pytest.approx(expected)
    # two pos tokens: log of their summed probability
    expected2 = (math.log(0.75) - math.log(0.25)) - (math.log(0.4) - math.log(0.6))
    assert logit_gap(lb, lw, [[0, 2]], [[1]]).item() == pytest.approx(expected2)


def test_smd_and_parse_number():
    assert standardized_mean_difference([2.0, 4.0, 6.0], [2.0, 4.0, 6.0]) == 0.0
    assert standardized_mean_difference([3.0, 5.0, 7.0], [1.0, 3.0, 5.0]) == pytest.approx(2 / 2.0)
    assert parse_number(" 1,250.50 dollars") == 1250.5
    assert parse_number(" about fifty") is None


def test_measure_is_padding_invariant(tiny):
    ps = build_pairs(subjects="names")
    long_pairs = sorted(ps.pairs, key=lambda p: len(p.black))
    target = long_pairs[0]
    alone = measure(tiny, PairSet([target]), progress=False)
    mixed = measure(tiny, PairSet([target, *long_pairs[-7:]]), batch_size=8, progress=False)
    assert alone.values["js"][0] == pytest.approx(mixed.values["js"][0], rel=1e-4, abs=1e-7)
    assert mixed.ids[0] == target.id


def test_measure_summary_per_domain(tiny):
    ps = build_pairs(domains=["finance", "policing"]).sample(4)
    m = measure(tiny, ps, progress=False)
    s = m.summary()
    assert s["n_pairs"] == 8
    assert s["finance"]["n_pairs"] == 4 and s["finance"]["js"] > 0
    assert all(v is not None for v in m.values["logit_gap"])  # these domains are directional


def test_measure_numeric(tiny):
    ps = build_pairs(domains=["commerce"]).filter(templates=None)
    num = PairSet([p for p in ps if p.numeric][:4])
    m = measure(tiny, num, numeric=True, progress=False)
    assert m.numeric["commerce"]["n_pairs"] == 4


@pytest.mark.skipif(not CROWS.exists(), reason="needs CrowS-Pairs")
def test_crows_rate_on_tiny(tiny):
    c = load_crows_pairs(CROWS)[:12]
    r = crows_rate(tiny, c, progress=False)
    assert r["n_pairs"] == 12 and 0 <= r["rate"] <= 100


def test_perplexity_tiny_is_finite(tiny):
    ppl = perplexity(tiny, neutral_text()[:5], progress=False)
    assert 1 < ppl < 5000


def test_crows_shared_token_score():
    from lens_bias.metrics import _shared_score

    lp = torch.tensor([-1.0, -2.0, -3.0, -4.0])
    # tokens 10, 11 shared at the start, 13 at the end; 12 vs 99 differ
    assert _shared_score([10, 11, 12, 13], lp, [10, 11, 99, 13]) == pytest.approx(-1 - 2 - 4)
    # different lengths: the common suffix is aligned at the end
    assert _shared_score([10, 12, 13], lp[:3], [10, 98, 99, 13]) == pytest.approx(-1 - 3)


@pytest.mark.skipif(not CROWS.exists(), reason="needs CrowS-Pairs")
@pytest.mark.parametrize("scoring", ["sum", "mean", "shared"])
def test_crows_scorings_run(tiny, scoring):
    r = crows_rate(tiny, load_crows_pairs(CROWS)[:6], scoring=scoring, progress=False)
    assert r["scoring"] == scoring and 0 <= r["rate"] <= 100
