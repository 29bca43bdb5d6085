"""``lens-bias experiment curve|generalize|overlap|transfer|selectors|wording|arena``: the seed studies'
three claims on any model, leave-one-domain-out transfer (the unseen use case), which
selection generalizes (selectors compared; the learning curve over training wording), and every
way to remove the bias compared on the same measures (arena).

Each command scores on the train templates, evaluates on held-out templates and writes ``OUT/``
with ``result.json`` and ``report.html`` (written to a temporary folder and renamed at the end).
The options they share are declared once (:mod:`lens_bias.cli.study`).
"""

from __future__ import annotations

import time
from typing import Annotated

import typer

from ..attribution.per_template import template_scores
from ..studies.selectors import format_cell
from ..vocab import measure_flags
from .common import MeasuresOpt, SelectorOpt, comma_list, fmt1, fmt2, old_spelling, table
from .study import StudyOptions, study_command, write_into

app = typer.Typer(no_args_is_help=True,
                  help="Reproduce the seed studies' claims: neurons vs heads and scorers (curve), "
                       "cross-domain transfer (generalize), overlap between domains, leave-one-domain-out "
                       "transfer (transfer), selectors compared (selectors) and the learning curve over "
                       "wording (wording).")

BudgetOpt = Annotated[str, typer.Option(help="count, % of units or %params")]
KindOpt = Annotated[str, typer.Option(help="neurons or heads")]
ScorerOpt = Annotated[str, typer.Option(help="ablate, patch, actdiff, wanda or random")]


def _done(out, t0: float) -> None:
    typer.echo(f"wrote {out}/ (result.json, report.html) in {time.time() - t0:.0f} s")


@study_command(app, "curve", "experiments/curve")
def curve(
    opts: StudyOptions,
    scorers: Annotated[str, typer.Option(help="comma-separated: ablate, patch, actdiff, wanda, random")] =
    "ablate,patch,actdiff,wanda,random",
    kinds: Annotated[str, typer.Option(help="neurons,heads")] = "neurons,heads",
    budgets: Annotated[str, typer.Option(help="comma-separated; %params keeps kinds parameter-matched")] =
    "0.1%params,0.2%params,0.5%params,1%params",
    selector: SelectorOpt = "oneshot",
    measures: MeasuresOpt = "",
) -> None:
    """Neurons vs heads and scorer vs scorer, at equal numbers of removed parameters (and, with
    --measures, BBQ, the generation audit or the knowledge probe at every point)."""
    from ..report import figures as viz
    from ..report.html import Report
    from ..selection.registry import check_selector
    from ..studies.curve import compare_scorers

    t0 = time.time()
    check_selector(selector, what="--selector")
    wanted = list(measure_flags(comma_list(measures), "--measures"))
    bridge, train, ev = opts.inputs(measures=wanted)
    res = compare_scorers(bridge, train, ev, scorers=comma_list(scorers), kinds=comma_list(kinds),
                          budgets=comma_list(budgets), max_cost_quantile=opts.quantile, seed=opts.seed,
                          progress=opts.progress, selector=selector, measures=wanted)
    res.update(model=opts.model, chat_template=opts.chat_template, seconds=round(time.time() - t0, 1))
    rep = Report(f"lens_bias experiment: scorers and kinds on {opts.model}")
    rep.text(_curve_reading(res), "note")
    capability = "wikitext_ppl" if ev.wikitext else "kl_neutral"
    before = {"js": res["before"]["js"], "wikitext_ppl": res["before"].get("wikitext_ppl"), "kl_neutral": 0.0}
    rep.figure(viz.pruning_curves(res["rows"], "js", capability, before=before))
    extra = [USER_COLUMNS[m][0] for m in wanted]
    rep.table(_curve_rows(res), ["scorer", "kind", "budget", "units", "% params", "JS", "JS reduction %",
                                 "ppl change %", "KL neutral", *extra])
    opts.write(res, rep)
    typer.echo(table(_curve_rows(res), ["scorer", "kind", "budget", "units", "%params", "JS", "JS red. %",
                                         "ppl %", "KL", *extra]))
    typer.echo(_curve_reading(res))
    _done(opts.out, t0)


def _curve_rows(res: dict) -> list[list]:
    def name(r: dict) -> str:
        return (r["scorer"] if r.get("selector", "oneshot") == "oneshot"
                else f"{r['scorer']} ({r['selector']})")

    def user(r: dict) -> list:  # each measured user measure's change, "~" when within noise
        return [format_cell(r.get("tests", {}).get(USER_COLUMNS[m][1]), "diff", USER_COLUMNS[m][2])
                for m in res["settings"].get("measures", [])]

    return [[name(r), r["kind"], r["budget"], r["n_units"], round(r["params_pct"], 3), r["js"],
             r["js_reduction_pct"], r.get("ppl_change_pct"), r.get("kl_neutral"), *user(r)]
            for r in res["rows"]]


# user measure -> the curve table's column: header, the change it shows, decimals
USER_COLUMNS = {"bbq": ("BBQ s_DIS change (pts)", "bbq_s_dis", 1),
                "generations": ("sentiment gap change (pairs)", "gen_pairs_sentiment_gap", 3),
                "knowledge": ("knowledge log-prob change (nats)", "know_logprob", 2)}


def _curve_reading(res: dict) -> str:
    w = res["winners"]
    m = w["mean_js_reduction_pct"]
    parts = ["mean held-out JS reduction over the budgets: " +
             "; ".join(f"{s}: " + ", ".join(f"{k} {v:.1f} %" for k, v in ks.items()) for s, ks in m.items())]
    parts += [f"best {k}: {s}" for k, s in w["best_scorer"].items()]
    parts += ["neurons minus heads (points, equal parameters): " +
              ", ".join(f"{s} {v:+.1f}" for s, v in w["neurons_minus_heads_pct_points"].items())]
    return ". ".join(parts) + "."


@study_command(app, "generalize", "experiments/generalize")
def generalize(opts: StudyOptions, budget: BudgetOpt = "0.5%", kind: KindOpt = "neurons",
               scorer: ScorerOpt = "ablate") -> None:
    """Cross-domain transfer: prune on each domain, measure the bias reduction on every domain's
    held-out templates (Ma et al.'s finance -> commerce question, for all domain pairs)."""
    from ..report import figures as viz
    from ..report.html import Report
    from ..studies.generalize import generalization_matrix, overlap

    t0 = time.time()
    bridge, train, ev = opts.inputs()
    gm = generalization_matrix(bridge, train, ev, budget=budget, kind=kind, scorer=scorer,
                               max_cost_quantile=opts.quantile, progress=opts.progress)
    ov = overlap(gm["pruned"], bridge.cfg.n_layers)
    res = {**gm, "overlap": ov, "model": opts.model, "chat_template": opts.chat_template,
           "seconds": round(time.time() - t0, 1)}
    rep = Report(f"lens_bias experiment: cross-domain transfer on {opts.model}")
    rep.text(_gen_reading(res), "note")
    rep.figure(viz.generalization_heatmap(gm))
    rep.table(_gen_rows(gm), ["learned on \\ tested on", *gm["test_domains"], "WikiText ppl"])
    rep.figure(viz.overlap_heatmap(ov))
    opts.write(res, rep)
    typer.echo(table(_gen_rows(gm), ["learned on", *gm["test_domains"], "ppl"]))
    typer.echo(_gen_reading(res))
    _done(opts.out, t0)


def _gen_rows(gm: dict) -> list[list]:
    return [[t, *[gm["reduction_pct"][t][d] for d in gm["test_domains"]], gm["wikitext_ppl_after"].get(t)]
            for t in gm["rows"]]


def _gen_reading(res: dict) -> str:
    return (f"JS reduction (%) on held-out templates, {res['kind']} at {res['budget']}: in-domain mean "
            f"{fmt1(res['in_domain_mean_pct'])}, cross-domain mean {fmt1(res['cross_domain_mean_pct'])}, "
            f"pruning learned on all domains {fmt1(res['all_row_mean_pct'])}; mean Jaccard overlap between "
            f"domains' pruned sets {fmt2(res['overlap']['mean_offdiag_jaccard'])}. "
            f"Perplexity before {fmt1(res['wikitext_ppl_before'])}.")


@study_command(app, "overlap", "experiments/overlap")
def overlap_cmd(opts: StudyOptions, budget: BudgetOpt = "0.5%", kind: KindOpt = "neurons",
                scorer: ScorerOpt = "ablate") -> None:
    """Which units each domain's pruning picks: Jaccard overlap between domains, and by layer."""
    from ..report import figures as viz
    from ..report.html import Report
    from ..studies.generalize import domain_masks, overlap

    t0 = time.time()
    bridge, train, ev = opts.inputs()
    masks = domain_masks(bridge, train, None, budget, kind, scorer, True, ev.neutral, opts.quantile,
                         progress=opts.progress)
    pruned = {t: m.pruned(kind) for t, m in masks.items()}
    ov = overlap(pruned, bridge.cfg.n_layers)
    res = {**ov, "pruned": pruned, "model": opts.model, "chat_template": opts.chat_template, "budget": budget,
           "kind": kind, "scorer": scorer, "seconds": round(time.time() - t0, 1)}
    rep = Report(f"lens_bias experiment: overlap of domain prunings on {opts.model}")
    rep.figure(viz.overlap_heatmap(ov, f"Overlap of the {kind} pruned per domain ({budget}, {scorer})"))
    opts.write(res, rep)
    names = ov["names"]
    typer.echo(table([[a, *[round(v, 2) for v in row]] for a, row in zip(names, ov["jaccard"], strict=True)],
                      ["Jaccard", *names]))
    typer.echo(f"mean overlap between domains: {fmt2(ov['mean_offdiag_jaccard'])}; wrote {opts.out}/")


@study_command(app, "transfer", "experiments/transfer")
def transfer(opts: StudyOptions, budget: BudgetOpt = "0.5%", kind: KindOpt = "neurons",
             scorer: ScorerOpt = "ablate") -> None:
    """Leave-one-domain-out transfer (the unseen use case): for each domain, prune with the mask
    learned on all the other domains and measure the bias reduction on its held-out templates,
    next to the mask learned on all domains; pooled over every domain with a 95 % interval."""
    from ..report import figures as viz
    from ..report.html import Report
    from ..studies.transfer import TRANSFER_HEADER, leave_one_domain_out, transfer_reading, transfer_rows

    t0 = time.time()
    bridge, train, ev = opts.inputs()
    lo = leave_one_domain_out(bridge, train, ev, budget=budget, kind=kind, scorer=scorer,
                              max_cost_quantile=opts.quantile, progress=opts.progress, seed=opts.seed)
    res = {**lo, "model": opts.model, "chat_template": opts.chat_template,
           "seconds": round(time.time() - t0, 1)}
    rep = Report(f"lens_bias experiment: leave-one-domain-out transfer on {opts.model}")
    rep.text(transfer_reading(res), "note")
    rep.figure(viz.transfer_bars(res))
    rep.table(transfer_rows(res), TRANSFER_HEADER)
    opts.write(res, rep)
    typer.echo(table(transfer_rows(res), TRANSFER_HEADER))
    typer.echo(transfer_reading(res))
    _done(opts.out, t0)


@study_command(app, "selectors", "experiments/selectors")
def selectors(
    opts: StudyOptions,
    selectors: Annotated[str | None, typer.Option(
        help="selectors, comma-separated (oneshot, stable, iterative, learned, auto or a registered one); "
             "the first is the others' paired reference "
             "(default: oneshot,iterative,stable,learned,auto)")] = None,
    budgets: Annotated[str, typer.Option(help="neuron budgets, comma-separated")] = "0.25%,0.5%,1%",
    lodo_budgets: Annotated[str, typer.Option(help="budgets with a leave-one-domain-out measure")] = "0.5%",
    lodo_selectors: Annotated[str | None, typer.Option(
        help="selectors measured leave-one-domain-out (default: oneshot,stable,auto)")] = None,
    methods: Annotated[str | None, typer.Option(
        "--methods", hidden=True, help="old spelling of --selectors")] = None,
    lodo_methods: Annotated[str | None, typer.Option("--lodo-methods", hidden=True,
                                                     help="old spelling of --lodo-selectors")] = None,
    measures: MeasuresOpt = "bbq,knowledge",
) -> None:
    """Compare selectors at several budgets (plus heads at the parameters of the 0.5 % neuron
    masks): train, held-out and leave-one-domain-out JS, |logit gap|, seqgap, CrowS-Pairs,
    WikiText-2 perplexity, KL, selection time and the --measures of bias as users see it, each change
    with its interval and test."""
    from ..prompts.pairs import neutral_text
    from ..report import figures as viz
    from ..report.html import Report
    from ..selection.registry import SelectorSpec, check_selector
    from ..studies.selectors import compare_selectors, selector_rows

    t0 = time.time()
    chosen = comma_list(old_spelling(selectors, methods, "--selectors", "--methods")
                        or "oneshot,iterative,stable,learned,auto")
    lodo = comma_list(old_spelling(lodo_selectors, lodo_methods, "--lodo-selectors", "--lodo-methods")
                      or "oneshot,stable,auto")
    for name in chosen + lodo:
        check_selector(name, what="--selectors")
    wanted = list(measure_flags(comma_list(measures), "--measures"))
    bridge, train, ev = opts.inputs(ppl_tokens=4096, measures=wanted)
    ts, cost = template_scores(bridge, train, opts.progress)
    specs = [SelectorSpec(m, opts.quantile) for m in chosen]
    res = compare_selectors(bridge, ts, train, ev, specs, comma_list(budgets), cost, neutral_text(),
                            comma_list(lodo_budgets), lodo, seed=opts.seed, progress=opts.progress,
                            measures=wanted)
    res.update(model=opts.model, chat_template=opts.chat_template, seconds=round(time.time() - t0, 1))
    rows, header = selector_rows(res)
    rep = Report(f"lens_bias experiment: selectors compared on {opts.model}")
    rep.figure(viz.selector_frontier(res))
    rep.figure(viz.train_vs_held_out(res))
    rep.table(rows, header)
    opts.write(res, rep)
    typer.echo(table(rows, header))
    _done(opts.out, t0)


@study_command(app, "wording", "experiments/wording", per_domain=96)
def wording(
    opts: StudyOptions,
    ks: Annotated[str, typer.Option(
        help="train templates per domain, comma-separated (0 = all)")] = "1,2,4,8,0",
    draws: Annotated[int, typer.Option(help="random draws of templates per point")] = 3,
    budget: BudgetOpt = "0.5%",
) -> None:
    """The learning curve over training wording: one-shot neuron masks from the scores of k train
    templates per domain (random draws), measured on held-out templates and leave-one-domain-out."""
    from ..report import figures as viz
    from ..report.html import Report
    from ..studies.selectors import wording_curve, wording_rows

    t0 = time.time()
    bridge, train, ev = opts.inputs()
    ts, cost = template_scores(bridge, train, opts.progress)
    res = wording_curve(bridge, ts, train, ev.pairs, budget, "neurons", cost, opts.quantile,
                        [int(k) for k in comma_list(ks)], draws, opts.seed, progress=opts.progress)
    res.update(model=opts.model, chat_template=opts.chat_template, seconds=round(time.time() - t0, 1))
    rows, header = wording_rows(res)
    rep = Report(f"lens_bias experiment: training wording on {opts.model}")
    rep.figure(viz.wording_curve(res))
    rep.table(rows, header)
    opts.write(res, rep)
    typer.echo(table(rows, header))
    _done(opts.out, t0)


@study_command(app, "arena", "experiments/arena")
def arena_cmd(
    opts: StudyOptions,
    methods: Annotated[str, typer.Option(help="comma-separated methods (lens_bias.mitigation): prune, "
                                              "prune-combined, wanda, random, optipfair, optipfair-0.45, "
                                              "direction, leace, steer, steer-conditional")] =
    "prune,prune-combined,wanda,random,optipfair,optipfair-0.45,direction,leace,steer,steer-conditional",
    budget: BudgetOpt = "0.5%",
    kind: KindOpt = "neurons",
    measures: MeasuresOpt = "bbq,generations,knowledge",
    lodo: Annotated[bool, typer.Option(help="also fit every method without each domain and measure that "
                                            "domain (slow: one fit a domain a method)")] = False,
    export: Annotated[bool, typer.Option(help="write each method that folds into the weights and passes its "
                                              "check to OUT/models/<method>/")] = False,
) -> None:
    """Every way to remove the bias on the same pairs and measures: pruning (ours, Wanda, random,
    optiPfair's), directional ablation, LEACE and steering, each against the unmodified model and
    against the run's default pruning, with a Pareto figure of bias removed vs perplexity."""
    from ..report import figures as viz
    from ..report.html import Report
    from ..studies.arena import arena, reading
    from ..studies.arena import table as arena_table
    from ..vocab import check_choice

    t0 = time.time()
    check_choice(kind, ("neurons", "heads"), "--kind")
    wanted = ["crows", *measure_flags(comma_list(measures), "--measures")]
    bridge, train, ev = opts.inputs(measures=wanted)
    with opts.folder() as tmp:  # the exported models go into the same atomically written folder
        res = arena(bridge, train, ev, comma_list(methods), budget, kind, opts.quantile, opts.seed, wanted,
                    lodo=lodo, export_dir=tmp / "models" if export else None, progress=opts.progress)
        res.update(model=opts.model, seconds=round(time.time() - t0, 1))
        rows, header = arena_table(res)
        rep = Report(f"lens_bias experiment: mitigation arena on {opts.model}")
        rep.text(reading(res), "note")
        rep.figure(viz.arena_pareto(res))
        rep.table(rows, header)
        write_into(tmp, res, rep)
    typer.echo(table(rows, header))
    typer.echo(reading(res))
    _done(opts.out, t0)
