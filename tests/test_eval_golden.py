"""probe_lib's click loop replays iSegProbe's exactly (clicks and float32 IoUs per click).

``tests/data/eval_golden.json`` was written by ``tools/make_eval_golden.py``, which runs the
reference's own ``evaluate_sample`` + ``BasePredictor`` + ``ZoomIn(skip_clicks=-1,
target_size=(224, 224))`` on the synthetic instances and the fake network of
``tests/golden_eval_cases.py``. Here the same instances and network go through
``probe_lib.evaluate.evaluate_instance``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from golden_eval_cases import CASES, GOLDEN_VERSION, MAX_CLICKS, TARGET_SIZE, case_instance

from probe_lib.evaluate import Predictor, evaluate_instance

GOLDEN = json.loads((Path(__file__).parent / "data" / "eval_golden.json").read_text())


def test_golden_file_matches_the_cases():
    assert GOLDEN["version"] == GOLDEN_VERSION
    assert GOLDEN["target_size"] == TARGET_SIZE and GOLDEN["max_clicks"] == MAX_CLICKS
    assert set(GOLDEN["cases"]) == set(CASES)
    for name, case in GOLDEN["cases"].items():
        assert len(case["clicks"]) == len(case["ious"]) == MAX_CLICKS, name


def test_golden_cases_cover_the_edge_cases():
    """The file really exercises what it claims (else a passing replay proves less)."""
    cases = GOLDEN["cases"]
    _image, gt, _, _ = case_instance("last_row_col")
    h, w = gt.shape
    assert any(r == h - 1 or c == w - 1 for r, c, _ in cases["last_row_col"]["clicks"])
    assert min(cases["empties"]["ious"]) == 0.0  # the prediction emptied at some click
    assert (case_instance("tall_ignore")[1] == -1).any()
    assert cases["plain"]["protocol"] == "plain" and cases["flip_off"]["flip"] is False
    # the zoom matters: same instance and network, plain vs zoomed protocol differ
    assert cases["plain"]["ious"] != cases["empties"]["ious"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_click_loop_replays_reference(name):
    image, gt, net, spec = case_instance(name)
    want = GOLDEN["cases"][name]
    ious, clicks, _ = evaluate_instance(Predictor(net), image, gt, protocol=spec["protocol"],
                                        max_clicks=MAX_CLICKS, prob_thresh=0.5,
                                        flip=spec["flip"], target_size=TARGET_SIZE)
    assert [list(c) for c in clicks] == want["clicks"], f"{name}: clicks differ"
    np.testing.assert_array_equal(ious, np.asarray(want["ious"], dtype=np.float32),
                                  err_msg=f"{name}: IoU per click differs")
