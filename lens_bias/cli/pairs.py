"""``lens-bias pairs``: contrastive pairs for your own use case, from a template file
(:func:`lens_bias.prompts.custom.pairs_from_templates`), checked with a model's tokenizer and written as a
pairs JSONL file (with domain and template ids, ready for ``--pairs`` and the template split).
Registered on the main app by :mod:`lens_bias.cli.main`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ..atomic import signals_deferred
from ..errors import LensBiasError, RunError
from ..prompts.pairs import PairSet
from .common import fail, interruptible, table, warn


def write_pairs(pairs: PairSet, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``pairs`` as a pairs JSONL file atomically: into a temporary file next to ``path``,
    renamed into place at the end, so an error, Ctrl-C or SIGTERM never leaves half a file. An
    existing file is replaced only with ``overwrite``.

    Examples:
        >>> import tempfile, pathlib
        >>> from lens_bias import build_pairs
        >>> f = write_pairs(build_pairs(["finance"])[:3], pathlib.Path(tempfile.mkdtemp()) / "pairs.jsonl")
        >>> len(f.read_text().splitlines()), sorted(p.name for p in f.parent.iterdir())
        (3, ['pairs.jsonl'])
    """
    path = Path(path)
    if path.is_dir() or (path.exists() and not overwrite):
        raise RunError(f"{path} already exists; pass --overwrite to replace it, or choose another -o file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        tmp.chmod(0o644)
        pairs.to_jsonl(tmp)
        with signals_deferred():
            tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def count_rows(pairs: PairSet) -> list[list]:
    """``[domain, template, pairs]`` per template, then ``[domain, "(all)", pairs]`` per domain.

    Examples:
        >>> from lens_bias import build_pairs
        >>> count_rows(build_pairs(["finance"]).filter(templates=["finance-01", "finance-02"]))
        [['finance', 'finance-01', 25], ['finance', 'finance-02', 25], ['finance', '(all)', 50]]
    """
    rows = []
    for d, ps in pairs.by_domain().items():
        rows += [[d, t, len(ps.filter(templates=[t]))] for t in ps.templates] + [[d, "(all)", len(ps)]]
    return rows


def pairs_cmd(
    templates: Annotated[Path, typer.Option(
        "--templates", "-t",
        help='template file: JSON (a list, or {"templates": [...]}) or JSONL, one template a line')],
    out: Annotated[Path, typer.Option("--out", "-o", help="the pairs JSONL file to write")],
    names: Annotated[Path | None, typer.Option(
        help='your names, a JSON file {"black": [...], "white": [...]} paired in order (default: the '
             'bundled names)')] = None,
    groups: Annotated[Path | None, typer.Option(
        help="your group phrases, a JSON file in the same format (default: the bundled group "
             "phrases)")] = None,
    subjects: Annotated[str, typer.Option(help="fill the templates with names, groups or both")] = "both",
    model: Annotated[str, typer.Option(
        "--model", "-m", help="the model whose tokenizer checks token counts (zoo name, tiny-random, Hub "
                              "id, folder, .gguf)")
    ] = "smollm2-135m",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing pairs file")] = False,
) -> None:
    """Build pairs from your own templates: every template filled with every name and/or group
    pair, checked with the model's tokenizer, written as a pairs JSONL file for --pairs."""
    from ..model.load import load_hf
    from ..prompts.custom import pairs_from_templates, token_warnings

    with interruptible(out):
        try:
            if out.exists() and not overwrite:
                write_pairs(PairSet(), out)  # refuses, before the model is loaded
            ps, warnings = pairs_from_templates(templates, subjects, names, groups)
            warnings += token_warnings(ps, load_hf(model)[1])
            write_pairs(ps, out, overwrite)
        except LensBiasError as e:
            fail(e)
    typer.echo(table(count_rows(ps), ["domain", "template", "pairs"]))
    typer.echo(f"wrote {len(ps)} pairs ({len(ps.templates)} templates) to {out}")
    for w in warnings:
        warn(w)
