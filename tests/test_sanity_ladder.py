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
    image, gt, name = ds.get_instance(0)
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
def test_rung1_a_probe_learns_flat_shapes(tmp_path):
    """Rung 1 with the small recipe (stand-in backbone, SimpleViT + late_highres, cached
    features): after 32 steps the first-click IoU is far above an untrained probe's (how long
    that takes is measured in benchmarks/, not here)."""
    from probe_lib.model import build_probe
    from probe_lib.sanity import flat_shapes, run_rung

    cfg = make_config("small", click_encoder="simple_vit", injection="late_highres",
                      num_images=32, crop_bank=64, epochs=4, val_samples=0,
                      eval__num_instances=12, eval__max_clicks=3)
    train, val = flat_shapes(32, 12, seed=0)
    trained = run_rung("flat", cfg, train_dataset=train, eval_dataset=val,
                       out_path=tmp_path / "flat.pt")
    torch.manual_seed(0)
    untrained = run_rung("flat", cfg, probe=build_probe(cfg).eval(), eval_dataset=val)
    assert trained.iou1 >= 30 and trained.iou1 >= untrained.iou1 + 20, (
        trained.to_dict(), untrained.to_dict())
    assert trained.empty_first_click <= 2
