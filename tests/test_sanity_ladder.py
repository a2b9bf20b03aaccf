"""The sanity ladder (probe_lib.sanity): rung 1 must learn, the photo rung must load and score."""

import numpy as np
import pytest
import torch

from probe_lib.config import make_config


def test_flat_shapes_are_flat_and_separable():
    from probe_lib.sanity import FlatShapes

    ds = FlatShapes(6, 112, seed=0)
    for i in range(len(ds)):
        s = ds.get_sample(i)
        assert s.objects.max() >= 1 and s.image.shape == (112, 112, 3)
        for k in range(int(s.objects.max()) + 1):
            colours = np.unique(s.image[s.objects == k].reshape(-1, 3), axis=0)
            assert len(colours) == 1  # one flat colour per object and for the background
    _image, gt, name = ds.get_instance(0)
    assert set(np.unique(gt)) == {0, 1} and name.startswith("flat0")


def test_photo_masks_load_and_match_their_photos():
    from probe_lib.data.photos import PhotoMaskDataset

    ds = PhotoMaskDataset(max_side=200)
    assert len(ds) == len(ds.instances()) == 6
    for k in range(len(ds)):
        image, gt, name = ds.get_instance(k)
        assert image.shape[:2] == gt.shape and max(gt.shape) == 200
        assert 0.01 < gt.mean() < 0.5, name  # an object, not the whole photo


@pytest.mark.slow
def test_rung1_defect_check_one_batch_fits():
    """The defect check under rung 1: with the stand-in backbone, 8 flat-shape crops and their
    sampled clicks, the small probe (late_highres, normalized focal loss, Adam 1e-3) fits the
    batch to IoU > 0.85 in 60 steps. Clicks that do not reach the head, a broken loss or a wrong
    threshold fail it. (How far rung 1 *generalises* in a short schedule is a measurement, not a
    test: docs/teaching_scale.md, section 3.)"""
    from probe_lib.losses import NormalizedFocalLoss
    from probe_lib.model import build_probe
    from probe_lib.sanity import flat_shapes
    from probe_lib.train import ProbeTrainSet, batch_loss, iou

    cfg = make_config("small", injection="late_highres", upsampler_precision="fp32")
    torch.manual_seed(0)
    model = build_probe(cfg)
    ts = ProbeTrainSet(flat_shapes(8, 4, seed=0)[0], cfg.probe.image_size, seed=0)
    ts.set_epoch(0, np.arange(8))
    items = [ts[i] for i in range(8)]
    image = torch.stack([it["image"] for it in items])
    points = torch.stack([it["points"] for it in items])
    gt = torch.stack([it["gt"] for it in items])
    cache = model.encode_image(image)
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    loss_fn = NormalizedFocalLoss(alpha=0.5, gamma=2.0, reduction="none")
    prev = torch.zeros_like(gt)
    first = None
    for _ in range(60):
        logits = model.forward_cached(cache, prev, points)
        loss, _ = batch_loss(loss_fn(logits, gt), gt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        fit = float(iou(torch.sigmoid(logits.detach()) > 0.5, gt).mean())
        first = fit if first is None else first
    assert first < 0.5 and fit > 0.85, (first, fit)
