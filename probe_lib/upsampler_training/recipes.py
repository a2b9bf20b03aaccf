"""One call per method: build data, objective and optimiser from a ``Config`` and train.

Sizes (S = ``cfg.upsampler.train_image_size``: 112 at ``small``, 224 at ``medium``/``full``):

| method | images | notes |
|---|---|---|
| LiFT | 2S (448 full), squash-resized | colour jitter 0.2; features cached only without jitter |
| FeatUp JBU | S | 5 jitters, backbone on each |
| LoftUp stage 1 | S | backbone features cached (``paper``); ``script`` adds 4 jitters |
| LoftUp stage 2 | T = 2S (small) / 896 | student at S (small), {224, 336} (paper) or {224, 336, 448, 518} (script) |
| FeatSharp | S·u | base + 5 homography views at S |

Checkpoints go to ``checkpoint_path("upsampler", name, cfg.preset)`` with names ``lift``,
``featup_jbu``, ``loftup_stage1``, ``loftup`` (after stage 2) and ``featsharp``; each loads with
``create_upsampler(<method>, weights=path)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probe_lib.utils import checkpoint_path, get_device, seed_everything

from .data import TrainingImages, heldout_synthetic, step_indices
from .evidence import boundary_scores
from .featsharp import FeatSharpTask, fit_phi_s_on_images
from .featup import FeatUpTask
from .lift import LiftTask, lift_features
from .loftup import LoftUpStage1Task, LoftUpStage2Task
from .loop import TrainResult, clip_schedule, fit, warmup_cosine


def _trainable(name: str, bb: nn.Module, cfg, init: str | Path | None = None,
               device=None, **extra: Any) -> nn.Module:
    from probe_lib.upsamplers import create_upsampler

    # the random initialisation (and every random draw after it: downsampler, data order) comes
    # from the config's seed, so the API gives the same weights in every process
    seed_everything(cfg.train.seed)
    kw = {"featup_channelnorm": cfg.upsampler.featup_channelnorm,
          "loftup_minmax_scope": cfg.upsampler.loftup_minmax_scope,
          "featsharp_factor": cfg.upsampler.featsharp_factor, **extra}
    up = create_upsampler(name, dim=bb.embed_dim, weights=str(init) if init else "random",
                          trainable=True, **kw)
    return up.to(device or get_device())


def _run(task, cfg, backbone, batch_fn: Callable[[int], Any], optimizer, ckpt_name: str, *,
         steps: int | None, checkpoint: str | Path | None, stage: str, overwrite: bool,
         progress: bool, callbacks=None, grad_clip=None, after_backward=None,
         lr_lambda=None) -> TrainResult:
    steps = int(steps or cfg.upsampler.train_steps)
    path = checkpoint_path("upsampler", ckpt_name, cfg.preset) if checkpoint is None else checkpoint
    config = {**cfg.to_dict(), "stage": stage, "steps": steps}
    return fit(task, batch_fn, steps=steps, optimizer=optimizer, checkpoint=path, config=config,
               backbone_id=getattr(backbone, "weights_id", "?"), seed=cfg.train.seed,
               log_every=max(1, min(cfg.upsampler.train_log_every, steps // 10 or 1)),
               save_every=cfg.upsampler.train_save_every, amp=cfg.upsampler.train_amp,
               device=next(task.upsampler.parameters()).device, overwrite=overwrite,
               progress=progress, callbacks=callbacks, grad_clip=grad_clip,
               after_backward=after_backward, lr_lambda=lr_lambda)


@torch.no_grad()
def _cache_features(fn: Callable[[torch.Tensor], Any], images: torch.Tensor, device,
                    chunk: int = 8) -> Any:
    outs = [fn(images[i:i + chunk].to(device)) for i in range(0, len(images), chunk)]
    if isinstance(outs[0], dict):
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    return torch.cat(outs)


def color_jitter(images: torch.Tensor, strength: float) -> torch.Tensor:
    """torchvision ``ColorJitter(strength, strength, strength, strength)`` drawn per image from
    the global RNG (which the loop re-seeds per step); (B, 3, H, W) [0, 1] -> same."""
    if strength <= 0:
        return images
    from torchvision.transforms import ColorJitter

    cj = ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=strength)
    return torch.stack([cj(x) for x in images])


def train_lift(cfg, backbone: nn.Module, *, steps: int | None = None, checkpoint=None,
               overwrite: bool = False, progress: bool = True, callbacks=None):
    """Train LiFT with its 2x multi-scale objective; returns ``(upsampler, TrainResult)``.

    Images are squash-resized to 2S (448 at paper scale) and colour-jittered with strength
    ``cfg.upsampler.lift_color_jitter`` (0.2 as ``train_lift.py --augment``). Backbone features
    are cached only when there is no jitter (0) and the set is small.
    """
    device = next(backbone.parameters()).device
    up = _trainable("lift", backbone, cfg, device=device)
    data = TrainingImages(cfg, 2 * cfg.upsampler.train_image_size, resize="squash")
    bs = cfg.upsampler.train_batch_size
    jitter = float(cfg.upsampler.lift_color_jitter)
    if data.cache and jitter == 0:
        feats = _cache_features(lambda x: lift_features(backbone, x), data.all_images(), device)

        def batch_fn(step):
            idx = step_indices(step, len(data), bs, cfg.train.seed)
            return {k: v[idx] for k, v in feats.items()}
    else:
        def batch_fn(step):
            # the loop seeds the global RNG from (seed, step) before calling this
            images = color_jitter(data.batch(step, bs)["image"], jitter)
            return lift_features(backbone, images.to(device))
    task = LiftTask(up, lr=cfg.upsampler.train_lr or 1e-3)
    opt = torch.optim.Adam(task.param_groups())
    res = _run(task, cfg, backbone, batch_fn, opt, "lift", steps=steps, checkpoint=checkpoint,
               stage="lift", overwrite=overwrite, progress=progress, callbacks=callbacks)
    return up.eval(), res


def train_featup(cfg, backbone: nn.Module, *, steps: int | None = None, checkpoint=None,
                 overwrite: bool = False, progress: bool = True, callbacks=None,
                 n_jitters: int | None = None, crf_weight: float = 0.001, tv_weight: float = 0.0):
    """Train the FeatUp JBU stack by multi-view reconstruction (NAdam 1e-3, clip 1e-4 for 10
    steps); returns ``(upsampler, TrainResult)``. ``n_jitters`` defaults to
    ``cfg.upsampler.featup_jitters`` (5 as FeatUp; 2 at ``small`` to fit the CPU budget)."""
    n_jitters = n_jitters or cfg.upsampler.featup_jitters
    steps = steps or cfg.upsampler.featup_train_steps
    device = next(backbone.parameters()).device
    up = _trainable("featup_jbu", backbone, cfg, device=device)
    data = TrainingImages(cfg, cfg.upsampler.train_image_size)
    bs = cfg.upsampler.train_batch_size
    task = FeatUpTask(up, backbone, n_jitters=n_jitters, lr=cfg.upsampler.train_lr or 1e-3,
                      crf_weight=crf_weight, tv_weight=tv_weight)
    opt = torch.optim.NAdam(task.param_groups())
    res = _run(task, cfg, backbone, lambda s: data.batch(s, bs)["image"].to(device), opt,
               "featup_jbu", steps=steps, checkpoint=checkpoint, stage="featup",
               overwrite=overwrite, progress=progress, callbacks=callbacks,
               grad_clip=clip_schedule(1e-4, 10, None))
    return up.eval(), res


def train_loftup_stage1(cfg, backbone: nn.Module, *, steps: int | None = None, checkpoint=None,
                        overwrite: bool = False, progress: bool = True, callbacks=None,
                        alpha: float = 0.8):
    """LoftUp stage 1 with ``cfg.upsampler.loftup_recipe``; saved as ``loftup_stage1``.

    ``alpha`` 0.8 is the script's value, borrowed by the ``paper`` recipe (paper: illegible).
    """
    device = next(backbone.parameters()).device
    up = _trainable("loftup", backbone, cfg, device=device)
    recipe = cfg.upsampler.loftup_recipe
    data = TrainingImages(cfg, cfg.upsampler.train_image_size, with_masks=True)
    bs = cfg.upsampler.train_batch_size
    feats = None
    if data.cache and recipe == "paper":
        feats = _cache_features(backbone, data.all_images(), device)

    def batch_fn(step):
        b = data.batch(step, bs)
        out = {"image": b["image"].to(device), "masks": b["masks"].to(device)}
        if feats is not None:
            out["feats"] = feats[step_indices(step, len(data), bs, cfg.train.seed)]
        return out

    task = LoftUpStage1Task(up, backbone, recipe=recipe, alpha=alpha, lr=cfg.upsampler.train_lr,
                            out_scale=cfg.upsampler.loftup_train_out_scale)
    res = _run(task, cfg, backbone, batch_fn, task.make_optimizer(), "loftup_stage1", steps=steps,
               checkpoint=checkpoint, stage="loftup_stage1", overwrite=overwrite,
               progress=progress, callbacks=callbacks,
               grad_clip=clip_schedule(1e-4, 10, None) if recipe == "script" else None)
    return up.eval(), res


def train_loftup_stage2(cfg, backbone: nn.Module, init: str | Path | None = None, *,
                        steps: int | None = None, checkpoint=None, overwrite: bool = False,
                        progress: bool = True, callbacks=None, alpha: float = 0.5):
    """LoftUp stage 2 (EMA self-distillation) from the stage 1 checkpoint ``init`` (default:
    ``loftup_stage1-<preset>.pt``); saved as ``loftup``. Returns ``(student, TrainResult)``."""
    device = next(backbone.parameters()).device
    init = Path(init) if init else checkpoint_path("upsampler", "loftup_stage1", cfg.preset)
    if not init.is_file():
        raise FileNotFoundError(f"LoftUp stage 2 starts from a stage 1 checkpoint; {init} is "
                                "missing: run train_loftup_stage1 (notebook 06) first")
    up = _trainable("loftup", backbone, cfg, init=init, device=device)
    s = cfg.upsampler.train_image_size
    recipe = cfg.upsampler.loftup_recipe
    paper_scale = cfg.preset != "small"
    teacher_size = 896 if paper_scale else 2 * s
    # paper: the student sees 224 or 336; the script draws from {224, 336, 448, 518}
    sizes = (224, 336) if recipe == "paper" else (224, 336, 448, 518)
    student_sizes = sizes if paper_scale else (s,)
    data = TrainingImages(cfg, teacher_size, with_masks=True)
    bs = cfg.upsampler.train_batch_size
    task = LoftUpStage2Task(up, backbone, recipe=recipe, student_sizes=student_sizes, alpha=alpha,
                            lr=cfg.upsampler.train_lr,
                            out_scale=cfg.upsampler.loftup_train_out_scale)

    def batch_fn(step):
        b = data.batch(step, bs)
        return {"image": b["image"].to(device), "masks": b["masks"].to(device)}

    res = _run(task, cfg, backbone, batch_fn, task.make_optimizer(), "loftup", steps=steps,
               checkpoint=checkpoint, stage="loftup_stage2", overwrite=overwrite,
               progress=progress, callbacks=callbacks, after_backward=task.after_backward,
               grad_clip=clip_schedule(1e-4, 10, None) if recipe == "script" else None)
    res.extra["teacher"] = task.teacher
    return up.eval(), res


def train_featsharp(cfg, backbone: nn.Module, *, steps: int | None = None, checkpoint=None,
                    overwrite: bool = False, progress: bool = True, callbacks=None,
                    n_views: int = 5):
    """FeatSharp multi-view training: PHI-S fitted on the training images first, then NAdam 5e-4
    (JBU 1e-4) with 100 warm-up steps (a tenth of the run at ``small``) and cosine decay, clip 1e-4
    for 10 steps then 5.0. Returns ``(upsampler, TrainResult)``; the module is built with
    ``resolution = train_image_size`` and ``featsharp_factor``."""
    device = next(backbone.parameters()).device
    r, u = cfg.upsampler.train_image_size, cfg.upsampler.featsharp_factor
    up = _trainable("featsharp", backbone, cfg, device=device, backbone=backbone, resolution=r)
    data = TrainingImages(cfg, r * u)
    bs = cfg.upsampler.train_batch_size
    steps = int(steps or cfg.upsampler.train_steps)
    lr_views = torch.nn.functional.interpolate(data.all_images() if data.cache else
                                               data.batch(0, 64)["image"], size=(r, r),
                                               mode="bilinear", antialias=True,
                                               align_corners=False)
    phis = fit_phi_s_on_images(up, backbone, lr_views)
    lr = cfg.upsampler.train_lr or 5e-4
    task = FeatSharpTask(up, backbone, n_views=n_views, lr=lr, jbu_lr=lr / 5)
    opt = torch.optim.NAdam(task.param_groups())
    res = _run(task, cfg, backbone, lambda s: data.batch(s, bs)["image"].to(device), opt,
               "featsharp", steps=steps, checkpoint=checkpoint, stage="featsharp",
               overwrite=overwrite, progress=progress, callbacks=callbacks,
               grad_clip=clip_schedule(1e-4, 10, 5.0),
               lr_lambda=warmup_cosine(min(100, max(1, steps // 10)), steps))
    res.metrics.update(phis)
    return up.eval(), res


@torch.no_grad()
def evaluate_boundaries(upsamplers: dict[str, nn.Module], backbone: nn.Module, cfg,
                        n_images: int = 8, size: int | None = None,
                        labels: str = "parts") -> dict[str, dict[str, float]]:
    """Evidence scores of each upsampler's output on held-out synthetic images.

    For every name -> module: features = module(backbone(image), image) at the image size S, then
    :func:`~probe_lib.upsampler_training.evidence.boundary_scores` against the exact ``labels``
    (``"parts"`` = the regions that stand in for SAM masks, or ``"instances"``).
    Returns ``{name: {"variance_ratio", "boundary_recall"}}``.
    """
    size = size or cfg.upsampler.train_image_size
    held = heldout_synthetic(cfg, size, n_images)
    device = next(backbone.parameters()).device
    img = held["image"].to(device)
    feats = torch.cat([backbone(img[i:i + 4]) for i in range(0, len(img), 4)])
    out = {}
    for name, up in upsamplers.items():
        up.eval()
        hr = torch.cat([up(feats[i:i + 2], img[i:i + 2], output_size=(size, size)).cpu()
                        for i in range(0, len(img), 2)])
        out[name] = boundary_scores(hr, held[labels])
    return out


@torch.no_grad()
def heldout_stage2_loss(student: nn.Module, teacher: nn.Module, backbone: nn.Module, cfg,
                        n_images: int = 8, alpha: float = 0.5) -> float:
    """LoftUp stage-2 affinity loss of ``student`` against a fixed ``teacher`` on held-out images.

    Same construction as a ``paper`` training step (teacher on 2 crops of size S of the 2S image,
    mask-refined with ``alpha`` by the exact part masks; student on the whole image at S), on the
    first ``n_images`` val-split synthetic images, with crops drawn from fixed seeds and both
    modules in eval mode, so two students are compared on the same inputs and targets (per-step
    training losses are not: each step has its own images and crops). Returns the mean loss.
    """
    from .data import pad_masks

    s = cfg.upsampler.train_image_size
    device = next(backbone.parameters()).device
    held = heldout_synthetic(cfg, 2 * s, n_images)
    parts = held["parts"]
    masks = pad_masks([torch.stack([parts[i] == k for k in parts[i].unique() if k > 0])
                       if bool((parts[i] > 0).any()) else torch.zeros(0, 2 * s, 2 * s, dtype=bool)
                       for i in range(len(parts))])
    with torch.random.fork_rng(devices=[]):  # the task's unused heads draw from the global RNG
        task = LoftUpStage2Task(student, backbone, recipe="paper", student_sizes=(s,),
                                alpha=alpha, out_scale=cfg.upsampler.loftup_train_out_scale)
    task.ema.teacher = teacher  # fixed target (no EMA update happens here)
    was_training = student.training, teacher.training
    student.eval(), teacher.eval()
    losses = [task.loss({"image": held["image"][i:i + 1].to(device),
                         "masks": masks[i:i + 1].to(device)}, 0,
                        torch.Generator().manual_seed(i))["affinity"]
              for i in range(len(parts))]
    student.train(was_training[0]), teacher.train(was_training[1])
    return float(torch.stack(losses).mean())


# What a notebook that only *shows* an upsampler (04 LoftUp, 05 FeatSharp) trains when the
# training notebooks (06/07, 08) have not run yet: the method's first stage, a few steps.
_TINY = {"loftup": train_loftup_stage1, "featsharp": train_featsharp}


def train_tiny(name: str, cfg, backbone: nn.Module, steps: int = 10, progress: bool = False,
               **load_kw: Any) -> tuple[nn.Module, TrainResult]:
    """A tiny, clearly labelled training run of ``name`` so that a notebook read in order (01 ->
    12) shows a briefly trained model instead of random weights.

    Runs ``steps`` steps of the method's recipe at ``cfg`` (LoftUp: stage 1 only; FeatSharp: its
    multi-view objective) and saves them as ``<name>_tiny-<preset>.pt`` in the checkpoint cache,
    *never* as ``<name>-<preset>.pt``: the real checkpoint of notebooks 06/07/08 (and the sweep's
    check for it) is not shadowed. Returns ``(upsampler, TrainResult)``; the upsampler is loaded
    back from that file with ``load_kw`` (e.g. ``minmax_scope=``, ``featsharp_factor=``; FeatSharp
    gets ``backbone``), so its ``weights_id`` names the tiny checkpoint and its step count.
    """
    from probe_lib.upsamplers import create_upsampler

    if name not in _TINY:
        raise ValueError(f"train_tiny: name={name!r} has no tiny recipe; valid: "
                         + ", ".join(sorted(_TINY)))
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"train_tiny: steps must be a positive int, got {steps!r}")
    path = checkpoint_path("upsampler", f"{name}_tiny", cfg.preset)
    _, res = _TINY[name](cfg, backbone, steps=steps, checkpoint=path, overwrite=True,
                         progress=progress)
    device = next(backbone.parameters()).device
    if name == "featsharp":  # it runs the backbone on its tiles
        load_kw["backbone"] = backbone
    up = create_upsampler(name, dim=backbone.embed_dim, weights=path, **load_kw)
    return up.to(device).eval(), res
