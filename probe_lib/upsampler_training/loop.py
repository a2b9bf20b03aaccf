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

from probe_lib.upsamplers.base import safe_torch_load
from probe_lib.utils import (
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    remove_orphan_tmp_files,
)

CHECKPOINT_KEYS = ("state_dict", "name", "config", "backbone", "step", "metrics")

# Saved-config keys (flattened "section.key") that cannot change the trained upsampler weights:
# the probe / evaluation / probe-training settings, which upsampler the probe would use, logging and
# checkpoint cadence (resume is exact whatever the cadence), the data folder's location, and the
# step count (compared separately: a longer run continues). Every other key defines the weights.
NON_DEFINING_PREFIXES = ("probe.", "eval.", "train.")
DEFINING_EXCEPTIONS = ("train.seed",)
NON_DEFINING_KEYS = ("steps", "upsampler.name", "upsampler.weights", "upsampler.frozen_bn_mode",
                     "upsampler.train_steps", "upsampler.featup_train_steps",
                     "upsampler.train_log_every", "upsampler.train_save_every", "data.root",
                     "data.train_dataset")


class CheckpointConflict(ValueError):
    """An existing checkpoint was trained with different weight-defining settings."""


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def defining_config(config: dict) -> dict[str, Any]:
    """The flattened config keys that define the trained weights (see ``NON_DEFINING_*``)."""
    return {k: v for k, v in _flatten(config).items()
            if k in DEFINING_EXCEPTIONS or not (k in NON_DEFINING_KEYS
                                                or k.startswith(NON_DEFINING_PREFIXES))}


def checkpoint_differences(state: dict, config: dict, name: str, backbone_id: str,
                           seed: int | None = None) -> list[str]:
    """``"key: saved ..., requested ..."`` for every weight-defining difference: task name,
    backbone weights id, the loop's seed (when saved) and :func:`defining_config`."""
    old = {"name": state.get("name"), "backbone": state.get("backbone"),
           **defining_config(state.get("config") or {})}
    new = {"name": name, "backbone": backbone_id, **defining_config(config)}
    if "seed" in state and seed is not None:
        old["seed"], new["seed"] = state["seed"], int(seed)

    def show(d: dict, k: str) -> str:
        return repr(d[k]) if k in d else "(absent)"

    return [f"{k}: saved {show(old, k)}, requested {show(new, k)}"
            for k in sorted(set(old) | set(new)) if k not in old or k not in new or old[k] != new[k]]


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
        overwrite: retrain from scratch, replacing the final checkpoint and discarding a
            resumable state whose settings differ. Without it: a finished checkpoint with the
            same weight-defining settings (:func:`defining_config`, backbone, name) is loaded
            (same ``steps``) or continued (more ``steps``); any other difference raises
            :class:`CheckpointConflict` naming the differing keys. A finished checkpoint is
            never replaced silently.
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

    def conflict(kind: str, file: Path, state: dict, diffs: list[str]) -> CheckpointConflict:
        return CheckpointConflict(
            f"{file}: the {kind} (step {state.get('step')}) was trained with different "
            f"weight-defining settings:\n  " + "\n  ".join(diffs) + "\nRefusing to "
            "replace it. Restore those values, or pass overwrite=True (notebooks/recipes: "
            "overwrite=True) to discard it and train from scratch.")

    final_state = resume_state = None
    if path is not None:
        remove_orphan_tmp_files(path.parent)
        if path.exists() and not overwrite:
            final_state = safe_torch_load(path, "upsampler training checkpoint")
            diffs = checkpoint_differences(final_state, config, task.name, backbone_id, seed)
            if diffs:
                raise conflict("finished checkpoint", path, final_state, diffs)
            if int(final_state.get("step", 0)) > steps:
                raise CheckpointConflict(
                    f"{path} was trained for {final_state.get('step')} steps, more than the "
                    f"{steps} requested: pass steps={final_state.get('step')} to load it, or "
                    "overwrite=True to retrain it with fewer steps.")
            if int(final_state.get("step", 0)) == steps:
                load_state(final_state)
                return TrainResult(final_state.get("history", []),
                                   final_state.get("metrics", {}), path, 0.0, skipped=True)
        if resume and resume_path(path).exists():
            resume_state = safe_torch_load(resume_path(path), "resumable training state")
            diffs = checkpoint_differences(resume_state, config, task.name, backbone_id, seed)
            if int(resume_state.get("step", 0)) > steps:
                diffs.append(f"steps: the state is at step {resume_state.get('step')}, "
                             f"beyond the {steps} requested")
            if diffs and not overwrite:
                raise conflict("resumable state", resume_path(path), resume_state, diffs)
            if diffs:
                print(f"overwrite=True: discarding {resume_path(path)} ({'; '.join(diffs)})")
                resume_state = None
    extended_from = list(final_state.get("extended_from", [])) if final_state else []
    best = max((st for st in (final_state, resume_state) if st is not None),
               key=lambda st: int(st.get("step", 0)), default=None)
    if best is not None:
        load_state(best)
        start = int(best["step"])
        history = [h for h in best.get("history", []) if h["step"] < start]
        extended_from = list(best.get("extended_from", extended_from))
        if best is final_state:
            extended_from.append(start)
            print(f"continuing {task.name} from its finished checkpoint at step {start} to "
                  f"{steps} steps ({path}); a step-dependent learning-rate schedule now spans "
                  f"{steps} steps")
        else:
            print(f"resuming {task.name} from step {start} ({resume_path(path)})")

    def make_state(step: int, complete: bool, metrics: dict) -> dict:
        return {"state_dict": task.upsampler.state_dict(), "name": task.name, "config": config,
                "backbone": backbone_id, "step": step, "metrics": metrics, "seed": int(seed),
                "aux_state": {k: m.state_dict() for k, m in aux.items()},
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "rng": _rng_state(), "history": history, "complete": complete,
                "extended_from": extended_from}

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
