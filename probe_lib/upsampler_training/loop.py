"""Generic, resumable training loop shared by every upsampler objective.

A *task* (``LiftTask``, ``FeatUpTask``, ...) owns the modules and computes the losses; this loop
owns everything else: seeding, the optimiser step, gradient clipping, mixed precision on CUDA,
tqdm progress, the loss log (CSV + JSON) and atomic checkpoints that allow an interrupted run to
resume and end exactly where an uninterrupted one would.

Determinism across resume: every step re-seeds the global RNG and a private ``torch.Generator``
from ``(seed, step)``, and the batch for a step is a pure function of the step index, so a run
resumed at step k replays steps k, k+1, ... exactly as the uninterrupted run did.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from probe_lib.utils import atomic_torch_save, atomic_write_json, atomic_write_text

CHECKPOINT_KEYS = ("state_dict", "name", "config", "backbone", "step", "metrics")


class TrainingTask(Protocol):
    """What the loop needs from an objective."""

    name: str  # upsampler registry name saved in the checkpoint, e.g. "loftup"
    upsampler: nn.Module  # its state_dict is the checkpoint's "state_dict"

    def aux_modules(self) -> dict[str, nn.Module]:
        """Other trained modules to checkpoint (downsampler, uncertainty head, EMA teacher...)."""

    def param_groups(self) -> list[dict]:
        """Optimiser parameter groups (``{"params": [...], "lr": ...}``)."""

    def loss(self, batch: Any, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Scalar losses; ``"loss"`` is the one optimised, the others are logged.

        A task with ``manual_backward = True`` is called as ``loss(batch, step, gen,
        backward=fn)`` and back-propagates its partial losses itself with ``fn`` (FeatUp: one
        backward per jitter); the loop then does not call backward on ``"loss"``."""


@dataclass
class TrainResult:
    """What :func:`fit` returns: the loss history (one dict per logged step), final metrics and
    where the checkpoint went."""

    history: list[dict[str, float]]
    metrics: dict[str, float]
    checkpoint: Path | None
    seconds: float
    resumed_from: int = 0
    skipped: bool = False
    extra: dict = field(default_factory=dict)


def clip_schedule(first: float | None = 1e-4, first_steps: int = 10,
                  after: float | None = None) -> Callable[[int], float | None]:
    """Gradient-norm clip per step: ``first`` for the first ``first_steps`` steps, then ``after``
    (None = no clipping). FeatUp/LoftUp: 1e-4 for 10 steps; FeatSharp: then 5.0."""
    return lambda step: first if step < first_steps else after


def warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def step_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7919 + 12345) % (2**63 - 1)


def _rng_state() -> dict:
    # tensors only, so the file loads with torch.load(weights_only=True); resume does not need
    # the RNG state anyway because every step re-seeds from (seed, step)
    st = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def resume_path(path: Path) -> Path:
    """Where periodic (resumable) checkpoints go: ``<name>-<preset>.resume.pt`` beside the final."""
    return path.with_name(path.stem + ".resume.pt")


def log_paths(path: Path) -> tuple[Path, Path]:
    """Loss logs beside the checkpoint: ``<stem>.losses.csv`` and ``<stem>.losses.json``."""
    return path.with_name(path.stem + ".losses.csv"), path.with_name(path.stem + ".losses.json")


def _write_logs(path: Path, history: list[dict]) -> None:
    csv_path, json_path = log_paths(path)
    keys = sorted({k for h in history for k in h}, key=lambda k: (k != "step", k))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for h in history:
        w.writerow(h)
    atomic_write_text(buf.getvalue(), csv_path)
    atomic_write_json(history, json_path)


def fit(task: TrainingTask, batch_fn: Callable[[int], Any], *, steps: int,
        optimizer: torch.optim.Optimizer, checkpoint: str | Path | None,
        config: dict | None = None, backbone_id: str = "", seed: int = 0,
        lr_lambda: Callable[[int], float] | None = None,
        grad_clip: Callable[[int], float | None] | None = None,
        log_every: int = 5, save_every: int = 10, amp: bool = True,
        device: torch.device | str | None = None, resume: bool = True,
        overwrite: bool = False, progress: bool = True,
        callbacks: list[Callable[[int, dict], None]] | None = None,
        after_backward: Callable[[int], None] | None = None,
        final_metrics: Callable[[], dict] | None = None) -> TrainResult:
    """Train ``task`` for ``steps`` optimiser steps.

    Args:
        batch_fn: ``step -> batch``; must be a pure function of the step (resume relies on it).
        optimizer: built over ``task.param_groups()``; its state is checkpointed.
        checkpoint: final checkpoint path (``None`` = no files). Periodic resumable states go to
            :func:`resume_path` every ``save_every`` steps and are deleted when the run completes.
            The final file is a dict with ``state_dict, name, config, backbone, step, metrics``
            (what ``create_upsampler(name, weights=path)`` loads) plus ``aux_state``,
            ``optimizer``, ``rng``, ``history``, ``complete``.
        lr_lambda: multiplier on each group's initial lr per step (None = constant).
        grad_clip: ``step -> max grad norm or None`` (see :func:`clip_schedule`).
        amp: float16 autocast + GradScaler, used only when the device is CUDA.
        resume: continue from a matching resumable state if one exists.
        overwrite: retrain even if a complete final checkpoint with the same config exists
            (otherwise its weights are loaded and training is skipped).
        callbacks: called as ``cb(step, logs)`` after each step (a test interrupts runs here).
        after_backward: called as ``f(step)`` after backward, before the optimiser step (LoftUp
            stage 2 updates its EMA teacher there, as the reference script does).
        final_metrics: ``() -> dict`` evaluated at the end and stored in ``metrics``.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = torch.device(device) if device is not None else next(
        task.upsampler.parameters()).device
    use_amp = bool(amp) and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    config = config or {}
    aux = task.aux_modules()
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    path = Path(checkpoint) if checkpoint is not None else None
    history: list[dict[str, float]] = []
    start = 0
    t0 = time.perf_counter()

    def load_state(state: dict) -> None:
        task.upsampler.load_state_dict(state["state_dict"])
        for k, m in aux.items():
            if k in state.get("aux_state", {}):
                m.load_state_dict(state["aux_state"][k])
        if "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])
        if "scaler" in state and use_amp:
            scaler.load_state_dict(state["scaler"])

    if path is not None and path.exists() and not overwrite:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state.get("complete") and state.get("config") == config and state.get("step") == steps:
            load_state(state)
            return TrainResult(state.get("history", []), state.get("metrics", {}), path, 0.0,
                               skipped=True)
    if path is not None and resume and resume_path(path).exists():
        state = torch.load(resume_path(path), map_location="cpu", weights_only=False)
        if state.get("config") == config and state.get("name") == task.name:
            load_state(state)
            start = int(state["step"])
            history = [h for h in state.get("history", []) if h["step"] < start]
            print(f"resuming {task.name} from step {start} ({resume_path(path)})")

    def make_state(step: int, complete: bool, metrics: dict) -> dict:
        return {"state_dict": task.upsampler.state_dict(), "name": task.name, "config": config,
                "backbone": backbone_id, "step": step, "metrics": metrics,
                "aux_state": {k: m.state_dict() for k, m in aux.items()},
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": _rng_state(), "history": history, "complete": complete}

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=start, desc=f"train {task.name}", leave=False)
    task.upsampler.train()
    for m in aux.values():
        m.train()
    for step in range(start, steps):
        s = step_seed(seed, step)
        torch.manual_seed(s)
        np.random.seed(s % (2**32))
        random.seed(s)
        gen = torch.Generator().manual_seed(s)
        if lr_lambda is not None:
            for g, lr0 in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr0 * lr_lambda(step)
        batch = batch_fn(step)
        optimizer.zero_grad(set_to_none=True)
        manual = bool(getattr(task, "manual_backward", False))
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            if manual:
                losses = task.loss(batch, step, gen,
                                   backward=lambda part: scaler.scale(part).backward())
            else:
                losses = task.loss(batch, step, gen)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{task.name}: non-finite loss {loss.item()} at step {step}")
        if not manual:
            scaler.scale(loss).backward()
        if after_backward is not None:
            after_backward(step)
        clip = grad_clip(step) if grad_clip is not None else None
        if clip is not None:
            scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
        logs = {k: float(v.detach()) for k, v in losses.items()}
        logs["step"] = step
        logs["lr"] = optimizer.param_groups[0]["lr"]
        if step % log_every == 0 or step == steps - 1:
            history.append(logs)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{logs['loss']:.4g}")
        done = step + 1
        if path is not None and save_every and done % save_every == 0 and done < steps:
            atomic_torch_save(make_state(done, False, {"loss": logs["loss"]}), resume_path(path))
            _write_logs(path, history)
        for cb in callbacks or []:
            cb(step, logs)
    if bar is not None:
        bar.close()
    task.upsampler.eval()
    for m in aux.values():
        m.eval()
    metrics = {"final_loss": history[-1]["loss"] if history else float("nan"),
               "first_loss": history[0]["loss"] if history else float("nan"),
               "steps": steps, "seconds": time.perf_counter() - t0}
    if final_metrics is not None:
        metrics.update(final_metrics())
    if path is not None:
        atomic_torch_save(make_state(steps, True, metrics), path)
        _write_logs(path, history)
        if resume_path(path).exists():
            resume_path(path).unlink()
    return TrainResult(history, metrics, path, time.perf_counter() - t0, resumed_from=start)


def history_series(history: list[dict]) -> tuple[list[int], dict[str, list[float]]]:
    """Split a loss history into ``steps`` and ``{name: values}`` for ``viz.plot_losses``."""
    steps = [h["step"] for h in history]
    keys = [k for k in history[0] if k not in ("step", "lr")] if history else []
    return steps, {k: [h.get(k, float("nan")) for h in history] for k in keys}


def load_history(checkpoint: str | Path) -> list[dict]:
    """The loss history written beside a checkpoint (JSON log)."""
    return json.loads(log_paths(Path(checkpoint))[1].read_text())
