"""Upsampler-training objectives, EMA, views, evidence metrics and the resumable loop."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probe_lib.upsampler_training.downsampler import AttentionDownsampler, FeatSharpUncertainty
from probe_lib.upsampler_training.ema import EMA
from probe_lib.upsampler_training.evidence import boundary_recall, within_region_variance_ratio
from probe_lib.upsampler_training.featup import (
    FeatUpTask,
    random_projection,
    total_variation,
    uncertainty_reconstruction_loss,
)
from probe_lib.upsampler_training.lift import cosine_distance, lift_objective, strided_pyramid
from probe_lib.upsampler_training.loftup import (
    LoftUpStage1Task,
    LoftUpStage2Task,
    affinity_loss,
    affinity_loss_naive,
    mask_refine,
    pseudo_ground_truth,
)
from probe_lib.upsampler_training.loop import clip_schedule, fit, resume_path
from probe_lib.upsampler_training.views import (
    FeatUpJitter,
    apply_featup_jitter,
    sample_homography,
    warp,
)


# ---------------------------------------------------------------- tiny stand-ins
class TinyBackbone(nn.Module):
    """Frozen patchify conv: (B,3,H,W) -> (B,C,H/p,W/p)."""

    def __init__(self, dim=8, patch=4):
        super().__init__()
        self.embed_dim, self.patch_size = dim, patch
        self.proj = nn.Conv2d(3, dim, patch, patch)
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x):
        return self.proj(x)


class TinyUp(nn.Module):
    """Bilinear + a guided 3x3 correction; optional native 2x output (LiFT-like)."""

    def __init__(self, dim=8, factor=None):
        super().__init__()
        self.factor = factor
        self.conv = nn.Conv2d(dim + 3, dim, 3, padding=1)
        self.channelnorm = nn.Identity()

    def forward(self, feats, image, output_size="image"):
        if output_size == "native" and self.factor:
            size = (feats.shape[-2] * self.factor, feats.shape[-1] * self.factor)
        else:
            size = image.shape[-2:]
        up = F.interpolate(feats, size=size, mode="bilinear", align_corners=False)
        img = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        return up + self.conv(torch.cat([up, img], 1))


# ---------------------------------------------------------------- LiFT
def test_cosine_distance_hand_values():
    a = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    b = torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)
    assert cosine_distance(a, b).item() == pytest.approx(1.0)
    assert cosine_distance(a, a).item() == pytest.approx(0.0)
    assert cosine_distance(a, -a).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="equal shapes"):
        cosine_distance(a, torch.zeros(1, 2, 2, 1))


def test_strided_pyramid_is_exact_subsampling():
    img = torch.arange(64.0).view(1, 1, 8, 8).expand(1, 3, 8, 8)
    _i1, i2, i4 = strided_pyramid(img, 3)
    assert i2.shape[-1] == 4 and i4.shape[-1] == 2
    assert i2[0, 0, 1, 1] == img[0, 0, 2, 2] and i4[0, 0, 1, 1] == img[0, 0, 4, 4]
    with pytest.raises(ValueError, match="divisible"):
        strided_pyramid(torch.zeros(1, 3, 6, 6), 3)


def test_lift_objective_zero_for_perfect_upsampler_and_grad_flows():
    torch.manual_seed(0)
    bb, up = TinyBackbone(), TinyUp(factor=2)
    img = torch.rand(2, 3, 32, 32)
    i1, i2, i4 = strided_pyramid(img)
    f1, f2, f3 = bb(i1), bb(i2), bb(i4)
    out = lift_objective(up, f1, f2, f3, i2, i4)
    assert out["loss"] > 0
    out["loss"].backward()
    assert up.conv.weight.grad is not None and up.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.parameters())

    class Oracle(nn.Module):  # returns exactly the finer features -> loss 0
        def forward(self, feats, image, output_size="native"):
            return {f2.shape[-1]: f1, f3.shape[-1]: f2}[feats.shape[-1]]

    assert lift_objective(Oracle(), f1, f2, f3, i2, i4)["loss"].item() == pytest.approx(0, abs=1e-6)


# ---------------------------------------------------------------- FeatUp
def test_uncertainty_loss_hand_values():
    pred, target = torch.ones(1, 2, 1, 1), torch.zeros(1, 2, 1, 1)
    assert uncertainty_reconstruction_loss(pred, target, torch.ones(1, 1, 1, 1)).item() == \
        pytest.approx(0.5)
    s = torch.full((1, 1, 1, 1), math.e)
    assert uncertainty_reconstruction_loss(pred, target, s).item() == \
        pytest.approx(1 / (2 * math.e**2) + 1)


def test_random_projection_unit_columns_and_fresh_per_call():
    g = torch.Generator().manual_seed(0)
    p = random_projection(3, 16, 5, g)
    assert p.shape == (3, 16, 5)
    torch.testing.assert_close(p.norm(dim=1), torch.ones(3, 5))
    assert not torch.allclose(p, random_projection(3, 16, 5, g))


def test_total_variation_hand_value():
    x = torch.tensor([[0.0, 3.0], [0.0, 3.0]]).view(1, 1, 2, 2)
    # FeatUp's TVLoss: squared differences (two horizontal 3s, no vertical) / (b*c*h*w = 4)
    assert total_variation(x).item() == pytest.approx(18 / 4)
    assert total_variation(torch.ones(1, 3, 4, 4)).item() == 0


def test_attention_downsampler_averages_and_shapes():
    d = AttentionDownsampler(4, kernel=4, blur="gaussian").eval()
    x = torch.full((2, 4, 16, 16), 3.0)
    out = d(x)
    assert out.shape == (2, 4, 4, 4)
    torch.testing.assert_close(out, torch.full_like(out, 3.0))  # softmax weights sum to 1
    d9 = AttentionDownsampler(4, kernel=9, stride=2, blur="gaussian")
    assert d9(torch.rand(1, 4, 32, 32)).shape == (1, 4, 16, 16)
    with pytest.raises(ValueError):
        d(torch.rand(1, 5, 16, 16))


def test_featsharp_uncertainty_starts_at_zero():
    u = FeatSharpUncertainty(8)
    assert torch.count_nonzero(u(torch.rand(1, 8, 6, 6))) == 0


def test_featup_task_grads_only_in_trainable_parts():
    torch.manual_seed(0)
    bb, up = TinyBackbone(), TinyUp()
    task = FeatUpTask(up, bb, n_jitters=2, crf_samples=50)
    out = task.loss(torch.rand(2, 3, 32, 32), 0, torch.Generator().manual_seed(0))
    assert set(out) >= {"loss", "rec", "crf", "tv"} and out["tv"].item() == 0  # TV weight 0
    out["loss"].backward()
    assert up.conv.weight.grad.abs().sum() > 0
    assert task.downsampler.attention_net[1].weight.grad is not None
    assert task.scale_net.net.weight.grad is not None
    assert all(p.grad is None for p in bb.parameters())


# ---------------------------------------------------------------- views
def test_identity_jitter_and_homography():
    x = torch.rand(1, 3, 12, 12)
    torch.testing.assert_close(apply_featup_jitter(x, FeatUpJitter(0.0, 1.0, 0, 0, False)), x)
    torch.testing.assert_close(apply_featup_jitter(x, FeatUpJitter(0.0, 1.0, 0, 0, True)),
                               x.flip(-1))
    w, valid = warp(x, torch.eye(3))
    torch.testing.assert_close(w, x, atol=1e-5, rtol=0)
    assert valid.min() == 1
    h = sample_homography(torch.Generator().manual_seed(1))
    assert h.shape == (3, 3) and not torch.allclose(h, torch.eye(3))
    _, valid = warp(x, torch.diag(torch.tensor([2.0, 2.0, 1.0])))  # zoom out: border invalid
    assert 0 < valid.mean() < 1


# ---------------------------------------------------------------- LoftUp
def test_mask_refine_hand_example_later_masks_win_padding_skipped():
    f = torch.tensor([[0.0, 2.0], [4.0, 6.0]]).view(1, 1, 2, 2)
    top = torch.tensor([[1, 1], [0, 0]])
    right = torch.tensor([[0, 1], [0, 1]])
    pad = torch.full((2, 2), -1)
    empty = torch.zeros(2, 2, dtype=torch.long)
    masks = torch.stack([top, pad, right, empty]).view(1, 4, 2, 2).to(torch.int8)
    out = mask_refine(f, masks, 0.5)
    # top row mean 1 -> [0.5, 1.5]; then right column on the running map: [1.5, 6] mean 3.75
    expected = torch.tensor([[0.5, 2.625], [4.0, 4.875]]).view(1, 1, 2, 2)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(mask_refine(f, masks, 0.0), f)
    assert torch.equal(f, torch.tensor([[0.0, 2.0], [4.0, 6.0]]).view(1, 1, 2, 2))  # not in place
    bool_masks = torch.stack([top, right]).view(1, 2, 2, 2).bool()
    torch.testing.assert_close(mask_refine(f, bool_masks, 0.5), expected)


def test_missing_masks_give_clear_error():
    lr = torch.rand(1, 4, 2, 2)
    with pytest.raises(ValueError, match="needs class-agnostic masks"):
        pseudo_ground_truth(lr, None, (8, 8))
    with pytest.raises(ValueError, match="no sample in the batch has a non-empty mask"):
        pseudo_ground_truth(lr, torch.full((1, 3, 8, 8), -1, dtype=torch.int8), (8, 8))
    with pytest.raises(ValueError, match="do not match"):
        pseudo_ground_truth(lr, torch.ones(1, 3, 4, 4, dtype=torch.bool), (8, 8))
    task = LoftUpStage1Task(TinyUp(), TinyBackbone())
    with pytest.raises(ValueError, match="needs class-agnostic masks"):
        task.loss({"image": torch.rand(1, 3, 16, 16)}, 0, torch.Generator())


def test_affinity_loss_gram_equals_naive_and_hand_values():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 10, 10), torch.randn(2, 5, 10, 10)
    torch.testing.assert_close(affinity_loss(s, t), affinity_loss_naive(s, t), rtol=1e-4, atol=1e-6)
    assert affinity_loss(s, s).item() == pytest.approx(0, abs=1e-6)
    # two pixels, orthogonal in the student, parallel in the teacher: A differs by 1 off-diagonal
    st = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    te = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 2, 1, 2)
    assert affinity_loss(st, te, border=0).item() == pytest.approx(0.5, abs=1e-5)
    # the 10% border is dropped: changing it does not change the loss
    s2 = s.clone()
    s2[..., 0, :] = 100
    torch.testing.assert_close(affinity_loss(s2, t), affinity_loss(s, t))


def test_loftup_stage1_recipes_and_grads():
    torch.manual_seed(0)
    bb, up = TinyBackbone(), TinyUp()
    img = torch.rand(2, 3, 16, 16)
    masks = torch.zeros(2, 3, 16, 16, dtype=torch.int8)
    masks[:, 0, :8] = 1
    masks[:, 1, :, 8:] = 1
    masks[:, 2] = -1
    for recipe, opt in (("paper", torch.optim.AdamW), ("script", torch.optim.NAdam)):
        task = LoftUpStage1Task(up, bb, recipe=recipe, n_jitters=2)
        assert isinstance(task.make_optimizer(), opt)
        out = task.loss({"image": img, "masks": masks}, 0, torch.Generator().manual_seed(0))
        up.zero_grad()
        out["loss"].backward()
        assert up.conv.weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in bb.parameters())
    assert LoftUpStage1Task(up, bb, "paper").lr == 1e-3
    assert LoftUpStage1Task(up, bb, "script").lr == 1e-4
    with pytest.raises(ValueError, match="loftup_recipe"):
        LoftUpStage1Task(up, bb, recipe="other")


def test_loftup_stage2_teacher_gets_no_grad_and_ema_after_backward():
    torch.manual_seed(0)
    bb, up = TinyBackbone(), TinyUp()
    task = LoftUpStage2Task(up, bb, recipe="script", student_sizes=(16,), ema_every=1)
    img = torch.rand(2, 3, 32, 32)
    masks = torch.zeros(2, 2, 32, 32, dtype=torch.bool)
    masks[:, 0, :16] = True
    out = task.loss({"image": img, "masks": masks}, 1, torch.Generator().manual_seed(0))
    assert out["affinity"] >= 0 and out["rec"] != 0
    out["loss"].backward()
    assert up.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in task.teacher.parameters())
    before = task.teacher.conv.weight.clone()
    task.after_backward(1)
    expected = 0.99 * before + 0.01 * up.conv.weight.detach()
    torch.testing.assert_close(task.teacher.conv.weight, expected)


# ---------------------------------------------------------------- EMA
def test_ema_update_rule_and_schedule():
    s = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        s.weight.fill_(1.0)
    ema = EMA(s, decay=0.5, update_every=2)
    with torch.no_grad():
        s.weight.fill_(3.0)
    assert not ema.update(s, 0) and not ema.update(s, 1)
    assert torch.all(ema.teacher.weight == 1.0)
    assert ema.update(s, 2)
    assert torch.allclose(ema.teacher.weight, torch.full((1, 2), 2.0))  # 0.5*1 + 0.5*3
    ema.update(s, 4)
    assert torch.allclose(ema.teacher.weight, torch.full((1, 2), 2.5))
    assert not ema.teacher.weight.requires_grad
    with pytest.raises(ValueError):
        EMA(s, decay=1.5)


# ---------------------------------------------------------------- evidence metrics
def test_evidence_metrics_prefer_sharp_features():
    labels = torch.zeros(16, 16, dtype=torch.long)
    labels[:, 8:] = 1
    sharp = torch.zeros(2, 16, 16)
    sharp[0, :, :8] = 1
    sharp[1, :, 8:] = 1
    blurry = F.interpolate(F.avg_pool2d(sharp[None], 4), size=(16, 16), mode="bilinear",
                           align_corners=False)[0] + 0.05
    assert within_region_variance_ratio(sharp, labels) == pytest.approx(0, abs=1e-6)
    assert within_region_variance_ratio(blurry, labels) > 0.05
    assert boundary_recall(sharp, labels) == 1.0
    assert boundary_recall(torch.rand(2, 16, 16), labels) < 0.9
    with pytest.raises(ValueError):
        within_region_variance_ratio(sharp, labels[:8])


# ---------------------------------------------------------------- the loop
class _TinyTask:
    name = "tiny"

    def __init__(self):
        torch.manual_seed(0)
        self.upsampler = TinyUp()
        self.backbone = TinyBackbone()
        self.drop = nn.Dropout(0.3)  # exercises the per-step re-seeded global RNG

    def aux_modules(self):
        return {}

    def param_groups(self):
        return [{"params": list(self.upsampler.parameters()), "lr": 1e-2}]

    def loss(self, batch, step, gen):
        noise = torch.randn(batch.shape, generator=gen) * 0.01
        img = (batch + noise).clamp(0, 1)
        lr = self.backbone(img)
        out = self.drop(self.upsampler(lr, img))
        return {"loss": ((out - 1.0) ** 2).mean()}


def _batch(step):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.rand(2, 3, 16, 16, generator=g)


def _run(path, steps=8, callbacks=None):
    task = _TinyTask()
    opt = torch.optim.NAdam(task.param_groups())
    res = fit(task, _batch, steps=steps, optimizer=opt, checkpoint=path, config={"k": 1},
              backbone_id="tiny", log_every=1, save_every=2, progress=False,
              grad_clip=clip_schedule(1e-2, 2, None), callbacks=callbacks)
    return task, res


def test_fit_resume_after_interrupt_is_bit_identical(tmp_path):
    ref_task, ref = _run(tmp_path / "ref.pt")
    assert ref.history[-1]["loss"] < ref.history[0]["loss"]

    def interrupt(step, logs):
        if step == 4:
            raise KeyboardInterrupt

    path = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        _run(path, callbacks=[interrupt])
    assert resume_path(path).exists() and not path.exists()
    task, res = _run(path)
    assert res.resumed_from == 4
    for k, v in ref_task.upsampler.state_dict().items():
        assert torch.equal(v, task.upsampler.state_dict()[k]), k
    assert [h["loss"] for h in res.history] == [h["loss"] for h in ref.history]
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert {"state_dict", "name", "config", "backbone", "step", "metrics"} <= set(ck)
    assert ck["step"] == 8 and ck["complete"] and not resume_path(path).exists()
    assert (tmp_path / "run.losses.csv").read_text().startswith("step")
    # a complete checkpoint with the same config is loaded, not retrained
    _, again = _run(path)
    assert again.skipped


def test_fit_rejects_bad_steps(tmp_path):
    task = _TinyTask()
    with pytest.raises(ValueError, match="steps"):
        fit(task, _batch, steps=0, optimizer=torch.optim.SGD(task.param_groups()),
            checkpoint=None)


# ---------------------------------------------------------------- FeatSharp pieces
def test_seam_weights_and_weighted_view_loss():
    from probe_lib.upsampler_training.featsharp import seam_weight_map, weighted_view_loss

    w = seam_weight_map(8, 2, 2.0, band=1)
    assert w[3, 0] == 2 and w[4, 0] == 2 and w[0, 3] == 2 and w[0, 0] == 1 and w[2, 2] == 1
    pred, tgt = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    tgt[0, :, 0, 0] = 1.0  # error 1 at one pixel
    wt = torch.tensor([[2.0, 1.0], [1.0, 0.0]]).view(1, 1, 2, 2)  # last pixel invalid
    assert weighted_view_loss(pred, tgt, wt).item() == pytest.approx(2 / 4)
    u = torch.full((1, 1, 2, 2), math.log(2.0))
    expected = (2 * (0.5 + math.log(2) / 2) + 2 * (math.log(2) / 2)) / 4
    assert weighted_view_loss(pred, tgt, wt, u).item() == pytest.approx(expected)


def test_loftup_reduced_output_grid():
    torch.manual_seed(0)
    bb, up = TinyBackbone(), TinyUp()
    masks = torch.zeros(2, 2, 32, 32, dtype=torch.bool)
    masks[:, 0, :16] = True
    t1 = LoftUpStage1Task(up, bb, recipe="script", n_jitters=1, out_scale=0.5)
    out = t1.loss({"image": torch.rand(2, 3, 32, 32), "masks": masks}, 0, torch.Generator())
    assert torch.isfinite(out["loss"])
    t2 = LoftUpStage2Task(up, bb, recipe="paper", student_sizes=(16,), out_scale=0.5)
    tg = t2.teacher_targets(torch.rand(2, 3, 32, 32), masks, 16, [(0, 16)])
    assert tg[0].shape[-1] == 4  # crop 16 of 32 -> a quarter of the 8 x 8 student output
    assert torch.isfinite(t2.loss({"image": torch.rand(2, 3, 32, 32), "masks": masks}, 0,
                                  torch.Generator())["loss"])
    with pytest.raises(ValueError, match="out_scale"):
        LoftUpStage1Task(up, bb, out_scale=0.3)


def test_featsharp_task_on_tiny_backbone_grads_and_phis_required():
    from probe_lib.backbones import create_backbone
    from probe_lib.upsampler_training.featsharp import FeatSharpTask, fit_phi_s_on_images
    from probe_lib.upsamplers import create_upsampler

    torch.manual_seed(0)
    bb = create_backbone("test_tiny")
    up = create_upsampler("featsharp", dim=bb.embed_dim, backbone=bb, trainable=True,
                          resolution=56, hidden=64)
    with pytest.raises(ValueError, match="fit PHI-S"):
        FeatSharpTask(up, bb)
    fit_phi_s_on_images(up, bb, torch.rand(4, 3, 56, 56))
    task = FeatSharpTask(up, bb, n_views=2)
    out = task.loss(torch.rand(2, 3, 112, 112), 0, torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert up.bias_buffer.grad is not None and up.bias_buffer.grad.abs().sum() > 0
    assert any(p.grad is not None for n, p in up.named_parameters() if n.startswith("jbu."))
    assert all(p.grad is None for p in bb.parameters())
    assert len(task.param_groups()) == 2 and task.param_groups()[1]["lr"] == 1e-4


def test_step_indices_deterministic_epochs_and_pad_masks():
    from probe_lib.upsampler_training.data import pad_masks, step_indices

    a = [i for s in range(5) for i in step_indices(s, 10, 2, seed=3)]
    assert sorted(a) == list(range(10))  # one epoch = a permutation
    assert step_indices(7, 10, 2, seed=3) == step_indices(7, 10, 2, seed=3)
    assert step_indices(0, 10, 2, seed=3) != step_indices(0, 10, 2, seed=4)
    m = pad_masks([torch.ones(2, 4, 4, dtype=torch.bool), torch.zeros(0, 4, 4, dtype=torch.bool)])
    assert m.shape == (2, 2, 4, 4) and m.dtype == torch.int8
    assert (m[0] == 1).all() and (m[1] == -1).all()


def test_trained_lift_checkpoint_loads_through_create_upsampler(tmp_path):
    from probe_lib.backbones import create_backbone
    from probe_lib.upsampler_training.lift import LiftTask, lift_features
    from probe_lib.upsamplers import create_upsampler

    torch.manual_seed(0)
    bb = create_backbone("test_tiny")
    up = create_upsampler("lift", dim=bb.embed_dim, trainable=True)
    feats = lift_features(bb, torch.rand(2, 3, 112, 112))
    task = LiftTask(up)
    res = fit(task, lambda s: feats, steps=3, optimizer=torch.optim.Adam(task.param_groups()),
              checkpoint=tmp_path / "lift-x.pt", config={"a": 1}, backbone_id=bb.weights_id,
              progress=False)
    loaded = create_upsampler("lift", dim=bb.embed_dim, weights=res.checkpoint)
    for k, v in up.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert "trained" in loaded.weights_id


def test_featup_backward_per_jitter_equals_backward_of_sum():
    torch.manual_seed(0)
    bb, up = TinyBackbone(), TinyUp()
    task = FeatUpTask(up, bb, n_jitters=3, crf_samples=30)
    images = torch.rand(2, 3, 32, 32)
    grads = []
    for manual in (False, True):
        for p in task.param_groups()[0]["params"]:
            p.grad = None
        torch.manual_seed(5)  # window dropout draws come from the global RNG in both modes
        gen = torch.Generator().manual_seed(1)
        if manual:
            out = task.loss(images, 0, gen, backward=lambda part: part.backward())
            assert not out["loss"].requires_grad  # already back-propagated, logged only
        else:
            out = task.loss(images, 0, gen)
            out["loss"].backward()
        grads.append(up.conv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


def test_loftup_jitter_without_resize_back_keeps_view_size_patch_aligned():
    from probe_lib.upsampler_training.views import LoftUpJitter, apply_loftup_jitter

    x = torch.rand(1, 3, 28, 28)
    j = LoftUpJitter(pad_y=4 / 28, pad_x=0.0, zoom_y=1.1, zoom_x=1.0)
    assert apply_loftup_jitter(x, j).shape[-2:] == (28, 28)
    y = apply_loftup_jitter(x, j, resize_back=False, multiple=7)
    assert y.shape[-2:] == (35, 28)  # (28 + 8) * 1.1 = 39.6 -> 40, cropped to 35


def test_train_tiny_saves_apart_and_labels_its_weights(tmp_path, monkeypatch):
    # notebooks 04/05 train a tiny model when 06-08 have not run: it must never take the place of
    # the real checkpoint (the sweep skips training when <name>-<preset>.pt exists)
    from probe_lib.backbones import create_backbone
    from probe_lib.config import make_config
    from probe_lib.upsampler_training import recipes
    from probe_lib.upsampler_training.loop import TrainResult
    from probe_lib.upsamplers import create_upsampler
    from probe_lib.upsamplers.base import save_upsampler_checkpoint
    from probe_lib.utils import checkpoint_path

    monkeypatch.setenv("PROBE_LIB_CACHE", str(tmp_path))
    bb = create_backbone("test_tiny")
    calls = []

    def fake_stage1(cfg, backbone, *, steps, checkpoint, overwrite, progress):
        calls.append({"steps": steps, "checkpoint": checkpoint, "overwrite": overwrite})
        up = create_upsampler("loftup", dim=backbone.embed_dim, trainable=True)
        save_upsampler_checkpoint(up, checkpoint, config=cfg, backbone="tiny", step=steps)
        return up, TrainResult([], {}, checkpoint, 0.0)

    monkeypatch.setitem(recipes._TINY, "loftup", fake_stage1)
    up, res = recipes.train_tiny("loftup", make_config("small"), bb, steps=3)
    tiny_path = checkpoint_path("upsampler", "loftup_tiny", "small")
    assert calls == [{"steps": 3, "checkpoint": tiny_path, "overwrite": True}]
    assert tiny_path.is_file() and not checkpoint_path("upsampler", "loftup", "small").exists()
    assert "loftup_tiny-small.pt" in up.weights_id and "step 3" in up.weights_id
    assert not up.training and res.checkpoint == tiny_path
    with pytest.raises(ValueError, match="no tiny recipe"):
        recipes.train_tiny("lift", make_config("small"), bb)
    with pytest.raises(ValueError, match="steps"):
        recipes.train_tiny("loftup", make_config("small"), bb, steps=0)


def test_heldout_stage2_loss_is_fixed_and_separates_students():
    # notebook 07's check: a held-out loss on fixed images/crops, unlike the per-step losses
    import copy

    from probe_lib.config import make_config
    from probe_lib.upsampler_training.recipes import heldout_stage2_loss

    torch.manual_seed(0)
    cfg = make_config("small", upsampler__train_image_size=32)
    bb, teacher = TinyBackbone(), TinyUp().eval()
    same = copy.deepcopy(teacher).train()

    class NoiseUp(TinyUp):  # features with no image structure: which pixels look alike is random
        def forward(self, feats, image, output_size="image"):
            g = torch.Generator().manual_seed(1)
            return torch.randn(super().forward(feats, image, output_size).shape, generator=g)

    other = NoiseUp()
    state = torch.get_rng_state()
    a = heldout_stage2_loss(same, teacher, bb, cfg, n_images=2)
    assert torch.equal(torch.get_rng_state(), state)  # the notebook's random draws are untouched
    assert a == heldout_stage2_loss(same, teacher, bb, cfg, n_images=2)  # fixed inputs and crops
    assert same.training and not teacher.training  # modes restored
    b = heldout_stage2_loss(other, teacher, bb, cfg, n_images=2)
    assert 0 <= a < b / 10, (a, b)  # the teacher's weights match its targets, noise does not
