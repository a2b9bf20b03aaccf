"""LoftUp's two training stages (LoftUp, arXiv 2504.14032).

Stage 1 (mask-refined pseudo-GT). Bicubic upsampling gives blurry but correct features; SAM-style
class-agnostic masks know where the edges are. Pull every pixel of each mask towards the mask's
mean feature,

    F[:, m] <- (1 - alpha) F[:, m] + alpha mean_m(F)      for each mask m in order (later masks win),

and regress the upsampler onto the result. ``paper`` recipe: plain MSE, AdamW 1e-3. ``script``
recipe: MSE in a random 64-d projection + a FeatUp-style reconstruction term over 4 light jitters
+ 0.001 TV, NAdam 1e-4.

Stage 2 (self-distillation). A teacher = EMA of the student (decay 0.99, every 10 steps, started
from stage 1) looks at crops of a larger image, so each of its pixels sees more backbone tokens;
its mask-refined output (alpha 0.5) supervises the matching region of the student's output through
an affinity-matrix loss (pairwise cosine similarities, 10 % border dropped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .downsampler import AttentionDownsampler, ScaleNet
from .ema import EMA
from .featup import (
    feature_norm,
    project,
    random_projection,
    total_variation,
    uncertainty_reconstruction_loss,
)
from .views import apply_loftup_jitter, sample_loftup_jitter

RECIPES = ("paper", "script")


def _check_masks(masks, feats: torch.Tensor, what: str = "LoftUp stage 1") -> torch.Tensor:
    if masks is None:
        raise ValueError(f"{what} needs class-agnostic masks (SA-1B / synthetic part masks): got "
                         "masks=None. Use SA1BDataset (or ensure_synthetic()'s SA1B layout).")
    if not isinstance(masks, torch.Tensor) or masks.ndim != 4:
        raise ValueError(f"{what}: masks must be a (B, M, H, W) tensor (bool, or int with -1 "
                         f"padding masks), got {getattr(masks, 'shape', type(masks))}")
    b, _, h, w = feats.shape
    if masks.shape[0] != b or tuple(masks.shape[-2:]) != (h, w):
        raise ValueError(f"{what}: masks {tuple(masks.shape)} do not match features "
                         f"{tuple(feats.shape)} (need B={b} and H, W = {(h, w)})")
    return masks


def mask_refine(feats: torch.Tensor, masks: torch.Tensor, alpha: float) -> torch.Tensor:
    """Mask-refined features (LoftUp, arXiv 2504.14032), sequential over masks on the running map.

    Args:
        feats: (B, C, H, W) float, e.g. bicubic-upsampled low-res features.
        masks: (B, M, H, W) bool, or int/float with 1 inside, 0 outside and masks whose values are
            all negative (-1 padding, LoftUp's loader pads to 150) skipped; empty masks skipped.
        alpha: pull strength in [0, 1] (0 = unchanged, 1 = each mask becomes its mean).
    Returns:
        (B, C, H, W), a new tensor.
    """
    masks = _check_masks(masks, feats, "mask_refine")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    out = feats.clone()
    for m in range(masks.shape[1]):
        mk = masks[:, m]
        padding = (mk < 0).flatten(1).all(1) if mk.dtype != torch.bool else None
        sel = (mk > 0).to(feats.dtype)[:, None]  # B,1,H,W
        area = sel.flatten(1).sum(1)
        use = area > 0
        if padding is not None:
            use = use & ~padding
        if not bool(use.any()):
            continue
        mean = (out * sel).flatten(2).sum(2) / area.clamp_min(1)[:, None]  # B,C
        upd = out + alpha * sel * (mean[:, :, None, None] - out)
        out = torch.where(use[:, None, None, None], upd, out)
    return out


def has_valid_masks(masks: torch.Tensor) -> torch.Tensor:
    """(B,) bool: whether each sample has at least one non-padding, non-empty mask."""
    return (masks > 0).flatten(2).any(2).any(1)


def pseudo_ground_truth(lr_feats: torch.Tensor, masks: torch.Tensor, size: tuple[int, int],
                        alpha: float = 0.8) -> torch.Tensor:
    """Stage 1 target: bicubic (align_corners=False) ``lr_feats`` (B, C, h, w) to ``size``, then
    :func:`mask_refine` with ``masks`` (B, M, *size). Raises ValueError when masks are missing."""
    up = F.interpolate(lr_feats, size=size, mode="bicubic", align_corners=False)
    _check_masks(masks, up)
    if not bool(has_valid_masks(masks).any()):
        raise ValueError("LoftUp stage 1: no sample in the batch has a non-empty mask; the "
                         "pseudo ground truth would be plain bicubic features")
    return mask_refine(up, masks, alpha)


def affinity_loss(student: torch.Tensor, teacher: torch.Tensor, border: float = 0.1) -> torch.Tensor:
    """mean((A_s - A_t)^2), A = X^T X of L2-normalised pixels after dropping a ``border`` fraction
    on every side (LoftUp, arXiv 2504.14032). student, teacher (B, C, H, W) of equal shape.

    Computed through C x C Gram matrices, ||X_s^T X_s - X_t^T X_t||^2 = ||X_s X_s^T||^2
    - 2 ||X_s X_t^T||^2 + ||X_t X_t^T||^2, so memory is O(C^2), not O((HW)^2); equal to
    :func:`affinity_loss_naive` up to rounding.
    """
    xs, xt = _affinity_inputs(student, teacher, border)
    n = xs.shape[-1]
    gss = torch.bmm(xs, xs.transpose(1, 2)).double()
    gst = torch.bmm(xs, xt.transpose(1, 2)).double()
    gtt = torch.bmm(xt, xt.transpose(1, 2)).double()
    val = (gss.pow(2).sum((1, 2)) - 2 * gst.pow(2).sum((1, 2)) + gtt.pow(2).sum((1, 2)))
    return (val.clamp_min(0).sum() / (xs.shape[0] * n * n)).to(student.dtype)


def affinity_loss_naive(student: torch.Tensor, teacher: torch.Tensor,
                        border: float = 0.1) -> torch.Tensor:
    """Reference implementation of :func:`affinity_loss` that builds the (HW x HW) matrices."""
    xs, xt = _affinity_inputs(student, teacher, border)
    a_s = xs.transpose(1, 2) @ xs
    a_t = xt.transpose(1, 2) @ xt
    return ((a_s - a_t) ** 2).mean()


def _affinity_inputs(student, teacher, border):
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
                         "must have the same shape")
    h, w = student.shape[-2:]
    bh, bw = int(h * border), int(w * border)
    out = []
    for x in (student, teacher):
        x = x[..., bh:h - bh, bw:w - bw].flatten(2)  # B,C,n
        out.append(x / (x.norm(dim=1, keepdim=True) + 1e-6))
    return out


def crop_boxes(gen: torch.Generator, big: int, crop: int, n: int, snap: int = 16
               ) -> list[tuple[int, int]]:
    """``n`` (top, left) offsets of ``crop`` x ``crop`` windows in a ``big`` x ``big`` image,
    snapped to multiples of ``snap`` (LoftUp script)."""
    if crop > big:
        raise ValueError(f"crop {crop} larger than the image {big}")
    slots = (big - crop) // snap + 1
    return [tuple(int(v) * snap for v in torch.randint(0, slots, (2,), generator=gen))
            for _ in range(n)]


def _check_scale(out_scale: float, patch: int) -> float:
    k = patch * out_scale
    if not 0 < out_scale <= 1 or abs(k - round(k)) > 1e-6:
        raise ValueError(f"out_scale must be in (0, 1] with patch_size * out_scale an integer "
                         f"(patch {patch}), got {out_scale}")
    return float(out_scale)


def _guidance(images: torch.Tensor, masks, out_scale: float):
    """Guidance image (and masks) at ``out_scale`` x the backbone input: LoftUp outputs at the
    guidance size, so a smaller guidance makes a cheaper output grid (``small`` uses 0.5; the
    recipe uses 1)."""
    if out_scale == 1.0:
        return images, masks
    size = (round(images.shape[-2] * out_scale), round(images.shape[-1] * out_scale))
    guide = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)
    if isinstance(masks, torch.Tensor) and masks.ndim == 4:
        masks = F.interpolate(masks.float(), size=size, mode="nearest").to(masks.dtype)
    return guide, masks


class LoftUpStage1Task:
    """LoftUp stage 1 for :func:`~probe_lib.upsampler_training.loop.fit`.

    Batches: dict with ``image`` (B, 3, S, S) RGB [0, 1], ``masks`` (B, M, S, S) (bool, or int8
    with -1 padding), optional cached ``feats`` (B, C, S/p, S/p) raw backbone features.
    ``out_scale`` < 1 trains on a guidance image (and output grid) of side ``out_scale * S``
    (teaching-scale economy; pseudo-GT and masks follow).
    """

    name = "loftup"

    def __init__(self, upsampler: nn.Module, backbone: nn.Module, recipe: str = "paper",
                 alpha: float = 0.8, lr: float | None = None, proj_dim: int = 64,
                 n_jitters: int = 4, tv_weight: float = 0.001, out_scale: float = 1.0):
        if recipe not in RECIPES:
            raise ValueError(f"loftup_recipe must be one of {RECIPES}, got {recipe!r}")
        self.upsampler, self.backbone, self.recipe = upsampler, backbone, recipe
        self.alpha = alpha
        self.lr = lr if lr is not None else (1e-3 if recipe == "paper" else 1e-4)
        self.norm = feature_norm(upsampler)
        for p in self.norm.parameters():
            p.requires_grad_(False)
        self.proj_dim, self.n_jitters, self.tv_weight = proj_dim, n_jitters, tv_weight
        self.out_scale = _check_scale(out_scale, backbone.patch_size)
        dim = backbone.embed_dim
        self.downsampler = AttentionDownsampler(
            dim, kernel=round(backbone.patch_size * out_scale), blur="box")
        self.downsampler.to(next(upsampler.parameters()).device)

    def make_optimizer(self) -> torch.optim.Optimizer:
        """``paper``: AdamW 1e-3; ``script``: NAdam 1e-4 (andrehuang/loftup training branch)."""
        cls = torch.optim.AdamW if self.recipe == "paper" else torch.optim.NAdam
        return cls(self.param_groups())

    def aux_modules(self) -> dict[str, nn.Module]:
        return {"downsampler": self.downsampler} if self.recipe == "script" else {}

    def param_groups(self) -> list[dict]:
        params = [p for p in self.upsampler.parameters() if p.requires_grad]
        if self.recipe == "script":
            params += list(self.downsampler.parameters())
        return [{"params": params, "lr": self.lr}]

    def loss(self, batch: dict, step: int, gen: torch.Generator) -> dict:
        images = batch["image"]
        masks = batch.get("masks")
        with torch.no_grad():
            lr_raw = batch["feats"] if batch.get("feats") is not None else self.backbone(images)
        guide, masks = _guidance(images, masks, self.out_scale)
        with torch.no_grad():
            pgt = pseudo_ground_truth(self.norm(lr_raw), masks, guide.shape[-2:], self.alpha)
        hr = self.upsampler(lr_raw, guide)
        if self.recipe == "paper":
            mse = F.mse_loss(hr, pgt)
            return {"loss": mse, "pgt_mse": mse}
        # As train_loftup_stage1.py: a fresh projection per jitter; the pseudo-GT term uses the
        # last jitter's projection, TV the first jitter's. (The script also re-runs the
        # upsampler per jitter; LoftUp has no dropout, so one forward gives the same values and
        # gradients.)
        rec = hr.new_zeros(())
        tv = hr.new_zeros(())
        proj = None
        for j in range(self.n_jitters):
            jit = sample_loftup_jitter(gen)
            img_j, hr_j = apply_loftup_jitter(images, jit), apply_loftup_jitter(hr, jit)
            with torch.no_grad():
                target = self.norm(self.backbone(img_j))
            proj = random_projection(images.shape[0], hr.shape[1], self.proj_dim, gen,
                                     hr.device, hr.dtype)
            down = self.downsampler(hr_j)
            rec = rec + (F.mse_loss(project(down, proj), project(target, proj))
                         / self.n_jitters).clamp_min(0)
            if j == 0:
                tv = total_variation(project(hr_j, proj).pow(2).sum(1, keepdim=True))
        mse = F.mse_loss(project(hr, proj), project(pgt, proj))
        total = mse + rec + self.tv_weight * tv
        return {"loss": total, "pgt_mse": mse, "rec": rec, "tv": tv}


class LoftUpStage2Task:
    """LoftUp stage 2 (EMA self-distillation) for :func:`~probe_lib.upsampler_training.loop.fit`.

    Batches: dict with ``image`` (B, 3, T, T) at the teacher's size T (896 in the recipe, 2x the
    student size at ``small``) and ``masks`` (B, M, T, T). The student sees the whole image resized
    to s (drawn from ``student_sizes``); the teacher sees ``n_crops`` crops of size s of the T-image.

    Loss per recipe: ``paper`` = mean_j affinity_j; ``script`` (``train_loftup_stage2.py``) =
    sum_j rec_j + 0.05 TV(raw hr, first jitter) + 20 mean_j affinity_j, where rec_j is the
    FeatUp-style uncertainty loss in a fresh ``proj_dim``-d (64) random projection, on one LoftUp
    jitter of the student image that is *not* resized back (a larger or smaller view, so more or
    fewer tokens), divided by the number of jitters and clamped >= 0. The student image is the
    teacher image downscaled with plain bilinear interpolation (no antialias), as the script.
    The EMA teacher is updated by :meth:`after_backward`.
    """

    name = "loftup"

    def __init__(self, upsampler: nn.Module, backbone: nn.Module, recipe: str = "paper",
                 student_sizes: tuple[int, ...] = (224,), alpha: float = 0.5,
                 ema_decay: float = 0.99, ema_every: int = 10, n_crops: int = 2,
                 lr: float | None = None, border: float = 0.1, affinity_size: int | None = None,
                 out_scale: float = 1.0, proj_dim: int = 64):
        if recipe not in RECIPES:
            raise ValueError(f"loftup_recipe must be one of {RECIPES}, got {recipe!r}")
        self.upsampler, self.backbone, self.recipe = upsampler, backbone, recipe
        self.student_sizes, self.alpha, self.n_crops, self.border = student_sizes, alpha, n_crops, border
        self.affinity_size, self.proj_dim = affinity_size, proj_dim
        self.lr = lr if lr is not None else (1e-4 if recipe == "paper" else 1e-3)
        self.norm = feature_norm(upsampler)
        for p in self.norm.parameters():
            p.requires_grad_(False)
        self.ema = EMA(upsampler, ema_decay, ema_every)
        self.out_scale = _check_scale(out_scale, backbone.patch_size)
        dim = backbone.embed_dim
        dev = next(upsampler.parameters()).device
        self.downsampler = AttentionDownsampler(
            dim, kernel=round(backbone.patch_size * out_scale), blur="box").to(dev)
        self.scale_net = ScaleNet(dim).to(dev)
        self.weights = ({"rec": 0.0, "tv": 0.0, "aff": 1.0} if recipe == "paper"
                        else {"rec": 1.0, "tv": 0.05, "aff": 20.0})

    @property
    def teacher(self) -> nn.Module:
        return self.ema.teacher

    def make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW, 1e-4 (``paper``) or 1e-3 (``script``)."""
        return torch.optim.AdamW(self.param_groups())

    def aux_modules(self) -> dict[str, nn.Module]:
        aux = {"teacher": self.ema.teacher}
        if self.recipe == "script":
            aux.update(downsampler=self.downsampler, scale_net=self.scale_net)
        return aux

    def param_groups(self) -> list[dict]:
        params = [p for p in self.upsampler.parameters() if p.requires_grad]
        if self.recipe == "script":
            params += list(self.downsampler.parameters()) + list(self.scale_net.parameters())
        return [{"params": params, "lr": self.lr}]

    def after_backward(self, step: int) -> None:
        """EMA update after backward, before the optimiser step (as the reference script)."""
        self.ema.update(self.upsampler, step)

    @torch.no_grad()
    def teacher_targets(self, big: torch.Tensor, masks: torch.Tensor, s: int,
                        boxes: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Teacher output on each crop (top, left) of size s of ``big`` (B, 3, T, T), mask-refined
        with alpha and resized to the crop's footprint in the student's s x s output."""
        self.ema.teacher.eval()
        t_size = big.shape[-1]
        o = round(s * self.out_scale)  # the student's output side
        r = max(1, round(s * o / t_size))
        outs = []
        for top, left in boxes:
            crop = big[..., top:top + s, left:left + s]
            guide, m = _guidance(crop, masks[..., top:top + s, left:left + s], self.out_scale)
            out = self.ema.teacher(self.backbone(crop), guide)
            if self.alpha > 0 and bool(has_valid_masks(m).any()):
                out = mask_refine(out, m, self.alpha)
            outs.append(F.interpolate(out, size=(r, r), mode="bilinear", align_corners=False))
        return outs

    def _aff(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.affinity_size and a.shape[-1] > self.affinity_size:
            size = (self.affinity_size, self.affinity_size)
            a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            b = F.interpolate(b, size=size, mode="bilinear", align_corners=False)
        return affinity_loss(a, b, self.border)

    def loss(self, batch: dict, step: int, gen: torch.Generator) -> dict:
        big, masks = batch["image"], batch.get("masks")
        _check_masks(masks, big[:, :1], "LoftUp stage 2")
        t_size = big.shape[-1]
        s = self.student_sizes[int(torch.randint(len(self.student_sizes), (1,), generator=gen))]
        boxes = crop_boxes(gen, t_size, s, self.n_crops)
        targets = self.teacher_targets(big, masks, s, boxes)
        small = F.interpolate(big, size=(s, s), mode="bilinear", align_corners=False)
        with torch.no_grad():
            lr_raw = self.backbone(small)
        guide, _ = _guidance(small, None, self.out_scale)
        hr = self.upsampler(lr_raw, guide)
        o = hr.shape[-1]
        aff = []
        for (top, left), tgt in zip(boxes, targets):
            r = tgt.shape[-1]
            y0, x0 = round(top * o / t_size), round(left * o / t_size)
            y0, x0 = min(y0, o - r), min(x0, o - r)
            aff.append(self._aff(hr[..., y0:y0 + r, x0:x0 + r], tgt))
        aff_mean = torch.stack(aff).mean()
        rec = hr.new_zeros(())
        tv = hr.new_zeros(())
        if self.weights["rec"] > 0:
            p = self.backbone.patch_size
            for j in range(self.n_crops):
                jit = sample_loftup_jitter(gen)
                img_j = apply_loftup_jitter(small, jit, resize_back=False, multiple=p)
                hr_j = apply_loftup_jitter(hr, jit, resize_back=False,
                                           multiple=self.downsampler.kernel)
                with torch.no_grad():
                    target = self.norm(self.backbone(img_j))
                down = self.downsampler(hr_j)
                hh = min(down.shape[-2], target.shape[-2])
                ww = min(down.shape[-1], target.shape[-1])
                down, target = down[..., :hh, :ww], target[..., :hh, :ww]
                proj = random_projection(small.shape[0], hr.shape[1], self.proj_dim, gen,
                                         hr.device, hr.dtype)
                rec = rec + (uncertainty_reconstruction_loss(
                    project(down, proj), project(target, proj), self.scale_net(target))
                    / self.n_crops).clamp_min(0)
                if j == 0:
                    tv = total_variation(hr)
        total = (self.weights["aff"] * aff_mean + self.weights["rec"] * rec
                 + self.weights["tv"] * tv)
        return {"loss": total, "affinity": aff_mean, "rec": rec, "tv": tv}
