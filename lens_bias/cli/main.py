"""The ``lens-bias`` command."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ExportCheckError, LensBiasError
from ..vocab import GRADIENT_SCORERS
from .common import (
    AllowOtherPairsOpt,
    BatchPairsOpt,
    BatchTokensOpt,
    BbqFileOpt,
    BbqOpt,
    BbqRowsOpt,
    BoldFileOpt,
    ChatOpt,
    DeviceMapOpt,
    DeviceOpt,
    DomainsOpt,
    DtypeOpt,
    GenOpt,
    IgOpt,
    JsonOpt,
    KnowFileOpt,
    KnowOpt,
    LambadaOpt,
    ModelOpt,
    OldDomainOpt,
    PairsOpt,
    QuietOpt,
    SelectorOpt,
    SplitOpt,
    TrustOpt,
    WikitextOpt,
    check_run_options,
    comma_list,
    domain_list,
    fail,
    ig_options,
    interruptible,
    load_bridge,
    load_options,
    old_spelling,
    pairs_as_scanned,
    print_run,
    split_part,
    table,
    user_options,
    validation_summary,
    validation_table,
    warn,
)
from .experiment import app as experiment_app
from .measure import measure_cmd
from .pairs import pairs_cmd
from .prune import prune_cmd

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Find, remove and verify the neurons and attention heads that drive Black/White bias.",
)


def _pairs(pairs: Path | None, domain: list[str] | None, per_domain: int, seed: int = 0, metric: str = "js"):
    """The pairs of ``--pairs`` (all of them) or the bundled ones (``--per-domain`` per domain; the
    sentence pairs for ``--metric seqgap``)."""
    from ..measures.targets import load_metric_pairs

    return load_metric_pairs(pairs, domain_list(domain), per_domain, seed, metric)


@app.command()
def models(json_out: JsonOpt = False) -> None:
    """List the model zoo: what is installed and cached, and how to install the rest."""
    from ..model.zoo import cache_dir, zoo_status

    rows = zoo_status()
    if json_out:
        typer.echo(json.dumps({"cache": str(cache_dir()), "models": rows}, indent=2))
        return
    typer.echo(table(
        [[r["name"] + (" (default)" if r["default"] else ""), "yes" if r["installed"] else "no",
          "yes" if r["cached"] else "no", r["install"] if not r["installed"] else "", r["description"]]
         for r in rows],
        ["model", "installed", "cached", "install with", "description"],
    ))
    typer.echo(f"\ncache: {cache_dir()}  (set LENS_BIAS_CACHE to move it)")


app.command("measure")(measure_cmd)


@app.command()
def scan(
    model: ModelOpt = "smollm2-135m",
    pairs: PairsOpt = None,
    domains: DomainsOpt = None,
    domain: OldDomainOpt = None,
    per_domain: Annotated[int, typer.Option(help="bundled pairs sampled per domain (0 = all)")] = 24,
    split: SplitOpt = "train",
    metric: Annotated[str, typer.Option(help="js, logit_gap or seqgap (bundled sentence pairs)")] = "js",
    scorer: Annotated[str, typer.Option(help="ablate, patch, ig (integrated gradients), actdiff, wanda or "
                                             "random")] = "ablate",
    ablation: Annotated[str, typer.Option(help="zero or mean (for the ablate estimator)")] = "zero",
    kinds: Annotated[str | None, typer.Option(help="neurons,heads (default: both)")] = None,
    components: Annotated[str | None, typer.Option(
        "--components", hidden=True, help="old spelling of --kinds")] = None,
    graddrop: Annotated[bool, typer.Option(
        help="AtP* GradDrop: |effect| magnitudes, one backward per layer")] = False,
    ig: IgOpt = "4,layer,gauss",
    chat_template: ChatOpt = False,
    batch_size: int = 16,
    seed: int = 0,
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="scores file (.safetensors)")] = Path("scores.safetensors"),
    quiet: QuietOpt = False,
    trust_remote_code: TrustOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
) -> None:
    """Score every neuron and head (attribution patching or a baseline) and save the scores."""
    from ..attribution.scorers import score

    try:
        domain = old_spelling(domains, domain, "--domains", "--domain")
        t0 = time.time()
        ps = split_part(_pairs(pairs, domain, per_domain, seed, metric), split, seed)
        igkw = ig_options(ig) if scorer == "ig" else {}  # a bad --ig: refused before loading
        bridge = load_bridge(model, trust_remote_code, dtype, device, device_map, chat_template)
        kw = {"batch_size": batch_size, "seed": seed} if scorer not in GRADIENT_SCORERS else {
            "metric": metric, "ablation": ablation, "batch_size": batch_size, "graddrop": graddrop,
            "components": tuple(comma_list(old_spelling(kinds, components, "--kinds", "--components")
                                           or "neurons,heads")), "progress": not quiet, **igkw}
        if graddrop and scorer not in ("ablate", "patch"):
            raise LensBiasError(f"--graddrop applies to the ablate and patch estimators, not {scorer!r}")
        s = score(bridge, ps, scorer, **kw)
        s.settings.update({"split": split, "seed": seed, "per_domain": per_domain,
                           "domain_filter": domain_list(domain), "pairs": str(pairs) if pairs else "bundled",
                           "chat_template": chat_template, "seconds": round(time.time() - t0, 1)})
        s.save(out)
    except LensBiasError as e:
        fail(e)
    typer.echo(f"scored {len(ps)} pairs ({', '.join(ps.domains)}) with {scorer} in {time.time() - t0:.0f} s"
               f" -> {out}")
    for kind in ("neurons", "heads"):
        top = s.top(kind, 5)
        if top:
            typer.echo(f"top {kind}: " + ", ".join(f"L{la}.{i} ({v:.3g})" for la, i, v in top))


@app.command()
def validate(
    scores: Annotated[Path, typer.Option("--scores", "-s", help="scores file from lens-bias scan")],
    model: ModelOpt = "smollm2-135m",
    pairs: PairsOpt = None,
    domains: DomainsOpt = None,
    domain: OldDomainOpt = None,
    per_domain: Annotated[int | None, typer.Option(
        help="bundled pairs per domain (default: as in the scan)")] = None,
    split: Annotated[str | None, typer.Option(
        help="train / held-out / all (default: as in the scan)")] = None,
    k: Annotated[int, typer.Option(help="top-k components by |score|, per kind")] = 200,
    n_random: Annotated[int, typer.Option(help="random components added, per kind")] = 50,
    kinds: Annotated[str, typer.Option(help="neurons,heads")] = "neurons,heads",
    batch_size: int = 32,
    seed: Annotated[int | None, typer.Option(
        help="split and sampling seed (default: as in the scan)")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    out: Annotated[Path | None, typer.Option(help="also write the full result (JSON)")] = None,
    allow_other_pairs: AllowOtherPairsOpt = False,
    trust_remote_code: TrustOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
) -> None:
    """Check predicted scores against exact ablation / patching: Spearman and Pearson per kind.
    Pairs or a model other than those the scores were computed on are refused (--allow-other-pairs
    compares anyway, and the output says so)."""
    from ..attribution.provenance import check_scores_match
    from ..attribution.validation import validate as run_validate
    from ..scores import Scores

    try:
        domain = old_spelling(domains, domain, "--domains", "--domain")
        t0 = time.time()
        s = Scores.load(scores)
        ps, seed = pairs_as_scanned(s.settings, pairs, domain, per_domain, split, seed)
        check_scores_match(s, ps, None, allow_other_pairs, "validate")  # other pairs: refused before loading
        bridge = load_bridge(model, trust_remote_code, dtype, device, device_map,
                             s.settings.get("chat_template", False))
        if warning := check_scores_match(s, ps, bridge, allow_other_pairs, "validate"):
            warn(warning)
        res = run_validate(bridge, ps, s, k=k, n_random=n_random, seed=seed,
                           allow_other_pairs=allow_other_pairs, kinds=[x.strip() for x in kinds.split(",")],
                           batch_size=batch_size, progress=not quiet)
    except LensBiasError as e:
        fail(e)
    summary = validation_summary(s, ps, res, warning, model=model, scores=str(scores))
    summary["seconds"] = round(time.time() - t0, 1)
    if out is not None:
        out.write_text(json.dumps({**summary, "detail": res}, indent=1))
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
        return
    typer.echo(validation_table(res))
    if warning:
        typer.echo(f"warning: {warning}")


@app.command()
def run(
    model: ModelOpt = "smollm2-135m", pairs: PairsOpt = None, domains: DomainsOpt = None,
    per_domain: Annotated[int, typer.Option(help="bundled train pairs sampled per domain (0 = all)")] = 24,
    held_per_domain: Annotated[int, typer.Option(
        help="bundled held-out pairs sampled per domain (0 = all)")] = 26,
    budget: Annotated[str, typer.Option(
        help="count, % of units (0.5%) or % of params (0.13%params)")] = "0.5%",
    kind: Annotated[str, typer.Option(help="neurons, heads or both")] = "neurons",
    metric: Annotated[str, typer.Option(help="what attribution reduces: js, logit_gap (prompt pairs) or "
                                             "seqgap (sentence pairs)")] = "js",
    max_cost_quantile: Annotated[float, typer.Option(help="capability filter: never prune units whose LM-loss"
                                                          " cost is above this quantile (1 = off)")] = 0.5,
    steps: Annotated[int, typer.Option(help="rounds of the iterative selector, re-attributing with the units "
                                            "chosen so far ablated (1: its default, 4)")] = 1,
    selector: SelectorOpt = "iterative",
    ablation: Annotated[str, typer.Option(
        help="zero, or mean (neutral-text means, folded into biases on export)")] = "zero",
    chat_template: ChatOpt = False,
    budgets: Annotated[str, typer.Option(help="budgets of the simulated curve")] = "0.25%,0.5%,1%,2%",
    wikitext: WikitextOpt = None, lambada: LambadaOpt = None,
    crows_file: Annotated[Path | None, typer.Option(help="CrowS-Pairs CSV (default: ../shared/data)")] = None,
    bbq: BbqOpt = True, bbq_file: BbqFileOpt = None, bbq_rows: BbqRowsOpt = 200,
    generations: GenOpt = True, bold_file: BoldFileOpt = None,
    knowledge: KnowOpt = True, knowledge_file: KnowFileOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="run folder to write")] = Path("runs/latest"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing run folder")] = False,
    seed: int = 0, batch_size: BatchPairsOpt = None, max_batch_tokens: BatchTokensOpt = None,
    quiet: QuietOpt = False, trust_remote_code: TrustOpt = False,
    dtype: DtypeOpt = "auto", device: DeviceOpt = None, device_map: DeviceMapOpt = None,
) -> None:
    """The main job: measure, attribute, validate, simulate a pruning curve, prune, verify and
    write a run folder (metrics.json, report.html, mask files, the pruned model)."""
    from ..pipeline.stages import RunConfig
    from ..pipeline.stages import run as run_job

    curve_budgets = comma_list(budgets)
    try:  # refuse bad options before minutes of work, not at the pruning stage
        check_run_options(budget, curve_budgets, max_cost_quantile, steps, batch_size, max_batch_tokens)
    except LensBiasError as e:
        fail(e)
    cfg = RunConfig(
        model=model, pairs=str(pairs) if pairs else None, domains=domain_list(domains),
        per_domain=per_domain, held_per_domain=held_per_domain, budget=budget, kind=kind, metric=metric,
        max_cost_quantile=None if max_cost_quantile >= 1 else max_cost_quantile, steps=steps,
        selector=selector, ablation=ablation, budgets=curve_budgets,
        wikitext=wikitext and str(wikitext), lambada=lambada and str(lambada), seed=seed,
        crows=crows_file and str(crows_file), batch_size=batch_size, max_batch_tokens=max_batch_tokens,
        **user_options(bbq, bbq_file, bbq_rows, generations, bold_file, knowledge, knowledge_file),
        trust_remote_code=trust_remote_code, progress=not quiet,
        **load_options(dtype, device, device_map, chat_template))
    try:
        with interruptible(out):
            m = run_job(cfg, out, overwrite=overwrite)
    except ExportCheckError as e:  # measured and written, but the pruned model failed its check
        print_run(e.metrics, out)
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(3) from None
    except LensBiasError as e:
        fail(e)
    print_run(m, out)


@app.command()
def export(
    mask: Annotated[Path, typer.Option("--mask", help="mask.safetensors (or its folder)")],
    format: Annotated[str, typer.Option(
        "--format", "-f", help="hf, torch-prune, torch-pruning or optipfair")] = "hf",
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (hf) or file")] = Path("export"),
    model: ModelOpt = "smollm2-135m",
    scores: Annotated[Path | None, typer.Option(
        help="optipfair: scores file to convert (default: the mask)")] = None,
    mode: Annotated[str, typer.Option(help="hf: zero or structural")] = "zero",
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
    push_to_hub: Annotated[str | None, typer.Option(
        "--push-to-hub", metavar="REPO_ID",
        help="hf: then upload the folder to this Hub repository")] = None,
    trust_remote_code: TrustOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
) -> None:
    """Export a mask: an HF model folder (with a model card; --push-to-hub uploads it),
    torch.nn.utils.prune masks, torch-pruning index lists or optiPfair fairness scores."""
    from ..masks import PruningMask
    from ..scores import Scores
    from ..weights.formats import check_export, export_mask
    from ..weights.hub import check_push, push_folder

    try:
        check_push(push_to_hub, format)
        m = PruningMask.load(mask)
        check_export(m.meta.get("ablation"), format, mode)  # before the model is loaded

        def load():
            return load_bridge(model, trust_remote_code, dtype, device, device_map)

        export_mask(m, out, format, load, mode=mode, overwrite=overwrite,
                    scores=Scores.load(scores) if scores else None)
        if push_to_hub:  # the folder is written: a failed upload leaves it intact
            typer.echo(f"uploaded {out} to {push_folder(out, push_to_hub)}")
    except LensBiasError as e:
        fail(e)
    typer.echo(f"wrote {out} ({format})")


app.command("pairs")(pairs_cmd)
app.command("prune")(prune_cmd)
app.add_typer(experiment_app, name="experiment")
