"""Training images for the upsampler objectives: deterministic per-step batches, mask padding,
held-out synthetic images with region labels for the evidence metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from probe_lib.utils import banner, data_root


def step_indices(step: int, n: int, batch: int, seed: int = 0) -> list[int]:
    """Indices of the batch at ``step``: epoch-wise random permutations of ``range(n)`` seeded by
    ``(seed, epoch)``, so a batch is a pure function of the step (what resume needs)."""
    if n < 1:
        raise ValueError("the training set is empty")
    out = []
    for pos in range(step * batch, step * batch + batch):
        epoch, i = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7777 + epoch))
        out.append(int(perm[i]))
    return out


def pad_masks(masks: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-image (M_i, S, S) bool masks to (B, max M, S, S) int8 with -1 padding masks
    (LoftUp's loader pads to 150 the same way); images with no masks get only padding."""
    m = max(1, max(int(x.shape[0]) for x in masks))
    s = masks[0].shape[-2:]
    out = torch.full((len(masks), m, *s), -1, dtype=torch.int8)
    for i, x in enumerate(masks):
        if x.shape[0]:
            out[i, : x.shape[0]] = x.to(torch.int8)
    return out


def sa1b_root(cfg) -> Path:
    """Where the upsampler training images live for ``cfg.upsampler.train_data``.

    ``"synthetic"`` -> the synthetic set's SA-1B layout (built if needed, part masks stand in for
    SAM masks); ``"sa1b"`` -> ``data_root()/"SA1B"``; anything else is a folder path.
    """
    src = cfg.upsampler.train_data
    if src == "synthetic":
        from probe_lib.data.synthetic import ensure_synthetic

        root = ensure_synthetic(num_images=cfg.data.synthetic_num_images,
                                size=cfg.data.synthetic_image_size, seed=cfg.data.synthetic_seed,
                                progress=False)
        return Path(root) / "SA1B"
    root = data_root() / "SA1B" if src == "sa1b" else Path(src).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"upsampler training data not found at {root} (upsampler.train_data={src!r}); "
            "fetch an SA-1B subset with data_scripts/ or use train_data='synthetic'")
    return root


class TrainingImages:
    """Images (and masks) for upsampler training, loaded once and kept in memory when small.

    Args:
        cfg: a ``probe_lib.config.Config``; uses ``upsampler.train_data`` and ``train_num_images``.
        size: square side S the images (and masks) are resized/cropped to.
        with_masks: also return masks (needed by LoftUp).
        max_masks: masks kept per image (150 in LoftUp's loader).
        resize: ``"crop"`` (shorter side -> S, centre crop; LoftUp/FeatUp loaders) or
            ``"squash"`` (both sides -> S, aspect ratio not kept; LiFT's ``Resize((448, 448))``);
            ``"squash"`` cannot return masks.
    """

    def __init__(self, cfg, size: int, with_masks: bool = False, max_masks: int = 150,
                 cache: bool | None = None, resize: str = "crop"):
        if resize not in ("crop", "squash"):
            raise ValueError(f"resize must be 'crop' or 'squash', got {resize!r}")
        if resize == "squash" and with_masks:
            raise ValueError("resize='squash' is for images only (LiFT); masks need 'crop'")
        self.resize = resize
        from probe_lib.data.sa1b import SA1BDataset

        root = sa1b_root(cfg)
        if cfg.upsampler.train_data == "synthetic":
            banner("Upsampler training on the SYNTHETIC teaching set: its exact part masks stand\n"
                   "in for SAM masks (no SA-1B here). Numbers are not comparable to the papers.")
        self.ds = SA1BDataset(root, size, max_masks=max_masks,
                              num_images=cfg.upsampler.train_num_images)
        if len(self.ds) == 0:
            raise FileNotFoundError(f"no readable SA-1B style images under {root}")
        self.size, self.with_masks = size, with_masks
        self.seed = cfg.train.seed
        self.cache = len(self.ds) <= 2000 if cache is None else cache
        self._items: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.ds)

    def item(self, i: int) -> dict:
        if i in self._items:
            return self._items[i]
        if self.resize == "squash":
            it = {"image": _squash_image(self.ds.paths[i], self.size), "name": self.ds.paths[i].name}
        else:
            it = self.ds[i]
        if self.cache:
            self._items[i] = it
        return it

    def batch(self, step: int, batch_size: int) -> dict[str, Any]:
        """``{"image": (B, 3, S, S) float [0, 1], "masks": (B, M, S, S) int8 | None}``."""
        items = [self.item(i) for i in step_indices(step, len(self), batch_size, self.seed)]
        out = {"image": torch.stack([it["image"] for it in items]).float(),
               "names": [it["name"] for it in items]}
        out["masks"] = pad_masks([it["masks"] for it in items]) if self.with_masks else None
        return out

    def all_images(self) -> torch.Tensor:
        """(N, 3, S, S) — every training image (for feature caching / PHI-S fitting at small)."""
        return torch.stack([self.item(i)["image"] for i in range(len(self))]).float()


def _squash_image(path: Path, size: int) -> torch.Tensor:
    """(3, size, size) float [0, 1] RGB: the whole image resized to size x size (no crop)."""
    import cv2

    from probe_lib.data.sa1b import _read_bgr

    img = _read_bgr(path)
    interp = cv2.INTER_AREA if min(img.shape[:2]) > size else cv2.INTER_LINEAR
    img = cv2.resize(img, (size, size), interpolation=interp)[:, :, ::-1]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255


def heldout_synthetic(cfg, size: int, n: int = 8) -> dict[str, torch.Tensor]:
    """Held-out (val-split) synthetic images with exact labels, never used for training.

    Returns ``{"image": (n, 3, S, S) float [0, 1], "parts": (n, S, S) int64 region ids,
    "instances": (n, S, S) int64 (0 = background)}`` (labels resized nearest).
    """
    from probe_lib.data.synthetic import _split, generate_image

    _, val = _split(cfg.data.synthetic_num_images)
    imgs, parts, inst = [], [], []
    for i in val[:n]:
        s = generate_image(i, size=cfg.data.synthetic_image_size, seed=cfg.data.synthetic_seed)
        img = torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1).float()[None] / 255
        imgs.append(F.interpolate(img, size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False)[0])
        for src, dst in ((s.parts, parts), (s.instances, inst)):
            lab = torch.from_numpy(np.asarray(src, dtype=np.int64))[None, None].float()
            dst.append(F.interpolate(lab, size=(size, size), mode="nearest")[0, 0].long())
    return {"image": torch.stack(imgs), "parts": torch.stack(parts),
            "instances": torch.stack(inst)}
