"""Clicks: tensors, disk maps, the two next-click rules and RITM's multi-point training sampler.

RITM's conventions: a click is ``(row, col)`` in network-input pixels, possibly fractional.
A click tensor ``points`` has shape ``(B, 2N, 3)``: the first ``N`` rows are positive clicks, the
last ``N`` negative, each row ``(row, col, order)``; padding rows are ``(-1, -1, -1)`` and a row is
invalid iff ``max(row, col) < 0``. ``order`` is carried along but not used by the disk maps.

There are two *different* next-click rules on purpose, as in the reference code:

* :func:`next_click` — the evaluation clicker (iSegProbe ``core/inference/clicker.py``):
  exact Euclidean distance transform,
  deterministic, first row-major pixel at the maximum.
* :func:`training_next_click` — the rule used while training with iterative clicks
  (iSegProbe ``core/training/trainer.py``):
  OpenCV's approximate 5×5 chamfer distance, a uniformly random pixel among those above half the
  maximum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from scipy import ndimage

from probe_lib.metrics import check_gt_encoding

__all__ = [
    "MultiPointSampler",
    "add_training_clicks",
    "check_points",
    "click_maps",
    "clicks_to_tensor",
    "generate_probs",
    "next_click",
    "training_next_click",
]


# --------------------------------------------------------------------------------------------
# evaluation clicker (iSegProbe `core/inference/clicker.py`)
# --------------------------------------------------------------------------------------------


def _as_2d(arr, name: str) -> np.ndarray:
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) array, got shape {arr.shape}")
    return arr


def _padded_edt(mask: np.ndarray) -> np.ndarray:
    # Padding with zeros makes the image border count as boundary, as in the reference clicker.
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1]


def next_click(
    gt,
    pred,
    not_clicked=None,
    ignore_label: int = -1,
) -> tuple[bool, tuple[int, int]]:
    """The evaluation-time clicker of RITM / iSegProbe (iSegProbe ``core/inference/clicker.py``).

    Args:
        gt: int array (H, W); 1 = object, 0 = background, ``ignore_label`` = ignore (other
            values, e.g. a 0/255 mask, raise a ValueError).
        pred: bool array (H, W), the current prediction already thresholded (zeros before the
            first click). Integer 0/1 arrays are accepted; float arrays are rejected because a
            probability map must be thresholded first.
        not_clicked: optional bool array (H, W), True where a click may still go. Never modified;
            the caller marks the returned pixel itself.
        ignore_label: the ignore value in ``gt``.

    Returns:
        ``(is_positive, (row, col))`` with Python ``bool`` and ``int``s. The click lies at the
        maximum of the exact Euclidean distance (to the region boundary or image border) of the
        false-negative region if its maximum is strictly larger than the false-positive one's,
        else of the false-positive region (ties go to a negative click); among equal maxima the
        first pixel in row-major order. Without any (clickable) error pixel the result is
        ``(False, (0, 0))``.

    Raises:
        ValueError: on non-2-D inputs, shape mismatch or a float ``pred``.
    """
    gt = _as_2d(gt, "gt")
    pred = _as_2d(pred, "pred")
    if pred.shape != gt.shape:
        raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
    check_gt_encoding(gt, "gt", ignore_label)  # a 0/255 mask would read as "no object"
    if pred.dtype.kind == "f":
        raise ValueError("pred must be a bool (H, W) mask (threshold the probabilities first), "
                         f"got dtype {pred.dtype}")
    pred = pred.astype(bool)
    valid = gt != ignore_label
    obj = gt == 1
    fn = obj & ~pred & valid
    fp = ~obj & pred & valid

    fn_dt = _padded_edt(fn)
    fp_dt = _padded_edt(fp)
    if not_clicked is not None:
        nc = _as_2d(not_clicked, "not_clicked")
        if nc.shape != gt.shape:
            raise ValueError(f"not_clicked shape {nc.shape} differs from gt shape {gt.shape}")
        nc = nc.astype(bool)
        fn_dt = fn_dt * nc
        fp_dt = fp_dt * nc

    is_positive = bool(fn_dt.max() > fp_dt.max())
    dt = fn_dt if is_positive else fp_dt
    # np.argmax returns the first maximal index of the flattened (row-major) array.
    row, col = np.unravel_index(int(np.argmax(dt)), dt.shape)
    return is_positive, (int(row), int(col))


# --------------------------------------------------------------------------------------------
# click tensors and disk maps (RITM's format, docs/probe.md)
# --------------------------------------------------------------------------------------------


def check_points(points: torch.Tensor, size: tuple[int, int] | None = None,
                 name: str = "points") -> None:
    """Raise a ValueError naming the first bad click of a (B, 2N, 3) click tensor.

    NaN or Inf anywhere is an error (a NaN row would otherwise count as padding, since
    ``max(row, col) < 0`` is False for NaN and the disk test never fires). With ``size=(H, W)``
    every valid row (``max(row, col) >= 0``) must also lie inside the input:
    ``0 <= row < H`` and ``0 <= col < W``.
    """
    pts = points.detach()
    bad = ~torch.isfinite(pts)
    if bool(bad.any()):
        b, i = (int(v) for v in bad.any(-1).nonzero()[0])
        raise ValueError(f"{name} (the click tensor) contains NaN or Inf: row {name}[{b}, {i}] = "
                         f"{pts[b, i].tolist()}; clicks are (row, col, order) in input pixels, "
                         "padding (-1, -1, -1)")
    if size is None:
        return
    h, w = int(size[0]), int(size[1])
    r, c = pts[..., 0], pts[..., 1]
    valid = torch.maximum(r, c) >= 0
    outside = valid & ((r < 0) | (r >= h) | (c < 0) | (c >= w))
    if bool(outside.any()):
        b, i = (int(v) for v in outside.nonzero()[0])
        raise ValueError(f"click (row={float(r[b, i]):g}, col={float(c[b, i]):g}) at {name}[{b}, "
                         f"{i}] lies outside the {h}x{w} input: clicks are (row, col) in input "
                         f"pixels with 0 <= row < {h} and 0 <= col < {w}; padding rows are "
                         "(-1, -1, -1)")


def clicks_to_tensor(
    clicks: Sequence[tuple[float, float, bool]],
    max_points: int | None = None,
) -> torch.Tensor:
    """Pack a click sequence into the ``(1, 2N, 3)`` float tensor the probe expects.

    Args:
        clicks: ``[(row, col, is_positive), ...]`` in click order (pixels of the network input,
            fractional allowed).
        max_points: N; default ``max(#positive, #negative, 1)``. A ValueError if fewer than the
            clicks of one sign.

    Returns:
        float32 tensor (1, 2N, 3): rows ``(row, col, order)`` with ``order`` the 0-based index of
        the click in ``clicks``; positives first, negatives from row N; padding ``(-1, -1, -1)``.
    """
    pos, neg = [], []
    for i, click in enumerate(clicks):
        if len(click) != 3:
            raise ValueError(f"each click must be (row, col, is_positive), got {click!r}")
        r, c, p = click
        if not (math.isfinite(float(r)) and math.isfinite(float(c))):
            raise ValueError(f"click {i} has a non-finite coordinate (row={r}, col={c})")
        (pos if p else neg).append((float(r), float(c), float(i)))
    n = max(len(pos), len(neg), 1)
    if max_points is not None:
        if max_points < n:
            raise ValueError(f"max_points={max_points} is smaller than the number of clicks of one "
                             f"sign ({n})")
        n = int(max_points)
    out = torch.full((1, 2 * n, 3), -1.0, dtype=torch.float32)
    if pos:
        out[0, : len(pos)] = torch.tensor(pos)
    if neg:
        out[0, n : n + len(neg)] = torch.tensor(neg)
    return out


def click_maps(points: torch.Tensor, size: tuple[int, int], radius: float = 5) -> torch.Tensor:
    """Binary disk maps of the clicks (RITM's ``DistMaps`` with radius 5).

    Args:
        points: (B, 2N, 3) float, rows ``(row, col, order)``; first N positive, last N negative;
            rows with ``max(row, col) < 0`` are ignored; NaN/Inf raise a ValueError. Clicks
            outside ``size`` are allowed (their disks are clipped): the ZoomIn evaluator passes
            the clicks outside its zoomed region, as the reference does.
        size: (H, W) of the output maps.
        radius: disk radius in pixels (5 at the network input).

    Returns:
        float tensor (B, 2, H, W) on ``points.device``, channel 0 = positive, 1 = negative; a pixel
        (r, c) is 1 iff ``(r - row)^2 + (c - col)^2 <= radius^2`` for some valid click of that sign.
    """
    if not isinstance(points, torch.Tensor) or points.ndim != 3 or points.shape[-1] != 3:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"points must be a (B, 2N, 3) tensor, got {shape}")
    if points.shape[1] % 2:
        raise ValueError(f"points must have an even number of rows (2N), got {points.shape[1]}")
    if points.is_floating_point():
        check_points(points)  # NaN rows would be drawn as nothing, silently
    h, w = int(size[0]), int(size[1])
    b, n2, _ = points.shape
    dtype = points.dtype if points.is_floating_point() else torch.float32
    pts = points.to(dtype)
    rows = torch.arange(h, device=points.device, dtype=dtype).view(1, 1, h, 1)
    cols = torch.arange(w, device=points.device, dtype=dtype).view(1, 1, 1, w)
    valid = pts[..., :2].max(dim=-1).values >= 0  # (B, 2N)
    out = torch.zeros(b, 2, h, w, device=points.device, dtype=dtype)
    r2 = float(radius) ** 2
    n = n2 // 2
    for ch, sl in enumerate((slice(0, n), slice(n, n2))):
        p = pts[:, sl]  # (B, N, 3)
        v = valid[:, sl]
        if n == 0 or not bool(v.any()):
            continue
        # Separable: a disk test is (dr^2 + dc^2 <= r^2) per click, reduced with "any" over clicks.
        dr = (rows - p[..., 0].view(b, n, 1, 1)) ** 2  # (B, N, H, 1)
        dc = (cols - p[..., 1].view(b, n, 1, 1)) ** 2  # (B, N, 1, W)
        inside = (dr + dc <= r2) & v.view(b, n, 1, 1)
        out[:, ch] = inside.any(dim=1).to(dtype)
    return out


# --------------------------------------------------------------------------------------------
# training-time next click (iSegProbe `core/training/trainer.py`)
# --------------------------------------------------------------------------------------------


def _chamfer_dt(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask.astype(np.uint8), 1, mode="constant")
    dt = cv2.distanceTransform(padded, cv2.DIST_L2, 5)
    return dt[1:-1, 1:-1]


def training_next_click(
    gt: np.ndarray,
    prob: np.ndarray,
    rng: np.random.Generator,
    thresh: float = 0.49,
) -> tuple[bool, tuple[int, int]] | None:
    """One simulated click during iterative training (iSegProbe's trainer; not the evaluation rule).

    Args:
        gt: float/int (H, W); > 0.5 object, else background (-1 ignore counts as background, as
            in the reference).
        prob: float (H, W) predicted probabilities.
        rng: numpy Generator for the random candidate.
        thresh: probability threshold (0.49 in the reference).

    Returns:
        ``(is_positive, (row, col))`` or None when there is no error region. The error maps are
        distance-transformed with OpenCV's approximate L2 (5×5 chamfer) after 1-px zero padding;
        positive iff ``max_fn > max_fp`` (ties negative); the click is uniform over the pixels of
        the chosen map strictly above half its maximum.
    """
    gt = _as_2d(gt, "gt")
    prob = _as_2d(prob, "prob")
    if gt.shape != prob.shape:
        raise ValueError(f"prob shape {prob.shape} differs from gt shape {gt.shape}")
    fn = (gt > 0.5) & (prob < thresh)
    fp = (gt <= 0.5) & (prob > thresh)
    fn_dt = _chamfer_dt(fn)
    fp_dt = _chamfer_dt(fp)
    fn_max, fp_max = float(fn_dt.max()), float(fp_dt.max())
    if fn_max == 0 and fp_max == 0:
        return None
    is_positive = fn_max > fp_max
    dt, m = (fn_dt, fn_max) if is_positive else (fp_dt, fp_max)
    cand = np.argwhere(dt > m / 2)
    r, c = cand[rng.integers(len(cand))]
    return bool(is_positive), (int(r), int(c))


def add_training_clicks(
    points: torch.Tensor,
    gt: torch.Tensor,
    prob: torch.Tensor,
    k: int,
    rng: np.random.Generator,
    thresh: float = 0.49,
) -> torch.Tensor:
    """Add the k-th iterative training click to every sample, returning new points.

    Args:
        points: (B, 2N, 3) click tensor (N = 24 in training).
        gt: (B, 1, H, W) or (B, H, W) target in {0, 1, -1}.
        prob: (B, 1, H, W) or (B, H, W) current probabilities.
        k: 1-based iteration index; the click goes to slot ``N - k`` (positive) or ``2N - k``
            (negative), overwriting what the sampler put there, with order ``k``.
        rng: numpy Generator.

    Returns:
        A new (B, 2N, 3) tensor (the input is not modified).
    """
    if points.ndim != 3 or points.shape[1] % 2:
        raise ValueError(f"points must be (B, 2N, 3), got {tuple(points.shape)}")
    n = points.shape[1] // 2
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    gt_np = gt.detach().float().cpu().numpy().reshape(gt.shape[0], *gt.shape[-2:])
    pr_np = prob.detach().float().cpu().numpy().reshape(prob.shape[0], *prob.shape[-2:])
    out = points.clone()
    for b in range(points.shape[0]):
        click = training_next_click(gt_np[b], pr_np[b], rng, thresh)
        if click is None:
            continue
        is_pos, (r, c) = click
        slot = n - k if is_pos else 2 * n - k
        out[b, slot] = torch.tensor([r, c, k], dtype=out.dtype)
    return out


# --------------------------------------------------------------------------------------------
# MultiPointSampler (iSegProbe `core/data/points_sampler.py`)
# --------------------------------------------------------------------------------------------


def generate_probs(n: int, gamma: float) -> np.ndarray:
    """p_i ∝ gamma^i for i = 0..n-1 (normalised), the click-count law of RITM."""
    p = gamma ** np.arange(n, dtype=np.float64)
    return p / p.sum()


_KERNEL3 = np.ones((3, 3), np.uint8)


class MultiPointSampler:
    """RITM's multi-point click sampler with iSegProbe's settings (``core/data/points_sampler.py``).

    ``sampler(objects, rng)`` with ``objects`` an int (H, W) label map (0 background, 1..K
    instances) and an optional bool ``ignore`` (H, W) returns ``(points, gt)``: ``points`` float32
    (2M, 3) = M positive then M negative rows ``(row, col, 100)`` padded with ``(-1, -1, -1)``;
    ``gt`` float32 (1, H, W) with 1 = selected object(s), 0 = background, -1 = ignore.
    Every random draw comes from ``rng`` (a numpy Generator), so a seeded generator reproduces a
    sample exactly.
    """

    def __init__(
        self,
        max_num_points: int = 24,
        prob_gamma: float = 0.8,
        expand_ratio: float = 0.1,
        positive_erode_prob: float = 0.9,
        positive_erode_iters: int = 3,
        negative_bg_prob: float = 0.1,
        negative_other_prob: float = 0.4,
        negative_border_prob: float = 0.5,
        merge_objects_prob: float = 0.15,
        max_num_merged_objects: int = 2,
    ) -> None:
        if max_num_points < 1:
            raise ValueError(f"max_num_points must be >= 1, got {max_num_points}")
        probs = np.array([negative_bg_prob, negative_other_prob, negative_border_prob], float)
        if (probs < 0).any() or not math.isclose(probs.sum(), 1.0, abs_tol=1e-6):
            raise ValueError(f"negative strategy probabilities must be >= 0 and sum to 1, got "
                             f"{probs.tolist()}")
        self.max_num_points = max_num_points
        self.prob_gamma = prob_gamma
        self.expand_ratio = expand_ratio
        self.positive_erode_prob = positive_erode_prob
        self.positive_erode_iters = positive_erode_iters
        self.neg_strategy_probs = probs / probs.sum()
        self.merge_objects_prob = merge_objects_prob
        self.max_num_merged_objects = max_num_merged_objects
        # positive count = 1 + Cat(p over 0..M-1); negative count = Cat(p over 0..M)
        self.pos_probs = generate_probs(max_num_points, prob_gamma)
        self.neg_probs = generate_probs(max_num_points + 1, prob_gamma)

    # -- laws -----------------------------------------------------------------------------
    def num_positive(self, rng: np.random.Generator) -> int:
        return 1 + int(rng.choice(self.max_num_points, p=self.pos_probs))

    def num_negative(self, rng: np.random.Generator) -> int:
        return int(rng.choice(self.max_num_points + 1, p=self.neg_probs))

    # -- masks ----------------------------------------------------------------------------
    def _erode_positive(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() > self.positive_erode_prob:
            return mask
        eroded = cv2.erode(mask.astype(np.uint8), _KERNEL3, iterations=self.positive_erode_iters)
        eroded = eroded.astype(bool)
        # Small objects would vanish; keep the original mask then.
        return eroded if eroded.sum() > 10 else mask

    def _border_mask(self, gt: np.ndarray) -> np.ndarray:
        radius = math.ceil(self.expand_ratio * math.sqrt(float(gt.sum())))
        grown = cv2.dilate(gt.astype(np.uint8), _KERNEL3, iterations=radius).astype(bool)
        return grown & ~gt

    def select_objects(self, ids: list[int], rng: np.random.Generator) -> list[int]:
        """Object ids to segment: usually one uniformly, two merged with prob 0.15 (step 2)."""
        if not ids:
            return []
        if len(ids) >= 2 and rng.random() < self.merge_objects_prob:
            kmax = min(len(ids), self.max_num_merged_objects)
            k = int(rng.integers(2, kmax + 1))
            return [ids[i] for i in rng.choice(len(ids), size=k, replace=False)]
        return [ids[int(rng.integers(len(ids)))]]

    # -- points ---------------------------------------------------------------------------
    @staticmethod
    def _uniform_pixel(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
        idx = np.flatnonzero(mask)
        if idx.size == 0:
            return None
        r, c = np.unravel_index(int(idx[rng.integers(idx.size)]), mask.shape)
        return int(r), int(c)

    def _positive_points(self, masks: list[np.ndarray], rng: np.random.Generator) -> list:
        if not masks:
            return []
        if len(masks) == 1:
            n = self.num_positive(rng)
            pts = [self._uniform_pixel(masks[0], rng) for _ in range(n)]
            return [p for p in pts if p is not None]
        pts = [self._uniform_pixel(m, rng) for m in masks]  # one guaranteed point per object
        n_extra = self.num_negative(rng)
        extra = []
        for _ in range(n_extra):
            m = masks[int(rng.integers(len(masks)))]
            extra.append(self._uniform_pixel(m, rng))
        budget = self.max_num_points - len(pts)
        if len(extra) > budget:
            keep = rng.choice(len(extra), size=budget, replace=False)
            extra = [extra[i] for i in sorted(keep)]
        return [p for p in pts + extra if p is not None]

    def _negative_points(self, neg: dict[str, np.ndarray], rng: np.random.Generator) -> list:
        names = ("bg", "other", "border")
        pts = []
        for _ in range(self.num_negative(rng)):
            strategy = names[int(rng.choice(3, p=self.neg_strategy_probs))]
            p = self._uniform_pixel(neg[strategy], rng)
            if p is not None:
                pts.append(p)
        return pts

    def __call__(
        self,
        objects: np.ndarray,
        rng: np.random.Generator,
        ignore: np.ndarray | None = None,
        not_background: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        # not_background: bool (H, W) pixels of objects dropped from the list (too small after
        # augmentation) that still are not background, as in iSegProbe, where such an object
        # leaves the object list but stays in the encoded mask: they join the "other objects"
        # negatives and are never drawn as pure-background negatives.
        objects = _as_2d(objects, "objects")
        dropped = (np.zeros(objects.shape, bool) if not_background is None
                   else _as_2d(not_background, "not_background").astype(bool))
        if dropped.shape != objects.shape:
            raise ValueError(f"not_background shape {dropped.shape} differs from objects "
                             f"{objects.shape}")
        valid = np.ones(objects.shape, bool) if ignore is None else ~_as_2d(ignore, "ignore")
        if valid.shape != objects.shape:
            raise ValueError(f"ignore shape {valid.shape} differs from objects {objects.shape}")
        ids = [int(i) for i in np.unique(objects[valid]) if i > 0]
        selected = self.select_objects(ids, rng)
        if selected:
            obj_masks = [(objects == i) & valid for i in selected]
            gt = np.logical_or.reduce(obj_masks)
            pos_masks = [self._erode_positive(m, rng) for m in obj_masks]
            bg = ~gt & valid
            if len(ids) > len(selected):
                other = ((objects > 0) | dropped) & ~gt & valid
            else:
                other = bg
            neg = {"bg": bg, "other": other, "border": self._border_mask(gt) & valid}
        else:
            gt = np.zeros(objects.shape, bool)
            pos_masks = []
            bg = valid & ~dropped
            neg = {"bg": bg, "other": bg, "border": bg}

        m = self.max_num_points
        points = np.full((2 * m, 3), -1.0, np.float32)
        pos = self._positive_points(pos_masks, rng)[:m]
        negs = self._negative_points(neg, rng)[:m]
        for i, (r, c) in enumerate(pos):
            points[i] = (r, c, 100)
        for i, (r, c) in enumerate(negs):
            points[m + i] = (r, c, 100)
        target = gt.astype(np.float32)
        target[~valid] = -1.0
        return points, target[None]
