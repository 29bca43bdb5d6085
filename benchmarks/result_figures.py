"""The figures (and tables) of docs/results.md, from the result files the experiments wrote.

    python benchmarks/result_figures.py wording docs/figures/wording_smollm2 docs/data/wording_smollm2.json
    python benchmarks/result_figures.py selectors docs/figures/selectors_smollm2 \\
        docs/data/selectors_smollm2_05.json docs/data/selectors_smollm2_budgets.json \\
        "docs/data/selectors_smollm2_48.json:, 48 pairs a domain" --table
    python benchmarks/result_figures.py arena docs/figures/arena_smollm2 docs/data/arena_smollm2.json --table

Several result files of one experiment are drawn as one (their rows in order; ``FILE:SUFFIX``
appends SUFFIX to that file's row labels, for runs of the same selector on other settings). Arena
files (runs of one model, seed and split with different ``--methods``) merge method by method, the
first file's record of a method kept (a later file adds its leave-one-domain-out record where the
kept one has none, so a ``--lodo`` run can be merged into a fuller one); their unmodified model
must agree, so every row is paired against the same "before"; ``--table`` prints the table against
the unmodified model, the one against the reference method, the winners and each method's settings.
Writes ``PREFIX_<figure>.html`` (interactive; plotly.js from its CDN) for every figure; ``--table``
prints the markdown table. Static PNGs need an interpreter whose plotly can export images
(plotly < 6 with ``kaleido==0.2.1``, or kaleido >= 1 with a Chrome): ``--png-python PYTHON``
renders them there from the figures' JSON, so this environment needs no image exporter.
"""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from lens_bias.report import figures as viz
from lens_bias.studies import arena
from lens_bias.studies.selectors import selector_rows, wording_rows

FIGURES = {"selectors": ({"frontier": viz.selector_frontier, "gap": viz.train_vs_held_out}, selector_rows),
           "wording": ({"curve": viz.wording_curve}, wording_rows),
           "arena": ({"pareto": viz.arena_pareto}, arena.table)}
VS_REFERENCE = ("js", "seqgap", "crows_black_rate", "bbq_s_dis", "bbq_s_amb", "gen_bold_sentiment_gap",
                "know_topk", "wikitext_ppl")
RENDER = ("import plotly.io as pio, sys; "
          "pio.read_json(sys.argv[1]).write_image(sys.argv[2], width=900, scale=1)")


def merged(files: list[str]) -> dict:
    """The first file's result with the rows of all of them (labels suffixed where asked)."""
    out = None
    for spec in files:
        path, _, suffix = spec.partition(":")
        res = json.loads(Path(path).read_text())
        for r in res["rows"]:
            if suffix and "label" in r:
                r["label"] += suffix
        out = res if out is None else {**out, "rows": out["rows"] + res["rows"]}
    return out


def merged_arena(files: list[str]) -> dict:
    """One arena result from several runs of the same set-up (see the module docstring)."""
    out = json.loads(Path(files[0]).read_text())
    for path in files[1:]:
        other = json.loads(Path(path).read_text())
        for k in ("js", "wikitext_ppl"):
            if not math.isclose(other["before"][k], out["before"][k], rel_tol=1e-9):
                raise SystemExit(f"{path}: its unmodified {k} differs from {files[0]}'s: not the same set-up")
        for name, rec in other["methods"].items():
            if name not in out["methods"]:
                out["methods"][name] = rec
            elif rec.get("lodo") and not out["methods"][name].get("lodo"):  # a --lodo run adds only that
                out["methods"][name]["lodo"] = rec["lodo"]
    out["winners"] = arena.winners(out)
    return out


def arena_extra(res: dict) -> str:
    """The table against the reference, the winners and each method's settings and check."""
    ref = res["reference"]
    cols = [c for c in arena.COLUMNS if c[1] in VS_REFERENCE]
    rows = [[n, *[arena.cell(r.get("vs_reference", {}).get(k), s, d) for _, k, s, d in cols]]
            for n, r in res["methods"].items() if n != ref]
    header = ["method", *[f"{c[0]} vs {ref}" for c in cols]]
    lines = [f"\nagainst {ref}, paired on the same items:\n", markdown(rows, header), ""]
    for k, w in res["winners"].items():
        won = "none beyond noise" if not w else \
            f"{w['method']} ({w['before']:.4g} -> {w['after']:.4g}, p = {w['p']:.3g})"
        lines.append(f"- {k}: {won}")
    for n, r in res["methods"].items():
        settings = {k: v for k, v in r["settings"].items() if k != "tried"}
        check = r["export"].get("summary") or r["export"].get("why")
        lines.append(f"- {n}: {settings}; fit {r['fit_s']:.0f} s; export: {check}")
    return "\n".join(lines)


def markdown(rows: list, header: list[str]) -> str:
    def line(cells: list) -> str:
        return "| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(r) for r in rows])


def main(a: argparse.Namespace) -> None:
    figures, table = FIGURES[a.experiment]
    res = merged_arena(a.results) if a.experiment == "arena" else merged(a.results)
    a.prefix.parent.mkdir(parents=True, exist_ok=True)
    for name, make in figures.items():
        fig, stem = make(res), f"{a.prefix}_{name}"
        fig.write_html(f"{stem}.html", include_plotlyjs="cdn")
        if a.png_python:
            Path(f"{stem}.json").write_text(fig.to_json())
            try:
                subprocess.run([a.png_python, "-c", RENDER, f"{stem}.json", f"{stem}.png"], check=True)
            finally:
                Path(f"{stem}.json").unlink()
        print("wrote", stem + (".html/.png" if a.png_python else ".html"), file=sys.stderr)
    if a.table:
        print(markdown(*table(res)))
        if a.experiment == "arena":
            print(arena_extra(res))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=sorted(FIGURES))
    ap.add_argument("prefix", type=Path, help="output path prefix")
    ap.add_argument("results", nargs="+", help="result.json files (FILE or FILE:LABEL-SUFFIX)")
    ap.add_argument("--table", action="store_true", help="print the markdown table too")
    ap.add_argument("--png-python", help="a python whose plotly exports images (writes PNGs too)")
    main(ap.parse_args())
