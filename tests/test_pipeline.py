import json
import shutil
import subprocess

import pytest
from conftest import small_run_config as small_config

from lens_bias import RunError
from lens_bias.errors import ChoiceError
from lens_bias.pipeline import stages as pl
from lens_bias.pipeline.stages import RunConfig, run


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "r1"
    metrics = run(small_config(), out)
    return out, metrics


def test_run_writes_the_contract_folder(run_folder):
    out, m = run_folder
    for f in ("metrics.json", "report.html", "mask.safetensors", "mask.json", "model/config.json",
              "model/model.safetensors", "model/tokenizer.json"):
        assert (out / f).exists(), f
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("model", "budget", "kind", "pruned", "before", "after", "validation", "timings_s", "versions",
                "curve", "random_same_budget"):
        assert key in on_disk
    assert on_disk["pruned"]["neurons"] == round(0.02 * 2 * 128)
    assert on_disk["export"]["max_abs_logit_diff"] <= 1e-5
    # held-out templates are never seen by the scorer
    assert not set(on_disk["pairs"]["train_templates"]) & set(on_disk["pairs"]["held_out_templates"])
    # the curve has the attribution scorer and the random control at every budget
    assert {(r["scorer"], r["budget"]) for r in on_disk["curve"]} == {
        ("attribution", "1%"), ("attribution", "2%"), ("random", "1%"), ("random", "2%")}
    html = (out / "report.html").read_text()
    assert html.count('class="plotly-graph-div"') >= 6
    assert "Greedy continuations" in html
    assert "95 % CI" in html and "within noise" in html


def test_every_change_has_an_interval_and_a_test(run_folder):
    out, m = run_folder
    on_disk = json.loads((out / "metrics.json").read_text())
    assert "per_item" not in on_disk["before"]["held_out"] and "per_item" not in on_disk["random_same_budget"]
    tests = on_disk["tests"]
    for key in ("js", "abs_logit_gap", "wikitext_ppl", "random_js", "random_abs_logit_gap"):
        t = tests[key]
        assert {"before", "after", "diff", "diff_ci", "pct", "pct_ci", "p", "test", "n",
                "within_noise"} <= set(t)
        assert t["diff_ci"][0] <= t["diff"] <= t["diff_ci"][1] and 0 < t["p"] <= 1
        assert t["within_noise"] == (t["diff_ci"][0] <= 0 <= t["diff_ci"][1] or t["p"] >= 0.05)
    assert tests["js"]["before"] == pytest.approx(on_disk["before"]["held_out"]["js"])
    assert tests["js"]["pct"] == pytest.approx(on_disk["change"]["js_pct"])
    assert tests["js"]["n"] == on_disk["pairs"]["held_out"] and "by cluster" in tests["js"]["test"]
    assert tests["wikitext_ppl"]["after"] == pytest.approx(on_disk["after"]["held_out"]["wikitext_ppl"])
    assert tests["kl_neutral"]["diff_ci"] is None and "no interval" in tests["kl_neutral"]["note"]
    if "crows_black_rate" in on_disk["before"]:  # the shared CrowS-Pairs file is present
        for key, n in (("crows_black_rate", 282), ("crows_race_color_rate", 516)):
            t = tests[key]
            assert t["test"] == "exact McNemar" and t["n"] == n and t["b"] + t["c"] <= n
            assert t["diff"] == pytest.approx(on_disk["change"][key.replace("_rate", "_points")])


def test_the_validation_line_has_intervals_and_a_reading(run_folder):
    out, m = run_folder
    for kind, v in m["validation"].items():
        assert v["reading"].startswith(f"{kind}: ") and "signs right" in v["reading"]
        if v["spearman_ci"] is not None:
            assert v["spearman_ci"][0] <= v["spearman_ci"][1]
    assert "signs right" in (out / "report.html").read_text()


def test_bbq_is_measured_before_and_after(run_folder):
    """With the shared BBQ file, the run scores 200 of its Black / White rows before and after,
    with intervals, paired tests and a report section; without it, BBQ is absent, not faked."""
    out, _ = run_folder
    m = json.loads((out / "metrics.json").read_text())
    if m["capability_files"]["bbq"] is None:
        assert m["bbq"] is None and "bbq_acc_ambig" not in m["tests"]
        return
    assert m["bbq"]["rows"] == 200 and m["bbq"]["ambiguous_rows"] == 100
    assert 0 <= m["bbq"]["answers_changed"] <= 200
    for key in ("bbq_acc_ambig", "bbq_acc_disambig", "bbq_s_dis", "bbq_s_amb"):
        t, before = m["tests"][key], m["before"]["held_out"]
        assert t["before"] == pytest.approx(before[key]) and t["diff_ci"][0] <= t["diff"] <= t["diff_ci"][1]
        assert before[f"{key}_ci"][0] <= before[key] <= before[f"{key}_ci"][1]
    assert m["tests"]["bbq_acc_ambig"]["test"] == "exact McNemar"
    assert "Questions about people: BBQ" in (out / "report.html").read_text()


def test_the_generation_audit_is_measured_before_and_after(run_folder):
    """Our 80 prompt pairs (and BOLD's prompts when the file is there) sampled before and after:
    every gap with an interval and a paired test, the examples by the fixed rule, a report section."""
    out, _ = run_folder
    m = json.loads((out / "metrics.json").read_text())
    g, before = m["generations"], m["before"]["held_out"]
    assert g["prompts"]["pairs"] == 160 and g["samples"] == 2
    situations = ("street", "shop", "school", "work", "housing", "health", "police", "neighbourhood")
    assert len(g["examples"]) == 16
    assert {e["template"] for e in g["examples"]} == {f"g-{s}-01" for s in situations}
    sources = ["pairs"] + (["bold"] if g["prompts"]["bold"] else [])
    for src in sources:
        for axis in ("sentiment", "negative", "crime"):
            t = m["tests"][f"gen_{src}_{axis}_gap"]
            assert t["before"] == pytest.approx(before[f"gen_{src}_{axis}_gap"])
            assert t["diff_ci"][0] <= t["diff"] <= t["diff_ci"][1] and 0 < t["p"] <= 1
    assert "What the model writes" in (out / "report.html").read_text()


def test_the_knowledge_probe_is_measured_beside_the_random_mask(run_folder):
    """The probe before and after, with the random mask of the same size beside it (as BBQ and the
    audit are); the damage flag in metrics.json and the report says what the tests say."""
    from lens_bias.measures.knowledge import knowledge_damage

    out, _ = run_folder
    m = json.loads((out / "metrics.json").read_text())
    k, before, tests = m["knowledge"], m["before"]["held_out"], m["tests"]
    assert k["items"] == 126 and k["per_group"] == {"black": 74, "white": 52} and k["k"] == 10
    for key in ("know_logprob", "know_logprob_black", "know_logprob_white", "know_top1", "know_topk"):
        for t in (tests[key], tests[f"random_{key}"]):
            assert t["before"] == pytest.approx(before[key])
            assert t["diff_ci"][0] <= t["diff"] <= t["diff_ci"][1]
    assert tests["know_top1"]["test"] == "exact McNemar" and "permutation" in tests["know_logprob"]["test"]
    assert k["damaged"] == knowledge_damage(tests)
    assert k["random_damaged"] == knowledge_damage(tests, "random_")
    drops = [d["logprob_after"] - d["logprob_before"] for d in k["largest_drops"]]
    assert len(drops) == 5 and drops == sorted(drops)
    for key in [t for t in tests if t.startswith(("bbq_", "gen_"))]:
        assert f"random_{key}" in tests  # every user measure has its random-mask control
    html = (out / "report.html").read_text()
    assert "What the model must still know" in html and "random mask: change" in html
    assert ("Knowledge damaged" in html) == bool(k["damaged"])


def test_no_bbq_no_generations_no_knowledge_leave_them_out(tmp_path):
    m = run(small_config(bbq="", generations=False, knowledge="", curve_random=False, budgets=["2%"]),
            tmp_path / "r")
    assert m["bbq"] is None and "bbq_s_dis" not in m["tests"]
    assert m["generations"] is None and "gen_pairs_crime_gap" not in m["tests"]
    assert m["knowledge"] is None and not any(k.startswith(("know_", "random_know")) for k in m["tests"])


def test_existing_folder_is_refused(run_folder):
    out, _ = run_folder
    with pytest.raises(RunError, match="--overwrite"):
        run(small_config(), out)


def test_failure_leaves_no_folder_and_no_hooks(tmp_path, monkeypatch, tiny):
    monkeypatch.setattr("lens_bias.model.load.load_model", lambda *a, **k: tiny)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("lens_bias.weights.export.write_hf", boom)
    out = tmp_path / "r"
    with pytest.raises(RuntimeError, match="disk full"):
        run(small_config(), out)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
    assert all(not hp.fwd_hooks for hp in tiny.hook_dict.values())


def test_the_model_is_written_while_the_run_measures_and_a_later_failure_keeps_nothing(tmp_path, monkeypatch,
                                                                                       tiny):
    """The checked model is written on a thread while the pruned model is measured; a failure after the
    write started waits for the writer before the run folder is removed, so nothing is left behind."""
    import threading
    import time

    from lens_bias.weights import export as E

    monkeypatch.setattr("lens_bias.model.load.load_model", lambda *a, **k: tiny)
    real, log, measured = E.write_hf, [], threading.Event()

    def slow_write(*a, **k):  # still writing when the run fails: it waits for the failure first
        log.append(("write starts", threading.current_thread().name))
        assert measured.wait(timeout=300)
        time.sleep(0.5)
        out = real(*a, **k)
        log.append(("write ends", None))
        return out

    def failing_transfer(*a, **k):
        log.append(("transfer", threading.current_thread().name))
        measured.set()
        raise RuntimeError("out of memory in the leave-one-domain-out stage")

    monkeypatch.setattr(E, "write_hf", slow_write)
    monkeypatch.setattr(pl, "leave_one_domain_out", failing_transfer)
    out = tmp_path / "r"
    with pytest.raises(RuntimeError, match="leave-one-domain-out"):
        run(small_config(generations=False, bbq="", knowledge=""), out)
    assert [e for e, _ in log] == ["write starts", "transfer", "write ends"]  # measured while writing
    assert log[0][1] == "lens-bias export" and log[1][1] == "MainThread"
    assert list(tmp_path.iterdir()) == []  # nor a .r.tmp folder the writer went on filling


def test_bad_kind_is_refused(tmp_path):
    with pytest.raises(ChoiceError, match="--kind must be one of neurons, heads, both"):
        run(small_config(kind="layers"), tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert RunConfig().budget in pl.DEFAULT_BUDGETS  # the run's own budget is a point of its curve


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--virtual-time-budget=8000"]


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make test installs it)")
def test_report_renders_in_headless_chromium(run_folder, tmp_path):
    out, _ = run_folder
    page = (out / "report.html").resolve().as_uri()
    html = (out / "report.html").read_text()
    n_figures = html.count('class="plotly-graph-div"')
    dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'u1'}",
                          "--dump-dom", page],
                         capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # plotly.js draws every figure into its div: an error in the page leaves the div empty
    assert dom.stdout.count('class="main-svg"') >= n_figures >= 6
    log = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'u2'}",
                          "--enable-logging=stderr", "--v=0", "--window-size=1200,3000",
                          f"--screenshot={tmp_path / 'report.png'}", page],
                         capture_output=True, text=True, timeout=180)
    assert log.returncode == 0
    assert "Uncaught" not in log.stderr and "CONSOLE" not in log.stderr
    assert (tmp_path / "report.png").stat().st_size > 20_000


def test_iterative_selection_in_a_run(tmp_path):
    from lens_bias.masks import PruningMask

    m = run(small_config(steps=2, kind="both", budget="3%"), tmp_path / "it")
    assert m["config"]["steps"] == 2
    mask = PruningMask.load(tmp_path / "it" / "mask.safetensors")
    assert mask.counts() == {"neurons": m["pruned"]["neurons"], "heads": m["pruned"]["heads"]}
    assert m["pruned"]["neurons"] == round(0.03 * 2 * 128) and m["pruned"]["heads"] == 1
    assert m["export"]["max_abs_logit_diff"] <= 1e-5


def test_single_template_pairs_are_refused_before_the_model_loads(tmp_path):
    from lens_bias import build_pairs
    from lens_bias.prompts.pairs import PairSet

    ps = build_pairs(["finance"])
    PairSet([p for p in ps if p.template == ps[0].template]).to_jsonl(tmp_path / "p.jsonl")
    with pytest.raises(RunError,
                       match=r"at least two templates \(give more templates or use the bundled set\)"):
        run(small_config(pairs=str(tmp_path / "p.jsonl"), model="no-such-model"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_run_reports_seqgap_and_leave_one_domain_out(run_folder):
    out, m = run_folder
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["pairs"]["sentences_held_out"] > 0 and on_disk["pairs"]["scored_on"] == "pairs"
    assert on_disk["before"]["held_out"]["seqgap"] > 0 and "seqgap" in on_disk["tests"]
    t = on_disk["transfer"]
    assert {r["domain"] for r in t["rows"]} == set(on_disk["before"]["held_out"]["by_domain"])
    assert t["pooled"]["n_pairs"] == on_disk["pairs"]["held_out"]
    assert "leave-one-domain-out" in (out / "report.html").read_text()


def test_unknown_metric_is_refused_before_any_work(tmp_path):
    with pytest.raises(ChoiceError, match="--metric must be one of js, logit_gap, seqgap; got 'vibes'"):
        run(small_config(metric="vibes"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_run_with_the_auto_selector_records_its_choice(tmp_path):
    """``--selector auto``: the candidates are cross-validated on the templates of the train split,
    and metrics.json and the report say which one was chosen and why."""
    m = run(small_config(selector="auto", budget="2%", curve_kinds=("neurons",)), tmp_path / "auto")
    sel = m["selection"]
    assert sel["selector"] == "auto" and sel["chosen"] and "cross-validation" in sel["why"]
    assert sum(r["chosen"] for r in sel["candidates"]) == 1 and m["pruned"]["neurons"] == 5
    assert "How the selector was chosen" in (tmp_path / "auto" / "report.html").read_text()
    with pytest.raises(ChoiceError, match="--selector must be one of"):
        run(small_config(selector="magic"), tmp_path / "bad")


def test_run_with_mean_ablation_exports_the_folded_means(tmp_path):
    """--ablation mean: the means are folded into biases and the export check compares against mean
    ablation; the written model reloads with the same logits."""
    from transformers import AutoModelForCausalLM

    m = run(small_config(ablation="mean", curve_kinds=("neurons",), budgets=["2%"]), tmp_path / "mean")
    assert m["export"]["ok"] and m["export"]["max_abs_logit_diff"] <= 1e-5 and m["ablation"] == "mean"
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "mean" / "model")
    assert back.config.mlp_bias
