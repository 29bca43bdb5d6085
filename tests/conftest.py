"""Shared fixtures. jaxtyping shapes in lens_bias are checked at run time (beartype) in every test."""

import os

from jaxtyping import install_import_hook

os.environ.setdefault("TQDM_DISABLE", "1")

with install_import_hook("lens_bias", "beartype.beartype"):
    # every module is imported under the hook so that its annotations are checked at run time
    # (doctests of lens_bias/ run in the same session and so are checked too)
    import importlib
    import pkgutil

    import lens_bias

    for _mod in pkgutil.walk_packages(lens_bias.__path__, "lens_bias."):
        importlib.import_module(_mod.name)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def small_run_config(**kw):
    """A RunConfig for a run of seconds on tiny-random (keywords override)."""
    from lens_bias.pipeline.stages import RunConfig

    base = dict(model="tiny-random", per_domain=3, held_per_domain=3, budget="2%", budgets=["1%", "2%"],
                curve_kinds=["neurons"], validate_k=5, validate_random=3, validate_per_domain=1,
                ppl_tokens=512, progress=False, curve_random=True, device="cpu")
    base.update(kw)
    return RunConfig(**base)


CROWS = SHARED / "crows_pairs_anonymized.csv"


@pytest.fixture(scope="session")
def tiny():
    from lens_bias import load_model

    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="session")
def smol():
    from lens_bias import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def gemma():
    from lens_bias import load_model

    return load_model("gemma3-270m", device="cpu")


def _environment_lines() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def v(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "missing"

    pkgs = ", ".join(f"{n} {v(n)}"
                     for n in ("torch", "transformers", "transformer-lens", "numpy", "safetensors"))
    cpu = torch.backends.cpu.get_cpu_capability()
    return [f"lens_bias deps: {pkgs}",
            f"cpu: {cpu}, {torch.get_num_threads()} threads, {os.cpu_count()} cores"]


def pytest_report_header(config):
    return _environment_lines()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The versions and CPU a run used, also under -q, so that a failure report names them (the lock
    pins them; `make test-latest` runs newer ones; float rounding depends on the CPU's vector width)."""
    if config.get_verbosity() < 0:
        for line in _environment_lines():
            terminalreporter.write_line(line)
