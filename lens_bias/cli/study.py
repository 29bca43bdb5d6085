"""The options every ``lens-bias experiment`` command shares, declared once.

:func:`study_command` registers a function ``fn(opts: StudyOptions, **its_own_options)`` as a
command whose options are its own followed by the shared ones (model, pairs, domains, pairs per
domain, capability filter, seed, output folder, loading). The command's failures print one line
(:func:`~lens_bias.cli.common.fail`), and :class:`StudyOptions` gives the study its inputs and
writes its folder.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from ..errors import LensBiasError
from .common import (
    ChatOpt,
    DeviceMapOpt,
    DeviceOpt,
    DomainsOpt,
    DtypeOpt,
    ModelOpt,
    OldDomainOpt,
    PairsOpt,
    QuietOpt,
    domain_list,
    fail,
    load_options,
    old_spelling,
)

CostOpt = Annotated[float, typer.Option(help="capability filter: keep units above this Fisher-cost quantile "
                                             "(1 = off)")]


@dataclass
class StudyOptions:
    """The shared options of one experiment command, as given."""

    model: str
    pairs: Path | None
    domains: list[str] | None
    per_domain: int
    held_per_domain: int
    max_cost_quantile: float
    seed: int
    out: Path
    overwrite: bool
    quiet: bool
    dtype: str
    device: str | None
    device_map: str | None
    chat_template: bool

    @property
    def progress(self) -> bool:
        return not self.quiet

    @property
    def quantile(self) -> float | None:
        """The capability quantile, ``None`` when the filter is off (1 or more)."""
        return None if self.max_cost_quantile >= 1 else self.max_cost_quantile

    def inputs(self, ppl_tokens: int = 2048, measures: list[str] | None = None):
        """The model, the train pairs and the held-out evaluation set
        (:func:`lens_bias.studies.setup.study_inputs`; with the generation audit's prompts when
        ``measures`` names it)."""
        from ..studies.setup import study_inputs

        return study_inputs(self.model, self.pairs, self.domains, self.per_domain, self.held_per_domain,
                            self.seed, load_options(self.dtype, self.device, self.device_map,
                                                    self.chat_template), ppl_tokens=ppl_tokens,
                            generation="generations" in (measures or []))

    def write(self, result: dict, report) -> None:
        """Write ``result.json`` and ``report.html`` into the output folder, atomically."""
        with self.folder() as tmp:
            write_into(tmp, result, report)

    def folder(self):
        """``with opts.folder() as tmp:`` everything written into ``tmp`` becomes the output folder at
        the end (:func:`lens_bias.atomic.atomic_out`; an existing one is refused before any work unless
        ``--overwrite``): for a study that writes more than its result and report."""
        from ..atomic import atomic_out

        return atomic_out(self.out, self.overwrite)


def write_into(folder: Path, result: dict, report) -> None:
    """``result.json`` and ``report.html`` into ``folder``."""
    (folder / "result.json").write_text(json.dumps(result, indent=1, default=float))
    (folder / "report.html").write_text(report.html(), encoding="utf-8")


def _shared(out: str, per_domain: int) -> list[inspect.Parameter]:
    """The shared options as parameters, with this command's defaults for ``--out`` and ``--per-domain``."""
    kw = inspect.Parameter.KEYWORD_ONLY
    opts = [
        ("model", ModelOpt, "smollm2-135m"),
        ("pairs", PairsOpt, None),
        ("domains", DomainsOpt, None),
        ("domain", OldDomainOpt, None),
        ("per_domain", Annotated[int, typer.Option(help="bundled train pairs sampled per domain (0 = all)")],
         per_domain),
        ("held_per_domain", Annotated[int, typer.Option(
            help="bundled held-out pairs sampled per domain (0 = all)")], 26),
        ("max_cost_quantile", CostOpt, 0.5),
        ("seed", int, 0),
        ("out", Annotated[Path, typer.Option("--out", "-o", help="output folder (result.json, report.html)")],
         Path(out)),
        ("overwrite", Annotated[bool, typer.Option(help="replace an existing output folder")], False),
        ("quiet", QuietOpt, False),
        ("dtype", DtypeOpt, "auto"),
        ("device", DeviceOpt, None),
        ("device_map", DeviceMapOpt, None),
        ("chat_template", ChatOpt, False),
    ]
    return [inspect.Parameter(name, kw, default=default, annotation=ann) for name, ann, default in opts]


def study_command(app: typer.Typer, name: str, out: str, per_domain: int = 24) -> Callable:
    """Register the decorated ``fn(opts, **own)`` on ``app`` as the command ``name`` (see the module
    docstring); a :class:`~lens_bias.errors.LensBiasError` it raises becomes a one-line error."""

    def decorate(fn: Callable) -> Callable:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
               for p in list(inspect.signature(fn, eval_str=True).parameters.values())[1:]]
        shared = _shared(out, per_domain)
        names = [p.name for p in shared]

        def command(**kw) -> None:
            given = {k: kw.pop(k) for k in names}
            try:
                domains = old_spelling(given.pop("domains"), given.pop("domain"), "--domains", "--domain")
                fn(StudyOptions(domains=domain_list(domains), **given), **kw)
            except LensBiasError as e:
                fail(e)

        command.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
        command.__doc__, command.__name__ = fn.__doc__, fn.__name__
        app.command(name)(command)
        return fn

    return decorate
