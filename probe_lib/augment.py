"""iSegProbe's training augmentations (its ``models/defaults.py``) with albumentations-0.5.2
semantics, in numpy/cv2.

Later albumentations releases changed ``Flip``, ``ShiftScaleRotate`` and several defaults, so
instead of pinning the old library each step is re-implemented here and tested.
Every random draw comes from a ``numpy.random.Generator`` (the reference draws from Python's
``random``; streams therefore differ, distributions do not).

Images are uint8 (H, W, 3) RGB; masks are integer label maps (H, W) (0 background, 1..K objects)
and optional bool ignore maps, both transformed with nearest-neighbour interpolation and zero
fill, exactly like albumentations' ``mask`` targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "AugmentedSample",
    "IsegAugment",
    "brightness_contrast",
    "flip",
    "pad_if_needed",
    "random_crop",
    "remove_small_objects",
    "resize",
    "rgb_shift",
    "rot90",
    "shift_scale_rotate",
]


# ---------------------------------------------------------------- deterministic primitives
def resize(img: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    """cv2.resize to (height, width); INTER_LINEAR for images, INTER_NEAREST for masks."""
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if img.dtype == bool:
        return cv2.resize(img.astype(np.uint8), (width, height), interpolation=interp).astype(bool)
    if img.dtype in (np.int32, np.int64) and nearest:
        return cv2.resize(img.astype(np.int32), (width, height), interpolation=interp).astype(
            img.dtype)
    return cv2.resize(img, (width, height), interpolation=interp)


def flip(img: np.ndarray, d: int) -> np.ndarray:
    """cv2.flip code: 1 horizontal, 0 vertical, -1 both (albumentations 0.5.2 ``Flip``)."""
    out = img[:, ::-1] if d == 1 else img[::-1] if d == 0 else img[::-1, ::-1]
    return np.ascontiguousarray(out)


def rot90(img: np.ndarray, k: int) -> np.ndarray:
    """np.rot90 by k quarter turns (counter-clockwise), as ``RandomRotate90``."""
    return np.ascontiguousarray(np.rot90(img, k))


def _warp(img: np.ndarray, matrix: np.ndarray, nearest: bool) -> np.ndarray:
    h, w = img.shape[:2]
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    src = img.astype(np.uint8) if img.dtype == bool else \
        img.astype(np.int32) if img.dtype == np.int64 else img
    out = cv2.warpAffine(src, matrix, (w, h), flags=interp, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=0)
    return out.astype(img.dtype)


def shift_scale_rotate(img: np.ndarray, angle: float, scale: float, dx: float, dy: float,
                       nearest: bool = False) -> np.ndarray:
    """Rotate by ``angle`` degrees about the centre (w/2, h/2), scale, then shift by (dx·w, dy·h)
    pixels; constant zero border."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[0, 2] += dx * w
    m[1, 2] += dy * h
    return _warp(img, m, nearest)


def pad_if_needed(img: np.ndarray, min_height: int, min_width: int) -> np.ndarray:
    """Zero-pad to at least (min_height, min_width); the extra top/left is floor(diff/2)."""
    h, w = img.shape[:2]
    top = max(0, (min_height - h)) // 2
    bottom = max(0, min_height - h) - top
    left = max(0, (min_width - w)) // 2
    right = max(0, min_width - w) - left
    if top == bottom == left == right == 0:
        return img
    pad = [(top, bottom), (left, right)] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, pad, mode="constant", constant_values=0)


def random_crop(img: np.ndarray, height: int, width: int, h_start: float, w_start: float
                ) -> np.ndarray:
    """Crop at y1 = int((H - height) * h_start), x1 = int((W - width) * w_start)."""
    h, w = img.shape[:2]
    if h < height or w < width:
        raise ValueError(f"cannot crop {height}x{width} from a {h}x{w} image; pad first")
    y1 = int((h - height) * h_start)
    x1 = int((w - width) * w_start)
    return img[y1:y1 + height, x1:x1 + width]


def brightness_contrast(img: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """uint8 LUT: clip(v·alpha + beta·255, 0, 255) truncated to uint8 (brightness_by_max)."""
    lut = np.arange(256, dtype=np.float32)
    if alpha != 1:
        lut *= alpha
    if beta != 0:
        lut += beta * 255
    lut = np.clip(lut, 0, 255).astype(np.uint8)
    return cv2.LUT(img, lut)


def rgb_shift(img: np.ndarray, r: float, g: float, b: float) -> np.ndarray:
    """Per-channel uint8 LUT: clip(v + shift, 0, 255) truncated to uint8."""
    out = np.empty_like(img)
    for c, s in enumerate((r, g, b)):
        lut = np.clip(np.arange(256, dtype=np.float32) + s, 0, 255).astype(np.uint8)
        out[..., c] = cv2.LUT(np.ascontiguousarray(img[..., c]), lut)
    return out


# ---------------------------------------------------------------- object filters
def remove_small_objects(objects: np.ndarray, min_area: int = 80) -> np.ndarray:
    """Objects with fewer than ``min_area`` pixels become background (after augmentation)."""
    ids, counts = np.unique(objects, return_counts=True)
    out = objects.copy()
    for i, n in zip(ids, counts, strict=True):
        if i > 0 and n < min_area:
            out[objects == i] = 0
    return out


# ---------------------------------------------------------------- the pipeline
@dataclass
class AugmentedSample:
    image: np.ndarray  # uint8 (S, S, 3)
    objects: np.ndarray  # int32 (S, S)
    ignore: np.ndarray  # bool (S, S)
    tries: int  # augmentation attempts used
    # bool (S, S): pixels of objects dropped for being smaller than ``min_object_area``
    small_removed: np.ndarray | None = None


class IsegAugment:
    """iSegProbe's training pipeline (``models/defaults.py``), in order:

    UniformRandomResize U[0.75, 1.25] (size rounded) → Flip p 0.5 (horizontal / vertical / both
    uniformly) → RandomRotate90 p 0.5 (k ∈ 0..3) → ShiftScaleRotate (shift ±0.03, no scale,
    rotation ±3°, zero border, p 0.75) → PadIfNeeded(crop) → RandomCrop(crop) →
    RandomBrightnessContrast(±0.25, −0.15..0.4, p 0.75) → RGBShift(±10, p 0.75).

    ``__call__(image, objects, ignore, rng)`` re-draws until at least one object keeps ≥ 1 pixel,
    unless U < ``keep_background_prob`` (then an object-free crop is accepted), and finally drops
    objects smaller than ``min_object_area`` pixels. ``crop_size=None`` skips pad and crop (used
    with other sizes).
    """

    def __init__(self, crop_size: int | None = 224, scale_range=(0.75, 1.25),
                 keep_background_prob: float = 0.01, min_object_area: int = 80,
                 max_tries: int = 100) -> None:
        self.crop_size = crop_size
        self.scale_range = scale_range
        self.keep_background_prob = keep_background_prob
        self.min_object_area = min_object_area
        self.max_tries = max_tries

    def _once(self, image, objects, ignore, rng: np.random.Generator):
        h, w = image.shape[:2]
        s = rng.uniform(*self.scale_range)
        nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))  # noqa: RUF046
        image = resize(image, nh, nw)
        objects = resize(objects, nh, nw, nearest=True)
        ignore = resize(ignore, nh, nw, nearest=True)
        if rng.random() < 0.5:
            d = int(rng.integers(-1, 2))
            image, objects, ignore = flip(image, d), flip(objects, d), flip(ignore, d)
        if rng.random() < 0.5:
            k = int(rng.integers(0, 4))
            image, objects, ignore = rot90(image, k), rot90(objects, k), rot90(ignore, k)
        if rng.random() < 0.75:
            angle = rng.uniform(-3, 3)
            dx, dy = rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03)
            image = shift_scale_rotate(image, angle, 1.0, dx, dy)
            objects = shift_scale_rotate(objects, angle, 1.0, dx, dy, nearest=True)
            ignore = shift_scale_rotate(ignore, angle, 1.0, dx, dy, nearest=True)
        if self.crop_size is not None:
            c = self.crop_size
            image, objects, ignore = (pad_if_needed(a, c, c) for a in (image, objects, ignore))
            hs, ws = rng.random(), rng.random()
            image, objects, ignore = (random_crop(a, c, c, hs, ws) for a in (image, objects, ignore))
        if rng.random() < 0.75:
            image = brightness_contrast(image, 1.0 + rng.uniform(-0.15, 0.4),
                                        rng.uniform(-0.25, 0.25))
        if rng.random() < 0.75:
            image = rgb_shift(image, *rng.uniform(-10, 10, size=3))
        return image, objects, ignore

    def __call__(self, image: np.ndarray, objects: np.ndarray, ignore: np.ndarray | None,
                 rng: np.random.Generator) -> AugmentedSample:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        if objects.shape != image.shape[:2]:
            raise ValueError(f"mask size {objects.shape} differs from image size "
                             f"{image.shape[:2]}")
        if ignore is None:
            ignore = np.zeros(objects.shape, bool)
        elif ignore.shape != objects.shape:
            raise ValueError(f"ignore size {ignore.shape} differs from mask size {objects.shape}")
        objects = objects.astype(np.int32)
        for tries in range(1, self.max_tries + 1):
            im, ob, ig = self._once(image, objects, ignore.astype(bool), rng)
            if (ob > 0).any() or rng.random() < self.keep_background_prob:
                break
        kept = remove_small_objects(ob, self.min_object_area)
        return AugmentedSample(np.ascontiguousarray(im), np.ascontiguousarray(kept, np.int32),
                               np.ascontiguousarray(ig, bool), tries,
                               small_removed=(ob > 0) & (kept == 0))
