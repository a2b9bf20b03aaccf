"""Interactive-segmentation metrics exactly as iSegProbe/RITM compute them
(iSegProbe ``core/inference/utils.py``: ``get_iou``, ``compute_noc_metric``).

Per-click IoU curves are stored as **float32** and compared in float32 against the thresholds
``arange(0.8, 0.951, 0.05)``: that is what makes e.g. IoU = 17/20 pass NoC@85, as in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The reference builds its thresholds with arange, so they carry float64 noise
# (0.8500000000000001, ...); they are cast to float32 before comparing, like the IoUs.
NOC_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.arange(0.8, 0.951, 0.05))
NOC_NAMES: tuple[str, ...] = ("NoC80", "NoC85", "NoC90", "NoC95")


def check_gt_encoding(gt: np.ndarray, name: str = "gt", ignore_label: int = -1) -> None:
    """Raise a ValueError unless ``gt`` holds only 1 (object), 0 (background) and
    ``ignore_label``.

    A 0/255 mask (or a label map with ids > 1) would otherwise read as "no object": the clicker,
    the IoU and the evaluator all test ``gt == 1``. Such masks are rejected, not converted,
    because 255 means "void" in some datasets (PascalVOC) and "object" in others.
    """
    gt = np.asarray(gt)
    if gt.dtype == bool:
        return
    bad = (gt != 0) & (gt != 1) & (gt != ignore_label)
    if not bad.any():
        return
    values = np.unique(gt[bad])
    hint = (" A 0/255 mask? Convert it first, e.g. gt = (mask > 127).astype(np.int8)."
            if np.isin(255, values) else "")
    raise ValueError(f"{name} must hold 1 = object, 0 = background, {ignore_label} = ignore; it "
                     f"also holds {values[:8].tolist()}{' ...' if values.size > 8 else ''}."
                     + hint)


def iou(gt: np.ndarray, pred: np.ndarray, ignore_label: int = -1) -> float:
    """Mask IoU at the ground truth's resolution, ignoring ``ignore_label`` pixels.

    Args:
        gt: int array (H, W); 1 = object, 0 = background, ``ignore_label`` = ignore (any other
            value, e.g. a 0/255 mask, raises a ValueError).
        pred: bool array (H, W), the thresholded prediction.

    Returns:
        ``|pred ∧ gt==1| / |pred ∨ gt==1|`` over non-ignored pixels, as a float. Like the reference
        there is no zero-union guard: an empty object with an empty prediction gives ``nan``.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred).astype(bool)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(f"gt and pred must be 2-D arrays of the same shape, got {gt.shape} and "
                         f"{pred.shape}")
    check_gt_encoding(gt, "gt", ignore_label)
    valid = gt != ignore_label
    obj = gt == 1
    inter = np.count_nonzero(pred & obj & valid)
    union = np.count_nonzero((pred | obj) & valid)
    if union == 0:
        return float("nan")
    return inter / union


def _rows(ious) -> list[np.ndarray]:
    """Per-instance float32 curves; accepts an (N, K) array or a list of 1-D curves.

    NaN IoUs and values outside [0, 1] (e.g. percentages) raise a ValueError: either would
    silently turn into NoC = max_clicks or NoC = 1.
    """
    if isinstance(ious, np.ndarray):
        if ious.ndim != 2:
            raise ValueError(f"ious must be an (N, K) array of per-click IoU curves, got shape "
                             f"{ious.shape}")
        rows = [np.asarray(r, dtype=np.float32) for r in ious]
    else:
        rows = [np.asarray(r, dtype=np.float32).reshape(-1) for r in ious]
    if len(rows) == 0:
        raise ValueError("ious is empty: NoC needs at least one instance's IoU curve")
    nan_rows = [i for i, r in enumerate(rows) if np.isnan(r).any()]
    if nan_rows:
        raise ValueError(
            f"ious contain NaN for {len(nan_rows)} instance(s) (rows {nan_rows[:10]}"
            f"{' ...' if len(nan_rows) > 10 else ''}): an IoU is NaN when the object and the "
            "prediction are both empty; NoC would count it as a failure. Drop those instances "
            "(the evaluator skips objects without pixels).")
    filled = [r for r in rows if r.size]
    lo = min(float(r.min()) for r in filled) if filled else 0.0
    hi = max(float(r.max()) for r in filled) if filled else 0.0
    if lo < 0.0 or hi > 1.0 + 1e-6:
        raise ValueError(f"ious must be fractions in [0, 1], got values in [{lo:g}, {hi:g}]"
                         + (" (IoUs in percent? divide by 100)" if hi > 1.0 + 1e-6 else ""))
    return rows


def _check_threshold(threshold: float) -> np.float32:
    if not 0.0 < float(threshold) <= 1.01:
        raise ValueError(f"threshold must be a fraction in (0, 1] (0.85, not 85), got {threshold}")
    return np.float32(threshold)


def noc_per_instance(ious, threshold: float, max_clicks: int = 20) -> np.ndarray:
    """Number of clicks per instance to reach ``threshold`` (int array (N,)).

    The 1-based index of the first click among the first ``max_clicks`` whose float32 IoU is
    ``>= float32(threshold)``; ``max_clicks`` when never reached (also when a curve is shorter).
    """
    if int(max_clicks) < 1:
        raise ValueError(f"max_clicks must be >= 1, got {max_clicks}")
    thr = _check_threshold(threshold)
    out = np.empty(len(rows := _rows(ious)), dtype=np.int64)
    for i, row in enumerate(rows):
        hit = np.flatnonzero(row[:max_clicks] >= thr)
        out[i] = hit[0] + 1 if hit.size else max_clicks
    return out


def noc(ious, threshold: float, max_clicks: int = 20) -> float:
    """Mean number of clicks to reach ``threshold`` IoU (NoC@threshold, as ``compute_noc_metric``).

    Args:
        ious: (N, K) array (or list of N 1-D arrays) of per-click IoU curves, one row per instance;
            column k holds the IoU after click k + 1.
        threshold: IoU fraction, e.g. 0.85 (not 85). Compared in float32, like the reference.
        max_clicks: clicks counted; an instance that never reaches the threshold within the first
            ``max_clicks`` columns counts ``max_clicks``.

    Returns:
        The mean over instances as a Python float. An empty input raises a ValueError.
    """
    return float(np.mean(noc_per_instance(ious, threshold, max_clicks)))


def count_at_max(ious, threshold: float, max_clicks: int = 20) -> int:
    """``>=20@t``: how many instances have NoC@t == ``max_clicks`` (incl. t reached there).

    This includes instances that first reach the threshold exactly at the last click.
    """
    return int(np.count_nonzero(noc_per_instance(ious, threshold, max_clicks) == max_clicks))


def miou_curve(ious) -> np.ndarray:
    """mIoU@k for k = 1..K: column means of an (N, K) array (float64 array (K,))."""
    rows = _rows(ious)
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise ValueError(f"mIoU@k needs curves of equal length, got lengths {sorted(lengths)}")
    return np.stack(rows).astype(np.float64).mean(axis=0)


def bootstrap_ci(values: Sequence[float] | np.ndarray, n_boot: int = 1000, alpha: float = 0.05,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` ((1 - alpha) level).

    Instances are resampled with replacement ``n_boot`` times with a fixed seed, so the interval
    is reproducible. With a single value the interval collapses to that value.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def summarize(ious, max_clicks: int = 20, seconds_per_click: float | None = None,
              n_boot: int = 1000, seed: int = 0) -> dict:
    """All of iSegProbe's metrics for one run, as a JSON-serialisable dict.

    Keys: ``NoC80 .. NoC95`` (+ ``NoC80_ci`` .. bootstrap 95 % intervals), ``>=Nmax@85``,
    ``>=Nmax@90`` (stored as ``over_max@85`` / ``over_max@90``), ``IoU@1`` (fraction),
    ``mIoU@k`` (list, k = 1..K), ``num_instances``, ``max_clicks``, ``seconds_per_click``.
    """
    curves = np.stack(_rows(ious))
    out: dict = {"num_instances": int(curves.shape[0]), "max_clicks": int(max_clicks)}
    for name, thr in zip(NOC_NAMES, NOC_THRESHOLDS):
        per = noc_per_instance(curves, thr, max_clicks)
        out[name] = float(per.mean())
        out[f"{name}_ci"] = list(bootstrap_ci(per, n_boot=n_boot, seed=seed))
    out["over_max@85"] = count_at_max(curves, NOC_THRESHOLDS[1], max_clicks)
    out["over_max@90"] = count_at_max(curves, NOC_THRESHOLDS[2], max_clicks)
    out["IoU@1"] = float(curves[:, 0].astype(np.float64).mean())
    out["mIoU@k"] = [float(x) for x in miou_curve(curves)]
    out["seconds_per_click"] = None if seconds_per_click is None else float(seconds_per_click)
    return out
