"""The figures (and tables) of docs/results.md, from the result files the experiments wrote.

    python benchmarks/result_figures.py wording docs/figures/wording_smollm2 docs/data/wording_smollm2.json
    python benchmarks/result_figures.py selectors docs/figures/selectors_smollm2 \\
        docs/data/selectors_smollm2_05.json docs/data/selectors_smollm2_budgets.json \\
        "docs/data/selectors_smollm2_48.json:, 48 pairs a domain" --table

Several result files of one experiment are drawn as one (their rows in order; ``FILE:SUFFIX``
appends SUFFIX to that file's row labels, for runs of the same selector on other settings).
Writes ``PREFIX_<figure>.html`` (interactive; plotly.js from its CDN) for every figure; ``--table``
prints the markdown table. Static PNGs need an interpreter whose plotly can export images
(plotly < 6 with ``kaleido==0.2.1``, or kaleido >= 1 with a Chrome): ``--png-python PYTHON``
renders them there from the figures' JSON, so this environment needs no image exporter.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from lens_bias.report import figures as viz
from lens_bias.studies.selectors import selector_rows, wording_rows

FIGURES = {"selectors": ({"frontier": viz.selector_frontier, "gap": viz.train_vs_held_out}, selector_rows),
           "wording": ({"curve": viz.wording_curve}, wording_rows)}
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


def markdown(rows: list, header: list[str]) -> str:
    def line(cells: list) -> str:
        return "| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header)] + [line(r) for r in rows])


def main(a: argparse.Namespace) -> None:
    figures, table = FIGURES[a.experiment]
    res = merged(a.results)
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


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=sorted(FIGURES))
    ap.add_argument("prefix", type=Path, help="output path prefix")
    ap.add_argument("results", nargs="+", help="result.json files (FILE or FILE:LABEL-SUFFIX)")
    ap.add_argument("--table", action="store_true", help="print the markdown table too")
    ap.add_argument("--png-python", help="a python whose plotly exports images (writes PNGs too)")
    main(ap.parse_args())
