"""The opt-in chat-template mode (lens_bias.model.chat): pair prompts as one user turn of the chat template,
exactly one BOS, the same ids in every stage, recorded in a run; plain text stays raw."""

import copy
import json
from dataclasses import replace

import pytest
import torch
from typer.testing import CliRunner

from lens_bias import LensBiasError, build_pairs, load_model
from lens_bias.attribution.patching import aligned_suffix, attribute
from lens_bias.cli.main import app
from lens_bias.measures.metrics import measure
from lens_bias.measures.targets import sentence_tokens
from lens_bias.model import load as M
from lens_bias.model.batching import tokenize_pairs
from lens_bias.model.chat import chat_enabled, chat_rows, chat_text, use_chat_template
from lens_bias.pipeline.record import _prompts_sentence
from lens_bias.prompts.pairs import PairSet

# SmolLM2-Instruct's ChatML template; on tiny-random its markers are plain text (the vocabulary has no
# such special tokens), and it writes no BOS, so lens_bias must prepend one
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
    "trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ASSISTANT = "<|im_start|>assistant\n"


def _tiny_chat(template: str = CHATML):
    """A fresh tiny-random bridge whose tokenizer (a copy) has ``template``, chat mode on."""
    b = load_model("tiny-random", device="cpu")
    tok = copy.deepcopy(b.lens_bias_tokenizer)
    tok.chat_template = template
    b.lens_bias_tokenizer = tok
    return use_chat_template(b)


@pytest.fixture(scope="module")
def chat_bridge():
    return _tiny_chat()


@pytest.fixture(scope="module")
def pairs():
    """Four pairs of equal and two of unequal token length (names split differently)."""
    ps = build_pairs(["hiring", "finance"])
    tok = M.tiny_random_hf()[1]
    n = {p.id: len(tok(p.black)["input_ids"]) - len(tok(p.white)["input_ids"]) for p in ps}
    return PairSet([p for p in ps if n[p.id] == 0][:4] + [p for p in ps if n[p.id] != 0][:2])


def _tail_len(tok) -> int:
    """Tokens the template puts after the user's text (end of turn and the assistant prefix)."""
    full = chat_text(tok, "X")
    return len(tok(full[full.index("X") + 1:], add_special_tokens=False)["input_ids"])


def _contains(row: list[int], sub: list[int]) -> bool:
    return any(row[i:i + len(sub)] == sub for i in range(len(row) - len(sub) + 1))


def test_a_tokenizer_without_a_chat_template_is_refused_with_the_fix():
    b = load_model("tiny-random", device="cpu")
    assert b.lens_bias_tokenizer.chat_template is None
    with pytest.raises(LensBiasError, match="tiny-random's tokenizer has no chat template.*chat_template"):
        use_chat_template(b)
    assert not chat_enabled(b)
    with pytest.raises(LensBiasError, match="no chat template"):
        load_model("tiny-random", device="cpu", chat_template=True)
    b.lens_bias_tokenizer = copy.deepcopy(b.lens_bias_tokenizer)
    b.lens_bias_tokenizer.chat_template = "{{ 'always the same text' }}"  # drops the user's prompt
    with pytest.raises(LensBiasError, match="does not keep the user's text"):
        use_chat_template(b)
    b.lens_bias_tokenizer.chat_template = "{{ raise_exception('no lone user turns') }}"
    with pytest.raises(LensBiasError, match="fails on one user turn"):
        use_chat_template(b)


def test_a_chat_prompt_has_one_bos_the_prompt_tokens_and_the_assistant_prefix(chat_bridge, pairs):
    tok = chat_bridge.lens_bias_tokenizer
    t = tokenize_pairs(chat_bridge, pairs)
    raw = tokenize_pairs(load_model("tiny-random", device="cpu"), pairs)
    prompts = [p.black for p in pairs] + [p.white for p in pairs]
    for prompt, row, raw_row in zip(prompts, t.black + t.white, raw.black + raw.white, strict=True):
        assert row.count(tok.bos_token_id) == 1 and row[0] == tok.bos_token_id
        assert _contains(row, tok(prompt, add_special_tokens=False)["input_ids"])
        assert tok.decode(row[1:]) == chat_text(tok, prompt)
        assert tok.decode(row).endswith(ASSISTANT) and "<|im_start|>user\n" + prompt in tok.decode(row)
        assert len(row) > len(raw_row)


def test_a_template_that_writes_bos_itself_still_gives_one_bos():
    b = _tiny_chat("{{ bos_token }}" + CHATML)
    tok = b.lens_bias_tokenizer
    assert chat_text(tok, "Hi").startswith(tok.bos_token)
    row = chat_rows(tok, ["Jamal applied for the loan. The bank decided to"])[0]
    assert row[0] == tok.bos_token_id and row.count(tok.bos_token_id) == 1
    no_bos = copy.deepcopy(tok)
    no_bos.bos_token = None  # a tokenizer without BOS: no BOS in the row either
    assert no_bos.bos_token_id is None
    assert tok.bos_token_id not in chat_rows(no_bos, ["Jamal applied for the loan."])[0]


def test_the_templated_prompts_of_a_pair_still_differ_only_in_the_subject(chat_bridge, pairs):
    """The patch estimator's aligned suffix: the template adds the same tokens before and after both
    prompts, so every pair patches exactly the template's tail more than without the template."""
    raw_b = load_model("tiny-random", device="cpu")
    tail = _tail_len(chat_bridge.lens_bias_tokenizer)
    assert tail > 0
    ct, rt = tokenize_pairs(chat_bridge, pairs), tokenize_pairs(raw_b, pairs)
    n = len(pairs)
    chat_patch, chat_src = aligned_suffix(ct.batch(range(n)), n)
    raw_patch, _ = aligned_suffix(rt.batch(range(n)), n)
    assert (chat_patch.sum(1) == raw_patch.sum(1) + tail).all() and (raw_patch.sum(1) > 0).all()
    kinds = set()
    for i in range(n):
        b, w = ct.black[i], ct.white[i]
        kinds.add(len(b) == len(w))
        head = next(k for k in range(min(len(b), len(w))) if b[k] != w[k])
        assert head > 1 and b[:head] == w[:head]  # the shared template head and the prompts' shared start
        pos = chat_patch[i].nonzero().flatten()
        assert int(pos[-1]) == len(b) - 1  # the patched positions end at the last token ...
        assert [w[j] for j in chat_src[i, pos].tolist()][-tail:] == b[-tail:]  # ... aligned on the tail
    assert kinds == {True, False}, "the sample should hold pairs of equal and of unequal token length"
    s = attribute(chat_bridge, pairs, estimator="patch", progress=False)
    r = attribute(raw_b, pairs, estimator="patch", progress=False)
    assert torch.isfinite(s.neurons).all() and not torch.allclose(s.neurons, r.neurons)


def test_measure_with_the_chat_template_is_measuring_the_templated_strings(chat_bridge, pairs):
    tok = chat_bridge.lens_bias_tokenizer
    raw_b = load_model("tiny-random", device="cpu")
    on = measure(chat_bridge, pairs, progress=False)
    off = measure(raw_b, pairs, progress=False)
    by_hand = measure(raw_b, PairSet([replace(p, black=chat_text(tok, p.black), white=chat_text(tok, p.white))
                                      for p in pairs]), progress=False)
    assert on.values["js"] != off.values["js"]
    assert on.values["js"] == pytest.approx(by_hand.values["js"], rel=1e-5, abs=1e-9)
    assert on.values["logit_gap"] == pytest.approx(by_hand.values["logit_gap"], rel=1e-5, abs=1e-7)
    use_chat_template(chat_bridge, on=False)
    try:
        assert measure(chat_bridge, pairs, progress=False).values["js"] == pytest.approx(off.values["js"])
    finally:
        use_chat_template(chat_bridge)


def test_sentence_pairs_stay_raw(chat_bridge):
    from lens_bias.prompts.pairs import ContrastivePair

    p = ContrastivePair("s:1", "general", "s", "Jamal is late.", "Greg is late.")
    raw = sentence_tokens(load_model("tiny-random", device="cpu"), [p])
    chat = sentence_tokens(chat_bridge, [p])
    assert chat.black == raw.black and chat.white == raw.white


@pytest.fixture
def tiny_with_template(monkeypatch):
    """tiny-random's tokenizer with the ChatML template, wherever lens_bias loads it."""
    plain = M._tiny_tokenizer

    def with_template():
        tok = plain()
        tok.chat_template = CHATML
        return tok

    monkeypatch.setattr(M, "_tiny_tokenizer", with_template)


def test_cli_measure_with_chat_template(tiny_with_template):
    runner = CliRunner()
    args = ["measure", "--model", "tiny-random", "--domains", "hiring", "--per-domain", "2", "--device",
            "cpu", "--json", "-q"]
    on, off = runner.invoke(app, [*args, "--chat-template"]), runner.invoke(app, args)
    assert on.exit_code == 0 and off.exit_code == 0, on.output + off.output
    assert json.loads(on.output)["all"]["js"] != json.loads(off.output)["all"]["js"]
    for cmd in ("run", "measure", "scan"):
        assert "--chat-template" in runner.invoke(app, [cmd, "--help"], terminal_width=200).output


def test_cli_refuses_chat_template_without_one():
    r = CliRunner().invoke(app, ["measure", "--model", "tiny-random", "--per-domain", "1", "--device", "cpu",
                                 "-q", "--chat-template"])
    assert r.exit_code == 2 and "no chat template" in r.output


def test_a_run_with_the_chat_template_records_it(tmp_path, tiny_with_template):
    from lens_bias.pipeline.stages import RunConfig, run

    # tests/test_pipeline.py's small_config, on one domain (no leave-one-domain-out stage)
    # and one curve budget
    cfg = RunConfig(model="tiny-random", domains=["hiring"], per_domain=3, held_per_domain=3, budget="2%",
                    budgets=["2%"], curve_kinds=["neurons"], validate_k=5, validate_random=3,
                    validate_per_domain=1, ppl_tokens=512, progress=False, device="cpu", chat_template=True)
    m = run(cfg, tmp_path / "r")
    on_disk = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert m["config"]["chat_template"] is True and on_disk["config"]["chat_template"] is True
    html = (tmp_path / "r" / "report.html").read_text()
    assert ("went through the model&#x27;s chat template" in html
            or "went through the model's chat template" in html)
    assert "raw, not through a chat template" in _prompts_sentence({"chat_template": False})


def test_experiments_take_the_chat_template(tmp_path, tiny_with_template):
    runner = CliRunner()
    out = tmp_path / "gen"
    r = runner.invoke(app, ["experiment", "generalize", "--model", "tiny-random", "--per-domain", "3",
                            "--held-per-domain", "2", "--budget", "4%", "--domains", "finance,hiring",
                            "--max-cost-quantile", "1", "-q", "--out", str(out), "--chat-template"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "result.json").read_text())["chat_template"] is True
    for cmd in ("curve", "generalize", "overlap", "transfer", "selectors", "wording"):
        assert "--chat-template" in runner.invoke(app, ["experiment", cmd, "--help"],
                                                  terminal_width=200).output
