"""Crop bank, frozen-feature cache and the short-schedule learning rate of probe training."""

import math

import numpy as np
import pytest
import torch

from probe_lib.config import make_config
from probe_lib.data.is_datasets import ISSample

S = 56


class _Toy:
    """Red rectangles on dark noise (the rungs of the sanity ladder use the same kind of data)."""

    def __init__(self, n, size=S, seed=0):
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            img = (rng.random((size, size, 3)) * 60).astype(np.uint8)
            obj = np.zeros((size, size), np.int32)
            h, w = rng.integers(size // 3, size // 2, size=2)
            r, c = rng.integers(0, size - h), rng.integers(0, size - w)
            obj[r:r + h, c:c + w] = 1
            img[obj > 0] = (230, 40, 40)
            self.items.append(ISSample(img, obj, np.zeros((size, size), bool), f"toy{i}"))

    def __len__(self):
        return len(self.items)

    def get_sample(self, i):
        return self.items[i]


@pytest.fixture(scope="module")
def backbone():
    from probe_lib.backbones import create_backbone

    return create_backbone("test_tiny", weights="random", verbose=False)


def _probe(backbone, upsampler="bilinear", injection="late_highres", head="lean_conv"):
    from probe_lib.model import build_probe

    cfg = make_config("small", backbone__name="test_tiny", backbone__weights="random",
                      upsampler__name=upsampler, upsampler__weights="random", image_size=S,
                      head=head, injection=injection, upsampler_precision="fp32")
    torch.manual_seed(0)
    return build_probe(cfg, backbone=backbone)


@pytest.mark.parametrize("head", ["lean_conv", "convhead", "linear"])
def test_head_adds_resized_tokens_exactly(head):
    from probe_lib.model import build_head

    torch.manual_seed(0)
    h = build_head(head, 24)
    x = torch.randn(2, 24, 28, 28)
    t = torch.randn(2, 24, 4, 4)
    explicit = h(x + torch.nn.functional.interpolate(t, size=(28, 28), mode="bilinear",
                                                     align_corners=True))
    torch.testing.assert_close(h(x, added=t), explicit, atol=1e-5, rtol=1e-5)


def test_bank_crops_are_fixed_and_clicks_change_per_epoch():
    from probe_lib.train import ProbeTrainSet

    ts = ProbeTrainSet(_Toy(4), S, seed=3, bank_size=6, num_images=4)
    ts.set_epoch(0, np.arange(6))
    a = ts[1]
    ts.set_epoch(1, np.arange(6))
    b = ts[1]
    assert a["crop"] == b["crop"] == 1
    assert torch.equal(a["image"], b["image"])  # the crop is the bank's, whatever the epoch
    assert not torch.equal(a["points"], b["points"])  # the clicks are drawn anew
    again = ProbeTrainSet(_Toy(4), S, seed=3, bank_size=6, num_images=4)
    assert np.array_equal(again.crop(5)[0], ts.crop(5)[0])  # same in another process
    assert not np.array_equal(ts.crop(1)[0], ts.crop(5)[0])  # crops 1 and 5: image 1, two augs
    with pytest.raises(IndexError, match="outside the bank of 6"):
        ts.crop(6)


@pytest.mark.parametrize("upsampler", ["bilinear", "lift"])
@pytest.mark.parametrize("bf16", [False, True])
def test_cached_path_gives_the_same_loss_and_gradients(tmp_path, backbone, upsampler, bf16):
    from probe_lib.feature_cache import FeatureCache, cache_key
    from probe_lib.losses import NormalizedFocalLoss
    from probe_lib.train import ProbeTrainSet, batch_loss

    model = _probe(backbone, upsampler).eval()
    ts = ProbeTrainSet(_Toy(4), S, seed=0, bank_size=8, num_images=4)
    ts.set_epoch(0, np.array([5, 2, 7, 0]))
    items = [ts[i] for i in range(4)]
    image = torch.stack([it["image"] for it in items])
    points = torch.stack([it["points"] for it in items])
    gt = torch.stack([it["gt"] for it in items])
    key = cache_key(backbone, S, [ts.crop(j)[0] for j in range(8)])
    fc = FeatureCache(model, key, root=tmp_path, max_memory_bytes=10**9 if bf16 else 0)
    fc.get([0, 1, 2, 3, 4, 5, 6, 7],
           torch.stack([torch.from_numpy(ts.crop(j)[0]).permute(2, 0, 1).float() / 255
                        for j in range(8)]))  # fill the cache in bank order
    loss_fn = NormalizedFocalLoss(alpha=0.5, gamma=2.0, reduction="none")

    def loss_and_grads(cache):
        model.zero_grad(set_to_none=True)
        logits = model(image, torch.zeros_like(gt), points, cache=cache)
        loss, _ = batch_loss(loss_fn(logits, gt), gt)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.trainable_parameters()]

    l0, g0 = loss_and_grads(None)  # uncached: encode_image on this batch
    l1, g1 = loss_and_grads(fc.get([it["crop"] for it in items], image))
    tol = 2e-2 if bf16 else 1e-5  # bf16 keeps ~3 significant digits of the upsampled features
    torch.testing.assert_close(l1, l0, atol=tol, rtol=tol)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, atol=tol * max(1.0, float(b.abs().max())), rtol=tol)
    assert fc.hits == 4 and fc.misses == 8
    assert (len(fc.hr) == 8) == bf16


def test_disk_cache_reused_invalidated_and_bounded(tmp_path, backbone):
    from probe_lib.feature_cache import FeatureCache, cache_key

    model = _probe(backbone).eval()
    crops = [np.full((S, S, 3), v, np.uint8) for v in (10, 20, 30)]
    image = torch.stack([torch.from_numpy(c).permute(2, 0, 1).float() / 255 for c in crops])
    key = cache_key(backbone, S, crops)
    fc = FeatureCache(model, key, root=tmp_path)
    first = fc.get([0, 1, 2], image)["feats"]
    assert fc.save() == tmp_path / f"{key}.pt" and fc.save() is None  # nothing new: no rewrite
    again = FeatureCache(model, key, root=tmp_path)
    assert again.loaded_from_disk
    torch.testing.assert_close(again.get([0, 1, 2], image)["feats"], first, atol=0, rtol=0)
    assert again.misses == 0 and again.hits == 3
    # other crops, other input size or other backbone weights: another key
    assert cache_key(backbone, S, crops[:2]) != key
    assert cache_key(backbone, S + 14, crops) != key
    crops[1] = crops[1].copy()
    crops[1][0, 0, 0] += 1
    assert cache_key(backbone, S, crops) != key
    # bounded: the oldest file goes when the folder is over its budget
    size = (tmp_path / f"{key}.pt").stat().st_size
    other = FeatureCache(model, "another", root=tmp_path, max_disk_bytes=int(1.5 * size))
    other.get([0, 1, 2], image)
    other.save()
    assert (tmp_path / "another.pt").is_file() and not (tmp_path / f"{key}.pt").exists()


def test_early_injection_refuses_the_cache(backbone):
    from probe_lib.feature_cache import FeatureCache

    with pytest.raises(ValueError, match="late injection only"):
        FeatureCache(_probe(backbone, injection="early"), None)


def test_lr_factor_warmup_cosine_and_multistep():
    from probe_lib.train import lr_factor

    kw = {"total_steps": 100, "steps_per_epoch": 10, "milestones": (5,), "gamma": 0.1}
    assert lr_factor(0, warmup=10, schedule="cosine", **kw) == pytest.approx(
        0.1 * 0.5 * (1 + math.cos(0)))
    assert lr_factor(9, warmup=10, schedule="cosine", **kw) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 9 / 100)))
    assert lr_factor(100, warmup=10, schedule="cosine", **kw) == pytest.approx(0.0)
    # without warm-up, "multistep" is MultiStepLR stepped once per epoch
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    ms = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[5], gamma=0.1)
    for t in range(100):
        if t and t % 10 == 0:
            ms.step()
        assert lr_factor(t, warmup=0, schedule="multistep", **kw) == pytest.approx(
            opt.param_groups[0]["lr"])


def test_bank_training_with_the_cache_runs_and_resumes(tmp_path, backbone):
    # whether it learns is the sanity ladder's business (tests/test_sanity_ladder.py)
    from probe_lib.train import train_probe

    base = {"backbone__name": "test_tiny", "backbone__weights": "random",
            "upsampler__name": "bilinear", "upsampler__weights": "random", "image_size": S,
            "head": "lean_conv", "injection": "late_highres", "epochs": 4, "num_images": 8,
            "batch_size": 4, "val_samples": 8, "lr": 3e-3, "num_workers": 0, "crop_bank": 16,
            "warmup_steps": 4, "lr_schedule": "cosine", "click_encoder": "patch_embed"}
    cfg = make_config("small", **base)
    kw = {"progress": False, "train_dataset": _Toy(8), "val_dataset": _Toy(8, seed=1),
          "backbone": backbone}
    full = train_probe(cfg, tmp_path / "a.pt", **kw)
    assert len(full["steps"]) == 16  # 16 crops / batch 4 per epoch
    losses = [s["loss"] for s in full["steps"]]
    assert all(np.isfinite(losses)) and full["epochs"][-1]["val_loss"] != full["val_before"][
        "val_loss"]
    lrs = [s["lr"] for s in full["steps"]]
    assert lrs[0] == pytest.approx(3e-3 / 4) and lrs[3] > lrs[-1]  # warm-up, then cosine
    part = train_probe(cfg, tmp_path / "b.pt", stop_after_epochs=2, **kw)
    assert not part["complete"]
    resumed = train_probe(cfg, tmp_path / "b.pt", **kw)
    assert [s["loss"] for s in resumed["steps"]] == losses
