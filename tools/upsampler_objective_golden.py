"""Compute reference values of the upsampler-training loss terms with the *reference* code.

Run once, outside the test suite, with the public reference files checked out somewhere outside
this repository; it writes ``tests/data/upsampler_objective_golden.json``, which
``tests/test_upsampler_objective_parity.py`` compares our implementations with (<= 1e-5).

This script contains none of the reference code: it imports it from the paths given.

    python tools/upsampler_objective_golden.py \\
        --featup <FeatUp checkout>/featup \\          # downsamplers.py, losses.py (needs kornia)
        --loftup <dir with LoftUp's training_utils.py> \\
        --lift <LiFT checkout> \\                     # train_lift.py (only checked, see below)
        [--extra-path <dir with kornia>] [--out tests/data/upsampler_objective_golden.json]

Terms (fixed tiny inputs from fixed seeds; the inputs are stored in the JSON too):

* ``tv``: FeatUp ``losses.TVLoss`` and LoftUp ``TVLoss``.
* ``crf``: FeatUp ``losses.SampledCRFLoss`` with the JBU recipe's constants
  (``train_jbu_upsampler.py``), its pixel draw seeded through the global RNG.
* ``down_featup`` / ``down_loftup``: ``AttentionDownsampler`` built after ``torch.manual_seed``
  (initial ``w``, ``b``, logit layer) and run in eval mode after another seed (window dropout is
  drawn in eval too); FeatUp's Gaussian (kornia) blur, LoftUp's box blur.
* ``scalenet``: LoftUp ``ScaleNet`` (same code as FeatUp's) built after a seed.
* ``affinity``: ``mse_loss`` of LoftUp's ``compute_affinity_matrix_batch`` of student, teacher.
* ``pseudo_gt``: bicubic upsampling + LoftUp's ``adjust_features_with_masks`` (alpha 0.8) with
  an empty mask and a -1 padding mask.
* ``lift``: the criterion ``train_lift.py --loss cosine`` selects, ``torch.nn.CosineEmbeddingLoss``
  on pixels flattened as that script does, for both pyramid levels (the script is read to check
  that it still selects that criterion; it is not importable without its data and models).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F


def load(path: Path, name: str):
    """Import one reference file by path (never its package ``__init__``, which for FeatUp
    would build a CUDA extension)."""
    if not path.is_file():
        raise FileNotFoundError(f"reference file not found: {path}")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def as_list(t: torch.Tensor) -> list:
    """Nested lists of floats with 9 significant digits (a float32 round-trips exactly)."""
    def r(v):
        return [r(x) for x in v] if isinstance(v, list) else float(f"{v:.9g}")
    return r(t.detach().double().tolist())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--featup", type=Path, required=True, help="FeatUp's featup/ folder")
    ap.add_argument("--loftup", type=Path, required=True, help="folder with training_utils.py")
    ap.add_argument("--lift", type=Path, required=True, help="LiFT checkout (train_lift.py)")
    ap.add_argument("--extra-path", action="append", default=[], help="added to sys.path")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parents[1] / "tests" / "data"
                    / "upsampler_objective_golden.json")
    ap.add_argument("--source", action="append", default=[],
                    help="free text recorded in the JSON (repo@commit of each reference)")
    a = ap.parse_args(argv)
    sys.path[:0] = a.extra_path
    torch.set_default_dtype(torch.float32)

    fu_losses = load(a.featup / "losses.py", "ref_featup_losses")
    # FeatUp's AttentionDownsampler moves w, b to CUDA in __init__: make .cuda() a no-op here.
    torch.Tensor.cuda = lambda self, *args, **kw: self  # type: ignore[method-assign]
    fu_down = load(a.featup / "downsamplers.py", "ref_featup_downsamplers")
    lu = load(a.loftup / "training_utils.py", "ref_loftup_training_utils")
    lift_src = (a.lift / "train_lift.py").read_text()
    if "torch.nn.CosineEmbeddingLoss()" not in lift_src:
        raise SystemExit("train_lift.py no longer selects torch.nn.CosineEmbeddingLoss; check it")

    out: dict = {"sources": a.source, "torch": torch.__version__}

    # TV
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=g)
    out["tv"] = {"x": as_list(x), "featup": fu_losses.TVLoss()(x).item(),
                 "loftup": lu.TVLoss()(x).item()}

    # CRF (JBU recipe constants)
    g = torch.Generator().manual_seed(1)
    guide = torch.randn(2, 3, 9, 11, generator=g)
    feats = torch.randn(2, 4, 9, 11, generator=g)
    crf = fu_losses.SampledCRFLoss(alpha=.1, beta=.15, gamma=.005, w1=10.0, w2=3.0, shift=0.0,
                                   n_samples=40)
    torch.manual_seed(7)
    out["crf"] = {"guidance": as_list(guide), "feats": as_list(feats), "n_samples": 40,
                  "seed": 7, "value": crf(guide, feats).item()}

    # attention downsamplers: init after seed 0, eval forward after seed 1
    for key, mod, extra in (("down_featup", fu_down, ()), ("down_loftup", lu, ())):
        g = torch.Generator().manual_seed(2)
        hr = torch.randn(2, 3, 12, 12, generator=g)
        torch.manual_seed(0)
        d = mod.AttentionDownsampler(3, 4, 3, True, *extra).eval()
        torch.manual_seed(1)
        y = d(hr, None)
        out[key] = {"hr": as_list(hr), "init_seed": 0, "forward_seed": 1,
                    "w": as_list(d.w.flatten()), "b": as_list(d.b.flatten()),
                    "linear_weight": as_list(d.attention_net[1].weight),
                    "linear_bias": as_list(d.attention_net[1].bias), "out": as_list(y)}

    # ScaleNet init (x0.1) and forward
    torch.manual_seed(3)
    sn = lu.ScaleNet(5)
    g = torch.Generator().manual_seed(4)
    t = torch.randn(1, 5, 3, 4, generator=g)
    out["scalenet"] = {"seed": 3, "x": as_list(t), "weight": as_list(sn.net.weight),
                       "bias": as_list(sn.net.bias), "out": as_list(sn(t))}

    # affinity loss (10 % border)
    g = torch.Generator().manual_seed(5)
    s_, t_ = torch.randn(2, 6, 10, 10, generator=g), torch.randn(2, 6, 10, 10, generator=g)
    val = F.mse_loss(lu.compute_affinity_matrix_batch(s_), lu.compute_affinity_matrix_batch(t_))
    out["affinity"] = {"student": as_list(s_), "teacher": as_list(t_), "value": val.item()}

    # stage-1 pseudo-GT: bicubic to 8x8 then mask refinement
    g = torch.Generator().manual_seed(6)
    lr = torch.randn(2, 4, 2, 2, generator=g)
    masks = torch.zeros(2, 4, 8, 8)
    masks[0, 0, :5, :5] = 1
    masks[0, 1, 3:, 2:7] = 1  # overlaps mask 0: later masks win
    masks[0, 3] = -1  # padding
    masks[1, 0, 1:7, 1:4] = 1
    masks[1, 2, 4:, :] = 1  # mask 1 of image 1 stays empty
    masks[1, 3] = -1
    up = F.interpolate(lr, size=(8, 8), mode="bicubic")
    pgt = lu.adjust_features_with_masks(up, masks, alpha=0.8)
    out["pseudo_gt"] = {"lr": as_list(lr), "masks": as_list(masks), "alpha": 0.8,
                        "out": as_list(pgt)}

    # LiFT pyramid loss: CosineEmbeddingLoss on flattened pixels, both levels
    g = torch.Generator().manual_seed(8)
    gen1, feat1 = torch.randn(2, 6, 4, 4, generator=g), torch.randn(2, 6, 4, 4, generator=g)
    gen2, feat2 = torch.randn(2, 6, 2, 2, generator=g), torch.randn(2, 6, 2, 2, generator=g)
    crit = torch.nn.CosineEmbeddingLoss()

    def flat(z: torch.Tensor) -> torch.Tensor:
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])

    lv = (crit(flat(gen1), flat(feat1), torch.ones(flat(gen1).shape[0]))
          + crit(flat(gen2), flat(feat2), torch.ones(flat(gen2).shape[0])))
    out["lift"] = {"gen1": as_list(gen1), "feat1": as_list(feat1), "gen2": as_list(gen2),
                   "feat2": as_list(feat2), "value": lv.item()}

    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
