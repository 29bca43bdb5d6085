"""``lens-bias prune``: select units from a scores file (one-shot, or any selector, which re-reads
the scan's pairs) and write the mask files and the pruned Hugging Face model. Registered on the
main app by :mod:`lens_bias.cli.main`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import LensBiasError
from .common import (
    DeviceMapOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    PairsOpt,
    QuietOpt,
    TrustOpt,
    fail,
    interruptible,
    load_bridge,
    pairs_as_scanned,
    warn,
)

SelectorPruneOpt = Annotated[str, typer.Option(
    "--selector", help="oneshot (the top scores), or iterative, stable, learned, auto or a registered "
                       "selector, which re-read the pairs the scores were computed on (as the scan "
                       "recorded them)")]


def selector_pairs(scores, selector: str, pairs: Path | None, ablation: str) -> tuple:
    """The pairs ``--selector`` re-reads (``None`` for ``oneshot``, which needs none) and the seed:
    the scan's pairs as its settings record them, checked against its fingerprint before any model
    is loaded. A selector that is not registered, or does not work under ``ablation``, is refused
    first."""
    from ..attribution.provenance import check_scores_match
    from ..selection.registry import check_selector

    check_selector(selector, ablation, "--selector")
    if selector == "oneshot":
        return None, scores.settings.get("seed", 0)
    ps, seed = pairs_as_scanned(scores.settings, pairs, None, None, None, None)
    check_scores_match(scores, ps, None, False, "prune")  # other pairs: refused
    return ps, seed


def prune_cmd(
    scores: Annotated[Path, typer.Option("--scores", "-s", help="scores file from lens-bias scan")],
    model: ModelOpt = "smollm2-135m", budget: Annotated[str, typer.Option(
        help="count, % of units (0.5%) or % of params (0.13%params)")] = "0.5%",
    kind: Annotated[str, typer.Option(help="neurons, heads or both")] = "neurons",
    per_layer: Annotated[str, typer.Option(
        help="global or uniform (uniform allows structural export)")] = "global",
    mode: Annotated[str, typer.Option(
        help="zero (shape-preserving) or structural (neurons removed)")] = "zero",
    max_cost_quantile: Annotated[float, typer.Option(help="capability filter: never prune units whose LM-loss"
                                                          " cost is above this quantile (1 = off)")] = 0.5,
    ablation: Annotated[str | None, typer.Option(help="zero, or mean (neutral-text means, folded into "
                                                      "biases); default: as in the scan")] = None,
    selector: SelectorPruneOpt = "oneshot",
    steps: Annotated[int, typer.Option(help="rounds of --selector iterative")] = 4,
    pairs: PairsOpt = None, batch_size: int = 16, out: Annotated[Path, typer.Option(
        "--out", "-o", help="folder for mask.safetensors, mask.json and model/")] = Path("pruned"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing folder")] = False,
    allow_other_model: Annotated[bool, typer.Option("--allow-other-model", help=(
        "prune anyway when the scores name another model of the same shape"))] = False,
    quiet: QuietOpt = False, trust_remote_code: TrustOpt = False, dtype: DtypeOpt = "auto",
    device: DeviceOpt = None, device_map: DeviceMapOpt = None,
) -> None:
    """Select components from scores and write the mask files and the pruned HF model.
    The scores must come from this model: another shape is refused, another name or architecture
    too unless --allow-other-model (mask.json then records it). One-shot compares no pairs: prune
    evaluates on none, and a run evaluates its pruning on held-out pairs, other than the scan's.
    The other selectors re-read the scan's pairs (--pairs: the scan's pairs file, if it moved);
    other pairs than those scored are refused."""
    from ..atomic import atomic_out, prepare_out
    from ..attribution.provenance import check_scores_match
    from ..scores import Scores
    from ..selection import from_scores as fs
    from ..weights.export import export_hf
    from ..weights.formats import check_export

    try:
        if out.exists() and not overwrite:
            prepare_out(out, overwrite)  # refuses, before the model is loaded
        fs.check_prune_choices(budget, kind, per_layer)  # so do bad choices
        s = Scores.load(scores)
        ablation = fs.scores_ablation(s, ablation)
        check_export(ablation, "hf", mode)  # before the model is loaded
        ps, seed = selector_pairs(s, selector, pairs, ablation)
        with interruptible(out):
            bridge = load_bridge(model, trust_remote_code, dtype, device, device_map,
                                 s.settings.get("chat_template", False) if ps is not None else False)
            if warning := check_scores_match(s, ps, bridge, allow_other_model, "prune",
                                             "--allow-other-model"):
                warn(warning)
            mask, means = fs.mask_from_scores(bridge, s, budget, kind, per_layer, max_cost_quantile, ablation,
                                           selector=selector, pairs=ps, steps=steps, seed=seed,
                                           batch_size=batch_size, progress=not quiet)
            mask.meta.update(scores_pairs_hash=s.settings.get("pairs_hash"), provenance_warning=warning,
                             selector=selector)
            with atomic_out(out, overwrite) as tmp:
                mask.save(tmp)
                export_hf(bridge, mask, tmp / "model", mode=mode, overwrite=True, means=means,
                          ablation="mean" if means else "zero")
    except LensBiasError as e:
        fail(e)
    c = mask.counts()
    typer.echo(f"pruned {c['neurons']} neurons and {c['heads']} heads ({selector}, {mode}); wrote "
               f"{out}/mask.safetensors, {out}/mask.json and {out}/model/"
               + (f"\nwarning: {warning}" if warning else ""))
