"""Frozen-feature cache for probe training on a fixed bank of augmented crops.

The backbone (and the upsampler) of a probe are frozen, so for late injection the features of a
training crop do not change between epochs: only the clicks do. With a crop bank
(``ProbeTrainSet(bank_size=N)``: N augmented crops fixed once, clicks drawn anew every epoch) the
backbone runs once per crop instead of once per step, and the features are shared by every probe
and process that uses the same backbone, input size and crops:

- backbone features ``(C, h, w)`` float32 live on disk under
  ``$PROBE_LIB_CACHE/features/<key>.pt``, where ``key`` hashes the backbone's weights id and
  position-embedding rule, the input size and the bytes of every crop (so a change of data,
  augmentation, seed or bank size gives another key; an old file is never reused). The folder is
  bounded: after a write the least recently used files beyond ``max_disk_bytes`` are deleted;
- the upsampled features of ``late_highres`` probes are kept in memory as bfloat16 while they fit
  in ``max_memory_bytes`` (9.6 MB per crop at 112 px); crops beyond that are upsampled again from
  the cached backbone features at each use.

Each crop's upsampled features are computed on that crop alone (batch of one, as the evaluator
does), which matters for LoftUp, whose input scaling uses statistics of the whole batch.

Early injection cannot use the cache: the clicks enter the backbone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from probe_lib.utils import atomic_torch_save, cache_dir

logger = logging.getLogger(__name__)

__all__ = ["FeatureCache", "cache_key"]

FORMAT_VERSION = 1


def cache_key(backbone: torch.nn.Module, image_size: int, crops: list) -> str:
    """Hex key of a bank's backbone features: weights id, position rule, input size, crop bytes.

    Args:
        backbone: the frozen backbone (``weights_id``, ``pos_interp`` attributes when present).
        image_size: network input side in pixels.
        crops: the bank's crops in bank order, each a uint8 (S, S, 3) array (or anything with
            ``tobytes``).
    """
    h = hashlib.sha256()
    meta = {"format": FORMAT_VERSION, "weights": str(getattr(backbone, "weights_id", "?")),
            "pos_interp": str(getattr(backbone, "pos_interp", None)),
            "name": type(backbone).__name__, "image_size": int(image_size), "n": len(crops)}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for c in crops:
        h.update(c.tobytes())
    return h.hexdigest()[:24]


class FeatureCache:
    """Per-crop frozen features of a probe, computed once, for ``ISProbe.forward_cached``.

    Args:
        model: the :class:`probe_lib.model.ISProbe` (late injection).
        key: :func:`cache_key` of the bank; None keeps everything in memory only.
        root: folder of the on-disk files; default ``$PROBE_LIB_CACHE/features``.
        max_disk_bytes: bound of the folder (least recently used files go first).
        max_memory_bytes: budget of the in-memory upsampled features (bfloat16).
    """

    def __init__(self, model: Any, key: str | None, root: str | os.PathLike | None = None,
                 max_disk_bytes: int = 2 * 1024**3, max_memory_bytes: int = 3 * 1024**3) -> None:
        if model.injection not in ("late_lowres", "late_highres"):
            raise ValueError(f"the feature cache serves late injection only; this probe injects "
                             f"clicks {model.injection!r} (through the backbone)")
        self.model = model
        self.key = key
        self.root = Path(root) if root is not None else cache_dir() / "features"
        self.max_disk_bytes = int(max_disk_bytes)
        self.max_memory_bytes = int(max_memory_bytes)
        self.feats: dict[int, torch.Tensor] = {}
        self.hr: dict[int, torch.Tensor] = {}
        self._hr_bytes = 0
        self._dirty = False
        self.hits = self.misses = 0
        self.loaded_from_disk = False
        if key is not None and self.path.is_file():
            try:
                obj = torch.load(self.path, map_location="cpu", weights_only=True)
                if obj.get("key") == key:
                    self.feats = {int(j): f for j, f in zip(obj["crops"].tolist(), obj["feats"])}
                    self.loaded_from_disk = True
                    os.utime(self.path)  # least-recently-used bookkeeping
            except Exception as e:  # noqa: BLE001 - a damaged cache file is recomputed, not fatal
                logger.warning("feature cache %s unreadable (%s); recomputing", self.path, e)

    @property
    def path(self) -> Path:
        return self.root / f"{self.key}.pt"

    def _backbone_feats(self, crops: list[int], image: torch.Tensor) -> torch.Tensor:
        missing = [i for i, j in enumerate(crops) if j not in self.feats]
        if missing:
            with torch.no_grad():
                out = self.model.backbone(image[missing]).float().cpu()
            for i, f in zip(missing, out):
                self.feats[crops[i]] = f.clone()
            self._dirty = True
        self.misses += len(missing)
        self.hits += len(crops) - len(missing)
        return torch.stack([self.feats[j] for j in crops]).to(image.device)

    def _upsampled(self, crops: list[int], image: torch.Tensor, feats: torch.Tensor
                   ) -> torch.Tensor:
        out = []
        for i, j in enumerate(crops):
            hr = self.hr.get(j)
            if hr is None:
                with torch.no_grad():
                    hr = self.model._upsample(feats[i:i + 1], image[i:i + 1])[0]
                size = hr.numel() * 2
                if self._hr_bytes + size <= self.max_memory_bytes:
                    hr = hr.to(torch.bfloat16)
                    self.hr[j] = hr
                    self._hr_bytes += size
            out.append(hr.to(image.device, torch.float32))
        return torch.stack(out)

    def get(self, crops: list[int] | torch.Tensor, image: torch.Tensor) -> dict[str, Any]:
        """The ``encode_image`` dict of a batch of bank crops (``crops`` ids, ``image``
        (B, 3, S, S) RGB in [0, 1] of those crops), from the cache where possible."""
        crops = [int(j) for j in crops]
        if len(crops) != image.shape[0]:
            raise ValueError(f"{len(crops)} crop ids for a batch of {image.shape[0]} images")
        if min(crops) < 0:
            raise ValueError("crop ids must be >= 0 (the training set has no crop bank)")
        cache: dict[str, Any] = {"image": image, "injection": self.model.injection}
        feats = self._backbone_feats(crops, image)
        cache["feats"] = feats
        if self.model.injection == "late_highres":
            cache["hr"] = self._upsampled(crops, image, feats)
        return cache

    def save(self) -> Path | None:
        """Write the backbone features to disk (atomically) if new ones were computed, then
        trim the folder to ``max_disk_bytes``. Returns the file written, if any."""
        if self.key is None or not self._dirty or not self.feats:
            return None
        crops = sorted(self.feats)
        atomic_torch_save({"key": self.key, "crops": torch.tensor(crops),
                           "feats": torch.stack([self.feats[j] for j in crops])}, self.path)
        self._dirty = False
        self._trim()
        return self.path

    def _trim(self) -> None:
        files = sorted(self.root.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        total = 0
        for f in files:
            total += f.stat().st_size
            if total > self.max_disk_bytes and f != self.path:
                f.unlink(missing_ok=True)
                logger.info("feature cache: removed %s (folder over %d bytes)", f,
                            self.max_disk_bytes)
