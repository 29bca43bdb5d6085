"""Generation with a key-value cache: greedy equals the hooked greedy loop token for token (with
and without ablation), sampling equals a full-recompute reference with the same uniforms, the
draws do not depend on batching, and the sampler inverts the right distribution (top-k, top-p)."""

from __future__ import annotations

import pytest
import torch

from lens_bias.hooks.ablation import ablate
from lens_bias.masks import PruningMask
from lens_bias.measures.metrics import greedy_continuations
from lens_bias.model.sampling import decode, pick_tokens, sample_continuations

PROMPTS = ["A Black man walked into the shop and", "A White man walked into the shop and",
           "Jamal called the landlord, and the landlord", "The nurse said that"]


def _mask(model) -> PruningMask:
    cfg = model.cfg
    neurons = torch.ones(cfg.n_layers, cfg.d_mlp, dtype=torch.bool)
    heads = torch.ones(cfg.n_layers, cfg.n_heads, dtype=torch.bool)
    neurons[0, :40], heads[1, 1] = False, False
    return PruningMask(neurons, heads)


def _texts(model, ids) -> list[str]:
    return [decode(model.lens_bias_tokenizer, s[0]) for s in ids]


def test_greedy_equals_the_hooked_greedy_loop(tiny):
    """The cached greedy tokens are those of greedy_continuations (a full forward per token)."""
    tok = tiny.lens_bias_tokenizer
    got = sample_continuations(tiny, PROMPTS, max_new_tokens=10, temperature=0.0, batch_size=2)
    want = greedy_continuations(tiny, PROMPTS, max_new_tokens=10)
    assert [tok.decode(s[0], skip_special_tokens=True) for s in got] == want
    with ablate(tiny, _mask(tiny)):
        pruned = sample_continuations(tiny, PROMPTS, max_new_tokens=10, temperature=0.0)
        assert [tok.decode(s[0], skip_special_tokens=True) for s in pruned] == \
            greedy_continuations(tiny, PROMPTS, max_new_tokens=10)
    assert pruned != got  # the ablation changed what it writes


def _reference(model, prompt: str, u: torch.Tensor) -> list[int]:
    """One sample without a cache: the whole sequence through the model at every step."""
    tok = model.lens_bias_tokenizer
    ids = [tok.bos_token_id, *tok(prompt, add_special_tokens=False)["input_ids"]]
    out = []
    for step in range(len(u)):
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[:, -1]
        nxt = int(pick_tokens(logits, u[step:step + 1]))
        out.append(nxt)
        ids.append(nxt)
    return out


def test_sampling_equals_a_full_recompute_with_the_same_uniforms(tiny):
    got = sample_continuations(tiny, PROMPTS, k=3, max_new_tokens=6, seed=7, batch_size=12)  # one batch
    u = torch.rand(len(PROMPTS), 3, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for i, p in enumerate(PROMPTS):
        for s in range(3):
            assert got[i][s] == _reference(tiny, p, u[i, s])
    assert len({tuple(s) for s in got[0]}) > 1  # three different samples


def test_draws_do_not_depend_on_the_batch(tiny):
    a = sample_continuations(tiny, PROMPTS, k=2, max_new_tokens=5, seed=3, batch_size=64)
    b = sample_continuations(tiny, PROMPTS, k=2, max_new_tokens=5, seed=3, batch_size=2)
    assert a == b
    assert sample_continuations(tiny, PROMPTS, k=2, max_new_tokens=5, seed=4) != a


def test_the_nucleus_sampler_inverts_its_distribution():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1], dtype=torch.float64)
    u = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    logits = probs.log().expand(1000, 4)
    counts = torch.bincount(pick_tokens(logits, u, top_p=1.0), minlength=4)
    assert counts.tolist() == [500, 250, 150, 100]
    counts = torch.bincount(pick_tokens(logits, u, top_p=0.8), minlength=4)  # nucleus {0, 1, 2}
    assert counts.tolist() == [556, 277, 167, 0]
    assert pick_tokens(logits[:1], u[:1], temperature=0.0).tolist() == [0]
    # a lower temperature sharpens
    cold = torch.bincount(pick_tokens(logits, u, top_p=1.0, temperature=0.5), minlength=4)
    assert cold[0] > 500


def test_decode_stops_at_eos(tiny):
    tok = tiny.lens_bias_tokenizer
    ids = tok("hello there", add_special_tokens=False)["input_ids"]
    assert decode(tok, [*ids, tok.eos_token_id, *ids]) == tok.decode(ids)


@pytest.mark.parametrize("k", [1, 2])
def test_shapes(tiny, k):
    out = sample_continuations(tiny, PROMPTS[:2], k=k, max_new_tokens=3)
    assert [len(s) for s in out] == [k, k] and all(len(t) == 3 for s in out for t in s)


def test_top_k_keeps_the_k_most_likely_tokens():
    probs = torch.tensor([0.1, 0.5, 0.15, 0.25], dtype=torch.float64)
    u = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000
    logits = probs.log().expand(1000, 4)
    counts = torch.bincount(pick_tokens(logits, u, top_k=2), minlength=4)  # {1, 3}, renormalized
    assert counts.tolist() == [0, 667, 0, 333]
    assert torch.equal(pick_tokens(logits, u, top_k=0), pick_tokens(logits, u, top_k=4))
    # top-p applies within the top k (Hugging Face's order): 0.5 / 0.9 of the top-3 mass is token 1
    assert torch.bincount(pick_tokens(logits, u, top_k=3, top_p=0.5), minlength=4).tolist() == [0, 1000, 0, 0]
