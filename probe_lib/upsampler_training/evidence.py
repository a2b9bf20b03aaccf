"""Measured evidence that upsampled features follow object boundaries.

Two label-based scores of a feature map against a region label map (synthetic part masks):

* :func:`within_region_variance_ratio` — the fraction of feature variance left *inside* regions,
  ``sum_r sum_{i in r} |f_i - mean_r|^2 / sum_i |f_i - mean|^2`` on per-pixel L2-normalised
  features (so methods with different feature scales are comparable). 1 = regions explain
  nothing, 0 = features constant per region. Lower is better.
* :func:`boundary_recall` — of the ground-truth boundary pixels, the fraction within ``tolerance``
  pixels of a predicted feature edge, where predicted edges are the pixels with the largest
  feature change (1 - cosine to the right/lower neighbour), as many as there are true boundary
  pixels. Higher is better.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _check(feats: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if feats.ndim == 3:
        feats = feats[None]
    if labels.ndim == 2:
        labels = labels[None]
    labels = torch.as_tensor(labels)
    if feats.ndim != 4 or labels.ndim != 3 or feats.shape[0] != labels.shape[0] \
            or tuple(feats.shape[-2:]) != tuple(labels.shape[-2:]):
        raise ValueError(f"feats (B, C, H, W) and labels (B, H, W) must agree, got "
                         f"{tuple(feats.shape)} and {tuple(labels.shape)}")
    return feats.float(), labels.long().to(feats.device)


@torch.no_grad()
def within_region_variance_ratio(feats: torch.Tensor, labels: torch.Tensor,
                                 ignore_index: int = -1) -> float:
    """Within-region / total variance of L2-normalised features (lower = sharper regions).

    Args:
        feats: (B, C, H, W) or (C, H, W) float features at label resolution.
        labels: (B, H, W) or (H, W) int region ids; ``ignore_index`` pixels are left out.
    Returns:
        Pooled over the batch: sum of within-region squared deviations / sum of squared
        deviations from the per-image mean.
    """
    feats, labels = _check(feats, labels)
    within, total = 0.0, 0.0
    for f, lab in zip(feats, labels):
        x = F.normalize(f.flatten(1), dim=0).T  # N, C
        lab = lab.flatten()
        keep = lab != ignore_index
        x, lab = x[keep], lab[keep]
        if len(lab) == 0:
            continue
        total += float(((x - x.mean(0)) ** 2).sum())
        ids, inv = torch.unique(lab, return_inverse=True)
        sums = torch.zeros(len(ids), x.shape[1], dtype=x.dtype).index_add_(0, inv, x)
        counts = torch.bincount(inv, minlength=len(ids)).to(x.dtype)
        means = sums / counts[:, None]
        within += float(((x - means[inv]) ** 2).sum())
    if total == 0:
        raise ValueError("features are constant: the variance ratio is undefined")
    return within / total


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour has a different label."""
    lab = np.asarray(labels)
    b = np.zeros(lab.shape, bool)
    b[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    b[:-1, :] |= lab[:-1, :] != lab[1:, :]
    return b


def feature_edges(feats: torch.Tensor) -> np.ndarray:
    """(C, H, W) -> (H, W) edge strength: max over right/lower neighbour of 1 - cosine."""
    f = F.normalize(feats.float(), dim=0)
    e = torch.zeros(f.shape[-2:])
    e[:, :-1] = torch.maximum(e[:, :-1], 1 - (f[:, :, :-1] * f[:, :, 1:]).sum(0))
    e[:-1, :] = torch.maximum(e[:-1, :], 1 - (f[:, :-1, :] * f[:, 1:, :]).sum(0))
    return e.cpu().numpy()


@torch.no_grad()
def boundary_recall(feats: torch.Tensor, labels: torch.Tensor, tolerance: int = 1) -> float:
    """Fraction of true boundary pixels within ``tolerance`` px of a predicted feature edge.

    feats (B, C, H, W) or (C, H, W); labels (B, H, W) or (H, W). The k strongest edge pixels
    are predicted edges, k = number of true boundary pixels (so recall = precision-at-k and
    methods are compared at the same edge budget). Pooled over the batch.
    """
    from scipy.ndimage import binary_dilation

    feats, labels = _check(feats, labels)
    hit, n = 0, 0
    for f, lab in zip(feats, labels):
        gt = label_boundaries(lab.cpu().numpy())
        k = int(gt.sum())
        if k == 0:
            continue
        e = feature_edges(f)
        thr = np.partition(e.ravel(), -k)[-k]
        pred = e >= thr
        near = binary_dilation(pred, iterations=tolerance) if tolerance > 0 else pred
        hit += int((gt & near).sum())
        n += k
    if n == 0:
        raise ValueError("labels have no boundaries: boundary recall is undefined")
    return hit / n


@torch.no_grad()
def boundary_scores(feats: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Both scores: ``{"variance_ratio": ..., "boundary_recall": ...}``."""
    return {"variance_ratio": within_region_variance_ratio(feats, labels),
            "boundary_recall": boundary_recall(feats, labels)}
