"""Command lines for the long jobs: ``--help`` works and each runs end to end on a tiny config."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# test_tiny backbone with random weights, a 4-image synthetic set at 64 px, 28 px training crops
TINY = ["backbone__name=test_tiny", "backbone__weights=random", "data__synthetic_num_images=5",
        "data__synthetic_image_size=64", "upsampler__train_num_images=4",
        "upsampler__train_image_size=28", "upsampler__train_batch_size=2"]


def _sets(items):
    return [x for item in items for x in ("--set", item)]


@pytest.mark.parametrize("module,options", [
    ("probe_lib.upsampler_training", ["--method", "--preset", "--set", "--steps", "--overwrite"]),
    ("probe_lib.evaluate", ["checkpoint", "--datasets", "--protocol", "--set", "--out"]),
])
def test_help_lists_the_options(module, options):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", module, "--help"], check=False, capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"python -m {module}" in r.stdout
    for opt in options:
        assert opt in r.stdout, opt


def test_upsampler_training_cli_trains_and_the_checkpoint_loads(tmp_path, capsys):
    from probe_lib.backbones import create_backbone
    from probe_lib.upsampler_training.__main__ import main
    from probe_lib.upsamplers import create_upsampler

    out = tmp_path / "lift-tiny.pt"
    assert main(["--method", "lift", "--steps", "2", "--out", str(out), "--no-progress",
                 *_sets(TINY)]) == 0
    [res] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["stage"] == "lift" and res["metrics"]["steps"] == 2 and out.is_file()
    bb = create_backbone("test_tiny", weights="random", verbose=False)
    up = create_upsampler("lift", dim=bb.embed_dim, weights=out)
    assert "trained" in up.weights_id


def test_upsampler_training_cli_rejects_bad_input(tmp_path, capsys):
    from probe_lib.upsampler_training.__main__ import main

    with pytest.raises(SystemExit):
        main(["--method", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--method", "lift", "--set", "upsampler__no_such_key=1"])
    assert "no_such_key" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--method", "lift", "--set", "missing_equals"])
    assert "KEY=VALUE" in capsys.readouterr().err


def test_evaluate_cli_writes_results_like_notebook_10(tmp_path, capsys):
    from probe_lib.config import make_config
    from probe_lib.evaluate import load_ious, main
    from probe_lib.train import train_probe

    cfg = make_config("small", **{k: json.loads(v) if v[0].isdigit() else v
                                  for k, v in (s.split("=") for s in TINY)},
                      upsampler__name="bilinear", image_size=28, head="lean_conv",
                      epochs=1, num_images=4, batch_size=2, val_samples=0, num_workers=0)
    ckpt = tmp_path / "probe.pt"
    train_probe(cfg, ckpt, progress=False)
    out = tmp_path / "results"
    assert main([str(ckpt), "--datasets", "synthetic", "--num-instances", "2", "--max-clicks",
                 "3", "--set", "eval__bootstrap=10", "--set", "flip=false",
                 "--out", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert doc["metrics"]["synthetic"]["num_instances"] == 2
    saved = json.loads((out / "synthetic_metrics.json").read_text())
    assert saved["config"]["eval"]["max_clicks"] == 3 and saved["config"]["eval"]["flip"] is False
    assert load_ious(out / "synthetic_ious.npz").shape == (2, 3)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "missing.pt")])
    assert "missing.pt does not exist" in capsys.readouterr().err
