"""Choosing the units to prune: the selectors by name (registry), top-k under a budget and
iterative rounds (topk), stability selection (stability), learned masks (learned), the choice
among them by cross-validation (auto), and a mask from a scores file (from_scores).

Importing this package registers the built-in selectors (each module registers its own).
"""

from .._moved import forward
from . import auto, learned, stability, topk  # noqa: F401  (registers oneshot, iterative, stable, learned, auto)

__getattr__ = forward(__name__)  # 0.1's lens_bias.selection names, with a warning
