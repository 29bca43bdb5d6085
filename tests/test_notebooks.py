"""The tutorial notebooks run top to bottom, are committed without outputs, and the docs site
builds with ``mkdocs build --strict`` (which also checks every link, notebook links included).

Notebooks run on their fast path (``LENS_BIAS_FAST=1``: the tiny random model, tiny sizes) in a
kernel started from this interpreter, with a temporary working folder, so nothing is written
into the checkout.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 900


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 4, [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells)
             if c.cell_type == "code" and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} have outputs or execution counts; "
                       "clear them before committing "
                       "(Jupyter: Edit > Clear Outputs of All Cells, then save)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat",
                                   reason="pip install -e '.[dev]' (nbformat, nbclient, ipykernel)")
    nbclient = pytest.importorskip("nbclient",
                                   reason="pip install -e '.[dev]' (nbformat, nbclient, ipykernel)")
    pytest.importorskip("ipykernel", reason="pip install -e '.[dev]' (nbformat, nbclient, ipykernel)")
    monkeypatch.setenv("LENS_BIAS_FAST", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    # the kernel must import this checkout's lens_bias, whatever the working folder
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    nb = nbformat.read(path, as_version=4)
    # the "python3" kernel is started with this interpreter (jupyter_client substitutes sys.executable)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    ran = [c for c in nb.cells if c.cell_type == "code"]
    assert ran and all(c.get("execution_count") for c in ran)


def test_kernel_is_this_interpreter(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = nb.cells[0].outputs[0]["text"].strip()
    assert Path(printed).resolve() == Path(sys.executable).resolve()


def test_docs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None:
        pytest.skip("mkdocs / mkdocstrings are not installed: pip install -e '.[dev]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    site = tmp_path / "site"
    for page in ("index.html", "concepts/index.html", "cli/index.html", "formats/index.html",
                 "api/index.html", "tutorials/index.html", "gpu_and_hub/index.html"):
        assert (site / page).is_file(), page
    for nb in NOTEBOOKS:
        assert (site / "notebooks" / nb.name).is_file(), nb.name
    cli = (site / "cli" / "index.html").read_text()
    assert "<!-- cli:" not in cli and "--max-cost-quantile" in cli  # every marker became an options table
