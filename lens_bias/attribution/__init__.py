"""Scoring units: attribution patching (patching), the baseline scorers (scorers: actdiff, wanda,
random), validation against exact ablation (validation) and what a scores file was computed on
(provenance)."""

from .._moved import forward

__getattr__ = forward(__name__)  # 0.1's lens_bias.attribution names, with a warning
