"""Backward batches cut by a padded-token budget: from the free memory on a GPU (simulated here), the
user's --max-batch-tokens on any device, and attribution's batches obeying it with the same scores."""

import pytest
import torch

from lens_bias import build_pairs
from lens_bias.attribution import patching
from lens_bias.attribution.patching import attribute
from lens_bias.errors import LensBiasError
from lens_bias.model import memory as M


def test_cpu_has_no_memory_budget_and_the_user_cap_wins_everywhere(tiny):
    assert M.token_budget(tiny) is None and M.default_batch_pairs(tiny) == 16
    with M.max_batch_tokens(96):
        assert M.token_budget(tiny) == 96
        with M.max_batch_tokens(None):  # None inside: the device's own budget again
            assert M.token_budget(tiny) is None
        assert M.token_budget(tiny) == 96
    assert M.token_budget(tiny) is None
    for bad in (0, -5):
        with pytest.raises(LensBiasError, match="positive number of tokens"), M.max_batch_tokens(bad):
            pass


def test_gpu_budget_is_free_memory_less_the_margin_over_a_tokens_bytes(tiny, monkeypatch):
    gib = 1 << 30
    free = {"bytes": 20 * gib}
    monkeypatch.setattr(M, "model_device", lambda b: torch.device("cuda", 0))
    monkeypatch.setattr(M, "free_bytes", lambda d: free["bytes"])
    monkeypatch.setattr(M, "card_bytes", lambda d: 80 * gib)
    per = M.backward_bytes_per_token(tiny)
    assert M.token_budget(tiny) == int((20 * gib - 8 * gib) // per)
    assert M.token_budget(tiny, bytes_per_token=gib // 100) == 1200
    assert M.token_budget(tiny, bytes_per_token=gib) == M.MIN_TOKENS  # 12 would fit: the floor
    assert M.default_batch_pairs(tiny) == M.ACCELERATOR_BATCH_PAIRS
    free["bytes"] = 9 * gib  # a nearly full card: the floor
    assert M.token_budget(tiny) == int(gib // per)
    free["bytes"] = 7 * gib
    assert M.token_budget(tiny) == M.MIN_TOKENS
    with M.max_batch_tokens(1000):
        assert M.token_budget(tiny) == 1000


def test_attribution_batches_obey_the_cap_and_give_the_same_scores(tiny, monkeypatch):
    pairs = build_pairs(["hiring", "finance"]).sample(12, seed=0)
    ref = attribute(tiny, pairs, batch_size=64, progress=False)
    seen = []
    real = patching._pair_pass

    def spy(bridge, chunk, *a):
        seen.append((len(chunk), a[-1].ids.numel()))
        return real(bridge, chunk, *a)

    monkeypatch.setattr(patching, "_pair_pass", spy)
    with M.max_batch_tokens(160):
        capped = attribute(tiny, pairs, batch_size=64, progress=False)
    assert len(seen) > 1 and sum(n for n, _ in seen) == len(pairs)
    assert all(tokens <= 160 or n == 1 for n, tokens in seen) and max(n for n, _ in seen) > 1
    for k in ("neurons", "heads"):
        torch.testing.assert_close(capped.get(k), ref.get(k), rtol=1e-4, atol=1e-6)
