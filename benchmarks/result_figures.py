"""The figures of docs/results.md, from the result files the experiments wrote.

    python benchmarks/result_figures.py selectors docs/data/selectors_smollm2.json docs/figures/selectors_smollm2
    python benchmarks/result_figures.py wording docs/data/wording_smollm2.json docs/figures/wording_smollm2

Writes ``PREFIX_<figure>.html`` (interactive; plotly.js from its CDN) for every figure of the
experiment. Static PNGs need an interpreter whose plotly can export images (plotly < 6 with
``kaleido==0.2.1``, or kaleido >= 1 with a Chrome): ``--png-python /path/to/that/python`` renders
them there from the figures' JSON, so this environment needs no image exporter.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from lens_bias import viz

FIGURES = {"selectors": {"frontier": viz.selector_frontier, "gap": viz.train_vs_held_out},
           "wording": {"curve": viz.wording_curve}}
RENDER = "import plotly.io as pio, sys; pio.read_json(sys.argv[1]).write_image(sys.argv[2], width=900, scale=1)"


def main(a: argparse.Namespace) -> None:
    res = json.loads(a.result.read_text())
    a.prefix.parent.mkdir(parents=True, exist_ok=True)
    for name, make in FIGURES[a.experiment].items():
        fig, stem = make(res), f"{a.prefix}_{name}"
        fig.write_html(f"{stem}.html", include_plotlyjs="cdn")
        if a.png_python:
            Path(f"{stem}.json").write_text(fig.to_json())
            try:
                subprocess.run([a.png_python, "-c", RENDER, f"{stem}.json", f"{stem}.png"], check=True)
            finally:
                Path(f"{stem}.json").unlink()
        print("wrote", stem + (".html/.png" if a.png_python else ".html"), file=sys.stderr)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=sorted(FIGURES))
    ap.add_argument("result", type=Path, help="the experiment's result.json")
    ap.add_argument("prefix", type=Path, help="output path prefix")
    ap.add_argument("--png-python", help="a python whose plotly exports images (writes PNGs too)")
    main(ap.parse_args())
