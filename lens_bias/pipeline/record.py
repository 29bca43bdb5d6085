"""A run's record: ``metrics.json`` (its keys and their order are part of the run folder's format,
docs/formats.md), ``scores.safetensors`` and ``report.html``, from what the stages of
:func:`lens_bias.pipeline.stages.run` produced."""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..bridge import Bridge, n_params
from ..masks import PruningMask
from ..measures.changes import crows_rates, run_tests, summary_rows, without_items
from ..measures.evaluation import pruned_params
from ..report import figures as viz
from ..report.html import Report
from ..scores import Scores
from ..studies.transfer import TRANSFER_HEADER, transfer_reading, transfer_rows
from ..weights.model_card import write_model_card
from .user_measures import bbq_block, generations_block, knowledge_block, knowledge_warning, user_sections


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("lens_bias", "torch", "transformers", "transformer-lens", "numpy", "plotly"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out



@dataclass
class RunResults:
    """What the stages after loading produce (the contents of ``metrics.json`` and the report)."""

    before: dict
    after: dict
    rand: dict
    act_diff: dict
    scores: Scores
    validation: dict
    curve: list[dict]
    mask: PruningMask
    continuations: list[dict]
    # the export check (lens_bias.weights.verification.Verification.to_dict) and where the model went
    export: dict
    # lens_bias.studies.transfer.leave_one_domain_out (runs over several domains)
    transfer: dict | None = None


def run_metrics(cfg, inp, r: RunResults, timings: dict) -> dict:
    """The ``metrics.json`` dict (its keys and their order are part of the run folder's format) of
    the run configured by ``cfg`` (a :class:`lens_bias.pipeline.stages.RunConfig`) on the inputs ``inp``."""
    files, scores, mask = inp.files, r.scores, r.mask
    tests = run_tests(r.before, r.after, r.rand, cfg.seed)
    return {
        "model": cfg.model,
        "budget": cfg.budget,
        "kind": cfg.kind,
        "metric": cfg.metric,
        "ablation": cfg.ablation,
        "pruned": _pruned(inp.bridge, mask),
        "selection": _selection(cfg, mask),
        "pairs": {"source": cfg.pairs or "bundled", "train": len(inp.train), "held_out": len(inp.held),
                  "train_templates": inp.train.templates, "held_out_templates": inp.held.templates,
                  "sentences_held_out": len(inp.ev.sentences) if inp.ev.sentences is not None else 0,
                  "scored_on": "sentence pairs" if inp.target_train is not inp.train else "pairs",
                  "scored_n": len(inp.target_train)},
        "before": {"held_out": without_items(r.before), **crows_rates(r.before)},
        "after": {"held_out": without_items(r.after), **crows_rates(r.after)},
        "random_same_budget": without_items(r.rand),
        "change": _change(r.before, r.after, r.rand),
        "tests": tests,
        "capability_files": {k: str(v) if v else None for k, v in files.items()},
        "validation": {k: {x: v.get(x) for x in ("spearman", "spearman_ci", "pearson", "sign_agreement", "n",
                                                 "reading")} for k, v in r.validation.items()},
        "curve": r.curve,
        "top_components": {"neurons": scores.top("neurons", 20), "heads": scores.top("heads", 10)},
        "pruned_components": {k: [[la, i, float(scores.get(k)[la, i])] for la, i in mask.pruned(k)][:200]
                              for k in ("neurons", "heads")},
        "activation_diff_by_layer": {k: v.tolist() for k, v in r.act_diff.items()},
        "continuations": r.continuations,
        "bbq": bbq_block(cfg, files, r.before, r.after),
        "generations": generations_block(inp.ev, files, r.before, r.after),
        "knowledge": knowledge_block(cfg, inp.ev, r.before, r.after, tests),
        "export": r.export,
        "transfer": (None if r.transfer is None
                     else {k: r.transfer[k] for k in ("rows", "pooled", "n_pairs", "settings")}),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "timings_s": timings,
        "versions": _versions(),
    }


def _selection(cfg, mask: PruningMask) -> dict:
    """How the units were chosen: the selector, and for ``auto`` the candidate it chose, why, and
    every candidate's validation numbers."""
    meta = mask.meta
    ms = meta.get("model_selection") or {}
    return {"selector": cfg.selector if cfg.steps == 1 else "iterative",
            "chosen": meta.get("selector_chosen"), "why": ms.get("why"), "candidates": ms.get("rows"),
            "n_fit_templates": ms.get("n_fit_templates"), "folds": ms.get("folds", 1),
            "n_val_templates": ms.get("n_val_templates"), "learned_best_step": meta.get("learn_best_step")}


def _pruned(bridge: Bridge, mask: PruningMask) -> dict:
    """Units and parameters removed, in all and per layer."""
    total_params = n_params(bridge)
    return {**mask.counts(), "params": pruned_params(bridge, mask),
            "params_pct": 100.0 * pruned_params(bridge, mask) / total_params,
            "per_layer_neurons": mask.per_layer("neurons"), "per_layer_heads": mask.per_layer("heads")}


def _change(before: dict, after: dict, rand: dict) -> dict:
    """Relative changes (%) of the bias and perplexity, and changes in points of the rates (with
    intervals and tests: :func:`lens_bias.measures.changes.run_tests`)."""
    points = lambda k: None if before.get(k) is None or after.get(k) is None else after[k] - before[k]  # noqa: E731
    return {
        "js_pct": _pct(before["js"], after["js"]),
        "abs_logit_gap_pct": _pct(before.get("abs_logit_gap"), after.get("abs_logit_gap")),
        "seqgap_pct": _pct(before.get("seqgap"), after.get("seqgap")),
        "wikitext_ppl_pct": _pct(before.get("wikitext_ppl"), after.get("wikitext_ppl")),
        "lambada_points": (None if before.get("lambada_acc") is None
                           else 100 * (after["lambada_acc"] - before["lambada_acc"])),
        "crows_black_points": points("crows_black_rate"),
        "crows_race_color_points": points("crows_race_color_rate"),
        "random_js_pct": _pct(before["js"], rand["js"]),
        "random_abs_logit_gap_pct": _pct(before.get("abs_logit_gap"), rand.get("abs_logit_gap")),
    }


def write_record(folder: Path, cfg, metrics: dict, r: RunResults) -> None:
    """``scores.safetensors``, ``metrics.json``, ``report.html`` and, when the export passed its check
    (``folder/model`` exists), the model card ``model/README.md`` with the run's measurements."""
    r.scores.save(folder / "scores.safetensors")
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    rep = Report(f"lens_bias run: {cfg.model}, {cfg.kind} at {cfg.budget}")
    _fill_report(rep, metrics, r)
    (folder / "report.html").write_text(rep.html(), encoding="utf-8")
    if (folder / "model").is_dir():
        write_model_card(folder / "model", r.mask, cfg.model, metrics)


def _pct(a, b):
    if a is None or b is None or a == 0:
        return None
    return 100.0 * (b - a) / a


def _prompts_sentence(config: dict) -> str:
    """The report's sentence on how the pair prompts reached the model (``RunConfig.chat_template``)."""
    if config.get("chat_template"):
        return ("Every pair prompt went through the model's chat template (one user turn and the assistant "
                "prefix); the plain-text measures (CrowS-Pairs, WikiText, LAMBADA, sentence pairs) stay raw.")
    return "Pair prompts were given raw, not through a chat template."


def _selection_section(rep: Report, sel: dict) -> None:
    """The report's account of how ``auto`` chose its selector (nothing for other selectors)."""
    if sel["candidates"]:
        rep.heading("How the selector was chosen (train templates only, never the held-out split)")
        how = (f"cross-validated in {sel['folds']} folds: each of the {sel['n_val_templates']} train "
               "templates is measured exactly with the mask a candidate selects without it"
               if sel.get("folds", 1) > 1 else
               f"selected on {sel['n_fit_templates']} fit templates and measured exactly on "
               f"{sel['n_val_templates']} validation templates of the train split")
        rep.text(f"Chosen: {sel['chosen']}: {sel['why']}. Candidates {how}; perplexity is that of the "
                 "candidate's mask on all train templates.", "note")
        rep.table([[r["label"], r["val_reduction_pct"], r["neutral_ppl_change_pct"],
                    "yes" if r["chosen"] else ""] for r in sel["candidates"]],
                  ["candidate", "validation JS reduction (%)", "neutral-text perplexity change (%)",
                   "chosen"])


def _warnings(rep: Report, m: dict) -> None:
    """What the report says first: a failed export check, knowledge the pruning damaged."""
    if not m["export"]["ok"]:
        rep.text(f"{m['export']['summary']}. No pruned model was written (no model/ folder); the "
                 "measurements below are those of the simulated pruning.", "warn")
    if warning := knowledge_warning(m):
        rep.text(warning, "warn")


def _fill_report(rep: Report, m: dict, r: RunResults) -> None:
    """The sections of ``report.html``: summary, figures, top components, validation, continuations."""
    before, after, scores = r.before, r.after, r.scores
    _warnings(rep, m)
    rep.heading("Summary")
    rep.table(summary_rows(m),
              ["measure", "before", "after", "change", "95 % CI", "p", "unit", "within noise?"])
    rep.text("Each change has a 95 % bootstrap interval (held-out pairs resampled by template, CrowS-Pairs "
             "rows, WikiText windows) and a paired test (sign-flip permutation by template; exact McNemar "
             "for the CrowS-Pairs rates, whose b / c count the rows that went from stereotyped to not and "
             "back). 'within noise': the interval covers 0 or p >= 0.05, so the change may be luck.", "note")
    p = m["pruned"]
    rep.text(f"Pruned {p['neurons']} neurons and {p['heads']} heads ({p['params']:,} parameters, "
             f"{p['params_pct']:.3f} % of the model), chosen by attribution patching on "
             f"{m['pairs']['scored_n']} train {m['pairs']['scored_on']} ({m['metric']}, {m['ablation']} "
             f"ablation, capability filter quantile {m['config']['max_cost_quantile']}). Held-out pairs "
             f"({m['pairs']['held_out']}) use templates never seen in scoring. "
             f"{_prompts_sentence(m['config'])} {m['export']['summary']}.",
             "note" if m["export"]["ok"] else "warn")
    _selection_section(rep, m["selection"])
    user_sections(rep, m)
    rep.heading("Before and after, per domain")
    rep.figure(viz.before_after(before, after))
    rep.heading("Pruning curves")
    rep.figure(viz.pruning_curves(
        r.curve, "js", "wikitext_ppl" if before.get("wikitext_ppl") else "kl_neutral",
        before={"js": before["js"], "wikitext_ppl": before.get("wikitext_ppl"), "kl_neutral": 0.0}))
    if r.transfer is not None:
        rep.heading("Unseen domains: leave-one-domain-out")
        rep.text(transfer_reading(r.transfer) + " Each mask is chosen one-shot at the run's budget, without "
                 "the tested domain's train pairs (one-shot keeps this stage to seconds a domain); the run's "
                 "own mask may come from another selector (iterative by default).", "note")
        rep.figure(viz.transfer_bars(r.transfer))
        rep.table(transfer_rows(r.transfer), TRANSFER_HEADER)
    rep.heading("Where the bias lives")
    rep.figure(viz.neuron_scores_by_layer(scores))
    rep.figure(viz.head_heatmap(scores))
    rep.figure(viz.activation_diff_by_layer({k: torch.tensor(v)
                                             for k, v in m["activation_diff_by_layer"].items()}))
    rep.heading("Top components")
    pruned = {k: sorted(v, key=lambda r: -r[2])[:20] for k, v in m["pruned_components"].items()}
    if pruned["neurons"] or pruned["heads"]:
        rep.text("Pruned (highest bias scores among the units that passed the capability filter):", "note")
        rep.table([[f"L{la} N{i}", sc] for la, i, sc in pruned["neurons"]] +
                  [[f"L{la} H{i}", sc] for la, i, sc in pruned["heads"]], ["pruned unit", "score"])
    rep.text("Highest bias scores overall (some are kept: removing them would cost too much capability):",
             "note")
    rep.table([[f"L{la} N{i}", s] for la, i, s in m["top_components"]["neurons"]], ["neuron", "score"])
    rep.table([[f"L{la} H{i}", s] for la, i, s in m["top_components"]["heads"]], ["head", "score"])
    rep.heading("Is the attribution right? Predicted vs exact ablation")
    rep.text(". ".join(v["reading"] for v in m["validation"].values() if v.get("reading"))
             + ". Each unit is ablated alone on a few train pairs (its top units by |score| and some random "
             "ones); the interval resamples the units.", "note")
    for kind in r.validation:
        rep.figure(viz.validation_scatter(r.validation, kind))
    rep.heading("Greedy continuations before and after")
    rep.table([[c["prompt"], c["before"], c["after"]] for c in m["continuations"]],
              ["prompt", "before", "after"])
    rep.heading("Run")
    rep.raw("<pre>" + json.dumps({"timings_s": m["timings_s"], "versions": m["versions"],
                                  "config": m["config"]}, indent=1) + "</pre>")
