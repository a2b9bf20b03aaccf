"""Where data and results live (one place wherever a kernel starts) and the run-folder rule that
lets notebooks 09 -> 10 -> 11 run by hand."""

import json
from pathlib import Path

import numpy as np
import pytest

from probe_lib import utils
from probe_lib.config import make_config
from probe_lib.evaluate import EvalResult, save_result
from probe_lib.results import collect_rows
from probe_lib.sweep import GRIDS, Run
from probe_lib.utils import data_root, results_root, run_dir, run_glob, run_name, source_root

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("PROBE_LIB_DATA", raising=False)
    monkeypatch.delenv("PROBE_LIB_RESULTS", raising=False)


@pytest.mark.parametrize("cwd", ["notebooks", ".", "tmp"])
def test_roots_are_the_checkout_whatever_the_cwd(cwd, no_env, monkeypatch, tmp_path):
    # a JupyterLab kernel opened on notebooks/ must not get a second data set or results folder
    monkeypatch.chdir(tmp_path if cwd == "tmp" else REPO / cwd)
    assert source_root() == REPO
    assert data_root() == REPO / "data"
    assert results_root() == REPO / "results"


def test_environment_variables_win(monkeypatch, tmp_path):
    monkeypatch.setenv("PROBE_LIB_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("PROBE_LIB_RESULTS", str(tmp_path / "r"))
    monkeypatch.chdir(REPO / "notebooks")
    assert data_root() == tmp_path / "d" and results_root() == tmp_path / "r"
    monkeypatch.setenv("PROBE_LIB_DATA", "  ")  # blank counts as unset
    assert data_root() == REPO / "data"


def test_installed_copy_falls_back_to_cwd(no_env, monkeypatch, tmp_path):
    monkeypatch.setattr(utils, "source_root", lambda start=None: None)
    monkeypatch.chdir(tmp_path)
    assert data_root() == tmp_path / "data" and results_root() == tmp_path / "results"


def test_source_root_reads_the_project_name(tmp_path):
    pkg = tmp_path / "checkout" / "probe_lib"
    pkg.mkdir(parents=True)
    (pkg / "utils.py").write_text("")
    pp = tmp_path / "checkout" / "pyproject.toml"
    pp.write_text('[build-system]\nrequires = []\n\n[project]\nname = "probe_lib"\n'
                  'version = "0"\n\n[project.optional-dependencies]\ndev = []\n')
    assert source_root(pkg / "utils.py") == tmp_path / "checkout"
    # another project's pyproject (the package vendored inside it) is not our checkout
    pp.write_text('[project]\nname = "someone_else"\n\n[tool.x]\nname = "probe_lib"\n')
    assert source_root(pkg / "utils.py") is None
    pp.write_text('[project]\nname = "probe_lib_extra"\n')
    assert source_root(pkg / "utils.py") is None


def _fake_result(n=4, k=3):
    ious = np.sort(np.random.default_rng(0).uniform(0.3, 1, (n, k)), axis=1).astype(np.float32)
    return EvalResult(dataset="synthetic", protocol="plain", ious=ious,
                      names=[f"i{j}" for j in range(n)], clicks=[[(0, 0, True)] * k] * n,
                      seconds_per_click=0.01, num_encodes=n, num_clicks=n * k)


def test_hand_run_of_notebook_10_is_collected_by_notebook_11(monkeypatch, tmp_path):
    monkeypatch.setenv("PROBE_LIB_RESULTS", str(tmp_path))
    # notebook 10 with its default parameters writes to run_dir(...) (checked in its source)...
    src10 = _code(REPO / "notebooks" / "10_noc_evaluation.ipynb")
    assert "run_dir(PRESET, UPSAMPLER, CLICK_ENCODER, INJECTION)" in src10
    out = run_dir("small", "bilinear", "patch_embed", "early")
    assert out == tmp_path / "small-bilinear-patch_embed-early"
    cfg = make_config("small", upsampler__name="bilinear", click_encoder="patch_embed",
                      injection="early")
    save_result(_fake_result(), out, cfg=cfg, n_boot=10,
                meta={"backbone_weights": "x", "upsampler_weights": "none"})
    # ... and notebook 11 collects run_glob(PRESET) under results_root()
    src11 = _code(REPO / "notebooks" / "11_results.ipynb")
    assert "run_glob(PRESET)" in src11
    rows = collect_rows(results_root(), run_glob("small"))
    assert [r["run"] for r in rows] == ["small-bilinear-patch_embed-early"]
    assert collect_rows(results_root(), run_glob("full")) == []


def test_sweep_uses_the_same_run_names():
    for preset, runs in GRIDS.items():
        for r in runs:
            assert r.name(preset) == run_name(preset, r.upsampler, r.click_encoder, r.injection)
    assert Run("loftup", "simple_vit", "late_lowres").name("full") == \
        "full-loftup-simple_vit-late_lowres"


@pytest.mark.parametrize("bad", ["", "a-b", "x/y", "*"])
def test_run_name_rejects_names_that_break_the_glob(bad):
    with pytest.raises(ValueError, match="upsampler"):
        run_name("small", bad, "patch_embed", "early")


def _code(path: Path) -> str:
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                     if c["cell_type"] == "code")
