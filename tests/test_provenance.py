"""Scores know the pairs and the model they were computed on, and refuse to be used with others."""

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from lens_bias import build_pairs
from lens_bias.attribution.patching import attribute
from lens_bias.attribution.provenance import check_scores_match, pairs_fingerprint, provenance
from lens_bias.attribution.scorers import score
from lens_bias.attribution.validation import validate
from lens_bias.cli.main import app
from lens_bias.errors import LensBiasError, ProvenanceError
from lens_bias.prompts.pairs import PairSet
from lens_bias.scores import Scores

runner = CliRunner()
SCAN = ["scan", "--model", "tiny-random", "--domains", "hiring,finance", "--per-domain", "4", "--kinds",
        "heads", "-q"]
VALIDATE = ["validate", "--model", "tiny-random", "--k", "2", "--n-random", "1", "--kinds", "heads", "-q"]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    path = tmp_path_factory.mktemp("scan") / "s.safetensors"
    r = runner.invoke(app, [*SCAN, "-o", str(path)])
    assert r.exit_code == 0, r.output
    return path


def test_fingerprint_is_stable_order_free_and_sees_every_change():
    ps = build_pairs(["hiring", "finance"]).sample(3)
    fp = pairs_fingerprint(ps)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert pairs_fingerprint(build_pairs(["hiring", "finance"]).sample(3)) == fp  # rebuilt: the same
    assert pairs_fingerprint(PairSet(list(reversed(ps.pairs)))) == fp  # order does not matter
    first = ps.pairs[0]
    for change in ({"black": first.black + " today"}, {"white": first.white.upper()}, {"id": first.id + "x"}):
        edited = PairSet([dataclasses.replace(first, **change), *ps.pairs[1:]])
        assert pairs_fingerprint(edited) != fp, change
    assert pairs_fingerprint(ps[1:]) != fp


def test_every_scorer_records_its_pairs_and_model(tiny):
    ps = build_pairs(["hiring"]).sample(2)
    for s in (attribute(tiny, ps, components=("heads",), progress=False), score(tiny, ps, "actdiff"),
              score(tiny, ps, "random")):
        st = s.settings
        assert (st["pairs_hash"] == pairs_fingerprint(ps) and st["n_pairs"] == 2
                and st["domains"] == ["hiring"])
        assert st["model"] == "tiny-random" and st["model_shape"] == {
            "architecture": "LlamaForCausalLM", "n_layers": 2, "d_mlp": 128, "n_heads": 4}
        assert check_scores_match(s, ps, tiny) is None


def test_logit_gap_scores_are_compared_on_their_directional_pairs(tiny):
    ps = build_pairs(["hiring", "finance"]).sample(3)
    ps = PairSet([*ps.pairs[:4], *(dataclasses.replace(p, pos=(), neg=()) for p in ps.pairs[4:])])
    directional = ps.filter(directional=True)
    assert 0 < len(directional) < len(ps)  # pairs with and without pos/neg words
    s = Scores(None, None, {}, {"metric": "logit_gap", **provenance(tiny, directional)})
    assert check_scores_match(s, ps, tiny) is None


def test_scan_records_split_seed_and_hash(scanned):
    st = Scores.load(scanned).settings
    assert st["split"] == "train" and st["seed"] == 0 and st["domain_filter"] == ["hiring", "finance"]
    assert st["domains"] == ["finance", "hiring"] and len(st["pairs_hash"]) == 16
    # the defaults of validate rebuild exactly these pairs (the domains, too, come from the scan)
    r = runner.invoke(app, [*VALIDATE, "-s", str(scanned), "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert (res["pairs_hash"] == res["scores_pairs_hash"] == st["pairs_hash"]
            and res["provenance_warning"] is None)


def test_validate_refuses_other_pairs_naming_both_sides(scanned, tmp_path):
    st = Scores.load(scanned).settings
    out = tmp_path / "v.json"
    r = runner.invoke(app, [*VALIDATE, "-s", str(scanned), "--per-domain", "2", "--out", str(out)])
    assert r.exit_code == 2
    msg = " ".join(r.output.split())
    assert f"computed on {st['n_pairs']} pairs (hash {st['pairs_hash']}" in msg
    assert "validate was given" in msg and "--allow-other-pairs" in msg and "--per-domain" in msg
    other = msg.split("other pairs (hash ")[1][:16]
    assert other != st["pairs_hash"] and len(other) == 16
    assert not out.exists()


def test_validate_with_allow_other_pairs_runs_and_says_so(scanned, tmp_path):
    out = tmp_path / "v.json"
    r = runner.invoke(app, [*VALIDATE, "-s", str(scanned), "--per-domain", "2", "--allow-other-pairs",
                            "--json", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["pairs_hash"] != res["scores_pairs_hash"]
    assert "--allow-other-pairs given" in res["provenance_warning"] and "warning:" in r.stderr
    assert json.loads(out.read_text())["provenance_warning"] == res["provenance_warning"]
    r = runner.invoke(app, [*VALIDATE, "-s", str(scanned), "--per-domain", "2", "--allow-other-pairs"])
    assert r.exit_code == 0 and "warning: the scores were computed on" in r.stdout


def test_validate_function_refuses_other_pairs(tiny):
    ps = build_pairs(["hiring"]).sample(3)
    s = attribute(tiny, ps, components=("heads",), progress=False)
    kw = {"k": 1, "n_random": 1, "kinds": ("heads",), "progress": False}
    assert validate(tiny, ps, s, **kw)["heads"]["provenance_warning"] is None
    with pytest.raises(ProvenanceError,
                       match=r"computed on 3 pairs .* given 2 other pairs.*allow_other_pairs=True"):
        validate(tiny, ps[:2], s, **kw)
    warning = validate(tiny, ps[:2], s, allow_other_pairs=True, **kw)["heads"]["provenance_warning"]
    assert "3 pairs" in warning and "2 other pairs" in warning


def test_old_scores_without_a_hash_warn(scanned, tmp_path, tiny):
    s = Scores.load(scanned)
    for key in ("pairs_hash", "model_shape"):
        s.settings.pop(key)
    old = s.save(tmp_path / "old.safetensors")
    assert check_scores_match(Scores.load(old), build_pairs(["hiring"]).sample(1), tiny).startswith(
        "provenance unknown")
    r = runner.invoke(app, [*VALIDATE, "-s", str(old), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["provenance_warning"].startswith("provenance unknown")


def _foreign(tmp_path, n_layers: int, name: str):
    g = torch.Generator().manual_seed(0)
    shape = {"architecture": "LlamaForCausalLM", "n_layers": n_layers, "d_mlp": 128, "n_heads": 4}
    s = Scores(torch.rand(n_layers, 128, generator=g), torch.rand(n_layers, 4, generator=g), {},
               {"estimator": "ablate", "metric": "js", "model": name, "model_shape": shape})
    return s.save(tmp_path / f"{name}.safetensors")


def test_prune_refuses_scores_of_another_model(tmp_path, tiny):
    prune = ["prune", "--model", "tiny-random", "--budget", "2", "--max-cost-quantile", "1"]
    other_shape = _foreign(tmp_path, 3, "bigger-model")
    for extra in ([], ["--allow-other-model"]):  # another shape never fits, whatever the flag
        r = runner.invoke(app, [*prune, "-s", str(other_shape), "-o", str(tmp_path / "p"), *extra])
        assert (r.exit_code == 2 and "do not fit" in r.output and "3 layers" in r.output
                and "2 layers" in r.output)
        assert not (tmp_path / "p").exists()
    with pytest.raises(ProvenanceError):  # old files too: the tensors' shape is checked
        check_scores_match(Scores(torch.rand(3, 128), None, {}, {}), None, tiny, allow_other=True,
                           what="prune")
    other_name = _foreign(tmp_path, 2, "sibling-model")
    r = runner.invoke(app, [*prune, "-s", str(other_name), "-o", str(tmp_path / "p")])
    assert r.exit_code == 2 and "'sibling-model'" in r.output and "--allow-other-model" in r.output
    assert not (tmp_path / "p").exists()
    r = runner.invoke(app, [*prune, "-s", str(other_name), "-o", str(tmp_path / "p"), "--allow-other-model"])
    assert r.exit_code == 0, r.output
    assert "warning:" in r.stdout and "'sibling-model'" in r.stdout
    meta = json.loads((tmp_path / "p" / "mask.json").read_text())
    assert "--allow-other-model given" in meta["provenance_warning"]


def test_provenance_error_is_a_lens_bias_error():
    assert issubclass(ProvenanceError, LensBiasError)


def test_scores_remember_the_prompt_mode():
    from lens_bias import load_model
    from lens_bias.model.chat import use_chat_template

    b = load_model("tiny-random", device="cpu")
    b.lens_bias_tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %} Answer:"
    ps = build_pairs(["hiring"]).sample(2)
    s = attribute(use_chat_template(b), ps, components=("heads",), progress=False)
    assert s.settings["chat_template"] is True and check_scores_match(s, ps, b) is None
    use_chat_template(b, on=False)  # the same pairs, now raw: other token ids
    with pytest.raises(ProvenanceError,
                       match=r"prompts through the chat template but validate runs them as raw "
                             r"text.*--chat-template"):
        check_scores_match(s, ps, b)
    assert "compared anyway" in check_scores_match(s, ps, b, allow_other=True)
    assert check_scores_match(s, None, b) is None  # prune reads no prompts
