"""Training: augmentations (albumentations-0.5.2 semantics), a tiny run that learns, resume, DDP."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from probe_lib import augment as A
from probe_lib.config import make_config
from probe_lib.data.is_datasets import ISSample

S = 56


# ------------------------------------------------------------------ augmentations
def test_flip_codes_and_rot90():
    x = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(A.flip(x, 1), cv2.flip(x.astype(np.int32), 1))
    np.testing.assert_array_equal(A.flip(x, 0), x[::-1])
    np.testing.assert_array_equal(A.flip(x, -1), x[::-1, ::-1])
    assert A.rot90(x, 1)[0].tolist() == [3, 7, 11]  # counter-clockwise, as np.rot90


def test_pad_and_crop_offsets():
    img = np.ones((5, 8, 3), np.uint8)
    p = A.pad_if_needed(img, 10, 9)
    assert p.shape == (10, 9, 3)
    assert p[:2].sum() == 0 and p[2:7, :, 0].sum() == 5 * 8 and p[7:].sum() == 0  # top 2, bottom 3
    assert p[:, 8].sum() == 0 and p[2, 0] .sum() == 3  # width: 0 left, 1 right
    big = np.arange(100).reshape(10, 10)
    c = A.random_crop(big, 4, 4, h_start=0.5, w_start=0.99)
    assert c[0, 0] == big[3, 5]  # y1 = int(6 * 0.5) = 3, x1 = int(6 * 0.99) = 5
    with pytest.raises(ValueError, match="pad first"):
        A.random_crop(big, 12, 4, 0, 0)


def test_brightness_contrast_and_rgb_shift_luts():
    img = np.array([[[0, 100, 250]]], np.uint8)
    out = A.brightness_contrast(img, alpha=1.2, beta=0.1)
    # clip(v * 1.2 + 25.5) truncated: 25.5 -> 25, 145.5 -> 145, 325.5 -> 255
    assert out.tolist() == [[[25, 145, 255]]]
    assert A.rgb_shift(img, -5.5, 3.7, 10).tolist() == [[[0, 103, 255]]]


def test_shift_scale_rotate_identity_and_shift():
    img = (np.random.default_rng(0).random((20, 30, 3)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(A.shift_scale_rotate(img, 0, 1, 0, 0), img)
    lab = np.zeros((20, 30), np.int32)
    lab[5:10, 5:10] = 3
    moved = A.shift_scale_rotate(lab, 0, 1, dx=0.1, dy=0.0, nearest=True)
    assert moved.dtype == np.int32 and set(np.unique(moved)) == {0, 3}
    assert (moved[5:10, 8:13] == 3).all() and moved[5:10, 5:8].sum() == 0  # shifted 3 px right


def test_pipeline_keeps_labels_and_retries():
    rng = np.random.default_rng(0)
    image = (np.random.default_rng(1).random((80, 100, 3)) * 255).astype(np.uint8)
    objects = np.zeros((80, 100), np.int32)
    objects[10:40, 10:50] = 2
    objects[60:63, 90:93] = 5  # 9 px: dropped by the 80-px filter when it survives at all
    aug = A.IsegAugment(crop_size=64)
    kept_large = 0
    for _ in range(30):
        a = aug(image, objects, None, rng)
        assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
        assert a.objects.shape == (64, 64) and set(np.unique(a.objects)) <= {0, 2}
        kept_large += (a.objects == 2).any()
    assert kept_large >= 29  # retries until an object is visible (up to the 1 % background keep)
    with pytest.raises(ValueError, match="mask size"):
        aug(image, objects[:-1], None, rng)


def test_remove_small_objects():
    lab = np.zeros((20, 20), np.int32)
    lab[:10, :10] = 1
    lab[15:18, 15:18] = 2
    out = A.remove_small_objects(lab, 80)
    assert set(np.unique(out)) == {0, 1}


def test_small_objects_leave_the_list_but_stay_out_of_background_negatives():
    aug = A.IsegAugment(crop_size=None, min_object_area=80)
    lab = np.zeros((40, 40), np.int32)
    lab[:20, :20] = 1
    lab[30:33, 30:33] = 2  # 9 px: dropped
    kept = A.remove_small_objects(lab, 80)
    removed = (lab > 0) & (kept == 0)
    from probe_lib.clicks import MultiPointSampler

    sampler = MultiPointSampler(max_num_points=24, negative_bg_prob=1.0, negative_other_prob=0.0,
                                negative_border_prob=0.0)
    # no objects left: background negatives never land on the dropped object's pixels
    only_small = np.where(lab == 2, 2, 0)
    gone = A.remove_small_objects(only_small, 80)
    hits_ref, hits_proj = 0, 0
    for seed in range(200):
        pts, _ = sampler(gone, np.random.default_rng(seed), not_background=only_small > 0)
        neg = pts[24:][pts[24:, 0] >= 0].astype(int)
        hits_ref += int((only_small[neg[:, 0], neg[:, 1]] > 0).sum())
        pts, _ = sampler(gone, np.random.default_rng(seed))
        neg = pts[24:][pts[24:, 0] >= 0].astype(int)
        hits_proj += int((only_small[neg[:, 0], neg[:, 1]] > 0).sum())
    assert hits_ref == 0 and hits_proj > 0
    # with another object left, the dropped pixels count among the "other objects" negatives
    other = MultiPointSampler(max_num_points=24, negative_bg_prob=0.0, negative_other_prob=1.0,
                              negative_border_prob=0.0)
    lab3 = kept.copy()
    lab3[25:40, :12] = 3
    got = 0
    for seed in range(50):
        pts, gt = other(lab3, np.random.default_rng(seed), not_background=removed)
        neg = pts[24:][pts[24:, 0] >= 0].astype(int)
        got += int(removed[neg[:, 0], neg[:, 1]].sum())
        assert (gt[0][removed] == 0).all()  # never a positive target
    assert got > 0
    # the augmentation reports which pixels it dropped
    out = aug(np.zeros((40, 40, 3), np.uint8), lab, None, np.random.default_rng(0))
    assert out.small_removed is not None and out.small_removed.dtype == bool


def test_checkpoint_schedule_and_probe_checkpoint_path(tmp_path):
    from probe_lib.train import checkpoint_epochs, probe_checkpoint_path

    assert checkpoint_epochs("isegprobe", 20) == [0, 3, 6, 9, 12, 15, 16, 17, 18, 19]
    assert checkpoint_epochs("last_only", 20) == []
    with pytest.raises(ValueError, match="checkpoint_schedule"):
        checkpoint_epochs("weekly", 20)
    cfg = make_config("full")
    last = tmp_path / "lift-early-full.pt"
    assert probe_checkpoint_path(cfg, out_path=last) == last
    assert probe_checkpoint_path(cfg, 15, out_path=last).name == "lift-early-full-epoch015.pt"
    with pytest.raises(ValueError, match="eval.checkpoint"):
        probe_checkpoint_path(cfg, "best", out_path=last)


# ------------------------------------------------------------------ toy data
class ToyDataset:
    """Coloured rectangles on a noisy background: learnable in a few steps with a random backbone."""

    def __init__(self, n, size=S * 2, seed=0, with_bad=False):
        self.items = []
        rng = np.random.default_rng(seed)
        for i in range(n):
            img = (rng.random((size, size, 3)) * 60).astype(np.uint8)
            obj = np.zeros((size, size), np.int32)
            for k in range(1, 3):
                h, w = rng.integers(size // 4, size // 2, size=2)
                r, c = rng.integers(0, size - h), rng.integers(0, size - w)
                obj[r:r + h, c:c + w] = k
            img[obj > 0] = (230, 40, 40)
            ign = np.zeros((size, size), bool)
            if with_bad and i % 2 == 0:
                ign = np.ones((size, size), bool)  # everything ignored
            self.items.append(ISSample(img, obj, ign, f"toy{i}"))

    def __len__(self):
        return len(self.items)

    def get_sample(self, i):
        return self.items[i]


def tiny_cfg(**kw):
    base = {"backbone__name": "test_tiny", "backbone__weights": "random",
            "upsampler__name": "bilinear", "upsampler__weights": "random", "image_size": S,
            "head": "lean_conv", "injection": "early", "epochs": 2, "num_images": 8,
            "batch_size": 4, "val_samples": 8, "lr": 1e-3, "lr_milestones": [100],
            "num_workers": 0, "crop_bank": 0, "lr_schedule": "multistep", "warmup_steps": 0}
    base.update(kw)
    return make_config("small", **base)


@pytest.fixture(scope="module")
def backbone():
    from probe_lib.backbones import create_backbone

    return create_backbone("test_tiny", weights="random", verbose=False)


def test_training_lowers_loss_and_raises_val_iou(tmp_path, backbone):
    from probe_lib.model import load_probe
    from probe_lib.train import train_probe

    ds = ToyDataset(16)
    cfg = tiny_cfg(epochs=3, num_images=16, upsampler__name="identity", injection="early",
                   checkpoint_schedule="isegprobe")
    hist = train_probe(cfg, tmp_path / "p.pt", progress=False, train_dataset=ds,
                       val_dataset=ToyDataset(8, seed=1), backbone=backbone)
    # iSegProbe's schedule: epoch 0 (then every 3rd) numbered, plus the final one
    assert (tmp_path / "p-epoch000.pt").is_file() and not (tmp_path / "p-epoch001.pt").exists()
    ep = hist["epochs"]
    assert len(ep) == 3 and hist["complete"] and len(hist["steps"]) == 12
    losses = [s["loss"] for s in hist["steps"]]
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    assert ep[-1]["val_iou"] > hist["val_before"]["val_iou"] + 0.05, (hist["val_before"], ep)
    assert all(np.isfinite(s["loss"]) for s in hist["steps"])
    assert (tmp_path / "p.history.json").is_file()
    probe, cfg2 = load_probe(tmp_path / "p.pt")
    assert cfg2 == cfg and not probe.training


def test_resume_after_interrupt_is_bit_identical(tmp_path, backbone):
    from probe_lib.train import train_probe

    ds = ToyDataset(8)
    cfg = tiny_cfg(epochs=2, val_samples=0)
    kw = {"progress": False, "train_dataset": ds, "backbone": backbone}
    full = train_probe(cfg, tmp_path / "a.pt", **kw)
    part = train_probe(cfg, tmp_path / "b.pt", stop_after_epochs=1, **kw)
    assert len(part["epochs"]) == 1 and not part["complete"] and not (tmp_path / "b.pt").exists()
    resumed = train_probe(cfg, tmp_path / "b.pt", **kw)
    assert resumed["complete"] and len(resumed["epochs"]) == 2
    a = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [s["loss"] for s in full["steps"]] == [s["loss"] for s in resumed["steps"]]
    # a finished run is not retrained; a different config is refused
    again = train_probe(cfg, tmp_path / "b.pt", **kw)
    assert again["steps"] == resumed["steps"]
    with pytest.raises(ValueError, match=r"different config \(train.epochs: 2 -> 3\)"):
        train_probe(tiny_cfg(epochs=3, val_samples=0), tmp_path / "b.pt", **kw)
    # evaluation / upsampler-training settings do not matter for a trained probe
    same = train_probe(tiny_cfg(epochs=2, val_samples=0, eval__max_clicks=3,
                                upsampler__train_steps=7), tmp_path / "b.pt", **kw)
    assert same["steps"] == resumed["steps"]
    # trained on other frozen weights (e.g. a retrained upsampler): moved aside, retrained
    sp = tmp_path / "b.train_state.pt"
    st = torch.load(sp, weights_only=True)
    st["frozen"]["upsampler"]["weights_id"] = "trained bilinear (older checkpoint)"
    torch.save(st, sp)
    fresh = train_probe(tiny_cfg(epochs=2, val_samples=0), tmp_path / "b.pt",
                        stop_after_epochs=1, **kw)
    assert len(fresh["epochs"]) == 1
    assert (tmp_path / "b.stale.pt").is_file() and (tmp_path / "b.train_state.stale.pt").is_file()


def test_all_ignore_samples_are_skipped_not_nan(tmp_path, backbone):
    from probe_lib.losses import NormalizedFocalLoss
    from probe_lib.train import batch_loss, train_probe

    gt = torch.zeros(3, 1, 8, 8)
    gt[0, 0, 2:5, 2:5] = 1
    gt[1] = -1  # all ignore
    logits = torch.randn(3, 1, 8, 8, requires_grad=True)
    per = NormalizedFocalLoss(reduction="none")(logits, gt)
    loss, n_skip = batch_loss(per, gt)
    assert n_skip == 1 and torch.isfinite(loss)
    assert loss.item() == pytest.approx((per[0] + per[2]).item() / 2)
    loss.backward()
    assert (logits.grad[1] == 0).all()
    none_left, n = batch_loss(per[1:2], gt[1:2])
    assert n == 1 and none_left.item() == 0.0 and none_left.requires_grad

    # instances that are entirely ignored are removed from the training images and counted
    ds = ToyDataset(8, with_bad=True)
    hist = train_probe(tiny_cfg(epochs=1, val_samples=0), tmp_path / "c.pt", progress=False,
                       train_dataset=ds, backbone=backbone)
    e = hist["epochs"][0]
    assert e["objects_removed"] > 0
    assert all(np.isfinite(s["loss"]) for s in hist["steps"])


def test_unknown_names_fail_early(tmp_path, backbone):
    from probe_lib.train import train_probe

    with pytest.raises(ValueError, match="unknown injection"):
        train_probe(tiny_cfg(injection="sideways"), tmp_path / "x.pt", train_dataset=ToyDataset(4),
                    backbone=backbone)
    with pytest.raises(ValueError, match="unknown upsampler"):
        train_probe(tiny_cfg(upsampler__name="nope"), tmp_path / "x.pt",
                    train_dataset=ToyDataset(4), backbone=backbone)


def test_ranks_see_contiguous_slices():
    from probe_lib.train import _RankSlices

    r0 = list(_RankSlices(10, 4, 0, 2))
    r1 = list(_RankSlices(10, 4, 1, 2))
    assert r0 == [0, 1, 4, 5] and r1 == [2, 3, 6, 7]


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    """torchrun, 2 CPU processes (gloo), on a tiny synthetic set == one process, same global batch."""
    from probe_lib.data.synthetic import ensure_synthetic

    data = tmp_path / "data"
    ensure_synthetic(data / "synthetic", num_images=12, size=112, progress=False)
    sets = ["backbone__name=test_tiny", "backbone__weights=random", "upsampler__weights=random",
            f"image_size={S}", "epochs=1", "num_images=8", "batch_size=4", "val_samples=0",
            f"data__root={data}"]
    args = [a for s in sets for a in ("--set", s)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    single = subprocess.run([sys.executable, "-m", "probe_lib.train", "--preset", "small",
                             "--out", str(tmp_path / "single.pt"), "--no-progress", *args],
                            env=env, capture_output=True, text=True, timeout=600, check=False)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29517", "-m", "probe_lib.train", "--preset", "small",
                          "--out", str(tmp_path / "ddp.pt"), "--no-progress", *args],
                         env=env, capture_output=True, text=True, timeout=600, check=False)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a = torch.load(tmp_path / "single.pt", weights_only=True)
    b = torch.load(tmp_path / "ddp.pt", weights_only=True)
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], atol=2e-5, rtol=1e-4)
    hist = Path(tmp_path / "ddp.history.json").read_text()
    assert '"world_size": 2' in hist


def test_weighted_sampling_from_json(tmp_path):
    import json

    from probe_lib.train import _epoch_order, _sample_weights

    class Named:
        names = ("b", "a", "c")

    recs = [[0, "a", 0.0], [1, "b", 0.5], [2, "c", 1.0]]
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"records": recs}))
    cfg = make_config("full")  # SBD, weighted_sampling=True
    w = _sample_weights(Named(), cfg, json_path=path)
    expected = np.array([0.5**1.25, 1.0, 0.0])
    np.testing.assert_allclose(w, expected / expected.sum())
    order = _epoch_order(3, 20000, seed=0, epoch=0, weights=w)
    assert (order != 2).all()  # score 1 -> never drawn
    assert abs((order == 0).mean() - w[0]) < 0.02
    # full requires the file (iSegProbe always samples SBD with it); the error says how to get it
    with pytest.raises(FileNotFoundError, match="download.py sbd_weights"):
        _sample_weights(Named(), cfg, json_path=tmp_path / "missing.json")
    lax = make_config("full", require_sample_weights=False)
    assert _sample_weights(Named(), lax, json_path=tmp_path / "missing.json") is None
    assert _sample_weights(Named(), make_config("small"), json_path=path) is None  # synthetic
    plain = _epoch_order(5, 12, seed=0, epoch=1, weights=None)
    assert sorted(plain[:5]) == list(range(5))  # without weights: permutations, no repeats
