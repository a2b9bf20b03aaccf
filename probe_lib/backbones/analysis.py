"""Small measurements on a backbone for notebook 01: image preparation, cost, thin structures."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .vit import Backbone

SAMPLE_PHOTOS = ("skimage.astronaut", "skimage.chelsea", "skimage.coffee", "sklearn.china",
                 "matplotlib.grace_hopper")


def load_sample_photo(name: str) -> np.ndarray:
    """One photo shipped with an installed package, offline: uint8 (H, W, 3) RGB.

    ``name`` is ``"skimage.<function>"`` (e.g. ``skimage.astronaut``), ``"sklearn.<file stem>"``
    (``sklearn.china``) or ``"matplotlib.<file stem>"`` (``matplotlib.grace_hopper``).
    """
    source, _, item = name.partition(".")
    if source == "skimage":
        import skimage.data

        loader = getattr(skimage.data, item, None)
        img = loader() if callable(loader) else None
    elif source == "sklearn":
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{item}.jpg")
    elif source == "matplotlib":
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data(f"{item}.jpg") as f:
            img = np.asarray(Image.open(f).convert("RGB"))
    else:
        img = None
    if img is None:
        raise ValueError(f"unknown sample photo {name!r}; examples: {', '.join(SAMPLE_PHOTOS)}")
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def prepare_image(image: np.ndarray, size: int | tuple[int, int], patch_size: int = 14
                  ) -> torch.Tensor:
    """Resize (short side, antialiased) and centre-crop a photo to a patch-aligned network input.

    Args:
        image: uint8 (H, W, 3) RGB.
        size: output side or (height, width); each a positive multiple of ``patch_size``.
    Returns:
        (1, 3, height, width) float32 RGB in [0, 1].
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be a uint8 (H, W, 3) RGB array, got {img.dtype} {img.shape}")
    oh, ow = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if oh <= 0 or ow <= 0 or oh % patch_size or ow % patch_size:
        raise ValueError(f"size must be positive multiples of the patch size {patch_size}, "
                         f"got {oh}×{ow}")
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    h, w = x.shape[-2:]
    s = max(oh / h, ow / w)
    rh, rw = max(oh, round(h * s)), max(ow, round(w * s))
    x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (rh - oh) // 2, (rw - ow) // 2
    return x[..., top:top + oh, left:left + ow].clamp(0, 1).contiguous()


@torch.no_grad()
def time_forward(backbone: Backbone, sizes: Sequence[int], repeats: int = 3,
                 batch_size: int = 1, warmup: int = 1) -> list[dict[str, float]]:
    """Wall-clock cost of ``backbone(images)`` at several square input sizes.

    Returns one dict per size: ``size`` (pixels), ``grid`` (tokens per side), ``tokens`` (h*w),
    ``seconds`` (wall clock, median over ``repeats`` runs after ``warmup`` runs), ``seconds_min``,
    ``cpu_seconds`` (median process CPU time, summed over threads: less sensitive than wall
    clock to other jobs on a shared machine; about ``threads × seconds`` on an idle one).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    device = next(backbone.parameters()).device
    rows = []
    for s in sizes:
        h, w = backbone.grid_size(s, s)
        x = torch.rand(batch_size, 3, s, s, generator=torch.Generator().manual_seed(0)).to(device)
        times, cpu = [], []
        for i in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            backbone(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        rows.append({"size": int(s), "grid": int(h), "tokens": int(h * w),
                     "seconds": float(np.median(times)), "seconds_min": float(min(times)),
                     "cpu_seconds": float(np.median(cpu))})
    return rows


def token_mask(mask: torch.Tensor, patch_size: int, threshold: float = 0.5) -> torch.Tensor:
    """Best a per-token label can do: a patch is 'on' when at least ``threshold`` of it is covered.

    Args:
        mask: (H, W) bool/0-1, sides multiples of ``patch_size``.
    Returns:
        (H, W) bool, the token decision repeated over each patch (nearest upsampling).
    """
    m = mask.float()[None, None]
    cover = F.avg_pool2d(m, patch_size)
    return F.interpolate((cover >= threshold).float(), scale_factor=patch_size,
                         mode="nearest")[0, 0].bool()


@torch.no_grad()
def thin_bar_response(backbone: Backbone, image: torch.Tensor, widths: Sequence[int],
                      left: int | None = None, value: float = 1.0) -> dict[str, list]:
    """Paint vertical bars of several widths on an image and measure what the token grid keeps.

    Each bar covers all rows and columns ``[left, left + width)``; ``left`` defaults to 5 px past
    a patch border near the middle, so bars are not aligned with the grid.

    Args:
        image: (1, 3, H, W) RGB in [0, 1].
        widths: bar widths in pixels.
    Returns:
        dict with ``widths``; ``feature_change``: mean (1 - cosine) between the features with and
        without the bar over the tokens the bar touches; ``change_maps``: (h, w) numpy arrays of
        that per-token change; ``token_recall``: fraction of bar pixels a per-token mask
        (:func:`token_mask`) recovers; ``images``: the painted images (1, 3, H, W); ``masks``:
        the (H, W) bool bar masks; ``token_masks``: their per-token version (:func:`token_mask`).
    """
    p = backbone.patch_size
    _, _, height, width = image.shape
    _, w = backbone.grid_size(height, width)  # validates the size too
    if left is None:
        left = (w // 2) * p + 5
    if any(wd < 1 or left + wd > width for wd in widths):
        raise ValueError(f"bar widths {list(widths)} starting at column {left} must be >= 1 and "
                         f"fit in the image width {width}")
    painted, masks = [], []
    for wd in widths:
        img = image.clone()
        img[..., left:left + wd] = value
        mask = torch.zeros(height, width, dtype=torch.bool)
        mask[:, left:left + wd] = True
        painted.append(img)
        masks.append(mask)
    feats = backbone(torch.cat([image, *painted]))
    base = feats[:1]
    out = {"widths": [int(x) for x in widths], "feature_change": [], "change_maps": [],
           "token_recall": [], "images": painted, "masks": masks, "token_masks": []}
    for i, mask in enumerate(masks):
        change = 1 - F.cosine_similarity(feats[i + 1:i + 2], base, dim=1)[0]
        touched = F.max_pool2d(mask.float()[None, None], p)[0, 0].bool()
        out["feature_change"].append(float(change[touched].mean()))
        out["change_maps"].append(change.cpu().numpy())
        tm = token_mask(mask, p)
        out["token_masks"].append(tm)
        out["token_recall"].append(float((tm & mask).sum() / mask.sum()))
    return out
