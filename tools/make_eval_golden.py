"""Write ``tests/data/eval_golden.json`` by running iSegProbe's own click loop.

Usage (the reference is not part of this repository; fetch it anywhere outside it)::

    git clone https://github.com/havrylovv/iSegProbe /tmp/iSegProbe
    python tools/make_eval_golden.py --reference /tmp/iSegProbe

For every case of ``tests/golden_eval_cases.py`` the reference's
``core/inference/evaluation.py::evaluate_sample`` runs with its
``BasePredictor(with_flip=..., zoom_in=ZoomIn(skip_clicks=-1, target_size=(224, 224)))`` on the
case's synthetic instance and deterministic fake network, for 20 clicks (the stop-at-target-IoU
threshold is set above 1 so that every click runs). The clicks and the float32 IoU after each
click are written; ``tests/test_eval_golden.py`` replays ``probe_lib.evaluate`` against them.

The ``plain`` protocol (whole image squashed to 224 at every click) has no switch in the
reference; it is the same ZoomIn with a minimum crop larger than any image, so that every
candidate region is clamped to the whole image.

Only the modules the click loop needs are imported from the reference; the model, dataset,
logging and config modules it imports on the way are replaced by empty placeholders here (they
are not used by the loop). Nothing from the reference is copied into this repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from golden_eval_cases import (
    CASES,
    GOLDEN_VERSION,
    MAX_CLICKS,
    TARGET_SIZE,
    case_instance,
)

# modules the reference's evaluation path imports but the click loop never uses
_PLACEHOLDERS = {
    "omegaconf": {"DictConfig": dict, "OmegaConf": object},
    "core.data.base_dataset": {"iSegBaseDataset": object},
    "core.data.datasets": {},
    "core.model": {"iSegBaseModel": object},
    "core.model.iseg_base_model": {"iSegBaseModel": object},
    "core.utils.exp": {"load_config_file": None},
    "core.utils.log": {"logger": None},
    "core.utils.serialization": {"load_model": None},
    "core.utils.viz": {"draw_points": None, "draw_probmap": None,
                       "draw_with_blend_and_clicks": None},
    "core.training.metrics": {"_compute_iou": None},
    "core.training.losses": {"SigmoidBinaryCrossEntropyLoss": object},
}


def import_reference(root: Path):
    """Import ``evaluate_sample``, ``BasePredictor`` and ``ZoomIn`` from a reference checkout."""
    if not (root / "core" / "inference" / "evaluation.py").is_file():
        raise FileNotFoundError(f"--reference {root}: core/inference/evaluation.py not found; "
                                "expected a checkout of github.com/havrylovv/iSegProbe")
    for name, attrs in _PLACEHOLDERS.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
    sys.path.insert(0, str(root))
    from core.inference.evaluation import evaluate_sample
    from core.inference.predictors import BasePredictor
    from core.inference.transforms import ZoomIn

    return evaluate_sample, BasePredictor, ZoomIn


class _RefNet:
    """The fake network behind the reference predictor's interface (4-channel input, dict out)."""

    with_prev_mask = True

    def __init__(self, fake):
        self.fake = fake

    def __call__(self, image_nd: torch.Tensor, points: torch.Tensor) -> dict:
        return {"instances": self.fake(image_nd[:, :3], image_nd[:, 3:], points)}


def run_case(name: str, evaluate_sample, BasePredictor, ZoomIn) -> dict:
    image, gt, fake, spec = case_instance(name)
    zoom_kwargs = {"skip_clicks": -1, "target_size": (TARGET_SIZE, TARGET_SIZE)}
    if spec["protocol"] == "plain":
        zoom_kwargs["min_crop_size"] = 10 * max(gt.shape)
    predictor = BasePredictor(_RefNet(fake), torch.device("cpu"), with_flip=spec["flip"],
                              zoom_in=ZoomIn(**zoom_kwargs))
    clicks, ious, _ = evaluate_sample(image, gt, predictor, max_iou_thr=2.0, pred_thr=0.5,
                                      max_clicks=MAX_CLICKS)
    return {"clicks": [[int(c.coords[0]), int(c.coords[1]), bool(c.is_positive)] for c in clicks],
            "ious": [float(np.float32(v)) for v in ious],
            "protocol": spec["protocol"], "flip": spec["flip"]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", required=True, type=Path,
                    help="checkout of github.com/havrylovv/iSegProbe")
    ap.add_argument("--commit", default=None, help="the reference commit, recorded in the file")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "eval_golden.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    fns = import_reference(args.reference.resolve())
    cases = {name: run_case(name, *fns) for name in CASES}
    doc = {"version": GOLDEN_VERSION,
           "source": "github.com/havrylovv/iSegProbe core/inference/evaluation.py::evaluate_sample",
           "reference_commit": args.commit, "target_size": TARGET_SIZE,
           "max_clicks": MAX_CLICKS, "torch": torch.__version__, "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    for name, c in cases.items():
        print(f"{name:14s} IoU@1 {c['ious'][0]:.4f}  IoU@5 {c['ious'][4]:.4f}  "
              f"IoU@20 {c['ious'][-1]:.4f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
