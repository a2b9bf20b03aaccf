"""Normalized focal loss of RITM / iSegProbe (iSegProbe ``core/training/losses.py``)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["NormalizedFocalLoss"]


class NormalizedFocalLoss(nn.Module):
    """Focal loss whose focal weights are renormalised to mean 1 per sample and channel.

    With p = sigmoid(logit), target y in {0, 1} and -1 = ignore, v = [y != -1]:
    alpha_t = alpha if y > 0.5 else 1 - alpha; p_t = 1 - |y - p| (1 on ignored pixels);
    beta = (1 - p_t)^gamma; m = sum(v) / (sum(beta) + 1e-12) per sample and channel, detached;
    L = -alpha_t * beta * m * log(min(p_t + 1e-12, 1)); per sample sum(L * v) / (sum(v) + 1e-12).

    Args:
        alpha: weight of the positive class (0.5 in the recipe; RITM's class default is 0.25).
        gamma: focusing exponent.
        reduction: ``"mean"`` (batch mean, scalar), ``"sum"`` or ``"none"`` (one value per sample).
        eps: the 1e-12 guards of the reference.

    Call: ``loss(logits, target)`` with both (B, 1, H, W) or both (B, H, W); target float in
    {0, 1, -1}. An all-ignore sample contributes exactly 0 (never NaN).
    """

    def __init__(self, alpha: float = 0.5, gamma: float = 2.0, reduction: str = "mean",
                 eps: float = 1e-12, ignore_label: float = -1) -> None:
        super().__init__()
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.reduction = reduction
        self.eps = float(eps)
        self.ignore_label = ignore_label

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.shape != target.shape:
            raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} "
                             "must have the same shape, (B, 1, H, W) or (B, H, W)")
        if logits.ndim == 3:
            logits, target = logits[:, None], target[:, None]
        if logits.ndim != 4:
            raise ValueError(f"expected (B, 1, H, W) or (B, H, W) inputs, got {tuple(logits.shape)}")
        logits = logits.float()
        target = target.float()
        prob = torch.sigmoid(logits)
        valid = (target != self.ignore_label).float()
        pos = target > 0.5
        alpha_t = torch.where(pos, torch.full_like(prob, self.alpha),
                              torch.full_like(prob, 1 - self.alpha)) * valid
        p_t = torch.where(valid > 0, 1 - (target - prob).abs(), torch.ones_like(prob))
        beta = (1 - p_t) ** self.gamma

        dims = (-2, -1)
        norm = valid.sum(dim=dims, keepdim=True) / (beta.sum(dim=dims, keepdim=True) + self.eps)
        norm = norm.detach()
        pix = -alpha_t * beta * norm * torch.log(torch.clamp(p_t + self.eps, max=1.0))
        per_sample = (pix * valid).sum(dim=(1, 2, 3)) / (valid.sum(dim=(1, 2, 3)) + self.eps)
        if self.reduction == "none":
            return per_sample
        if self.reduction == "sum":
            return per_sample.sum()
        return per_sample.mean()
