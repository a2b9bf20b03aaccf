"""Helpers the notebooks use to teach: FeatUp's toy multi-view reconstruction, the paper-vs-ours
rankings of notebook 11."""

import pytest
import torch

from probe_lib import results as R
from probe_lib.upsampler_training.featup import toy_multiview_reconstruction


def _stripes_and_disk(n=32):
    yy, xx = torch.meshgrid(torch.arange(float(n)), torch.arange(float(n)), indexing="ij")
    return torch.stack([(xx // 3) % 2, ((yy - 16) ** 2 + (xx - 14) ** 2 < 60).float()])[None]


def test_toy_multiview_reconstruction_beats_bilinear(single_torch_thread):
    truth = _stripes_and_disk()
    r = toy_multiview_reconstruction(truth, steps=120)
    err = {k: float(((r[k] - truth) ** 2).mean()) for k in ("bilinear", "reconstruction")}
    # 3-px stripes under 4-px pooling: one view cannot hold them, 24 shifted views can
    assert err["reconstruction"] < 0.5 * err["bilinear"], err
    assert r["lowres"].shape == (1, 2, 8, 8) and r["losses"][-1] < 0.2 * r["losses"][0]


def test_toy_multiview_reconstruction_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiples of factor=4"):
        toy_multiview_reconstruction(torch.zeros(1, 2, 30, 32))


def test_paper_noc90_ranking_puts_loftup_first_and_lift_last_early():
    rank = [u for u, _ in R.paper_noc90_ranking("patch_embed")]
    assert rank[0] == "loftup" and rank[-1] == "lift"
    late = dict(R.paper_noc90_ranking("simple_vit"))
    assert late["loftup"] < late["bilinear"]
    with pytest.raises(ValueError, match="column"):
        R.paper_noc90_ranking("early")


def test_our_ranking_groups_and_sorts():
    rows = [{"click_encoder": "patch_embed", "injection": "early", "upsampler": u, "NoC90": v}
            for u, v in (("bilinear", 8.0), ("loftup", 6.0), ("bilinear", 10.0))]
    rows.append({"click_encoder": "patch_embed", "injection": "late_highres",
                 "upsampler": "loftup", "NoC90": 3.0})
    out = R.our_ranking(rows)
    assert out[("patch_embed", "early")] == [("loftup", 6.0), ("bilinear", 9.0)]
    assert out[("patch_embed", "late_highres")] == [("loftup", 3.0)]
