import json
from collections import Counter

import pytest

from lens_bias import PairsError, token_report
from lens_bias.prompts.pairs import ContrastivePair, PairSet, load_templates, subject_list
from lens_bias.prompts.sentences import (
    build_sentence_pairs,
    load_sentence_pairs,
    load_sentence_templates,
    stereotype_signs,
)
from lens_bias.prompts.splits import template_split


def _templates() -> dict:
    return {t["id"]: t for t in load_sentence_templates()["templates"]}


def test_bundled_sentence_file_loads_and_validates():
    data = load_sentence_templates()
    assert data["domains"] == load_templates()["domains"]  # the same six domains as the prompts
    ts = data["templates"]
    assert len({t["id"] for t in ts}) == len(ts)
    assert len({t["text"] for t in ts}) == len(ts)
    per_domain = Counter(t["domain"] for t in ts)
    assert set(per_domain) == set(data["domains"])
    assert min(per_domain.values()) >= 8, per_domain
    for t in ts:
        text = t["text"]
        assert text.startswith("{subject} ") and text.count("{subject}") == 1, t["id"]
        assert text.endswith(".") and text.count(".") == 1, t["id"]  # one sentence
        assert t["stereotyped"] in ("black", "white"), t["id"]
        assert t.get("gender", "male") in ("male", "female"), t["id"]
        assert t["id"] == f"s-{t['domain']}-{t['id'].rsplit('-', 1)[1]}"
    black = sum(t["stereotyped"] == "black" for t in ts) / len(ts)
    assert 0.55 <= black <= 0.75, black  # about two thirds about Black people, one third about White
    for d in data["domains"]:
        assert {t["stereotyped"] for t in ts if t["domain"] == d} == {"black", "white"}, d


def test_sentence_pairs_differ_only_in_the_subject():
    ps = build_sentence_pairs()
    assert len(ps) >= 150
    assert ps.domains == sorted(load_templates()["domains"])
    subjects = {sid: (b, w, g) for sid, b, w, g in subject_list("both")}
    tmpl = _templates()
    assert len({p.id for p in ps}) == len(ps)
    for p in ps:
        t = tmpl[p.template]
        b, w, gender = subjects[p.subject]
        assert p.id == f"{t['id']}:{p.subject}" and p.domain == t["domain"]
        assert p.black == t["text"].replace("{subject}", b) and p.white == t["text"].replace("{subject}", w)
        assert p.black != p.white
        assert p.pos == () and p.neg == () and not p.numeric
        if "gender" in t:
            assert gender == t["gender"], p.id
    # every template is filled with every subject of its gender
    for tid, t in tmpl.items():
        want = sum(1 for g in (s[2] for s in subjects.values()) if t.get("gender") in (None, g))
        assert len(ps.filter(templates=[tid])) == want, tid
    assert len(build_sentence_pairs(["finance"], subjects="groups").templates) >= 8
    assert {p.subject.split("-")[0] for p in build_sentence_pairs(subjects="names")} == {"name"}


def test_token_counts_are_non_empty(tiny):
    rep = token_report(build_sentence_pairs(subjects="names").sample(10), tiny.lens_bias_tokenizer)
    assert rep["pairs"] and all(r["black_tokens"] > 0 and r["white_tokens"] > 0 for r in rep["pairs"])


def test_stereotype_signs_match_the_templates(tmp_path):
    ps = build_sentence_pairs()
    signs = stereotype_signs(ps)
    tmpl = _templates()
    assert signs == [1 if tmpl[p.template]["stereotyped"] == "black" else -1 for p in ps]
    assert signs.count(1) > signs.count(-1) > 0
    # a user's own pairs, read from a JSONL file, have no bundled template: sign 0
    own = [ContrastivePair("mine", "custom", "mine", "Jamal paid the bill.", "Greg paid the bill."),
           ContrastivePair("s-finance-01:x", "finance", "s-finance-01", "Jamal paid the bill.",
                           "Greg paid the bill.")]
    f = tmp_path / "own.jsonl"
    PairSet(own + ps.pairs[:2]).to_jsonl(f)
    assert stereotype_signs(load_sentence_pairs(f)) == [0, 0] + signs[:2]


def test_template_split_keeps_held_out_templates_unseen():
    ps = build_sentence_pairs()
    train, held = template_split(ps, held_out=0.25, seed=1)
    assert len(train) + len(held) == len(ps)
    assert not set(train.templates) & set(held.templates)
    assert held.domains == ps.domains  # every domain keeps held-out sentences
    tmpl = _templates()
    seen_text = {tmpl[t]["text"] for t in train.templates}
    assert not {tmpl[t]["text"] for t in held.templates} & seen_text
    signs = stereotype_signs(held)
    assert 0 not in signs and set(signs) == {-1, 1}


def _good() -> dict:
    return {"version": 1, "domains": {"housing": "renting and buying homes"},
            "templates": [{"id": "s-housing-01", "domain": "housing", "stereotyped": "black",
                           "text": "{subject} was turned away by the landlord."},
                          {"id": "s-housing-02", "domain": "housing", "stereotyped": "white",
                           "gender": "female", "text": "{subject} bought a lake house with her savings."}]}


def test_user_template_file_builds_pairs_and_signs(tmp_path):
    f = tmp_path / "sentences.json"
    f.write_text(json.dumps(_good()))
    assert load_sentence_templates(f)["domains"] == {"housing": "renting and buying homes"}
    ps = build_sentence_pairs(path=f, subjects="groups")
    assert ps.domains == ["housing"]
    assert len(ps.filter(templates=["s-housing-02"])) == 2  # two female group phrases
    assert set(stereotype_signs(ps, path=f)) == {-1, 1}
    assert set(stereotype_signs(ps)) == {0}  # not bundled templates
    with pytest.raises(PairsError, match="unknown domain"):
        build_sentence_pairs(["finance"], path=f)


def _broken(change) -> dict:
    data = _good()
    change(data["templates"][0])
    return data


@pytest.mark.parametrize("data, message", [
    (_broken(lambda t: t.update(text="The landlord turned the tenant away.")),
     r"must start with the one \{subject\}"),
    (_broken(lambda t: t.update(text="The landlord turned {subject} away.")),
     r"must start with the one \{subject\}"),
    (_broken(lambda t: t.update(text="{subject} met {subject}.")), r"must start with the one \{subject\}"),
    (_broken(lambda t: t.update(text="{subject} was turned away")), "ending with a period"),
    (_broken(lambda t: t.update(domain="sports")), "unknown domain 'sports'; use one of housing"),
    (_broken(lambda t: t.update(stereotyped="both")),
     "'stereotyped' is 'both'; set it to 'black' or 'white'"),
    (_broken(lambda t: t.pop("stereotyped")), "'stereotyped' is None"),
    (_broken(lambda t: t.update(gender="neutral")), "'gender' is 'neutral'"),
    (_broken(lambda t: t.update(id="s-housing-02")), "duplicate template id"),
    ({"domains": {}, "templates": []}, "no templates"),
    ([1, 2], "not a sentence-template file"),
])
def test_malformed_template_file_gives_a_clear_error(tmp_path, data, message):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(data))
    with pytest.raises(PairsError, match=message) as e:
        load_sentence_templates(f)
    assert "bad.json" in str(e.value)


def test_unreadable_template_files(tmp_path):
    with pytest.raises(PairsError, match="not found"):
        load_sentence_templates(tmp_path / "nope.json")
    f = tmp_path / "bad.json"
    f.write_text('{"domains": {')
    with pytest.raises(PairsError, match="malformed JSON"):
        load_sentence_templates(f)


def test_load_sentence_pairs_bundled_and_from_file(tmp_path):
    s = load_sentence_pairs(domains=["policing", "general"], per_domain=9, seed=2)
    assert {d: len(p) for d, p in s.by_domain().items()} == {"general": 9, "policing": 9}
    assert len(s.templates) == 18  # round-robin: every template of the two domains once
    assert len(load_sentence_pairs()) == len(build_sentence_pairs())
    with pytest.raises(PairsError, match="unknown domain"):
        load_sentence_pairs(domains=["sports"])
    f = tmp_path / "s.jsonl"
    s.to_jsonl(f)
    assert load_sentence_pairs(f).pairs == s.pairs
    assert load_sentence_pairs(f, domains=["general"]).domains == ["general"]
    assert len(load_sentence_pairs(f, per_domain=2, sample_file=True)) == 4
    with pytest.raises(PairsError, match="no pairs in domain"):
        load_sentence_pairs(f, domains=["finance"])
