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


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_at_small(path, tmp_path_factory):
    papermill = pytest.importorskip("papermill")
    out_dir = tmp_path_factory.mktemp("executed")
    os.environ.setdefault("PROBE_LIB_RESULTS", str(out_dir.parent / "results"))
    papermill.execute_notebook(
        str(path), str(out_dir / path.name), parameters={"PRESET": "small"},
        cwd=str(REPO / "notebooks"), kernel_name="python3", progress_bar=False,
        log_output=False)
