"""LiFT (Suri et al., ECCV 2024), the patch-14 variant benchmarked by iSegProbe (arXiv 2403.14625).

One pass doubles the token grid: a small CNN encodes the guidance image at ``2h x 2w`` and
``h x w``; the low-res features are concatenated
with the ``h x w`` image code, doubled with a transposed convolution, concatenated with the
``2h x 2w`` image code and refined by two 3x3 convolutions. Module names follow the checkpoint
that iSegProbe hosts, so that it loads with ``strict=True`` after stripping ``module.``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import PretrainedWeights, Upsampler, imagenet_normalize, register_upsampler


def _conv_bn_relu(cin: int, cout: int, stride: int, bias: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class _DoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.double_conv = nn.Sequential(*_conv_bn_relu(cin, cout, 1, bias=False),
                                         *_conv_bn_relu(cout, cout, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class _Up(nn.Module):
    def __init__(self, cin: int, cup: int, cskip: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cup, kernel_size=2, stride=2)
        self.conv_1 = _DoubleConv(cup + cskip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:  # odd sizes cannot occur with the pooling below
            raise RuntimeError(f"LiFT internal size mismatch {x.shape} vs {skip.shape}")
        return self.conv_1(torch.cat([x, skip], dim=1))


@register_upsampler("lift")
class LiFT(Upsampler):
    """LiFT: 2x per pass; ``output_size="image"`` then resizes bilinearly (align_corners=True).

    Args:
        dim: feature channels ``C`` (384: 1,187,280 parameters).
        image_channels: width of the image encoder (32 in the released model).
        passes: number of 2x passes for the *native* output (1 = the trained setting). More
            passes re-apply the same weights with the guidance pooled to each new grid; the
            model was never trained for that and quality drifts (LiFT paper), so it is opt-in.

    Input image: RGB in [0, 1], normalised inside with ImageNet mean/std.
    """

    pretrained = PretrainedWeights(
        filename="lift_dinov2_vits14_isegprobe.pth",
        manual=("LiFT for DINOv2-S/14 is hosted by iSegProbe on Google Drive (file id "
                "1h4yANgeCVV2du0L4dusK49JiX1_nH8ax); download it with a browser or `gdown`"),
        description="LiFT (DINOv2 S/14) as released with iSegProbe; plain state_dict, module.*")

    def __init__(self, dim: int = 384, image_channels: int = 32, passes: int = 1):
        super().__init__(dim)
        if not isinstance(passes, int) or passes < 1:
            raise ValueError(f"passes must be a positive int, got {passes!r}")
        self.passes = passes
        ci = image_channels
        self.image_convs_1 = nn.Sequential(*_conv_bn_relu(3, ci, 2), *_conv_bn_relu(ci, ci, 2))
        self.image_convs_2 = nn.Sequential(*_conv_bn_relu(ci, ci, 2))
        # Widths of the released model at C=384: 416 -> 208 (transposed conv) -> 192.
        self.up1 = _Up(dim + ci, (dim + ci) // 2, ci, dim // 2)
        self.outc = nn.Conv2d(dim // 2, dim, kernel_size=1)

    def native_size(self, feats_hw, image_hw):
        f = 2 ** self.passes
        return (feats_hw[0] * f, feats_hw[1] * f)

    def single_pass(self, feats: torch.Tensor, image_norm: torch.Tensor) -> torch.Tensor:
        """One 2x pass: ``(B, C, h, w)`` + normalised ``(B, 3, H, W)`` -> ``(B, C, 2h, 2w)``."""
        h, w = feats.shape[-2:]
        img1 = F.adaptive_max_pool2d(self.image_convs_1(image_norm), (2 * h, 2 * w))
        img2 = self.image_convs_2(img1)
        if img2.shape[-2:] != (h, w):
            img2 = F.adaptive_max_pool2d(img2, (h, w))
        x = self.up1(torch.cat([feats, img2], dim=1), img1)
        return self.outc(x)

    def upsample(self, feats: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        image_norm = imagenet_normalize(image)
        x = feats
        for k in range(self.passes):
            if k > 0:  # iterate for >2x: image upsampled 2x each time (LiFT, arXiv 2403.14625)
                image_norm = F.interpolate(image_norm, scale_factor=2, mode="bilinear",
                                           align_corners=False)
            x = self.single_pass(x, image_norm)
        return x
