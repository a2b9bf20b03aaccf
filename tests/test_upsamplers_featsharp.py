"""FeatSharp (clean-room): Hadamard/PHI-S, windowed ALiBi attention vs a dense masked oracle, JBU
stage maths, tiling, bias buffer, parameter counts, checkpoints and bad input."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probe_lib.upsamplers import create_upsampler, save_upsampler_checkpoint
from probe_lib.upsamplers import featsharp as FS
from probe_lib.upsamplers.phis import PHIS, hadamard_matrix


class StandIn(nn.Module):
    """Cheap frozen 'backbone': one 14x14 patch convolution (deterministic, position-free)."""

    embed_dim, patch_size = 384, 14

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Conv2d(3, 384, 14, 14)
        self.requires_grad_(False)
        self.eval()

    def forward(self, images, click_tokens=None):
        return self.proj(images)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_torch_thread):
    yield


@pytest.fixture(scope="module")
def bb():
    return StandIn()


def _make(bb, **kw):
    torch.manual_seed(1)
    return create_upsampler("featsharp", backbone=bb, **kw)


# ---------------------------------------------------------------- PHI-S


@pytest.mark.parametrize("n", [12, 32, 384, 768])
def test_hadamard_orthogonal_pm_entries(n):
    h = hadamard_matrix(n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=h.dtype), atol=1e-12)
    assert torch.allclose(h.abs(), torch.full_like(h, n ** -0.5))


def test_hadamard_bad_order():
    with pytest.raises(ValueError, match="Hadamard"):
        hadamard_matrix(6)


def test_phis_fit_equalises_channels_and_inverts():
    g = torch.Generator().manual_seed(0)
    c = 384
    z = torch.randn(4000, c, generator=g)
    # very unequal variances plus a component shared by all channels (correlation)
    x = z * torch.logspace(-1, 1, c) + 0.5 * torch.randn(4000, 1, generator=g) + 3.0
    p = PHIS(c)
    y0 = p(x.T.reshape(1, c, 40, 100))
    assert torch.equal(y0, x.T.reshape(1, c, 40, 100))  # identity before fitting
    p.fit(x)
    assert p.is_fitted
    fmap = x.T.reshape(1, c, 40, 100)
    y = p(fmap).reshape(c, -1)
    var = y.double().var(dim=1)
    assert torch.allclose(var, torch.ones_like(var), rtol=2e-3)  # every channel variance = 1
    assert y.mean(dim=1).abs().max() < 1e-3
    assert torch.allclose(p.inverse(p(fmap)), fmap, atol=1e-3)
    raw_var = x.var(0)
    assert raw_var.max() / raw_var.min() > 100  # the test data was really anisotropic
    with pytest.raises(ValueError, match="channels"):
        p.fit(torch.randn(10, 5))


# ---------------------------------------------------------------- attention


def test_alibi_slopes():
    s = FS.alibi_slopes(16)
    assert s[:6].tolist() == [0.5, 0.5, 0.25, 0.25, 0.125, 0.125]
    assert s[15] == 1 / 2 ** 8


@pytest.mark.parametrize("hw", [(5, 6), (9, 9)])
def test_windowed_attention_equals_dense_masked(hw):
    torch.manual_seed(0)
    att = FS.LocalALiBiAttention(dim=96, num_heads=4, qk_dim=32, head_dim=24, radius=2)
    # Big slopes make the ALiBi term matter numerically in the comparison.
    att.slopes = torch.tensor([0.9, 0.7, 0.3, 0.2])
    h, w = hw
    x = torch.randn(2, h, w, 96)
    out = att(x)
    q, k, v = att.project(x)  # (B, heads, d, H, W)
    q, k, v = (t.flatten(3).transpose(2, 3) for t in (q, k, v))  # (B, heads, N, d)
    mask = FS.dense_alibi_mask(h, w, att.slopes, radius=2)
    scores = q @ k.transpose(-1, -2) * 24 ** -0.5 + mask
    dense = torch.softmax(scores, dim=-1) @ v[..., :24]
    dense = att.proj(dense.transpose(1, 2).reshape(2, h * w, 96)).view(2, h, w, 96)
    assert (out - dense).abs().max() < 1e-5


def test_dense_mask_semantics():
    m = FS.dense_alibi_mask(4, 5, torch.tensor([0.5, 0.25]), radius=1)
    n = lambda r, c: r * 5 + c
    assert m[0, n(1, 1), n(2, 2)] == -0.5  # even head: |Δrow| = 1
    assert m[1, n(1, 1), n(2, 1)] == 0.0  # odd head ignores Δrow
    assert m[1, n(1, 1), n(1, 2)] == -0.25
    assert m[0, n(0, 0), n(0, 2)] == float("-inf")  # outside the 3x3 window


# ---------------------------------------------------------------- JBU stage


def test_jbu_stage_kernel_is_normalised_product():
    torch.manual_seed(0)
    st = FS.JBUStage(2)
    with torch.no_grad():
        st.range_temp.fill_(0.3)
        st.sigma_spatial.fill_(0.7)
    g = torch.randn(1, 3, 8, 10)
    st.requires_grad_(False)
    k = st.kernel(g)
    assert k.shape == (1, 49, 8, 10)
    assert torch.allclose(k.sum(1), torch.ones(1, 8, 10), atol=1e-5)
    # reference at one interior pixel: softmax range x Gaussian spatial, renormalised
    q = st.range_proj(g)[0]
    y, x = 4, 5
    lin = torch.linspace(-1, 1, 7)
    rng, sp = [], []
    for i, dy in enumerate(range(-3, 4)):
        for j, dx in enumerate(range(-3, 4)):
            yy, xx = abs(y + dy), abs(x + dx)  # reflect padding (no edge hit here except y+dy)
            yy = yy if yy < 8 else 14 - yy
            xx = xx if xx < 10 else 18 - xx
            rng.append(float(torch.exp(torch.tensor(0.3))) * float((q[:, y, x] * q[:, yy, xx]).sum()))
            sp.append(float(torch.exp(-(lin[i] ** 2 + lin[j] ** 2) / (2 * 0.7 ** 2))))
    ref = torch.softmax(torch.tensor(rng), 0) * torch.tensor(sp)
    ref = ref / ref.sum()
    assert torch.allclose(k[0, :, y, x], ref, atol=1e-5)


def test_jbu_stage_preserves_constants_and_gains_matter():
    st = FS.JBUStage(2)
    src = torch.full((1, 4, 3, 5), 2.5)
    with torch.no_grad():
        out = st(src, torch.randn(1, 3, 6, 10))
        assert torch.allclose(out, torch.full_like(out, 2.5), atol=1e-5)
        g = torch.randn(1, 3, 6, 10)
        k1 = st.kernel(g)
        st.spatial_gain.fill_(3.0)
        assert (st.kernel(g) - k1).abs().max() > 1e-3


# ---------------------------------------------------------------- module


def test_parameter_counts(bb):
    assert _make(bb, factor=2).num_parameters() == 6_893_476
    assert _make(bb, factor=4).num_parameters() == 6_899_272
    m = _make(bb)
    assert m.bias_buffer.numel() == 98_304
    assert m.num_parameters(include_bias_buffer=True) == 6_893_476 + 98_304
    assert not any(k.startswith("backbone") or "proj.weight" == k for k in m.state_dict())
    assert len(m.jbu) == 1 and len(_make(bb, factor=4).jbu) == 2


def test_tiles_round_trip_and_match_manual_crops(bb):
    img = torch.rand(2, 3, 28, 42)
    t = FS.split_tiles(img, 2)
    assert t.shape == (8, 3, 14, 21)
    assert torch.equal(t[1], img[0, :, :14, 21:])  # image 0, tile row 0, tile col 1
    assert torch.equal(FS.merge_tiles(t, 2), img)
    m = _make(bb)
    img = torch.rand(1, 3, 28, 42)
    feats = m.tile_features(img, (2, 3))
    big = F.interpolate(img, size=(56, 84), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        assert torch.allclose(feats[..., 2:, :3], bb(big[..., 28:, :42]), atol=1e-5)


def test_forward_shapes_spaces_and_batched_path(bb):
    m = _make(bb)
    with torch.no_grad():
        m.phis.fit(torch.randn(500, 384) * torch.linspace(0.1, 3, 384) + 1)
    img = torch.rand(2, 3, 56, 70)
    with torch.no_grad():
        f = bb(img)
        nat = m(f, img, output_size="native")
        assert nat.shape == (2, 384, 8, 10)
        assert m(f, img).shape == (2, 384, 56, 70)
        assert torch.allclose(m.forward_from_image(img), nat, atol=1e-5)
        m.phis_space = True
        ph = m(f, img, output_size="native")
        assert torch.allclose(m.to_backbone_space(ph), nat, atol=1e-4)
        assert m.forward_train(torch.rand(1, 3, 56, 56)).shape == (1, 384, 4, 4)


def test_factor_four_non_square(bb):
    m = _make(bb, featsharp_factor=4)
    img = torch.rand(1, 3, 28, 56)
    with torch.no_grad():
        out = m(bb(img), img, output_size="native")
    assert out.shape == (1, 384, 8, 16) and torch.isfinite(out).all()
    assert [st.factor for st in m.jbu] == [2, 2]


def test_bias_buffer_is_added_to_every_backbone_output(bb):
    m = _make(bb)
    img = torch.rand(1, 3, 42, 42)
    with torch.no_grad():
        f = bb(img)
        m.fusion.ls1.zero_()
        m.fusion.ls2.zero_()  # output = JBU branch only
        base = m(f, img, output_size="native")
        m.bias_buffer.fill_(0.75)
        shifted = m(f, img, output_size="native")
        # JBU is a convex combination, so a constant bias passes through unchanged
        assert torch.allclose(shifted - base, torch.full_like(base, 0.75), atol=1e-4)
        # the tiles see the bias too: with the fusion active, it changes the tile half as well
        tiles = m.tile_features(img, (3, 3))
        b = m.bias_for(3, 3).repeat(1, 1, 2, 2)
        assert b.shape == tiles.shape
    assert m.bias_for(5, 7).shape == (1, 384, 5, 7)


def test_tiles_change_the_output_once_fusion_is_active(bb):
    m = _make(bb)
    img = torch.rand(1, 3, 42, 56)
    with torch.no_grad():
        f = bb(img)
        jbu_only = m(f, img, output_size="native")
        # LayerScale 1e-6 at init: FeatSharp starts as its JBU branch
        m.fusion.ls1.zero_()
        m.fusion.ls2.zero_()
        assert torch.allclose(m(f, img, output_size="native"), jbu_only, atol=1e-3)
        m.fusion.ls1.fill_(1.0)
        m.fusion.ls2.fill_(1.0)
        tiles = m.tile_features(img, (3, 4))
        a = m.sharpen(f, tiles, img)
        b = m.sharpen(f, tiles + torch.randn_like(tiles), img)
        assert (a - b).abs().max() > 1e-3


def test_gradients_reach_every_parameter_not_the_backbone(bb):
    m = _make(bb, trainable=True)
    with torch.no_grad():
        m.fusion.ls1.fill_(0.1)
        m.fusion.ls2.fill_(0.1)
    out = m.forward_train(torch.rand(2, 3, 56, 56))
    out.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert all(p.grad is None for p in bb.parameters())
    assert FS.FeatSharp.is_jbu_param("jbu.0.range_temp")


def test_checkpoint_round_trip(bb, tmp_path):
    m = _make(bb, trainable=True)
    with torch.no_grad():
        m.bias_buffer.normal_()
        m.phis.fit(torch.randn(100, 384))
    path = save_upsampler_checkpoint(m, tmp_path / "fs.pt", config={}, backbone="stand-in", step=3)
    m2 = create_upsampler("featsharp", backbone=bb, weights=path)
    for k, v in m.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k
    assert m2.phis.is_fitted


def test_real_tiny_vit_backbone():
    backbones = pytest.importorskip("probe_lib.backbones")
    vit = backbones.create_backbone("test_tiny", weights="random")
    m = create_upsampler("featsharp", dim=vit.embed_dim, backbone=vit)
    img = torch.rand(1, 3, 28, 42)
    with torch.no_grad():
        out = m(vit(img), img)
    assert out.shape == (1, 384, 28, 42) and torch.isfinite(out).all()


def test_seam_contrast():
    smooth = torch.linspace(0, 1, 16).view(1, 1, 1, 16).expand(1, 3, 16, 16)
    assert abs(FS.seam_contrast(smooth, 2) - 1.0) < 1e-4  # a ramp: uniform differences
    tiles = torch.zeros(1, 3, 16, 16)
    tiles[..., 8:, :] += 5.0  # second tile row offset: a jump only at the seam
    tiles = tiles + 0.01 * torch.randn(1, 3, 16, 16)
    assert FS.seam_contrast(tiles, 2) > 20
    with pytest.raises(ValueError, match="divisible"):
        FS.seam_contrast(torch.zeros(1, 3, 15, 16), 2)


def test_bad_input(bb):
    with pytest.raises(ValueError, match="backbone"):
        create_upsampler("featsharp")
    with pytest.raises(ValueError, match="embed_dim"):
        create_upsampler("featsharp", dim=256, backbone=bb)
    with pytest.raises(NotImplementedError, match="tile_clicks"):
        create_upsampler("featsharp", backbone=bb, tile_clicks=True)
    with pytest.raises(ValueError, match="no official pretrained"):
        create_upsampler("featsharp", backbone=bb, weights="pretrained")
    with pytest.raises(ValueError, match="factor"):
        create_upsampler("featsharp", backbone=bb, factor=1)
    m = _make(bb)
    img = torch.rand(1, 3, 28, 28)
    f = bb(img)
    with pytest.raises(ValueError, match="channels"):
        m(f[:, :10], img)
    with pytest.raises(ValueError, match="batch"):
        m(f, torch.rand(2, 3, 28, 28))
    with pytest.raises(ValueError, match="patch size"):
        m.forward_from_image(torch.rand(1, 3, 30, 28))
