"""Real photos with object masks, offline: the packaged sample photos and masks made once with
GrabCut (``probe_lib/data/photo_masks/``; how they were made is in its ``index.json``).

They are the last rung of the probe's sanity ladder (:mod:`probe_lib.sanity`): a probe trained on
the synthetic set should also follow real objects. Six instances, approximate masks -- a check,
not a benchmark.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

MASK_DIR = Path(__file__).with_name("photo_masks")


class PhotoMaskDataset:
    """The sample photos with GrabCut masks, in the evaluator's dataset interface.

    ``instances()`` lists ``(name, photo)``; ``get_instance(k)`` returns ``(image uint8 (H, W, 3)
    RGB, gt int8 (H, W) 1 object / 0 background, name)``. Photos larger than ``max_side`` are
    resized (area) so their long side is ``max_side``; masks follow (nearest).
    """

    name = "photos"

    def __init__(self, max_side: int = 320) -> None:
        index = json.loads((MASK_DIR / "index.json").read_text())
        self.entries = sorted(index["masks"].items())
        self.max_side = int(max_side)

    def __len__(self) -> int:
        return len(self.entries)

    def instances(self) -> list[tuple[str, str]]:
        return [(name, e["photo"]) for name, e in self.entries]

    def get_instance(self, k: int) -> tuple[np.ndarray, np.ndarray, str]:
        from probe_lib.data.synthetic import _PHOTO_SOURCES, _load_photo

        name, entry = self.entries[k]
        if entry["photo"] not in _PHOTO_SOURCES:
            raise ValueError(f"{MASK_DIR / 'index.json'}: unknown photo {entry['photo']!r} for "
                             f"mask {name!r}")
        image = _load_photo(*_PHOTO_SOURCES[entry["photo"]])
        path = MASK_DIR / f"{name}.png"
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise FileNotFoundError(f"mask file {path} is missing or unreadable")
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{path}: mask {mask.shape} does not match photo "
                             f"{entry['photo']} {image.shape[:2]}")
        h, w = mask.shape
        s = self.max_side / max(h, w)
        if s < 1:
            size = (max(1, round(w * s)), max(1, round(h * s)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        return image, (mask > 127).astype(np.int8), name
