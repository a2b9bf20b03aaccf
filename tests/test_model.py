"""The probe model: parameter counts and keys of iSegProbe's modules, injections,
caching, checkpoints."""

import math

import pytest
import torch

from probe_lib.clicks import clicks_to_tensor
from probe_lib.config import make_config
from probe_lib.model import (
    INJECTIONS,
    SimpleViTClickEncoder,
    build_click_encoder,
    build_head,
    build_probe,
    count_parameters,
    load_probe,
    posemb_sincos_2d,
    save_probe,
)

S = 56  # 4x4 tokens with patch 14: fast on CPU


@pytest.fixture(scope="module")
def backbone():
    from probe_lib.backbones import create_backbone

    return create_backbone("test_tiny", weights="random", verbose=False)


def cfg_for(**kw):
    base = {"backbone__name": "test_tiny", "backbone__weights": "random",
            "upsampler__weights": "random", "upsampler__name": "bilinear", "head": "lean_conv",
            "image_size": S, "upsampler_precision": "fp32"}  # exactness checks: no bf16 copy
    base.update(kw)
    return make_config("small", **base)


def inputs(b=2, size=S, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(b, 3, size, size, generator=g)
    prev = torch.rand(b, 1, size, size, generator=g)
    pts = torch.cat([clicks_to_tensor([(10, 12, True), (40.5, 30, False), (20, 44, True)],
                                      max_points=3) for _ in range(b)])
    return image, prev, pts


# ------------------------------------------------------------------ exact sizes and keys
def test_click_encoder_param_counts_and_keys():
    pe = build_click_encoder("patch_embed", 384, 14)
    assert count_parameters(pe) == 226_176
    assert {k: tuple(v.shape) for k, v in pe.state_dict().items()} == {
        "proj.weight": (384, 3, 14, 14), "proj.bias": (384,)}
    sv = build_click_encoder("simple_vit", 384, 14)
    assert count_parameters(sv) == 14_408_472
    sd = {k: tuple(v.shape) for k, v in sv.state_dict().items()}
    assert sd["to_patch_embedding.1.weight"] == (588,)
    assert sd["to_patch_embedding.2.weight"] == (384, 588)
    assert sd["to_patch_embedding.3.bias"] == (384,)
    assert sd["transformer.layers.5.0.to_qkv.weight"] == (1536, 384)
    assert sd["transformer.layers.0.0.to_out.weight"] == (384, 512)
    assert sd["transformer.layers.0.1.net.1.weight"] == (2048, 384)
    assert sd["transformer.layers.0.1.net.3.weight"] == (384, 2048)
    assert "transformer.layers.0.0.norm.weight" in sd and "transformer.norm.bias" in sd
    assert "transformer.layers.0.0.to_qkv.bias" not in sd
    assert not any("pe" in k for k in sd)  # the sin-cos table is not a state_dict entry


@pytest.mark.parametrize("name,count", [("linear", 385), ("simple_conv", 296_065),
                                        ("convhead", 2_655_361), ("lean_conv", 61_633)])
def test_head_param_counts(name, count):
    assert count_parameters(build_head(name, 384)) == count


def test_convhead_keys_and_init():
    h = build_head("convhead", 384)
    shapes = {k: tuple(v.shape) for k, v in h.state_dict().items()}
    assert shapes == {"convs.0.conv.weight": (384, 384, 3, 3), "convs.0.conv.bias": (384,),
                      "convs.1.conv.weight": (384, 384, 3, 3), "convs.1.conv.bias": (384,),
                      "classifier.weight": (1, 384, 1, 1), "classifier.bias": (1,)}
    assert (h.convs[0].conv.bias == 0).all()
    # Kaiming normal, fan_out = 384 * 9, ReLU gain: std = sqrt(2 / 3456)
    std = h.convs[0].conv.weight.std().item()
    assert abs(std - math.sqrt(2 / 3456)) < 0.002


def test_sincos_matches_formula():
    pe = posemb_sincos_2d(16, 16, 384)
    assert pe.shape == (256, 384)
    y, x, k = 3, 11, 7
    om = 10000 ** (-k / 95)
    row = pe[y * 16 + x]
    assert row[k].item() == pytest.approx(math.sin(x * om), abs=1e-5)
    assert row[96 + k].item() == pytest.approx(math.cos(x * om), abs=1e-5)
    assert row[192 + k].item() == pytest.approx(math.sin(y * om), abs=1e-5)
    assert row[288 + k].item() == pytest.approx(math.cos(y * om), abs=1e-5)


def test_simple_vit_patch_feature_order():
    enc = SimpleViTClickEncoder(dim=384, patch_size=14)
    x = torch.arange(3 * 28 * 28, dtype=torch.float32).reshape(1, 3, 28, 28)
    patches = enc.to_patch_embedding[0](x)
    assert patches.shape == (1, 4, 588)
    # token 1 = grid (0, 1); feature (p_row=2, p_col=5, c=1) -> index (2*14 + 5)*3 + 1
    assert patches[0, 1, (2 * 14 + 5) * 3 + 1] == x[0, 1, 2, 14 + 5]
    out = enc(torch.rand(2, 3, 28, 42))  # non-square grid works (PE for the actual grid)
    assert out.shape == (2, 6, 384)


# ------------------------------------------------------------------ the probe
@pytest.mark.parametrize("injection", INJECTIONS)
def test_forward_shapes_cache_and_grads(backbone, injection):
    torch.manual_seed(0)
    probe = build_probe(cfg_for(injection=injection), backbone=backbone)
    image, prev, pts = inputs()
    probe.train()
    assert not probe.backbone.training and not probe.upsampler.training
    out = probe(image, prev, pts)
    assert out.shape == (2, 1, S, S) and out.dtype == torch.float32
    cache = probe.encode_image(image)
    torch.testing.assert_close(probe.forward_cached(cache, prev, pts), out, rtol=0, atol=0)
    out.sum().backward()
    grads = {n for n, p in probe.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith(("embed_coords.", "head.")) for n in grads)
    if injection != "none":
        assert any(n.startswith("embed_coords.") for n in grads)
        # the clicks change the output
        other = clicks_to_tensor([(50, 50, True)], max_points=3).expand(2, -1, -1)
        assert not torch.equal(probe(image, prev, other.contiguous()), out)


@pytest.mark.parametrize("up", ["featup_jbu", "loftup"])
@pytest.mark.parametrize("injection", ["early", "late_lowres"])
def test_upsampler_guidance_is_cached_once_per_image(backbone, up, injection):
    """With early / late_lowres the upsampler re-runs every click; its image-only part is in
    the cache and reusing it gives exactly the uncached logits (and the same gradients)."""
    torch.manual_seed(0)
    probe = build_probe(cfg_for(upsampler__name=up, injection=injection), backbone=backbone)
    image, prev, pts = inputs()
    cache = probe.encode_image(image)
    assert "guide" in cache
    bare = {k: v for k, v in cache.items() if k != "guide"}
    probe.train()
    with_guide = probe.forward_cached(cache, prev, pts)
    without = probe.forward_cached(bare, prev, pts)
    torch.testing.assert_close(with_guide, without, rtol=1e-6, atol=1e-6)
    weight = probe.embed_coords.proj.weight  # the patch-embedding click encoder
    with_guide.sum().backward()
    g1 = weight.grad.clone()
    probe.zero_grad()
    without.sum().backward()
    assert g1.abs().sum() > 0
    torch.testing.assert_close(g1, weight.grad, rtol=1e-5, atol=1e-6)


def test_identity_head_runs_at_token_grid(backbone):
    probe = build_probe(cfg_for(upsampler__name="identity", injection="late_highres"),
                        backbone=backbone)
    image, prev, pts = inputs(1)
    feats_seen = []
    probe.head.register_forward_hook(lambda m, i, o: feats_seen.append(i[0].shape))
    assert probe(image, prev, pts).shape == (1, 1, S, S)
    assert feats_seen[0][-2:] == (S // 14, S // 14)


def test_late_modes_agree_for_bilinear(backbone):
    torch.manual_seed(0)
    a = build_probe(cfg_for(injection="late_lowres"), backbone=backbone)
    b = build_probe(cfg_for(injection="late_highres"), backbone=backbone)
    b.load_state_dict(a.state_dict())
    image, prev, pts = inputs()
    with torch.no_grad():
        torch.testing.assert_close(a(image, prev, pts), b(image, prev, pts), atol=1e-4, rtol=1e-4)


def test_simple_vit_probe_and_channels_last(backbone):
    probe = build_probe(cfg_for(click_encoder="simple_vit", injection="late_lowres",
                                channels_last=True), backbone=backbone)
    image, prev, pts = inputs(1)
    ref = probe(image, prev, pts)
    probe.channels_last = False
    torch.testing.assert_close(probe(image, prev, pts), ref, atol=1e-5, rtol=1e-5)


def test_bad_names_and_inputs(backbone):
    for key, val in [("injection", "middle"), ("click_encoder", "mlp"), ("head", "deep")]:
        with pytest.raises(ValueError, match="valid"):
            build_probe(cfg_for(**{key: val}), backbone=backbone)
    with pytest.raises(ValueError, match="unknown upsampler"):
        build_probe(cfg_for(upsampler__name="magic"), backbone=backbone)
    probe = build_probe(cfg_for(), backbone=backbone)
    image, prev, pts = inputs(1)
    with pytest.raises(ValueError, match="prev_mask"):
        probe(image, prev[:, :, :-1], pts)
    with pytest.raises(ValueError, match="points"):
        probe(image, prev, pts[:, :, :2])
    with pytest.raises(ValueError, match="multiples"):
        probe(image[..., :50, :50], prev[..., :50, :50], pts)


# ------------------------------------------------------------------ checkpoints
def test_save_load_roundtrip_and_mismatch(backbone, tmp_path):
    cfg = cfg_for(injection="late_highres")
    torch.manual_seed(1)
    probe = build_probe(cfg, backbone=backbone)
    path = save_probe(probe, tmp_path / "p.pt", cfg, metrics={"miou": 0.5})
    obj = torch.load(path, weights_only=True)
    assert set(obj["state_dict"]) == {k for k in probe.state_dict()
                                      if k.startswith(("embed_coords.", "head."))}
    assert obj["config"] == cfg.to_dict() and obj["upsampler"]["name"] == "bilinear"
    assert "/" not in str(obj["backbone"]["weights_source"])  # a route name, not a path
    loaded, cfg2 = load_probe(path)
    assert cfg2 == cfg and not loaded.training
    image, prev, pts = inputs(1)
    probe.eval()
    torch.testing.assert_close(loaded(image, prev, pts), probe(image, prev, pts))
    with pytest.raises(ValueError, match="upsampler.name"):
        load_probe(path, expected_cfg=cfg_for(upsampler__name="bicubic"))
    with pytest.raises(ValueError, match="backbone.name"):
        load_probe(path, expected_cfg=cfg_for(backbone__name="dinov2_vits14"))
    obj["backbone"]["weights_id"] = "some other weights"
    torch.save(obj, tmp_path / "q.pt")
    with pytest.raises(ValueError, match="trained on backbone weights"):
        load_probe(tmp_path / "q.pt")
    with pytest.raises(FileNotFoundError):
        load_probe(tmp_path / "missing.pt")


def test_random_learned_upsampler_is_stored_with_the_probe(backbone, tmp_path):
    cfg = cfg_for(upsampler__name="lift", injection="late_highres")
    torch.manual_seed(2)
    probe = build_probe(cfg, backbone=backbone)
    assert str(probe.upsampler.weights_id).startswith("random")
    path = save_probe(probe, tmp_path / "lift.pt", cfg)
    assert "upsampler_state_dict" in torch.load(path, weights_only=True)
    torch.manual_seed(99)  # a rebuild by name alone would draw different random weights
    loaded, _ = load_probe(path)
    image, prev, pts = inputs(1)
    probe.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(image, prev, pts), probe(image, prev, pts))
