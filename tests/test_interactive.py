"""Click predictor and click-explorer widget, headless.

Most tests use a tiny fake probe that honours the ISProbe interface (``encode_image`` /
``forward_cached``) with a transparent rule (the mask is a blob around positive clicks minus one
around negative clicks), so every expectation can be worked out by hand; one test runs the real
``probe_lib.model`` probe saved and loaded from a checkpoint.
"""

import html

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probe_lib.clicks import click_maps
from probe_lib.config import make_config
from probe_lib.interactive import ClickPredictor, mask_iou, to_rgb_float

S = 32  # fake probe input side


class FakeProbe(torch.nn.Module):
    """Logits = +12 in a 9x9 box around positive clicks, -12 around negatives, else -4 + 2 prev."""

    def __init__(self, upsampler="bilinear", injection="late_highres"):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        self.cfg = make_config("small", upsampler__name=upsampler, probe__injection=injection,
                               probe__image_size=S)
        self.encode_calls = 0
        self.forward_calls = 0
        self.seen_points = []
        self.seen_prev = []

    def encode_image(self, image):
        assert image.shape == (1, 3, S, S)
        self.encode_calls += 1
        return {"feats": self.conv(image)}

    def forward_cached(self, cache, prev_mask, points):
        self.forward_calls += 1
        self.seen_points.append(points.clone())
        self.seen_prev.append(prev_mask.clone())
        maps = click_maps(points, (S, S), radius=1.0)
        boxes = F.max_pool2d(maps, 9, stride=1, padding=4)
        logits = -4 + 2 * prev_mask + 16 * boxes[:, :1] - 16 * boxes[:, 1:]
        return logits + 0 * cache["feats"].mean()


def _image(h=37, w=53, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, channels), dtype=np.uint8)


# ---------------------------------------------------------------------------- predictor
def test_to_rgb_float_handles_alpha_grey_and_rejects_bad_input():
    rgba = _image(channels=4)
    out = to_rgb_float(rgba)
    assert out.shape == (37, 53, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, rgba[..., :3] / 255.0, atol=1e-6)
    assert to_rgb_float(np.zeros((5, 7), np.uint8)).shape == (5, 7, 3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        to_rgb_float(np.full((4, 4, 3), 200.0))
    with pytest.raises(ValueError, match="shape"):
        to_rgb_float(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        to_rgb_float(np.zeros((4, 4, 3), np.int64))


def test_predict_maps_clicks_and_reuses_features():
    probe = FakeProbe()
    pred = ClickPredictor(probe)
    assert pred.image_size == S and pred.name == "bilinear-late_highres"
    pred.set_image(_image(37, 53, channels=4))  # odd size + alpha
    assert pred.image_shape == (37, 53) and probe.encode_calls == 1

    _, mask0 = pred.predict()  # no clicks: nothing run
    assert not mask0.any() and probe.forward_calls == 0

    pred.add_click(18.5, 26.0, positive=True)
    probs1, mask1 = pred.predict()
    assert probs1.shape == (37, 53) and probs1.dtype == np.float32 and mask1.dtype == bool
    assert mask1[18, 26] and not mask1[0, 0] and not mask1[36, 52]
    # row 18.5 of 37 -> 32 * 18.5 / 37 = 16; col 26 of 53 -> 32 * 26 / 53
    pts = probe.seen_points[-1]
    assert pts.shape == (1, 2, 3)
    torch.testing.assert_close(pts[0, 0, :2], torch.tensor([16.0, 32 * 26 / 53]))
    assert pts[0, 1, 0] == -1  # no negative click: padding row
    assert torch.count_nonzero(probe.seen_prev[-1]) == 0  # first click: empty previous mask

    pred.add_click(18.5, 26.0 + 53 * 3 / 32, positive=False)  # 3 input pixels to the right
    _, mask2 = pred.predict()
    assert probe.encode_calls == 1 and probe.forward_calls == 2  # features reused
    assert mask1.sum() > mask2.sum() and not mask2[18, 26]
    # the previous-mask input is the first prediction resized to the input grid
    prev = probe.seen_prev[-1]
    assert prev.shape == (1, 1, S, S) and prev.max() > 0.9
    assert pred.latencies_s == [pytest.approx(pred.history[0].latency_s),
                                pytest.approx(pred.last_latency_s)]


def test_undo_reset_and_bad_clicks():
    pred = ClickPredictor(FakeProbe())
    with pytest.raises(RuntimeError, match="set_image"):
        pred.add_click(1, 1)
    pred.set_image(_image())
    assert pred.undo() is None  # nothing to undo: not an error
    with pytest.raises(ValueError, match="outside the image"):
        pred.add_click(37, 5)
    with pytest.raises(ValueError, match="outside the image"):
        pred.add_click(3, -1)
    with pytest.raises(ValueError, match="numbers"):
        pred.add_click("a", 3)
    assert pred.clicks == []

    pred.add_click(10, 10, True)
    _, m1 = pred.predict()
    pred.add_click(30, 45, True)
    _, m2 = pred.predict()
    assert m2.sum() > m1.sum()
    assert pred.undo() == (30.0, 45.0, True)
    _, m_undo = pred.predict()
    np.testing.assert_array_equal(m_undo, m1)  # same clicks, same previous mask -> same result
    pred.reset()
    assert pred.clicks == [] and not pred.predict()[1].any()


def test_predictor_rejects_non_probe_and_bad_threshold():
    with pytest.raises(ValueError, match="encode_image"):
        ClickPredictor(torch.nn.Linear(2, 2), image_size=32)
    with pytest.raises(ValueError, match="prob_thresh"):
        ClickPredictor(FakeProbe(), prob_thresh=1.5)


def test_mask_iou_respects_ignore():
    gt = np.array([[1, 1, 0, -1]])
    assert mask_iou(np.array([[1, 0, 0, 1]], bool), gt) == pytest.approx(0.5)
    assert mask_iou(np.array([[1, 1, 0, 1]], bool), gt) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        mask_iou(np.zeros((2, 2), bool), gt)


# ---------------------------------------------------------------------------- widget
@pytest.fixture
def explorer():
    from probe_lib.explorer_ui import ClickExplorer, ImageChoice

    img = np.full((40, 60, 3), 90, np.uint8)
    gt = np.zeros((40, 60), np.int8)
    gt[10:30, 20:40] = 1
    images = {"square": ImageChoice(img, gt, "square", "made in the test"),
              "noise": ImageChoice(_image(37, 53, channels=4), None, "noise", "")}
    probes = {"bilinear-late_highres": ClickPredictor(FakeProbe("bilinear")),
              "loftup-late_highres": ClickPredictor(FakeProbe("loftup"))}
    return ClickExplorer(probes, images, display_size=120)


def test_explorer_clicks_change_mask_and_drawing(explorer):
    a, b = explorer.panels
    assert a.predictor is not None and b.predictor is not None
    assert a.frame.shape == (80, 120, 3)  # 40x60 image shown at longest side 120
    before = a.frame.copy()
    assert explorer.click(20, 30, positive=True)
    assert a.mask.shape == (40, 60) and a.mask[20, 30] and b.mask[20, 30]
    assert a.drawn_clicks == [(20.0, 30.0, True)] == b.drawn_clicks
    # the click is drawn green at (row 20, col 30) * 2 display scale
    np.testing.assert_array_equal(a.frame[40, 60], (40, 220, 40))
    assert not np.array_equal(before, a.frame)
    assert "IoU" in a.stats.value and "ms" in a.stats.value and a.iou is not None
    assert a.iou == pytest.approx(mask_iou(a.mask, explorer.current.gt))

    # right button -> negative click, drawn red; position scaled from the on-screen box
    ev = {"type": "mousedown", "button": 2, "shiftKey": False, "relativeX": 48.0,
          "relativeY": 20.0, "boundingRectWidth": 240.0, "boundingRectHeight": 160.0}
    mask_before = a.mask.copy()
    explorer.handle_event(ev)
    assert explorer.clicks[-1][2] is False
    assert explorer.clicks[-1][:2] == pytest.approx((5.0, 12.0))  # (20/2)/2, (48/2)/2
    np.testing.assert_array_equal(a.frame[10, 24], (235, 40, 40))
    # shift + left click is negative too; a plain left click positive
    explorer.handle_event({**ev, "button": 0, "shiftKey": True, "relativeX": 200.0})
    assert explorer.clicks[-1][2] is False
    explorer.handle_event({**ev, "button": 0, "relativeX": 150.0, "relativeY": 100.0})
    assert explorer.clicks[-1][2] is True and len(explorer.clicks) == 4
    assert not np.array_equal(mask_before, a.mask)

    explorer.undo()
    assert len(explorer.clicks) == 3 and len(a.predictor.clicks) == 3 == len(a.drawn_clicks)
    explorer.reset()
    assert explorer.clicks == [] and a.mask is None and a.drawn_clicks == []
    np.testing.assert_array_equal(a.frame, before)


def test_explorer_bad_input_shows_message_and_stays_alive(explorer):
    a = explorer.panels[0]
    explorer.undo()
    assert "nothing to undo" in explorer.message.value and explorer.last_error is None
    assert explorer.click(40, 5) is None  # row 40 of a 40-row image
    assert "outside" in explorer.message.value and isinstance(explorer.last_error, ValueError)
    assert explorer.clicks == [] and a.predictor.clicks == []
    assert explorer.click(5, 5)  # still works afterwards
    explorer.upload(b"not an image", "junk.png")
    assert "not an image file" in explorer.message.value
    explorer.select_image("missing")
    assert "unknown image" in explorer.message.value


def test_explorer_upload_rgba_odd_size(explorer):
    import cv2

    rgba = _image(33, 47, channels=4, seed=3)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    assert ok
    # the FileUpload widget's own change event (ipywidgets 8: a tuple of dicts, memoryview content)
    explorer._on_upload({"new": ({"name": "odd.png", "content": memoryview(buf.tobytes())},)})
    assert explorer.last_error is None, explorer.message.value
    assert explorer.upload_btn.value == ()
    assert explorer.current.image.shape == (33, 47, 3)
    np.testing.assert_array_equal(explorer.current.image, rgba[..., :3])
    assert explorer.image_dd.value == "upload: odd.png"
    assert explorer.click(16, 23)
    assert explorer.panels[0].mask[16, 23] and "IoU" not in explorer.panels[0].stats.value


def test_explorer_switching_images_and_probes(explorer):
    a, b = explorer.panels
    explorer.click(20, 30)
    explorer.select_image("noise")
    assert explorer.clicks == [] and a.predictor.image_shape == (37, 53)
    explorer.click(5, 5)
    explorer.select_probe(1, "(none)")
    assert b.predictor is None and b.box.layout.display == "none"
    explorer.select_probe(1, "bilinear-late_highres")  # replays the click on the new panel
    assert b.predictor is not None and b.mask is not None and b.mask[5, 5]
    explorer.select_probe(0, None)
    assert "always shows a probe" in explorer.message.value and a.predictor is not None


def test_explorer_draws_probability_map(explorer):
    a = explorer.panels[0]
    assert a.prob_frame.shape == (40, 60, 3) and not a.prob_frame.any()  # half size, empty
    explorer.click(20, 30)
    # magma: high probability is bright; the clicked region is brighter than a far corner
    assert a.prob_frame[20, 30].sum() > a.prob_frame[0, 0].sum() + 200


def test_scripted_clicks_follow_the_eval_clicker(explorer):
    from probe_lib.explorer_ui import run_scripted_clicks

    records = run_scripted_clicks(explorer, 2)
    # first click: the object's most interior point (gt square rows 10-29, cols 20-39)
    assert records[0]["positive"] and (records[0]["row"], records[0]["col"]) in {
        (r, c) for r in (19, 20) for c in (29, 30)}
    assert all(p["prob_change"] > 0.5 for p in records[0]["panels"].values())
    assert len(explorer.clicks) == 2 and explorer.panels[0].iou is not None
    explorer.select_image("noise")
    with pytest.raises(ValueError, match="ground truth"):
        run_scripted_clicks(explorer, 1)


# ---------------------------------------------------------------------------- real probe
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from probe_lib.model import build_probe, save_probe

    cfg = make_config("small", backbone__name="test_tiny", backbone__weights="random",
                      upsampler__name="bilinear", upsampler__weights="random",
                      probe__injection="late_highres", probe__image_size=56)
    torch.manual_seed(0)
    probe = build_probe(cfg)
    path = tmp_path_factory.mktemp("probe") / "bilinear-late_highres-small.pt"
    save_probe(probe, path, cfg)
    return path


def test_real_probe_from_checkpoint_matches_uncached_forward(tiny_checkpoint):
    from probe_lib.clicks import clicks_to_tensor

    pred = ClickPredictor.from_checkpoint(tiny_checkpoint, upsampler="bilinear",
                                          injection="late_highres")
    assert pred.image_size == 56 and pred.injection == "late_highres"
    img = _image(56, 56)  # same size as the input: no resize, so logits compare 1:1
    pred.set_image(img)
    pred.add_click(20, 30, True)
    probs, mask = pred.predict()
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        logits = pred.probe(x, torch.zeros(1, 1, 56, 56), clicks_to_tensor([(20.0, 30.0, True)]))
    np.testing.assert_allclose(probs, torch.sigmoid(logits)[0, 0].numpy(), atol=1e-5)
    assert mask.dtype == bool and mask.shape == (56, 56)


def test_checkpoint_mismatch_and_missing_file_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"upsampler 'bilinear', not the chosen 'loftup'"):
        ClickPredictor.from_checkpoint(tiny_checkpoint, upsampler="loftup")
    with pytest.raises(ValueError, match="injection"):
        ClickPredictor.from_checkpoint(tiny_checkpoint, injection="early")
    with pytest.raises(FileNotFoundError, match="not found"):
        ClickPredictor.from_checkpoint(tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        ClickPredictor.from_checkpoint(junk)


def test_explorer_reports_mismatched_checkpoint_in_the_ui(explorer, tiny_checkpoint, tmp_path):
    import shutil

    renamed = tmp_path / "loftup-late_highres-small.pt"  # a bilinear probe filed as LoftUp
    shutil.copy(tiny_checkpoint, renamed)
    explorer.probe_sources["loftup-late_highres (file)"] = renamed
    before = explorer.panels[1].predictor
    explorer.select_probe(1, "loftup-late_highres (file)")
    assert "not the chosen 'loftup'" in html.unescape(explorer.message.value)
    assert explorer.panels[1].predictor is before  # panel B unchanged, and still working
    assert explorer.probe_dd[1].value == "loftup-late_highres"
    assert explorer.click(20, 30) and explorer.panels[0].mask[20, 30]


def test_ensure_probe_checkpoint_prefers_the_real_probe(monkeypatch, tmp_path):
    from probe_lib.interactive import ensure_probe_checkpoint
    from probe_lib.utils import checkpoint_path

    monkeypatch.setenv("PROBE_LIB_CACHE", str(tmp_path))
    calls = []

    def fake_train(cfg, out_path=None, progress=True):
        calls.append(cfg)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_bytes(b"tiny")
        return {}

    monkeypatch.setattr("probe_lib.train.train_probe", fake_train)
    cfg = make_config("small")
    path, trained = ensure_probe_checkpoint(cfg, "loftup", num_images=8, epochs=1,
                                            progress=False)
    assert trained and path == checkpoint_path("probe", "loftup-late_highres-tiny", "small")
    (tiny_cfg,) = calls
    assert (tiny_cfg.upsampler.name, tiny_cfg.probe.injection, tiny_cfg.train.num_images,
            tiny_cfg.train.epochs) == ("loftup", "late_highres", 8, 1)
    assert ensure_probe_checkpoint(cfg, "loftup")[0] == path and len(calls) == 1  # reused
    real = checkpoint_path("probe", "loftup-late_highres", "small")
    real.write_bytes(b"real")
    assert ensure_probe_checkpoint(cfg, "loftup") == (real, False) and len(calls) == 1
