"""The model card (README.md) of exported folders and runs, and ``export --push-to-hub`` without a hub."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from lens_bias.cli.main import app
from lens_bias.errors import LensBiasError
from lens_bias.pipeline.stages import RunConfig, run
from lens_bias.selection.topk import random_mask
from lens_bias.weights.export import export_hf
from lens_bias.weights.hub import push_folder

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One real tiny run (with a small WikiText file, so that perplexity is measured): its folder and
    metrics."""
    tmp = tmp_path_factory.mktemp("card")
    wt = tmp / "wikitext.txt"
    wt.write_text(" = Title = \n"
                  + "\n".join(f" The river runs past the old mill number {i} ." for i in range(5)))
    cfg = RunConfig(model="tiny-random", per_domain=3, held_per_domain=3, budget="2%", budgets=["2%"],
                    curve_kinds=["neurons"], validate_k=3, validate_random=2, validate_per_domain=1,
                    ppl_tokens=256, progress=False, device="cpu", wikitext=str(wt))
    m = run(cfg, tmp / "r")
    return tmp / "r", m


@pytest.fixture
def exported(tiny, tmp_path):
    mask = random_mask(tiny, 10, "neurons", seed=1)
    return export_hf(tiny, mask, tmp_path / "pruned"), mask


def test_export_writes_a_card_that_says_it_was_not_measured(exported):
    folder, mask = exported
    card = (folder / "README.md").read_text(encoding="utf-8")
    head = card.split("---")[1]
    assert "tags: [lens_bias, bias-mitigation, pruning]" in head and "library_name: transformers" in head
    assert "base_model" in head  # tiny-random is not on the Hub: the key is commented out, saying so
    assert "This folder was not measured" in card and "lens-bias run --model tiny-random" in card
    assert "10 MLP neurons and 0 attention heads" in card
    for la, n in enumerate(mask.per_layer("neurons")):
        assert f"| {la} | {n} | 0 |" in card
    assert "## Limitations" in card and "not a fairness guarantee" in card
    assert "lm_eval --model hf --model_args pretrained=" in card and "HFLM(pretrained=" in card
    assert not list(folder.glob(".README*"))  # the temporary file was renamed


def test_run_card_states_the_measured_numbers_with_their_intervals(tiny_run):
    folder, m = tiny_run
    assert json.loads((folder / "metrics.json").read_text())["tests"]["js"] == m["tests"]["js"]
    card = (folder / "model" / "README.md").read_text(encoding="utf-8")
    assert "not measured" not in card and "Measured by `lens-bias run`" in card
    t = m["tests"]["js"]
    noise = "yes" if t["within_noise"] else "no"
    row = (f"| held-out mean JS (nats) | {t['before']:.4g} | {t['after']:.4g} | {t['pct']:.4g} | "
           f"[{t['pct_ci'][0]:.3g}, {t['pct_ci'][1]:.3g}] | {t['p']:.4g} | % | {noise} |")
    assert row in card, card
    assert "| held-out mean \\|logit gap\\| |" in card  # a "|" inside a Markdown table cell is escaped
    ppl = m["tests"]["wikitext_ppl"]
    assert f"WikiText-2 perplexity went from {ppl['before']:.4g} to {ppl['after']:.4g}" in card
    assert f"{m['pruned']['neurons']} MLP neurons and {m['pruned']['heads']} attention heads" in card
    assert f"{m['pruned']['params_pct']:.3f} % of the model" in card
    assert "lens-bias run --model tiny-random" in card and "--budget 2%" in card and "--per-domain 3" in card


def _intact(folder):
    for name in ("config.json", "model.safetensors", "README.md", "lens_bias_mask/mask.safetensors"):
        assert (folder / name).is_file(), name


def test_push_to_hub_offline_fails_clearly_and_keeps_the_folder(tiny, tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr("lens_bias.model.load.load_model", lambda *a, **k: tiny)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "hf"
    r = runner.invoke(app, ["export", "--mask", str(tiny_run[0] / "mask.safetensors"), "--model",
                            "tiny-random", "--device", "cpu", "-o", str(out), "--push-to-hub",
                            "someone/pruned-tiny"])
    assert r.exit_code == 2, r.output
    assert "cannot upload to the Hub" in r.output and "HF_HUB_OFFLINE" in r.output
    assert "hf upload someone/pruned-tiny" in r.output and "intact" in r.output
    _intact(out)


def test_push_to_hub_network_failure_and_no_login_are_clear(exported, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    folder, _ = exported
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(LensBiasError, match="not logged in.*hf auth login.*HF_TOKEN"):
        push_folder(folder, "someone/pruned-tiny")

    def no_network(self, *a, **k):
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_not_a_real_token")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", no_network)
    with pytest.raises(LensBiasError,
                       match=r"failed \(ConnectionError: .*Name or service.*Check the network"):
        push_folder(folder, "someone/pruned-tiny")
    _intact(folder)


def test_push_to_hub_needs_the_hf_format_and_a_valid_repo_id(tmp_path):
    mask = tmp_path / "missing.safetensors"  # refused before the mask is read
    r = runner.invoke(app, ["export", "--mask", str(mask), "-f", "optipfair", "--push-to-hub", "me/x"])
    assert r.exit_code == 2 and "use it with --format hf" in r.output
    r = runner.invoke(app, ["export", "--mask", str(mask), "--push-to-hub", "not a repo id"])
    assert r.exit_code == 2 and "is not a Hub repository id" in r.output
