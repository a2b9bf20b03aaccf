"""LoftUp: official key layout, strict loading from synthetic checkpoints, chunked attention exact
against the explicit nn.MultiheadAttention path, Fourier/coordinate conventions, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

from probe_lib.upsamplers import create_upsampler, save_upsampler_checkpoint
from probe_lib.upsamplers import loftup as L

# Official key names and shapes (released LoftUp checkpoint), written independently of the module.
_BN = {"weight": (404,), "bias": (404,), "running_mean": (404,), "running_var": (404,),
       "num_batches_tracked": ()}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(single_torch_thread):
    yield


def official_shapes() -> dict[str, tuple]:
    s = {"channelnorm.norm.weight": (384,), "channelnorm.norm.bias": (384,),
         "upsampler.lr_pe.biases": (2, 2, 5), "upsampler.fourier_feat.1.biases": (2, 5, 20),
         "upsampler.first_conv.0.norm.weight": (203,), "upsampler.first_conv.0.norm.bias": (203,),
         "upsampler.first_conv.1.weight": (404, 203, 3, 3), "upsampler.first_conv.1.bias": (404,),
         "upsampler.first_conv.4.weight": (404, 404, 3, 3), "upsampler.first_conv.4.bias": (404,),
         "upsampler.ca_transformer.norm.weight": (404,),
         "upsampler.ca_transformer.norm.bias": (404,),
         "upsampler.final_conv.0.weight": (384, 404, 1, 1), "upsampler.final_conv.0.bias": (384,),
         "upsampler.final_conv.1.weight": (384,), "upsampler.final_conv.1.bias": (384,)}
    for i in (2, 5):
        for k, v in _BN.items():
            s[f"upsampler.first_conv.{i}.{k}"] = v
    for layer in (0, 1):
        p = f"upsampler.ca_transformer.layers.{layer}"
        for n in ("norm_q", "norm_kv"):
            s[f"{p}.0.{n}.weight"] = (404,)
            s[f"{p}.0.{n}.bias"] = (404,)
        s[f"{p}.0.attention.in_proj_weight"] = (1212, 404)
        s[f"{p}.0.attention.in_proj_bias"] = (1212,)
        s[f"{p}.0.attention.out_proj.weight"] = (404, 404)
        s[f"{p}.0.attention.out_proj.bias"] = (404,)
        s[f"{p}.1.net.0.weight"] = (404,)
        s[f"{p}.1.net.0.bias"] = (404,)
        s[f"{p}.1.net.1.weight"] = (384, 404)
        s[f"{p}.1.net.1.bias"] = (384,)
        s[f"{p}.1.net.4.weight"] = (404, 384)
        s[f"{p}.1.net.4.bias"] = (404,)
    return s


def synthetic_official(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in official_shapes().items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(1000)
        elif k.endswith("running_var"):
            sd[k] = torch.rand(shape, generator=g) + 0.5
        else:
            sd[k] = torch.randn(shape, generator=g) * 0.05
    return sd


def _inputs(b=1, h=4, w=5, hh=30, ww=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 384, h, w, generator=g), torch.rand(b, 3, hh, ww, generator=g)


def test_parameter_count_and_official_layout():
    m = create_upsampler("loftup")
    assert sum(p.numel() for p in m.upsampler.parameters()) == 4_303_126
    assert sum(p.numel() for p in m.channelnorm.parameters()) == 768
    ours = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert ours == official_shapes()


def test_norm_eps_conventions():
    m = create_upsampler("loftup")
    assert m.upsampler.final_conv[1].eps == 1e-6
    assert m.channelnorm.norm.eps == 1e-5
    assert m.upsampler.ca_transformer.norm.eps == 1e-5
    assert m.upsampler.first_conv[0].norm.eps == 1e-5


@pytest.mark.parametrize("layout", ["hf", "lightning", "ours"])
def test_strict_load_from_synthetic_checkpoints(tmp_path, layout):
    sd = synthetic_official()
    path = tmp_path / f"{layout}.pt"
    if layout == "hf":
        torch.save(sd, path)
    elif layout == "lightning":
        ck = {k: v for k, v in sd.items() if k.startswith("upsampler.")}
        ck["model.1.norm.weight"] = sd["channelnorm.norm.weight"]
        ck["model.1.norm.bias"] = sd["channelnorm.norm.bias"]
        ck["model.0.model.cls_token"] = torch.zeros(1, 1, 384)  # frozen backbone copy
        ck["downsampler.kernel_size"] = torch.zeros(1)  # training-only head
        torch.save({"state_dict": ck, "epoch": 0}, path)
    else:
        src = create_upsampler("loftup", trainable=True)
        src.load_state_dict(sd)
        save_upsampler_checkpoint(src, path, config={"x": 1}, backbone="test", step=7)
    m = create_upsampler("loftup", weights=path)
    for k, v in m.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert str(path.name) in m.weights_id
    # BN running statistics are used (eval), so a freshly initialised module differs.
    lr, img = _inputs()
    with torch.no_grad():
        assert not torch.allclose(m(lr, img), create_upsampler("loftup")(lr, img))


def test_mismatched_checkpoint_lists_keys(tmp_path):
    sd = synthetic_official()
    sd.pop("upsampler.lr_pe.biases")
    sd["upsampler.extra.weight"] = torch.zeros(3)
    sd["upsampler.fourier_feat.1.biases"] = torch.zeros(2, 20, 5)  # transposed phases
    path = tmp_path / "bad.bin"
    torch.save(sd, path)
    with pytest.raises(ValueError) as err:
        create_upsampler("loftup", weights=path)
    msg = str(err.value)
    assert "upsampler.lr_pe.biases" in msg and "upsampler.extra.weight" in msg
    assert "upsampler.fourier_feat.1.biases" in msg and "missing" in msg


def test_pretrained_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="loftup-dinov2s"):
        create_upsampler("loftup", weights="pretrained")


def test_missing_weights_file():
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        create_upsampler("loftup", weights="/nonexistent/nope.bin")


def _perturbed(**kw):
    m = create_upsampler("loftup", **kw)
    with torch.no_grad():
        for i in (2, 5):  # non-trivial BatchNorm statistics
            bn = m.upsampler.first_conv[i]
            bn.running_mean.normal_(0, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
    return m


@pytest.mark.parametrize("path", ["sdpa", "folded"])
@pytest.mark.parametrize("b", [1, 2])
def test_chunked_equals_explicit(b, path):
    torch.manual_seed(0)
    m = _perturbed(query_chunk=97, row_band=7)  # uneven chunks and bands
    m.upsampler.attention_path = path
    lr, img = _inputs(b=b)
    with torch.no_grad():
        fast = m(lr, img)
        ref = m.forward_explicit(lr, img)
        m.upsampler.row_band = None
        m.upsampler.query_chunk = 10**6
        whole = m(lr, img)
    assert fast.shape == (b, 384, 30, 37)
    assert (fast - ref).abs().max() < 1e-5
    assert (whole - ref).abs().max() < 1e-5


def test_chunked_path_never_builds_the_full_matrix(monkeypatch):
    m = _perturbed(query_chunk=64, row_band=5)
    m.upsampler.attention_path = "sdpa"
    lr, img = _inputs(hh=20, ww=24)
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        seen.append((q.shape[-2], k.shape[-2]))
        return real(q, k, v, *a, **kw)

    def forbidden(*a, **kw):
        raise AssertionError("explicit MultiheadAttention called on the chunked path")

    monkeypatch.setattr(L.F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(torch.nn.MultiheadAttention, "forward", forbidden)
    with torch.no_grad():
        m(lr, img)
    assert seen and max(q for q, _ in seen) <= 64
    assert all(k == 20 for _, k in seen)
    assert sum(q for q, _ in seen) == 2 * 20 * 24  # every query exactly once per layer


def test_auto_attention_path_follows_the_multiply_add_count(monkeypatch):
    """auto folds the projections when heads*h*w < width + h*w (4*64 < 404+64 at 8x8 tokens)
    and uses SDPA otherwise (4*256 > 404+256 at 16x16); the folded path calls neither SDPA nor
    the explicit attention, and an unknown path is a clear error."""
    m = _perturbed()
    calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(L.F, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    folded = []
    real_fold = L.CrossAttention.forward_folded
    monkeypatch.setattr(L.CrossAttention, "forward_folded",
                        lambda self, *a: folded.append(1) or real_fold(self, *a))
    with torch.no_grad():
        m(*_inputs(h=8, w=8, hh=16, ww=16))
        assert folded and not calls
        folded.clear()
        m(*_inputs(h=16, w=16, hh=32, ww=32))
        assert calls and not folded
    m.upsampler.attention_path = "fast"
    with pytest.raises(ValueError, match="attention_path"):
        m(*_inputs())


def test_folded_gradients_match_sdpa():
    """Early injection back-propagates through the frozen LoftUp into the low-res features:
    the folded path gives the same input gradients as the SDPA path."""
    m = _perturbed()
    lr, img = _inputs(b=2, h=3, w=4, hh=15, ww=20)
    grads = {}
    for path in ("folded", "sdpa"):
        m.upsampler.attention_path = path
        x = lr.clone().requires_grad_(True)
        (m(x, img) * torch.linspace(-1, 1, 384).view(1, -1, 1, 1)).sum().backward()
        grads[path] = x.grad
    assert grads["sdpa"].abs().sum() > 0
    rel = (grads["folded"] - grads["sdpa"]).norm() / grads["sdpa"].norm()
    assert rel < 1e-5, rel  # float32 rounding only (the maximum element differs by ~1e-6 rel.)


def test_lowered_copy_keeps_fourier_arguments_in_float32():
    """bf16 copies (probe_lib.upsamplers.precision) keep the Fourier multipliers exact and form
    the arguments in float32; the output is bf16 and close to float32."""
    m = _perturbed()
    low = create_upsampler("loftup")
    low.load_state_dict(m.state_dict())
    low = low.to(torch.bfloat16)
    ff = low.upsampler.fourier_feat[1]
    assert ff.freqs.dtype == torch.float32
    assert ff.freqs[-1].item() == pytest.approx(math.exp(10.0), rel=1e-6)
    lr, img = _inputs(h=8, w=8, hh=32, ww=32)
    x = torch.rand(1, 5, 3, 4).bfloat16()
    ref = L.fourier_features(x.float(), ff.freqs, ff.biases.float())
    got = L.fourier_features(x, ff.freqs, ff.biases)
    assert got.dtype == torch.bfloat16
    # same values in, float32 arithmetic: only the final cast to bf16 rounds (|sin| <= 1)
    torch.testing.assert_close(got.float(), ref, rtol=0, atol=1 / 128)
    assert low.float32_image  # the image is not lowered (see precision.lowered_inputs)
    with torch.no_grad():
        out = low(lr.bfloat16(), img)
        ref_out = m(lr, img)
    assert out.dtype == torch.bfloat16
    assert float((out.float() - ref_out).norm() / ref_out.norm()) < 0.03  # 0.5 with a bf16 image


def test_training_mode_gradients_and_exactness():
    m = create_upsampler("loftup", trainable=True, query_chunk=50)
    m.train()
    lr, img = _inputs(b=2, h=3, w=3, hh=12, ww=10)
    lr.requires_grad_(True)
    out = m(lr, img)
    ref = m.forward_explicit(lr, img)  # same batch statistics in train mode
    assert (out - ref).abs().max() < 1e-5
    out.square().mean().backward()
    assert lr.grad is not None and torch.isfinite(lr.grad).all()
    for name, p in m.named_parameters():
        assert p.grad is not None, name


def test_frozen_module_has_no_grad_and_stays_eval():
    m = create_upsampler("loftup")
    m.train()
    assert not m.training and not m.upsampler.first_conv[2].training
    assert all(not p.requires_grad for p in m.parameters())


def test_fourier_phase_raw_reshape_and_ij_grid():
    grid = L.coordinate_grid(3, 5)
    assert torch.allclose(grid[0, :, 0], torch.tensor([-1.0, 0.0, 1.0]))  # channel 0 = row
    assert torch.allclose(grid[1, 0], torch.linspace(-1, 1, 5))
    ff = L.FourierFeatures(5, 20, append_from=2)
    x = torch.randn(1, 5, 2, 3)
    out = ff(x).detach()
    assert out.shape == (1, 203, 2, 3)
    freqs = torch.exp(torch.linspace(-2, 10, 20))
    b0, b1 = ff.biases[0].detach().numpy().ravel(), ff.biases[1].detach().numpy().ravel()
    for k in (0, 7, 19):
        for d in range(5):
            j = k * 5 + d
            arg = float(x[0, d, 1, 2]) * float(freqs[k])
            assert math.isclose(float(out[0, j, 1, 2]), math.sin(arg + b0[j]), abs_tol=1e-3)
            assert math.isclose(float(out[0, 100 + j, 1, 2]), math.cos(arg + b1[j]), abs_tol=1e-3)
    assert torch.equal(out[:, 200:], x[:, 2:])


def test_minmax_scope():
    lr, img = _inputs(b=2)
    img[1] = img[1] * 0.3 + 0.6  # different colour range in the second image
    batch = _perturbed(loftup_minmax_scope="batch")
    sample = _perturbed(minmax_scope="sample")
    sample.load_state_dict(batch.state_dict())
    with torch.no_grad():
        b_all, s_all = batch(lr, img), sample(lr, img)
        b_one, s_one = batch(lr[1:], img[1:]), sample(lr[1:], img[1:])
    assert (s_all[1] - s_one[0]).abs().max() < 1e-4  # per-sample scaling: batch-independent
    assert (b_all[1] - b_one[0]).abs().max() > 1e-3  # reference: depends on the batch
    assert (b_one - s_one).abs().max() < 1e-5  # B = 1: the two scopes agree
    with pytest.raises(ValueError, match="minmax_scope"):
        create_upsampler("loftup", minmax_scope="image")


def test_output_sizes_and_attention_map():
    m = _perturbed()
    lr, img = _inputs(h=4, w=6, hh=28, ww=42)
    with torch.no_grad():
        assert m(lr, img, output_size="native").shape == (1, 384, 28, 42)
        assert m(lr, img, output_size=(14, 21)).shape == (1, 384, 14, 21)
        att = m.attention_map(lr, img, row=5, col=40)
        full = m.upsampler._stem(m.upsampler.query_inputs(L.imagenet_normalize(img)))
        q = full[:, :, 5, 40][:, None]
        _, ref = m.upsampler.ca_transformer.layers[0][0].forward_explicit(
            q, m.upsampler.keys_values(m.channelnorm(lr)))
    assert att.shape == (1, 4, 4, 6)
    assert torch.allclose(att.sum(dim=(-2, -1)), torch.ones(1, 4), atol=1e-5)
    assert torch.allclose(att.flatten(2), ref[:, :, 0], atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        m.attention_map(lr, img, row=28, col=0)


def test_bad_input():
    m = create_upsampler("loftup")
    lr, img = _inputs()
    with pytest.raises(ValueError, match="channels"):
        m(lr[:, :100], img)
    with pytest.raises(ValueError, match="batch"):
        m(lr, torch.rand(2, 3, 30, 37))
    with pytest.raises(ValueError, match="4-D"):
        m(lr[0], img)
    bad = lr.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m(bad, img)
