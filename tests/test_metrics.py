import math

import pytest
import torch
from conftest import CROWS

from lens_bias import build_pairs, crows_rate, js_divergence, load_crows_pairs, logit_gap, measure
from lens_bias.capability import perplexity
from lens_bias.metrics import parse_number, standardized_mean_difference
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
    from lens_bias.capability import _shared_score

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


def test_kl_with_cached_reference_equals_two_pass_kl_and_refuses_stale_weights(tiny):
    """The cached reference gives the same KL as recomputing it, per token against a hand loop,
    and is refused once the weights change in place."""
    from lens_bias.ablation import ablate
    from lens_bias.batching import encode
    from lens_bias.capability import kl_from_reference, reference_logprobs
    from lens_bias.errors import LensBiasError
    from lens_bias.selection import random_mask

    texts = neutral_text()[:5]
    mask = random_mask(tiny, 20, "neurons", seed=1)
    ref = reference_logprobs(tiny, texts, batch_size=2)
    cached = kl_from_reference(tiny, texts, lambda: ablate(tiny, mask), batch_size=2, reference=ref)
    plain = kl_from_reference(tiny, texts, lambda: ablate(tiny, mask), batch_size=2)
    total, n = 0.0, 0
    for t in texts:  # one text at a time, no padding
        ids = encode(tiny.lens_bias_tokenizer, [t]).ids
        with torch.inference_mode():
            p = tiny(ids).double().log_softmax(-1)[0]
            with ablate(tiny, mask):
                q = tiny(ids).double().log_softmax(-1)[0]
        total += float((p.exp() * (p - q)).sum())
        n += ids.shape[1]
    assert cached == pytest.approx(plain, rel=1e-6)
    assert cached == pytest.approx(total / n, rel=1e-4)
    assert cached > 0
    with pytest.raises(LensBiasError, match="batch size"):
        kl_from_reference(tiny, texts, None, batch_size=4, reference=ref)
    w = next(tiny.parameters())
    with torch.no_grad():
        w.mul_(1.0)  # an in-place change (even a no-op one) makes the reference stale
    with pytest.raises(LensBiasError, match="weights changed"):
        kl_from_reference(tiny, texts, None, batch_size=2, reference=ref)


@pytest.mark.parametrize("n", [1, 300, 2048, 4096])
def test_leading_tokens_equal_the_full_tokenization_cut(tiny, n):
    """perplexity() tokenizes only the lines it needs; the tokens are those of the whole text, cut."""
    from lens_bias.capability import leading_tokens
    from lens_bias.corpora import load_wikitext, shared_data_file

    path = shared_data_file("wikitext2_test.txt")
    texts = load_wikitext(path)[:3000] if path else neutral_text() * 20
    tok = tiny.lens_bias_tokenizer
    full = tok("\n".join(texts), add_special_tokens=False)["input_ids"]
    assert leading_tokens(tok, texts, n) == full[:n]


def test_check_finite_fast_path_still_catches_nan_inf_and_not_overflowing_sums():
    from lens_bias.batching import check_finite
    from lens_bias.errors import NumericsError

    check_finite(torch.full((4, 10), 3e38))  # the sum overflows, every value is finite
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.randn(3, 7)
        x[1, 2] = bad
        with pytest.raises(NumericsError):
            check_finite(x)
    x = torch.randn(3, 7)
    x[0, 0], x[2, 2] = float("inf"), -float("inf")  # sum NaN
    with pytest.raises(NumericsError, match="0 NaN and 2 inf"):
        check_finite(x)


def test_lambada_accuracy_matches_one_passage_at_a_time_with_full_logits(smol):
    """Batched, length-sorted LAMBADA scoring with the unembedding at the needed positions only
    gives the same verdict per passage as a plain full-logit loop (SmolLM2, real passages, so that
    some are right and some wrong). The passages are the bundled neutral sentences, so the test
    does not need a LAMBADA file."""
    from lens_bias.batching import encode
    from lens_bias.capability import lambada_accuracy

    texts = [t.rstrip(".") for t in neutral_text()[:40]]
    tok = smol.lens_bias_tokenizer
    hits = []
    for t in texts:
        head, _, last = t.rpartition(" ")
        tg = tok(" " + last, add_special_tokens=False)["input_ids"]
        ids = encode(tok, [head]).ids[0].tolist() + tg
        with torch.inference_mode():
            pred = smol(torch.tensor([ids])).argmax(-1)[0].tolist()
        hits.append(pred[len(ids) - len(tg) - 1: len(ids) - 1] == tg)
    assert 0 < sum(hits) < len(texts)
    assert lambada_accuracy(smol, texts, batch_size=5, progress=False) == pytest.approx(sum(hits) / len(texts))
