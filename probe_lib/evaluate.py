"""NoC evaluation of interactive-segmentation probes, as iSegProbe runs it (docs/evaluation.md).

Per instance, clicks 1..K: the evaluation clicker (``probe_lib.clicks.next_click``) looks
at the current full-resolution mask, the probe predicts, the probability map is thresholded and the
IoU against the ground truth is recorded. Two protocols:

- ``isegprobe_fixed224``: iSegProbe's ``ZoomIn`` (``core/inference/transforms/zoom_in.py``;
  from the second click the network sees an
  expanded box around the current prediction, squashed to ``target_size`` x ``target_size`` —
  aspect ratio not kept) plus optional horizontal-flip averaging of the logits. With
  ``target_size=224`` and flip on this reproduces iSegProbe.
- ``plain``: the whole image squashed to ``target_size`` for every click (flip optional).

Feature reuse: the network input only changes when the zoom region changes, so the evaluator calls
``model.encode_image`` once per (image, region) and ``model.forward_cached`` once per click. What
the cache holds is the model's business (``early``: the image only; ``late_lowres``: backbone
features; ``late_highres``: backbone + upsampler features), which is where the speed-up comes from.
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probe_lib.clicks import clicks_to_tensor, next_click  # the clicker lives there
from probe_lib.metrics import check_gt_encoding, summarize
from probe_lib.metrics import iou as mask_iou
from probe_lib.utils import resize_bilinear

PROTOCOLS = ("isegprobe_fixed224", "plain")

Click = tuple[int, int, bool]  # (row, col, is_positive) in original-image pixels
Roi = tuple[int, int, int, int]  # (rmin, rmax, cmin, cmax), inclusive


# ----------------------------------------------------------------------------------------------
# ZoomIn geometry (iSegProbe `core/inference/transforms/zoom_in.py`)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZoomInParams:
    """ZoomIn parameters; the defaults are iSegProbe's ``fixed224`` mode.

    ``min_crop_size`` is in original-image pixels, so it does not change with ``target_size``.
    """

    target_size: int = 224
    expansion_ratio: float = 1.4
    min_crop_size: int = 200
    recompute_thresh_iou: float = 0.5
    prob_thresh: float = 0.5


def bbox_from_mask(mask: np.ndarray) -> Roi:
    """Tight inclusive box ``(rmin, rmax, cmin, cmax)`` of a non-empty bool mask (H, W)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("bbox_from_mask: the mask is empty")
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


def expand_bbox(bbox: Roi, expansion_ratio: float, min_crop_size: float) -> Roi:
    """Grow a box about its centre to ``max(ratio * extent, min_crop_size)`` per axis.

    Extents are inclusive lengths; the new bounds use Python's ``round`` (half to even), as the
    reference does — e.g. a bound of 10.5 becomes 10, 11.5 becomes 12.
    """
    rmin, rmax, cmin, cmax = bbox
    rc, cc = 0.5 * (rmin + rmax), 0.5 * (cmin + cmax)
    h = max(expansion_ratio * (rmax - rmin + 1), min_crop_size)
    w = max(expansion_ratio * (cmax - cmin + 1), min_crop_size)
    # round() of a Python float is an int, half to even
    return (round(rc - 0.5 * h), round(rc + 0.5 * h), round(cc - 0.5 * w), round(cc + 0.5 * w))


def clamp_bbox(bbox: Roi, height: int, width: int) -> Roi:
    """Clamp an inclusive box to the image ``[0, height-1] x [0, width-1]``."""
    rmin, rmax, cmin, cmax = bbox
    return max(rmin, 0), min(rmax, height - 1), max(cmin, 0), min(cmax, width - 1)


def _segment_iou(a0: int, a1: int, b0: int, b1: int) -> float:
    inter = max(0, min(a1, b1) - max(a0, b0) + 1)
    union = max(a1, b1) - min(a0, b0) + 1
    return inter / union


def bbox_iou(a: Roi, b: Roi) -> float:
    """Box IoU as the reference computes it: row-interval IoU x column-interval IoU (inclusive)."""
    return _segment_iou(a[0], a[1], b[0], b[1]) * _segment_iou(a[2], a[3], b[2], b[3])


def positive_clicks_inside(roi: Roi, clicks: Sequence[Click]) -> bool:
    """False when a positive click lies outside ``roi`` (upper bounds exclusive, as the reference)."""
    rmin, rmax, cmin, cmax = roi
    for r, c, pos in clicks:
        if pos and (r < rmin or r >= rmax or c < cmin or c >= cmax):
            return False
    return True


def candidate_roi(prev_probs: np.ndarray, clicks: Sequence[Click], params: ZoomInParams) -> Roi:
    """The zoom box a prediction would like: around ``prev_probs > thresh`` + positive clicks.

    Falls back to the full image when the previous prediction is empty.
    """
    h, w = prev_probs.shape
    mask = prev_probs > params.prob_thresh
    if not mask.any():
        return 0, h - 1, 0, w - 1
    mask = mask.copy()
    for r, c, pos in clicks:
        if pos:
            mask[int(r), int(c)] = True
    box = expand_bbox(bbox_from_mask(mask), params.expansion_ratio, params.min_crop_size)
    return clamp_bbox(box, h, w)


class ZoomIn:
    """Stateful ZoomIn of one instance's click sequence (steps 1-3 in ``docs/evaluation.md``).

    ``roi_for(prev_probs, clicks)`` returns the region the next prediction uses. Before the first
    prediction (``prev_probs is None``) the candidate is the whole image, and — as in iSegProbe's
    ``core/inference/transforms/zoom_in.py`` with ``skip_clicks=-1`` — the whole image then becomes
    the *remembered* region. So at click 2 the candidate box is compared with the whole image: it
    only replaces it when a positive click lies outside (upper bounds exclusive, so a click on the
    last row or column counts as outside) or the box IoU drops below ``recompute_thresh_iou``. A
    large object therefore keeps the full view.
    """

    def __init__(self, params: ZoomInParams, image_shape: tuple[int, int]):
        self.params = params
        self.height, self.width = int(image_shape[0]), int(image_shape[1])
        self.roi: Roi | None = None

    def roi_for(self, prev_probs: np.ndarray | None, clicks: Sequence[Click]) -> Roi:
        if prev_probs is None:
            cand = (0, self.height - 1, 0, self.width - 1)
        else:
            cand = candidate_roi(prev_probs, clicks, self.params)
        if (self.roi is None or not positive_clicks_inside(self.roi, clicks)
                or bbox_iou(cand, self.roi) < self.params.recompute_thresh_iou):
            self.roi = cand
        return self.roi


# ----------------------------------------------------------------------------------------------
# One prediction
# ----------------------------------------------------------------------------------------------
class Predictor:
    """Adapter over a probe or a plain callable, with the encode-once / predict-per-click split.

    ``model`` is either an object with ``encode_image(image) -> cache`` and
    ``forward_cached(cache, prev_mask, points) -> logits`` (an ``ISProbe``), or a callable
    ``model(image (B,3,S,S), prev_mask (B,1,S,S), points (B,2N,3)) -> logits (B,1,S,S)``
    (tests use one). ``reuse_features=False`` re-encodes at every click (for benchmarking).
    """

    def __init__(self, model: Any, reuse_features: bool = True):
        self.model = model
        self.reuse_features = reuse_features
        self.has_cache_api = hasattr(model, "encode_image") and hasattr(model, "forward_cached")
        if not self.has_cache_api and not callable(model):
            raise ValueError("model must be an ISProbe (encode_image/forward_cached) or a callable "
                             "(image, prev_mask, points) -> logits")
        self.num_encodes = 0
        self._key = None
        self._cache = None

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except (AttributeError, StopIteration):
            return torch.device("cpu")

    def reset(self) -> None:
        self._key, self._cache = None, None

    def encode(self, key: Any, image: torch.Tensor):
        if self.reuse_features and key is not None and key == self._key:
            return self._cache
        self.num_encodes += 1
        cache = self.model.encode_image(image) if self.has_cache_api else image
        self._key, self._cache = key, cache
        return cache

    def logits(self, cache, prev_mask: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        if self.has_cache_api:
            return self.model.forward_cached(cache, prev_mask, points)
        return self.model(cache, prev_mask, points)


_resize = resize_bilinear  # one helper for the package (probe_lib.utils)


@torch.no_grad()
def predict_probs(predictor: Predictor, image: torch.Tensor, prev_probs: np.ndarray,
                  clicks: Sequence[Click], roi: Roi, target_size: int, flip: bool,
                  image_key: Any = None) -> np.ndarray:
    """One ZoomIn prediction (crop, resize, flip TTA, paste back); returns
    full-resolution probabilities (H, W).

    Args:
        image: (1, 3, H, W) float RGB in [0, 1] on the predictor's device.
        prev_probs: (H, W) float32 previous probabilities (zeros before the first prediction).
        clicks: all clicks so far, (row, col, is_positive) in original pixels.
        roi: inclusive region (rmin, rmax, cmin, cmax) fed to the network.
        image_key: identifies the image for feature reuse (None disables reuse).
    """
    rmin, rmax, cmin, cmax = roi
    rh, rw = rmax - rmin + 1, cmax - cmin + 1
    t = int(target_size)
    dev = image.device
    prev = torch.from_numpy(np.ascontiguousarray(prev_probs, dtype=np.float32)).to(dev)[None, None]
    img = _resize(image[:, :, rmin:rmax + 1, cmin:cmax + 1], (t, t))
    prev = _resize(prev[:, :, rmin:rmax + 1, cmin:cmax + 1], (t, t))
    tclicks = [(t * (r - rmin) / rh, t * (c - cmin) / rw, p) for r, c, p in clicks]
    points = clicks_to_tensor(tclicks).to(dev)  # fractional coordinates kept, as RITM does
    if flip:
        img = torch.cat([img, img.flip(-1)])
        prev = torch.cat([prev, prev.flip(-1)])
        fpoints = points.clone()
        valid = fpoints[..., :2].amax(-1) >= 0
        fpoints[..., 1] = torch.where(valid, (t - 1) - fpoints[..., 1], fpoints[..., 1])
        points = torch.cat([points, fpoints])
    cache = predictor.encode((image_key, roi, t, flip) if image_key is not None else None, img)
    logits = predictor.logits(cache, prev, points)
    if logits.ndim != 4 or logits.shape[0] != img.shape[0] or logits.shape[1] != 1:
        raise ValueError(f"the model must return logits (B, 1, S, S), got {tuple(logits.shape)}")
    logits = _resize(logits.float(), (t, t))
    if flip:  # average logits, not probabilities
        logits = 0.5 * (logits[:1] + logits[1:].flip(-1))
    # sigmoid first, then resize the probabilities to the region: the reference's inverse
    # transforms run flip -> sigmoid -> zoom-out, and resizing logits instead moves the 0.5 contour
    probs = _resize(torch.sigmoid(logits), (rh, rw))[0, 0].cpu().numpy()
    out = np.zeros_like(prev_probs, dtype=np.float32)
    out[rmin:rmax + 1, cmin:cmax + 1] = probs
    return out


# ----------------------------------------------------------------------------------------------
# The click loop
# ----------------------------------------------------------------------------------------------
@dataclass
class EvalResult:
    """Per-instance results of one (model, dataset, protocol) evaluation.

    ``ious``: float32 (N, K) IoU after each click; ``clicks``: per instance, the K clicks
    ``(row, col, is_positive)``; ``seconds_per_click``: wall time of prediction per click
    (clicker and IoU excluded); ``num_encodes``: how many times features were computed.
    """

    dataset: str
    protocol: str
    ious: np.ndarray
    names: list[str]
    clicks: list[list[Click]]
    seconds_per_click: float
    num_encodes: int
    num_clicks: int
    skipped: int = 0
    settings: dict = field(default_factory=dict)
    # the frozen upsampler's precision (ISProbe.precision_choice), e.g. bf16 by self-benchmark
    upsampler_precision: dict | None = None

    def metrics(self, n_boot: int = 1000, seed: int = 0) -> dict:
        """iSegProbe's metrics (see :func:`probe_lib.metrics.summarize`)."""
        return summarize(self.ious, max_clicks=self.ious.shape[1],
                         seconds_per_click=self.seconds_per_click, n_boot=n_boot, seed=seed)


def _check_eval_settings(max_clicks: int, prob_thresh: float, target_size: int) -> None:
    if isinstance(max_clicks, bool) or not isinstance(max_clicks, (int, np.integer)) \
            or max_clicks < 1:
        raise ValueError(f"max_clicks must be an int >= 1, got {max_clicks!r}")
    if not isinstance(prob_thresh, (int, float)) or not 0.0 < float(prob_thresh) < 1.0:
        raise ValueError(f"prob_thresh must be a probability in (0, 1) (0.5, not 50), got "
                         f"{prob_thresh!r}")
    if isinstance(target_size, bool) or not isinstance(target_size, (int, np.integer)) \
            or target_size < 1:
        raise ValueError(f"target_size must be an int >= 1, got {target_size!r}")


def evaluate_instance(predictor: Predictor, image: np.ndarray, gt: np.ndarray, *,
                      protocol: str = "isegprobe_fixed224", max_clicks: int = 20,
                      prob_thresh: float = 0.5, flip: bool = True, target_size: int = 224,
                      zoom: ZoomInParams | None = None, clicker: Callable | None = None,
                      image_key: Any = None, trace: list | None = None
                      ) -> tuple[np.ndarray, list[Click], float]:
    """Run the click loop on one instance.

    Args:
        image: uint8 (H, W, 3) RGB.
        gt: int (H, W), 1 object / 0 background / -1 ignore.
        image_key: hashable id of the image, enables feature reuse across its instances.
        trace: optional list; one dict per click is appended with ``probs`` (H, W) float32 and
            the ``roi`` the network saw (for figures).

    Returns:
        (float32 IoUs (max_clicks,), clicks, seconds spent predicting).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    _check_eval_settings(max_clicks, prob_thresh, target_size)
    clicker = clicker or next_click
    zoom = zoom or ZoomInParams(target_size=target_size)
    gt = np.asarray(gt)
    if gt.ndim != 2:
        raise ValueError(f"gt must be a 2-D (H, W) array, got shape {gt.shape}")
    check_gt_encoding(gt, "gt")
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3) RGB in 0..255, got {image.dtype} "
                         f"{image.shape}")
    h, w = gt.shape
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape[:2]} and gt {gt.shape} sizes differ")
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    img = img.to(predictor.device)
    zoomer = ZoomIn(zoom, (h, w))
    prev_probs: np.ndarray | None = None
    pred = np.zeros((h, w), dtype=bool)
    not_clicked = np.ones((h, w), dtype=bool)
    clicks: list[Click] = []
    ious = np.zeros(max_clicks, dtype=np.float32)
    spent = 0.0
    for k in range(max_clicks):
        is_pos, (r, c) = clicker(gt, pred, not_clicked=not_clicked)
        not_clicked[r, c] = False
        clicks.append((int(r), int(c), bool(is_pos)))
        if protocol == "plain":
            roi = (0, h - 1, 0, w - 1)
        else:
            roi = zoomer.roi_for(prev_probs, clicks)
        t0 = time.perf_counter()
        probs = predict_probs(predictor, img,
                              np.zeros((h, w), np.float32) if prev_probs is None else prev_probs,
                              clicks, roi, target_size, flip, image_key=image_key)
        spent += time.perf_counter() - t0
        prev_probs = probs
        pred = probs > prob_thresh
        ious[k] = np.float32(mask_iou(gt, pred))
        if trace is not None:
            trace.append({"probs": probs, "roi": roi, "iou": float(ious[k])})
    return ious, clicks, spent


def evaluate_dataset(model: Any, dataset: Any, *, protocol: str = "isegprobe_fixed224",
                     max_clicks: int = 20, prob_thresh: float = 0.5, flip: bool = True,
                     target_size: int = 224, zoom: ZoomInParams | None = None,
                     num_instances: int | None = None, reuse_features: bool = True,
                     clicker: Callable | None = None, dataset_name: str | None = None,
                     progress: bool = True) -> EvalResult:
    """Evaluate ``model`` on every instance of ``dataset`` (or the first ``num_instances``).

    ``dataset`` needs ``instances()`` and ``get_instance(k) -> (image uint8 (H,W,3), gt int8
    (H,W) 1/0/-1, name)`` (``probe_lib.data.is_datasets``). Instances without object pixels are
    skipped and counted. Raises a ValueError when there is nothing to evaluate.
    """
    from tqdm.auto import tqdm

    name = dataset_name or getattr(dataset, "name", type(dataset).__name__)
    _check_eval_settings(max_clicks, prob_thresh, target_size)
    if num_instances is not None and (isinstance(num_instances, bool)
                                      or not isinstance(num_instances, (int, np.integer))
                                      or num_instances < 1):
        raise ValueError(f"num_instances must be an int >= 1 or None (= every instance), got "
                         f"{num_instances!r}")
    instances = list(dataset.instances())
    n = len(instances) if num_instances is None else min(int(num_instances), len(instances))
    if n == 0:
        raise ValueError(f"dataset {name!r} has zero instances to evaluate (check its root folder "
                         f"and split; an empty dataset gives no NoC)")
    predictor = model if isinstance(model, Predictor) else Predictor(model, reuse_features)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    all_ious, names, all_clicks, spent, skipped = [], [], [], 0.0, 0
    try:
        for k in tqdm(range(n), desc=f"NoC {name}", disable=not progress):
            image, gt, inst_name = dataset.get_instance(k)
            gt = np.asarray(gt)
            # before the empty check: a 0/255 mask would otherwise be skipped as "empty"
            check_gt_encoding(gt, f"dataset {name!r} instance {k} ({inst_name}): gt")
            if not (gt == 1).any():
                skipped += 1
                continue
            sample = instances[k][0] if isinstance(instances[k], (tuple, list)) else k
            ious, clicks, t = evaluate_instance(
                predictor, np.asarray(image), gt, protocol=protocol, max_clicks=max_clicks,
                prob_thresh=prob_thresh, flip=flip, target_size=target_size, zoom=zoom,
                clicker=clicker, image_key=(name, sample))
            all_ious.append(ious)
            names.append(str(inst_name))
            all_clicks.append(clicks)
            spent += t
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    if skipped:
        warnings.warn(f"{name}: skipped {skipped} instance(s) without object pixels", stacklevel=2)
    if not all_ious:
        raise ValueError(f"dataset {name!r}: every instance was empty; nothing to evaluate")
    num_clicks = len(all_ious) * max_clicks
    settings = {"protocol": protocol, "max_clicks": max_clicks, "prob_thresh": prob_thresh,
                "flip": flip, "target_size": target_size,
                "zoom": vars(zoom) if zoom else vars(ZoomInParams(target_size=target_size)),
                "reuse_features": reuse_features}
    return EvalResult(dataset=name, protocol=protocol, ious=np.stack(all_ious), names=names,
                      clicks=all_clicks, seconds_per_click=spent / num_clicks,
                      num_encodes=predictor.num_encodes, num_clicks=num_clicks, skipped=skipped,
                      settings=settings, upsampler_precision=_precision_used(predictor.model))


def _precision_used(model: Any) -> dict | None:
    choice = getattr(model, "precision_choice", None)
    return choice.to_dict() if choice is not None else None


def evaluate_config(model: Any, cfg, dataset: Any, dataset_name: str | None = None,
                    **kwargs) -> EvalResult:
    """:func:`evaluate_dataset` with the protocol settings of ``cfg.eval``."""
    e = cfg.eval
    opts = {"protocol": e.protocol, "max_clicks": e.max_clicks, "prob_thresh": e.prob_thresh,
            "flip": e.flip, "target_size": e.target_size, "num_instances": e.num_instances,
            "zoom": ZoomInParams(target_size=e.target_size, min_crop_size=e.zoom_min_crop)}
    opts.update(kwargs)
    return evaluate_dataset(model, dataset, dataset_name=dataset_name, **opts)


# ----------------------------------------------------------------------------------------------
# Checks and saving
# ----------------------------------------------------------------------------------------------
def check_probe_matches_config(probe_cfg, cfg, checkpoint: str | Path = "checkpoint") -> None:
    """Raise a ValueError when a probe checkpoint was trained with another backbone, upsampler,
    click encoder or injection than ``cfg`` names (configs are ``Config`` objects or dicts)."""
    a = probe_cfg.to_dict() if hasattr(probe_cfg, "to_dict") else dict(probe_cfg)
    b = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    problems = []
    for sec, key in (("backbone", "name"), ("upsampler", "name"), ("probe", "click_encoder"),
                     ("probe", "injection")):
        va, vb = a.get(sec, {}).get(key), b.get(sec, {}).get(key)
        if sec == "upsampler" and {va, vb} == {"jbu_featup", "featup_jbu"}:
            continue
        if va != vb:
            problems.append(f"{sec}.{key}: checkpoint has {va!r}, config asks for {vb!r}")
    if problems:
        raise ValueError(f"{checkpoint} does not match the configuration: " + "; ".join(problems)
                         + ". Train a probe for this configuration (notebook 09) or change the "
                         "parameters.")


def weights_meta(probe: Any, checkpoint: str | Path | None = None) -> dict:
    """Which weights a probe runs on, for the results files: backbone and upsampler weights ids
    and whether the upsampler weights are random (never to be presented as trained)."""
    up_id = str(getattr(getattr(probe, "upsampler", None), "weights_id", "?"))
    learned = bool(getattr(getattr(probe, "upsampler", None), "learned", False))
    return {"backbone_weights": str(getattr(getattr(probe, "backbone", None), "weights_id", "?")),
            "upsampler_weights": up_id,
            "upsampler_random": learned and up_id.lower().startswith("random"),
            "probe_checkpoint": Path(checkpoint).name if checkpoint else None}


def config_hash(d: dict) -> str:
    """Short stable hash of a JSON-serialisable dict (used to tell runs apart)."""
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def save_result(result: EvalResult, out_dir: str | Path, cfg=None, meta: dict | None = None,
                n_boot: int = 1000, overwrite: bool = False) -> dict:
    """Write ``<out_dir>/<dataset>_ious.npz`` and ``<dataset>_metrics.json`` atomically.

    The JSON holds the metrics, the evaluation settings, the run config and ``meta`` (e.g. the
    backbone/upsampler weights ids). Returns the JSON dict. Results of the same configuration are
    replaced; results of another configuration in the same folder raise a ValueError unless
    ``overwrite=True`` (an older run is never overwritten silently).
    """
    from probe_lib.utils import atomic_write_bytes, atomic_write_json, environment_info

    out_dir = Path(out_dir)
    new_cfg = cfg.to_dict() if cfg is not None else None
    old_path = out_dir / f"{result.dataset}_metrics.json"
    if old_path.is_file() and not overwrite:
        try:
            old = json.loads(old_path.read_text())
        except json.JSONDecodeError:
            old = {}
        if (old.get("config") != new_cfg or old.get("settings", result.settings)
                != json.loads(json.dumps(result.settings))):
            raise ValueError(
                f"{old_path} holds results of another configuration (config hash "
                f"{config_hash(old.get('config') or {})} vs {config_hash(new_cfg or {})}); "
                "choose another output folder, delete it, or pass overwrite=True")
    import io

    buf = io.BytesIO()
    np.savez(buf, ious=result.ious, names=np.array(result.names),
             clicks=np.array([[list(map(int, c)) for c in cl] for cl in result.clicks],
                             dtype=np.int32))
    atomic_write_bytes(buf.getvalue(), out_dir / f"{result.dataset}_ious.npz")
    doc = {"dataset": result.dataset, "protocol": result.protocol,
           "metrics": result.metrics(n_boot=n_boot), "settings": result.settings,
           "num_encodes": result.num_encodes, "num_clicks": result.num_clicks,
           "skipped": result.skipped, "upsampler_precision": result.upsampler_precision,
           "config": cfg.to_dict() if cfg is not None else None,
           "meta": meta or {}, "environment": environment_info()}
    atomic_write_json(doc, out_dir / f"{result.dataset}_metrics.json")
    return doc


def load_ious(path: str | Path) -> np.ndarray:
    """Per-instance IoU curves (N, K) float32 from a ``*_ious.npz`` written by :func:`save_result`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no IoU file at {path}")
    with np.load(path) as z:
        return z["ious"].astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    """``python -m probe_lib.evaluate CHECKPOINT [--datasets ...] [--out DIR]``: NoC evaluation
    of a trained probe, writing ``<dataset>_metrics.json`` / ``_ious.npz`` like notebook 10."""
    import argparse

    from probe_lib.cli import add_config_args, parse_overrides
    from probe_lib.config import Config
    from probe_lib.data.is_datasets import get_dataset
    from probe_lib.data.synthetic import ensure_synthetic
    from probe_lib.model import load_probe
    from probe_lib.utils import get_device, run_dir

    p = argparse.ArgumentParser(
        prog="python -m probe_lib.evaluate", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="NoC evaluation of a probe checkpoint, as notebook 10 does it.\n\n"
                    "The probe's own config (stored in the checkpoint) is used; the options below "
                    "and --set override its eval settings.\nResults go to --out (default: the run "
                    "folder under $PROBE_LIB_RESULTS that notebook 11 and the sweep read).")
    p.add_argument("checkpoint", help="probe checkpoint (.pt) from probe_lib.train / notebook 09")
    p.add_argument("--datasets", nargs="+", default=None,
                   help="e.g. GrabCut Berkeley DAVIS SBD synthetic (default: the config's)")
    p.add_argument("--protocol", choices=PROTOCOLS, default=None)
    p.add_argument("--num-instances", type=int, default=None, help="per dataset (default: all)")
    p.add_argument("--max-clicks", type=int, default=None, help="clicks per instance")
    add_config_args(p, preset=False)
    p.add_argument("--out", default=None, help="results folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace results of another configuration in --out")
    p.add_argument("--device", default=None, help="torch device (default: cuda, mps, cpu)")
    a = p.parse_args(argv)
    ckpt = Path(a.checkpoint)
    if not ckpt.is_file():
        p.error(f"checkpoint {ckpt} does not exist (expected a .pt written by probe_lib.train)")
    overrides = {f"eval__{k}": v for k, v in {
        "datasets": a.datasets, "protocol": a.protocol, "num_instances": a.num_instances,
        "max_clicks": a.max_clicks}.items() if v is not None}
    overrides.update(parse_overrides(p, a.overrides))
    probe, probe_cfg = load_probe(ckpt, device=get_device(a.device))
    d = probe_cfg.to_dict()
    for key, value in overrides.items():  # section__field (eval__ for the options above)
        sec, _, name = key.rpartition("__")
        if not sec:  # a bare field name must belong to exactly one section
            owners = [s for s, v in d.items() if isinstance(v, dict) and name in v]
            sec = owners[0] if len(owners) == 1 else ""
        if sec not in d or not isinstance(d[sec], dict) or name not in d[sec]:
            p.error(f"--set {key}: expected a config field or section__field")
        d[sec][name] = value
    try:
        cfg = Config.from_dict(d)
    except ValueError as e:
        p.error(str(e))
    out = Path(a.out) if a.out else run_dir(cfg.preset, cfg.upsampler.name,
                                            cfg.probe.click_encoder, cfg.probe.injection)
    meta = weights_meta(probe, ckpt)
    summary = {}
    for name in cfg.eval.datasets:
        if name == "synthetic":
            ensure_synthetic(num_images=cfg.data.synthetic_num_images,
                             size=cfg.data.synthetic_image_size, seed=cfg.data.synthetic_seed,
                             progress=False)
        res = evaluate_config(probe, cfg, get_dataset(name, split="val"), dataset_name=name)
        doc = save_result(res, out, cfg=cfg, meta=meta, n_boot=cfg.eval.bootstrap,
                          overwrite=a.overwrite)
        summary[name] = {k: doc["metrics"][k] for k in ("NoC85", "NoC90", "IoU@1",
                                                        "num_instances")}
    print(json.dumps({"out_dir": str(out), "metrics": summary}))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
