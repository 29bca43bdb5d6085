"""A prompt's key-value cache through TransformerBridge: a continuation from it equals the full
forward pass, with and without ablation hooks, and nothing outside the helpers changes."""

from __future__ import annotations

import torch
from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

from lens_bias.hooks.ablation import ablate
from lens_bias.masks import PruningMask
from lens_bias.model.kv_cache import cache_is_faithful, continue_from, prompt_cache

IDS = torch.tensor([[1, 5, 9, 22, 40, 41, 42, 43], [1, 7, 7, 3, 90, 12, 13, 14]])


def test_a_continuation_equals_the_full_pass(tiny):
    assert cache_is_faithful(tiny, IDS, split=5)
    assert cache_is_faithful(tiny, IDS, split=1)


def test_the_cache_carries_the_ablation(tiny):
    cfg = tiny.cfg
    neurons = torch.ones(cfg.n_layers, cfg.d_mlp, dtype=torch.bool)
    heads = torch.ones(cfg.n_layers, cfg.n_heads, dtype=torch.bool)
    neurons[0, :30], heads[0, 1] = False, False
    with ablate(tiny, PruningMask(neurons, heads)):
        assert cache_is_faithful(tiny, IDS, split=4)


def test_repeated_rows_continue_each_prompt_several_ways(tiny):
    with torch.inference_mode():
        _, cache = prompt_cache(tiny, IDS[:, :5])
        cache.batch_repeat_interleave(2)
        tails = torch.tensor([[41, 42], [50, 51], [12, 13], [60, 61]])
        got = continue_from(tiny, tails, cache)
        for r in range(4):
            full = tiny(torch.cat([IDS[r // 2, :5], tails[r]])[None])
            assert torch.allclose(got[r], full[0, 5:], atol=1e-4)


def test_the_attention_bridge_is_left_as_it_was(tiny):
    before = AttentionBridge._update_kv_cache
    prompt_cache(tiny, IDS[:, :3])
    assert AttentionBridge._update_kv_cache is before
