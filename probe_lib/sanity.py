"""The probe's sanity ladder: three rungs of increasing difficulty, each trained and scored the same way.

1. ``flat``: flat-colour shapes on a flat background (:func:`flat_shapes`). Any working probe
   separates them after a minute of CPU; a probe that does not has a defect (clicks not reaching
   the head, a wrong threshold, a broken loss), not a capacity problem.
2. ``teaching``: the synthetic teaching set (:mod:`probe_lib.data.synthetic`), real photo
   textures cut into objects of several patches with detail finer than a patch.
3. ``photos``: real photos that ship with scikit-image / scikit-learn, with GrabCut masks made
   once offline (:mod:`probe_lib.data.photos`), scored with a probe trained on rung 2.

:func:`run_rung` trains (or loads) a probe on a rung's training images and evaluates it with the
preset's protocol; notebook 09 shows all three and the tests check rung 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from probe_lib.data.is_datasets import ISSample

__all__ = ["FlatShapes", "RungResult", "flat_shapes", "run_rung"]


class FlatShapes:
    """Flat-colour ellipses and rectangles on a flat background, 1-2 objects per image.

    Both dataset interfaces: ``get_sample(i) -> ISSample`` (training: every object of image i)
    and ``instances()`` / ``get_instance(k) -> (image, gt, name)`` (evaluation: one object each).
    """

    name = "flat"

    def __init__(self, n: int, size: int = 224, seed: int = 0) -> None:
        if n < 1 or size < 32:
            raise ValueError(f"FlatShapes needs n >= 1 and size >= 32, got n={n}, size={size}")
        self.samples = [_flat_image(i, size, seed) for i in range(n)]
        self._inst = [(i, k) for i, s in enumerate(self.samples)
                      for k in range(1, int(s.objects.max()) + 1)]

    def __len__(self) -> int:
        return len(self.samples)

    def get_sample(self, i: int) -> ISSample:
        return self.samples[i]

    def instances(self) -> list[tuple[int, int]]:
        return list(self._inst)

    def get_instance(self, k: int) -> tuple[np.ndarray, np.ndarray, str]:
        i, obj = self._inst[k]
        s = self.samples[i]
        return s.image, (s.objects == obj).astype(np.int8), f"flat{i}_{obj}"


def _flat_image(i: int, size: int, seed: int) -> ISSample:
    rng = np.random.default_rng([seed, i, 17])
    bg = rng.integers(0, 256, 3)
    img = np.empty((size, size, 3), np.uint8)
    img[:] = bg
    objects = np.zeros((size, size), np.int32)
    for k in range(1, int(rng.integers(1, 3)) + 1):
        m = np.zeros((size, size), np.uint8)
        c = tuple(int(v) for v in rng.uniform(0.3, 0.7, 2) * size)
        r = int(rng.uniform(0.15, 0.25) * size)
        if rng.random() < 0.5:
            cv2.ellipse(m, c, (r, int(r * rng.uniform(0.6, 1.0))), float(rng.uniform(0, 180)),
                        0, 360, 1, -1)
        else:
            cv2.rectangle(m, (c[0] - r, c[1] - r // 2), (c[0] + r, c[1] + r // 2), 1, -1)
        colour = rng.integers(0, 256, 3)
        while np.abs(colour - bg).sum() < 200:  # clearly another colour than the background
            colour = rng.integers(0, 256, 3)
        img[m > 0] = colour
        objects[m > 0] = k
    present = [k for k in range(1, int(objects.max()) + 1) if (objects == k).any()]
    remap = np.zeros(int(objects.max()) + 1, np.int32)
    remap[present] = np.arange(1, len(present) + 1)
    return ISSample(img, remap[objects], np.zeros((size, size), bool), f"flat{i}")


def flat_shapes(n_train: int = 64, n_val: int = 16, size: int = 224, seed: int = 0
                ) -> tuple[FlatShapes, FlatShapes]:
    """Training and evaluation sets of rung 1 (different images)."""
    return FlatShapes(n_train, size, seed), FlatShapes(n_val, size, seed + 1)


@dataclass
class RungResult:
    """What one rung reached: ``iou1`` and ``miou`` (per-click mean IoU, percent), ``noc85``
    (mean, with the click cap for never), ``train_seconds`` and the evaluation result."""

    rung: str
    iou1: float
    miou: list[float]
    noc85: float
    empty_first_click: int
    train_seconds: float
    result: Any

    def to_dict(self) -> dict[str, Any]:
        return {"rung": self.rung, "iou1": round(float(self.iou1), 2),
                "noc85": round(float(self.noc85), 2),
                "miou": [round(float(v), 2) for v in self.miou],
                "empty_first_click": self.empty_first_click,
                "train_seconds": round(self.train_seconds, 1)}


def run_rung(rung: str, cfg, *, train_dataset=None, eval_dataset=None, probe=None,
             out_path: str | Path | None = None, backbone=None, progress: bool = False
             ) -> RungResult:
    """Train a probe with ``cfg`` on ``train_dataset`` (unless ``probe`` is given) and evaluate
    it on ``eval_dataset`` with ``cfg.eval``'s protocol.

    Args:
        rung: a label for the report (``"flat"``, ``"teaching"``, ``"photos"``).
        cfg: a :class:`probe_lib.config.Config`.
        train_dataset, eval_dataset: datasets (see :class:`FlatShapes` for the interfaces).
        probe: an already trained probe (rung 3 reuses rung 2's).
        out_path: where to save the probe (default: a temporary file).
    """
    import tempfile
    import time

    from probe_lib.evaluate import evaluate_config
    from probe_lib.metrics import miou_curve, noc
    from probe_lib.model import load_probe
    from probe_lib.train import train_probe

    seconds = 0.0
    if probe is None:
        if train_dataset is None:
            raise ValueError("run_rung needs a train_dataset or a trained probe")
        tmp = None
        if out_path is None:
            tmp = tempfile.TemporaryDirectory()
            out_path = Path(tmp.name) / f"{rung}.pt"
        t0 = time.process_time()
        train_probe(cfg, out_path, resume=False, progress=progress, train_dataset=train_dataset,
                    val_dataset=None if cfg.train.val_samples == 0 else train_dataset,
                    backbone=backbone)
        seconds = time.process_time() - t0
        probe, _ = load_probe(out_path)
        if tmp is not None:
            tmp.cleanup()
    res = evaluate_config(probe, cfg, eval_dataset, dataset_name=rung, progress=progress)
    ious = res.ious
    noc85 = noc(ious, 0.85, max_clicks=ious.shape[1])  # the evaluator's own NoC rule
    return RungResult(rung, float(ious[:, 0].mean() * 100), list(miou_curve(ious) * 100),
                      float(noc85), int((ious[:, 0] == 0).sum()), seconds, res)
