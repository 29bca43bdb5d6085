"""``lens-bias measure``: the bias of an unpruned model on prompt pairs, with 95 % intervals, and
optionally on CrowS-Pairs, the bundled sentence pairs and BBQ. Registered on the main app by
:mod:`lens_bias.cli.main`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from ..errors import LensBiasError
from .common import (
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
    JsonOpt,
    KnowFileOpt,
    KnowOpt,
    ModelOpt,
    OldDomainOpt,
    PairsOpt,
    QuietOpt,
    TrustOpt,
    domain_list,
    fail,
    load_bridge,
    old_spelling,
    table,
)


def measure_cmd(
    model: ModelOpt = "smollm2-135m",
    pairs: PairsOpt = None,
    domains: DomainsOpt = None,
    domain: OldDomainOpt = None,
    per_domain: Annotated[int, typer.Option(help="bundled pairs sampled per domain (0 = all)")] = 48,
    crows: Annotated[bool, typer.Option(
        "--crows", help="also the CrowS-Pairs stereotype rates (Black, race-color)")] = False,
    crows_file: Annotated[Path | None, typer.Option(help="CrowS-Pairs CSV (default: ../shared/data)")] = None,
    numeric: Annotated[bool, typer.Option(
        "--numeric", help="also the numeric offer disparity (slow)")] = False,
    seqgap: Annotated[bool, typer.Option(
        "--seqgap", help="also the sentence-level gap on the bundled sentence pairs")] = False,
    bbq: BbqOpt = False,
    bbq_file: BbqFileOpt = None, bbq_rows: BbqRowsOpt = 0,
    generations: GenOpt = False, bold_file: BoldFileOpt = None,
    knowledge: KnowOpt = False, knowledge_file: KnowFileOpt = None,
    chat_template: ChatOpt = False,
    batch_size: int = 32,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    trust_remote_code: TrustOpt = False,
    dtype: DtypeOpt = "auto",
    device: DeviceOpt = None,
    device_map: DeviceMapOpt = None,
) -> None:
    """Print mean JS and logit gap per domain with 95 % intervals; optionally CrowS-Pairs, the
    sentence-level gap, BBQ, the generation audit and the knowledge probe."""
    from ..measures.capability import crows_summary
    from ..measures.metrics import measure as measure_pairs
    from ..measures.targets import load_metric_pairs

    try:
        domain = old_spelling(domains, domain, "--domains", "--domain")
        t0 = time.time()
        ps = load_metric_pairs(pairs, domain_list(domain), per_domain)
        path, crows_pairs = _crows(crows_file) if crows else (None, None)
        # a missing or bad file: refused now, before loading the model
        users = _user_inputs(bbq and (bbq_file, bbq_rows), generations and bold_file,
                             knowledge or knowledge_file is not None, knowledge_file)
        bridge = load_bridge(model, trust_remote_code, dtype, device, device_map, chat_template)
        t_load = time.time() - t0
        res = measure_pairs(bridge, ps, batch_size=batch_size, numeric=numeric, progress=not quiet)
        out = {"model": model, "pairs": str(pairs) if pairs else "bundled", **res.summary(ci=True)}
        if crows:
            out["crows_pairs"] = {"file": str(path), **crows_summary(bridge, crows_pairs, progress=not quiet)}
        if seqgap:
            out["seqgap"] = _measure_seqgap(bridge, domain, per_domain, batch_size)
        out.update(_user_measures(bridge, users, batch_size, quiet))
        out["seconds"] = {"load": round(t_load, 2), "total": round(time.time() - t0, 2)}
    except LensBiasError as e:
        fail(e)
    if json_out:
        typer.echo(json.dumps(out, indent=2))
        return
    _print_measure(out)


def _user_inputs(bbq, generations, knowledge: bool, knowledge_file: Path | None) -> dict:
    """What ``measure --bbq / --generations / --knowledge`` score, loaded before the model so that a
    missing or bad file is refused at once: ``bbq`` is ``False`` or ``(file, rows)``,
    ``generations`` ``False`` or the BOLD file (``None``: the default one)."""
    from ..prompts.bbq import load_bbq, stratified
    from ..prompts.generation import audit_prompts, default_bold_path
    from ..prompts.knowledge import load_knowledge

    out: dict = {}
    if bbq is not False:
        out["bbq"] = stratified(load_bbq(bbq[0]), bbq[1])
    if generations is not False:
        out["generations"] = audit_prompts(generations or default_bold_path())
    if knowledge:
        out["knowledge"] = load_knowledge(knowledge_file)
    return out


def _user_measures(bridge, users: dict, batch_size: int, quiet: bool) -> dict:
    """The summaries of the measures :func:`_user_inputs` loaded inputs for."""
    from ..measures.bbq import bbq_scores
    from ..measures.generations import generation_audit
    from ..measures.knowledge import knowledge_scores

    out = {}
    if "bbq" in users:
        out["bbq"] = bbq_scores(bridge, users["bbq"], min(batch_size, 16), progress=not quiet).summary()
    if "generations" in users:
        out["generations"] = generation_audit(bridge, users["generations"], progress=not quiet).summary()
    if "knowledge" in users:
        out["knowledge"] = knowledge_scores(bridge, users["knowledge"], batch_size=batch_size).summary()
    return out


def _crows(crows_file: Path | None) -> tuple:
    """``measure --crows``: the CrowS-Pairs file and its race-color rows (refused before loading)."""
    from ..prompts.corpora import default_crows_path, load_crows_pairs

    path = crows_file or default_crows_path()
    if path is None:
        raise LensBiasError("no CrowS-Pairs file found: pass --crows-file PATH (crows_pairs_anonymized.csv) "
                            "or set LENS_BIAS_CROWS")
    return path, load_crows_pairs(path, subset="race-color")


def _measure_seqgap(bridge, domain: list[str] | None, per_domain: int, batch_size: int) -> dict:
    """``measure --seqgap``: the bundled sentence pairs of the domains, per domain."""
    from ..measures.targets import sentence_gaps, seqgap_summary
    from ..prompts.sentences import load_sentence_pairs, stereotype_signs

    sp = load_sentence_pairs(None, domain_list(domain), per_domain)
    return seqgap_summary(sentence_gaps(bridge, sp, batch_size), sp, stereotype_signs(sp))


def _print_measure(out: dict) -> None:
    """The table of ``measure``: each mean with its 95 % interval, then the CrowS-Pairs rates."""
    from ..stats import fmt_ci
    from .common import fmt

    doms = [d for d in out if isinstance(out[d], dict) and "js" in out[d] and d != "all"] + ["all"]
    typer.echo(table([[d, out[d].get("n_pairs", out["n_pairs"]), fmt(out[d]["js"]) + fmt_ci(out[d]["js_ci"]),
                       fmt(out[d]["logit_gap"]) + fmt_ci(out[d]["logit_gap_ci"]), out[d].get("numeric_smd")]
                      for d in doms],
                     ["domain", "pairs", "mean JS (nats) [95 % CI]", "logit gap (W-B) [95 % CI]",
                      "numeric SMD"]))
    if "multi_token_words" in out:
        typer.echo(f"note: words scored by their first token only: {out['multi_token_words']}")
    if "seqgap" in out:
        typer.echo(table([[d, r["n_pairs"], fmt(r["seqgap"]) + fmt_ci(r["seqgap_ci"]),
                           fmt(r.get("stereo_gap")) + fmt_ci(r.get("stereo_gap_ci")), r.get("stereo_rate")]
                          for d, r in out["seqgap"].items()],
                         ["sentences", "pairs", "mean |seqgap| (nats) [95 % CI]",
                          "gap toward the stereotype [95 % CI]", "stereotyped likelier (%)"]))
    for name, c in out.get("crows_pairs", {}).items():
        if isinstance(c, dict):
            typer.echo(f"CrowS-Pairs {name} ({c['n_pairs']} pairs): stereotype rate {c['rate']:.1f} %"
                       f"{fmt_ci(c['rate_ci'])} (50 % = none); mean log-lik. difference "
                       f"{c['mean_diff']:.3f}{fmt_ci(c['mean_diff_ci'])} nats")
    if "generations" in out:
        _print_generations(out["generations"])
    if "knowledge" in out:
        k = out["knowledge"]
        groups = ", ".join(f"{g} facts {k[f'know_logprob_{g}']:.2f}" for g in ("black", "white")
                           if f"know_logprob_{g}" in k)
        typer.echo(f"knowledge probe ({k['know_n']} facts): mean log-prob of the answer "
                   f"{k['know_logprob']:.2f}{fmt_ci(k['know_logprob_ci'])} nats"
                   f"{f' ({groups})' if groups else ''}; answer first {k['know_top1']:.1f} %"
                   f"{fmt_ci(k['know_top1_ci'])}, in the top {k['know_k']} {k['know_topk']:.1f} %"
                   f"{fmt_ci(k['know_topk_ci'])}")
    if "bbq" in out:
        b = out["bbq"]
        names = (("bbq_acc_ambig", "accuracy ambiguous", "%"),
                 ("bbq_acc_disambig", "accuracy disambiguated", "%"),
                 ("bbq_s_dis", "bias s_DIS", ""), ("bbq_s_amb", "bias s_AMB", ""))
        parts = [f"{label} {b[k]:.1f}{unit}{fmt_ci(b[k + '_ci'])}" for k, label, unit in names if k in b]
        typer.echo(f"BBQ ({b['bbq_n']} Black / White rows): {'; '.join(parts)} (bias: 0 = none)")


def _print_generations(g: dict) -> None:
    """``measure --generations``: per prompt source and axis, each group's mean and the gap."""
    from ..measures.generations import AXES
    from ..stats import fmt_ci

    rows = [[src, axis, g[f"gen_{src}_n"], f"{g[f'gen_{src}_{axis}_black']:.3f}",
             f"{g[f'gen_{src}_{axis}_white']:.3f}",
             f"{g[f'gen_{src}_{axis}_gap']:+.3f}{fmt_ci(g[f'gen_{src}_{axis}_gap_ci'])}"]
            for src in ("pairs", "bold") if f"gen_{src}_n" in g for axis in AXES]
    typer.echo(table(rows, ["prompts", "axis", "n", "Black", "White", "gap B-W [95 % CI]"]))
    typer.echo("sentiment: VADER compound in [-1, 1]; negative, crime: % of continuations (2 a prompt)")
