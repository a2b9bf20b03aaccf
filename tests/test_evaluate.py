"""Evaluator tests with fake predictors (no trained model needed): iSegProbe's ZoomIn geometry,
the click loop, flip averaging, feature reuse, bad input."""

import numpy as np
import pytest
import torch

from probe_lib.clicks import next_click
from probe_lib.config import make_config
from probe_lib.evaluate import (
    Predictor,
    ZoomIn,
    ZoomInParams,
    bbox_iou,
    candidate_roi,
    check_probe_matches_config,
    evaluate_dataset,
    evaluate_instance,
    expand_bbox,
    load_ious,
    positive_clicks_inside,
    predict_probs,
    save_result,
)
from probe_lib.metrics import iou


class FakeDataset:
    """instances()/get_instance() over in-memory (image, gt) pairs; instances may share images."""

    def __init__(self, items):
        self.items = items  # list of (sample_index, image, gt)
        self.name = "fake"

    def instances(self):
        return [(s, k + 1) for k, (s, _, _) in enumerate(self.items)]

    def __len__(self):
        return len({s for s, _, _ in self.items})

    def get_instance(self, k):
        s, image, gt = self.items[k]
        return image, gt, f"img{s}_{k}"


def _square_gt(h=32, w=32, r0=6, r1=17, c0=8, c1=21):
    gt = np.zeros((h, w), np.int8)
    gt[r0:r1, c0:c1] = 1
    return gt


def _image(h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


class OracleModel:
    """Predicts the given network-resolution mask exactly (logits +-10), counting encodes."""

    def __init__(self, mask):
        self.mask = torch.as_tensor(mask == 1, dtype=torch.float32)[None, None]
        self.encodes = 0

    def encode_image(self, image):
        self.encodes += 1
        return {"image": image}

    def forward_cached(self, cache, prev_mask, points):
        b = cache["image"].shape[0]
        return (self.mask * 20 - 10).expand(b, 1, *self.mask.shape[-2:])


class DiskModel:
    """Logits +10 inside radius 4 of positive clicks, -10 elsewhere; a plain callable."""

    def __call__(self, image, prev_mask, points):
        b, _, h, w = image.shape
        rr, cc = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        out = torch.full((b, 1, h, w), -10.0)
        n = points.shape[1] // 2
        for i in range(b):
            for r, c, _ in points[i, :n]:
                if max(r, c) >= 0:
                    out[i, 0][(rr - r) ** 2 + (cc - c) ** 2 <= 16] = 10.0
        return out


# ------------------------------------------------------------------ ZoomIn geometry
def test_expand_bbox_rounds_half_to_even():
    # centre 5, size 11 -> bounds -0.5 and 10.5 -> round() gives 0 and 10 (half-up would give 11)
    assert expand_bbox((0, 10, 0, 10), 1.0, 0) == (0, 10, 0, 10)
    # centre 4.5, size 10 -> -0.5 and 9.5 -> 0 and 10
    assert expand_bbox((0, 9, 0, 9), 1.0, 0) == (0, 10, 0, 10)
    # 1.4 x inclusive extent 11 = 15.4 about 15 -> 7.3, 22.7 -> 7, 23
    assert expand_bbox((10, 20, 10, 20), 1.4, 0) == (7, 23, 7, 23)
    # min crop wins for small objects
    assert expand_bbox((50, 50, 60, 60), 1.4, 200) == (-50, 150, -40, 160)


def test_bbox_iou_and_click_check():
    assert bbox_iou((0, 9, 0, 9), (0, 4, 0, 9)) == pytest.approx(0.5)
    assert bbox_iou((0, 9, 0, 9), (0, 9, 0, 9)) == 1.0
    assert bbox_iou((0, 4, 0, 4), (10, 14, 0, 4)) == 0.0
    roi = (10, 20, 10, 20)
    assert positive_clicks_inside(roi, [(10, 10, True), (19, 19, True)])
    assert not positive_clicks_inside(roi, [(20, 15, True)])  # upper bound exclusive
    assert positive_clicks_inside(roi, [(0, 0, False)])  # negatives do not count


def test_candidate_roi_adds_positive_clicks_and_clamps():
    p = ZoomInParams(min_crop_size=4, expansion_ratio=1.0)
    probs = np.zeros((40, 40), np.float32)
    assert candidate_roi(probs, [(5, 5, True)], p) == (0, 39, 0, 39)  # empty -> full image
    probs[10:14, 10:14] = 0.9
    assert candidate_roi(probs, [], p) == (10, 14, 10, 14)  # centre 11.5 +- 2 -> 9.5, 13.5 -> 10, 14
    # a positive click extends the box, a negative one does not
    assert candidate_roi(probs, [(20, 11, True), (0, 0, False)], p)[1] == 20
    probs[:] = 0.9
    assert candidate_roi(probs, [], ZoomInParams()) == (0, 39, 0, 39)


def test_zoomin_state_machine():
    p = ZoomInParams(min_crop_size=10, expansion_ratio=1.0)
    z = ZoomIn(p, (64, 64))
    assert z.roi_for(None, [(30, 30, True)]) == (0, 63, 0, 63)
    assert z.roi == (0, 63, 0, 63)  # the whole image becomes the remembered region at click 1
    probs = np.zeros((64, 64), np.float32)
    probs[25:35, 25:35] = 1
    # click 2: the candidate (box IoU with the whole image < 0.5) replaces the whole image
    first = z.roi_for(probs, [(30, 30, True)])
    assert first == candidate_roi(probs, [(30, 30, True)], p) != (0, 63, 0, 63)
    # a slightly different prediction keeps the region (bbox-IoU >= 0.5)
    probs[35, 25:35] = 1
    assert z.roi_for(probs, [(30, 30, True)]) == first
    # a positive click outside the region forces a new one
    second = z.roi_for(probs, [(30, 30, True), (60, 60, True)])
    assert second != first and second[1] >= 60


def test_zoomin_keeps_the_whole_image_for_a_large_object_at_click_2():
    p = ZoomInParams()  # iSegProbe's: ratio 1.4, min crop 200
    z = ZoomIn(p, (240, 320))
    clicks = [(120, 160, True)]
    assert z.roi_for(None, clicks) == (0, 239, 0, 319)
    probs = np.zeros((240, 320), np.float32)
    probs[40:200, 40:280] = 1  # candidate box covers >= half of the image: no switch
    assert bbox_iou(candidate_roi(probs, clicks, p), (0, 239, 0, 319)) >= 0.5
    assert z.roi_for(probs, clicks) == (0, 239, 0, 319)
    # a positive click on the last column is outside the whole-image region (upper bounds
    # exclusive), so the candidate replaces it
    clicks.append((100, 319, True))
    assert z.roi_for(probs, clicks) == candidate_roi(probs, clicks, p) != (0, 239, 0, 319)


# ------------------------------------------------------------------ the click loop
def test_plain_loop_matches_a_naive_reference():
    gt = _square_gt()
    img = _image()
    model = DiskModel()
    ious, clicks, _ = evaluate_instance(Predictor(model), img, gt, protocol="plain",
                                        max_clicks=6, flip=False, target_size=32)
    # naive loop: at target == image size nothing is resized, so the model output is the mask
    pred = np.zeros_like(gt, bool)
    nc = np.ones_like(gt, bool)
    ref_clicks, ref_ious = [], []
    for _ in range(6):
        pos, (r, c) = next_click(gt, pred, not_clicked=nc)
        nc[r, c] = False
        ref_clicks.append((r, c, pos))
        posl = [(r, c) for r, c, p in ref_clicks if p]
        rr, cc = np.mgrid[:32, :32]
        pred = np.zeros_like(gt, bool)
        for r2, c2 in posl:
            pred |= (rr - r2) ** 2 + (cc - c2) ** 2 <= 16
        ref_ious.append(np.float32(iou(gt, pred)))
    assert clicks == ref_clicks
    np.testing.assert_array_equal(ious, np.array(ref_ious, np.float32))
    assert ious.dtype == np.float32
    assert clicks[0][2] is True and ious[0] > 0


def test_perfect_model_and_ignore_label():
    gt = _square_gt()
    gt[0:3, :] = -1
    model = OracleModel(gt)
    ious, clicks, _ = evaluate_instance(Predictor(model), _image(), gt, protocol="plain",
                                        max_clicks=3, flip=False, target_size=32)
    np.testing.assert_array_equal(ious, [1, 1, 1])
    # after a perfect prediction the clicker has no error left: negative click at (0, 0)
    assert clicks[1] == (0, 0, False)


def test_flip_averages_logits_and_mirrors_clicks():
    seen = {}

    def model(image, prev_mask, points):
        seen["image"], seen["points"] = image.clone(), points.clone()
        out = torch.zeros(image.shape[0], 1, *image.shape[-2:])
        out[0] = 4.0
        out[1] = -1.0
        return out

    img = torch.rand(1, 3, 16, 16)
    probs = predict_probs(Predictor(model), img, np.zeros((16, 16), np.float32),
                          [(3, 2, True), (10, 12, False)], (0, 15, 0, 15), 16, flip=True)
    # logits averaged then sigmoid, not the mean of two sigmoids
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-1.5)), rtol=1e-6)
    torch.testing.assert_close(seen["image"][1], seen["image"][0].flip(-1))
    p = seen["points"]
    assert p.shape == (2, 2, 3)
    torch.testing.assert_close(p[1, :, 1], 15 - p[0, :, 1])
    torch.testing.assert_close(p[1, :, 0], p[0, :, 0])


def test_roi_crop_and_click_mapping():
    seen = {}

    def model(image, prev_mask, points):
        seen["points"], seen["prev"] = points.clone(), prev_mask.clone()
        return torch.full((image.shape[0], 1, *image.shape[-2:]), 10.0)

    img = torch.rand(1, 3, 40, 60)
    prev = np.zeros((40, 60), np.float32)
    prev[10:30, 20:40] = 0.7
    roi = (10, 29, 20, 39)  # 20 x 20 region
    probs = predict_probs(Predictor(model), img, prev, [(15, 25, True)], roi, 8, flip=False)
    # r' = T (r - rmin) / (rmax - rmin + 1)
    torch.testing.assert_close(seen["points"][0, 0, :2], torch.tensor([8 * 5 / 20, 8 * 5 / 20]))
    assert torch.allclose(seen["prev"], torch.full_like(seen["prev"], 0.7))
    # pasted back into a zero canvas
    assert probs[10:30, 20:40].min() > 0.99 and probs.sum() == pytest.approx(400 * probs[15, 25])


def test_fixed224_with_full_roi_equals_plain_at_first_click():
    gt = _square_gt(64, 64, 10, 40, 12, 50)
    img = _image(64, 64)
    kw = {"max_clicks": 1, "flip": False, "target_size": 16}
    a, ca, _ = evaluate_instance(Predictor(DiskModel()), img, gt, protocol="plain", **kw)
    b, cb, _ = evaluate_instance(Predictor(DiskModel()), img, gt, protocol="isegprobe_fixed224",
                                 **kw)
    assert ca == cb and a[0] == b[0]


def test_feature_reuse_counts_and_exactness():
    gt1, gt2 = _square_gt(), _square_gt(r0=20, r1=30, c0=2, c1=10)
    img = _image()
    ds = FakeDataset([(0, img, gt1), (0, img, gt2)])
    union = (gt1 == 1) | (gt2 == 1)
    m1, m2 = OracleModel(union.astype(np.int8)), OracleModel(union.astype(np.int8))
    r1 = evaluate_dataset(m1, ds, protocol="plain", max_clicks=4, flip=True, target_size=32,
                          progress=False)
    r2 = evaluate_dataset(m2, ds, protocol="plain", max_clicks=4, flip=True, target_size=32,
                          reuse_features=False, progress=False)
    assert m1.encodes == 1 and r1.num_encodes == 1  # one image, whole image every click
    assert m2.encodes == 8 and r2.num_clicks == 8
    np.testing.assert_array_equal(r1.ious, r2.ious)
    assert r1.ious.shape == (2, 4) and r1.seconds_per_click > 0


def test_zoom_protocol_runs_and_reencodes_only_on_roi_change():
    gt = _square_gt(64, 64, 20, 40, 20, 44)
    ds = FakeDataset([(0, _image(64, 64), gt)])
    m = OracleModel(np.ones((16, 16), np.int8))  # predicts everything: ROI stays full size
    res = evaluate_dataset(m, ds, protocol="isegprobe_fixed224", max_clicks=5, flip=False,
                           target_size=16, zoom=ZoomInParams(target_size=16, min_crop_size=8),
                           progress=False)
    assert 1 <= res.num_encodes <= 5
    assert res.metrics(n_boot=20)["num_instances"] == 1


def test_save_and_load(tmp_path):
    ds = FakeDataset([(0, _image(), _square_gt())])
    res = evaluate_dataset(DiskModel(), ds, protocol="plain", max_clicks=3, flip=False,
                           target_size=32, progress=False)
    doc = save_result(res, tmp_path, cfg=make_config("small"), meta={"upsampler": "x"}, n_boot=10)
    np.testing.assert_array_equal(load_ious(tmp_path / "fake_ious.npz"), res.ious)
    assert doc["config"]["preset"] == "small" and "NoC85" in doc["metrics"]
    with pytest.raises(FileNotFoundError):
        load_ious(tmp_path / "nope.npz")
    # same configuration: replaced; another configuration: refused unless overwrite=True
    save_result(res, tmp_path, cfg=make_config("small"), n_boot=10)
    with pytest.raises(ValueError, match="another configuration"):
        save_result(res, tmp_path, cfg=make_config("small", upsampler__name="loftup"), n_boot=10)
    save_result(res, tmp_path, cfg=make_config("small", upsampler__name="loftup"), n_boot=10,
                overwrite=True)


# ------------------------------------------------------------------ bad input
def test_zero_instances_and_bad_protocol():
    with pytest.raises(ValueError, match="zero instances"):
        evaluate_dataset(DiskModel(), FakeDataset([]), progress=False)
    with pytest.raises(ValueError, match="protocol"):
        evaluate_instance(Predictor(DiskModel()), _image(), _square_gt(), protocol="zoom")
    empty = FakeDataset([(0, _image(), np.zeros((32, 32), np.int8))])
    with (pytest.warns(UserWarning, match="skipped 1"),
          pytest.raises(ValueError, match="every instance was empty")):
        evaluate_dataset(DiskModel(), empty, progress=False)


def test_checkpoint_config_mismatch():
    cfg = make_config("small", upsampler__name="loftup")
    check_probe_matches_config(make_config("small", upsampler__name="loftup"), cfg)
    check_probe_matches_config(make_config("small", upsampler__name="jbu_featup"),
                               make_config("small", upsampler__name="featup_jbu"))
    with pytest.raises(ValueError, match="upsampler.name.*'bilinear'.*'loftup'"):
        check_probe_matches_config(make_config("small", upsampler__name="bilinear"), cfg,
                                   "probe.pt")
    with pytest.raises(ValueError, match="backbone.name"):
        check_probe_matches_config(make_config("small", backbone__name="test_tiny",
                                               upsampler__name="loftup"), cfg)


# ------------------------------------------------------------------ with the real probe
@pytest.mark.parametrize("injection", ["early", "late_highres"])
def test_real_probe_reuse_is_exact(injection):
    """A tiny random ISProbe: reusing features gives the same IoU curves, fewer feature passes."""
    from probe_lib.backbones import create_backbone
    from probe_lib.model import build_probe

    torch.manual_seed(0)
    cfg = make_config("small", backbone__name="test_tiny", backbone__weights="random",
                      upsampler__name="bilinear", injection=injection, probe__image_size=28)
    probe = build_probe(cfg, backbone=create_backbone("test_tiny", weights="random")).eval()
    img = _image(40, 36)
    ds = FakeDataset([(0, img, _square_gt(40, 36, 5, 30, 4, 20)),
                      (0, img, _square_gt(40, 36, 10, 20, 22, 34))])
    kw = {"protocol": "isegprobe_fixed224", "max_clicks": 3, "flip": True, "target_size": 28,
          "progress": False}
    a = evaluate_dataset(probe, ds, reuse_features=True, **kw)
    b = evaluate_dataset(probe, ds, reuse_features=False, **kw)
    np.testing.assert_array_equal(a.ious, b.ious)
    assert [c for c in a.clicks] == [c for c in b.clicks]
    assert a.upsampler_precision["precision"] == "fp32"  # recorded; bilinear has no bf16 copy
    assert b.num_encodes == 6 and a.num_encodes < 6  # shared first-click region of the image
