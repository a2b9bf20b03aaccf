"""Training the learned upsamplers (docs/upsampler_training.md): objectives, a resumable
loop, evidence metrics.

* :mod:`.lift` — LiFT's 2x self-supervised multi-scale objective.
* :mod:`.featup` — FeatUp's multi-view reconstruction (jitter, attention downsampler, random
  projection, uncertainty, CRF, TV) for the JBU stack.
* :mod:`.loftup` — LoftUp stage 1 (mask-refined bicubic pseudo-GT) and stage 2 (EMA
  self-distillation with an affinity loss), recipes ``paper`` / ``script``.
* :mod:`.featsharp` — FeatSharp multi-view training with homographies, seam weights, the bias
  buffer and PHI-S standardisation.
* :mod:`.loop` — :func:`fit`: tqdm, loss logs, atomic checkpoints, exact resume, AMP on CUDA.
* :mod:`.recipes` — one call per method that builds data, task and optimiser from a ``Config``.
* :mod:`.evidence` — does a feature map follow region boundaries? (variance ratio, recall).
"""

from .ema import EMA
from .evidence import boundary_recall, boundary_scores, within_region_variance_ratio
from .loop import TrainResult, clip_schedule, fit, history_series, warmup_cosine

__all__ = ["EMA", "TrainResult", "boundary_recall", "boundary_scores", "clip_schedule", "fit",
           "history_series", "warmup_cosine", "within_region_variance_ratio"]
