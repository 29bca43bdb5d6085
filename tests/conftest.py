"""Shared fixtures. jaxtyping shapes in lens_bias are checked at run time (beartype) in every test."""

import os

from jaxtyping import install_import_hook

os.environ.setdefault("TQDM_DISABLE", "1")

with install_import_hook("lens_bias", "beartype.beartype"):
    # every module is imported under the hook so that its annotations are checked at run time
    import lens_bias  # noqa: F401
    import lens_bias.ablation  # noqa: F401
    import lens_bias.attribution  # noqa: F401
    import lens_bias.capture  # noqa: F401
    import lens_bias.experiments  # noqa: F401
    import lens_bias.masks  # noqa: F401
    import lens_bias.materialize  # noqa: F401
    import lens_bias.pipeline  # noqa: F401
    import lens_bias.viz  # noqa: F401

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
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
