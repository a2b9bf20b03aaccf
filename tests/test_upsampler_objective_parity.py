"""Our upsampler-training loss terms against numbers computed once by the reference code.

``tests/data/upsampler_objective_golden.json`` was written by
``tools/upsampler_objective_golden.py`` (FeatUp ``featup/losses.py`` + ``featup/downsamplers.py``,
LoftUp's training helpers, LiFT's ``train_lift.py`` criterion); every input is stored there, so
these tests need no reference code. Tolerance 1e-5 (absolute, on float32 values of order 1).
"""

import json
from pathlib import Path

import pytest
import torch

from probe_lib.upsampler_training.downsampler import AttentionDownsampler, ScaleNet
from probe_lib.upsampler_training.featup import crf_loss, sample_crf_coords, total_variation
from probe_lib.upsampler_training.lift import cosine_distance
from probe_lib.upsampler_training.loftup import affinity_loss, pseudo_ground_truth

GOLDEN = json.loads((Path(__file__).parent / "data" / "upsampler_objective_golden.json")
                    .read_text())
TOL = {"atol": 1e-5, "rtol": 1e-5}


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def test_total_variation_matches_featup_and_loftup_tvloss():
    g = GOLDEN["tv"]
    ours = total_variation(t(g["x"])).item()
    assert ours == pytest.approx(g["featup"], abs=1e-5)
    assert ours == pytest.approx(g["loftup"], abs=1e-5)


def test_crf_matches_featup_sampled_crf_loss():
    g = GOLDEN["crf"]
    guide, feats = t(g["guidance"]), t(g["feats"])
    # a generator seeded like the reference's global RNG draws the same pixels
    gen = torch.Generator().manual_seed(g["seed"])
    ours = crf_loss(feats, guide, gen, n_samples=g["n_samples"]).item()
    assert ours == pytest.approx(g["value"], abs=1e-5, rel=1e-5)
    coords = sample_crf_coords(*feats.shape[-2:], g["n_samples"],
                               torch.Generator().manual_seed(g["seed"]))
    assert crf_loss(feats, guide, coords=coords).item() == pytest.approx(ours, abs=1e-7)
    # the comparison is sensitive: scaled features (our old channel mean) are far off
    assert abs(crf_loss(feats / 4, guide, coords=coords).item() - g["value"]) > 1e-2


@pytest.mark.parametrize("key,blur", [("down_featup", "gaussian"), ("down_loftup", "box")])
def test_attention_downsampler_init_and_eval_forward_match_reference(key, blur):
    g = GOLDEN[key]
    hr = t(g["hr"])
    torch.manual_seed(g["init_seed"])
    d = AttentionDownsampler(hr.shape[1], kernel=4, blur=blur).eval()
    # same construction order as the reference: logit layer, then w, then b (0.01 noise)
    torch.testing.assert_close(d.w.detach(), t(g["w"]), **TOL)
    torch.testing.assert_close(d.b.detach(), t(g["b"]), **TOL)
    torch.testing.assert_close(d.attention_net[1].weight.detach(), t(g["linear_weight"]), **TOL)
    torch.testing.assert_close(d.attention_net[1].bias.detach(), t(g["linear_bias"]), **TOL)
    torch.manual_seed(g["forward_seed"])  # window dropout is drawn in eval mode too
    with torch.no_grad():
        out = d(hr)
    torch.testing.assert_close(out, t(g["out"]), **TOL)
    # with every window kept the output differs: the stored value includes dropped windows
    with torch.no_grad():
        kept = d(hr, keep=torch.ones(hr.shape[0], out.shape[-2] * out.shape[-1], dtype=bool))
    assert not torch.allclose(kept, t(g["out"]), atol=1e-4)


def test_scalenet_init_scaled_and_forward():
    g = GOLDEN["scalenet"]
    torch.manual_seed(g["seed"])
    sn = ScaleNet(5)
    torch.testing.assert_close(sn.net.weight.detach(), t(g["weight"]), **TOL)
    torch.testing.assert_close(sn.net.bias.detach(), t(g["bias"]), **TOL)
    with torch.no_grad():
        torch.testing.assert_close(sn(t(g["x"])), t(g["out"]), **TOL)


def test_affinity_loss_matches_loftup():
    g = GOLDEN["affinity"]
    ours = affinity_loss(t(g["student"]), t(g["teacher"]), border=0.1).item()
    assert ours == pytest.approx(g["value"], abs=1e-6, rel=1e-5)


def test_stage1_pseudo_ground_truth_matches_loftup_mask_adjustment():
    g = GOLDEN["pseudo_gt"]
    masks = t(g["masks"]).to(torch.int8)
    ours = pseudo_ground_truth(t(g["lr"]), masks, (8, 8), alpha=g["alpha"])
    torch.testing.assert_close(ours, t(g["out"]), **TOL)


def test_lift_pyramid_loss_matches_cosine_embedding_criterion():
    g = GOLDEN["lift"]
    ours = (cosine_distance(t(g["gen1"]), t(g["feat1"]))
            + cosine_distance(t(g["gen2"]), t(g["feat2"]))).item()
    assert ours == pytest.approx(g["value"], abs=1e-5)
