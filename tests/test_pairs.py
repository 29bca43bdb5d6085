import json

import pytest
from conftest import CROWS
from hypothesis import given, settings
from hypothesis import strategies as st

from lens_bias import PairsError, build_pairs, load_crows_pairs, load_jsonl, token_report
from lens_bias.prompts.pairs import PairSet, load_names, load_templates


def test_bundled_templates_cover_domains():
    data = load_templates()
    domains = {"finance", "commerce", "hiring", "policing", "education", "general"}
    assert domains <= set(data["domains"])
    for d in domains:
        ts = [t for t in data["templates"] if t["domain"] == d]
        assert len(ts) >= 6, d
        for t in ts:
            assert t["text"].count("{subject}") == 1, t["id"]
    names = load_names()
    assert "Bertrand" in names["names"]["source"]


def test_pairs_differ_only_in_subject():
    ps = build_pairs(subjects="both")
    assert len(ps) > 500
    for p in ps.pairs[:200]:
        assert p.black != p.white
        t = load_templates()
        tmpl = next(x for x in t["templates"] if x["id"] == p.template)
        pre, post = tmpl["text"].split("{subject}")
        assert p.black.startswith(pre) and p.black.endswith(post)
        assert p.white.startswith(pre) and p.white.endswith(post)


def test_jsonl_round_trip(tmp_path):
    ps = build_pairs(domains=["finance", "commerce"]).sample(5)
    f = tmp_path / "p.jsonl"
    ps.to_jsonl(f)
    back = load_jsonl(f)
    assert back.pairs == ps.pairs


def test_jsonl_malformed_line_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    good = json.dumps({"id": "a", "black": "A Black man", "white": "A White man"})
    f.write_text(good + "\n" + "{not json\n")
    with pytest.raises(PairsError, match=r"bad.jsonl:2: malformed JSON"):
        load_jsonl(f)


@pytest.mark.parametrize(
    "line, message",
    [
        ({"id": "a", "white": "x"}, "missing field"),
        ({"id": "a", "black": "same", "white": "same"}, "identical"),
        ({"id": "a", "black": "b", "white": "w", "pos": ["yes"]}, "both 'pos' and 'neg'"),
        ({"id": "a", "black": "", "white": "w"}, "non-empty"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_jsonl_bad_entries(tmp_path, line, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(line) + "\n")
    with pytest.raises(PairsError, match=message):
        load_jsonl(f)


def test_jsonl_empty_and_non_utf8(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(PairsError, match="no pairs"):
        load_jsonl(empty)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"black": "caf\xe9", "white": "x"}\n')
    with pytest.raises(PairsError, match="UTF-8"):
        load_jsonl(latin)
    with pytest.raises(PairsError, match="not found"):
        load_jsonl(tmp_path / "nope.jsonl")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_jsonl_fuzz_only_project_errors(tmp_path_factory, data):
    f = tmp_path_factory.mktemp("fz") / "f.jsonl"
    f.write_bytes(data)
    try:
        load_jsonl(f)
    except PairsError:
        pass


def test_split_by_template_is_disjoint_and_seeded():
    ps = build_pairs()
    train, test = ps.split(by="template", seed=3)
    assert len(train) + len(test) == len(ps)
    assert not set(train.templates) & set(test.templates)
    assert set(test.domains) == set(ps.domains)  # every domain keeps held-out templates
    again = ps.split(by="template", seed=3)
    assert again[1].pairs == test.pairs
    assert ps.split(by="template", seed=4)[1].templates != test.templates


def test_split_by_subject_and_both():
    ps = build_pairs()
    train, test = ps.split(by="subject")
    assert not {p.subject for p in train} & {p.subject for p in test}
    train, test = ps.split(by="both")
    assert not set(train.templates) & set(test.templates)
    assert not {p.subject for p in train} & {p.subject for p in test}


def test_sample_per_domain_covers_templates():
    ps = build_pairs()
    s = ps.sample(12, seed=1)
    for d, sub in s.by_domain().items():
        assert len(sub) == 12
        assert len(sub.templates) >= min(8, len(ps.filter(domains=[d]).templates))


def test_unknown_domain():
    with pytest.raises(PairsError, match="unknown domain"):
        build_pairs(domains=["astrology"])


@pytest.mark.skipif(not CROWS.exists(), reason="needs ../shared/data/crows_pairs_anonymized.csv")
def test_crows_subsets():
    """The headline subset is the 282 race-color rows naming a Black group (the count SOURCES.md
    documents); 252 of them contrast Black with White; the race-color category has 516 rows."""
    black = load_crows_pairs(CROWS)
    assert len(black) == 282
    bw = load_crows_pairs(CROWS, subset="black-white")
    assert len(bw) == 252 and {c.id for c in bw} <= {c.id for c in black}
    rc = load_crows_pairs(CROWS, subset="race-color")
    assert len(rc) == 516 and sum(c.direction == "antistereo" for c in rc) == 43
    assert len(load_crows_pairs(CROWS, subset="all")) == 1508
    assert sum("black" in c.subsets for c in rc) == 282
    # sent_more is kept as `more` whatever the direction
    import csv

    with open(CROWS, encoding="utf-8-sig", newline="") as f:
        first_anti = next(r for r in csv.DictReader(f) if r["stereo_antistereo"] == "antistereo")
    c = next(c for c in load_crows_pairs(CROWS, subset="all") if c.direction == "antistereo")
    assert (c.more, c.less) == (first_anti["sent_more"], first_anti["sent_less"])


def test_crows_wrong_columns(tmp_path):
    f = tmp_path / "c.csv"
    f.write_text("a,b\n1,2\n")
    with pytest.raises(PairsError, match="missing column"):
        load_crows_pairs(f)


def test_token_report(tiny):
    from lens_bias.bridge import tokenizer_of

    ps = PairSet(build_pairs(subjects="names").pairs[:10])
    rep = token_report(ps, tokenizer_of(tiny))
    assert rep["equal"] + rep["unequal"] == 10
    assert all(r["black_tokens"] > 0 for r in rep["pairs"])
