"""What the ``lens-bias`` command (:mod:`lens_bias.cli.main`) and its ``experiment`` sub-commands
(:mod:`lens_bias.cli.experiment`) share: the option types, the model loader (``load_bridge``), the
error exit, the plain-text table and number formats, and the Ctrl-C / SIGTERM handling of commands
that write a folder; and helpers of single commands kept out of :mod:`lens_bias.cli.main` to keep it
short (the pairs ``scan`` and ``validate`` work on, ``validate``'s summary and table, ``export``'s
torch-prune masks).

Both command modules import this one; neither imports the other's helpers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from ..errors import LensBiasError

ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", help="zoo name, tiny-random, Hub id, local folder or .gguf")]
PairsOpt = Annotated[Path | None, typer.Option(
    "--pairs", help="pairs JSONL file (default: bundled templates)")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object instead of a table")]
BbqOpt = Annotated[bool, typer.Option(
    "--bbq/--no-bbq", help="BBQ's accuracies and bias scores on its Black / White race rows")]
GenOpt = Annotated[bool, typer.Option(
    "--generations/--no-generations",
    help="the generation audit: sampled continuations of our prompt pairs and BOLD's, scored for sentiment "
         "and crime words")]
BatchPairsOpt = Annotated[int | None, typer.Option(
    help="pairs a batch holds at most (default: 16 on a CPU, 128 on a GPU)")]
BatchTokensOpt = Annotated[int | None, typer.Option(
    help="padded tokens a backward batch holds at most (default: a CPU's 512; on a GPU what its free "
         "memory holds, less 10 % of the card)")]
BoldFileOpt = Annotated[Path | None, typer.Option(help="BOLD race prompts JSON (default: ../shared/data)")]
BbqFileOpt = Annotated[Path | None, typer.Option(help="BBQ race JSONL (default: ../shared/data)")]
KnowOpt = Annotated[bool, typer.Option(
    "--knowledge/--no-knowledge",
    help="the knowledge probe: facts about Black and White people, history and culture that debiasing "
         "must not remove (log-probability and top-k accuracy of the answers)")]
KnowFileOpt = Annotated[Path | None, typer.Option(
    help="a knowledge probe JSON of your own (default: the bundled 126 facts)")]
IgOpt = Annotated[str, typer.Option(
    "--ig", help="integrated gradients (--scorer ig): points, path and rule, e.g. 8,layer,gauss (path: "
                 "layer, each layer on its own path, or joint; rule: gauss or midpoint)")]
MeasuresOpt = Annotated[str, typer.Option(
    help="measures of bias as users see it, comma-separated: bbq, generations (slow), knowledge "
         "('' = none)")]
WikitextOpt = Annotated[Path | None, typer.Option(help="WikiText-2 test file (default: ../shared/data)")]
LambadaOpt = Annotated[Path | None, typer.Option(help="LAMBADA jsonl (default: ../shared/data when present)")]
BbqRowsOpt = Annotated[int, typer.Option(
    help="BBQ rows, spread over its templates (0 = all 800 Black / White rows)")]


def ig_options(spec: str) -> dict:
    """``--ig m,path,rule`` as the keywords of the ``ig`` scorer (:mod:`lens_bias.attribution.integrated`).

    Examples:
        >>> ig_options("8,joint")
        {'ig_steps': 8, 'ig_path': 'joint', 'ig_rule': 'gauss'}
    """
    from ..attribution.integrated import PATHS, RULES
    from ..vocab import check_choice

    parts = comma_list(spec)
    if not parts or not parts[0].isdigit() or int(parts[0]) < 1 or len(parts) > 3:
        raise LensBiasError(f"--ig must be 'points[,path[,rule]]' with points >= 1, e.g. 8,layer,gauss; "
                            f"got {spec!r}")
    path = check_choice(parts[1] if len(parts) > 1 else "layer", PATHS, "--ig path")
    rule = check_choice(parts[2] if len(parts) > 2 else "gauss", RULES, "--ig rule")
    return {"ig_steps": int(parts[0]), "ig_path": path, "ig_rule": rule}


def user_options(bbq: bool, bbq_file: Path | None, bbq_rows: int, generations: bool, bold_file: Path | None,
                 knowledge: bool, knowledge_file: Path | None) -> dict:
    """The :class:`lens_bias.pipeline.stages.RunConfig` fields of ``run``'s BBQ, generation audit and
    knowledge probe options (a file of ``""``: that measure is off)."""
    path = lambda f: f and str(f)  # noqa: E731
    return {"bbq": path(bbq_file) if bbq else "", "bbq_rows": bbq_rows, "generations": generations,
            "bold": path(bold_file), "knowledge": path(knowledge_file) if knowledge else ""}


DtypeOpt = Annotated[str, typer.Option(
    "--dtype", help="auto, float32, bfloat16 or float16 (auto: the checkpoint's own dtype on a GPU, "
                    "float32 on a CPU)")]
DeviceOpt = Annotated[str | None, typer.Option(
    "--device", help="cpu, cuda, cuda:1... (default: cuda when a GPU is visible)")]
DeviceMapOpt = Annotated[str | None, typer.Option(
    "--device-map", help="split the model over devices: auto (every visible GPU) or a list, e.g. "
                         "cuda:0,cuda:1")]
SplitOpt = Annotated[str, typer.Option(help="train / held-out (split by template, seeded) or all")]
AllowOtherPairsOpt = Annotated[bool, typer.Option(
    "--allow-other-pairs", help="compare anyway when the pairs or the model differ from those the scores "
                                "were computed on")]
ChatOpt = Annotated[bool, typer.Option(
    "--chat-template", help="put each pair prompt through the model's chat template (one user turn and the "
                            "assistant prefix), as an instruct model is deployed; plain-text measures "
                            "stay raw")]


def load_options(dtype: str = "auto", device: str | None = None, device_map: str | None = None,
                 chat_template: bool = False) -> dict:
    """``load_model`` (and ``RunConfig``) keyword arguments from the ``--dtype``, ``--device``,
    ``--device-map`` and ``--chat-template`` options (a comma-separated device map becomes a list
    of devices).

    Examples:
        >>> load_options("bfloat16", None, "cuda:0,cuda:1")
        {'dtype': 'bfloat16', 'device': None, 'device_map': ['cuda:0', 'cuda:1'], 'chat_template': False}
        >>> load_options(device_map="auto")["device_map"]
        'auto'
    """
    if device_map is not None and device_map != "auto":
        device_map = [d.strip() for d in device_map.split(",") if d.strip()]
    return {"dtype": dtype, "device": device, "device_map": device_map, "chat_template": chat_template}


def load_bridge(model: str, trust_remote_code: bool = False, dtype: str = "auto", device: str | None = None,
                device_map: str | None = None, chat_template: bool = False):
    """The model of a command, loaded with its ``--trust-remote-code``, ``--dtype``, ``--device``,
    ``--device-map`` and ``--chat-template`` options (:func:`load_options`)."""
    from ..model.load import load_model

    return load_model(model, trust_remote_code=trust_remote_code,
                      **load_options(dtype, device, device_map, chat_template))


def fail(e: Exception) -> None:
    """Print ``error: <message>`` in red on stderr and exit with code 2 (a usage or input error)."""
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@contextmanager
def interruptible(out: Path) -> Iterator[None]:
    """For commands that write a folder: SIGTERM (a CI timeout, ``kill``) is handled like Ctrl-C,
    so that the half-written temporary folder is removed; either ends with exit code 130 and a
    one-line message instead of a traceback."""
    import signal
    import threading

    old = None
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        def on_term(signum, frame):
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except KeyboardInterrupt:
        typer.secho(f"interrupted: nothing was written; {out} is as it was before", fg=typer.colors.RED,
                    err=True)
        raise typer.Exit(130) from None
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def warn(message: str) -> None:
    """Print ``warning: <message>`` in yellow on stderr (stdout stays a table or one JSON object)."""
    typer.secho(f"warning: {message}", fg=typer.colors.YELLOW, err=True)


def split_part(ps, split: str, seed: int):
    """The pairs' train or held-out part (split by template, seeded), or all of them (``--split``).

    Examples:
        >>> from lens_bias import build_pairs
        >>> ps = build_pairs(["hiring"]).sample(8)
        >>> train, held = split_part(ps, "train", 0), split_part(ps, "held-out", 0)
        >>> len(train) + len(held) == len(split_part(ps, "all", 0)) == 8
        True
    """
    if split == "all":
        return ps
    from ..prompts.splits import template_split

    if split not in ("train", "held-out"):
        raise LensBiasError(f"--split must be train, held-out or all; got {split!r}")
    train, test = template_split(ps, held_out=0.25, seed=seed, check=False)
    return train if split == "train" else test


def pairs_as_scanned(settings: dict, pairs: Path | None, domain: list[str] | None, per_domain: int | None,
                     split: str | None, seed: int | None):
    """The pairs ``validate`` works on, and its seed: each option given, else as the scan recorded it
    in the scores' settings (pairs file, domains, pairs per domain, split, seed), so that by default
    the exact runs use the very pairs the scores were computed on.

    Examples:
        >>> ps, seed = pairs_as_scanned({"per_domain": 4, "split": "all", "domain_filter": ["hiring"]},
        ...                             None, None, None, None, None)
        >>> ps, seed
        (PairSet(4 pairs: hiring=4), 0)
    """
    from ..measures.targets import load_metric_pairs

    seed = settings.get("seed", 0) if seed is None else seed
    per_domain = settings.get("per_domain", 4) if per_domain is None else per_domain
    split = settings.get("split", "train") if split is None else split
    domain = settings.get("domain_filter") if domain is None else domain
    if pairs is None and settings.get("pairs", "bundled") != "bundled":
        pairs = Path(settings["pairs"])
    ps = load_metric_pairs(pairs, domain_list(domain), per_domain, seed, settings.get("metric", "js"))
    return split_part(ps, split, seed), seed


def domain_list(domain: list[str] | None) -> list[str] | None:
    """Domains given as repeated and/or comma-separated options, as one list (``None`` when none).

    Examples:
        >>> domain_list(["finance,hiring", " policing "])
        ['finance', 'hiring', 'policing']
    """
    if not domain:
        return None
    return [d.strip() for item in domain for d in item.split(",") if d.strip()]


def comma_list(s: str) -> list[str]:
    """A comma-separated option as a list, blanks dropped.

    Examples:
        >>> comma_list("ablate, patch,,random")
        ['ablate', 'patch', 'random']
    """
    return [x.strip() for x in s.split(",") if x.strip()]


def table(rows: list[list], header: list[str]) -> str:
    """A plain-text table: columns padded to their widest cell, a dashed rule under the header,
    cells formatted by :func:`fmt`.

    Examples:
        >>> print(table([["js", 0.0123456, None]],
        ...             ["metric", "value", "note"]))  # doctest: +NORMALIZE_WHITESPACE
        metric  value    note
        ------  -------  ----
        js      0.01235  -
    """
    cells = [[str(h) for h in header]] + [[fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(x) -> str:
    """A table cell: ``None`` as ``-``, floats with 4 significant digits."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


def fmt1(x) -> str:
    """``None`` as ``-``, floats with one decimal (percentages, perplexities)."""
    return "-" if x is None else f"{x:.1f}" if isinstance(x, float) else str(x)


def fmt2(x) -> str:
    """``None`` as ``-``, numbers with two decimals (overlaps)."""
    return "-" if x is None else f"{x:.2f}"


VALIDATION_KEYS = ("spearman", "spearman_ci", "pearson", "spearman_abs", "pearson_abs", "spearman_top",
                   "spearman_random", "sign_agreement", "compared_with", "n", "k", "n_random", "reading")


def validation_summary(scores, pairs, res: dict, warning: str | None, /, **head) -> dict:
    """What ``validate`` prints with ``--json`` and writes with ``--out``: ``head`` (model, scores
    file), the scores' settings, the fingerprints of the pairs validated on and of those the scores
    were computed on, the provenance warning (None when they match), and per kind the numbers of
    :func:`lens_bias.attribution.validation.validate` without the per-unit detail."""
    from ..attribution.provenance import pairs_fingerprint

    st = scores.settings
    return {**head, "estimator": st.get("estimator"), "metric": st.get("metric"),
            "ablation": st.get("ablation"), "n_pairs": len(pairs), "graddrop": bool(st.get("graddrop")),
            "pairs_hash": pairs_fingerprint(pairs), "scores_pairs_hash": st.get("pairs_hash"),
            "provenance_warning": warning,
            **{kind: {x: r[x] for x in VALIDATION_KEYS} for kind, r in res.items()}}


def validation_table(res: dict) -> str:
    """The table of ``validate``: per kind, the correlations of predicted with exact effects, then
    each kind's one-line reading (the Spearman's interval and what the sample can say)."""
    rows = [[kind, r["n"], r["compared_with"], r["spearman"], r["pearson"], r["spearman_abs"],
             r["spearman_top"], r["spearman_random"], r["sign_agreement"]] for kind, r in res.items()]
    grid = table(rows, ["kind", "components", "predicted vs", "Spearman", "Pearson", "Spearman |.|",
                        "Spearman top-k", "Spearman random", "same sign"])
    return "\n".join([grid] + [r["reading"] for r in res.values() if r.get("reading")])


def check_run_options(budget: str, curve_budgets: list[str], max_cost_quantile: float, steps: int,
                      batch_size: int | None = None, max_batch_tokens: int | None = None) -> None:
    """Refuse bad ``run`` options (budgets, capability quantile, steps, batch sizes) with a message naming
    the option."""
    from ..selection.topk import parse_budget

    for b in [budget, *curve_budgets]:
        parse_budget(b)
    if not curve_budgets:
        raise LensBiasError("--budgets needs at least one budget, e.g. 0.5%,1%")
    if not max_cost_quantile > 0:
        raise LensBiasError(f"--max-cost-quantile must be in (0, 1] (1 = off), got {max_cost_quantile}")
    if steps < 1:
        raise LensBiasError(f"--steps must be at least 1, got {steps}")
    for name, n in (("--batch-size", batch_size), ("--max-batch-tokens", max_batch_tokens)):
        if n is not None and n < 1:
            raise LensBiasError(f"{name} must be at least 1, got {n} (leave it out for the default)")


DomainsOpt = Annotated[list[str] | None, typer.Option(
    "--domains", "-d", help="bundled domains, comma-separated or the option repeated (default: all)")]
OldDomainOpt = Annotated[list[str] | None, typer.Option(
    "--domain", hidden=True, help="old spelling of --domains")]


def old_spelling(new_value, old_value, new: str, old: str):
    """The value of an option renamed from ``old`` to ``new``: the old spelling still works,
    hidden from ``--help``, with a warning on stderr; both at once is refused.

    Examples:
        >>> old_spelling(["hiring"], None, "--domains", "--domain")
        ['hiring']
    """
    if old_value is None or old_value == []:
        return new_value
    if new_value is not None and new_value != []:
        raise LensBiasError(f"{old} is the old spelling of {new}; pass only {new}")
    warn(f"{old} is now {new}; the old spelling will be removed")
    return old_value
TrustOpt = Annotated[bool, typer.Option(
    "--trust-remote-code", help="allow custom model code from a Hub repository")]
SelectorOpt = Annotated[str, typer.Option(
    help="how units are chosen: oneshot, stable (stability selection over resampled templates), iterative, "
         "learned (straight-through top-k with safeguards) or auto (chosen by cross-validation on the train "
         "templates)")]


def print_run(m: dict, out: Path) -> None:
    """The summary of a run: before / after table, what was pruned, validation and export checks."""
    from ..measures.changes import summary_rows
    from ..pipeline.user_measures import knowledge_warning

    sel = m.get("selection") or {}
    if sel.get("chosen"):
        typer.echo(f"selector {sel['selector']}: chose {sel['chosen']} ({sel['why']})")

    typer.echo("")
    typer.echo(table(summary_rows(m),
                     ["measure", "before", "after", "change", "95 % CI", "p", "unit", "within noise?"]))
    p = m["pruned"]
    v = m["validation"]
    typer.echo(f"pruned {p['neurons']} neurons, {p['heads']} heads ({p['params_pct']:.3f} % of params)")
    typer.echo("validation against exact ablation: " + "; ".join(
        x.get("reading") or f"{k} Spearman {x['spearman']:.2f}" for k, x in v.items()))
    typer.echo(m["export"]["summary"])
    if warning := knowledge_warning(m):
        typer.secho(warning, fg=typer.colors.YELLOW)
    model = ", model/" if m["export"]["ok"] else "; NO model/: the export check failed"
    typer.echo(f"wrote {out}/ (report.html, metrics.json, mask.safetensors, mask.json{model})")
