"""The export check knows rounding from a wrong mask; a run whose check fails keeps its measurements;
dtypes: models may run in bfloat16, metrics stay float32, exports keep the checkpoint's dtype."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from lens_bias import build_pairs, load_model
from lens_bias.bridge import model_dtype
from lens_bias.cli.main import app
from lens_bias.masks import PruningMask
from lens_bias.measures.metrics import js_divergence, measure
from lens_bias.model.batching import last_logits, pair_batch, tokenize_pairs
from lens_bias.pipeline.stages import RunConfig, run
from lens_bias.selection.topk import random_mask
from lens_bias.weights.export import export_hf
from lens_bias.weights.materialize import clean_hf_model, materialize
from lens_bias.weights.verification import (
    compare,
    materialize_checked,
    path_rounding,
    tolerance,
    weight_problems,
)

runner = CliRunner()


def off_by_one(mask: PruningMask) -> PruningMask:
    """The same mask with its first pruned neuron kept: a plausible bug (an index shifted, a unit lost)."""
    wrong = PruningMask(mask.neurons.clone(), mask.heads.clone(), dict(mask.meta))
    layer, index = mask.pruned("neurons")[0]
    wrong.neurons[layer, index] = True
    return wrong


def noisy_clean_model(bridge, scale: float):
    """A clean HF model whose lm_head carries rounding-sized noise: what another kernel on another
    device does to the logits, whatever the mask."""
    model = clean_hf_model(bridge)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w = model.lm_head.weight
        w.add_(scale * torch.randn(w.shape, generator=g))
    return model


def test_rule_passes_rounding_and_fails_a_wrong_mask(tiny):
    mask = random_mask(tiny, 12, "neurons", seed=1)
    model = noisy_clean_model(tiny, 3e-6)
    rounding = path_rounding(tiny, model)
    assert 1e-5 < rounding < 1e-3  # above the float32 floor: an absolute 1e-5 would refuse a right mask
    materialize(tiny, mask, model=model)
    assert not compare(tiny, model, mask).ok  # the old fixed 1e-5 rule
    right = compare(tiny, model, mask, rounding=rounding)
    assert right.ok and right.conclusive and right.tolerance == tolerance(rounding)

    wrong_model = noisy_clean_model(tiny, 3e-6)
    materialize(tiny, off_by_one(mask), model=wrong_model)
    wrong = compare(tiny, wrong_model, mask, rounding=path_rounding(tiny, noisy_clean_model(tiny, 3e-6)))
    assert not wrong.ok, wrong.summary()


def test_weight_check_catches_a_wrong_mask_whatever_the_rounding(tiny):
    mask = random_mask(tiny, 12, "neurons", seed=1)
    wrong = materialize(tiny, off_by_one(mask))
    assert compare(tiny, wrong, mask, rounding=10.0).ok  # bfloat16-sized rounding hides it from the logits
    problems = weight_problems(tiny, wrong, mask)
    assert problems and "a pruned slice is not zero" in problems[0]
    extra = materialize(tiny, mask)
    with torch.no_grad():
        extra.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3  # a kept weight changed
    assert weight_problems(tiny, extra, mask) == (
        "model.layers.1.mlp.up_proj.weight: 1 kept weights differ from the source",)
    assert weight_problems(tiny, materialize(tiny, mask), mask) == ()


def test_a_mask_within_rounding_is_not_conclusive(tiny):
    mask = random_mask(tiny, 1, "neurons", seed=0)
    # a rounding larger than the mask's effect
    v = compare(tiny, materialize(tiny, mask), mask, rounding=10.0)
    assert v.ok and not v.conclusive and "not conclusive" in v.summary()


@pytest.mark.slow
def test_off_by_one_mask_fails_on_smollm2(smol):
    mask = random_mask(smol, 40, "neurons", seed=3)
    model, v = materialize_checked(smol, mask)
    assert v.ok and v.conclusive and v.max_diff <= v.tolerance and v.weight_problems == ()
    wrong = materialize(smol, off_by_one(mask))
    w = compare(smol, wrong, mask, rounding=v.rounding)
    assert not w.ok and w.max_diff > 10 * w.tolerance, w.summary()
    assert weight_problems(smol, wrong, mask)


@pytest.fixture
def tiny_run_config(tmp_path):
    wt = tmp_path / "wikitext.txt"
    wt.write_text(" = Title = \n"
                  + "\n".join(f" The river runs past the old mill number {i} ." for i in range(5)))
    return dict(model="tiny-random", per_domain=2, held_per_domain=2, budget="2%", budgets=["2%"],
                curve_kinds=["neurons"], validate_k=3, validate_random=2, validate_per_domain=1,
                ppl_tokens=256, progress=False, device="cpu", wikitext=str(wt))


def test_failed_export_check_keeps_the_measurements_and_exits_nonzero(tiny, tiny_run_config, tmp_path,
                                                                       monkeypatch):
    import lens_bias.weights.verification as VF

    real = VF.materialize
    # the bug this guards against: the weights implement another mask than the one simulated
    monkeypatch.setattr(VF, "materialize", lambda bridge, mask, **k: real(bridge, off_by_one(mask), **k))
    monkeypatch.setattr("lens_bias.model.load.load_model", lambda *a, **k: tiny)
    out = tmp_path / "r"
    args = ["run", "--model", "tiny-random", "--out", str(out), "-q", "--per-domain", "2",
            "--held-per-domain", "2", "--budget", "2%", "--budgets", "2%", "--wikitext",
            tiny_run_config["wikitext"]]
    r = runner.invoke(app, args)
    assert r.exit_code == 3, r.output
    assert "EXPORT CHECK FAILED" in r.output and "without model/" in r.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["export"]["ok"] is False and m["export"]["folder"] is None and m["export"]["weight_problems"]
    assert m["before"]["held_out"]["js"] > 0 and m["after"]["held_out"]["js"] > 0  # the measurements are kept
    assert "EXPORT CHECK FAILED" in (out / "report.html").read_text()
    assert (out / "mask.safetensors").exists() and not (out / "model").exists()


def test_bfloat16_run_has_float32_metrics(tiny_run_config, tmp_path):
    m = run(RunConfig(**{**tiny_run_config, "dtype": "bfloat16"}), tmp_path / "r")
    assert m["export"]["ok"] and m["export"]["dtype"] == "torch.bfloat16"
    assert m["export"]["dtype_written"] == "torch.float32"  # tiny-random's own dtype (its source)
    assert m["config"]["dtype"] == "bfloat16"
    # the metrics are float32 computations on the bfloat16 model's logits
    b = load_model("tiny-random", device="cpu", dtype="bfloat16")
    assert model_dtype(b) == torch.bfloat16
    pairs = build_pairs(["hiring"])[:3]
    pm = measure(b, pairs, progress=False)
    # the batch measure() runs (its pairs sorted by length): another row order or padding could round the
    # bfloat16 logits differently (an ulp is 4e-3 relative there), and no float32 tolerance would cover that
    [order] = tokenize_pairs(b, pairs).sorted_chunks(32)
    batch = pair_batch(b, [pairs.pairs[i] for i in order])
    with torch.no_grad():
        raw = last_logits(b, batch.ids, batch.lengths)
    assert raw.dtype == torch.bfloat16  # the model computes in bfloat16 ...
    lp = raw.float().log_softmax(-1)  # ... the metric in float32, from the same logits
    by_hand = js_divergence(lp[: len(pairs)], lp[len(pairs):])
    assert by_hand.dtype == torch.float32
    assert all(isinstance(x, float) for x in pm.values["js"])
    # the same logits and the same float32 ops: equal up to float32 rounding at most
    assert torch.allclose(torch.tensor([pm.values["js"][i] for i in order]), by_hand, rtol=1e-5, atol=1e-7)


def _weights_dtypes(folder) -> set:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return {f.get_slice(k).get_dtype() for k in f.keys()}


def test_export_keeps_the_checkpoint_dtype(tmp_path):
    src = tmp_path / "bf16-model"
    tiny = load_model("tiny-random", device="cpu", dtype=torch.bfloat16)
    tiny_hf = clean_hf_model(tiny)
    tiny_hf.save_pretrained(src)
    tiny.lens_bias_tokenizer.save_pretrained(src)

    b = load_model(str(src), device="cpu")  # auto on a CPU: computed in float32
    assert model_dtype(b) == torch.float32 and b.lens_bias_source_dtype == torch.bfloat16
    mask = random_mask(b, 10, "neurons")
    out = export_hf(b, mask, tmp_path / "out")
    assert _weights_dtypes(out) == {"BF16"}
    assert (out / "model.safetensors").stat().st_size == (src / "model.safetensors").stat().st_size
    reread = load_model(str(out), device="cpu", dtype="float32")
    with torch.no_grad():
        for (name, a), (_, w) in zip(clean_hf_model(reread).state_dict().items(),
                                     materialize(b, mask).state_dict().items(), strict=True):
            # exact: zeros stay zeros, the rest round-trips
            assert torch.equal(a, w.to(torch.bfloat16).float()), name

    f32 = export_hf(b, mask, tmp_path / "out32", dtype=torch.float32)  # unless asked otherwise
    assert _weights_dtypes(f32) == {"F32"}


def test_device_map_cpu_cpu_from_the_cli_equals_one_device():
    """The split path (accelerate's device map over two 'devices') from the command line, as a
    two-GPU run would use it; on a CPU both halves are the CPU, and the numbers must not move."""
    args = ["measure", "--model", "tiny-random", "--per-domain", "2", "--domains", "hiring", "--json"]
    one = runner.invoke(app, [*args, "--device", "cpu"])
    split = runner.invoke(app, [*args, "--device-map", "cpu,cpu"])
    assert one.exit_code == 0 and split.exit_code == 0, split.output
    a, b = json.loads(one.output[one.output.index("{"):]), json.loads(split.output[split.output.index("{"):])
    # accelerate's hooks only move tensors (cpu -> cpu): the same kernels on the same batches, so exact
    assert a["all"]["js"] == b["all"]["js"] and a["all"]["js"] > 0
