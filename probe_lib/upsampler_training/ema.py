"""Exponential moving average of a module's weights (LoftUp stage 2 teacher, arXiv 2504.14032)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Teacher = EMA of a student.

    Every ``update_every`` steps, and never at step 0, each floating-point parameter and buffer of
    the teacher is replaced by ``decay * teacher + (1 - decay) * student``. Integer buffers (BatchNorm
    ``num_batches_tracked``) are copied. The teacher is a deep copy of the student at construction
    (LoftUp: both start from the stage 1 weights), kept in eval mode with ``requires_grad=False``.
    No warm-up: a constant decay is a documented project choice (docs/upsampler_training.md).
    """

    def __init__(self, student: nn.Module, decay: float = 0.99, update_every: int = 10):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        if update_every < 1:
            raise ValueError(f"update_every must be >= 1, got {update_every}")
        self.decay = float(decay)
        self.update_every = int(update_every)
        self.teacher = copy.deepcopy(student).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def should_update(self, step: int) -> bool:
        """True at steps update_every, 2*update_every, ... (0-based step counter, after step 0)."""
        return step > 0 and step % self.update_every == 0

    @torch.no_grad()
    def update(self, student: nn.Module, step: int) -> bool:
        """Apply the EMA rule if ``step`` is an update step; returns whether it did."""
        if not self.should_update(step):
            return False
        t_state = self.teacher.state_dict()
        for k, v in student.state_dict().items():
            t = t_state[k]
            if t.is_floating_point():
                t.mul_(self.decay).add_(v.detach().to(t.dtype), alpha=1.0 - self.decay)
            else:
                t.copy_(v)
        return True

    def state_dict(self) -> dict:
        return {"teacher": self.teacher.state_dict(), "decay": self.decay,
                "update_every": self.update_every}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.decay = float(state["decay"])
        self.update_every = int(state["update_every"])
