"""Which precision a *frozen* upsampler runs in inside the probe: ``fp32``, ``bf16`` or ``auto``.

``auto`` (the ``small`` preset) decides by a quick self-benchmark, not by assumption:
on a CPU, the upsampler's forward pass is timed in float32 and on a bfloat16 copy, and bf16 is
used only when it is at least :data:`MIN_SPEEDUP` times faster *and* its output stays within
:data:`MAX_REL_ERROR` of the float32 output (relative L2 error) on the benchmark input. On the
development CPU (AMX bf16 tiles) LoftUp came out 2.3-3.3x faster in bf16 and FeatUp-JBU about 1x;
wherever bf16 is not clearly faster (e.g. a CPU without bf16 matrix units), float32 stays. Parameter-free upsamplers (bilinear, ...) and
non-CPU devices always keep float32 (on a GPU, ``train.amp`` is the mixed-precision switch).

Only the frozen upsampler changes precision; the backbone, the click encoder and the head stay
float32, and the upsampled features are cast back to float32. ``full`` uses ``fp32``, as the
reference does.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "auto")
MIN_SPEEDUP = 1.5
MAX_REL_ERROR = 0.05
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class PrecisionChoice:
    """The resolved precision and why: ``reason`` is printed once and stored with results."""

    dtype: torch.dtype
    reason: str
    fp32_seconds: float | None = None
    bf16_seconds: float | None = None
    rel_error: float | None = None

    @property
    def name(self) -> str:
        return "bf16" if self.dtype == torch.bfloat16 else "fp32"

    def to_dict(self) -> dict:
        return {"precision": self.name, "reason": self.reason, "fp32_seconds": self.fp32_seconds,
                "bf16_seconds": self.bf16_seconds, "rel_error": self.rel_error}


_CHOICES: dict[tuple, PrecisionChoice] = {}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"probe.upsampler_precision must be one of {PRECISIONS}, "
                         f"got {precision!r}")
    return precision


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _time_forward(up: nn.Module, feats: torch.Tensor, image: torch.Tensor, repeats: int = 2
                  ) -> tuple[float, torch.Tensor]:
    with torch.no_grad():
        out = up(feats, image)  # warm-up
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = up(feats, image)
            best = min(best, time.perf_counter() - t0)
    return best, out


def self_benchmark(upsampler: nn.Module, feats: torch.Tensor, image: torch.Tensor
                   ) -> PrecisionChoice:
    """Time ``upsampler(feats, image)`` in float32 and on a bf16 copy (best of two after a
    warm-up) and compare the outputs; bf16 when faster by :data:`MIN_SPEEDUP` and within
    :data:`MAX_REL_ERROR`. Pass real inputs (a couple of images and their backbone features):
    speed and error depend on them (pixel-noise images, for one, exaggerate LoftUp's bf16 error)."""
    feats, image = feats.detach().float(), image.detach().float()
    t32, ref = _time_forward(upsampler, feats, image)
    low = lowered_copy(upsampler, torch.bfloat16)
    try:
        t16, out = _time_forward(low, *lowered_inputs(low, feats, image, torch.bfloat16))
    except RuntimeError as e:  # an op without a bf16 kernel on this build
        return PrecisionChoice(torch.float32, f"fp32: bf16 forward failed ({e})", t32)
    err = float((out.float() - ref).norm() / ref.norm().clamp_min(1e-12))
    speedup = t32 / max(t16, 1e-9)
    facts = (f"self-benchmark on {tuple(image.shape)} images: fp32 {t32:.3f} s, bf16 {t16:.3f} s "
             f"({speedup:.2f}x), bf16 relative error {err:.4f} (bf16 needs >= {MIN_SPEEDUP}x "
             f"and <= {MAX_REL_ERROR})")
    use = speedup >= MIN_SPEEDUP and err <= MAX_REL_ERROR
    dtype = torch.bfloat16 if use else torch.float32
    return PrecisionChoice(dtype, ("bf16: " if use else "fp32: ") + facts, round(t32, 4),
                           round(t16, 4), round(err, 5))


def choose_precision(upsampler: nn.Module, precision: str, *, feats: torch.Tensor,
                     image: torch.Tensor, log=print) -> PrecisionChoice:
    """Resolve ``precision`` (``"fp32" | "bf16" | "auto"``) for ``upsampler``; ``feats`` and
    ``image`` are a small real batch on the device the upsampler will run on.

    ``auto`` results are cached per (upsampler class and weights, image size, threads) for the
    process and logged once through ``log``.
    """
    check_precision(precision)
    if precision != "fp32" and upsampler.training:
        # frozen_bn_mode="reference": BatchNorm statistics of the upsampler itself change
        return PrecisionChoice(torch.float32, "fp32: the upsampler runs in training mode")
    if precision != "auto":
        return PrecisionChoice(_DTYPES[precision], f"{precision}: set in the config")
    if image.device.type != "cpu":
        return PrecisionChoice(torch.float32, "fp32: auto keeps float32 off the CPU")
    if not _has_parameters(upsampler):
        return PrecisionChoice(torch.float32, "fp32: parameter-free upsampler")
    key = (type(upsampler).__name__, str(getattr(upsampler, "weights_id", id(upsampler))),
           tuple(image.shape[-2:]), torch.get_num_threads())
    if key not in _CHOICES:
        _CHOICES[key] = self_benchmark(upsampler, feats, image)
        if log is not None:
            log(f"[probe_lib] {getattr(upsampler, 'name', key[0])} precision {_CHOICES[key].reason}")
    return _CHOICES[key]


def lowered_image(upsampler: nn.Module, image: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The guidance image for a copy lowered to ``dtype``: kept float32 for methods with
    ``float32_image = True`` (LoftUp: its colour Fourier features multiply pixel values by up to
    e^10, and a bf16 pixel is off by up to 1/512)."""
    return image if getattr(upsampler, "float32_image", False) else image.to(dtype)


def lowered_inputs(upsampler: nn.Module, feats: torch.Tensor, image: torch.Tensor,
                   dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(feats, image)`` for a copy lowered to ``dtype`` (see :func:`lowered_image`)."""
    return feats.to(dtype), lowered_image(upsampler, image, dtype)


def lowered_copy(upsampler: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A frozen copy of ``upsampler`` with floating-point parameters and buffers in ``dtype``."""
    low = copy.deepcopy(upsampler).to(dtype)
    for p in low.parameters():
        p.requires_grad_(False)
    return low


__all__ = ["MAX_REL_ERROR", "MIN_SPEEDUP", "PRECISIONS", "PrecisionChoice", "check_precision",
           "choose_precision", "lowered_copy", "lowered_image", "lowered_inputs",
           "self_benchmark"]
