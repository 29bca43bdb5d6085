"""Adding a selector is one function and one registration: a toy selector, registered here, runs
through the API, `lens_bias.run` and `lens-bias prune`, and the registry refuses what it cannot do."""

from __future__ import annotations

import pytest
import torch
from conftest import small_run_config
from typer.testing import CliRunner

from lens_bias import build_pairs
from lens_bias.attribution.patching import capability_cost
from lens_bias.cli.main import app
from lens_bias.errors import ChoiceError
from lens_bias.masks import PruningMask
from lens_bias.pipeline.stages import run
from lens_bias.prompts.pairs import neutral_text
from lens_bias.scores import Scores
from lens_bias.selection.registry import (
    Selection,
    SelectionInputs,
    SelectorSpec,
    register,
    select_units,
    selectors,
    unregister,
)
from lens_bias.selection.topk import select

TOY = "toy-one-layer"
runner = CliRunner()


def one_layer(spec: SelectorSpec, inputs: SelectionInputs) -> Selection:
    """The top units of one layer only (option ``layer``, default the last)."""
    layer = spec.options.get("layer", inputs.bridge.cfg.n_layers - 1)
    mask = select(inputs.attribution(), inputs.budget, kind=inputs.kind, layers=[layer], bridge=inputs.bridge,
                  cost=inputs.cost, max_cost_quantile=spec.max_cost_quantile)
    mask.meta["toy_layer"] = layer
    return Selection(mask, {"layer": layer})


@pytest.fixture
def toy():
    register(TOY, "the top units of one layer (a test's toy)", options=("layer",))(one_layer)
    yield TOY
    unregister(TOY)


def only_in_layer(mask: PruningMask, kind: str, layer: int) -> bool:
    per = mask.per_layer(kind)
    return per[layer] > 0 and sum(per) == per[layer]


def test_a_registered_selector_runs_through_the_api(tiny, toy):
    pairs = build_pairs(["hiring"]).sample(4)
    got = select_units(SelectorSpec(toy, None, {"layer": 0}), SelectionInputs(tiny, pairs, 5))
    assert got.mask.counts()["neurons"] == 5 and only_in_layer(got.mask, "neurons", 0)
    assert got.record == {"selector": toy, "max_cost_quantile": None, "options": {"layer": 0}, "layer": 0}
    both = select_units(SelectorSpec(toy, None), SelectionInputs(tiny, pairs, 2, kind="both"))
    assert both.mask.counts() == {"neurons": 2, "heads": 2}  # one call a kind, joined
    assert set(both.record["per_kind"]) == {"neurons", "heads"}
    assert toy in selectors() and selectors()[toy].summary.startswith("the top units of one layer")


def test_a_registered_selector_runs_through_run(tmp_path, toy):
    run(small_run_config(selector=toy, budget="2%", curve_kinds=("neurons",)), tmp_path / "r")
    mask = PruningMask.load(tmp_path / "r")
    assert mask.meta["toy_layer"] == 1 and only_in_layer(mask, "neurons", 1)
    with pytest.raises(ChoiceError, match=f"--selector {toy} works under zero ablation only"):
        run(small_run_config(selector=toy, ablation="mean"), tmp_path / "mean")
    assert not (tmp_path / "mean").exists()


def test_a_registered_selector_runs_through_prune(tiny, tmp_path, toy):
    scan = tmp_path / "s.safetensors"
    r = runner.invoke(app, ["scan", "--model", "tiny-random", "--domains", "hiring", "--per-domain", "4",
                            "--kinds", "neurons", "-q", "-o", str(scan)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["prune", "--model", "tiny-random", "-s", str(scan), "--budget", "6", "--selector",
                            toy, "-q", "-o", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    got = PruningMask.load(tmp_path / "p")
    want = select(Scores.load(scan), 6, kind="neurons", layers=[1], bridge=tiny,
                  cost=capability_cost(tiny, neutral_text(), ablation="zero"), max_cost_quantile=0.5)
    assert torch.equal(got.neurons, want.neurons) and got.meta["selector"] == toy
    unregister(toy)
    r = runner.invoke(app, ["prune", "--model", "tiny-random", "-s", str(scan), "--selector", toy, "-q",
                            "-o", str(tmp_path / "q")])
    assert (r.exit_code == 2 and "--selector must be one of oneshot" in r.output
            and "Traceback" not in r.output)


def test_the_registry_refuses_a_taken_name_and_unknown_options(tiny, toy):
    with pytest.raises(ChoiceError, match="already registered"):
        register(toy, "again")(one_layer)
    with pytest.raises(ChoiceError, match="takes no option 'steps' .its options: layer"):
        select_units(SelectorSpec(toy, None, {"steps": 2}),
                     SelectionInputs(tiny, build_pairs(["hiring"])[:2], 3))
