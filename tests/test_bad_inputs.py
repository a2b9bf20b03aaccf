"""Bad inputs that used to give a silently wrong result or an unrelated traceback.

Every test is marked ``@pytest.mark.reliability("<input>")`` and asserts the message; the table
in docs/reliability.md is generated from them (tools/reliability_table.py).
"""

import dataclasses
import io
import json
import re
import tarfile

import cv2
import numpy as np
import pytest
import torch

from probe_lib.clicks import click_maps, clicks_to_tensor, next_click
from probe_lib.config import _RANGES, Config, make_config
from probe_lib.evaluate import Predictor, evaluate_dataset, evaluate_instance
from probe_lib.metrics import iou, noc, summarize

rel = pytest.mark.reliability


# ------------------------------------------------------------------ config values
def _cfg_case(key, value, expected):
    return pytest.param(key, value, expected,
                        marks=rel(f"make_config(..., {key.replace('.', '__')}={value!r})"),
                        id=f"{key}={value!r}")


@pytest.mark.parametrize("key, value, expected", [
    _cfg_case("eval.prob_thresh", 85, "a number in (0, 1)"),
    _cfg_case("eval.prob_thresh", 1.0, "a number in (0, 1)"),
    _cfg_case("train.epochs", 0, "an integer >= 1"),
    _cfg_case("train.epochs", -2, "an integer >= 1"),
    _cfg_case("train.epochs", 2.5, "has the wrong type: expected an integer >= 1"),
    _cfg_case("train.lr", 0.0, "a number > 0"),
    _cfg_case("train.lr", float("nan"), "a number > 0"),
    _cfg_case("train.lr_gamma", -0.1, "a number in (0, 1]"),
    _cfg_case("train.batch_size", 0, "an integer >= 1"),
    _cfg_case("train.val_samples", -1, "an integer >= 0"),
    _cfg_case("train.num_max_points", 0, "an integer >= 1"),
    _cfg_case("train.num_images", 0, "an integer >= 1 or None"),
    _cfg_case("eval.max_clicks", 0, "an integer >= 1"),
    _cfg_case("eval.num_instances", 0, "an integer >= 1 or None"),
    _cfg_case("eval.bootstrap", 0, "an integer >= 1"),
    _cfg_case("probe.click_radius", 0, "a number > 0"),
    _cfg_case("upsampler.train_steps", 0, "an integer >= 1"),
    _cfg_case("upsampler.train_batch_size", 0, "an integer >= 1"),
    _cfg_case("upsampler.train_lr", -1e-4, "a number > 0 or None"),
    _cfg_case("upsampler.loftup_train_out_scale", 2.0, "a number in (0, 1]"),
    _cfg_case("data.synthetic_num_images", 0, "an integer >= 1"),
])
def test_config_value_out_of_range(key, value, expected):
    with pytest.raises(ValueError, match=re.escape(f"config value {key}={value!r}")) as e:
        make_config("small", **{key.replace(".", "__"): value})
    assert expected in str(e.value)


@rel("make_config(..., lr_milestones=[3, 2])")
def test_config_milestones_must_increase():
    with pytest.raises(ValueError, match=r"train\.lr_milestones=\(3, 2\) is invalid"):
        make_config("small", lr_milestones=[3, 2])


def test_every_numeric_config_field_has_a_range():
    numeric = []
    for sec in ("backbone", "upsampler", "probe", "train", "eval", "data"):
        cls = {f.name: f for f in dataclasses.fields(Config)}[sec].default_factory
        for f in dataclasses.fields(cls):
            if any(t in str(f.type) for t in ("int", "float")) and "tuple" not in str(f.type):
                numeric.append(f"{sec}.{f.name}")
    assert sorted(numeric) == sorted(_RANGES)
    make_config("small")  # both presets lie inside the ranges
    make_config("full")


@rel("python -m probe_lib.train --set eval__prob_thresh=85")
def test_train_cli_rejects_bad_value(capsys, reliability_message):
    from probe_lib.train import main

    with pytest.raises(SystemExit) as e:
        main(["--set", "eval__prob_thresh=85"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "config value eval.prob_thresh=85 is out of range: expected a number in (0, 1)" in err
    reliability_message("usage error", err.strip().splitlines()[-1])


# ------------------------------------------------------------------ mask / metric encodings
def _gt255():
    gt = np.zeros((20, 20), np.uint8)
    gt[5:15, 5:15] = 255
    return gt


@rel("next_click with a 0/255 ground-truth mask")
def test_clicker_rejects_0_255_mask():
    with pytest.raises(ValueError, match=r"also holds \[255\]\. A 0/255 mask\?"):
        next_click(_gt255(), np.zeros((20, 20), bool))


@rel("iou with a 0/255 ground-truth mask")
def test_iou_rejects_0_255_mask():
    with pytest.raises(ValueError, match=r"gt must hold 1 = object.*0/255 mask"):
        iou(_gt255(), _gt255() > 0)


class _Data:
    name = "masks255"

    def instances(self):
        return [(0, 1)]

    def get_instance(self, k):
        return np.zeros((20, 20, 3), np.uint8), _gt255(), "inst0"


def _disk_model(image, prev_mask, points):
    return torch.zeros(image.shape[0], 1, *image.shape[-2:])


@rel("evaluate_dataset on a dataset whose masks are 0/255")
def test_evaluator_rejects_0_255_masks():
    # before: every instance was skipped as "empty" and the error blamed an empty dataset
    with pytest.raises(ValueError, match=r"dataset 'masks255' instance 0 \(inst0\): gt must hold"):
        evaluate_dataset(_disk_model, _Data(), max_clicks=2, progress=False)


@rel("evaluate_instance with a float image in [0, 1] instead of uint8")
def test_evaluator_rejects_float_image():
    gt = (_gt255() > 0).astype(np.int8)
    with pytest.raises(ValueError, match=r"image must be uint8 \(H, W, 3\) RGB in 0\.\.255"):
        evaluate_instance(Predictor(_disk_model), np.zeros((20, 20, 3), np.float32), gt,
                          max_clicks=2)


@rel("evaluate_dataset(num_instances=0)")
def test_evaluator_rejects_zero_instances():
    with pytest.raises(ValueError, match=r"num_instances must be an int >= 1 or None"):
        evaluate_dataset(_disk_model, _Data(), num_instances=0, progress=False)


@rel("evaluate_instance(prob_thresh=50)")
def test_evaluator_rejects_percent_threshold():
    gt = (_gt255() > 0).astype(np.int8)
    with pytest.raises(ValueError, match=r"prob_thresh must be a probability in \(0, 1\)"):
        evaluate_instance(Predictor(_disk_model), np.zeros((20, 20, 3), np.uint8), gt,
                          prob_thresh=50, max_clicks=2)


@rel("noc / summarize with IoUs in percent (e.g. 85.0)")
def test_noc_rejects_percent_ious():
    ious = np.array([[40.0, 85.0, 92.0], [10.0, 50.0, 96.0]])
    with pytest.raises(ValueError, match=r"fractions in \[0, 1\].*IoUs in percent\?"):
        noc(ious, 0.85, max_clicks=3)  # before: NoC = 1.0
    with pytest.raises(ValueError, match=r"IoUs in percent\?"):
        summarize(ious, max_clicks=3, n_boot=10)


@rel("noc with NaN IoUs")
def test_noc_rejects_nan_ious():
    ious = np.array([[0.5, 0.9, 0.95], [np.nan, np.nan, np.nan]])
    with pytest.raises(ValueError, match=r"NaN for 1 instance\(s\) \(rows \[1\]\)"):
        noc(ious, 0.85, max_clicks=3)  # before: counted as a failure (NoC 3)


# ------------------------------------------------------------------ NaN inputs
@pytest.fixture(scope="module")
def tiny_probe():
    from probe_lib.backbones import create_backbone
    from probe_lib.model import build_probe

    torch.manual_seed(0)
    cfg = make_config("small", backbone__name="test_tiny", backbone__weights="random",
                      upsampler__weights="random", upsampler__name="bilinear", head="lean_conv",
                      image_size=56, upsampler_precision="fp32")
    bb = create_backbone("test_tiny", weights="random", verbose=False)
    return build_probe(cfg, backbone=bb).eval()


def _probe_inputs():
    image = torch.rand(1, 3, 56, 56)
    prev = torch.zeros(1, 1, 56, 56)
    pts = clicks_to_tensor([(10, 12, True), (40, 30, False)])
    return image, prev, pts


@rel("probe forward with a NaN in the image")
def test_probe_nan_image_is_blamed_on_the_image(tiny_probe):
    image, prev, pts = _probe_inputs()
    image[0, 1, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"image contains 1 NaN or Inf value\(s\).*input image"):
        tiny_probe(image, prev, pts)


@rel("backbone forward with a NaN image")
def test_backbone_nan_image(tiny_probe):
    image = torch.rand(1, 3, 56, 56)
    image[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"images contains 1 NaN or Inf value\(s\)"):
        tiny_probe.backbone(image)


@rel("probe forward with a NaN click coordinate")
def test_probe_nan_click(tiny_probe):
    image, prev, pts = _probe_inputs()
    pts[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"points \(the click tensor\) contains NaN or Inf: row "
                                         r"points\[0, 0\]"):
        tiny_probe(image, prev, pts)


@rel("probe forward with a NaN previous mask")
def test_probe_nan_prev_mask(tiny_probe):
    image, prev, pts = _probe_inputs()
    prev[0, 0, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"prev_mask .* contains NaN or Inf"):
        tiny_probe(image, prev, pts)


@rel("click_maps with a NaN click row")
def test_click_maps_nan():
    pts = torch.tensor([[[float("nan"), 3.0, 0.0], [-1.0, -1.0, -1.0]]])
    with pytest.raises(ValueError, match=r"contains NaN or Inf"):
        click_maps(pts, (8, 8))  # before: drawn as padding, silently


@rel("clicks_to_tensor with a NaN coordinate")
def test_clicks_to_tensor_nan():
    with pytest.raises(ValueError, match=r"click 1 has a non-finite coordinate"):
        clicks_to_tensor([(3, 4, True), (float("nan"), 2, False)])


# ------------------------------------------------------------------ clicks outside the input
@rel("probe forward with a click outside the input")
def test_probe_click_outside_input(tiny_probe):
    image, prev, _ = _probe_inputs()
    pts = clicks_to_tensor([(10, 12, True), (80, 30, False)])
    with pytest.raises(ValueError, match=r"click \(row=80, col=30\) at points\[0, 1\] lies "
                                         r"outside the 56x56 input"):
        tiny_probe(image, prev, pts)
    pts = clicks_to_tensor([(-3, 12, True)])  # one negative coordinate is not padding
    with pytest.raises(ValueError, match=r"click \(row=-3, col=12\)"):
        tiny_probe(image, prev, pts)


def test_forward_cached_keeps_accepting_clicks_outside_the_zoom(tiny_probe):
    # the ZoomIn evaluator passes the clicks outside its region (as the reference does)
    image, prev, _ = _probe_inputs()
    pts = clicks_to_tensor([(10, 12, True), (80, 30, False)])
    with torch.no_grad():
        out = tiny_probe.forward_cached(tiny_probe.encode_image(image), prev, pts)
    assert out.shape == (1, 1, 56, 56)


# ------------------------------------------------------------------ truncated images
def _jpeg_bytes(h=48, w=64):
    img = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img)
    assert ok
    return buf.tobytes()


@rel("IS dataset image: a truncated JPEG")
def test_truncated_jpeg_in_is_dataset_is_named(tmp_path):
    from probe_lib.data.is_datasets import get_dataset

    root = tmp_path / "DAVIS"
    (root / "img").mkdir(parents=True)
    (root / "gt").mkdir()
    data = _jpeg_bytes()
    (root / "img" / "cut.jpg").write_bytes(data[: len(data) // 2])
    gt = np.zeros((48, 64), np.uint8)
    gt[10:30, 10:30] = 255
    cv2.imwrite(str(root / "gt" / "cut.png"), gt)
    # OpenCV alone decodes this file "fine", with a grey bottom half
    assert cv2.imread(str(root / "img" / "cut.jpg")) is not None
    with pytest.raises(ValueError, match=r"image file .*cut\.jpg is truncated"):
        get_dataset("DAVIS", root=root).get_sample(0)


@rel("SA-1B image: a truncated JPEG")
def test_truncated_jpeg_in_sa1b_is_skipped_and_counted(tmp_path):
    from test_data_sa1b import _write_sa1b

    from probe_lib.data.sa1b import SA1BDataset

    d = tmp_path / "sa1b"
    for stem in ("sa_1", "sa_2"):
        _write_sa1b(d, stem, n_masks=1)
    data = (d / "sa_1.jpg").read_bytes()
    (d / "sa_1.jpg").write_bytes(data[: len(data) * 2 // 3])
    ds = SA1BDataset(tmp_path, 64)
    with pytest.warns(UserWarning, match=r"dropped 1 corrupt item"):
        assert ds.scan() == 1
    assert "truncated JPEG" in ds.skipped["sa_1.jpg"]
    assert [p.name for p in ds.paths] == ["sa_2.jpg"]


def test_complete_jpegs_are_not_flagged():
    from probe_lib.data.is_datasets import jpeg_truncated

    data = _jpeg_bytes()
    assert not jpeg_truncated(data) and jpeg_truncated(data[:-2])
    assert not jpeg_truncated(b"\x89PNG\r\n\x1a\n")  # other formats: left to the decoder


# ------------------------------------------------------------------ CLIs and files
@rel("python -m probe_lib.sweep --only bilinear bilinaer (a typo among valid names)")
def test_sweep_only_unknown_name(capsys, reliability_message):
    from probe_lib.sweep import main, sweep

    with pytest.raises(ValueError, match=r"--only bilinaer: no such run or upsampler in the small "
                                         r"grid; valid names: small-bilinear-patch_embed-early"):
        sweep("small", only=["bilinear", "bilinaer"], aggregate=False)
    with pytest.raises(SystemExit) as e:
        main(["--only", "bilinear", "bilinaer"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no such run or upsampler" in err
    reliability_message("usage error", err.strip().splitlines()[-1])


@rel("python -m probe_lib.sweep --eval-instances 0")
def test_sweep_eval_instances_zero(capsys, reliability_message):
    from probe_lib.sweep import main

    with pytest.raises(SystemExit) as e:
        main(["--eval-instances", "0"])  # before: 0 meant "every instance"
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--eval-instances must be >= 1 (leave it out to evaluate every instance)" in err
    reliability_message("usage error", err.strip().splitlines()[-1])


@rel("dataset manifest that is not valid JSON")
def test_corrupt_manifest_named(tmp_path):
    from probe_lib.data.download import load_manifest

    bad = tmp_path / "manifest.json"
    bad.write_text('{"GrabCut": {"files": [')
    with pytest.raises(ValueError, match=r"dataset manifest .*manifest\.json is not valid JSON"):
        load_manifest(bad)


@rel("synthetic-set manifest.json that is not valid JSON")
def test_corrupt_synthetic_manifest_named(tmp_path):
    from probe_lib.data.synthetic import ensure_synthetic

    root = tmp_path / "synthetic"
    root.mkdir()
    (root / "manifest.json").write_text("{trunc")
    with pytest.raises(ValueError, match=r"synthetic-set manifest .*manifest\.json is corrupt"):
        ensure_synthetic(root, num_images=4, size=64)


def _truncated_tgz(path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        payload = np.random.default_rng(0).bytes(200_000)  # incompressible
        info = tarfile.TarInfo("data/a.bin")
        info.size = len(payload)
        tf.addfile(info, io.BytesIO(payload))
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


@rel("a truncated .tar.gz archive given to safe_extract")
def test_truncated_targz_named(tmp_path):
    from probe_lib.data.download import safe_extract

    archive = _truncated_tgz(tmp_path / "GrabCut.tar.gz")
    with pytest.raises(ValueError, match=r"archive .*GrabCut\.tar\.gz is truncated or corrupt"):
        safe_extract(archive, tmp_path / "out")


@rel("a truncated SA-1B shard (.tar)")
def test_truncated_sa1b_shard_named(tmp_path, monkeypatch):
    import probe_lib.data.download as dl
    from probe_lib.data.sa1b import fetch_sa1b

    links = tmp_path / "links.txt"
    links.write_text("file_name\tcdn_link\nsa_000000.tar\thttps://example.invalid/sa_000000.tar\n")

    def fake_download(url, dest, **kw):
        _truncated_tgz(dest)  # gzip inside a .tar name: tarfile detects the compression
        return dest

    monkeypatch.setattr(dl, "download_file", fake_download)
    (tmp_path / "_downloads").mkdir()
    with pytest.raises(ValueError, match=r"SA-1B shard .*sa_000000\.tar is truncated or corrupt"):
        fetch_sa1b(links, tmp_path, num_images=1, progress=False)


def test_results_json_roundtrip_untouched(tmp_path):
    # the validation must not reject what the package itself writes
    cfg = make_config("small")
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
