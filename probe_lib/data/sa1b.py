"""SA-1B subset reader (JPEG + JSON with COCO RLE masks) and a plain image-folder dataset."""

from __future__ import annotations

import warnings

import numpy as np


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE of a binary mask, as SA-1B stores it.

    Args:
        mask: (H, W) bool or {0, 1} array.

    Returns:
        ``{"size": [H, W], "counts": str}`` (column-major run lengths, LEB128-like string).
    """
    from pycocotools import mask as mask_utils

    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {m.shape}")
    with warnings.catch_warnings():  # pycocotools' NumPy-2 copy-keyword deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    counts = rle["counts"]
    return {"size": [int(rle["size"][0]), int(rle["size"][1])],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def decode_rle(rle: dict) -> np.ndarray:
    """Decode a COCO RLE (compressed string counts or uncompressed list counts) to (H, W) bool.

    Args:
        rle: ``{"size": [H, W], "counts": str | bytes | list[int]}``; list counts are run
            lengths in column-major (Fortran) order starting with a run of zeros.
    """
    from pycocotools import mask as mask_utils

    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"an RLE must be a dict with 'size' and 'counts', got {rle!r:.200}")
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, list):
        if sum(counts) != h * w:
            raise ValueError(f"uncompressed RLE counts sum to {sum(counts)}, expected {h}*{w}")
        obj = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    else:
        obj = {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str)
               else counts}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(obj).astype(bool)
