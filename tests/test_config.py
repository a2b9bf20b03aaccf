"""Config presets, overrides and the environment.yml / pyproject.toml agreement."""

import dataclasses
import re
from pathlib import Path

import pytest
import tomllib

from probe_lib.config import Config, make_config, presets
from probe_lib.utils import cache_dir, checkpoint_path, data_root

REPO = Path(__file__).resolve().parents[1]


def test_presets_differ_where_spec_says():
    small, full = make_config("small"), make_config("full")
    assert presets() == ["full", "medium", "small"]
    medium = make_config("medium")
    assert medium.upsampler.train_steps == 20_000 and full.upsampler.train_steps == 125_000
    assert medium.upsampler.train_batch_size == full.upsampler.train_batch_size == 8
    assert (small.probe.image_size, small.probe.head) == (112, "lean_conv")
    assert (full.probe.image_size, full.probe.head) == (224, "convhead")
    assert full.train.lr == 5e-5 and full.train.epochs == 20 and full.train.batch_size == 8
    assert full.eval.flip and not small.eval.flip
    assert full.eval.prob_thresh == 0.5 and full.eval.max_clicks == 20


def test_config_is_frozen():
    cfg = make_config("small")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.probe.head = "linear"


def test_overrides_bare_and_sectioned():
    cfg = make_config("small", head="convhead", train__epochs=5, eval__datasets=["GrabCut"])
    assert cfg.probe.head == "convhead" and cfg.train.epochs == 5
    assert cfg.eval.datasets == ("GrabCut",)  # lists from papermill/JSON become tuples


@pytest.mark.parametrize("kwargs, needle", [
    ({"nonsense": 1}, "unknown config key 'nonsense'"),
    ({"probe__nonsense": 1}, "unknown config key 'nonsense' in section 'probe'"),
    ({"nosection__head": 1}, "unknown config section 'nosection'"),
])
def test_unknown_keys_are_named(kwargs, needle):
    with pytest.raises(ValueError, match=re.escape(needle)) as e:
        make_config("small", **kwargs)
    assert "valid" in str(e.value)


def test_unknown_preset_lists_valid():
    with pytest.raises(ValueError, match="unknown preset .huge.*full, medium, small"):
        make_config("huge")


def test_round_trip_through_dict():
    cfg = make_config("small", injection="late_highres")
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_env_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("PROBE_LIB_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("PROBE_LIB_CACHE", str(tmp_path / "c"))
    assert data_root() == tmp_path / "d" and cache_dir() == tmp_path / "c"
    assert checkpoint_path("upsampler", "loftup", "small") == \
        tmp_path / "c" / "checkpoints" / "upsampler" / "loftup-small.pt"


def _names(reqs):
    return {re.split(r"[<>=!\[ ;]", r.strip(), maxsplit=1)[0].lower() for r in reqs}


def test_environment_yml_matches_pyproject():
    yaml = pytest.importorskip("yaml")
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section, "environment.yml must install the package itself"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _names(project["dependencies"] + project["optional-dependencies"]["dev"])
    listed = _names([p for p in pip_section if not p.startswith("-e")])
    assert listed == wanted, f"only in pyproject: {wanted - listed}; only in env: {listed - wanted}"


def test_full_reproduces_isegprobe_settings_small_keeps_project_choices():
    full, small = make_config("full"), make_config("small")
    assert full.upsampler.weights == "pretrained" and small.upsampler.weights == "trained"
    assert full.upsampler.featup_channelnorm is False and small.upsampler.featup_channelnorm
    assert full.upsampler.frozen_bn_mode == "reference" and small.upsampler.frozen_bn_mode == "eval"
    assert full.train.require_sample_weights and not small.train.require_sample_weights
    assert full.train.small_object_pixels == "not_background"
    assert small.train.small_object_pixels == "background"
    assert full.train.checkpoint_schedule == "isegprobe"
    assert small.train.checkpoint_schedule == "last_only"
    assert full.eval.checkpoint == "last" == small.eval.checkpoint
    # an explicit choice still wins at full
    assert make_config("full", upsampler__weights="trained").upsampler.weights == "trained"
