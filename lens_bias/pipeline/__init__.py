"""The main job, ``lens-bias run``: its configuration and stages (stages) and its record,
metrics.json and the report's sections (record)."""

from .._moved import forward

__getattr__ = forward(__name__)  # 0.1's lens_bias.pipeline names, with a warning
