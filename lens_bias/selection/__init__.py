"""Choosing the units to prune: top-k under a budget and iterative rounds (topk), stability
selection (stability), learned masks (learned), the selectors by name (registry) and a mask from
a scores file (from_scores)."""

from .._moved import forward

__getattr__ = forward(__name__)  # 0.1's lens_bias.selection names, with a warning
