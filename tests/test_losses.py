"""Normalized focal loss (RITM; iSegProbe `core/training/losses.py`), a hand-worked example."""

import math

import pytest
import torch

from probe_lib.losses import NormalizedFocalLoss


def hand_value():
    # pixels: (logit 0, y 1), (logit ln 3, y 0), (logit 5, ignore)
    # p = 0.5, 0.75; p_t = 0.5, 0.25; beta = 0.25, 0.5625; alpha_t = 0.5, 0.5
    m = 2 / (0.25 + 0.5625)
    l1 = -0.5 * 0.25 * m * math.log(0.5)
    l2 = -0.5 * 0.5625 * m * math.log(0.25)
    return (l1 + l2) / 2


def example():
    logits = torch.tensor([0.0, math.log(3.0), 5.0]).view(1, 1, 1, 3)
    target = torch.tensor([1.0, 0.0, -1.0]).view(1, 1, 1, 3)
    return logits, target


def test_hand_worked_example():
    logits, target = example()
    loss = NormalizedFocalLoss()(logits, target)
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(hand_value(), rel=1e-6)
    # (B, H, W) inputs give the same value
    assert NormalizedFocalLoss()(logits[:, 0], target[:, 0]).item() == pytest.approx(hand_value())


def test_alpha_weights_classes():
    logits, target = example()
    # alpha 0.25: positive pixel weighted 0.25, negative 0.75
    m = 2 / (0.25 + 0.5625)
    expected = (-0.25 * 0.25 * m * math.log(0.5) - 0.75 * 0.5625 * m * math.log(0.25)) / 2
    got = NormalizedFocalLoss(alpha=0.25)(logits, target).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_all_ignore_sample_is_zero_and_mean_over_batch():
    logits, target = example()
    logits2 = torch.cat([logits, torch.randn(1, 1, 1, 3)])
    target2 = torch.cat([target, torch.full((1, 1, 1, 3), -1.0)])
    logits2.requires_grad_(True)
    per = NormalizedFocalLoss(reduction="none")(logits2, target2)
    assert per.shape == (2,)
    assert per[1].item() == 0.0
    assert per[0].item() == pytest.approx(hand_value(), rel=1e-6)
    mean = NormalizedFocalLoss()(logits2, target2)
    assert mean.item() == pytest.approx(hand_value() / 2, rel=1e-6)
    mean.backward()
    assert torch.isfinite(logits2.grad).all() and (logits2.grad[1] == 0).all()


def test_normaliser_is_detached():
    logits, target = example()
    logits = logits.clone().requires_grad_(True)
    NormalizedFocalLoss()(logits, target).backward()
    # manual formula with m held constant
    x = logits.detach().clone().requires_grad_(True)
    p = torch.sigmoid(x[0, 0, 0, :2])
    pt = torch.stack([p[0], 1 - p[1]])
    beta = (1 - pt) ** 2
    m = 2 / (beta.sum().item())
    (-(0.5 * beta * m * torch.log(pt)).sum() / 2).backward()
    torch.testing.assert_close(logits.grad, x.grad)


def test_extreme_logits_stay_finite():
    logits = torch.tensor([[[[-80.0, 80.0]]]], requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0]]]])
    loss = NormalizedFocalLoss()(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        NormalizedFocalLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="reduction"):
        NormalizedFocalLoss(reduction="avg")
