"""lens-bias prune and export as an API (lens_bias.selection.from_scores), mean ablation from the CLI
included: the CLI writes what the API computes, and a mean-ablation model equals the simulation."""

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lens_bias import build_pairs
from lens_bias.attribution.patching import capability_cost
from lens_bias.attribution.provenance import check_scores_match
from lens_bias.cli.common import pairs_as_scanned
from lens_bias.cli.main import app
from lens_bias.errors import ChoiceError, MaskError
from lens_bias.hooks.ablation import ablate
from lens_bias.hooks.capture import mean_activations
from lens_bias.masks import PruningMask
from lens_bias.model.batching import pair_batch
from lens_bias.prompts.pairs import neutral_text
from lens_bias.scores import Scores
from lens_bias.selection.from_scores import mask_from_scores
from lens_bias.selection.registry import SelectionInputs, SelectorSpec, select_units
from lens_bias.selection.topk import select
from lens_bias.vocab import check_ablation
from lens_bias.weights.export import export_hf
from lens_bias.weights.formats import ablation_constants

runner = CliRunner()
PRUNE = ["prune", "--model", "tiny-random", "--budget", "6", "--max-cost-quantile", "0.5"]


@pytest.fixture(scope="module")
def scanned(tmp_path_factory):
    path = tmp_path_factory.mktemp("scan") / "s.safetensors"
    r = runner.invoke(app, ["scan", "--model", "tiny-random", "--domains", "hiring", "--per-domain", "4",
                            "--kinds", "neurons", "-q", "-o", str(path)])
    assert r.exit_code == 0, r.output
    return path


def _weights(folder):
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_cli_prune_mean_equals_the_api_and_the_simulation(scanned, tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    r = runner.invoke(app, [*PRUNE, "-s", str(scanned), "--ablation", "mean", "-o", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    mask, means = mask_from_scores(tiny, Scores.load(scanned), 6, max_cost_quantile=0.5, ablation="mean")
    cli_mask = PruningMask.load(tmp_path / "p")
    assert torch.equal(cli_mask.neurons, mask.neurons) and cli_mask.meta["ablation"] == "mean"
    api = export_hf(tiny, mask, tmp_path / "api", ablation="mean", means=means)
    cli_w, api_w = _weights(tmp_path / "p" / "model"), _weights(api)
    assert cli_w.keys() == api_w.keys() and all(torch.equal(cli_w[k], api_w[k]) for k in cli_w)
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "p" / "model", dtype=torch.float32)
    ids = pair_batch(tiny, build_pairs(["hiring"]).pairs[:3]).ids[:, :6]
    with torch.no_grad():
        with ablate(tiny, mask, "mean", means):
            sim = tiny(ids).float()
        zero_sim = tiny(ids).float()
        out = back(input_ids=ids, use_cache=False).logits.float()
    assert float((out - sim).abs().max()) <= 1e-5
    assert float((out - zero_sim).abs().max()) > 1e-3  # the means are in the weights
    assert back.config.mlp_bias


def test_export_of_a_mean_mask_rebuilds_the_same_model(scanned, tmp_path):
    r = runner.invoke(app, [*PRUNE, "-s", str(scanned), "--ablation", "mean", "-o", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["export", "--mask", str(tmp_path / "p"), "--model", "tiny-random", "-o",
                            str(tmp_path / "e")])
    assert r.exit_code == 0, r.output
    a, b = _weights(tmp_path / "p" / "model"), _weights(tmp_path / "e")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    r = runner.invoke(app, ["export", "--mask", str(tmp_path / "p"), "-f", "torch-pruning", "--model",
                            "tiny-random", "-o", str(tmp_path / "tp.json")])
    assert r.exit_code != 0 and "mean ablation" in r.output and not (tmp_path / "tp.json").exists()


def test_prune_default_ablation_is_the_scans_and_zero_stays_zero(scanned, tiny, tmp_path):
    r = runner.invoke(app, [*PRUNE, "-s", str(scanned), "-o", str(tmp_path / "z")])
    assert r.exit_code == 0, r.output
    m = PruningMask.load(tmp_path / "z")
    assert m.meta["ablation"] == "zero" and ablation_constants(tiny, m) is None
    assert not any("bias" in k for k in _weights(tmp_path / "z" / "model"))
    r = runner.invoke(app, [*PRUNE, "-s", str(scanned), "--ablation", "mean", "--mode", "structural",
                            "-o", str(tmp_path / "s")])
    assert r.exit_code != 0 and "--mode zero" in r.output and not (tmp_path / "s").exists()


def test_bad_ablation_and_missing_means_are_refused(tiny, tmp_path):
    with pytest.raises(ChoiceError, match="ablation must be one of zero, mean; got 'resample'"):
        check_ablation("resample")
    mask, _ = mask_from_scores(tiny, Scores(torch.rand(2, 128), None, {}, {}), 3, max_cost_quantile=None)
    with pytest.raises(MaskError, match="needs the units' means"):
        export_hf(tiny, mask, tmp_path / "x", ablation="mean")
    assert not (tmp_path / "x").exists()


def test_cli_prune_with_a_selector_rereads_the_scans_pairs(scanned, tiny, tmp_path):
    """--selector iterative re-attributes on the pairs the scan recorded: the CLI's mask is
    the registry's on those pairs (its first round the scan's scores), at the budget exactly, and
    not the one-shot mask."""
    r = runner.invoke(app, [*PRUNE, "-s", str(scanned), "--selector", "iterative", "--steps", "3", "-q",
                            "-o", str(tmp_path / "it")])
    assert r.exit_code == 0, r.output
    s = Scores.load(scanned)
    ps, _ = pairs_as_scanned(s.settings, None, None, None, None, None)
    assert check_scores_match(s, ps, tiny) is None  # the very pairs scored
    cost = capability_cost(tiny, neutral_text())
    want = select_units(SelectorSpec("iterative", 0.5, {"steps": 3}),
                        SelectionInputs(tiny, ps, 6, cost=cost, scores=s)).mask
    got = PruningMask.load(tmp_path / "it")
    assert got.counts()["neurons"] == 6 and torch.equal(got.neurons, want.neurons)
    assert got.meta["selector"] == "iterative"
    oneshot = mask_from_scores(tiny, s, 6, max_cost_quantile=0.5)[0]
    assert not torch.equal(got.neurons, oneshot.neurons)


@pytest.mark.parametrize(("extra", "message"), [
    (["--selector", "bogus"], "--selector must be one of"),
    (["--selector", "stable", "--per-layer", "uniform"], "chooses globally"),
    (["--selector", "iterative", "--pairs", "OTHER"], "other pairs"),
])
def test_cli_prune_refuses_a_selector_without_what_it_needs(scanned, tmp_path, extra, message):
    other = tmp_path / "other.jsonl"
    build_pairs(["finance"])[:4].to_jsonl(other)
    extra = [str(other) if a == "OTHER" else a for a in extra]
    r = runner.invoke(app, [*PRUNE, "-s", str(scanned), *extra, "-q", "-o", str(tmp_path / "p")])
    assert r.exit_code != 0 and message in r.output.replace("\n", " "), r.output
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--kind", "neuron"], "kind must be one of neurons, heads, both; got 'neuron'"),
    (["--budget", "0"], "budget must be positive"),
    (["--budget", "half"], "invalid budget 'half'"),
    (["--per-layer", "diagonal"], "per_layer must be one of global, uniform; got 'diagonal'"),
    (["--ablation", "half"], "ablation"),
    (["--selector", "bogus"], "--selector must be one of"),
    (["--mode", "half"], "--mode must be one of zero, structural; got 'half'"),
    (["--selector", "stable", "--ablation", "mean"], "--selector stable works under zero ablation only"),
])
def test_cli_prune_refuses_bad_choices_in_one_line_before_loading_a_model(scanned, tmp_path, monkeypatch,
                                                                          extra, message):
    def never(*a, **k):
        raise AssertionError("the model was loaded before the choice was checked")

    monkeypatch.setattr("lens_bias.cli.prune.load_bridge", never)
    r = runner.invoke(app, [*PRUNE, "-s", str(scanned), *extra, "-q", "-o", str(tmp_path / "p")])
    assert r.exit_code == 2 and message in r.output, r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "p").exists()


def test_prune_selector_needs_attribution_scores(tiny):
    s = Scores(torch.rand(2, 128), None, {}, {"scorer": "wanda", "estimator": "wanda"})
    with pytest.raises(MaskError, match="scan with --scorer ablate"):
        mask_from_scores(tiny, s, 4, max_cost_quantile=None, selector="stable",
                         pairs=build_pairs(["hiring"])[:4])


def test_select_units_refuses_an_unknown_selector_and_mean_ablation_where_unsupported(tiny):
    ps = build_pairs(["hiring"])[:4]
    with pytest.raises(ChoiceError, match="selector must be one of oneshot, "):
        select_units("bogus", SelectionInputs(tiny, ps, 4))
    mean = SelectionInputs(tiny, ps, 4, ablation="mean", means=mean_activations(tiny, neutral_text()[:4]))
    with pytest.raises(ChoiceError, match="works under zero ablation only"):
        select_units("stable", mean)
    with pytest.raises(ChoiceError, match="takes no option 'steps'"):
        select_units(SelectorSpec("stable", None, {"steps": 3}), SelectionInputs(tiny, ps, 4))


def test_select_units_attributes_oneshot_under_its_ablation(tiny):
    """Without scores, one-shot attributes the pairs itself, under the ablation it was given."""
    from lens_bias.attribution.per_template import attribute_templates

    ps = build_pairs(["hiring"])[:4]
    means = mean_activations(tiny, neutral_text()[:4])
    want = select(attribute_templates(tiny, ps, ablation="mean", means=means, progress=False).scores(), 16,
                  kind="neurons", bridge=tiny, max_cost_quantile=None)
    zero = select(attribute_templates(tiny, ps, progress=False).scores(), 16, kind="neurons", bridge=tiny,
                  max_cost_quantile=None)
    assert not torch.equal(want.neurons, zero.neurons)  # the two ablations rank differently here
    got = select_units(SelectorSpec("oneshot", None),
                       SelectionInputs(tiny, ps, 16, ablation="mean", means=means))
    assert torch.equal(got.mask.neurons, want.neurons)
