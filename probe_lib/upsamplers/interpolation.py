"""Parameter-free baselines: ``identity`` (token grid kept), ``nearest``, ``bilinear``, ``bicubic``.

Conventions follow iSegProbe: ``nearest`` is PyTorch's legacy ``"nearest"`` (not
``"nearest-exact"``), ``bilinear`` uses ``align_corners=True``, ``bicubic`` ``align_corners=False``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Upsampler, register_upsampler


class _Interpolation(Upsampler):
    learned = False
    mode: str = "bilinear"
    align_corners: bool | None = None

    def __init__(self, dim: int = 384):
        super().__init__(dim)

    def upsample(self, feats: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return F.interpolate(feats, size=tuple(image.shape[-2:]), mode=self.mode,
                             align_corners=self.align_corners)


@register_upsampler("identity")
class Identity(_Interpolation):
    """Returns the low-res features unchanged, ``(B, C, h, w)``; the head works at ``h x w``."""

    resize_to_image = False

    def upsample(self, feats: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return feats


@register_upsampler("nearest")
class Nearest(_Interpolation):
    """Legacy nearest neighbour: source index ``floor(dst * h / H)``."""

    mode = "nearest"


@register_upsampler("bilinear")
class Bilinear(_Interpolation):
    """Bilinear with ``align_corners=True``: corner pixel centres of input and output coincide."""

    mode = "bilinear"
    align_corners = True


@register_upsampler("bicubic")
class Bicubic(_Interpolation):
    """Bicubic (Keys, a = -0.75) with ``align_corners=False``; may overshoot the input range."""

    mode = "bicubic"
    align_corners = False
