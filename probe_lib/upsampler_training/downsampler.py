"""Learned attention downsampler and uncertainty heads for multi-view reconstruction losses.

FeatUp compares a high-resolution prediction with low-resolution backbone features by learning how
the backbone "downsamples" an image: every output cell is a softmax-weighted average of a
``kernel x kernel`` window of the (blurred) high-res map. The weights come from a per-pixel logit
(a linear map of the features, with dropout) times a learned per-position scale ``w`` plus a
learned per-position offset ``b``.

Reference behaviour kept here (FeatUp ``featup/downsamplers.py`` ``AttentionDownsampler``; LoftUp's
training helpers use the same class with a box blur): one Bernoulli draw per *output window* keeps
(p = 0.8) or zeroes that window's logits, so a dropped window falls back to the static kernel
``softmax(b)``; the draw happens in eval mode too (the reference has no ``self.training`` check);
``w`` and ``b`` start at 1 and 0 plus 0.01 Gaussian noise. See docs/upsampler_training.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_kernel(size: int = 5, sigma: float = 1.0) -> torch.Tensor:
    """(size, size) normalised Gaussian, float32."""
    ax = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


class AttentionDownsampler(nn.Module):
    """(B, C, H, W) -> (B, C, H', W') with H' = floor((H + 2p - k) / s) + 1.

    Args:
        dim: channels C.
        kernel: window side k (14 for FeatUp/LoftUp at patch 14, 9 for FeatSharp).
        stride: window stride s (default = kernel; FeatSharp uses the upsampling factor).
        padding: zero padding p of the window grid (default ``ceil((kernel - stride) / 2)``).
        blur: ``"gaussian"`` (5x5, sigma 1, reflect padding; FeatUp's kornia blur), ``"box"``
            (5x5 average with zero padding counted in the mean, i.e. ``avg_pool2d(5, 1, 2)``;
            LoftUp's training helpers) or ``"none"``; depthwise, before the windows are taken.
        dropout: feature dropout before the logit layer (training only, as ``nn.Dropout``).
        logit_dropout: probability that a whole output window's logits are multiplied by 0
            (0.2 in FeatUp/LoftUp); see the module docstring.
        dropout_in_eval: keep drawing the window dropout in eval mode (``True`` = reference).
        init_noise: std of the Gaussian noise added to the initial ``w`` (ones) and ``b``
            (zeros); 0.01 in the reference.
    """

    def __init__(self, dim: int, kernel: int = 14, stride: int | None = None,
                 padding: int | None = None, blur: str = "gaussian", dropout: float = 0.2,
                 logit_dropout: float = 0.2, dropout_in_eval: bool = True,
                 init_noise: float = 0.01):
        super().__init__()
        if blur not in ("gaussian", "box", "none"):
            raise ValueError(f"blur must be 'gaussian', 'box' or 'none', got {blur!r}")
        self.dim, self.kernel = dim, kernel
        self.stride = stride or kernel
        self.padding = (kernel - self.stride + 1) // 2 if padding is None else padding
        self.blur = blur
        self.logit_dropout = logit_dropout
        self.dropout_in_eval = dropout_in_eval
        self.attention_net = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, 1))
        # per-window-position affine on the logits: identity scale, zero shift, plus small noise
        self.w = nn.Parameter(torch.ones(kernel * kernel) + init_noise * torch.randn(kernel**2))
        self.b = nn.Parameter(torch.zeros(kernel * kernel) + init_noise * torch.randn(kernel**2))
        if blur == "gaussian":
            self.register_buffer("blur_kernel", gaussian_kernel(5, 1.0), persistent=False)
        elif blur == "box":
            self.register_buffer("blur_kernel", torch.full((5, 5), 1 / 25), persistent=False)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        if self.blur == "none":
            return x
        if self.blur == "box":  # zero padding, divisor 25 everywhere (avg_pool2d default)
            return F.avg_pool2d(x, 5, stride=1, padding=2)
        c = x.shape[1]
        k = self.blur_kernel.to(x.dtype)[None, None].expand(c, 1, 5, 5)
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, groups=c)

    def forward(self, hr: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``hr`` (B, C, H, W) -> (B, C, H', W'). ``keep`` (B, H'*W') bool overrides the random
        window-dropout draw (True = keep the window's logits); parity tests pass it."""
        if hr.ndim != 4 or hr.shape[1] != self.dim:
            raise ValueError(f"hr must be (B, {self.dim}, H, W), got {tuple(hr.shape)}")
        b, c, h, w = hr.shape
        x = self._blur(hr)
        logits = self.attention_net(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # B,1,H,W
        k, s, p = self.kernel, self.stride, self.padding
        pv = F.unfold(x, k, padding=p, stride=s)  # B, C*k*k, L
        pl = F.unfold(logits, k, padding=p, stride=s)  # B, k*k, L
        hp, wp = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        if keep is None and self.logit_dropout > 0 and (self.training or self.dropout_in_eval):
            keep = torch.rand(b, pl.shape[-1], device=pl.device) > self.logit_dropout
        if keep is not None:
            pl = pl * keep[:, None, :].to(pl.dtype)
        pl = pl * self.w[None, :, None] + self.b[None, :, None]
        att = pl.softmax(dim=1)  # B, k*k, L
        out = (pv.view(b, c, k * k, -1) * att[:, None]).sum(2)
        return out.view(b, c, hp, wp)


class ScaleNet(nn.Module):
    """FeatUp uncertainty head: s = max(exp(Conv1x1(C -> 1)(x) + 0.1), 1e-4), (B, 1, h, w).

    The conv's default initialisation is scaled by 0.1 (weight and bias), as FeatUp's
    ``ScaleNet`` in ``featup/train_jbu_upsampler.py``, so training starts with s close to e^0.1.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Conv2d(dim, 1, 1)
        with torch.no_grad():
            self.net.weight.mul_(0.1)
            self.net.bias.mul_(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.net(x) + 0.1).clamp_min(1e-4)


class FeatSharpUncertainty(nn.Module):
    """FeatSharp uncertainty head u (B, 1, h, w): Conv5x5(C->256, reflect) -> GELU -> Conv1x1
    (256 -> 1, zero-initialised so training starts with u = 0, i.e. plain MSE)."""

    def __init__(self, dim: int, hidden: int = 256):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, hidden, 5, padding=2, padding_mode="reflect")
        self.conv2 = nn.Conv2d(hidden, 1, 1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.gelu(self.conv1(x)))
