import json

from typer.testing import CliRunner

from lens_bias.cli import app

runner = CliRunner()


def test_measure_json_tiny():
    r = runner.invoke(app, ["measure", "--model", "tiny-random", "--per-domain", "3", "--json", "-q"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["n_pairs"] == 18
    for d in ("finance", "commerce", "hiring", "policing", "education", "general"):
        assert out[d]["js"] > 0


def test_measure_bad_pairs_file(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("{oops\n")
    r = runner.invoke(app, ["measure", "--model", "tiny-random", "--pairs", str(f)])
    assert r.exit_code == 2
    assert "p.jsonl:1: malformed JSON" in r.output


def test_models_lists_zoo():
    r = runner.invoke(app, ["models", "--json"])
    assert r.exit_code == 0
    names = [m["name"] for m in json.loads(r.output)["models"]]
    assert names == ["smollm2-135m", "gemma3-270m", "tiny-random"]
