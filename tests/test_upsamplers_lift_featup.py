"""LiFT and FeatUp specifics: parameter counts, official key layouts loaded strictly from
synthetic checkpoints, exactness of the pure-torch adaptive convolution, JBU kernel properties,
and the per-image implicit fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from probe_lib.upsamplers import create_upsampler
from probe_lib.upsamplers.featup import (
    FeatUpJBU,
    JBUStage,
    adaptive_conv,
    adaptive_conv_reference,
)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# Official key names and shapes at C = 384 (the official LiFT and FeatUp checkpoints).
LIFT_KEYS = {
    "up1.up.weight": (416, 208, 2, 2), "up1.up.bias": (208,),
    "up1.conv_1.double_conv.0.weight": (192, 240, 3, 3),
    "up1.conv_1.double_conv.3.weight": (192, 192, 3, 3),
    "outc.weight": (384, 192, 1, 1), "outc.bias": (384,),
    "image_convs_1.0.weight": (32, 3, 3, 3), "image_convs_1.0.bias": (32,),
    "image_convs_1.3.weight": (32, 32, 3, 3), "image_convs_1.3.bias": (32,),
    "image_convs_2.0.weight": (32, 32, 3, 3), "image_convs_2.0.bias": (32,),
}
for _bn in ("up1.conv_1.double_conv.1", "up1.conv_1.double_conv.4"):
    for _s in ("weight", "bias", "running_mean", "running_var"):
        LIFT_KEYS[f"{_bn}.{_s}"] = (192,)
    LIFT_KEYS[f"{_bn}.num_batches_tracked"] = ()
for _bn in ("image_convs_1.1", "image_convs_1.4", "image_convs_2.1"):
    for _s in ("weight", "bias", "running_mean", "running_var"):
        LIFT_KEYS[f"{_bn}.{_s}"] = (32,)
    LIFT_KEYS[f"{_bn}.num_batches_tracked"] = ()

JBU_KEYS = {"fixup_proj.1.weight": (384, 384, 1, 1), "fixup_proj.1.bias": (384,)}
for _i in range(1, 5):
    JBU_KEYS.update({
        f"up{_i}.range_temp": (), f"up{_i}.sigma_spatial": (),
        f"up{_i}.range_proj.0.weight": (32, 3, 1, 1), f"up{_i}.range_proj.0.bias": (32,),
        f"up{_i}.range_proj.3.weight": (32, 32, 1, 1), f"up{_i}.range_proj.3.bias": (32,),
        f"up{_i}.fixup_proj.0.weight": (49, 52, 1, 1), f"up{_i}.fixup_proj.0.bias": (49,),
        f"up{_i}.fixup_proj.3.weight": (49, 49, 1, 1), f"up{_i}.fixup_proj.3.bias": (49,),
    })


def _random_like(shapes: dict, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(100)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=g) + 0.5
        else:
            out[k] = 0.1 * torch.randn(s, generator=g)
    return out


def test_parameter_counts_match_the_releases():
    assert n_params(create_upsampler("lift")) == 1_187_280
    assert n_params(create_upsampler("featup_jbu", featup_channelnorm=False)) == 172_772
    assert n_params(create_upsampler("featup_jbu")) == 172_772 + 768  # + ChannelNorm(384)
    assert n_params(create_upsampler("featup_implicit")) == 73_098


def test_official_key_layouts():
    lift = {k: tuple(v.shape) for k, v in create_upsampler("lift").state_dict().items()}
    assert lift == LIFT_KEYS
    jbu = create_upsampler("featup_jbu", featup_channelnorm=False).state_dict()
    assert {k: tuple(v.shape) for k, v in jbu.items()} == JBU_KEYS


def test_official_lift_checkpoint_loads_strictly(tmp_path):
    sd = {"module." + k: v for k, v in _random_like(LIFT_KEYS).items()}
    path = tmp_path / "lift_dinov2.pth"
    torch.save(sd, path)
    up = create_upsampler("lift", weights=path)
    assert "official" in up.weights_id
    for k, v in up.state_dict().items():
        assert torch.equal(v, sd["module." + k]), k
    # a checkpoint for another width fails with the offending keys named
    with pytest.raises(ValueError, match=r"dim=256(.|\n)*mis-shaped keys \(14\): up1.up.weight"):
        create_upsampler("lift", dim=256, weights=path)


def _featup_lightning_ckpt(with_norm: bool = True) -> dict:
    sd = {"upsampler." + k: v for k, v in _random_like(JBU_KEYS, seed=1).items()}
    sd["model.0.model.cls_token"] = torch.zeros(1, 1, 384)  # the DINOv2 copy is ignored
    sd["model.0.model.blocks.0.norm1.weight"] = torch.ones(384)
    if with_norm:
        sd["model.1.norm.weight"] = 1 + 0.01 * torch.randn(384)
        sd["model.1.norm.bias"] = 0.01 * torch.randn(384)
    sd["downsampler.kernel_bias"] = torch.zeros(14, 14)
    sd["downsampler.net.1.weight"] = torch.zeros(1, 384, 1, 1)
    sd["scale_net.weight"] = torch.zeros(1, 384, 1, 1)
    sd["scale_net.bias"] = torch.zeros(1)
    return {"state_dict": sd, "epoch": 0, "global_step": 1000,
            "hyper_parameters": {"model_type": "dinov2", "activation_type": "token"}}


def test_official_featup_lightning_checkpoint_loads_strictly(tmp_path):
    ck = _featup_lightning_ckpt()
    path = tmp_path / "dinov2_jbu_stack_cocostuff.ckpt"
    torch.save(ck, path)
    sd = ck["state_dict"]
    up = create_upsampler("jbu_featup", weights=path)  # iSegProbe's alias
    assert up.name == "featup_jbu" and "official" in up.weights_id
    assert torch.equal(up.channelnorm.norm.weight, sd["model.1.norm.weight"])
    assert torch.equal(up.up3.fixup_proj[3].weight, sd["upsampler.up3.fixup_proj.3.weight"])
    assert torch.equal(up.fixup_proj[1].bias, sd["upsampler.fixup_proj.1.bias"])
    # iSegProbe's variant: same checkpoint, ChannelNorm dropped
    up2 = create_upsampler("featup_jbu", weights=path, featup_channelnorm=False)
    assert not hasattr(up2, "channelnorm")
    feats, image = torch.randn(1, 384, 2, 2), torch.rand(1, 3, 28, 28)
    with torch.no_grad():
        a, b = up(feats, image), up2(feats, image)
    assert a.shape == b.shape and not torch.allclose(a, b)
    # the no-norm release has no model.1.norm: loading it with ChannelNorm on names the keys
    path2 = tmp_path / "no_norm.ckpt"
    torch.save(_featup_lightning_ckpt(with_norm=False), path2)
    with pytest.raises(ValueError, match=r"missing keys \(2\): channelnorm.norm.weight"):
        create_upsampler("featup_jbu", weights=path2)
    create_upsampler("featup_jbu", weights=path2, featup_channelnorm=False)


def test_adaptive_conv_exact_against_naive_reference():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(2, 5, 7 + 6, 9 + 6, generator=g)
    ker = torch.randn(2, 49, 7, 9, generator=g)
    ref = adaptive_conv_reference(src, ker)
    with torch.no_grad():
        torch.testing.assert_close(adaptive_conv(src, ker), ref, rtol=1e-5, atol=1e-5)
    src.requires_grad_(True)
    out = adaptive_conv(src, ker)  # differentiable path gives the same numbers
    torch.testing.assert_close(out.detach(), ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    # each source pixel receives the sum of the taps that read it
    assert torch.isfinite(src.grad).all() and src.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="kernel must have shape"):
        adaptive_conv(src.detach(), ker[:, :48])


def test_jbu_stage_matches_a_naive_per_pixel_implementation():
    torch.manual_seed(0)
    stage = JBUStage().eval()
    with torch.no_grad():
        stage.range_temp.fill_(0.7)
        stage.sigma_spatial.fill_(0.6)
    src, guid = torch.randn(1, 4, 3, 4), torch.randn(1, 3, 6, 8)
    with torch.no_grad():
        out = stage(src, guid)
        # naive: per output pixel, loop over the 7x7 neighbourhood
        q = stage.range_proj(guid)[0]
        qp = F.pad(q[None], [3] * 4, mode="reflect")[0]
        up = F.pad(F.interpolate(src, size=(6, 8), mode="bicubic", align_corners=False),
                   [3] * 4, mode="reflect")[0]
        d = torch.linspace(-1, 1, 7)
        ref = torch.zeros(4, 6, 8)
        for y in range(6):
            for x in range(8):
                logits = torch.stack([torch.dot(qp[:, y + i, x + j], q[:, y, x])
                                      * torch.exp(torch.tensor(0.7))
                                      for i in range(7) for j in range(7)])
                rng = torch.softmax(logits, 0)
                sp = torch.stack([torch.exp(-(d[i] ** 2 + d[j] ** 2) / (2 * 0.6 ** 2))
                                  for i in range(7) for j in range(7)])
                k = rng * sp
                k = k / k.sum()
                fix = stage.fixup_proj(torch.cat([k, guid[0, :, y, x]]).view(1, 52, 1, 1))
                k = k + 0.1 * fix.view(49)
                ref[:, y, x] = (up[:, y:y + 7, x:x + 7].reshape(4, 49) * k).sum(1)
    torch.testing.assert_close(out[0], ref, rtol=1e-5, atol=1e-5)


def test_jbu_kernel_properties_and_constant_preservation():
    torch.manual_seed(0)
    stage = JBUStage().eval()
    guid = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        rng = stage.range_kernel(guid)
        torch.testing.assert_close(rng.sum(1), torch.ones(1, 8, 8))
        sp = stage.spatial_kernel().view(7, 7)
        assert sp[3, 3] == 1 and torch.allclose(sp, sp.T) and sp[0, 0] < sp[3, 2]
        for m in (stage.fixup_proj[3],):  # no correction -> taps sum to one
            m.weight.zero_()
            m.bias.zero_()
        torch.testing.assert_close(stage.kernel(guid).sum(1), torch.ones(1, 8, 8))
        const = torch.full((1, 5, 4, 4), 2.5)
        torch.testing.assert_close(stage(const, guid), torch.full((1, 5, 8, 8), 2.5))


def test_jbu_is_edge_aware_with_a_sharp_range_kernel():
    """With a steep range term whose keys are orthogonal on the two sides of an image edge,
    features across the edge mix much less than bicubic upsampling mixes them."""
    stage = JBUStage().eval()
    with torch.no_grad():
        # key = (3, 0, ...) where the guidance is 0 and (0, 3, ...) where it is 2
        stage.range_proj[0].weight.zero_()
        stage.range_proj[0].bias.zero_()
        stage.range_proj[0].weight[0, 0, 0, 0], stage.range_proj[0].bias[0] = -3.0, 3.0
        stage.range_proj[0].weight[1, 0, 0, 0], stage.range_proj[0].bias[1] = 3.0, -3.0
        stage.range_proj[3].weight.zero_()
        stage.range_proj[3].weight[:, :, 0, 0] = torch.eye(32)
        stage.range_proj[3].bias.zero_()
        stage.range_temp.fill_(3.0)
        stage.fixup_proj[3].weight.zero_()
        stage.fixup_proj[3].bias.zero_()
        guid = torch.zeros(1, 3, 16, 16)
        guid[..., 8:] = 2.0  # vertical edge between columns 7 and 8
        src = torch.zeros(1, 1, 8, 8)
        src[..., 4:] = 1.0
        jbu = stage(src, guid)
        bic = F.interpolate(src, size=(16, 16), mode="bicubic", align_corners=False)
    leak_jbu = (jbu[..., 5:8].abs().mean() + (1 - jbu[..., 8:11]).abs().mean()).item()
    leak_bic = (bic[..., 5:8].abs().mean() + (1 - bic[..., 8:11]).abs().mean()).item()
    assert leak_jbu < 0.5 * leak_bic, (leak_jbu, leak_bic)


def test_featup_stack_native_16x_and_memory_path():
    up = create_upsampler("featup_jbu")
    assert isinstance(up, FeatUpJBU)
    feats, image = torch.randn(1, 384, 2, 3), torch.rand(1, 3, 28, 42)
    with torch.no_grad():
        assert up(feats, image, output_size="native").shape == (1, 384, 32, 48)
        assert up(feats, image, output_size=(10, 15)).shape == (1, 384, 10, 15)


def test_lift_passes_and_frozen_batchnorm():
    up = create_upsampler("lift", dim=16, passes=2)
    feats, image = torch.randn(2, 16, 3, 4), torch.rand(2, 3, 42, 56)
    up.train()
    with torch.no_grad():
        out = up(feats, image, output_size="native")
        one = up.single_pass(feats, (image - 0.45) / 0.225)
    assert out.shape == (2, 16, 12, 16) and one.shape == (2, 16, 6, 8)
    assert all(not m.training for m in up.modules())
    # eval BN: output of one sample does not depend on the other samples in the batch
    with torch.no_grad():
        torch.testing.assert_close(up(feats, image)[:1], up(feats[:1], image[:1]))
    with pytest.raises(ValueError, match="passes"):
        create_upsampler("lift", passes=0)


class _FakeBackbone(torch.nn.Module):
    """Deterministic stand-in: a fixed random 1x1 projection of the 14x14-pooled image."""

    def __init__(self, dim: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.register_buffer("w", torch.randn(dim, 3, generator=g))
        self.embed_dim, self.patch_size = dim, 14
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return torch.einsum("dc,bchw->bdhw", self.w, F.avg_pool2d(x, 14))


def test_featup_implicit_fits_and_is_deterministic():
    feats = torch.randn(1, 8, 3, 3)
    image = torch.rand(1, 3, 42, 42)
    up = create_upsampler("featup_implicit", dim=8, steps=8, n_views=1, lr=1e-2)
    out = up(feats, image)
    assert out.shape == (1, 8, 42, 42) and torch.isfinite(out).all()
    hist = up.history[-1]
    assert len(hist) == 8 and hist[-1] < hist[0]
    torch.testing.assert_close(up(feats, image), out)  # seeded: same image -> same output
    assert "no backbone" in up.weights_id
    # the fitted map, downsampled, is closer to the features than a constant map
    low = F.adaptive_avg_pool2d(out, (3, 3))
    assert (low - feats).pow(2).mean() < (feats - feats.mean((2, 3), keepdim=True)).pow(2).mean()


def test_featup_implicit_multi_view_uses_the_backbone():
    bb = _FakeBackbone(8)
    image = torch.rand(1, 3, 42, 42)
    feats = bb(image)
    up = create_upsampler("featup_implicit", dim=8, steps=2, n_views=3, backbone=bb)
    bb.calls = 0
    out = up(feats, image)
    assert out.shape == (1, 8, 42, 42)
    assert bb.calls == 2 * 2  # 2 steps x 2 jittered views (the identity view reuses feats)
    assert "3 views" in up.weights_id
    assert all(not p.requires_grad for p in up.parameters())  # the module itself stays frozen
    with pytest.raises(ValueError, match="steps"):
        create_upsampler("featup_implicit", steps=0)


def test_analysis_helpers_edge_alignment_and_colour_guided_jbu():
    from probe_lib.upsamplers.analysis import (
        colour_guided_jbu,
        edge_alignment,
        jbu_kernels_at,
    )

    # image: a disc; features: its 8x8 area-pooled version (a blurry disc after bilinear)
    yy, xx = torch.meshgrid(torch.arange(112.0), torch.arange(112.0), indexing="ij")
    disc = (((yy - 50) ** 2 + (xx - 60) ** 2) < 30 ** 2).float()
    image = torch.stack([disc, 0.2 + 0.6 * disc, 1 - disc])[None]
    feats = F.interpolate(image, size=(8, 8), mode="area").repeat(1, 2, 1, 1)
    bil = create_upsampler("bilinear", dim=6)(feats, image)
    with torch.no_grad():
        guided = colour_guided_jbu(dim=6)(feats, image)
    a_bil, a_guided = edge_alignment(bil, image), edge_alignment(guided, image)
    assert a_guided > a_bil + 0.1, (a_guided, a_bil)
    # a map that is exactly the image changes only on its edges
    assert edge_alignment(image, image) > 0.95
    with pytest.raises(ValueError, match="same height and width"):
        edge_alignment(feats, image)
    k = jbu_kernels_at(colour_guided_jbu(dim=6).up1, image, [(50, 60), (50, 30)])
    assert k["range"].shape == (2, 7, 7) and k["patch"].shape == (2, 3, 7, 7)
    torch.testing.assert_close(k["kernel"].sum((1, 2)), torch.ones(2))
    # on the disc boundary (row 50, col 30) the range kernel ignores the other side
    inside = k["patch"][1, 0] > 0.5
    same = inside if inside[3, 3] else ~inside
    assert 0 < same.sum() < 49 and k["range"][1][~same].sum() < 0.05


def test_adaptive_conv_backward_matches_autograd_of_the_reference():
    torch.manual_seed(0)
    src = torch.randn(2, 3, 5 + 6, 4 + 6, dtype=torch.float64, requires_grad=True)
    ker = torch.randn(2, 49, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(adaptive_conv, (src, ker), eps=1e-6, atol=1e-6)
    # and against autograd through the naive per-pixel loop
    g = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    ours = torch.autograd.grad((adaptive_conv(src, ker) * g).sum(), (src, ker))
    patches = torch.stack([src[:, :, i:i + 5, j:j + 4] for i in range(7) for j in range(7)], 2)
    ref_out = (patches * ker[:, None]).sum(2)
    ref = torch.autograd.grad((ref_out * g).sum(), (src, ker))
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("block_bytes", [1, 200, 1 << 30])
def test_adaptive_conv_blocking_does_not_change_the_result(monkeypatch, block_bytes):
    """Row bands of one image (tiny budget), several rows, and whole images grouped across the
    batch (huge budget) give the naive result and the same gradients."""
    from probe_lib.upsamplers import featup

    torch.manual_seed(1)
    src = torch.randn(3, 2, 6 + 6, 5 + 6, dtype=torch.float64, requires_grad=True)
    ker = torch.randn(3, 49, 6, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 2, 6, 5, dtype=torch.float64)
    # gradients through the naive reference (autograd), compared with the hand-written backward
    patches = torch.stack([src[:, :, i:i + 6, j:j + 5] for i in range(7) for j in range(7)], 2)
    ref = torch.autograd.grad(((patches * ker[:, None]).sum(2) * g).sum(), (src, ker))
    monkeypatch.setattr(featup, "_BLOCK_BYTES", block_bytes)
    with torch.no_grad():
        torch.testing.assert_close(adaptive_conv(src, ker), adaptive_conv_reference(src, ker))
    ours = torch.autograd.grad((adaptive_conv(src, ker) * g).sum(), (src, ker))
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r)


def test_adaptive_conv_accepts_channels_last_inputs_and_returns_channels_last():
    g = torch.Generator().manual_seed(2)
    src = torch.randn(2, 8, 5 + 6, 7 + 6, generator=g)
    ker = torch.randn(2, 49, 5, 7, generator=g)
    cl = torch.channels_last
    out = adaptive_conv(src.contiguous(memory_format=cl), ker.contiguous(memory_format=cl))
    torch.testing.assert_close(out, adaptive_conv_reference(src, ker), rtol=1e-5, atol=1e-5)
    assert out.is_contiguous(memory_format=cl)


@pytest.mark.parametrize(("hw", "size"), [((3, 4), (6, 8)), ((8, 8), (16, 16)), ((5, 2), (10, 4)),
                                          ((4, 4), (7, 9))])
def test_bicubic_reflect_pad_matches_interpolate_then_pad(hw, size):
    from probe_lib.upsamplers.featup import bicubic_reflect_pad

    torch.manual_seed(0)
    x = torch.randn(2, 5, *hw, requires_grad=True)
    ref = F.pad(F.interpolate(x, size=size, mode="bicubic", align_corners=False), [3] * 4,
                mode="reflect")
    out = bicubic_reflect_pad(x, size)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad((out * g).sum(), x)[0],
                               torch.autograd.grad((ref * g).sum(), x)[0], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="reflect-padded"):
        bicubic_reflect_pad(x, (2, 2))


@pytest.mark.parametrize("h,size", [(16, 224), (8, 112), (5, 37)])
@pytest.mark.parametrize("align_corners", [True, False])
def test_token_positions_match_torch_interpolate(h, size, align_corners):
    # interpolate a ramp f(i) = i: a pixel's value is the source position it reads, so pixel x
    # holds the value i exactly where token i sits (away from the clamped half-token borders)
    from probe_lib.upsamplers.analysis import token_positions

    ramp = torch.arange(h, dtype=torch.float64).view(1, 1, 1, h).expand(1, 1, 2, h)
    out = F.interpolate(ramp, size=(2, size), mode="bilinear", align_corners=align_corners)[0, 0, 0]
    pos = token_positions(h, size, align_corners)
    inner = slice(None) if align_corners else slice(1, h - 1)
    read = np.interp(pos[inner].numpy(), np.arange(size), out.numpy())
    np.testing.assert_allclose(read, np.arange(h)[inner], atol=1e-9)


def test_token_positions_vs_patch_centres_at_224():
    from probe_lib.upsamplers.analysis import patch_centres, token_positions

    centres = patch_centres(16, 14)
    assert centres[0] == 6.5 and centres[-1] == 216.5
    torch.testing.assert_close(token_positions(16, 224, align_corners=False), centres)
    off = token_positions(16, 224, align_corners=True) - centres
    assert abs(float(off[0]) + 6.5) < 1e-12 and abs(float(off[-1]) - 6.5) < 1e-12
    assert abs(float(token_positions(16, 224, True)[1]) - 223 / 15) < 1e-12
    with pytest.raises(ValueError, match="h >= 2"):
        token_positions(1, 224, True)
