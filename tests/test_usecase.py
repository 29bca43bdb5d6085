"""Pairs for your own use case: ``lens-bias pairs`` and :mod:`lens_bias.prompts.custom` (tiny-random only)."""

import csv
import json

import pytest
from typer.testing import CliRunner

from lens_bias import build_pairs, load_jsonl, token_report
from lens_bias.cli.main import app
from lens_bias.cli.pairs import write_pairs
from lens_bias.errors import PairsError
from lens_bias.measures.metrics import word_tokens
from lens_bias.model.load import tiny_random_hf
from lens_bias.prompts.custom import load_pairs_csv, pairs_from_dataset, pairs_from_templates, token_warnings
from lens_bias.prompts.pairs import DATA, PairSet, subject_list

runner = CliRunner()

TEMPLATES = [
    {"id": "housing-01", "domain": "housing",
     "text": "{subject} applied to rent the apartment. The landlord decided to",
     "pos": ["accept"], "neg": ["reject"]},
    {"id": "housing-02", "domain": "housing",
     "text": "The neighbours heard that {subject} is moving in. They are"},
    {"id": "loans-01", "domain": "lending", "text": "{subject} asked the bank for a loan. Answer yes or no:",
     "pos": "yes", "neg": "no"},
]
NAMES = {"black": ["Lakisha", "Jamal"], "white": ["Emily", "Greg"]}


@pytest.fixture(scope="module")
def tok():
    return tiny_random_hf()[1]


def _write(path, obj):
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _pairs_cmd(*args):
    return runner.invoke(app, ["pairs", "--model", "tiny-random", *map(str, args)])


def test_pairs_command_writes_exactly_the_expected_pairs(tmp_path):
    out = tmp_path / "pairs.jsonl"
    r = _pairs_cmd("--templates", _write(tmp_path / "t.json", TEMPLATES), "--names",
                   _write(tmp_path / "n.json", NAMES), "--subjects", "names", "-o", out)
    assert r.exit_code == 0, r.output
    got = [json.loads(line) for line in out.read_text().splitlines()]
    want = [{"id": f"{t['id']}:name-{b}-{w}", "domain": t["domain"], "template": t["id"],
             "black": t["text"].replace("{subject}", b), "white": t["text"].replace("{subject}", w),
             "pos": [t["pos"]] if isinstance(t.get("pos"), str) else t.get("pos", []),
             "neg": [t["neg"]] if isinstance(t.get("neg"), str) else t.get("neg", []),
             "subject": f"name-{b}-{w}"}
            for t in TEMPLATES for b, w in zip(NAMES["black"], NAMES["white"], strict=True)]
    assert got == want
    assert load_jsonl(out).templates == ["housing-01", "housing-02", "loans-01"]
    rows = [line.split() for line in r.output.splitlines()]
    assert (["housing", "(all)", "4"] in rows and ["lending", "loans-01", "2"] in rows
            and ["housing", "housing-02", "2"] in rows)
    assert f"wrote 6 pairs (3 templates) to {out}" in r.output
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_pairs_command_bundled_subjects_from_jsonl_templates(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text("\n".join(json.dumps(t) for t in TEMPLATES[:2]) + "\n", encoding="utf-8")
    r = _pairs_cmd("--templates", f, "-o", tmp_path / "p.jsonl")
    assert r.exit_code == 0, r.output
    ps = load_jsonl(tmp_path / "p.jsonl")
    assert len(ps) == 2 * len(subject_list("both"))
    assert {p.subject for p in ps} == {s[0] for s in subject_list("both")}
    assert ps.filter(templates=["housing-02"]).filter(directional=True).pairs == []


def test_pairs_command_warns_on_uneven_names_and_multi_token_words(tmp_path, tok):
    names = _write(tmp_path / "n.json", {"black": ["Zqxwvbrtlekisha", "Jamal"], "white": ["Emily", "Greg"]})
    t = _write(tmp_path / "t.json", [{**TEMPLATES[0], "pos": ["accept", "welcome"]}])
    r = _pairs_cmd("--templates", t, "--names", names, "--subjects", "names", "-o", tmp_path / "p.jsonl")
    assert r.exit_code == 0, r.output
    assert ("warning: 1 of 2 pairs have Black and White prompts of different token counts: "
            "'Zqxwvbrtlekisha' vs 'Emily'" in r.output)
    assert "'Jamal' vs" not in r.output
    assert "scored by their first token only: 'welcome' (5 tokens)" in r.output
    # the checks count as token_report and word_tokens do (what measure and the run report use)
    ps = load_jsonl(tmp_path / "p.jsonl")
    assert [x["id"] for x in token_report(ps, tok)["pairs"] if x["diff"]] == [
        "housing-01:name-Zqxwvbrtlekisha-Emily"]
    assert word_tokens(tok, ps.pairs).multi_token == {"welcome": 5}


def test_token_warnings_are_silent_on_even_pairs_and_name_clashing_words(tok):
    even = build_pairs(["finance"], subjects="names").filter(directional=False)
    assert token_report(even, tok)["unequal"] == 0 and token_warnings(even, tok) == []
    ps, _ = pairs_from_templates([{**TEMPLATES[0], "pos": ["yes"], "neg": ["yesterday"]}], subjects="groups")
    assert any("share their first token" in w and "'yes'/'yesterday'" in w for w in token_warnings(ps, tok))


def test_bundled_templates_through_the_same_expansion_as_build_pairs():
    ps, warnings = pairs_from_templates(DATA / "templates.json")
    assert ps.pairs == build_pairs().pairs and warnings == []
    ps, _ = pairs_from_templates(DATA / "templates.json", subjects="names", names=DATA / "names.json")
    assert ps.pairs == build_pairs(subjects="names").pairs


def test_template_without_subject_is_refused_and_nothing_is_written(tmp_path):
    bad = [TEMPLATES[0],
           {"id": "housing-07", "domain": "housing", "text": "The landlord met the new tenant."}]
    out = tmp_path / "out" / "pairs.jsonl"
    r = _pairs_cmd("--templates", _write(tmp_path / "t.json", bad), "-o", out)
    assert r.exit_code == 2
    assert "template 'housing-07': the text has no {subject}" in r.output and "t.json" in r.output
    assert not out.exists() and not (out.parent.exists() and list(out.parent.iterdir()))


@pytest.mark.parametrize("templates, message", [
    ([TEMPLATES[0], TEMPLATES[0]], "template 'housing-01': duplicate id (template #2)"),
    ([{"id": "h9", "text": "{subject} rents."}], "template 'h9': no \"domain\"; add one"),
    ([{"domain": "housing", "text": "{subject} rents."}], "template #1 has no \"id\""),
    ([{**TEMPLATES[0], "neg": []}], "template 'housing-01': give both 'pos' and 'neg' words"),
    ([], "no templates"),
])
def test_bad_templates_are_refused_naming_file_and_template(tmp_path, templates, message):
    f = _write(tmp_path / "mine.json", templates)
    with pytest.raises(PairsError, match="mine.json") as e:
        pairs_from_templates(f)
    assert message in str(e.value)


def test_empty_and_malformed_files_and_bad_names(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(PairsError, match=r"e.jsonl: the file is empty"):
        pairs_from_templates(tmp_path / "e.jsonl")
    (tmp_path / "m.jsonl").write_text(json.dumps(TEMPLATES[0]) + "\n{oops\n")
    with pytest.raises(PairsError, match=r"m.jsonl:2: malformed JSON"):
        pairs_from_templates(tmp_path / "m.jsonl")
    with pytest.raises(PairsError, match="1 black and 2 white entries"):
        pairs_from_templates(TEMPLATES, names={"black": ["Jamal"], "white": ["Greg", "Brad"]})
    with pytest.raises(PairsError, match="subjects must be"):
        pairs_from_templates(TEMPLATES, subjects="people")
    ps, warnings = pairs_from_templates(TEMPLATES[:1], subjects="groups",
                                        groups={"black": ["A Black tenant"], "white": ["A White tenant"]},
                                        names=NAMES)
    assert [p.black for p in ps] == ["A Black tenant applied to rent the apartment. The landlord decided to"]
    assert warnings == ["the names given are not used: subjects='groups'; use 'names' or 'both'"]


def test_existing_output_needs_overwrite(tmp_path):
    t, out = _write(tmp_path / "t.json", TEMPLATES[:1]), tmp_path / "p.jsonl"
    out.write_text("keep me\n")
    r = _pairs_cmd("--templates", t, "--subjects", "groups", "-o", out)
    assert r.exit_code == 2 and "--overwrite" in r.output and out.read_text() == "keep me\n"
    r = _pairs_cmd("--templates", t, "--subjects", "groups", "-o", out, "--overwrite")
    assert r.exit_code == 0, r.output
    assert len(load_jsonl(out)) == len(subject_list("groups"))


def test_write_pairs_leaves_nothing_half_written(tmp_path, monkeypatch):
    out = tmp_path / "p.jsonl"

    def broken(self, path):
        open(path, "w").write('{"half": ')
        raise KeyboardInterrupt

    monkeypatch.setattr(PairSet, "to_jsonl", broken)
    with pytest.raises(KeyboardInterrupt):
        write_pairs(build_pairs(["finance"])[:2], out)
    assert list(tmp_path.iterdir()) == []


def _to_csv(ps, path, columns=("id", "domain", "template", "black", "white", "pos", "neg", "subject")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for p in ps:
            row = {**p.to_json(), "pos": "|".join(p.pos), "neg": "|".join(p.neg)}
            w.writerow([row[c] for c in columns])
    return path


def test_csv_round_trip_with_the_command_output_and_missing_columns(tmp_path):
    out = tmp_path / "p.jsonl"
    r = _pairs_cmd("--templates", _write(tmp_path / "t.json", TEMPLATES), "--names",
                   _write(tmp_path / "n.json", NAMES), "--subjects", "names", "-o", out)
    assert r.exit_code == 0, r.output
    ps = load_jsonl(out)
    assert load_pairs_csv(_to_csv(ps, tmp_path / "p.csv")).pairs == ps.pairs
    with pytest.raises(PairsError, match=r"p2.csv: missing column\(s\) template, white; the columns are"):
        load_pairs_csv(_to_csv(ps, tmp_path / "p2.csv", ("id", "domain", "black")))
    (tmp_path / "p3.csv").write_text("id,domain,template,black,white,pos,neg\n"
                                     "1,housing,h1,Jamal rents.,Greg rents.,yes,\n")
    with pytest.raises(PairsError, match=r"p3.csv:2: give both 'pos' and 'neg'"):
        load_pairs_csv(tmp_path / "p3.csv")


def test_pairs_from_dataset():
    datasets = pytest.importorskip("datasets")
    rows = [{"id": "h1:a", "domain": "housing", "template": "h1", "black": "Jamal rents. The landlord will",
             "white": "Greg rents. The landlord will", "pos": ["accept"], "neg": ["reject"]},
            {"id": "h2:a", "domain": "housing", "template": "h2", "black": "Lakisha moves in. They feel",
             "white": "Emily moves in. They feel", "pos": [], "neg": []}]
    ps = pairs_from_dataset(datasets.Dataset.from_list(rows))
    assert ps.templates == ["h1", "h2"] and ps[0].pos == ("accept",) and ps[1].pos == ()
    assert ps.pairs == pairs_from_dataset(rows).pairs
    ds = datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "domain"} for r in rows])
    with pytest.raises(PairsError, match=r"the dataset: missing column\(s\) domain"):
        pairs_from_dataset(ds)
    with pytest.raises(PairsError, match="pass one, e.g. ds\\['train'\\]"):
        pairs_from_dataset(datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}))
