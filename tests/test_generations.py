"""The generation audit: the prompts, VADER and the crime lexicon on fixed strings, the gaps and
their intervals and paired tests on constructed data whose answer is known, and the audit on
tiny-random end to end."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED

from lens_bias.errors import PairsError
from lens_bias.measures.generations import (
    CRIME_WORDS,
    GenerationAudit,
    example_rows,
    gap_stat,
    generation_audit,
    generation_changes,
    mentions_crime,
    sentiment,
)
from lens_bias.prompts.generation import GenerationPrompt, generation_pairs, generation_templates, load_bold

BOLD = SHARED / "bold_race_prompts.json"


def test_the_bundled_prompts_are_open_ended_pairs_over_eight_situations():
    t = generation_templates()
    assert len(t["templates"]) >= 80 and len(t["domains"]) >= 8
    assert all(x["text"].startswith("{subject}") and not x["text"].endswith(".") for x in t["templates"])
    ps = generation_pairs()
    assert len(ps) == 2 * len(t["templates"])
    for b, w in zip(ps[::2], ps[1::2], strict=True):
        assert (b.group, w.group) == ("black", "white") and b.cluster == w.cluster and b.text != w.text
    assert generation_pairs(seed=1) != ps and len(generation_pairs(per_template=2)) == 4 * len(t["templates"])


def test_vader_and_the_lexicon_on_fixed_strings():
    s = sentiment(["The neighbours welcomed him with a warm smile.", "He was shot and killed.",
                   "He sat down."])
    assert s[0] > 0.5 and s[1] < -0.5 and s[2] == 0.0
    assert mentions_crime(["The police arrested him.", "He policed nothing: a copier jammed.",
                           "She was SUSPECTED of theft"]).tolist() == [1.0, 0.0, 1.0]
    assert {"police", "gun", "arrested", "robbery"} <= CRIME_WORDS


def _prompts(n: int, source: str = "pairs") -> list[GenerationPrompt]:
    return [GenerationPrompt(source, g, f"t{i}", "street", f"{g} {i}")
            for i in range(n) for g in ("black", "white")]


def test_gaps_on_constructed_texts():
    """Black prompts continued with crime and negative words, White ones neutrally: the gaps are
    known exactly, and their intervals exclude 0."""
    ps = _prompts(20)
    crime = ["He robbed a store and was arrested.", "He was arrested after a violent attack."]
    texts = [crime if p.group == "black" else ["He sat down.", "He read a book."] for p in ps]
    s = GenerationAudit.from_texts(ps, texts).summary(n_boot=300)
    assert s["gen_pairs_crime_black"] == 100.0 and s["gen_pairs_crime_white"] == 0.0
    assert s["gen_pairs_crime_gap"] == 100.0 and s["gen_pairs_n"] == 40
    assert s["gen_pairs_negative_gap"] == 100.0 and s["gen_pairs_sentiment_gap"] < -0.3
    assert s["gen_pairs_sentiment_gap_ci"][1] < 0 and "gen_bold_crime_gap" not in s


def test_gap_stat_is_the_difference_of_group_means_under_weights():
    cols = np.array([[2.0, 1, 0, 0], [0, 0, 1.0, 1], [4.0, 1, 0, 0], [0, 0, 3.0, 1]])
    assert gap_stat(cols, np.ones((1, 4)))[0] == pytest.approx(3.0 - 2.0)
    assert gap_stat(cols, np.array([[2.0, 1, 0, 1]]))[0] == pytest.approx(2.0 - 2.0)


def test_changes_are_paired_by_cluster():
    """After 'pruning' the Black prompts' continuations become neutral: the crime gap falls from
    100 to 0 beyond noise; an audit against itself changes nothing."""
    ps = _prompts(20)
    bad = [["He robbed a store."] if p.group == "black" else ["He sat down."] for p in ps]
    good = [["He sat down."] for _ in ps]
    before, after = GenerationAudit.from_texts(ps, bad), GenerationAudit.from_texts(ps, good)
    c = generation_changes(before, after, n_boot=300)
    assert c["gen_pairs_crime_gap"].before == 100.0 and c["gen_pairs_crime_gap"].after == 0.0
    assert c["gen_pairs_crime_gap"].p < 0.01 and not c["gen_pairs_crime_gap"].within_noise
    assert c["gen_pairs_crime_gap"].extra["n_clusters"] == 20
    same = generation_changes(before, before, n_boot=300)["gen_pairs_crime_gap"]
    assert same.diff == 0.0 and same.within_noise


def test_unpaired_bold_groups_weigh_each_prompt_once():
    ps = [GenerationPrompt("bold", "black", f"p{i}", "bold", "x") for i in range(3)] + \
         [GenerationPrompt("bold", "white", f"q{i}", "bold", "x") for i in range(5)]
    texts = [["He was arrested."]] * 3 + [["He was arrested."]] + [["He smiled."]] * 4
    s = GenerationAudit.from_texts(ps, texts).summary(n_boot=200)
    assert s["gen_bold_crime_black"] == 100.0 and s["gen_bold_crime_white"] == 20.0
    assert s["gen_bold_crime_gap"] == pytest.approx(80.0)
    _, _, signed = GenerationAudit.from_texts(ps, texts).columns("bold", "crime")
    assert signed.mean() == pytest.approx(80.0)


def test_the_audit_runs_on_tiny_and_examples_follow_a_fixed_rule(tiny):
    ps = generation_pairs()[:8]
    a = generation_audit(tiny, ps, k=2, max_new_tokens=5)
    assert len(a.texts) == 8 and all(len(t) == 2 for t in a.texts)
    assert generation_audit(tiny, ps, k=2, max_new_tokens=5).texts == a.texts  # fixed seeds
    rows = example_rows(a, a)
    assert [(r["template"], r["group"]) for r in rows] == [("g-street-01", "black"), ("g-street-01", "white")]


@pytest.mark.skipif(not BOLD.exists(), reason="needs ../shared/data/bold_race_prompts.json")
def test_bold_loader():
    ps = load_bold(BOLD, per_group=10)
    assert len(ps) == 20 and {p.group for p in ps} == {"black", "white"}
    assert len({p.cluster for p in ps}) == 20
    assert load_bold(BOLD, per_group=10) == ps and all(p.text == p.text.strip() for p in ps)
    assert len([p for p in load_bold(BOLD, per_group=0) if p.group == "black"]) == 721


def test_bold_loader_names_a_missing_file(tmp_path):
    with pytest.raises(PairsError, match="no BOLD file"):
        load_bold(tmp_path / "absent.json")
