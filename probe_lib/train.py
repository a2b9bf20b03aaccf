"""Probe training: iSegProbe's recipe (docs/probe.md) as ``full``, a CPU-sized version as ``small``.

    >>> history = train_probe(make_config("small"))          # trains or resumes, returns the log

One step: draw a batch (augmentations, MultiPointSampler), add 0-3 iterative clicks with
the model in eval mode and no gradients, then a gradient step on the normalized focal loss
with Adam; the learning rate follows MultiStepLR per epoch (``full``) or a per-step warm-up and
cosine (``small``). With ``train.crop_bank`` the crops come from a fixed bank and late-injection
probes take their frozen features from :mod:`probe_lib.feature_cache`. Frozen backbone/upsampler
features that the clicks cannot change are computed once per batch and reused by the iterative
clicks and the gradient forward (exact; skipped with ``frozen_bn_mode="reference"`` where the
frozen modules behave differently in train and eval mode).

Randomness is keyed, not streamed: sample ``pos`` of epoch ``e`` is augmented and clicked with
``numpy.random.default_rng([seed, e, pos])`` and batch ``t`` draws its number of iterative clicks
from ``[seed, e, t]``. Hence an interrupted run resumes to bit-identical weights, and a
``torchrun`` run with W processes sees the same samples as a single process with the same global
batch size (each rank takes a contiguous slice of every global batch).

Multi-GPU: ``torchrun --nproc_per_node 4 -m probe_lib.train --preset full`` (NCCL on CUDA, gloo
on CPU); ``cfg.train.batch_size`` is the global batch and must be divisible by the world size.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from probe_lib.augment import IsegAugment, pad_if_needed, random_crop, resize
from probe_lib.clicks import MultiPointSampler, add_training_clicks, clicks_to_tensor, next_click
from probe_lib.losses import NormalizedFocalLoss
from probe_lib.model import ISProbe, _frozen_info, build_probe, save_probe
from probe_lib.utils import (
    atomic_torch_save,
    atomic_write_json,
    banner,
    checkpoint_path,
    get_device,
    remove_orphan_tmp_files,
)

__all__ = ["ProbeTrainSet", "batch_loss", "checkpoint_epochs", "default_out_path", "iou", "main",
           "probe_checkpoint_path", "train_probe", "validate"]

REFERENCE_SIZE = 224  # the recipe's crop; other sizes rescale the data by size / 224 first
LR_SCHEDULES = ("multistep", "cosine")
_BANK_STREAM = 2**31 - 2  # random stream of the crop bank's augmentations (never an epoch number)


def default_out_path(cfg) -> Path:
    """``checkpoint_path("probe", f"{upsampler}-{injection}", preset)``."""
    return checkpoint_path("probe", f"{cfg.upsampler.name}-{cfg.probe.injection}", cfg.preset)


CHECKPOINT_SCHEDULES = ("isegprobe", "last_only")


def checkpoint_epochs(schedule: str, epochs: int) -> list[int]:
    """0-based epochs that get a numbered probe checkpoint besides the final one ("last").

    ``"isegprobe"`` follows iSegProbe's ``configs/train_cfg.yaml`` (``checkpoint_interval:
    [[0, 3], [15, 1]]``): every 3rd epoch from 0, every epoch from 15. ``"last_only"``: none.
    """
    if schedule == "last_only":
        return []
    if schedule != "isegprobe":
        raise ValueError(f"train.checkpoint_schedule={schedule!r}; valid: "
                         f"{', '.join(CHECKPOINT_SCHEDULES)}")
    return [e for e in range(int(epochs)) if (e % 3 == 0 if e < 15 else True)]


def probe_checkpoint_path(cfg, which: str | int | None = None,
                          out_path: str | os.PathLike | None = None) -> Path:
    """The probe checkpoint to evaluate: ``which`` (default ``cfg.eval.checkpoint``) is
    ``"last"`` (the final checkpoint, :func:`default_out_path` or ``out_path``) or an epoch number
    saved by the schedule (``<stem>-epoch015.pt``)."""
    which = cfg.eval.checkpoint if which is None else which
    last = Path(out_path) if out_path is not None else default_out_path(cfg)
    if str(which) == "last":
        return last
    try:
        epoch = int(which)
    except ValueError:
        raise ValueError(f"eval.checkpoint={which!r}: expected 'last' or an epoch number"
                         ) from None
    return _numbered_path(last, epoch)


def _numbered_path(out_path: Path, epoch: int) -> Path:
    return out_path.with_name(f"{out_path.stem}-epoch{int(epoch):03d}{out_path.suffix}")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def _get_dataset(cfg, split: str):
    from probe_lib.data.is_datasets import get_dataset

    name = cfg.data.train_dataset
    kwargs = {"min_area_ratio": 0.08} if split == "train" else {}
    root = None
    if cfg.data.root is not None:
        root = Path(cfg.data.root) / ("synthetic" if name.lower() == "synthetic" else name)
    return get_dataset(name, split=split, root=root, **kwargs)


def _sample_weights(ds, cfg, json_path: str | os.PathLike | None = None) -> np.ndarray | None:
    """RITM's SBD image weights, p ∝ (1 - score)^1.25, aligned with ``ds`` by image name.

    None when weighting is off or the dataset is not SBD. A JSON file that is absent or does not
    cover the dataset's images is an error when ``cfg.train.require_sample_weights`` (``full``:
    iSegProbe always samples with these weights), else uniform sampling with a message.
    """
    if not cfg.train.weighted_sampling or cfg.data.train_dataset != "SBD":
        return None
    from probe_lib.data.sbd_weights import SCORE_GAMMA, default_weights_path, load_sample_records

    if json_path is None and cfg.data.root is not None:
        json_path = Path(cfg.data.root) / "SBD" / "sbd_samples_weights.json"
    json_path = Path(json_path) if json_path is not None else default_weights_path()
    if not json_path.is_file():
        if cfg.train.require_sample_weights:
            raise FileNotFoundError(
                f"no SBD sampling weights at {json_path} (train.require_sample_weights=True, as "
                "iSegProbe samples SBD images with them); get them with "
                "`python data_scripts/download.py sbd_weights`, or set "
                "train.require_sample_weights=False to sample uniformly")
        print(f"[probe_lib] no SBD sampling weights at {json_path}: sampling images uniformly "
              "(get them with `python data_scripts/download.py sbd_weights`)")
        return None
    scores = {str(name): float(score) for _i, name, score in load_sample_records(json_path)}
    names = list(getattr(ds, "names", []))
    missing = [n for n in names if n not in scores]
    if (not names or missing) and cfg.train.require_sample_weights:
        raise ValueError(f"SBD sampling weights {json_path} do not cover the training images "
                         f"(e.g. {missing[:3]}); re-fetch them with "
                         "`python data_scripts/download.py sbd_weights`")
    if not names or missing:
        print(f"[probe_lib] SBD sampling weights do not cover the dataset (e.g. {missing[:3]}); "
              "sampling images uniformly")
        return None
    w = np.array([(1.0 - scores[n]) ** SCORE_GAMMA for n in names], np.float64)
    return w / w.sum()


class ProbeTrainSet(Dataset):
    """Training items from an IS dataset: augmented crop, sampled clicks, target.

    ``set_epoch(epoch, order)`` fixes the epoch's draw order (``order[pos]`` = image index);
    ``self[pos]`` returns a dict with ``image`` float (3, S, S) RGB in [0, 1], ``points`` float
    (2M, 3), ``gt`` float (1, S, S) in {0, 1, -1}, ``objects_removed`` (int, instances dropped
    because they were empty or all-ignore), all drawn with ``default_rng([seed, epoch, pos])``.
    """

    def __init__(self, ds, size: int, seed: int = 0, num_points: int = 24,
                 augment: bool = True, small_object_pixels: str = "background",
                 bank_size: int = 0, num_images: int | None = None) -> None:
        """``small_object_pixels``: what pixels of objects dropped after augmentation for being
        too small become: ``"background"`` or ``"not_background"`` (iSegProbe: kept out of
        the background negatives). ``bank_size`` > 0: items are crops of a fixed bank
        (:meth:`crop`) of ``bank_size`` crops over the first ``num_images`` images."""
        if small_object_pixels not in ("background", "not_background"):
            raise ValueError(f"small_object_pixels={small_object_pixels!r}; valid: "
                             "'background', 'not_background'")
        self.small_object_pixels = small_object_pixels
        self.ds = ds
        self.size = size
        self.seed = seed
        self.scale = size / REFERENCE_SIZE
        self.augment = IsegAugment(crop_size=size,
                                   min_object_area=max(1, round(80 * self.scale**2)))
        self.do_augment = augment
        self.sampler = MultiPointSampler(max_num_points=num_points)
        self.epoch = 0
        self.order = np.arange(len(ds))
        # crop bank: ``bank_size`` augmented crops fixed once (crop j of image j mod n), so that
        # their frozen features can be computed once; clicks are still drawn anew every epoch
        self.bank_size = int(bank_size)
        self.num_images = len(ds) if num_images is None else min(int(num_images), len(ds))
        self._crops: dict[int, tuple] = {}

    def set_epoch(self, epoch: int, order: np.ndarray) -> None:
        self.epoch = int(epoch)
        self.order = np.asarray(order)

    def __len__(self) -> int:
        return len(self.order)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        smp = self.ds.get_sample(int(index))
        image, objects, ignore = smp.image, np.asarray(smp.objects, np.int32), smp.ignore
        if objects.shape != image.shape[:2]:
            raise ValueError(f"{smp.name}: mask size {objects.shape} differs from image size "
                             f"{image.shape[:2]}")
        ignore = np.zeros(objects.shape, bool) if ignore is None else np.asarray(ignore, bool)
        # instances that are empty or entirely ignored carry no signal: drop and count them
        removed = 0
        for obj in np.unique(objects):
            if obj > 0 and not ((objects == obj) & ~ignore).any():
                objects = np.where(objects == obj, 0, objects)
                removed += 1
        if self.scale != 1.0:
            h, w = image.shape[:2]
            nh, nw = max(1, round(h * self.scale)), max(1, round(w * self.scale))
            image = resize(image, nh, nw)
            objects = resize(objects, nh, nw, nearest=True)
            ignore = resize(ignore, nh, nw, nearest=True)
        return image, objects, ignore, removed

    def _augment(self, index: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray | None]:
        image, objects, ignore, removed = self.load(index)
        if self.do_augment:
            a = self.augment(image, objects, ignore, rng)
            dropped = a.small_removed if self.small_object_pixels == "not_background" else None
            return a.image, a.objects, a.ignore, removed, dropped
        s = self.size
        hs, ws = rng.random(), rng.random()
        image, objects, ignore = (random_crop(pad_if_needed(x, s, s), s, s, hs, ws)
                                  for x in (image, objects, ignore))
        return image, objects, ignore, removed, None

    def crop(self, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray | None]:
        """Bank crop ``j``: image ``j mod num_images`` augmented with ``[seed, BANK, j]``
        (the same in every epoch and process); ``(image uint8 (S, S, 3), objects, ignore,
        objects_removed, small-object pixels or None)``. Kept in memory after the first call
        (a few MB per 100 crops)."""
        if not 0 <= j < self.bank_size:
            raise IndexError(f"crop {j} outside the bank of {self.bank_size} crops")
        if j not in self._crops:
            rng = np.random.default_rng([self.seed, _BANK_STREAM, int(j)])
            self._crops[j] = self._augment(j % self.num_images, rng)
        return self._crops[j]

    def __getitem__(self, pos: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, self.epoch, int(pos)])
        item = int(self.order[pos])
        if self.bank_size:
            image, objects, ignore, removed, dropped = self.crop(item)
        else:
            image, objects, ignore, removed, dropped = self._augment(item, rng)
        points, gt = self.sampler(objects, rng, ignore=ignore, not_background=dropped)
        return {"image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
                / 255.0,
                "points": torch.from_numpy(points), "gt": torch.from_numpy(gt),
                "objects_removed": removed, "crop": item if self.bank_size else -1}


class _RankSlices(Sampler):
    """Positions of this rank: a contiguous slice ``[r*b, (r+1)*b)`` of every global batch.

    Like ``DistributedSampler`` it splits an epoch between ranks, but the slicing keeps a
    W-process run sample-for-sample equal to a single process with the same global batch.
    """

    def __init__(self, num: int, global_batch: int, rank: int, world: int) -> None:
        self.steps = num // global_batch  # drop_last
        self.per_rank = global_batch // world
        self.global_batch = global_batch
        self.rank = rank
        self.start_step = 0

    def __iter__(self):
        for t in range(self.start_step, self.steps):
            base = t * self.global_batch + self.rank * self.per_rank
            yield from range(base, base + self.per_rank)

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.per_rank


def _epoch_order(n_images: int, draws: int, seed: int, epoch: int,
                 weights: np.ndarray | None) -> np.ndarray:
    rng = np.random.default_rng([seed, epoch, 2**31 - 1])
    if weights is not None:  # weighted, with replacement (RITM's WeightedRandomSampler)
        return rng.choice(n_images, size=draws, replace=True, p=weights)
    reps = math.ceil(draws / n_images)
    return np.concatenate([rng.permutation(n_images) for _ in range(reps)])[:draws]


def lr_factor(t: int, *, warmup: int, schedule: str, total_steps: int, steps_per_epoch: int,
              milestones: tuple[int, ...], gamma: float) -> float:
    """Learning-rate multiplier of global step ``t`` (0-based): a linear warm-up over
    ``warmup`` steps, times ``schedule`` -- ``"multistep"`` (``gamma`` per epoch milestone
    passed, the reference's MultiStepLR) or ``"cosine"`` (half a cosine to 0 over
    ``total_steps``)."""
    w = min(1.0, (t + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "cosine":
        return w * 0.5 * (1.0 + math.cos(math.pi * min(t, total_steps) / max(1, total_steps)))
    epoch = t // max(1, steps_per_epoch)
    return w * gamma ** sum(epoch >= m for m in milestones)


def batch_loss(per_sample: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Mean of per-sample losses (B,) over samples with at least one non-ignored pixel.

    All-ignore samples carry no signal: they are skipped and counted (second return value), and
    a batch with nothing left gives a zero loss that still back-propagates (keeps DDP in step).
    Under DDP each rank averages its own samples and DDP averages the gradients over ranks.
    """
    keep = (gt != -1).flatten(1).any(1)
    n_skip = int((~keep).sum())
    if not keep.any():
        return (per_sample * 0).sum(), n_skip
    return (per_sample * keep).sum() / int(keep.sum()), n_skip


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Per-sample IoU of bool predictions (B, 1, H, W) with targets in {0, 1, -1} (ignore -1).

    A sample with an empty union scores 1 (nothing to find, nothing predicted).
    """
    valid = gt != -1
    obj = gt > 0.5
    inter = (pred & obj & valid).flatten(1).sum(1).float()
    union = ((pred | obj) & valid).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


@torch.no_grad()
def validate(model: ISProbe, val_set: ProbeTrainSet, num: int, device, batch_size: int = 8
             ) -> dict[str, float]:
    """Mean IoU on ``num`` fixed validation crops (same crops and clicks every epoch).

    ``val_iou``: clicks from the MultiPointSampler (RITM's validation); ``val_iou_1click``: one
    click from the evaluation clicker (:func:`probe_lib.clicks.next_click`). Threshold 0.5.
    ``val_loss``: the training loss (normalized focal loss) on the same crops and sampled clicks,
    a less noisy sign of learning than per-step training losses on tiny runs.
    """
    was = model.training
    model.eval()
    n = min(num, len(val_set))
    ious, ious1, losses = [], [], []
    loss_fn = NormalizedFocalLoss(alpha=0.5, gamma=2.0, reduction="none")
    for start in range(0, n, batch_size):
        items = [val_set[i] for i in range(start, min(n, start + batch_size))]
        image = torch.stack([it["image"] for it in items]).to(device)
        gt = torch.stack([it["gt"] for it in items]).to(device)
        points = torch.stack([it["points"] for it in items]).to(device)
        prev = torch.zeros_like(gt)
        cache = model.encode_image(image)
        logits = model.forward_cached(cache, prev, points)
        loss, _ = batch_loss(loss_fn(logits.float(), gt), gt)
        losses.append((float(loss), len(items)))
        pred = torch.sigmoid(logits) > 0.5
        ious.append(iou(pred, gt).cpu())
        first = []
        for g in gt[:, 0].cpu().numpy():
            pos, (r, c) = next_click(np.where(g == -1, -1, (g > 0.5)).astype(np.int64),
                                     np.zeros(g.shape, bool))
            first.append(clicks_to_tensor([(r, c, pos)], max_points=1))
        pts1 = torch.cat(first).to(device)
        pred1 = torch.sigmoid(model.forward_cached(cache, prev, pts1)) > 0.5
        ious1.append(iou(pred1, gt).cpu())
    model.train(was)
    if not ious:
        return {"val_iou": float("nan"), "val_iou_1click": float("nan"), "val_loss": float("nan")}
    return {"val_iou": float(torch.cat(ious).mean()), "val_iou_1click": float(torch.cat(ious1).mean()),
            "val_loss": sum(v * k for v, k in losses) / sum(k for _, k in losses)}


# --------------------------------------------------------------------------------------------
# distributed helpers
# --------------------------------------------------------------------------------------------


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return rank, world, local


def _init_dist(world: int, local: int, device: torch.device) -> torch.device:
    import torch.distributed as dist

    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local)
            device = torch.device("cuda", local)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


# --------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------


# Config fields that change what a probe learns (the rest: evaluation, upsampler training,
# worker counts, memory layout, data location, may differ between a run and its resumption).
_UPSAMPLER_KEYS = ("name", "weights", "featup_channelnorm", "loftup_minmax_scope",
                   "featsharp_factor", "frozen_bn_mode")
_IGNORED = {"train": ("num_workers",), "probe": ("channels_last",), "data": ("root",)}


def _config_diff(old: dict, new: dict) -> list[str]:
    """``section.key: old -> new`` for the training-relevant fields that differ."""
    out = []
    if old.get("preset") != new.get("preset"):
        out.append(f"preset: {old.get('preset')!r} -> {new.get('preset')!r}")
    for sec in ("backbone", "upsampler", "probe", "train", "data"):
        a, b = old.get(sec, {}), new.get(sec, {})
        keys = _UPSAMPLER_KEYS if sec == "upsampler" else sorted(set(a) | set(b))
        for k in keys:
            if k in _IGNORED.get(sec, ()):
                continue
            if a.get(k) != b.get(k):
                out.append(f"{sec}.{k}: {a.get(k)!r} -> {b.get(k)!r}")
    return out


def _state_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.stem + ".train_state.pt")


def _history_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.stem + ".history.json")


def train_probe(
    cfg,
    out_path: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    *,
    train_dataset=None,
    val_dataset=None,
    backbone=None,
    upsampler=None,
    device: str | torch.device | None = None,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train a probe with ``cfg`` and save it (recipe: docs/probe.md).

    Args:
        cfg: a :class:`probe_lib.config.Config` (``probe``, ``train``, ``data`` sections).
        out_path: final probe checkpoint (:func:`probe_lib.model.save_probe` format); default
            :func:`default_out_path`. Beside it: ``<stem>.train_state.pt`` (written atomically
            every epoch: trainable weights, Adam and scheduler state, RNG state, history) and
            ``<stem>.history.json`` (per-step losses, per-epoch validation).
        resume: continue from the state file if present (a finished run returns its history
            without training). A state made with a different training-relevant config raises a
            ValueError; one trained on other frozen weights (e.g. the upsampler was retrained
            since) is moved aside to ``*.stale*`` with a banner and training restarts.
            ``False`` starts afresh and overwrites.
        progress: tqdm bars.
        train_dataset, val_dataset: objects with ``len`` and ``get_sample(i) -> ISSample``;
            default ``get_dataset(cfg.data.train_dataset, "train" / "val")``.
        backbone, upsampler: prebuilt frozen modules (default: built from ``cfg``).
        device: default :func:`probe_lib.utils.get_device` (or this rank's GPU under torchrun).
        stop_after_epochs: return after this many epochs of *this call* as if interrupted
            (for tests and time-boxed runs); the state file allows resuming.

    Returns:
        History dict: ``steps`` (list of {epoch, step, loss, lr, clicks_added, seconds}),
        ``epochs`` (list of {epoch, train_loss, val_iou, val_iou_1click, lr, seconds,
        skipped_all_ignore, objects_removed}), ``val_before`` (validation of the untrained
        probe), ``config``, ``out_path``, ``complete``, ``images_per_second``.
    """
    from tqdm.auto import tqdm

    from probe_lib.config import validate_config

    validate_config(cfg)  # also a Config built with dataclasses.replace, not make_config
    tc = cfg.train
    rank, world, local = _dist_env()
    device = torch.device(device) if device is not None else get_device()
    device = _init_dist(world, local, device)
    is_main = rank == 0
    if tc.batch_size % world:
        raise ValueError(f"train.batch_size={tc.batch_size} must be divisible by the number of "
                         f"processes ({world})")
    out_path = Path(out_path) if out_path is not None else default_out_path(cfg)
    state_path, hist_path = _state_path(out_path), _history_path(out_path)
    remove_orphan_tmp_files(out_path.parent)  # left by a kill during an earlier atomic write

    state = None
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        diff = _config_diff(state["config"], cfg.to_dict())
        if diff:
            raise ValueError(f"{state_path} was trained with a different config ({'; '.join(diff)})"
                             "; pass resume=False (RETRAIN = True in notebook 09) to train afresh "
                             "and overwrite it, or choose another out_path")

    # model (seeded so that a fresh run and a resumed run start from the same init)
    torch.manual_seed(tc.seed)
    model = build_probe(cfg, backbone=backbone, upsampler=upsampler).to(device)
    if state is not None:
        old, cur = state.get("frozen"), _frozen_info(model)
        if old is not None and old != cur:
            stale = [p for p in (out_path, state_path, hist_path) if p.exists()]
            if is_main:
                banner(f"{out_path.name} was trained on other frozen weights\n"
                       f"  then: {old}\n  now:  {cur}\n"
                       f"moving it aside (*.stale*) and training afresh")
                for p in stale:
                    os.replace(p, p.with_name(p.stem + ".stale" + p.suffix))
            state = None
        elif "upsampler_state_dict" in state:  # random learned upsampler: same weights again
            model.upsampler.load_state_dict(state["upsampler_state_dict"])
    if state is not None and state["history"].get("complete") and out_path.is_file():
        if is_main and progress:
            print(f"[probe_lib] {out_path.name}: training already complete; loaded history")
        return state["history"]
    params = model.trainable_parameters()
    if not params:
        raise ValueError("the probe has no trainable parameters")
    opt = torch.optim.Adam(params, lr=tc.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    history: dict[str, Any] = {"steps": [], "epochs": [], "config": cfg.to_dict(),
                               "out_path": str(out_path), "complete": False, "world_size": world}
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["trainable"], strict=False)
        history = state["history"]
        start_epoch = int(state["epoch"]) + 1
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])

    # data
    train_ds = train_dataset if train_dataset is not None else _get_dataset(cfg, "train")
    n_images = len(train_ds) if tc.num_images is None else min(tc.num_images, len(train_ds))
    if n_images == 0:
        raise ValueError("the training dataset has no images")
    size = cfg.probe.image_size
    train_set = ProbeTrainSet(train_ds, size, seed=tc.seed, num_points=tc.num_max_points,
                              small_object_pixels=tc.small_object_pixels,
                              bank_size=tc.crop_bank, num_images=n_images)
    numbered = set(checkpoint_epochs(tc.checkpoint_schedule, tc.epochs))
    # with a crop bank an epoch is one pass over the bank's crops, drawn uniformly
    n_items = tc.crop_bank or n_images
    weights = None if tc.crop_bank else _sample_weights(train_ds, cfg)
    if weights is not None and n_images < len(train_ds):
        weights = weights[:n_images] / weights[:n_images].sum()
    if tc.batch_size > n_items:
        raise ValueError(f"train.batch_size={tc.batch_size} exceeds the {n_items} training "
                         f"{'crops' if tc.crop_bank else 'images'} (drop_last would leave no "
                         "step)")
    steps_per_epoch = n_items // tc.batch_size
    total_steps = steps_per_epoch * tc.epochs
    per_rank = tc.batch_size // world
    # the reference: MultiStepLR stepped per epoch; a short schedule: per-step warm-up + cosine
    if tc.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"train.lr_schedule={tc.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}")
    warmup = None
    if tc.lr_schedule == "multistep" and tc.warmup_steps == 0:
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(tc.lr_milestones),
                                                     gamma=tc.lr_gamma)
    else:
        warmup = tc.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: lr_factor(
            t, warmup=tc.warmup_steps, schedule=tc.lr_schedule, total_steps=total_steps,
            steps_per_epoch=steps_per_epoch, milestones=tc.lr_milestones, gamma=tc.lr_gamma))
    if state is not None:  # after the scheduler, which sets each group's initial_lr
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])

    val_set = None
    if is_main and tc.val_samples > 0:
        vds = val_dataset if val_dataset is not None else _get_dataset(cfg, "val")
        val_set = ProbeTrainSet(vds, size, seed=tc.seed + 1, num_points=tc.num_max_points,
                                augment=False)
        val_order = np.random.default_rng([tc.seed, 7]).permutation(len(vds))
        val_set.set_epoch(0, val_order[: tc.val_samples])

    train_model: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    loss_fn = NormalizedFocalLoss(alpha=0.5, gamma=2.0, reduction="none")
    reuse_cache = cfg.upsampler.frozen_bn_mode == "eval"
    use_amp = bool(tc.amp) and device.type == "cuda"
    features = None
    if (tc.crop_bank and tc.feature_cache and reuse_cache
            and model.injection in ("late_lowres", "late_highres")):
        from probe_lib.feature_cache import FeatureCache, cache_key

        crops = [train_set.crop(j)[0] for j in range(tc.crop_bank)]
        features = FeatureCache(model, cache_key(model.backbone, size, crops))
        del crops

    def save_state(epoch: int) -> None:
        obj = {"config": cfg.to_dict(), "frozen": _frozen_info(model), "epoch": epoch,
               "trainable": model.trainable_state_dict(),
               "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
               "torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
               "history": history}
        up = model.upsampler
        if getattr(up, "learned", False) and str(up.weights_id).startswith("random"):
            obj["upsampler_state_dict"] = {k: v.detach().cpu() for k, v in up.state_dict().items()}
        atomic_torch_save(obj, state_path)
        atomic_write_json(history, hist_path)

    if is_main and val_set is not None and state is None:
        # the untrained baseline, so that curves show what training changed
        history["val_before"] = validate(model, val_set, tc.val_samples, device)
    epochs_run = 0
    for epoch in range(start_epoch, tc.epochs):
        t0 = time.perf_counter()
        order = _epoch_order(n_items, n_items, tc.seed, epoch, weights)
        train_set.set_epoch(epoch, order)
        sampler = _RankSlices(n_items, tc.batch_size, rank, world)
        loader = DataLoader(train_set, batch_size=per_rank, sampler=sampler,
                            num_workers=tc.num_workers, drop_last=True,
                            persistent_workers=False, pin_memory=device.type == "cuda")
        model.train()
        losses, skipped, removed = [], 0, 0
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{tc.epochs}",
                   disable=not (progress and is_main), leave=False)
        for step, batch in enumerate(bar):
            ts = time.perf_counter()
            image = batch["image"].to(device, non_blocking=True)
            points = batch["points"].to(device)
            gt = batch["gt"].to(device)
            removed += int(batch["objects_removed"].sum())
            brng = np.random.default_rng([tc.seed, epoch, step, 3])
            num_iters = int(brng.integers(0, tc.max_num_next_clicks + 1))
            prev = torch.zeros_like(gt)
            if features is not None:
                cache = features.get(batch["crop"], image)
            else:
                cache = model.encode_image(image) if reuse_cache else None
            if num_iters:
                model.eval()
                with torch.no_grad(), torch.autocast(device.type, enabled=use_amp):
                    for k in range(1, num_iters + 1):
                        c = cache if cache is not None else model.encode_image(image)
                        prev = torch.sigmoid(model.forward_cached(c, prev, points).float())
                        # per-sample generators keyed on the global sample position
                        rngs = [np.random.default_rng([tc.seed, epoch, step * tc.batch_size
                                                       + rank * per_rank + i, 10 + k])
                                for i in range(image.shape[0])]
                        points = torch.cat([
                            add_training_clicks(points[i:i + 1], gt[i:i + 1], prev[i:i + 1], k,
                                                rngs[i]) for i in range(image.shape[0])])
                model.train()
            with torch.autocast(device.type, enabled=use_amp):
                logits = train_model(image, prev, points, cache=cache)
            loss, n_skip = batch_loss(loss_fn(logits.float(), gt), gt)
            skipped += n_skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            lr_used = opt.param_groups[0]["lr"]
            opt.step()
            if warmup is not None:
                sched.step()
            lv = float(loss.detach())
            if world > 1:
                t = torch.tensor([lv], device=device)
                torch.distributed.all_reduce(t)
                lv = float(t) / world
            if not math.isfinite(lv):
                raise FloatingPointError(f"non-finite loss {lv} at epoch {epoch} step {step}")
            losses.append(lv)
            history["steps"].append({"epoch": epoch, "step": step, "loss": lv,
                                     "lr": lr_used, "clicks_added": num_iters,
                                     "seconds": round(time.perf_counter() - ts, 4)})
            bar.set_postfix(loss=f"{lv:.4f}")
        bar.close()
        if features is not None and is_main:
            features.save()
        lr = opt.param_groups[0]["lr"]
        if warmup is None:
            sched.step()
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                  "lr": lr, "seconds": round(seconds, 2), "skipped_all_ignore": skipped,
                  "objects_removed": removed,
                  "images_per_second": round(steps_per_epoch * tc.batch_size / seconds, 2)}
        if is_main:
            if val_set is not None:
                record.update(validate(model, val_set, tc.val_samples, device))
            history["epochs"].append(record)
            if model.precision_choice is not None:  # e.g. bf16 chosen by self-benchmark
                history["upsampler_precision"] = model.precision_choice.to_dict()
            if progress:
                print(f"[probe_lib] epoch {epoch + 1}/{tc.epochs}: "
                      + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in record.items() if k != "epoch"))
            history["complete"] = epoch + 1 == tc.epochs
            if history["complete"]:
                save_probe(model, out_path, cfg, metrics=record)  # "last"
            if epoch in numbered:
                save_probe(model, _numbered_path(out_path, epoch), cfg, metrics=record)
            save_state(epoch)
        if world > 1:
            torch.distributed.barrier()
        epochs_run += 1  # noqa: SIM113
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs \
                and epoch + 1 < tc.epochs:
            break
    if history["epochs"]:
        secs = sum(e["seconds"] for e in history["epochs"])
        history["images_per_second"] = round(
            len(history["epochs"]) * steps_per_epoch * tc.batch_size / max(secs, 1e-9), 2)
    return history


# --------------------------------------------------------------------------------------------
# command line (also the torchrun entry point)
# --------------------------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: list[str] | None = None) -> int:
    """``python -m probe_lib.train --preset small [--set probe__head=convhead ...] [--out P]``."""
    from probe_lib.config import make_config

    p = argparse.ArgumentParser(prog="python -m probe_lib.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="small")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. upsampler__name=loftup (JSON values)")
    p.add_argument("--out", default=None, help="probe checkpoint path (default: cache)")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    overrides = {}
    for item in args.set:
        if "=" not in item:
            p.error(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k] = _parse_value(v)
    try:
        cfg = make_config(args.preset, **overrides)
    except ValueError as e:  # a bad key or value: a usage error, not a traceback
        p.error(str(e))
    hist = train_probe(cfg, out_path=args.out, resume=not args.no_resume,
                       progress=not args.no_progress, device=args.device)
    rank, world, _ = _dist_env()
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        last = hist["epochs"][-1] if hist["epochs"] else {}
        print(json.dumps({"out_path": hist["out_path"], "complete": hist["complete"], **last}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
