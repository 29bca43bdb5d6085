"""``lens-bias experiment curve|generalize|overlap|transfer|selectors|wording``: the seed studies'
three claims on any model, leave-one-domain-out transfer (the unseen use case), and which
selection generalizes (selectors compared; the learning curve over training wording).

Each command scores on the train templates, evaluates on held-out templates and writes ``OUT/``
with ``result.json`` and ``report.html`` (written to a temporary folder and renamed at the end).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from ..errors import LensBiasError
from ..studies.setup import study_inputs, template_scores
from .common import (
    ChatOpt,
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    PairsOpt,
    QuietOpt,
    SelectorOpt,
    comma_list,
    domain_list,
    fail,
    fmt1,
    fmt2,
    load_options,
    table,
)

app = typer.Typer(no_args_is_help=True, help="Reproduce the seed studies' claims: neurons vs heads and scorers "
                                              "(curve), cross-domain transfer (generalize), overlap between domains, "
                                              "leave-one-domain-out transfer (transfer).")

DomainsOpt = Annotated[str | None, typer.Option("--domains", help="domains, comma-separated (default: all)")]
PerDomainOpt = Annotated[int, typer.Option(help="bundled train pairs sampled per domain (0 = all)")]
HeldOpt = Annotated[int, typer.Option(help="bundled held-out pairs sampled per domain (0 = all)")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="output folder (result.json, report.html)")]
CostOpt = Annotated[float, typer.Option(help="capability filter: keep units above this Fisher-cost quantile "
                                             "(1 = off)")]
OverwriteOpt = Annotated[bool, typer.Option(help="replace an existing output folder")]


def _write(out: Path, overwrite: bool, result: dict, report) -> None:
    """Write ``result.json`` and ``report.html`` into ``out``, atomically (:func:`atomic_out`)."""
    from ..atomic import atomic_out

    with atomic_out(out, overwrite) as tmp:
        (tmp / "result.json").write_text(json.dumps(result, indent=1, default=float))
        (tmp / "report.html").write_text(report.html(), encoding="utf-8")


def _quantile(q: float) -> float | None:
    return None if q >= 1 else q


@app.command()
def curve(
    model: ModelOpt = "smollm2-135m",
    pairs: PairsOpt = None,
    domains: DomainsOpt = None,
    per_domain: PerDomainOpt = 24,
    held_per_domain: HeldOpt = 26,
    scorers: Annotated[str, typer.Option(help="comma-separated: ablate, patch, actdiff, wanda, random")] =
    "ablate,patch,actdiff,wanda,random",
    kinds: Annotated[str, typer.Option(help="neurons,heads")] = "neurons,heads",
    budgets: Annotated[str, typer.Option(help="comma-separated; %params keeps kinds parameter-matched")] =
    "0.1%params,0.2%params,0.5%params,1%params",
    max_cost_quantile: CostOpt = 0.5,
    selector: SelectorOpt = "oneshot",
    seed: int = 0,
    out: OutOpt = Path("experiments/curve"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    chat_template: ChatOpt = False,
) -> None:
    """Neurons vs heads and scorer vs scorer, at equal numbers of removed parameters."""
    from ..report import figures as viz
    from ..report.html import Report
    from ..studies.curve import compare_scorers

    t0 = time.time()
    try:
        bridge, train, ev = study_inputs(model, pairs, domain_list([domains] if domains else None), per_domain,
                                         held_per_domain, seed, load_options(dtype, device, device_map, chat_template))
        res = compare_scorers(bridge, train, ev, scorers=comma_list(scorers), kinds=comma_list(kinds),
                              budgets=comma_list(budgets), max_cost_quantile=_quantile(max_cost_quantile), seed=seed,
                              progress=not quiet, selector=selector)
        res.update(model=model, chat_template=chat_template, seconds=round(time.time() - t0, 1))
        rep = Report(f"lens_bias experiment: scorers and kinds on {model}")
        rep.text(_curve_reading(res), "note")
        rep.figure(viz.pruning_curves(res["rows"], "js", "wikitext_ppl" if ev.wikitext else "kl_neutral",
                                      before={"js": res["before"]["js"], "wikitext_ppl": res["before"].get("wikitext_ppl"),
                                              "kl_neutral": 0.0}))
        rep.table(_curve_rows(res), ["scorer", "kind", "budget", "units", "% params", "JS", "JS reduction %",
                                     "ppl change %", "KL neutral"])
        _write(out, overwrite, res, rep)
    except LensBiasError as e:
        fail(e)
    typer.echo(table(_curve_rows(res), ["scorer", "kind", "budget", "units", "%params", "JS", "JS red. %",
                                         "ppl %", "KL"]))
    typer.echo(_curve_reading(res))
    typer.echo(f"wrote {out}/ (result.json, report.html) in {time.time() - t0:.0f} s")


def _curve_rows(res: dict) -> list[list]:
    return [[r["scorer"] if r.get("selector", "oneshot") == "oneshot" else f"{r['scorer']} ({r['selector']})", r["kind"], r["budget"], r["n_units"], round(r["params_pct"], 3), r["js"],
             r["js_reduction_pct"], r.get("ppl_change_pct"), r.get("kl_neutral")] for r in res["rows"]]


def _curve_reading(res: dict) -> str:
    w = res["winners"]
    m = w["mean_js_reduction_pct"]
    parts = ["mean held-out JS reduction over the budgets: " +
             "; ".join(f"{s}: " + ", ".join(f"{k} {v:.1f} %" for k, v in ks.items()) for s, ks in m.items())]
    parts += [f"best {k}: {s}" for k, s in w["best_scorer"].items()]
    parts += ["neurons minus heads (points, equal parameters): " +
              ", ".join(f"{s} {v:+.1f}" for s, v in w["neurons_minus_heads_pct_points"].items())]
    return ". ".join(parts) + "."


@app.command()
def generalize(
    model: ModelOpt = "smollm2-135m",
    pairs: PairsOpt = None,
    domains: DomainsOpt = None,
    per_domain: PerDomainOpt = 24,
    held_per_domain: HeldOpt = 26,
    budget: Annotated[str, typer.Option(help="count, % of units or %params")] = "0.5%",
    kind: Annotated[str, typer.Option(help="neurons or heads")] = "neurons",
    scorer: Annotated[str, typer.Option(help="ablate, patch, actdiff, wanda or random")] = "ablate",
    max_cost_quantile: CostOpt = 0.5,
    seed: int = 0,
    out: OutOpt = Path("experiments/generalize"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    chat_template: ChatOpt = False,
) -> None:
    """Cross-domain transfer: prune on each domain, measure the bias reduction on every domain's
    held-out templates (Ma et al.'s finance -> commerce question, for all domain pairs)."""
    from ..report import figures as viz
    from ..report.html import Report
    from ..studies.generalize import generalization_matrix, overlap

    t0 = time.time()
    try:
        bridge, train, ev = study_inputs(model, pairs, domain_list([domains] if domains else None), per_domain,
                                         held_per_domain, seed, load_options(dtype, device, device_map, chat_template))
        gm = generalization_matrix(bridge, train, ev, budget=budget, kind=kind, scorer=scorer,
                                   max_cost_quantile=_quantile(max_cost_quantile), progress=not quiet)
        ov = overlap(gm["pruned"], bridge.cfg.n_layers)
        res = {**gm, "overlap": ov, "model": model, "chat_template": chat_template, "seconds": round(time.time() - t0, 1)}
        rep = Report(f"lens_bias experiment: cross-domain transfer on {model}")
        rep.text(_gen_reading(res), "note")
        rep.figure(viz.generalization_heatmap(gm))
        rep.table(_gen_rows(gm), ["learned on \\ tested on", *gm["test_domains"], "WikiText ppl"])
        rep.figure(viz.overlap_heatmap(ov))
        _write(out, overwrite, res, rep)
    except LensBiasError as e:
        fail(e)
    typer.echo(table(_gen_rows(gm), ["learned on", *gm["test_domains"], "ppl"]))
    typer.echo(_gen_reading(res))
    typer.echo(f"wrote {out}/ (result.json, report.html) in {time.time() - t0:.0f} s")


def _gen_rows(gm: dict) -> list[list]:
    return [[t, *[gm["reduction_pct"][t][d] for d in gm["test_domains"]], gm["wikitext_ppl_after"].get(t)]
            for t in gm["rows"]]


def _gen_reading(res: dict) -> str:
    return (f"JS reduction (%) on held-out templates, {res['kind']} at {res['budget']}: in-domain mean "
            f"{fmt1(res['in_domain_mean_pct'])}, cross-domain mean {fmt1(res['cross_domain_mean_pct'])}, "
            f"pruning learned on all domains {fmt1(res['all_row_mean_pct'])}; mean Jaccard overlap between "
            f"domains' pruned sets {fmt2(res['overlap']['mean_offdiag_jaccard'])}. "
            f"Perplexity before {fmt1(res['wikitext_ppl_before'])}.")


@app.command("overlap")
def overlap_cmd(
    model: ModelOpt = "smollm2-135m",
    pairs: PairsOpt = None,
    domains: DomainsOpt = None,
    per_domain: PerDomainOpt = 24,
    held_per_domain: HeldOpt = 26,
    budget: Annotated[str, typer.Option(help="count, % of units or %params")] = "0.5%",
    kind: Annotated[str, typer.Option(help="neurons or heads")] = "neurons",
    scorer: Annotated[str, typer.Option(help="ablate, patch, actdiff, wanda or random")] = "ablate",
    max_cost_quantile: CostOpt = 0.5,
    seed: int = 0,
    out: OutOpt = Path("experiments/overlap"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    chat_template: ChatOpt = False,
) -> None:
    """Which units each domain's pruning picks: Jaccard overlap between domains, and by layer."""
    from ..report import figures as viz
    from ..report.html import Report
    from ..studies.generalize import domain_masks, overlap

    t0 = time.time()
    try:
        bridge, train, ev = study_inputs(model, pairs, domain_list([domains] if domains else None), per_domain,
                                         held_per_domain, seed, load_options(dtype, device, device_map, chat_template))
        masks = domain_masks(bridge, train, None, budget, kind, scorer, True, ev.neutral,
                             _quantile(max_cost_quantile), progress=not quiet)
        ov = overlap({t: m.pruned(kind) for t, m in masks.items()}, bridge.cfg.n_layers)
        res = {**ov, "pruned": {t: m.pruned(kind) for t, m in masks.items()}, "model": model, "chat_template": chat_template, "budget": budget,
               "kind": kind, "scorer": scorer, "seconds": round(time.time() - t0, 1)}
        rep = Report(f"lens_bias experiment: overlap of domain prunings on {model}")
        rep.figure(viz.overlap_heatmap(ov, f"Overlap of the {kind} pruned per domain ({budget}, {scorer})"))
        _write(out, overwrite, res, rep)
    except LensBiasError as e:
        fail(e)
    names = ov["names"]
    typer.echo(table([[a, *[round(v, 2) for v in row]] for a, row in zip(names, ov["jaccard"], strict=True)],
                      ["Jaccard", *names]))
    typer.echo(f"mean overlap between domains: {fmt2(ov['mean_offdiag_jaccard'])}; wrote {out}/")


@app.command()
def transfer(
    model: ModelOpt = "smollm2-135m",
    pairs: PairsOpt = None,
    domains: DomainsOpt = None,
    per_domain: PerDomainOpt = 24,
    held_per_domain: HeldOpt = 26,
    budget: Annotated[str, typer.Option(help="count, % of units or %params")] = "0.5%",
    kind: Annotated[str, typer.Option(help="neurons or heads")] = "neurons",
    scorer: Annotated[str, typer.Option(help="ablate, patch, actdiff, wanda or random")] = "ablate",
    max_cost_quantile: CostOpt = 0.5,
    seed: int = 0,
    out: OutOpt = Path("experiments/transfer"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    chat_template: ChatOpt = False,
) -> None:
    """Leave-one-domain-out transfer (the unseen use case): for each domain, prune with the mask
    learned on all the other domains and measure the bias reduction on its held-out templates,
    next to the mask learned on all domains; pooled over every domain with a 95 % interval."""
    from ..report import figures as viz
    from ..report.html import Report
    from ..studies.transfer import TRANSFER_HEADER, leave_one_domain_out, transfer_reading, transfer_rows

    t0 = time.time()
    try:
        bridge, train, ev = study_inputs(model, pairs, domain_list([domains] if domains else None), per_domain,
                                         held_per_domain, seed, load_options(dtype, device, device_map, chat_template))
        lo = leave_one_domain_out(bridge, train, ev, budget=budget, kind=kind, scorer=scorer,
                                  max_cost_quantile=_quantile(max_cost_quantile), progress=not quiet, seed=seed)
        res = {**lo, "model": model, "chat_template": chat_template, "seconds": round(time.time() - t0, 1)}
        rep = Report(f"lens_bias experiment: leave-one-domain-out transfer on {model}")
        rep.text(transfer_reading(res), "note")
        rep.figure(viz.transfer_bars(res))
        rep.table(transfer_rows(res), TRANSFER_HEADER)
        _write(out, overwrite, res, rep)
    except LensBiasError as e:
        fail(e)
    typer.echo(table(transfer_rows(res), TRANSFER_HEADER))
    typer.echo(transfer_reading(res))
    typer.echo(f"wrote {out}/ (result.json, report.html) in {time.time() - t0:.0f} s")


@app.command()
def selectors(
    model: ModelOpt = "smollm2-135m",
    pairs: PairsOpt = None,
    domains: DomainsOpt = None,
    per_domain: PerDomainOpt = 24,
    held_per_domain: HeldOpt = 26,
    methods: Annotated[str, typer.Option(help="selectors, comma-separated (oneshot, stable, iterative, learned, "
                                              "auto); the first is the others' paired reference")] = "oneshot,iterative,stable,learned,auto",
    budgets: Annotated[str, typer.Option(help="neuron budgets, comma-separated")] = "0.25%,0.5%,1%",
    lodo_budgets: Annotated[str, typer.Option(help="budgets with a leave-one-domain-out measure")] = "0.5%",
    lodo_methods: Annotated[str, typer.Option(help="selectors measured leave-one-domain-out")] = "oneshot,stable,auto",
    max_cost_quantile: CostOpt = 0.5,
    seed: int = 0,
    out: OutOpt = Path("experiments/selectors"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    chat_template: ChatOpt = False,
) -> None:
    """Compare selectors at several budgets (plus heads at the parameters of the 0.5 % neuron
    masks): train, held-out and leave-one-domain-out JS, |logit gap|, seqgap, CrowS-Pairs,
    WikiText-2 perplexity, KL and selection time, each change with its interval and test."""
    from ..prompts.pairs import neutral_text
    from ..report import figures as viz
    from ..report.html import Report
    from ..selection.registry import SelectorSpec
    from ..studies.selectors import compare_selectors, selector_rows

    t0 = time.time()
    try:
        bridge, train, ev = study_inputs(model, pairs, domain_list([domains] if domains else None), per_domain,
                                         held_per_domain, seed, load_options(dtype, device, device_map, chat_template), ppl_tokens=4096)
        ts, cost = template_scores(bridge, train, not quiet)
        specs = [SelectorSpec(m, _quantile(max_cost_quantile)) for m in comma_list(methods)]
        res = compare_selectors(bridge, ts, train, ev, specs, comma_list(budgets), cost, neutral_text(),
                                comma_list(lodo_budgets), comma_list(lodo_methods), seed=seed, progress=not quiet)
        res.update(model=model, chat_template=chat_template, seconds=round(time.time() - t0, 1))
        rows, header = selector_rows(res)
        rep = Report(f"lens_bias experiment: selectors compared on {model}")
        rep.figure(viz.selector_frontier(res))
        rep.figure(viz.train_vs_held_out(res))
        rep.table(rows, header)
        _write(out, overwrite, res, rep)
    except LensBiasError as e:
        fail(e)
    typer.echo(table(rows, header))
    typer.echo(f"wrote {out}/ (result.json, report.html) in {time.time() - t0:.0f} s")


@app.command()
def wording(
    model: ModelOpt = "smollm2-135m",
    pairs: PairsOpt = None,
    domains: DomainsOpt = None,
    per_domain: PerDomainOpt = 96,
    held_per_domain: HeldOpt = 26,
    ks: Annotated[str, typer.Option(help="train templates per domain, comma-separated (0 = all)")] = "1,2,4,8,0",
    draws: Annotated[int, typer.Option(help="random draws of templates per point")] = 3,
    budget: Annotated[str, typer.Option(help="count, % of units or %params")] = "0.5%",
    max_cost_quantile: CostOpt = 0.5,
    seed: int = 0,
    out: OutOpt = Path("experiments/wording"),
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
    chat_template: ChatOpt = False,
) -> None:
    """The learning curve over training wording: one-shot neuron masks from the scores of k train
    templates per domain (random draws), measured on held-out templates and leave-one-domain-out."""
    from ..report import figures as viz
    from ..report.html import Report
    from ..studies.selectors import wording_curve, wording_rows

    t0 = time.time()
    try:
        bridge, train, ev = study_inputs(model, pairs, domain_list([domains] if domains else None), per_domain,
                                         held_per_domain, seed, load_options(dtype, device, device_map, chat_template))
        ts, cost = template_scores(bridge, train, not quiet)
        res = wording_curve(bridge, ts, train, ev.pairs, budget, "neurons", cost, _quantile(max_cost_quantile),
                            [int(k) for k in comma_list(ks)], draws, seed, progress=not quiet)
        res.update(model=model, chat_template=chat_template, seconds=round(time.time() - t0, 1))
        rows, header = wording_rows(res)
        rep = Report(f"lens_bias experiment: training wording on {model}")
        rep.figure(viz.wording_curve(res))
        rep.table(rows, header)
        _write(out, overwrite, res, rep)
    except LensBiasError as e:
        fail(e)
    typer.echo(table(rows, header))
    typer.echo(f"wrote {out}/ (result.json, report.html) in {time.time() - t0:.0f} s")
