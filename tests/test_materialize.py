"""Materialized / exported models compute exactly what the ablation hooks simulate."""

import os
import subprocess
import sys

import pytest
import torch
from jaxtyping import install_import_hook

from lens_bias import LensBiasError, MaskError, RunError
from lens_bias.errors import ChoiceError
from lens_bias.hooks.ablation import ablate
from lens_bias.masks import PruningMask
from lens_bias.selection.topk import random_mask

with install_import_hook(["lens_bias.weights.materialize", "lens_bias.weights.export",
                          "lens_bias.weights.interop", "lens_bias.weights.verification"],
                         "beartype.beartype"):
    from lens_bias.weights import export as EX
    from lens_bias.weights import interop as IO
    from lens_bias.weights import materialize as MZ
    from lens_bias.weights import verification as VF

TEXT = "The nurse told the patient that the test results looked fine."
# float32 floor (lens_bias.weights.verification.ABS_FLOOR) for logits computed by two code paths: HF's modules
# and the bridge, whose attention is TransformerLens's own reimplementation (matmul, mask, float32
# softmax, matmul). They may round differently (kernel, reduction order, CPU vector width): 1e-5 is
# ~20 float32 ulps of these |logits| < 8 (1-ulp noise on every attention probability moves them 4e-6);
# an ablation moves them > 1e-3.
ATOL = 1e-5


def ids_of(bridge, text=TEXT):
    return bridge.lens_bias_tokenizer(text, return_tensors="pt").input_ids


@torch.no_grad()
def hf_logits(model, ids):
    return model(input_ids=ids.to(next(model.parameters()).device), use_cache=False).logits.float().cpu()


@torch.no_grad()
def bridge_logits(bridge, ids, mask=None):
    if mask is None:
        return bridge(ids, return_type="logits").float().cpu()
    with ablate(bridge, mask, "zero"):
        return bridge(ids, return_type="logits").float().cpu()


def maxdiff(a, b):
    return float((a - b).abs().max())


def masks_for(bridge, which, seed=0):
    if which == "neurons":
        return random_mask(bridge, 30, "neurons", seed)
    if which == "heads":
        return random_mask(bridge, 3, "heads", seed)
    return random_mask(bridge, 30, "neurons", seed) | random_mask(bridge, 3, "heads", seed + 1)


def uniform_mask(bridge, per_layer=16, heads=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = PruningMask.keep_all(bridge)
    for layer in range(bridge.cfg.n_layers):
        mask.neurons[layer, torch.randperm(bridge.cfg.d_mlp, generator=gen)[:per_layer]] = False
    if heads:
        mask.heads[0, 1] = False
        mask.heads[-1, 3] = False
    return mask


# ---------------------------------------------------------------- clean model


def test_clean_hf_model_equals_bridge(tiny):
    model = MZ.clean_hf_model(tiny)
    ids = ids_of(tiny)
    # HF modules vs the bridge's reimplemented attention: bit-equal on some CPUs, not promised (ATOL)
    assert maxdiff(hf_logits(model, ids), bridge_logits(tiny, ids)) <= ATOL
    keys = list(model.state_dict())
    assert not any("_original_component" in k for k in keys)
    assert "model.layers.0.mlp.down_proj.weight" in keys
    # its own tensors: writing to it leaves the bridge alone
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.zero_()
    assert tiny.original_model.state_dict()[
        "model.layers.0._original_component.mlp._original_component.down_proj._original_component.weight"
    ].abs().sum() > 0


def test_bridge_only_nonzero_tensor_is_refused(monkeypatch, tiny):
    sd = dict(tiny.original_model.state_dict())
    sd["lm_head._original_component.bias"] = torch.ones_like(sd["lm_head._original_component.bias"])
    monkeypatch.setattr(tiny.original_model, "state_dict", lambda *a, **k: sd)
    with pytest.raises(LensBiasError, match="lm_head.bias"):
        MZ.clean_hf_model(tiny)


# ---------------------------------------------------------------- zero mode


@pytest.mark.parametrize("which", ["neurons", "heads", "both"])
def test_zero_materialization_equals_ablation(tiny, which):
    mask = masks_for(tiny, which)
    model = MZ.materialize(tiny, mask, mode="zero")
    ids = ids_of(tiny)
    assert maxdiff(hf_logits(model, ids), bridge_logits(tiny, ids, mask)) <= ATOL
    assert VF.verify(tiny, model, mask) <= ATOL
    # the ablation actually changes the output, so the check has teeth
    assert maxdiff(bridge_logits(tiny, ids, mask), bridge_logits(tiny, ids)) > 1e-3
    # shape-preserving, and exactly the designed weights are zero
    assert model.config.intermediate_size == tiny.cfg.d_mlp
    d_head = tiny.cfg.d_head
    for layer, i in mask.pruned("neurons"):
        mlp = model.model.layers[layer].mlp
        assert not mlp.down_proj.weight[:, i].any()
        assert not mlp.gate_proj.weight[i].any() and not mlp.up_proj.weight[i].any()
    for layer, h in mask.pruned("heads"):
        o = model.model.layers[layer].self_attn.o_proj.weight
        assert not o[:, h * d_head:(h + 1) * d_head].any()
    for layer, i in [(x, j) for x in range(tiny.cfg.n_layers) for j in range(tiny.cfg.d_mlp)
                     if mask.neurons[x, j]][:20]:
        assert model.model.layers[layer].mlp.down_proj.weight[:, i].any()


def test_bridge_unchanged_by_materialize(tiny):
    ids = ids_of(tiny)
    before = bridge_logits(tiny, ids)
    params = {k: v.clone() for k, v in tiny.original_model.state_dict().items()}
    mask = masks_for(tiny, "both", seed=3)
    MZ.materialize(tiny, mask, mode="zero")
    MZ.materialize(tiny, uniform_mask(tiny, heads=False), mode="structural")
    # the same bridge, weights and input: same ops, exact
    assert torch.equal(bridge_logits(tiny, ids), before)
    after = tiny.original_model.state_dict()
    assert after.keys() == params.keys()
    assert all(torch.equal(after[k], v) for k, v in params.items())  # untouched tensors: exact


def test_empty_mask_is_identity(tiny):
    mask = PruningMask.keep_all(tiny)
    ids = ids_of(tiny)
    # HF modules vs the bridge: two implementations, equal to float32 rounding (ATOL)
    assert maxdiff(hf_logits(MZ.materialize(tiny, mask), ids), bridge_logits(tiny, ids)) <= ATOL


def test_bad_inputs_are_refused(tiny):
    mask = masks_for(tiny, "neurons")
    with pytest.raises(ChoiceError, match="mode must be one of"):
        MZ.materialize(tiny, mask, mode="mean")
    wrong = PruningMask(torch.ones(3, 128, dtype=torch.bool), torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(MaskError, match="does not fit the model"):
        MZ.materialize(tiny, wrong)
    # a model that does not implement the mask fails verification, naming the difference
    with pytest.raises(MaskError, match="differs from the bridge under zero ablation"):
        VF.verify(tiny, MZ.clean_hf_model(tiny), mask)


# ---------------------------------------------------------------- structural mode


def test_structural_equals_zero(tiny):
    mask = uniform_mask(tiny, per_layer=16)
    with pytest.warns(UserWarning, match="heads are zeroed"):
        small = MZ.materialize(tiny, mask, mode="structural")
    zero = MZ.materialize(tiny, mask, mode="zero")
    ids = ids_of(tiny)
    assert maxdiff(hf_logits(small, ids), hf_logits(zero, ids)) <= ATOL
    assert VF.verify(tiny, small, mask) <= ATOL
    assert small.config.intermediate_size == tiny.cfg.d_mlp - 16
    mlp = small.model.layers[1].mlp
    assert mlp.gate_proj.weight.shape == (112, tiny.cfg.d_model)
    assert mlp.down_proj.weight.shape == (tiny.cfg.d_model, 112)
    # kept neurons keep their weights, in order
    keep = mask.neurons[1].nonzero().flatten()
    orig = MZ.clean_hf_model(tiny).model.layers[1].mlp
    assert torch.equal(mlp.up_proj.weight, orig.up_proj.weight[keep])  # copied rows: exact
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in zero.parameters())


def test_structural_refuses_uneven_mask(tiny):
    mask = PruningMask.keep_all(tiny)
    mask.neurons[0, :3] = False
    mask.neurons[1, :5] = False
    with pytest.raises(MaskError, match=r"same number of pruned neurons in every layer.*\[3, 5\]") as e:
        MZ.materialize(tiny, mask, mode="structural")
    assert "per_layer='uniform'" in str(e.value) and "intermediate_size" in str(e.value)


# ---------------------------------------------------------------- export

LOADER = r"""
import sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, text, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
tok = AutoTokenizer.from_pretrained(folder)
ids = tok(text, return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(input_ids=ids).logits
assert not [m for m in sys.modules if m.startswith("lens_bias")], "lens_bias was imported"
torch.save({"ids": ids, "logits": logits, "d_mlp": model.config.intermediate_size,
            "attn": model.config._attn_implementation}, out)
"""


@pytest.mark.parametrize("mode", ["zero", "structural"])
def test_export_loads_with_plain_transformers(tiny, tmp_path, mode):
    mask = uniform_mask(tiny, per_layer=16, heads=(mode == "zero"))
    # zero: pin the bridge's eager attention in config.json (the bridge's op order);
    # structural: transformers' default
    attn = "eager" if mode == "zero" else None
    folder = EX.export_hf(tiny, mask, tmp_path / "export", mode=mode, attn_implementation=attn)
    assert (folder / "model.safetensors").exists() and (folder / "config.json").exists()
    assert (folder / "lens_bias_mask" / "mask.safetensors").exists()
    assert PruningMask.load(folder / "lens_bias_mask", tiny).pruned("neurons") == mask.pruned("neurons")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temp folders left
    out = tmp_path / "logits.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", LOADER, str(folder), TEXT, str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out, weights_only=True)
    ids = ids_of(tiny)
    assert torch.equal(got["ids"], ids)  # token ids: exact
    assert got["d_mlp"] == (112 if mode == "structural" else 128)
    ref = hf_logits(MZ.materialize(tiny, mask, mode=mode), ids)
    assert maxdiff(got["logits"].float(), ref) <= ATOL
    assert maxdiff(got["logits"].float(), bridge_logits(tiny, ids, mask)) <= ATOL
    if mode == "zero":
        assert got["attn"] == "eager"
        # eager pinned: HF's eager attention does the bridge's ops in the bridge's order, but it is another
        # implementation in another process (other weight buffers): equal to float32 rounding, not bit for bit
        assert maxdiff(got["logits"].float(), bridge_logits(tiny, ids, mask)) <= ATOL


def test_verify_names_attention_kernel_mismatch(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    mask = masks_for(tiny, "neurons")
    folder = EX.export_hf(tiny, mask, tmp_path / "export")
    sdpa = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    assert VF.verify(tiny, sdpa, mask) <= ATOL
    with pytest.raises(MaskError, match="uses sdpa attention and the bridge eager"):
        VF.verify(tiny, sdpa, mask, atol=-1.0)  # force the failure path


def test_export_refuses_non_empty_folder(tiny, tmp_path):
    mask = masks_for(tiny, "neurons")
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(RunError, match="overwrite=True"):
        EX.export_hf(tiny, mask, target)
    assert (target / "keep.txt").read_text() == "mine"
    EX.export_hf(tiny, mask, target, overwrite=True)
    assert not (target / "keep.txt").exists() and (target / "model.safetensors").exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RunError, match="not a folder"):
        EX.export_hf(tiny, mask, tmp_path / "afile")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert EX.export_hf(tiny, mask, empty) == empty.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty", "out"]


# ---------------------------------------------------------------- torch.nn.utils.prune


def test_torch_prune_round_trip(tiny):
    mask = masks_for(tiny, "both", seed=5)
    model = MZ.clean_hf_model(tiny)
    originals = {k: v.clone() for k, v in model.state_dict().items()}
    IO.to_torch_prune(model, mask)
    assert hasattr(model.model.layers[0].mlp.down_proj, "weight_orig")
    ids = ids_of(tiny)
    zero = MZ.materialize(tiny, mask, mode="zero")
    assert maxdiff(hf_logits(model, ids), hf_logits(zero, ids)) <= ATOL
    assert VF.verify(tiny, model, mask) <= ATOL
    n_modules = (3 * sum(1 for c in mask.per_layer("neurons") if c)
                 + sum(1 for c in mask.per_layer("heads") if c))
    assert IO.undo_torch_prune(model) == n_modules
    after = model.state_dict()
    assert after.keys() == originals.keys()
    assert all(torch.equal(after[k], v) for k, v in originals.items())  # restored tensors: exact
    assert all(isinstance(p, torch.nn.Parameter) for p in model.model.layers[0].mlp.parameters())
    # the restored HF model vs the bridge: two implementations, equal to float32 rounding (ATOL)
    assert maxdiff(hf_logits(model, ids), bridge_logits(tiny, ids)) <= ATOL
    assert IO.undo_torch_prune(model) == 0


# ---------------------------------------------------------------- torch-pruning


def test_torch_pruning_indices(tiny):
    mask = PruningMask.keep_all(tiny)
    mask.neurons[1, [4, 9]] = False
    mask.heads[0, 2] = False
    idx = IO.torch_pruning_indices(mask, model=MZ.clean_hf_model(tiny))
    d_head = tiny.cfg.d_head
    assert idx == {
        "model.layers.1.mlp.gate_proj": [4, 9],
        "model.layers.1.mlp.up_proj": [4, 9],
        "model.layers.1.mlp.down_proj": [4, 9],
        "model.layers.0.self_attn.o_proj": list(range(2 * d_head, 3 * d_head)),
    }
    with pytest.raises(MaskError, match="d_head"):
        IO.torch_pruning_indices(mask)


def test_torch_pruning_equals_structural(tiny):
    pytest.importorskip("torch_pruning")
    mask = uniform_mask(tiny, per_layer=16)
    model = MZ.clean_hf_model(tiny)
    with pytest.warns(UserWarning, match="heads are zeroed"):
        IO.apply_torch_pruning(model, mask)
        small = MZ.materialize(tiny, mask, mode="structural")
    assert model.config.intermediate_size == 112
    assert model.model.layers[0].mlp.down_proj.in_features == 112
    ids = ids_of(tiny)
    assert maxdiff(hf_logits(model, ids), hf_logits(small, ids)) <= ATOL
    assert VF.verify(tiny, model, mask) <= ATOL


def test_torch_pruning_uneven_warns(tiny):
    pytest.importorskip("torch_pruning")
    mask = PruningMask.keep_all(tiny)
    mask.neurons[0, :3] = False
    model = MZ.clean_hf_model(tiny)
    with pytest.warns(UserWarning, match="cannot describe it"):
        IO.apply_torch_pruning(model, mask)
    assert model.config.intermediate_size == 128
    assert model.model.layers[0].mlp.up_proj.out_features == 125
    assert VF.verify(tiny, model, mask) <= ATOL


def test_missing_torch_pruning_says_how_to_install(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(ImportError, match="pip install torch-pruning==1.6.1"):
        IO.apply_torch_pruning(MZ.clean_hf_model(tiny), masks_for(tiny, "neurons"))


# ---------------------------------------------------------------- optiPfair


def test_optipfair_scores_format():
    s = torch.tensor([[3.0, -1.0, 1.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
    per_layer = IO.optipfair_scores(s)
    assert set(per_layer) == {0, 1}
    assert per_layer[0].tolist() == [1.0, 0.0, 0.5, 0.25]
    assert per_layer[1].tolist() == [0.0] * 4  # constant layer: no preference
    glob = IO.optipfair_scores(s, normalize="global")
    assert glob[1].tolist() == [0.75] * 4 and glob[0].argmax() == 0
    assert list(IO.optipfair_scores(s, layers=[1])) == [1]
    with pytest.raises(MaskError, match="NaN"):
        IO.optipfair_scores(torch.tensor([[float("nan"), 1.0]]))


def test_optipfair_prunes_highest_scores(tiny):
    pytest.importorskip("optipfair")
    from optipfair.pruning.mlp_glu import prune_model_mlp_glu

    gen = torch.Generator().manual_seed(7)
    scores = torch.randn(tiny.cfg.n_layers, tiny.cfg.d_mlp, generator=gen) * 3 + 1
    fairness = IO.optipfair_scores(scores)
    base = MZ.clean_hf_model(tiny)
    originals = [layer.mlp.gate_proj.weight.clone() for layer in base.model.layers]
    pruned = prune_model_mlp_glu(base, pruning_percentage=25, fairness_scores=fairness, show_progress=False)
    n_pruned = int(0.25 * tiny.cfg.d_mlp)
    mask = PruningMask.keep_all(tiny)
    for layer, orig in enumerate(originals):
        new = pruned.model.layers[layer].mlp.gate_proj.weight
        # recover which original rows survived (rows of a random init are distinct)
        kept = [int((orig == row).all(-1).nonzero()) for row in new]
        removed = sorted(set(range(tiny.cfg.d_mlp)) - set(kept))
        assert removed == sorted(scores[layer].topk(n_pruned).indices.tolist())  # highest score = pruned
        mask.neurons[layer, removed] = False
    assert pruned.config.intermediate_size == tiny.cfg.d_mlp - n_pruned
    ids = ids_of(tiny)
    assert maxdiff(hf_logits(pruned, ids), hf_logits(MZ.materialize(tiny, mask, "structural"), ids)) <= ATOL


def test_optipfair_zeroing_equals_zero_materialization(tiny):
    pytest.importorskip("optipfair")
    from optipfair.pruning.mlp_glu import zero_neurons_mlp

    mask = masks_for(tiny, "neurons", seed=11)
    model = zero_neurons_mlp(MZ.clean_hf_model(tiny), IO.optipfair_neuron_indices(mask), show_progress=False)
    zero = MZ.materialize(tiny, mask)
    # weights only: the same tensors with the same slices set to zero, exact
    assert all(torch.equal(a, b)
               for a, b in zip(model.state_dict().values(), zero.state_dict().values(), strict=True))


# ---------------------------------------------------------------- real models


def _real_model_equivalence(bridge, tmp_path):
    from transformers import AutoModelForCausalLM

    mask = random_mask(bridge, 50, "neurons", seed=0) | random_mask(bridge, 3, "heads", seed=1)
    ids = ids_of(bridge)
    before = bridge_logits(bridge, ids)
    model = MZ.materialize(bridge, mask, mode="zero")
    diff = VF.verify(bridge, model, mask)
    effect = maxdiff(bridge_logits(bridge, ids, mask), before)
    assert diff <= ATOL
    assert effect > 1e-4
    # the same bridge and input after materializing: exact
    assert torch.equal(bridge_logits(bridge, ids), before)
    # the exported folder: within ATOL with the bridge's (eager) attention; sdpa rounds differently (1e-3)
    folder = EX.export_hf(bridge, mask, tmp_path / "export", attn_implementation="eager")
    del model
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert loaded.config._attn_implementation == "eager"
    exported = VF.verify(bridge, loaded, mask)
    sdpa = VF.verify(bridge, AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa"), mask,
                     atol=1e-3)
    print(f"\n{bridge.lens_bias_name}: max abs logit diff vs ablation: materialized {diff:.3g}, "
          f"exported+reloaded {exported:.3g} (sdpa {sdpa:.3g}); ablation effect {effect:.3g}")
    assert exported <= ATOL
    # each kind alone, and structural removal of a uniform neuron mask
    for alone in (random_mask(bridge, 50, "neurons", seed=2), random_mask(bridge, 3, "heads", seed=3)):
        assert VF.verify(bridge, MZ.materialize(bridge, alone, mode="zero"), alone) <= ATOL
    uniform = PruningMask.keep_all(bridge)
    uniform.neurons[:, :4] = False
    structural = MZ.materialize(bridge, uniform, mode="structural")
    assert structural.config.intermediate_size == bridge.cfg.d_mlp - 4
    # removing columns changes the order of the fp32 sums (a few 1e-5 on 30 layers). In float64 the
    # structural and zero models are the same function up to float64 rounding, but a float64 HF model
    # is not float64 throughout: RMSNorm and the eager attention softmax compute in float32, so a
    # float64-level difference in an MLP sum (another reduction order for the shorter matrix) can flip
    # one float32 rounding and then spreads like float32 rounding does (measured: a 1e-12 relative weight
    # change moves SmolLM2's float64 logits 9e-6; 1-ulp softmax noise 1.3e-5, Gemma 1.6e-5). Hence the
    # float32 bound; a wrong column moves them ~6e-2.
    zero = MZ.materialize(bridge, uniform, mode="zero").double()
    structural = structural.double()
    with torch.no_grad():
        assert maxdiff(structural(ids).logits, zero(ids).logits) <= MZ.STRUCTURAL_ATOL


@pytest.mark.slow
def test_materialize_equivalence_smollm2(smol, tmp_path):
    _real_model_equivalence(smol, tmp_path)


@pytest.mark.slow
def test_materialize_equivalence_gemma(gemma, tmp_path):
    _real_model_equivalence(gemma, tmp_path)



def test_structural_export_checks_at_float32_summation_tolerance(tiny, tmp_path, monkeypatch):
    """Structural matrices sum in another order: the export check allows 1e-4 there, 1e-5 for zero."""
    seen = []
    real = EX.materialize_checked

    def spy(*a, **k):
        seen.append(k.get("atol"))
        return real(*a, **k)

    monkeypatch.setattr(EX, "materialize_checked", spy)
    EX.export_hf(tiny, uniform_mask(tiny, heads=False), tmp_path / "s", mode="structural")
    EX.export_hf(tiny, uniform_mask(tiny, heads=False), tmp_path / "z", mode="zero")
    assert seen == [MZ.STRUCTURAL_ATOL, 1e-5]
