"""One self-contained HTML report: plotly.js embedded once, every figure inline, plain tables."""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1150px;margin:2em auto;\
padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}\
td,th{border:1px solid #ddd;padding:.3em .6em;text-align:right}
th{background:#f4f6f8}td:first-child,th:first-child{text-align:left}.note{color:#555;font-size:.92em}.warn{color:#fff;background:#b00020;padding:.6em;font-weight:bold}
.good{color:#1e7e34}.bad{color:#b02a37}pre{background:#f6f8fa;padding:.6em;overflow-x:auto}
"""


def table(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    """An HTML table: ``header`` (n_columns strings) and ``rows`` (each n_columns values). Floats are
    shown with 4 significant digits, ``None`` as ``-``, everything escaped.

    Examples:
        >>> table([["js", 0.0123456, None]], ["metric", "value", "note"])
        '<table><thead><tr><th>metric</th><th>value</th><th>note</th></tr></thead><tbody><tr><td>js</td><td>0.01235</td><td>-</td></tr></tbody></table>'
    """

    def cell(x):
        if x is None:
            return "-"
        if isinstance(x, float):
            return f"{x:.4g}"
        return html.escape(str(x))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class Report:
    """Collect sections (text, tables, figures), then :meth:`html` gives one self-contained page.

    plotly.js is embedded once in the page head, so the file opens offline; each figure is an
    inline ``div``.

    Examples:
        >>> import plotly.graph_objects as go
        >>> rep = Report("My run")
        >>> rep.heading("Summary"); rep.text("Held-out JS dropped.", "note")
        >>> rep.table([["js", 0.01]], ["metric", "value"])
        >>> rep.figure(go.Figure(go.Bar(x=["a"], y=[1])))
        >>> page = rep.html()
        >>> page.startswith("<!DOCTYPE html>"), page.count('class="plotly-graph-div"')
        (True, 1)
    """

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []
        self.n_figures = 0

    def heading(self, text: str) -> None:
        """Add a section heading (``<h2>``)."""
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str, cls: str = "") -> None:
        """Add a paragraph of escaped text; ``cls`` is a CSS class (``note``, ``good``, ``bad``)."""
        self.parts.append(f'<p class="{cls}">{html.escape(text)}</p>')

    def raw(self, fragment: str) -> None:
        """Add an HTML fragment as is (not escaped: only for HTML built by lens_bias)."""
        self.parts.append(fragment)

    def table(self, rows: Sequence[Sequence], header: Sequence[str]) -> None:
        """Add a table (see :func:`table`)."""
        self.parts.append(table(rows, header))

    def figure(self, fig: go.Figure) -> None:
        """Add a plotly figure, inline and interactive (plotly.js itself is embedded once by :meth:`html`)."""
        self.n_figures += 1
        self.parts.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig{self.n_figures}",
                                      config={"displaylogo": False, "responsive": True}))

    def html(self) -> str:
        """The whole page: one self-contained HTML string (write it with ``Path.write_text``)."""
        return (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
            f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self.parts) + "</body></html>"
        )
