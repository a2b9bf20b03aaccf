"""Metrics against hand-worked examples (float32 thresholds, >=20@t, ignore label)."""

import numpy as np
import pytest

from probe_lib.metrics import (
    NOC_THRESHOLDS,
    bootstrap_ci,
    count_at_max,
    iou,
    miou_curve,
    noc,
    noc_per_instance,
    summarize,
)


def test_thresholds_are_the_references_arange():
    assert NOC_THRESHOLDS == (0.8, 0.8500000000000001, 0.9000000000000001, 0.9500000000000002)


def test_noc_hand_worked():
    ious = np.array([[0.5, 0.86, 0.95],      # NoC85 = 2, NoC90 = 3
                     [0.9, 0.2, 0.1],        # NoC85 = 1, NoC90 = 1
                     [0.1, 0.2, 0.3]])       # never -> max_clicks
    assert noc(ious, 0.85, max_clicks=3) == pytest.approx((2 + 1 + 3) / 3)
    assert noc(ious, 0.90, max_clicks=3) == pytest.approx((3 + 1 + 3) / 3)
    assert isinstance(noc(ious, 0.85, max_clicks=3), float)
    # never reached within 20 counts 20 even though only 3 columns exist
    assert noc(ious[2:], 0.85) == 20.0


def test_noc_only_looks_at_first_max_clicks_columns():
    ious = np.array([[0.1, 0.1, 0.1, 0.99]])
    assert noc(ious, 0.9, max_clicks=3) == 3.0
    assert noc(ious, 0.9, max_clicks=4) == 4.0


def test_17_of_20_passes_noc85_in_float32_only():
    v = 17 / 20
    assert not v >= NOC_THRESHOLDS[1]  # float64 comparison would fail
    ious = np.array([[0.0, v]], dtype=np.float64)
    assert noc(ious, NOC_THRESHOLDS[1], max_clicks=20) == 2.0
    assert noc(ious, 0.85, max_clicks=20) == 2.0


def test_tie_at_threshold_counts_as_reached():
    ious = np.array([[np.float32(0.9), 1.0]])
    assert noc(ious, 0.9) == 1.0


def test_perfect_prediction_is_one_click():
    assert noc(np.ones((4, 20)), 0.95) == 1.0


def test_count_at_max_includes_reaching_at_last_click():
    ious = np.zeros((3, 20))
    ious[0, 19] = 0.95       # reaches 0.85 exactly at click 20 -> NoC 20 -> counted
    ious[1, 18] = 0.95       # click 19 -> not counted
    # row 2 never reaches -> counted
    assert count_at_max(ious, 0.85, 20) == 2
    assert list(noc_per_instance(ious, 0.85, 20)) == [20, 19, 20]


def test_bad_inputs():
    with pytest.raises(ValueError, match="empty"):
        noc(np.zeros((0, 20)), 0.85)
    with pytest.raises(ValueError, match="empty"):
        noc([], 0.85)
    with pytest.raises(ValueError, match="fraction"):
        noc(np.ones((1, 3)), 85)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        noc(np.ones(3), 0.85)


def test_ragged_list_of_curves_like_the_reference():
    assert noc([np.array([0.9]), np.array([0.1, 0.1, 0.95])], 0.9, 20) == pytest.approx(2.0)


def test_iou_ignore_label_and_no_zero_union_guard():
    gt = np.array([[1, 1, -1],
                   [0, 0, -1]], dtype=np.int8)
    pred = np.array([[1, 0, 1],
                     [1, 0, 1]], dtype=bool)
    # ignored column excluded: inter 1, union {(0,0),(0,1),(1,0)} = 3
    assert iou(gt, pred) == pytest.approx(1 / 3)
    assert iou(gt, gt == 1) == 1.0
    assert np.isnan(iou(np.zeros((2, 2), np.int8), np.zeros((2, 2), bool)))
    with pytest.raises(ValueError, match="same shape"):
        iou(gt, pred[:, :2])


def test_miou_curve_and_summary():
    ious = np.array([[0.85, 0.9], [0.7, 0.8]])
    np.testing.assert_allclose(miou_curve(ious), [0.775, 0.85])
    s = summarize(ious, max_clicks=2, seconds_per_click=0.1, n_boot=50)
    assert s["IoU@1"] == pytest.approx(0.775)
    assert s["NoC80"] == pytest.approx(1.5)   # row 1 reaches 0.8 (float32 tie) at click 2
    assert s["NoC90"] == pytest.approx(2.0)   # both at the last click
    assert s["over_max@90"] == 2 and s["over_max@85"] == 1
    lo, hi = s["NoC80_ci"]
    assert lo <= s["NoC80"] <= hi


def test_bootstrap_ci_is_reproducible_and_sane():
    v = np.arange(100, dtype=float)
    lo, hi = bootstrap_ci(v, n_boot=500, seed=1)
    assert (lo, hi) == bootstrap_ci(v, n_boot=500, seed=1)
    assert lo < v.mean() < hi and hi - lo < 20
    assert bootstrap_ci([3.0], n_boot=10) == (3.0, 3.0)
    with pytest.raises(ValueError):
        bootstrap_ci([], n_boot=10)
