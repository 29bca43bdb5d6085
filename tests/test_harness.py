"""The lm-evaluation-harness task configs: every config parses and names functions that exist, the
datasets hold exactly lens_bias's rows, and the scoring functions agree with lens_bias's own BBQ,
CrowS-Pairs and knowledge scores on the same log-likelihoods (lm_eval itself is not installed here:
the hand check against a real model is in docs/harness.md)."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from conftest import CROWS, SHARED

from lens_bias.harness import TASKS_DIR, tasks
from lens_bias.measures.bbq import BbqScores
from lens_bias.measures.capability import CrowsScores
from lens_bias.prompts.bbq import load_bbq
from lens_bias.prompts.corpora import load_crows_pairs
from lens_bias.prompts.knowledge import load_knowledge

BBQ = SHARED / "bbq_race_ethnicity.jsonl"


class _Loader(yaml.SafeLoader):
    """YAML with lm-evaluation-harness's ``!function module.name`` tag."""


_Loader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))


def _configs() -> dict[str, dict]:
    return {p.stem: yaml.load(p.read_text(), Loader=_Loader) for p in sorted(TASKS_DIR.glob("*.yaml"))}


def test_every_config_parses_and_names_existing_functions():
    configs = _configs()
    assert set(configs) == {"lens_bias_crows_black", "lens_bias_crows_race_color", "lens_bias_bbq_race",
                            "lens_bias_knowledge"}
    for name, c in configs.items():
        assert c["task"] == name and c["test_split"] == "test"
        refs = re.findall(r"\('function', '([\w.]+)'\)", repr(c))
        assert refs
        assert all(r.startswith("tasks.") and callable(getattr(tasks, r.split(".")[1])) for r in refs)


def test_the_folder_is_printed_for_include_path():
    out = subprocess.run([sys.executable, "-m", "lens_bias.harness"], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == str(TASKS_DIR)


@pytest.fixture
def plain(monkeypatch):
    monkeypatch.setattr(tasks, "_dataset", lambda rows: {"test": rows})


@pytest.mark.skipif(not CROWS.exists(), reason="needs ../shared/data/crows_pairs_anonymized.csv")
def test_crows_rows_and_rate_match_lens_bias(plain):
    rows = tasks.crows_black(str(CROWS))["test"]
    ours = load_crows_pairs(CROWS, "black")
    assert len(rows) == 282 == len(ours) and [r["sent_more"] for r in rows] == [c.more for c in ours]
    assert len(tasks.crows_race_color(str(CROWS))["test"]) == 516
    rng = np.random.default_rng(0)
    more, less = rng.normal(-40, 5, 282), rng.normal(-40, 5, 282)
    less[:3] = more[:3]  # ties are not stereotyped in either
    results = [tasks.crows_results(r, [(m, False), (k, False)])
               for r, m, k in zip(rows, more, less, strict=True)]
    rate = 100 * np.mean([r["pct_stereotype"] for r in results])
    ours_rate = CrowsScores(ours, list(more), list(less)).summary(["black"])["black"]["rate"]
    assert rate == pytest.approx(ours_rate)


@pytest.mark.skipif(not BBQ.exists(), reason="needs ../shared/data/bbq_race_ethnicity.jsonl")
def test_bbq_scores_match_lens_bias_on_the_same_answers(plain):
    docs = tasks.bbq_black_white(str(BBQ))["test"]
    rows = load_bbq(BBQ)
    assert len(docs) == 800 and [d["context"] for d in docs] == [r.context for r in rows]
    ll = np.random.default_rng(1).normal(size=(800, 3))
    per_doc = [tasks.bbq_results(d, [(x, False) for x in row]) for d, row in zip(docs, ll, strict=True)]
    ours = BbqScores.from_answers(rows, ll.argmax(1)).summary(n_boot=10)
    for metric, agg, key in (("acc_ambig", tasks.bbq_acc_ambig, "bbq_acc_ambig"),
                             ("acc_disambig", tasks.bbq_acc_disambig, "bbq_acc_disambig"),
                             ("s_dis", tasks.bbq_s_dis, "bbq_s_dis"),
                             ("s_amb", tasks.bbq_s_amb, "bbq_s_amb")):
        assert agg([p[metric] for p in per_doc]) == pytest.approx(ours[key]), metric


def test_knowledge_rows_and_scores(plain):
    docs = tasks.knowledge()["test"]
    assert [d["answer"] for d in docs] == [i.answer for i in load_knowledge()]
    assert tasks.knowledge_results(docs[0], [(-1.5, True)]) == {"logprob": -1.5, "top1": 1.0}
    assert tasks.knowledge_target(docs[0]) == " slavery"  # the harness adds no delimiter to this target


def test_a_missing_file_names_the_fix(monkeypatch, plain):
    monkeypatch.setattr(tasks, "default_crows_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="crows_file"):
        tasks.crows_black()
