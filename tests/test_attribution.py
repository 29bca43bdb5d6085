import math

import numpy as np
import pytest
import torch

from lens_bias import build_pairs, load_model
from lens_bias.attribution.patching import attribute
from lens_bias.attribution.scorers import baseline_scores
from lens_bias.attribution.validation import exact_effects, exact_patch_effects, validate
from lens_bias.hooks.components import Component
from lens_bias.hooks.interventions import attached
from lens_bias.prompts.pairs import PairSet
from lens_bias.scores import Scores


def linear_metric(lb, lw, pairs):
    return lw[:, 5] - lb[:, 7]


def constant_final_scale(t, hook):
    return torch.ones_like(t).detach()


@pytest.fixture(scope="module")
def tiny64():
    return load_model("tiny-random", device="cpu", dtype=torch.float64)


@pytest.fixture(scope="module")
def few():
    return build_pairs(subjects="names").sample(2, seed=1)


@pytest.mark.parametrize("estimator", ["ablate", "patch"])
def test_gradient_equals_exact_for_a_linear_metric(tiny64, few, estimator):
    # with ln_final's scale held constant, the logits are linear in the last layer's neurons,
    # so the first-order estimate must equal the exact effect
    last = tiny64.cfg.n_layers - 1
    comps = [Component("neurons", last, i) for i in range(0, tiny64.cfg.d_mlp, 7)]
    with attached(tiny64, [("ln_final.hook_scale", constant_final_scale)]):
        s = attribute(tiny64, few, metric=linear_metric, estimator=estimator, progress=False)
        if estimator == "ablate":
            exact = exact_effects(tiny64, few, comps, metric=linear_metric, progress=False)
        else:
            exact = exact_patch_effects(tiny64, few, comps, metric=linear_metric, progress=False)
    pred = torch.tensor([float(s.neurons[c.layer, c.index]) for c in comps], dtype=torch.float64)
    assert exact.abs().max() > 1e-4  # the case is not trivial
    # gradient x activation vs two ablated forwards: equal in exact arithmetic, but the last layer's
    # activations come through the float32 attention softmax (even in this float64 model) and the two
    # paths batch the rows differently (sorted by length / White and Black runs apart), so each side is
    # float32-accurate: ~1e-7 relative per term, Black and White terms may cancel. 1e-5 relative plus
    # 1e-5 of the largest effect is 10x a 1-ulp perturbation of the softmax; a 1e-3 error fails.
    scale = float(exact.abs().max())
    assert torch.allclose(pred, exact.double(), atol=1e-5 * scale, rtol=1e-5)


def test_head_scores_match_slow_loop(tiny64, few):
    """Each head's ablate score equals the directional derivative of m along scaling that head
    toward zero, measured by central finite differences one head at a time."""
    s = attribute(tiny64, few, metric="js", components=("heads",), progress=False)
    from lens_bias.attribution.validation import metric_value

    eps = 1e-3  # HF attention runs its softmax in float32: keep eps well above that noise
    for layer in range(tiny64.cfg.n_layers):
        for h in range(tiny64.cfg.n_heads):
            vals = []
            for sign in (1, -1):
                def fn(z, hook, sign=sign, h=h):
                    z = z.clone()
                    z[:, :, h] = z[:, :, h] * (1 - sign * eps)
                    return z
                with attached(tiny64, [(f"blocks.{layer}.attn.hook_z", fn)]):
                    vals.append(metric_value(tiny64, few))
            fd = -(vals[0] - vals[1]) / (2 * eps)  # d m / d(ablation fraction), as a reduction
            # rel: the O(eps^2) truncation. abs: rounding noise, which does not shrink with the score: m
            # (~0.04) carries float32-softmax noise of a few eps32 * m per evaluation, and fd divides the
            # difference of two by 2 eps: 4 * 1.2e-7 * 0.04 / 1e-3 = 2e-5 (measured: up to 3e-6)
            assert float(s.heads[layer, h]) == pytest.approx(fd, rel=2e-3, abs=2e-5)


def test_padding_does_not_change_scores(tiny64):
    ps = build_pairs(domains=["finance"], subjects="names")
    by_len = sorted(ps.pairs, key=lambda p: len(p.black) + len(p.white))
    group = PairSet([by_len[0], by_len[-1], by_len[-2]])
    batched = attribute(tiny64, group, batch_size=3, progress=False)
    alone = [attribute(tiny64, PairSet([p]), batch_size=1, progress=False) for p in group]
    mean_neurons = sum(a.neurons for a in alone) / 3
    mean_heads = sum(a.heads for a in alone) / 3
    # other padding: float64 except the attention softmax (float32 in the bridge), so scores agree to
    # ~1e-6 of their scale (0.005-0.013) under a 1-ulp softmax perturbation; atol 1e-6 (~1e-4 of the
    # scale) and rtol 1e-4 leave ~100x, and a pad token leaking into a score (or a 1e-3 error) fails
    assert torch.allclose(batched.neurons, mean_neurons, atol=1e-6, rtol=1e-4)
    assert torch.allclose(batched.heads, mean_heads, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("estimator", ["ablate", "patch"])
def test_batches_mix_domains_but_each_pair_counts_for_its_own(tiny, estimator):
    """Batches are cut by length across domains; each domain's scores still equal attributing
    that domain alone, and the metric before too."""
    ps = build_pairs(domains=["finance", "hiring", "policing"]).sample(5)
    mixed = attribute(tiny, ps, estimator=estimator, batch_size=4, progress=False)
    for d, sub in ps.by_domain().items():
        alone = attribute(tiny, sub, estimator=estimator, batch_size=4, progress=False)
        for k in ("neurons", "heads"):
            # other batches (float32 model): sums of a * g over positions in float32, with cancellation, so
            # the error scales with the scores' scale (0.003-0.026): ~1e-7 of it measured, ~3e-6 under a
            # 1-ulp softmax perturbation; atol 1e-6 (>= 4e-5 of the scale) and rtol 1e-4 leave >10x
            torch.testing.assert_close(mixed.by_domain[d][k], alone.get(k), atol=1e-6, rtol=1e-4)
        # mean JS in float32 from other batches: ~1e-6 relative under a 1-ulp softmax perturbation
        assert mixed.settings["metric_before_by_domain"][d] == pytest.approx(
            alone.settings["metric_before"], rel=1e-5)


def test_scores_are_deterministic_and_round_trip(tiny, tmp_path):
    ps = build_pairs(domains=["finance", "hiring"]).sample(3)
    a = attribute(tiny, ps, progress=False)
    b = attribute(tiny, ps, progress=False)
    # same call: same ops, bit-identical
    assert torch.equal(a.neurons, b.neurons) and torch.equal(a.heads, b.heads)
    assert set(a.by_domain) == {"finance", "hiring"}
    # the overall score is the pair-weighted mean of the per-domain scores: the same float64 sums,
    # regrouped and cast to float32, so a few float32 ulps (~3e-9 at these 0.005-0.02 scores); atol 1e-6
    # (with allclose's rtol 1e-5) is far above that and far below a dropped pair (~1/3 of a score)
    assert torch.allclose(
        a.neurons, (a.by_domain["finance"]["neurons"] + a.by_domain["hiring"]["neurons"]) / 2, atol=1e-6)
    path = a.save(tmp_path / "s.safetensors")
    back = Scores.load(path)
    assert torch.equal(back.neurons, a.neurons) and torch.equal(back.heads, a.heads)  # save/load round trip
    assert back.settings["metric"] == "js" and back.settings["domains"] == ["finance", "hiring"]
    assert torch.equal(back.by_domain["hiring"]["heads"], a.by_domain["hiring"]["heads"])


def test_validate_on_tiny(tiny):
    ps = build_pairs().sample(2)
    s = attribute(tiny, ps, progress=False)
    v = validate(tiny, ps, s, k=20, n_random=10, progress=False)
    assert v["neurons"]["n"] == 30 and v["heads"]["n"] == 8
    assert v["neurons"]["spearman"] > 0.5
    # the sample's two parts, and the sign agreement, recomputed from the detail
    from scipy.stats import spearmanr

    r = v["neurons"]
    pred, exact = np.array(r["predicted"]), np.array(r["exact"])
    assert r["spearman_top"] == pytest.approx(spearmanr(pred[:20], exact[:20]).statistic)
    assert r["spearman_random"] == pytest.approx(spearmanr(pred[20:], exact[20:]).statistic)
    assert r["sign_agreement"] == pytest.approx(np.mean(np.sign(pred) == np.sign(exact)))
    assert math.isnan(v["heads"]["spearman_random"])  # 8 heads: all of them are in the top-k


@pytest.mark.parametrize("scorer", ["actdiff", "wanda", "random"])
def test_baselines_share_the_interface(tiny, scorer):
    ps = build_pairs(domains=["policing"]).sample(3)
    s = baseline_scores(tiny, ps, scorer)
    assert s.neurons.shape == (2, 128) and s.heads.shape == (2, 4)
    assert torch.isfinite(s.neurons).all()
    if scorer != "random":
        assert (s.neurons >= 0).all() and s.neurons.sum() > 0


def test_bad_estimator(tiny):
    from lens_bias import LensBiasError

    with pytest.raises(LensBiasError, match="estimator"):
        attribute(tiny, build_pairs().sample(1), estimator="magic")


def test_capability_cost_fisher_and_first_order(tiny):
    from lens_bias.attribution.patching import capability_cost
    from lens_bias.prompts.pairs import neutral_text

    texts = neutral_text()[:6]
    fo = capability_cost(tiny, texts, ablation="zero", estimator="first_order")
    fi = capability_cost(tiny, texts, ablation="zero", estimator="fisher")
    for kind in ("neurons", "heads"):
        assert (fi.get(kind) >= 0).all()
        # Cauchy-Schwarz over the same per-position terms: (sum x)^2 <= P sum x^2, both divided by
        # the N scored tokens; P (positions) < 2N here since every text has more than one token
        assert (2 * fi.get(kind) + 1e-12 >= fo.get(kind) ** 2).all()
        assert fi.get(kind).sum() > 0
    with pytest.raises(Exception, match="cost estimator"):
        capability_cost(tiny, texts, estimator="vibes")


def test_graddrop_drops_exactly_one_layer(tiny64, few):
    """Dropping layer l's outputs in the backward leaves the estimates of later layers unchanged
    and zeroes layer l's own; GradDrop scores are the AtP* mean of |estimate_l| over l."""
    from lens_bias.attribution.patching import _pair_pass
    from lens_bias.bridge import tokenizer_of

    tok = tokenizer_of(tiny64)
    chunk = few.pairs[:2]
    plain, _ = _pair_pass(tiny64, chunk, "js", "ablate", "zero", None, ("neurons", "heads"), tok)
    dropped, _ = _pair_pass(tiny64, chunk, "js", "ablate", "zero", None, ("neurons", "heads"), tok,
                            graddrop=True)
    L = tiny64.cfg.n_layers
    for kind in ("neurons", "heads"):
        for drop in range(L):
            for layer in range(L):
                d, p = dropped[(drop, kind, layer)], plain[(kind, layer)]
                if layer > drop:  # the same forward graph and the same backward ops above the gate: exact
                    assert torch.allclose(d, p, atol=1e-12)
                elif layer == drop:
                    assert d.abs().max() == 0  # zeros stay zeros
                else:  # earlier layers lose the paths through the dropped layer
                    assert not torch.allclose(d, p)
    ps = PairSet(list(chunk))
    s = attribute(tiny64, ps, graddrop=True, progress=False)
    for kind in ("neurons", "heads"):
        # per-pair estimates [pairs, units]: summed over the 2 pairs, then the AtP* mean of |.|
        want = torch.stack([torch.stack([dropped[(drop, kind, layer)].sum(0) for layer in range(L)])
                            for drop in range(L)]).div(2).abs().sum(0) / (L - 1)
        # the same per-pair estimates, summed in float64 in another order: float64 rounding only
        assert torch.allclose(s.get(kind), want.to(s.get(kind).dtype), atol=1e-12)
        assert (s.get(kind) >= 0).all()
    v = validate(tiny64, ps, s, k=3, n_random=2, kinds=("heads",), progress=False)
    assert v["heads"]["compared_with"] == "|exact|" and v["heads"]["n"] == 5


def test_validate_on_a_given_sample(tiny64, few):
    s = attribute(tiny64, few, components=("heads",), progress=False)
    comps = [Component("heads", 0, 1), Component("heads", 1, 2), Component("heads", 1, 0)]
    v = validate(tiny64, few, s, kinds=("heads",), components={"heads": comps}, progress=False)
    assert v["heads"]["components"] == [[0, 1], [1, 2], [1, 0]]
    exact = exact_effects(tiny64, few, comps, progress=False)
    # validate runs exact_effects itself, with the same batches: the same ops (default rtol 1e-5 is ample)
    assert torch.allclose(torch.tensor(v["heads"]["exact"], dtype=torch.float64), exact)


def test_spearman_difference_is_paired_antisymmetric_and_exact_at_the_point():
    """The point estimate is the plain difference of the two Spearman correlations; swapping the
    scorers negates it and its interval; two scorers that share most of their error differ beyond
    noise even when each one's own interval is wide (the units are resampled together)."""
    from lens_bias.attribution.validation import correlations, spearman_ci, spearman_difference

    g = torch.Generator().manual_seed(3)
    ref = torch.randn(40, generator=g, dtype=torch.float64)
    shared = torch.randn(40, generator=g, dtype=torch.float64) * 0.7
    a = ref + shared + torch.randn(40, generator=g, dtype=torch.float64) * 1.0
    b = ref + shared
    d, back = spearman_difference(a, b, ref), spearman_difference(b, a, ref)
    assert d["diff"] == pytest.approx(correlations(b, ref)[0] - correlations(a, ref)[0])
    assert back["diff"] == pytest.approx(-d["diff"]) and back["p"] == pytest.approx(d["p"])
    assert back["ci"][0] == pytest.approx(-d["ci"][1]) and back["ci"][1] == pytest.approx(-d["ci"][0])
    lo_a, hi_a = spearman_ci(a, ref)
    lo_b, hi_b = spearman_ci(b, ref)
    assert lo_b < hi_a  # each scorer's own intervals overlap ...
    assert d["ci"][0] > 0 and d["p"] < 0.05  # ... yet paired, b orders better beyond noise
    assert spearman_difference(a[:3], b[:3], ref[:3])["ci"] is None


def test_split_device_map_is_contiguous_and_balanced():
    """Layers in contiguous runs, every weight placed, and the devices' weight bytes within one
    layer of each other."""
    from lens_bias.model.devices import split_device_map
    from lens_bias.model.load import tiny_random_hf

    model, _ = tiny_random_hf(n_layers=8, d_mlp=1024)
    devs = ["cuda:0", "cuda:1", "cuda:2"]
    dm = split_device_map(model, devs)
    order = [devs.index(dm[f"model.layers.{i}"]) for i in range(8)]
    assert order == sorted(order) and set(order) == {0, 1, 2}
    for name, _ in model.named_parameters():
        assert any(name.startswith(k + ".") for k in dm), name
    size = {d: 0 for d in devs}
    for k, d in dm.items():
        size[d] += sum(p.numel() * p.element_size() for p in model.get_submodule(k).parameters())
    layer = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    assert max(size.values()) - min(size.values()) <= layer


def test_dispatched_model_gives_the_same_scores(few):
    """A model dispatched by accelerate (wrap(device_map=...): hooks on every module, the final
    hidden states routed back to the input device) scores exactly as the same weights on one
    device. Both "devices" are the CPU here; benchmarks/bench_multigpu.py checks two GPUs."""
    from lens_bias.hooks.capture import last_token_activations
    from lens_bias.model.load import tiny_random_hf, wrap

    one = wrap(*tiny_random_hf(n_layers=4), device="cpu")
    model, tok = tiny_random_hf(n_layers=4)
    split = wrap(model, tok, device_map={f"model.layers.{i}": "cpu" for i in range(4)}
                 | {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu",
                    "lm_head": "cpu"})
    assert (model.hf_device_map and hasattr(model.model.layers[0], "_hf_hook")
            and model.model._lens_bias_routed)
    for est in ("ablate", "patch"):
        a = attribute(one, few, estimator=est, progress=False)
        b = attribute(split, few, estimator=est, progress=False)
        # accelerate's hooks only move tensors (cpu -> cpu here): the same modules run the same kernels
        # on the same shapes, so bit-identical
        assert torch.equal(a.neurons, b.neurons) and torch.equal(a.heads, b.heads)
    sa, sb = last_token_activations(one, few), last_token_activations(split, few)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
