"""The sentence-level target ``seqgap``: values against the CrowS-Pairs scorer, unequal token
lengths, and attribution against exact finite differences and exact ablation."""

import pytest
import torch

from lens_bias import load_model
from lens_bias.attribution.patching import attribute
from lens_bias.attribution.validation import exact_effects, exact_patch_effects, metric_value
from lens_bias.errors import LensBiasError
from lens_bias.hooks.components import Component
from lens_bias.hooks.interventions import attached
from lens_bias.measures.capability import sentence_logliks
from lens_bias.measures.targets import sentence_gap, sentence_gaps, sentence_tokens
from lens_bias.prompts.pairs import ContrastivePair, PairSet

SENTENCES = [
    ("Jamal was stopped by the police on his way home.", "Greg was stopped by the police on his way home."),
    ("An African American woman was late with the rent again.",
     "A White woman was late with the rent again."),
    ("Lakisha could not afford the new car.", "Emily could not afford the new car."),
    ("Tyrone was followed around the store by a guard.", "Brad was followed around the store by a guard."),
]


@pytest.fixture(scope="module")
def tiny64():
    return load_model("tiny-random", device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def sent():
    return PairSet([ContrastivePair(f"s-{i}:x", "general", f"s-{i}", b, w)
                    for i, (b, w) in enumerate(SENTENCES)])


def test_gaps_equal_the_crows_scorer_and_tolerate_unequal_lengths(tiny64, sent):
    tok = tiny64.lens_bias_tokenizer
    t = sentence_tokens(tiny64, sent.pairs)
    assert any(len(b) != len(w) for b, w in zip(t.black, t.white, strict=True))  # names split differently
    gaps = sentence_gaps(tiny64, sent)
    ll = sentence_logliks(tiny64, [p.black for p in sent] + [p.white for p in sent])
    # same path: sentence_gaps is sentence_logliks on the same texts and batches, so bit-identical
    assert gaps == pytest.approx([ll[i] - ll[i + 4] for i in range(4)], abs=1e-9)
    # Across batchings (other padding, other batch rows) the gap is float64 only up to the attention:
    # TransformerLens's bridge (like HF eager) runs the attention softmax in float32 even for a float64
    # model, and that reduction's order depends on the row's padded length and the CPU's vector width
    # (AVX512: a 14-long row padded to 18 differs by 1 ulp). Each token's log-prob then carries an error
    # of order eps32 = 1.2e-7 times its size, so a gap's error scales with |ll_b| + |ll_w| (~220 nats
    # here), not with the gap. 1e-7 of that (~2e-5 nats) is 20x the 9.5e-7 measured on AVX512 and 15x
    # a 1-ulp perturbation of every attention probability; a dropped token (nats) or a 1e-3 error fails.
    def tol(i):
        return 1e-7 * (abs(ll[i]) + abs(ll[i + 4]))

    # the differentiable path on one padded batch equals each pair scored alone
    batch = t.batch(range(4))
    with torch.no_grad():
        padded = sentence_gap(tiny64(batch.ids), batch)
    # vs the CrowS scorer: both keep float64 log-probs (token_logprobs upcasts nothing in a float64
    # model) but the scorer batches the rows sorted by length, so only the float32 attention softmax
    # separates them (see tol)
    for i in range(4):
        assert float(padded[i]) == pytest.approx(gaps[i], rel=0, abs=tol(i))
    for i in range(4):
        one = t.batch([i])
        with torch.no_grad():  # one pair alone (rows of 14-18 tokens) vs right-padded to 18: see tol
            assert float(sentence_gap(tiny64(one.ids), one)[0]) == pytest.approx(
                float(padded[i]), rel=0, abs=tol(i))
    assert tok.bos_token_id == batch.ids[0, 0]


def test_seqgap_scores_equal_finite_differences(tiny64, sent):
    """Each neuron's score is the derivative of mean |gap| along scaling that neuron toward zero,
    measured by central finite differences (the linear regime of the ablation)."""
    s = attribute(tiny64, sent, metric="seqgap", components=("neurons",), batch_size=2, progress=False)
    # HF attention runs its softmax in float32: eps well above that noise (central differences: O(eps^2))
    eps = 1e-2
    checked = 0
    for layer in range(tiny64.cfg.n_layers):
        for i in range(0, tiny64.cfg.d_mlp, 31):
            vals = []
            for sign in (1, -1):
                def fn(a, hook, sign=sign, i=i):
                    a = a.clone()
                    a[:, :, i] = a[:, :, i] * (1 - sign * eps)
                    return a
                with attached(tiny64, [(f"blocks.{layer}.mlp.hook_post", fn)]):
                    vals.append(metric_value(tiny64, sent, "seqgap"))
            fd = -(vals[0] - vals[1]) / (2 * eps)
            # rel: the O(eps^2) truncation. abs: rounding noise, which does not shrink with the score: each
            # value of m (mean |gap|) carries ~2e-6 nats of float32-softmax noise (see the test above),
            # and fd divides the difference of two such values by 2 eps: 2e-6 / 1e-2 = 2e-4
            assert float(s.neurons[layer, i]) == pytest.approx(fd, rel=1e-2, abs=2e-4)
            checked += 1
    assert checked >= 8 and s.neurons.abs().max() > 1e-6
    assert s.settings["metric"] == "seqgap"


def test_seqgap_ranking_agrees_with_exact_ablation(tiny64, sent):
    s = attribute(tiny64, sent, metric="seqgap", progress=False)
    comps = [Component("neurons", la, i) for la, i, _ in s.top("neurons", 6)]
    comps += [Component("neurons", 0, i) for i in range(6)]
    exact = exact_effects(tiny64, sent, comps, metric="seqgap", progress=False)
    pred = torch.tensor([float(s.neurons[c.layer, c.index]) for c in comps], dtype=torch.float64)
    assert exact.abs().max() > 1e-6
    assert torch.corrcoef(torch.stack([pred, exact.double()]))[0, 1] > 0.9


def test_seqgap_refuses_the_patch_estimator(tiny64, sent):
    with pytest.raises(LensBiasError, match="ablate"):
        attribute(tiny64, sent, metric="seqgap", estimator="patch", progress=False)
    with pytest.raises(LensBiasError, match="patch"):
        exact_patch_effects(tiny64, sent, [Component("neurons", 0, 0)], metric="seqgap", progress=False)


def test_default_split_has_the_power_the_intervals_need():
    from lens_bias.prompts.splits import split_pairs, split_sentences

    train, held = split_pairs()
    assert len(held) >= 150 and min(len(p) for p in held.by_domain().values()) >= 20
    assert not set(train.templates) & set(held.templates)
    s_train, s_held = split_sentences()
    assert len(s_held) >= 150 and not set(s_train.templates) & set(s_held.templates)
    assert all(p.pos == () for p in s_held)


def test_measure_seqgap_cli_json():
    import json

    from typer.testing import CliRunner

    from lens_bias.cli.main import app

    r = CliRunner().invoke(app, ["measure", "--model", "tiny-random", "--per-domain", "3", "--domains",
                                 "hiring,policing", "--seqgap", "--json", "-q"])
    assert r.exit_code == 0, r.output
    sg = json.loads(r.stdout)["seqgap"]
    assert set(sg) == {"all", "hiring", "policing"} and sg["all"]["n_pairs"] == 6
    lo, hi = sg["all"]["seqgap_ci"]
    assert lo <= sg["all"]["seqgap"] <= hi and 0 <= sg["all"]["stereo_rate"] <= 100
