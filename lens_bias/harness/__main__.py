"""``python -m lens_bias.harness``: print the folder of the task configs (for ``--include_path``)."""

from . import TASKS_DIR

print(TASKS_DIR)
