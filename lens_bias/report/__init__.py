"""Plotly figures (figures) and the HTML report (html)."""

from .._moved import forward

__getattr__ = forward(__name__)  # 0.1's lens_bias.report names, with a warning
