"""Notebook contract (nothing executed) and execution of every notebook at its `small` defaults.

Notebooks run in numbered order in one test session, sharing ``PROBE_LIB_CACHE``, so that the
checkpoints an earlier notebook trains are the ones a later notebook loads (as in the README's
main job).
"""

import json
import os
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
NAME_RE = re.compile(r"^\d{2}_[a-z0-9_]+\.ipynb$")


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _src(cell):
    return "".join(cell.get("source", ""))


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_contract(path):
    assert NAME_RE.match(path.name), f"{path.name}: expected NN_snake_case.ipynb"
    cells = _cells(path)
    assert cells[0]["cell_type"] == "markdown" and _src(cells[0]).lstrip().startswith("#"), \
        f"{path.name}: first cell should be a markdown title with purpose and run times"
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: needs exactly one cell tagged 'parameters'"
    params = _src(tagged[0])
    assert params.lstrip().startswith('PRESET = "small"'), \
        f"{path.name}: parameters cell must start with PRESET = \"small\""
    for line in params.splitlines():  # literals only, so papermill can override them
        line = line.split("#", 1)[0].strip()
        if line:
            assert re.match(r"^[A-Z_][A-Z0-9_]* = ", line), f"{path.name}: non-literal {line!r}"
    first_code = next(i for i, c in enumerate(cells) if c["cell_type"] == "code")
    assert cells.index(tagged[0]) <= first_code + 1, \
        f"{path.name}: the parameters cell should come right after the imports"
    for c in cells:
        if c["cell_type"] != "code":
            continue
        assert not c.get("outputs") and not c.get("execution_count"), \
            f"{path.name}: commit notebooks with outputs stripped"
        src = _src(c)
        for bad in ("sys.path", "pip install", ".cuda()", "/work/", "/home/", "/root/"):
            assert bad not in src, f"{path.name}: contains {bad!r}"
    readme = (REPO / "README.md").read_text()
    assert path.name in readme or path.stem in readme, f"README does not list {path.name}"


def count_png_outputs(nb: dict) -> int:
    """Number of image/png outputs (inline figures) in a notebook's code cells."""
    return sum("image/png" in out.get("data", {})
               for c in nb["cells"] if c["cell_type"] == "code" for out in c.get("outputs", []))


def test_count_png_outputs():
    png = {"output_type": "display_data", "data": {"image/png": "iVBOR", "text/plain": "<Fig>"}}
    text = {"output_type": "stream", "name": "stdout", "text": "<Figure size 640x480>"}
    nb = {"cells": [{"cell_type": "code", "outputs": [png, text]},
                    {"cell_type": "markdown", "source": "x"},
                    {"cell_type": "code", "outputs": [text]}]}
    assert count_png_outputs(nb) == 1
    assert count_png_outputs({"cells": [{"cell_type": "code", "outputs": [text]}]}) == 0


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_at_small(path, tmp_path_factory, monkeypatch):
    papermill = pytest.importorskip("papermill")
    from probe_lib.sweep import KERNEL_MPLBACKEND

    out_dir = tmp_path_factory.mktemp("executed")
    os.environ.setdefault("PROBE_LIB_RESULTS", str(out_dir.parent / "results"))
    # the kernel inherits this process's MPLBACKEND (Agg, see conftest): draw inline instead, so
    # the executed notebook keeps its figures
    monkeypatch.setenv("MPLBACKEND", KERNEL_MPLBACKEND)
    out = out_dir / path.name
    papermill.execute_notebook(
        str(path), str(out), parameters={"PRESET": "small"},
        cwd=str(REPO / "notebooks"), kernel_name="python3", progress_bar=False,
        log_output=False)
    # every plt.show() should have become an image in the executed copy (the rendered copies
    # under docs/notebooks/ and a results/ folder after a GPU run rely on it)
    shows = sum(_src(c).count("plt.show()") for c in _cells(path) if c["cell_type"] == "code")
    if shows:
        n_png = count_png_outputs(json.loads(out.read_text()))
        assert n_png >= 1, f"{path.name}: {shows} plt.show() calls but no image/png output"
