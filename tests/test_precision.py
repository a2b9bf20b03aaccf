"""The frozen upsampler's precision inside the probe (probe_lib.upsamplers.precision): explicit
choices, the self-benchmark's decision rule, and a probe running a bf16 LoftUp copy."""

import pytest
import torch

from probe_lib.clicks import clicks_to_tensor
from probe_lib.config import make_config
from probe_lib.model import build_probe
from probe_lib.upsamplers import create_upsampler
from probe_lib.upsamplers import precision as P

S = 56  # 4x4 tokens with the tiny backbone


@pytest.fixture(autouse=True)
def _fresh_choices(monkeypatch):
    monkeypatch.setattr(P, "_CHOICES", {})


@pytest.fixture(scope="module")
def backbone():
    from probe_lib.backbones import create_backbone

    return create_backbone("test_tiny", weights="random", verbose=False)


def _batch(b=2, size=S, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 384, size // 14, size // 14, generator=g), \
        torch.rand(b, 3, size, size, generator=g)


def test_explicit_choices_and_bad_name(backbone):
    up = create_upsampler("loftup")
    feats, image = _batch()
    assert P.choose_precision(up, "fp32", feats=feats, image=image).dtype == torch.float32
    assert P.choose_precision(up, "bf16", feats=feats, image=image).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="'fp16'"):
        P.choose_precision(up, "fp16", feats=feats, image=image)
    with pytest.raises(ValueError, match="probe.upsampler_precision.*'half'"):
        build_probe(make_config("small", backbone__name="test_tiny", backbone__weights="random",
                                probe__upsampler_precision="half"), backbone=backbone)


def test_upsampler_in_training_mode_is_not_lowered():
    """frozen_bn_mode="reference" keeps the upsampler's BatchNorm in training mode: its statistics
    belong to the original module, so no bf16 copy is used."""
    up = create_upsampler("loftup", frozen_bn_mode="reference")
    up.train()
    assert up.training
    feats, image = _batch()
    for prec in ("bf16", "auto"):
        c = P.choose_precision(up, prec, feats=feats, image=image)
        assert c.dtype == torch.float32 and "training mode" in c.reason


def test_auto_keeps_parameter_free_upsamplers_in_float32(monkeypatch):
    monkeypatch.setattr(P, "self_benchmark", lambda *a: pytest.fail("benchmarked bilinear"))
    c = P.choose_precision(create_upsampler("bilinear"), "auto", *(), feats=_batch()[0],
                           image=_batch()[1])
    assert c.dtype == torch.float32 and "parameter-free" in c.reason


@pytest.mark.parametrize("t16,err_scale,expected", [(0.2, 0.0, torch.bfloat16),   # 5x faster
                                                    (0.8, 0.0, torch.float32),    # 1.25x only
                                                    (0.2, 0.2, torch.float32)])   # inaccurate
def test_self_benchmark_decision_rule(monkeypatch, t16, err_scale, expected):
    """bf16 only when >= MIN_SPEEDUP faster *and* within MAX_REL_ERROR of float32."""
    def fake_time(up, feats, image, repeats=2):
        with torch.no_grad():
            out = up(feats, image).float()
        if feats.dtype == torch.float32:
            return 1.0, out
        return t16, out * (1 + err_scale)

    monkeypatch.setattr(P, "_time_forward", fake_time)
    logged = []
    up = create_upsampler("loftup")
    feats, image = _batch()
    c = P.choose_precision(up, "auto", feats=feats, image=image, log=logged.append)
    assert c.dtype == expected
    assert c.fp32_seconds == 1.0 and c.bf16_seconds == t16
    assert len(logged) == 1 and c.name in logged[0]
    # cached for the process: the same upsampler at the same size is not benchmarked again
    assert P.choose_precision(up, "auto", feats=feats, image=image, log=logged.append) is c
    assert len(logged) == 1


def test_real_self_benchmark_reports_its_measurements():
    up = create_upsampler("loftup")
    c = P.self_benchmark(up, *_batch(b=1))
    assert c.fp32_seconds > 0 and c.bf16_seconds > 0
    assert 0 <= c.rel_error < P.MAX_REL_ERROR  # the float32 image keeps LoftUp accurate
    assert c.to_dict()["precision"] in ("fp32", "bf16")


def _inputs(b=2):
    g = torch.Generator().manual_seed(1)
    image = torch.rand(b, 3, S, S, generator=g)
    prev = torch.zeros(b, 1, S, S)
    pts = torch.cat([clicks_to_tensor([(20, 25, True), (40, 10, False)], max_points=2)
                     for _ in range(b)])
    return image, prev, pts


@pytest.mark.parametrize("injection", ["early", "late_highres"])
def test_probe_with_a_bf16_loftup(backbone, injection):
    """The probe runs a bf16 copy of the frozen LoftUp (not a submodule: checkpoints and
    trainable parameters are unchanged), returns float32 logits close to the float32 probe, and
    gradients still reach the click encoder through the copy (early injection)."""
    cfgs = {p: make_config("small", backbone__name="test_tiny", backbone__weights="random",
                           upsampler__name="loftup", upsampler__weights="random",
                           injection=injection, image_size=S, probe__upsampler_precision=p)
            for p in ("fp32", "bf16")}
    torch.manual_seed(0)
    up = create_upsampler("loftup")
    ref = build_probe(cfgs["fp32"], backbone=backbone, upsampler=up)
    low = build_probe(cfgs["bf16"], backbone=backbone, upsampler=up)
    low.load_state_dict(ref.state_dict())
    image, prev, pts = _inputs()
    with torch.no_grad():
        a, b = ref(image, prev, pts), low(image, prev, pts)
    assert low.precision_choice.name == "bf16" and ref.precision_choice.name == "fp32"
    assert b.dtype == torch.float32
    assert float((a - b).norm() / a.norm()) < 0.05
    assert set(low.state_dict()) == set(ref.state_dict())
    assert all(p.dtype == torch.float32 for p in up.parameters())  # the original is untouched
    # reusing the cached image-only part is exact on the bf16 copy too
    cache = low.encode_image(image)
    with torch.no_grad():
        torch.testing.assert_close(low.forward_cached(cache, prev, pts), b)
    low.train()
    low.forward_cached(low.encode_image(image), prev, pts).sum().backward()
    assert low.embed_coords.proj.weight.grad.abs().sum() > 0
