"""A SAM-style click predictor around a trained interactive-segmentation probe.

``ClickPredictor`` follows the ``set_image`` once / click many times pattern::

    pred = ClickPredictor.from_checkpoint(checkpoint_path("probe", "bilinear-late_highres", "small"))
    pred.set_image(photo)                 # uint8 (H, W, 3); backbone (+ upsampler) run once here
    pred.add_click(120, 200, positive=True)
    probs, mask = pred.predict()          # float32 (H, W) in [0, 1], bool (H, W)

Coordinates are ``(row, col)`` in pixels of the image given to ``set_image`` (0-based, row down,
col right, ``0 <= row < H``, ``0 <= col < W``).

Aspect ratio: the image is resized to the probe's square input (``cfg.probe.image_size``, 112 at
``small``, 224 at ``full``) **without keeping its aspect ratio**, bilinear with
``align_corners=True``, and clicks are mapped with ``r' = S * r / H`` (``c' = S * c / W``): the
``plain`` evaluation protocol of docs/evaluation.md, i.e. iSegProbe's ZoomIn with the whole
image as the region of
interest. The probabilities come back to ``(H, W)`` the same way (bilinear, ``align_corners=True``),
and the previous-mask channel of the next click is the previous full-size probability map resized to
the input again, exactly as the evaluation loop does; so the explorer shows what the ``plain``
protocol would score.

Feature reuse: ``set_image`` calls ``probe.encode_image`` once, and each ``predict`` calls
``probe.forward_cached``. For ``late_highres`` probes the cache holds backbone and upsampler
outputs, so a click only re-runs the click encoder and the head; ``late_lowres`` re-runs the
upsampler; ``early`` re-runs everything (the clicks enter the backbone).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probe_lib.metrics import check_gt_encoding
from probe_lib.utils import resize_bilinear

# Names the upsampler registry accepts as the same method (iSegProbe's configs say `jbu_featup`).
_UPSAMPLER_ALIASES = {"jbu_featup": "featup_jbu"}


def _canonical_upsampler(name: str) -> str:
    return _UPSAMPLER_ALIASES.get(str(name), str(name))


def to_rgb_float(image: Any, name: str = "image") -> np.ndarray:
    """Normalise user images to float32 (H, W, 3) RGB in [0, 1].

    Accepts a PIL image, a numpy array (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA, of dtype uint8
    (0..255), uint16 (0..65535), bool, or float in [0, 1], or a torch tensor (3, H, W) / (H, W, 3)
    float in [0, 1]. An alpha channel is dropped (the probe sees RGB only). Anything else raises a
    ``ValueError`` that says what was expected.
    """
    if image is None:
        raise ValueError(f"{name} is None; expected an RGB image array (H, W, 3)")
    if hasattr(image, "convert") and hasattr(image, "size") and not isinstance(image, np.ndarray):
        image = np.asarray(image.convert("RGB"))  # PIL: palette, LA, RGBA, CMYK all become RGB
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4) and t.shape[-1] not in (3, 4):
            t = t.permute(1, 2, 0)
        image = t.numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"{name} must be (H, W), (H, W, 3) RGB or (H, W, 4) RGBA, "
                         f"got shape {arr.shape}")
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"{name} must be at least 2x2 pixels, got {arr.shape[0]}x{arr.shape[1]}")
    arr = arr[..., :3]  # drop alpha
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float32) / 65535.0
    elif arr.dtype == bool:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise ValueError(f"{name} contains NaN or inf values")
        lo, hi = float(out.min()), float(out.max())
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise ValueError(f"float {name} must hold RGB in [0, 1], got values in [{lo:.3g}, "
                             f"{hi:.3g}] (for 0..255 data pass uint8 or divide by 255)")
        out = np.clip(out, 0.0, 1.0)
    else:
        raise ValueError(f"{name} has dtype {arr.dtype}; expected uint8, uint16, bool or float "
                         "in [0, 1]")
    return np.ascontiguousarray(out)


_resize = resize_bilinear  # one helper for the package (probe_lib.utils)


def mask_iou(mask: np.ndarray, gt: np.ndarray, ignore_label: int = -1) -> float:
    """IoU of a bool (H, W) mask against gt (H, W) with 1 = object, ``ignore_label`` = ignored.

    |m ∧ g==1| / |(m ∨ g==1)| over non-ignored pixels; 1.0 when both are empty.
    """
    mask = np.asarray(mask, dtype=bool)
    gt = np.asarray(gt)
    if mask.shape != gt.shape:
        raise ValueError(f"mask shape {mask.shape} differs from ground-truth shape {gt.shape}")
    check_gt_encoding(gt, "gt", ignore_label)
    valid = gt != ignore_label
    obj = gt == 1
    union = np.logical_and(np.logical_or(mask, obj), valid).sum()
    inter = np.logical_and(np.logical_and(mask, obj), valid).sum()
    return float(inter / union) if union > 0 else 1.0


def _probe_image_size(probe: Any, cfg: Any) -> int:
    for source in (cfg, getattr(probe, "cfg", None), getattr(probe, "config", None)):
        size = getattr(getattr(source, "probe", None), "image_size", None)
        if size:
            return int(size)
    size = getattr(probe, "image_size", None)
    if size:
        return int(size)
    raise ValueError("cannot tell the probe's input size: pass cfg (with cfg.probe.image_size) "
                     "or image_size=")


@dataclass
class PredictionRecord:
    """One ``predict`` call: how many clicks it saw, what it cost, the full-size probabilities."""

    num_clicks: int
    latency_s: float
    probs: np.ndarray = field(repr=False)


class ClickPredictor:
    """Click-by-click segmentation with a trained probe, re-using the image features between clicks.

    Args:
        probe: an ``ISProbe`` (``encode_image(image) -> cache``,
            ``forward_cached(cache, prev_mask, points) -> logits (B, 1, S, S)``).
        cfg: the probe's config (``load_probe`` returns it); gives the input side
            ``cfg.probe.image_size`` and the names shown in the UI.
        image_size: input side S when no config is at hand.
        device: where the probe runs (default: the probe's own device).
        prob_thresh: probability above which a pixel is in the mask (iSegProbe 0.5).
        name: label for the UI (default ``"<upsampler>-<injection>"`` from ``cfg``).

    Attributes after use: ``clicks`` (list of ``(row, col, positive)`` in image pixels),
    ``history`` (one :class:`PredictionRecord` per ``predict``), ``encode_latency_s`` (seconds
    spent in ``set_image``), ``last_latency_s`` (seconds of the last ``predict``).
    """

    def __init__(self, probe: torch.nn.Module, cfg: Any = None, *, image_size: int | None = None,
                 device: str | torch.device | None = None, prob_thresh: float = 0.5,
                 name: str | None = None):
        if not (hasattr(probe, "encode_image") and hasattr(probe, "forward_cached")):
            raise ValueError("probe must provide encode_image(image) and forward_cached(cache, "
                             f"prev_mask, points); got {type(probe).__name__}")
        if not 0.0 < prob_thresh < 1.0:
            raise ValueError(f"prob_thresh must be in (0, 1), got {prob_thresh}")
        self.probe = probe
        self.cfg = cfg if cfg is not None else getattr(probe, "cfg", None)
        self.image_size = int(image_size) if image_size else _probe_image_size(probe, self.cfg)
        if device is None:
            p = next(iter(probe.parameters()), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.prob_thresh = float(prob_thresh)
        self.name = name or self._default_name()
        self.probe.eval()
        self._image: np.ndarray | None = None  # float32 (H, W, 3)
        self._cache: Any = None
        self.clicks: list[tuple[float, float, bool]] = []
        self.history: list[PredictionRecord] = []
        self.encode_latency_s: float | None = None
        self.last_latency_s: float | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | Path, *, upsampler: str | None = None,
                        injection: str | None = None, device: str | torch.device = "cpu",
                        prob_thresh: float = 0.5, name: str | None = None) -> ClickPredictor:
        """Load a probe checkpoint (``probe_lib.model.load_probe``) and wrap it.

        ``upsampler`` / ``injection``, when given, must match the checkpoint's config; a mismatch
        raises a ``ValueError`` naming both (e.g. a LoftUp probe chosen as "bilinear").
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"probe checkpoint {path} not found; train one with notebooks/"
                "09_is_probe_training.ipynb or `python -m probe_lib.sweep --preset small`, or let "
                "notebooks/12_click_explorer.ipynb train a tiny one")
        from probe_lib.model import load_probe

        try:
            probe, cfg = load_probe(path, device=device)
        except (FileNotFoundError, ValueError):
            raise
        except Exception as exc:  # corrupt file, foreign pickle, missing keys ...
            raise ValueError(f"{path} is not a loadable probe checkpoint "
                             f"({type(exc).__name__}: {exc})") from exc
        found_up = _canonical_upsampler(cfg.upsampler.name)
        if upsampler is not None and _canonical_upsampler(upsampler) != found_up:
            raise ValueError(f"checkpoint {path.name} was trained with upsampler {found_up!r}, "
                             f"not the chosen {upsampler!r}; pick the matching checkpoint "
                             f"(probe/{upsampler}-<injection>-<preset>.pt)")
        if injection is not None and injection != cfg.probe.injection:
            raise ValueError(f"checkpoint {path.name} uses injection {cfg.probe.injection!r}, "
                             f"not the chosen {injection!r}")
        return cls(probe, cfg, device=device, prob_thresh=prob_thresh, name=name)

    def _default_name(self) -> str:
        try:
            return f"{self.cfg.upsampler.name}-{self.cfg.probe.injection}"
        except AttributeError:
            return type(self.probe).__name__

    @property
    def injection(self) -> str | None:
        return getattr(getattr(self.cfg, "probe", None), "injection", None)

    # ------------------------------------------------------------------ image
    @property
    def image_shape(self) -> tuple[int, int] | None:
        """(H, W) of the current image, None before ``set_image``."""
        return None if self._image is None else self._image.shape[:2]

    @property
    def image(self) -> np.ndarray | None:
        """The current image, float32 (H, W, 3) RGB in [0, 1] (alpha dropped)."""
        return self._image

    @torch.no_grad()
    def set_image(self, image: Any) -> None:
        """Set the image and compute its click-independent features once; clears all clicks.

        Args:
            image: uint8 (H, W, 3) RGB, (H, W, 4) RGBA (alpha dropped), (H, W) grey, float in
                [0, 1], a PIL image or a (3, H, W) tensor; any size >= 2x2 (resized to S x S).
        """
        img = to_rgb_float(image)
        t0 = time.perf_counter()
        x = torch.from_numpy(img).permute(2, 0, 1)[None].to(self.device)
        x = _resize(x, (self.image_size, self.image_size)).clamp_(0.0, 1.0)
        self._cache = self.probe.encode_image(x)
        self.encode_latency_s = time.perf_counter() - t0
        self._image = img
        self._net_image = x
        self.reset()

    # ------------------------------------------------------------------ clicks
    def _require_image(self) -> tuple[int, int]:
        if self._image is None:
            raise RuntimeError("no image set: call set_image(image) before clicking")
        return self._image.shape[:2]

    def add_click(self, row: float, col: float, positive: bool = True) -> None:
        """Record a click at image pixel ``(row, col)``; ``positive`` = on the object.

        Raises ``ValueError`` when the click lies outside the image (``0 <= row < H``,
        ``0 <= col < W``) and ``RuntimeError`` before ``set_image``.
        """
        h, w = self._require_image()
        try:
            r, c = float(row), float(col)
        except (TypeError, ValueError):
            raise ValueError(f"click coordinates must be numbers, got row={row!r}, "
                             f"col={col!r}") from None
        if not (np.isfinite(r) and np.isfinite(c)) or not (0 <= r < h and 0 <= c < w):
            raise ValueError(f"click (row={row}, col={col}) is outside the image: rows must be in "
                             f"[0, {h}) and cols in [0, {w}) for this {h}x{w} image")
        self.clicks.append((r, c, bool(positive)))

    def undo(self) -> tuple[float, float, bool] | None:
        """Remove the last click and the predictions that used it.

        Returns the removed ``(row, col, positive)``, or ``None`` when there was no click to undo
        (not an error: the UI shows a message).
        """
        if not self.clicks:
            return None
        removed = self.clicks.pop()
        self.history = [h for h in self.history if h.num_clicks <= len(self.clicks)]
        return removed

    def reset(self) -> None:
        """Forget all clicks and predictions (the image and its features stay)."""
        self.clicks = []
        self.history = []
        self.last_latency_s = None

    # ------------------------------------------------------------------ prediction
    def _points(self) -> torch.Tensor:
        from probe_lib.clicks import clicks_to_tensor

        h, w = self.image_shape
        s = self.image_size
        # ZoomIn's click mapping with the whole image as ROI: r' = S * r / H (fractional pixels).
        mapped = [(s * r / h, s * c / w, p) for r, c, p in self.clicks]
        return clicks_to_tensor(mapped).to(self.device, torch.float32)

    def _prev_probs(self) -> np.ndarray | None:
        n = len(self.clicks)
        earlier = [h for h in self.history if h.num_clicks < n]
        return earlier[-1].probs if earlier else None

    @torch.no_grad()
    def predict(self) -> tuple[np.ndarray, np.ndarray]:
        """Segment the current image with the current clicks.

        Returns ``(probs, mask)``: probabilities float32 (H, W) in [0, 1] and ``probs >
        prob_thresh`` bool (H, W), at the resolution of the image given to ``set_image``. With no
        clicks both are all zero (nothing is run). The previous-mask input is the prediction made
        with the largest number of clicks below the current one (zeros at the first click).
        """
        h, w = self._require_image()
        if not self.clicks:
            zeros = np.zeros((h, w), np.float32)
            return zeros, zeros.astype(bool)
        s = self.image_size
        t0 = time.perf_counter()
        prev = self._prev_probs()
        if prev is None:
            prev_t = torch.zeros(1, 1, s, s, device=self.device)
        else:
            prev_t = _resize(torch.from_numpy(prev)[None, None].to(self.device), (s, s))
        logits = self.probe.forward_cached(self._cache, prev_t, self._points())
        if logits.ndim != 4 or logits.shape[:2] != (1, 1):
            raise ValueError(f"probe returned logits of shape {tuple(logits.shape)}, "
                             "expected (1, 1, S, S)")
        probs_t = torch.sigmoid(_resize(logits.float(), (h, w)))[0, 0]
        probs = probs_t.cpu().numpy().astype(np.float32)
        self.last_latency_s = time.perf_counter() - t0
        n = len(self.clicks)
        self.history = [r for r in self.history if r.num_clicks != n]
        self.history.append(PredictionRecord(n, self.last_latency_s, probs))
        return probs, probs > self.prob_thresh

    @property
    def latencies_s(self) -> list[float]:
        """Seconds per ``predict`` call since the last reset, oldest first."""
        return [r.latency_s for r in self.history]


def ensure_probe_checkpoint(cfg: Any, upsampler: str, injection: str = "late_highres", *,
                            num_images: int = 32, epochs: int = 2,
                            progress: bool = True) -> tuple[Path, bool]:
    """Path of a probe checkpoint for ``upsampler``/``injection`` at ``cfg.preset``.

    Uses ``checkpoint_path("probe", f"{upsampler}-{injection}", preset)`` (written by notebook 09
    and the small sweep) when it exists. Otherwise trains a *tiny* stand-in with
    ``probe_lib.train.train_probe`` (``num_images`` x ``epochs``, the preset's recipe otherwise,
    the paper's click encoder for the injection) under a separate name, ``<upsampler>-<injection>-tiny``, so it
    never masquerades as, or collides with, the sweep's probe; a banner says so.

    Returns ``(path, trained_here)``; ``trained_here`` is True for the tiny stand-in.
    """
    from probe_lib.config import Config
    from probe_lib.utils import banner, checkpoint_path

    path = checkpoint_path("probe", f"{upsampler}-{injection}", cfg.preset)
    if path.is_file():
        return path, False
    tiny = checkpoint_path("probe", f"{upsampler}-{injection}-tiny", cfg.preset)
    if not tiny.is_file():
        banner(f"No trained probe at {path.name}: training a TINY stand-in ({num_images} images x "
               f"{epochs} epochs)\nfor the click explorer -> {tiny.name}. Its masks are rough; run "
               "`make small` (or notebook 09)\nfor the real small probes.")
        d = cfg.to_dict()
        d["upsampler"]["name"] = upsampler
        d["probe"]["injection"] = injection
        # the paper's pairings: SimpleViT for late injection, patch embedding for early
        d["probe"]["click_encoder"] = "simple_vit" if injection.startswith("late") else \
            "patch_embed"
        # one bank crop per image (if the preset uses a bank): as many steps as without one
        d["train"].update(num_images=int(num_images), epochs=int(epochs),
                          lr_milestones=[int(epochs)], val_samples=min(8, d["train"]["val_samples"]),
                          crop_bank=int(num_images) if d["train"].get("crop_bank") else 0)
        from probe_lib.train import train_probe

        train_probe(Config.from_dict(d), out_path=tiny, progress=progress)
    return tiny, True
