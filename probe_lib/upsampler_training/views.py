"""Random views for multi-view training: FeatUp jitter, LoftUp's jitter, FeatSharp homographies.

A view is drawn once (``sample_*``, from an explicit ``torch.Generator`` so runs are reproducible)
and then applied identically to the image and to a high-res feature map of the same frame
(``apply_*``), which is what lets the loss compare "features of the jittered image" with "jittered
features of the image".

Coordinates: normalised ``[-1, 1]`` with ``align_corners=False`` semantics, x = column, y = row,
as ``torch.nn.functional.grid_sample`` expects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


@dataclass(frozen=True)
class FeatUpJitter:
    """Reflect-pad ``pad`` (fraction of the side), zoom ``zoom``, crop at (top, left) (fractions of
    the free room), optional horizontal flip."""

    pad: float
    zoom: float
    top: float
    left: float
    flip: bool


def sample_featup_jitter(gen: torch.Generator, pad: float = 20 / 224, max_zoom: float = 2.0,
                         zoom_prob: float = 0.5, flip_prob: float = 0.5) -> FeatUpJitter:
    """FeatUp's view (arXiv 2403.10516): reflect pad 20 px at 224, zoom U[1, max_zoom] with prob.
    ``zoom_prob``, random crop back to the input size, horizontal flip with prob. ``flip_prob``."""
    zoom = _uniform(gen, 1.0, max_zoom) if torch.rand((), generator=gen).item() < zoom_prob else 1.0
    top, left = torch.rand(2, generator=gen).tolist()
    flip = torch.rand((), generator=gen).item() < flip_prob
    return FeatUpJitter(pad, zoom, top, left, flip)


def apply_featup_jitter(x: torch.Tensor, j: FeatUpJitter) -> torch.Tensor:
    """Apply a FeatUp jitter to (B, C, H, W) (image or same-frame feature map); output (B, C, H, W)."""
    _b, _c, h, w = x.shape
    ph, pw = round(j.pad * h), round(j.pad * w)
    y = F.pad(x, (pw, pw, ph, ph), mode="reflect") if ph or pw else x
    if j.zoom != 1.0:
        size = (round(y.shape[-2] * j.zoom), round(y.shape[-1] * j.zoom))
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
    t = round(j.top * (y.shape[-2] - h))
    left = round(j.left * (y.shape[-1] - w))
    y = y[..., t:t + h, left:left + w]
    return y.flip(-1) if j.flip else y


@dataclass(frozen=True)
class LoftUpJitter:
    """LoftUp script jitter: reflect pad (pad_y, pad_x) as fractions of the side, then resized back.

    The script also draws an x/y zoom in [0.9, 1.1] before resizing back (which then only resamples)
    and a +-5 degree rotation it never applies; both are drawn here too, so the random stream
    matches the recipe's structure, and the zoom is applied before the resize back.
    """

    pad_y: float
    pad_x: float
    zoom_y: float
    zoom_x: float


def sample_loftup_jitter(gen: torch.Generator, max_pad: float = 8 / 224) -> LoftUpJitter:
    py, px = (torch.rand(2, generator=gen) * max_pad).tolist()
    zy, zx = (0.9 + 0.2 * torch.rand(2, generator=gen)).tolist()
    torch.rand((), generator=gen)  # rotation: drawn but never applied by LoftUp's script
    return LoftUpJitter(py, px, zy, zx)


def apply_loftup_jitter(x: torch.Tensor, j: LoftUpJitter, resize_back: bool = True,
                        multiple: int = 1) -> torch.Tensor:
    """(B, C, H, W) -> pad, zoom, then either resize back to (H, W) (bilinear; LoftUp's stage 1
    script) or keep the larger/smaller view (``resize_back=False``; the stage 2 script), cropped
    at the top-left to a multiple of ``multiple`` per side so a patch-``multiple`` backbone takes
    it (the crop is applied identically to images and feature maps)."""
    h, w = x.shape[-2:]
    ph, pw = round(j.pad_y * h), round(j.pad_x * w)
    y = F.pad(x, (pw, pw, ph, ph), mode="reflect") if ph or pw else x
    y = F.interpolate(y, size=(max(1, round(y.shape[-2] * j.zoom_y)),
                               max(1, round(y.shape[-1] * j.zoom_x))),
                      mode="bilinear", align_corners=False)
    if resize_back:
        return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
    hh, ww = y.shape[-2] // multiple * multiple, y.shape[-1] // multiple * multiple
    if hh < multiple or ww < multiple:
        raise ValueError(f"jittered view {tuple(y.shape[-2:])} is smaller than one patch "
                         f"({multiple})")
    return y[..., :hh, :ww]


# ----------------------------------------------------------------------------- homographies


def sample_homography(gen: torch.Generator, zoom: tuple[float, float] = (0.95, 1 / 0.95),
                      perspective: tuple[float, float] = (0.01, 0.05),
                      max_rotation_deg: float = 5.0, max_shift: float = 0.05) -> torch.Tensor:
    """A random (3, 3) homography mapping normalised view coordinates to base coordinates.

    FeatSharp's per-view warp: zoom in ``zoom``, rotation within +-``max_rotation_deg``,
    projective terms of magnitude in ``perspective`` with random signs, a small shift.
    """
    z = _uniform(gen, *zoom)
    a = math.radians(_uniform(gen, -max_rotation_deg, max_rotation_deg))
    tx, ty = (_uniform(gen, -max_shift, max_shift) for _ in range(2))
    mag = [_uniform(gen, *perspective) for _ in range(2)]
    sign = [1.0 if s else -1.0 for s in (torch.rand(2, generator=gen) < 0.5).tolist()]
    ca, sa = math.cos(a) / z, math.sin(a) / z
    return torch.tensor([[ca, -sa, tx], [sa, ca, ty],
                         [sign[0] * mag[0], sign[1] * mag[1], 1.0]], dtype=torch.float32)


def homography_grid(hom: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Sampling grid (B, H, W, 2) for ``grid_sample``: view pixel centres mapped through ``hom``.

    ``hom``: (3, 3) or (B, 3, 3), view -> base, normalised coordinates.
    """
    h, w = size
    hom = hom[None] if hom.ndim == 2 else hom
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([gx, gy, torch.ones_like(gx)], -1).reshape(-1, 3).to(hom)
    out = torch.einsum("bij,nj->bni", hom, pts)
    xy = out[..., :2] / out[..., 2:].clamp_min(1e-6)
    return xy.reshape(hom.shape[0], h, w, 2)


def warp(x: torch.Tensor, hom: torch.Tensor, size: tuple[int, int] | None = None,
         mode: str = "bilinear", padding_mode: str = "reflection") -> tuple[torch.Tensor, torch.Tensor]:
    """Resample (B, C, H, W) into the view frame given by ``hom`` (view -> base).

    Returns ``(warped (B, C, h, w), valid (B, 1, h, w) float)``; ``valid`` is 1 where the view pixel
    falls inside the base image (outside, the reflection padding invents content).
    """
    size = size or tuple(x.shape[-2:])
    grid = homography_grid(hom, size)
    if grid.shape[0] != x.shape[0]:
        grid = grid.expand(x.shape[0], -1, -1, -1)
    out = F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
    valid = (grid.abs() <= 1).all(-1, keepdim=True).permute(0, 3, 1, 2).to(x.dtype)
    return out, valid


def sample_base_crop(gen: torch.Generator, max_zoom: float = 2.0) -> tuple[float, float, float]:
    """FeatSharp's shared zoom U[1, max_zoom] and crop position (fractions): (zoom, top, left)."""
    return _uniform(gen, 1.0, max_zoom), *torch.rand(2, generator=gen).tolist()


def apply_base_crop(x: torch.Tensor, crop: tuple[float, float, float]) -> torch.Tensor:
    """Zoom (B, C, H, W) by ``crop[0]`` and crop back to (H, W) at the given fractional offset."""
    zoom, top, left = crop
    h, w = x.shape[-2:]
    if zoom == 1.0:
        return x
    y = F.interpolate(x, size=(round(h * zoom), round(w * zoom)), mode="bilinear",
                      align_corners=False, antialias=True)
    t, lft = round(top * (y.shape[-2] - h)), round(left * (y.shape[-1] - w))
    return y[..., t:t + h, lft:lft + w]
