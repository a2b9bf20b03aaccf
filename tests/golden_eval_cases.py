"""Synthetic instances and a deterministic fake network for the evaluation-loop golden test.

Shared by ``tools/make_eval_golden.py`` (which drives iSegProbe's own click loop with them and
writes ``tests/data/eval_golden.json``) and ``tests/test_eval_golden.py`` (which replays
``probe_lib.evaluate`` against that file). Nothing here comes from the reference: the network is
an arbitrary smooth function of its inputs, chosen so that every step of the protocol (zoom
region, click coordinates, previous mask, flip averaging, logit upsampling, sigmoid, paste-back)
changes the outcome.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

GOLDEN_VERSION = 1


class FakeNet:
    """Deterministic stand-in for a probe: logits from brightness, previous mask and clicks.

    ``__call__(image (B,3,S,S) in [0,1], prev_mask (B,1,S,S), points (B,2N,3)) -> logits
    (B,1,S/stride,S/stride)``. Points are ``(row, col, order)`` in network pixels, positives in
    the first N rows, negatives in the last N, padding ``-1``.

    - brightness: objects are brighter than the background, so ``gain * (gray - 0.5)`` alone
      already finds most of an object;
    - previous mask: ``prev_gain * (prev - 0.5)`` (the prediction carries over between clicks);
    - clicks: a Gaussian bump of ``click_radius`` network pixels, + for positive, - for negative;
      a fixed radius in network pixels makes the zoom region matter;
    - ``tilt``: a left-right ramp, which flip averaging cancels (so flip on/off differ);
    - ``collapse``: click counts at which the output is strongly negative everywhere (an empty
      prediction);
    - the output is average-pooled by ``stride``, so the logit upsampling step matters.
    """

    def __init__(self, gain: float = 8.0, prev_gain: float = 2.0, click_gain: float = 6.0,
                 click_radius: float = 12.0, tilt: float = 1.5, stride: int = 4,
                 collapse: tuple[int, ...] = ()):
        self.gain, self.prev_gain, self.click_gain = gain, prev_gain, click_gain
        self.click_radius, self.tilt, self.stride = click_radius, tilt, stride
        self.collapse = tuple(collapse)

    def __call__(self, image: torch.Tensor, prev_mask: torch.Tensor,
                 points: torch.Tensor) -> torch.Tensor:
        image, prev_mask, points = image.float(), prev_mask.float(), points.float()
        b, _, s, w = image.shape
        gray = image.mean(dim=1, keepdim=True)
        logits = self.gain * (gray - 0.5) + self.prev_gain * (prev_mask - 0.5)
        cols = torch.arange(w, dtype=torch.float32)
        rows = torch.arange(s, dtype=torch.float32)
        logits = logits + self.tilt * (cols / (w - 1) - 0.5)
        n = points.shape[1] // 2
        for k in range(b):
            num_valid = 0
            for j in range(points.shape[1]):
                r, c = points[k, j, 0], points[k, j, 1]
                if float(r) < 0:  # padding
                    continue
                num_valid += 1
                sign = 1.0 if j < n else -1.0
                d2 = (rows[:, None] - r) ** 2 + (cols[None, :] - c) ** 2
                bump = torch.exp(-d2 / (2.0 * self.click_radius ** 2))
                logits[k, 0] = logits[k, 0] + sign * self.click_gain * bump
            if num_valid in self.collapse:
                logits[k, 0] = logits[k, 0] - 40.0
        return F.avg_pool2d(logits, self.stride)


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def make_instance(kind: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic instance: (uint8 image (H,W,3), int8 gt (H,W) 1 / 0 / -1)."""
    rng = np.random.default_rng(seed)
    if kind == "large":
        h, w = 240, 320
        obj = _ellipse(h, w, 118, 165, 100, 140)
    elif kind == "small":
        h, w = 300, 400
        obj = _ellipse(h, w, 140, 230, 14, 20)
    elif kind == "border":  # touches the bottom and right borders
        h, w = 260, 300
        obj = _ellipse(h, w, 230, 270, 70, 60)
    elif kind == "tall":
        h, w = 360, 200
        obj = _ellipse(h, w, 180, 95, 150, 30)
    elif kind == "last_row_col":  # thin L along the last row and the last column
        h, w = 220, 260
        obj = np.zeros((h, w), bool)
        obj[h - 1, 60:] = True
        obj[90:, w - 1] = True
    elif kind == "medium":
        h, w = 280, 240
        obj = _ellipse(h, w, 150, 110, 60, 45)
    else:
        raise ValueError(f"unknown instance kind {kind!r}")
    gray = np.where(obj, 0.62, 0.40) + 0.08 * rng.standard_normal((h, w))
    gray += 0.10 * np.sin(np.arange(w) / 17.0)[None, :]  # background clutter
    image = np.clip(np.stack([gray, 0.9 * gray + 0.05, 1.1 * gray - 0.05], -1), 0, 1)
    gt = obj.astype(np.int8)
    return (image * 255).round().astype(np.uint8), gt


def with_ignore(gt: np.ndarray) -> np.ndarray:
    """Mark a 3-px band just outside the object and a block in a corner as ignore (-1)."""
    from scipy.ndimage import binary_dilation

    out = gt.copy()
    band = binary_dilation(gt == 1, iterations=3) & (gt != 1)
    out[band] = -1
    out[:30, :40] = -1
    return out


# name -> instance kind, ignore, protocol, flip, FakeNet keyword arguments
CASES: dict[str, dict] = {
    "large": {"kind": "large", "ignore": False, "protocol": "isegprobe_fixed224", "flip": True,
              "net": {}},
    "small": {"kind": "small", "ignore": False, "protocol": "isegprobe_fixed224", "flip": True,
              "net": {}},
    "border": {"kind": "border", "ignore": False, "protocol": "isegprobe_fixed224",
               "flip": True, "net": {}},
    "tall_ignore": {"kind": "tall", "ignore": True, "protocol": "isegprobe_fixed224",
                    "flip": True, "net": {}},
    "last_row_col": {"kind": "last_row_col", "ignore": False,
                     "protocol": "isegprobe_fixed224", "flip": True, "net": {}},
    "empties": {"kind": "medium", "ignore": False, "protocol": "isegprobe_fixed224",
                "flip": True, "net": {"collapse": (3, 4)}},
    "plain": {"kind": "medium", "ignore": False, "protocol": "plain", "flip": True, "net": {}},
    "flip_off": {"kind": "large", "ignore": False, "protocol": "isegprobe_fixed224",
                 "flip": False, "net": {}},
}
MAX_CLICKS = 20
TARGET_SIZE = 224


def case_instance(name: str) -> tuple[np.ndarray, np.ndarray, FakeNet, dict]:
    """(image, gt, fake network, case spec) of a golden case."""
    spec = CASES[name]
    image, gt = make_instance(spec["kind"])
    if spec["ignore"]:
        gt = with_ignore(gt)
    return image, gt, FakeNet(**spec["net"]), spec
