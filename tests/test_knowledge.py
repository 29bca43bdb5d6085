"""The knowledge probe: the loader and its refusals, the answer scoring against a one-item-at-a-time
reference and on answers of known rank, the scores and paired changes on constructed data, and on
SmolLM2: the probe is known, and a damaging ablation is flagged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lens_bias.errors import PairsError
from lens_bias.hooks.ablation import ablate
from lens_bias.masks import PruningMask
from lens_bias.measures.changes import run_tests
from lens_bias.measures.evaluation import EvalSet, evaluate
from lens_bias.measures.knowledge import (
    KnowledgeScores,
    answer_logprob_ranks,
    knowledge_changes,
    knowledge_damage,
    knowledge_scores,
    tokenized,
)
from lens_bias.prompts.knowledge import KnowledgeItem, load_knowledge
from lens_bias.prompts.pairs import PairSet
from lens_bias.prompts.splits import split_pairs


def test_the_bundled_probe_has_enough_facts_of_both_groups():
    items = load_knowledge()
    assert len(items) >= 80 and len({i.id for i in items}) == len(items)
    groups = [i.group for i in items]
    assert groups.count("black") >= 40 and groups.count("white") >= 40
    assert all(i.prompt and i.answer and not i.prompt.endswith(" ") for i in items)


@pytest.mark.parametrize("content, match", [
    ("not json", "not valid JSON"),
    ('{"facts": []}', "no 'items' list"),
    ('{"items": [{"id": "a", "group": "black", "prompt": "P"}]}', "item 0 lacks answer"),
    ('{"items": [{"id": "a", "group": "asian", "prompt": "P", "answer": "x"}]}', "group 'asian'"),
    ('{"items": [{"id": "a", "group": "white", "prompt": "P ", "answer": "x"}]}', "space"),
])
def test_a_bad_probe_file_is_refused_with_the_fix(tmp_path, content, match):
    f = tmp_path / "probe.json"
    f.write_text(content)
    with pytest.raises(PairsError, match=match):
        load_knowledge(f)
    with pytest.raises(PairsError, match="no knowledge probe file"):
        load_knowledge(tmp_path / "missing.json")


def test_a_probe_of_ones_own_loads(tmp_path):
    f = tmp_path / "probe.json"
    item = {"id": "x", "group": "other", "prompt": "Paris is in", "answer": "France"}
    f.write_text(json.dumps({"items": [item]}))
    assert load_knowledge(f) == [KnowledgeItem("x", "other", "Paris is in", "France", "")]


def _reference(bridge, prompt: list[int], answer: list[int]) -> tuple[float, int]:
    """One item alone: its unpadded row, log-softmax at every answer position, ranks by sorting."""
    with torch.inference_mode():
        logits = bridge(torch.tensor([prompt + answer]))[0].double()
    lp, worst = 0.0, 0
    for t, tok in enumerate(answer):
        row = F.log_softmax(logits[len(prompt) - 1 + t], -1)
        lp += float(row[tok])
        worst = max(worst, int(torch.argsort(row, descending=True).tolist().index(tok)))
    return lp, worst


def test_answer_scoring_equals_one_item_at_a_time(tiny):
    items = load_knowledge()[:12]
    prompts, answers = tokenized(tiny, items)
    lp, rank = answer_logprob_ranks(tiny, prompts, answers, batch_size=5)  # padded, mixed lengths
    for i in range(len(items)):
        ref_lp, ref_rank = _reference(tiny, prompts[i], answers[i])
        assert float(lp[i]) == pytest.approx(ref_lp, abs=1e-4)
        assert int(rank[i]) == ref_rank


def test_ranks_of_answers_of_known_rank(tiny):
    prompt = tokenized(tiny, [KnowledgeItem("a", "black", "The museum opened in", "x")])[0][0]
    with torch.inference_mode():
        order = torch.argsort(tiny(torch.tensor([prompt]))[0, -1], descending=True).tolist()
        second = torch.argsort(tiny(torch.tensor([prompt + [order[0]]]))[0, -1], descending=True).tolist()
    answers = [[order[0]], [order[2]], [order[0], second[4]], [order[7], second[0]]]
    _, rank = answer_logprob_ranks(tiny, [prompt] * 4, answers)
    assert rank.tolist()[:3] == [0, 2, 4]  # the top token; the third; the worst of the two tokens
    assert rank[3] >= 7
    s = KnowledgeScores(np.zeros(4), rank.numpy(), ["black"] * 4, list("abcd"), k=3)
    assert s.top(1).tolist() == [1, 0, 0, 0] and s.top(3).tolist() == [1, 1, 0, 0]


def test_scores_and_intervals_on_constructed_data():
    lp = np.array([-1.0, -2.0, -3.0, -4.0])
    s = KnowledgeScores(lp, np.array([0, 0, 5, 20]), ["black", "black", "white", "white"], list("abcd"), k=10)
    out = s.summary(n_boot=500)
    assert out["know_logprob"] == pytest.approx(-2.5) and out["know_logprob_black"] == pytest.approx(-1.5)
    assert out["know_logprob_white"] == pytest.approx(-3.5)
    assert out["know_top1"] == 50.0 and out["know_topk"] == 75.0 and out["know_n"] == 4
    lo, hi = out["know_logprob_ci"]
    assert -4.0 <= lo < -2.5 < hi <= -1.0


def _scores(lp, rank, n_black):
    n = len(lp)
    groups = ["black"] * n_black + ["white"] * (n - n_black)
    return KnowledgeScores(np.asarray(lp, float), np.asarray(rank), groups, [f"f{i}" for i in range(n)])


def test_paired_changes_and_the_damage_flag_on_constructed_data():
    rng = np.random.default_rng(0)
    lp = rng.normal(-3, 1, 60)
    before = _scores(lp, np.zeros(60, int), 30)
    hurt = _scores(lp - 1.0 - 0.1 * rng.random(60), np.r_[np.full(20, 3), np.zeros(40, int)], 30)
    c = knowledge_changes(before, hurt, n_boot=500)
    assert c["know_logprob"].diff == pytest.approx(float((hurt.logprob - lp).mean()))
    assert c["know_logprob"].p < 0.01 and not c["know_logprob"].within_noise
    assert c["know_top1"].test == "exact McNemar" and c["know_top1"].extra["b"] == 20
    assert c["know_top1"].diff == pytest.approx(-100 * 20 / 60)
    assert c["know_topk"].diff == 0.0  # rank 3 is still within the top 10
    tests = {k: v.to_dict() for k, v in c.items()}
    assert knowledge_damage(tests) == ["know_logprob", "know_logprob_black", "know_logprob_white",
                                       "know_top1"]
    # noise only: half the facts up, half down by the same amount
    jitter = _scores(lp + np.tile([0.05, -0.05], 30), np.zeros(60, int), 30)
    same = {k: v.to_dict() for k, v in knowledge_changes(before, jitter, n_boot=500).items()}
    assert knowledge_damage(same) == [] and same["know_logprob"]["within_noise"]
    # a gain is not damage
    gain = knowledge_changes(before, _scores(lp + 1, np.zeros(60, int), 30))
    better = {k: v.to_dict() for k, v in gain.items()}
    assert knowledge_damage(better) == []


def test_evaluate_scores_the_probe_with_and_without_a_mask(tiny):
    ev = EvalSet(_some_pairs(), knowledge=load_knowledge()[:20])
    before = evaluate(tiny, ev, None, knowledge=True, per_item=True)
    assert before["know_n"] == 20 and before["know_top1"] <= before["know_topk"]
    assert before["know_logprob"] < 0
    mask = PruningMask.keep_all(tiny)
    mask.neurons[:, :32] = False
    after = evaluate(tiny, ev, mask, knowledge=True, per_item=True)
    with ablate(tiny, mask):
        direct = knowledge_scores(tiny, ev.knowledge)
    assert after["know_logprob"] == pytest.approx(float(direct.logprob.mean()))
    t = run_tests(before, after, after)
    assert {"know_logprob", "random_know_logprob", "know_topk", "random_know_topk"} <= set(t)
    assert "know_n" not in evaluate(tiny, ev, None)  # only when asked


def _some_pairs() -> PairSet:
    return split_pairs(None, ["finance"], 2, 2)[1]


def test_smollm2_knows_the_probe_and_a_damaging_ablation_is_flagged(smol, tiny):
    """The probe measures knowledge: SmolLM2 ranks most answers in its top 10 (a random model does
    not), and zeroing half the MLP neurons of its middle layers lowers that knowledge beyond noise."""
    items = load_knowledge()
    before = knowledge_scores(smol, items)
    assert before.top(10).mean() > 0.7 and before.top(1).mean() > 0.4
    assert knowledge_scores(tiny, items).top(10).mean() < 0.1
    mask = PruningMask.keep_all(smol)
    mask.neurons[10:20, ::2] = False
    with ablate(smol, mask):
        after = knowledge_scores(smol, items)
    tests = {k: v.to_dict() for k, v in knowledge_changes(before, after).items()}
    assert "know_logprob" in knowledge_damage(tests) and tests["know_logprob"]["diff"] < -0.5
