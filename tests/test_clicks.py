"""Click rules of RITM/iSegProbe (disks, sampler, both clickers): exact where
 deterministic, statistical where random."""

import itertools
import math

import numpy as np
import pytest
import torch

from probe_lib.clicks import (
    MultiPointSampler,
    add_training_clicks,
    click_maps,
    clicks_to_tensor,
    generate_probs,
    next_click,
    training_next_click,
)


# ------------------------------------------------------------------ naive references
def naive_padded_edt(mask):
    """Distance of each True pixel to the nearest False pixel of the 1-px zero-padded grid."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), bool)
    padded[1:-1, 1:-1] = mask
    zeros = np.argwhere(~padded)
    out = np.zeros((h, w))
    for r, c in np.argwhere(mask):
        d = np.sqrt(((zeros - (r + 1, c + 1)) ** 2).sum(1)).min()
        out[r, c] = d
    return out


def naive_next_click(gt, pred, not_clicked=None, ignore=-1):
    fn = (gt == 1) & ~pred & (gt != ignore)
    fp = (gt != 1) & pred & (gt != ignore)
    a, b = naive_padded_edt(fn), naive_padded_edt(fp)
    if not_clicked is not None:
        a, b = a * not_clicked, b * not_clicked
    pos = a.max() > b.max()
    d = a if pos else b
    m = d.max()
    for r, c in itertools.product(range(d.shape[0]), range(d.shape[1])):
        if d[r, c] == m:
            return bool(pos), (r, c)


# ------------------------------------------------------------------ next_click (eval rule)
def test_first_click_at_object_centre():
    gt = np.zeros((9, 9), int)
    gt[2:7, 2:7] = 1
    assert next_click(gt, np.zeros((9, 9), bool)) == (True, (4, 4))


def test_image_border_counts_as_boundary():
    gt = np.ones((5, 9), int)  # object fills the image; the padding gives it a boundary
    assert next_click(gt, np.zeros((5, 9), bool)) == (True, (2, 2))  # first of the row-2 maxima


def test_row_major_first_max_and_types():
    gt = np.zeros((6, 8), int)
    gt[3, 2:6] = 1  # a 1-px bar: all distances 1
    pos, (r, c) = next_click(gt, np.zeros((6, 8), bool))
    assert (pos, (r, c)) == (True, (3, 2))
    assert type(pos) is bool and type(r) is int and type(c) is int


def test_tie_goes_to_negative():
    gt = np.zeros((5, 11), int)
    gt[1:4, 1:4] = 1  # 3x3 object, missed entirely -> fn max 2
    pred = np.zeros((5, 11), bool)
    pred[1:4, 6:9] = True  # 3x3 false positive -> fp max 2
    assert next_click(gt, pred) == (False, (2, 7))
    pred[1:4, 6:8] = True
    pred[1:4, 8] = False  # fp now 3x2 -> max 1.0 < 2
    assert next_click(gt, pred) == (True, (2, 2))


def test_perfect_prediction_and_empty_gt():
    gt = np.zeros((7, 7), int)
    gt[2:5, 2:5] = 1
    assert next_click(gt, gt == 1) == (False, (0, 0))
    assert next_click(np.zeros((4, 4), int), np.zeros((4, 4), bool)) == (False, (0, 0))


def test_ignore_label_is_not_an_error():
    gt = np.zeros((7, 7), int)
    gt[2:5, 2:5] = 1
    pred = gt == 1
    ign = gt.copy()
    ign[0:2, :] = -1
    pred2 = pred.copy()
    pred2[0:2, :] = True  # predicted object inside the ignore band only
    assert next_click(ign, pred2) == (False, (0, 0))
    assert next_click(gt, pred2)[0] is False and next_click(gt, pred2)[1][0] in (0, 1)
    # a custom ignore value
    ign255 = np.where(ign == -1, 255, ign)
    assert next_click(ign255, pred2, ignore_label=255) == (False, (0, 0))


def test_not_clicked_excludes_and_is_not_modified():
    gt = np.zeros((9, 9), int)
    gt[2:7, 2:7] = 1
    nc = np.ones((9, 9), bool)
    nc[4, 4] = False
    before = nc.copy()
    pos, (r, c) = next_click(gt, np.zeros((9, 9), bool), nc)
    assert pos and (r, c) != (4, 4)
    assert (r, c) == (3, 3)  # first row-major pixel at the next-largest distance (2.0)
    np.testing.assert_array_equal(nc, before)
    nc[:] = False  # nothing clickable -> as with no error
    assert next_click(gt, np.zeros((9, 9), bool), nc) == (False, (0, 0))


def test_matches_naive_reference_on_random_maps():
    rng = np.random.default_rng(0)
    for _ in range(60):
        h, w = rng.integers(3, 12, size=2)
        gt = rng.choice([-1, 0, 1], size=(h, w), p=[0.1, 0.5, 0.4])  # other values raise
        pred = rng.random((h, w)) < 0.4
        nc = rng.random((h, w)) < 0.9
        assert next_click(gt, pred, nc) == naive_next_click(gt, pred, nc)
        assert next_click(gt, pred) == naive_next_click(gt, pred)


def test_accepts_torch_and_rejects_bad_input():
    gt = torch.zeros(5, 5, dtype=torch.int64)
    gt[1:4, 1:4] = 1
    assert next_click(gt, torch.zeros(5, 5, dtype=torch.bool)) == (True, (2, 2))
    with pytest.raises(ValueError, match="pred shape"):
        next_click(np.zeros((5, 5), int), np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match="gt must be a 2-D"):
        next_click(np.zeros((1, 5, 5), int), np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="not_clicked shape"):
        next_click(np.zeros((5, 5), int), np.zeros((5, 5), bool), np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="threshold"):
        next_click(np.zeros((5, 5), int), np.zeros((5, 5), float))


# ------------------------------------------------------------------ tensors and disks
def test_clicks_to_tensor_layout():
    t = clicks_to_tensor([(3, 4, True), (5.5, 6, False), (7, 8, True)])
    assert t.shape == (1, 4, 3) and t.dtype == torch.float32
    expected = [[3, 4, 0], [7, 8, 2], [5.5, 6, 1], [-1, -1, -1]]
    assert t[0].tolist() == expected
    assert clicks_to_tensor([]).tolist() == [[[-1, -1, -1], [-1, -1, -1]]]
    assert clicks_to_tensor([(1, 1, True)], max_points=24).shape == (1, 48, 3)
    with pytest.raises(ValueError, match="max_points"):
        clicks_to_tensor([(1, 1, True), (2, 2, True)], max_points=1)


def naive_disks(points, h, w, radius):
    out = np.zeros((points.shape[0], 2, h, w), np.float32)
    n = points.shape[1] // 2
    for b, i in itertools.product(range(points.shape[0]), range(points.shape[1])):
        y, x, _ = points[b, i].tolist()
        if max(y, x) < 0:
            continue
        for r, c in itertools.product(range(h), range(w)):
            if (r - y) ** 2 + (c - x) ** 2 <= radius**2:
                out[b, 0 if i < n else 1, r, c] = 1
    return out


def test_click_maps_disk_count_and_channels():
    pts = clicks_to_tensor([(10, 10, True), (2, 17, False)])
    m = click_maps(pts, (20, 20))
    assert m.shape == (1, 2, 20, 20)
    assert m[0, 0].sum() == 81  # lattice points with x^2 + y^2 <= 25 (Gauss circle, r = 5)
    assert m[0, 0, 10, 15] == 1 and m[0, 0, 10, 16] == 0 and m[0, 0, 14, 13] == 1
    assert m[0, 1, 2, 17] == 1 and m[0, 1, 10, 10] == 0


def test_click_maps_match_naive_with_fractional_and_invalid_rows():
    pts = torch.tensor([[[3.5, 4.25, 0], [-1, -1, -1], [-1, 6, 2], [8.7, -0.5, 1]],
                        [[-1, -1, -1], [0, 0, 0], [-2, -3, 5], [11, 11, 4]]], dtype=torch.float32)
    got = click_maps(pts, (12, 13), radius=3).numpy()
    np.testing.assert_array_equal(got, naive_disks(pts, 12, 13, 3))
    assert got[0, 1].sum() > 0  # (-1, 6) is valid: max(row, col) >= 0
    with pytest.raises(ValueError, match=r"\(B, 2N, 3\)"):
        click_maps(torch.zeros(2, 3), (4, 4))


# ------------------------------------------------------------------ training rule
def test_training_click_candidates_and_uniformity():
    gt = np.zeros((40, 40), np.float32)
    gt[5:35, 5:35] = 1
    prob = np.zeros((40, 40), np.float32)
    prob[5:35, 5:20] = 0.9  # left half found; right half is the false-negative region
    rng = np.random.default_rng(0)
    seen = set()
    import cv2

    pad = np.pad(((gt > 0.5) & (prob < 0.49)).astype(np.uint8), 1)
    dt = cv2.distanceTransform(pad, cv2.DIST_L2, 5)[1:-1, 1:-1]
    cand = {tuple(x) for x in np.argwhere(dt > dt.max() / 2)}
    for _ in range(3000):
        pos, rc = training_next_click(gt, prob, rng)
        assert pos and rc in cand
        seen.add(rc)
    assert len(seen) > 0.9 * len(cand)  # uniform over a set of ~40 candidates
    assert training_next_click(gt, gt, rng) is None


def test_training_click_slots():
    gt = torch.zeros(2, 1, 20, 20)
    gt[0, 0, 5:15, 5:15] = 1
    prob = torch.zeros(2, 1, 20, 20)
    prob[1, 0, 2:12, 2:12] = 1.0  # sample 1: pure false positive -> negative click
    pts = torch.full((2, 48, 3), -1.0)
    new = add_training_clicks(pts, gt, prob, k=2, rng=np.random.default_rng(1))
    assert new[0, 22, 2] == 2 and new[0, 22, 0] >= 5 and (new[0, 46] == -1).all()
    assert new[1, 46, 2] == 2 and (new[1, 22] == -1).all()
    assert (pts == -1).all()  # input not modified


# ------------------------------------------------------------------ MultiPointSampler
def test_count_laws_match_spec():
    p = generate_probs(24, 0.8)
    assert math.isclose(p[0], 0.2009, abs_tol=1e-4) and math.isclose(p[1], 0.1608, abs_tol=1e-4)
    assert math.isclose(p[2], 0.1286, abs_tol=1e-4)


def _scene():
    objects = np.zeros((64, 64), np.int32)
    objects[8:40, 8:40] = 1
    objects[44:60, 44:60] = 2
    objects[4:14, 50:60] = 3
    return objects


def test_positive_count_distribution_single_object():
    objects = np.zeros((48, 48), np.int32)
    objects[8:40, 8:40] = 1
    sampler = MultiPointSampler()
    rng = np.random.default_rng(0)
    n = 4000
    counts = np.array([(sampler(objects, rng)[0][:24, 0] >= 0).sum() for _ in range(n)])
    freq1 = (counts == 1).mean()
    assert abs(freq1 - 0.2009) < 0.025, freq1
    assert abs((counts == 2).mean() - 0.1608) < 0.025
    assert counts.min() >= 1 and counts.max() <= 24
    assert abs(counts.mean() - (1 + (np.arange(24) * generate_probs(24, 0.8)).sum())) < 0.2


def test_merge_negative_strategies_and_output_format():
    objects = _scene()
    sampler = MultiPointSampler()
    rng = np.random.default_rng(1)
    merged = 0
    in_other = in_border = total_neg = 0
    n = 1500
    for _ in range(n):
        pts, gt = sampler(objects, rng)
        assert pts.shape == (48, 3) and pts.dtype == np.float32
        assert gt.shape == (1, 64, 64) and gt.dtype == np.float32
        sel = {int(i) for i in np.unique(objects[gt[0] == 1])}
        assert len(sel) in (1, 2)
        merged += len(sel) == 2
        pos = pts[:24][pts[:24, 0] >= 0].astype(int)
        assert (gt[0][pos[:, 0], pos[:, 1]] == 1).all()
        neg = pts[24:][pts[24:, 0] >= 0].astype(int)
        assert (gt[0][neg[:, 0], neg[:, 1]] == 0).all()
        if len(sel) == 1 and 1 in sel:
            total_neg += len(neg)
            in_other += np.isin(objects[neg[:, 0], neg[:, 1]], [2, 3]).sum()
            in_border += (objects[neg[:, 0], neg[:, 1]] == 0).sum()
    assert abs(merged / n - 0.15) < 0.03
    # object 1 selected: P(other) = 0.4 + 0.1 * |other| / |bg|; border pixels are background
    bg = (objects != 1).sum()
    p_other = 0.4 + 0.1 * ((objects == 2) | (objects == 3)).sum() / bg
    assert abs(in_other / total_neg - p_other) < 0.04
    assert abs(in_border / total_neg - (1 - p_other)) < 0.04


def test_erosion_probability_and_small_objects():
    sampler = MultiPointSampler()
    rng = np.random.default_rng(2)
    big = np.zeros((30, 30), bool)
    big[5:25, 5:25] = True
    eroded = np.mean([sampler._erode_positive(big, rng).sum() == 14 * 14 for _ in range(2000)])
    assert abs(eroded - 0.9) < 0.03  # 3 erosions with a 3x3 kernel: 20x20 -> 14x14
    small = np.zeros((30, 30), bool)
    small[5:12, 5:12] = True  # 7x7 erodes to 1x1 <= 10 px: kept as is
    assert all(sampler._erode_positive(small, rng).sum() == 49 for _ in range(50))


def test_no_objects_and_ignore():
    sampler = MultiPointSampler()
    rng = np.random.default_rng(3)
    ignore = np.zeros((32, 32), bool)
    ignore[:, :4] = True
    for _ in range(200):
        pts, gt = sampler(np.zeros((32, 32), np.int32), rng, ignore=ignore)
        assert (pts[:24] == -1).all()
        assert (gt[0][:, :4] == -1).all() and (gt[0][:, 4:] == 0).all()
        neg = pts[24:][pts[24:, 0] >= 0].astype(int)
        assert (neg[:, 1] >= 4).all()


def test_border_mask_width():
    sampler = MultiPointSampler()
    gt = np.zeros((60, 60), bool)
    gt[20:40, 20:40] = True  # area 400 -> ceil(0.1 * 20) = 2 dilations
    border = sampler._border_mask(gt)
    assert border.sum() == 24 * 24 - 400 and not (border & gt).any()


def test_seeded_sampler_is_reproducible():
    objects = _scene()
    a = MultiPointSampler()(objects, np.random.default_rng(7))
    b = MultiPointSampler()(objects, np.random.default_rng(7))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
