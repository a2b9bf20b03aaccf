"""Generic tests run over EVERY registered upsampler (a new method gets them for free).

Tiny non-square inputs: features (B=2, C, 2, 3) with a 28 x 42 guidance image (patch 14);
C = 32 except for methods tied to a backbone's width (featsharp, 384).
"""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from probe_lib.upsamplers import (
    Upsampler,
    create_upsampler,
    get_upsampler_class,
    list_upsamplers,
    load_trained_or_random,
    register_upsampler,
    save_upsampler_checkpoint,
)
from probe_lib.upsamplers import base as up_base
from probe_lib.utils import checkpoint_path

DIM = 32
DIMS = {"featsharp": 384}  # holds a backbone (test_tiny, 384 channels)
NAMES = list_upsamplers()
H, W = 2, 3
# Settings that keep expensive methods quick in tests.
FAST_CFG = {"featup_implicit": {"steps": 2, "n_views": 2}}


@pytest.fixture(scope="module")
def tiny_backbone():
    try:
        from probe_lib.backbones import create_backbone
    except ImportError:  # backbones land separately
        return None
    return create_backbone("test_tiny", weights="random")


def needs_backbone(name: str) -> bool:
    p = inspect.signature(get_upsampler_class(name).__init__).parameters.get("backbone")
    return p is not None and p.default is inspect.Parameter.empty


def dim_of(name: str) -> int:
    return DIMS.get(name, DIM)


def make(name: str, tiny_backbone, **kw) -> Upsampler:
    cfg = dict(FAST_CFG.get(name, {}))
    if name in DIMS and "backbone" in inspect.signature(
            get_upsampler_class(name).__init__).parameters:
        if tiny_backbone is None:
            if needs_backbone(name) or name == "featsharp":
                pytest.skip("probe_lib.backbones not available yet")
        else:
            cfg["backbone"] = tiny_backbone
    cfg.update(kw)
    return create_upsampler(name, dim=dim_of(name), **cfg)


def inputs(name: str = "", b: int = 2, h: int = H, w: int = W, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, dim_of(name), h, w, generator=g),
            torch.rand(b, 3, 14 * h, 14 * w, generator=g))


def test_registry_lists_the_paper_methods():
    for n in ("identity", "nearest", "bilinear", "bicubic", "lift", "featup_jbu",
              "featup_implicit"):
        assert n in NAMES
    assert "jbu_featup" not in NAMES
    assert get_upsampler_class("jbu_featup") is get_upsampler_class("featup_jbu")
    assert len(set(NAMES)) == len(NAMES)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown upsampler 'nope'.*bilinear"):
        create_upsampler("nope")


def test_duplicate_registration_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        @register_upsampler("bilinear")
        class Again(Upsampler):
            pass
    with pytest.raises(ValueError, match="already registered"):
        @register_upsampler("brand_new_name", aliases=("jbu_featup",))
        class Again2(Upsampler):
            pass
    assert "brand_new_name" not in list_upsamplers()


def test_unknown_setting_is_an_error_but_other_methods_config_is_ignored():
    with pytest.raises(ValueError, match="does not take setting 'bogus'"):
        create_upsampler("lift", bogus=1)
    # UpsamplerConfig fields meant for other methods pass through silently.
    up = create_upsampler("bilinear", featup_channelnorm=False, loftup_minmax_scope="sample")
    assert up.weights_id


@pytest.mark.parametrize("name", NAMES)
def test_shapes_native_and_image(name, tiny_backbone):
    up = make(name, tiny_backbone)
    feats, image = inputs(name)
    with torch.no_grad():
        out = up(feats, image)
        native = up(feats, image, output_size="native")
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    if name == "identity":
        assert out.shape == feats.shape and native.shape == feats.shape
        assert torch.equal(out, feats)
    else:
        assert out.shape == (2, dim_of(name), 14 * H, 14 * W)
        exp = up.native_size((H, W), (14 * H, 14 * W))
        assert native.shape == (2, dim_of(name), *exp)
        # "image" is the native output resized with bilinear(align_corners=True) when it differs.
        if tuple(exp) != (14 * H, 14 * W):
            ref = torch.nn.functional.interpolate(native, size=(14 * H, 14 * W), mode="bilinear",
                                                  align_corners=True)
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert isinstance(up.weights_id, str) and up.weights_id


@pytest.mark.parametrize("name", NAMES)
def test_frozen_is_eval_and_gradient_free(name, tiny_backbone):
    up = make(name, tiny_backbone)
    assert not up.training
    assert all(not p.requires_grad for p in up.parameters())
    up.train()  # callers that train() a whole probe must not flip the frozen upsampler
    assert not any(m.training for m in up.modules())
    bn_before = {k: v.clone() for k, v in up.state_dict().items() if "running_" in k}
    feats, image = inputs(name)
    feats.requires_grad_(True)
    out = up(feats, image)
    for k, v in up.state_dict().items():
        if k in bn_before:
            assert torch.equal(v, bn_before[k]), f"{k} changed in a frozen forward"
    if not getattr(up, "fits_per_image", False):
        out.sum().backward()  # gradients still flow to the *input* features
        assert feats.grad is not None and torch.isfinite(feats.grad).all()
        assert all(p.grad is None for p in up.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_trainable_gets_gradients(name, tiny_backbone):
    cls = get_upsampler_class(name)
    if not cls.learned or getattr(cls, "fits_per_image", False):
        pytest.skip("parameter-free or fitted per image")
    up = make(name, tiny_backbone, trainable=True)
    up.train()
    assert up.training
    trainable = [p for p in up.parameters() if p.requires_grad]
    assert trainable
    feats, image = inputs(name)
    up(feats, image).square().mean().backward()
    got = [p for p in trainable if p.grad is not None and p.grad.abs().sum() > 0]
    assert len(got) >= len(trainable) // 2, f"only {len(got)}/{len(trainable)} params got grads"


@pytest.mark.parametrize("name", NAMES)
def test_prepared_guidance_gives_the_same_output(name, tiny_backbone):
    """The image-only part (JBU kernels, LoftUp's query stem) reused across calls, as the probe
    does across clicks, changes nothing; misuse is refused with a clear error."""
    up = make(name, tiny_backbone)
    feats, image = inputs(name)
    guide = up.prepare_guidance(image, (H, W))
    if guide is None:
        assert name not in ("featup_jbu", "loftup"), "these have an image-only part to reuse"
        pytest.skip("no image-only part")
    feats.requires_grad_(True)
    out = up(feats, image, guidance=guide)
    torch.testing.assert_close(out, up(feats, image), rtol=1e-6, atol=1e-6)
    out.sum().backward()  # gradients reach the features through the reused part
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    other_feats, other_image = inputs(name, b=1, seed=1)
    with pytest.raises(ValueError, match="guidance was prepared for"):
        up(other_feats, other_image, guidance=guide)
    with pytest.raises(ValueError, match="prepare_guidance"):
        up(feats, image, guidance=guide.data)
    with pytest.raises(ValueError, match="another image"):
        up(feats, image.flip(-1), guidance=guide)
    torch.testing.assert_close(up(feats, image.clone(), guidance=guide), out)  # same pixels
    # another train/eval mode: recomputed, not reused
    assert up._usable_guidance(guide, feats, image) is not None
    trainable = make(name, tiny_backbone, trainable=True)
    trainable.load_state_dict(up.state_dict())
    trainable.eval()
    with pytest.raises(ValueError, match="freeze it first"):
        trainable(feats, image, guidance=trainable.prepare_guidance(image, (H, W)))
    trainable.train()
    assert trainable._usable_guidance(guide, feats, image) is None


def test_reference_bn_mode_allows_train_mode():
    up = create_upsampler("lift", dim=DIM, frozen_bn_mode="reference")
    assert all(not p.requires_grad for p in up.parameters())
    up.train()
    assert up.training


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs(name, tiny_backbone):
    up = make(name, tiny_backbone)
    feats, image = inputs(name)
    cases = {
        "4-D": (feats[0], image),
        "channels": (torch.randn(2, dim_of(name) // 2, H, W), image),
        "batch": (feats, image[:1]),
        r"\(B, 3, H, W\)": (feats, torch.rand(2, 4, 14 * H, 14 * W)),
        "smaller than the feature grid": (feats, torch.rand(2, 3, 1, 2)),
        "aspect": (feats, torch.rand(2, 3, 14 * W, 14 * H)),
    }
    bad = feats.clone()
    bad[0, 0, 0, 0] = float("nan")
    cases["NaN"] = (bad, image)
    bad_img = image.clone()
    bad_img[1, 2, 3, 4] = float("nan")
    cases["NaN "] = (feats, bad_img)
    for msg, (f, im) in cases.items():
        with pytest.raises(ValueError, match=msg.strip()):
            up(f, im)
    with pytest.raises(ValueError, match="output_size"):
        up(feats, image, output_size="huge")


@pytest.mark.parametrize("name", [n for n in NAMES if get_upsampler_class(n).learned])
def test_double_normalisation_warns(name, tiny_backbone):
    up = make(name, tiny_backbone)
    feats, image = inputs(name)
    normalised = (image - 0.45) / 0.225
    with pytest.warns(UserWarning, match="outside"), torch.no_grad():
        up(feats, normalised)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            up(feats, image)


@pytest.mark.parametrize("name", [n for n in NAMES if get_upsampler_class(n).learned
                                  and not getattr(get_upsampler_class(n), "fits_per_image", 0)])
def test_our_checkpoint_round_trip(name, tiny_backbone, tmp_path, capsys):
    torch.manual_seed(1)
    src = make(name, tiny_backbone, trainable=True)
    with torch.no_grad():  # move away from the default init so a silent no-op load would fail
        for p in src.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path / f"{name}.pt"
    save_upsampler_checkpoint(src, path, config={"upsampler": {"name": name}},
                              backbone="test_tiny (random)", step=7, metrics={"loss": 0.5})
    dst = make(name, tiny_backbone, weights=path)
    assert "trained" in dst.weights_id and "step 7" in dst.weights_id
    src.eval()
    feats, image = inputs(name)
    with torch.no_grad():
        torch.testing.assert_close(dst(feats, image), src(feats, image))

    # load_trained_or_random: missing -> random + banner; present -> the checkpoint.
    preset = f"unit{name}"
    kw = {"backbone": tiny_backbone} if name in DIMS and tiny_backbone is not None else {}
    kw["dim"] = dim_of(name)
    up = load_trained_or_random(name, preset, **kw, **FAST_CFG.get(name, {}))
    assert "random weights" in capsys.readouterr().out and "random" in up.weights_id
    target = checkpoint_path("upsampler", name, preset)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(path.read_bytes())
    up = load_trained_or_random(name, preset, **kw)
    assert "trained" in up.weights_id and not up.training
    target.unlink()


@pytest.mark.parametrize("name", [n for n in NAMES if get_upsampler_class(n).learned
                                  and not getattr(get_upsampler_class(n), "fits_per_image", 0)])
def test_mismatched_checkpoint_lists_keys(name, tiny_backbone, tmp_path):
    sd = make(name, tiny_backbone).state_dict()
    k_drop, k_shape = next(iter(sd)), list(sd)[-1]
    sd.pop(k_drop)
    sd[k_shape] = torch.zeros(3, 1, 2)
    sd["totally.unexpected"] = torch.zeros(1)
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": sd, "name": name, "config": {}, "backbone": None, "step": 0,
                "metrics": {}}, path)
    with pytest.raises(ValueError) as err:
        make(name, tiny_backbone, weights=path)
    msg = str(err.value)
    assert k_drop in msg and "totally.unexpected" in msg and k_shape in msg
    assert "missing keys (1)" in msg and "unexpected keys (1)" in msg and "mis-shaped keys (1)" \
        in msg


def test_checkpoint_of_another_method_is_rejected(tmp_path):
    path = tmp_path / "lift.pt"
    save_upsampler_checkpoint(create_upsampler("lift", dim=DIM, trainable=True), path)
    with pytest.raises(ValueError, match="'lift' checkpoint, not 'featup_jbu'"):
        create_upsampler("featup_jbu", dim=DIM, weights=path)


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError, match="no_such_file.pt"):
        create_upsampler("lift", dim=DIM, weights="no_such_file.pt")


@pytest.mark.parametrize("name", [n for n in NAMES if get_upsampler_class(n).learned])
def test_pretrained_offline_error_says_where_to_put_the_file(name, tiny_backbone, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cls = get_upsampler_class(name)
    if cls.pretrained is None:
        with pytest.raises(ValueError, match="no official pretrained checkpoint"):
            make(name, tiny_backbone, weights="pretrained")
        return
    target = up_base.weights_dir() / cls.pretrained.filename
    assert not target.exists()
    with pytest.raises(FileNotFoundError) as err:
        make(name, tiny_backbone, weights="pretrained")
    assert str(target) in str(err.value)


def test_parameter_free_methods_match_torch_interpolate():
    feats, image = inputs()
    F = torch.nn.functional
    size = (14 * H, 14 * W)
    expect = {
        "nearest": F.interpolate(feats, size=size, mode="nearest"),
        "bilinear": F.interpolate(feats, size=size, mode="bilinear", align_corners=True),
        "bicubic": F.interpolate(feats, size=size, mode="bicubic", align_corners=False),
    }
    for name, ref in expect.items():
        up = create_upsampler(name, dim=DIM)
        assert sum(p.numel() for p in up.parameters()) == 0
        torch.testing.assert_close(up(feats, image), ref, rtol=0, atol=0)
    # align_corners=True keeps the corner values exactly
    out = create_upsampler("bilinear", dim=DIM)(feats, image)
    torch.testing.assert_close(out[..., 0, 0], feats[..., 0, 0])
    torch.testing.assert_close(out[..., -1, -1], feats[..., -1, -1])
