"""FeatUp's multi-view reconstruction objective for the JBU stack (SPEC §7.2).

Idea: a good high-res map ``hr`` of image I must explain the backbone's low-res features of every
small jitter t(I) of the image. A learned attention downsampler ``down`` plays the backbone's role
of pooling 14x14 pixels into one token, so

    rec_j = mean[ (P_j down(t_j(hr)) - P_j norm(f(t_j(I))))^2 / (2 s^2) + log s ],

with P_j a fresh random 30-d projection (Gaussian, unit-norm columns) per jitter and sample,
``s`` a predicted per-token uncertainty (``ScaleNet``) that lets the loss shrug off tokens the
backbone itself is unsure about, and the loss averaged over the 5 jitters. An optional CRF term
pulls features of nearby, similarly coloured pixels together, and a TV term (weight 0 in the
recipe, kept for completeness) penalises roughness.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .downsampler import AttentionDownsampler, ScaleNet
from .views import apply_featup_jitter, sample_featup_jitter


def random_projection(batch: int, dim: int, out_dim: int, gen: torch.Generator,
                      device=None, dtype=torch.float32) -> torch.Tensor:
    """(batch, dim, out_dim) Gaussian projections whose columns have unit L2 norm."""
    p = torch.randn(batch, dim, out_dim, generator=gen, dtype=torch.float32)
    p = p / p.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return p.to(device=device, dtype=dtype)


def project(x: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) x (B, C, D) -> (B, D, H, W)."""
    return torch.einsum("bchw,bcd->bdhw", x, proj)


def uncertainty_reconstruction_loss(pred: torch.Tensor, target: torch.Tensor,
                                    scale: torch.Tensor) -> torch.Tensor:
    """mean over (b, d, y, x) of (pred - target)^2 / (2 s^2) + log s.

    pred, target (B, D, h, w); scale s (B, 1, h, w) > 0, broadcast over D.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return ((pred - target) ** 2 / (2 * scale**2) + torch.log(scale)).mean()


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertical and horizontal neighbours, (B, C, H, W) -> scalar."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean()
            + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


def crf_loss(feats: torch.Tensor, image: torch.Tensor, gen: torch.Generator,
             n_samples: int = 1000) -> torch.Tensor:
    """FeatUp's dense-CRF-style smoothness on ``n_samples`` random pixels per image.

    Kernel between pixels i, j: 10 exp(-|dp|^2 / 0.2 - |dI|^2 / 0.3) + 3 exp(-|dp|^2 / 0.01), with
    positions in normalised [-1, 1] coordinates and colours in [0, 1]; energy = mean over pairs of
    kernel x mean squared feature difference (our reading; SPEC gives only the kernel).
    feats (B, C, H, W), image (B, 3, H, W) of the same size.
    """
    b, c, h, w = feats.shape
    n = min(n_samples, h * w)
    idx = torch.randint(0, h * w, (b, n), generator=gen).to(feats.device)
    ys = (idx // w).to(feats.dtype) / max(h - 1, 1) * 2 - 1
    xs = (idx % w).to(feats.dtype) / max(w - 1, 1) * 2 - 1
    pos = torch.stack([ys, xs], -1)
    col = image.flatten(2).gather(2, idx[:, None].expand(-1, 3, -1)).transpose(1, 2)
    f = feats.flatten(2).gather(2, idx[:, None].expand(-1, c, -1)).transpose(1, 2)
    dp = torch.cdist(pos, pos) ** 2
    di = torch.cdist(col.to(feats.dtype), col.to(feats.dtype)) ** 2
    k = 10 * torch.exp(-dp / 0.2 - di / 0.3) + 3 * torch.exp(-dp / 0.01)
    df = torch.cdist(f, f) ** 2 / c
    return (k * df).mean()


def feature_norm(upsampler: nn.Module) -> nn.Module:
    """The feature normalisation an upsampler applies to its input (its ``channelnorm`` when it
    has one, FeatUp/LoftUp), which defines the space the targets live in; identity otherwise."""
    cn = getattr(upsampler, "channelnorm", None)
    return cn if isinstance(cn, nn.Module) else nn.Identity()


class FeatUpTask:
    """FeatUp JBU training task for :func:`~probe_lib.upsampler_training.loop.fit`.

    Batches: images (B, 3, S, S) RGB in [0, 1], S a multiple of the backbone patch size.
    The upsampler's native output is bilinearly resized to S (align_corners=False) before jittering.
    """

    name = "featup_jbu"

    def __init__(self, upsampler: nn.Module, backbone: nn.Module, dim: int | None = None,
                 n_jitters: int = 5, proj_dim: int = 30, lr: float = 1e-3,
                 tv_weight: float = 0.0, crf_weight: float = 0.001, crf_samples: int = 1000):
        self.upsampler, self.backbone = upsampler, backbone
        dim = dim or backbone.embed_dim
        self.norm = feature_norm(upsampler)
        for p in self.norm.parameters():  # FeatUp does not optimise its ChannelNorm
            p.requires_grad_(False)
        self.downsampler = AttentionDownsampler(dim, kernel=backbone.patch_size, blur="gaussian")
        self.scale_net = ScaleNet(dim)
        dev = next(upsampler.parameters()).device
        self.downsampler.to(dev)
        self.scale_net.to(dev)
        self.n_jitters, self.proj_dim, self.lr = n_jitters, proj_dim, lr
        self.tv_weight, self.crf_weight, self.crf_samples = tv_weight, crf_weight, crf_samples

    def aux_modules(self) -> dict[str, nn.Module]:
        return {"downsampler": self.downsampler, "scale_net": self.scale_net}

    def param_groups(self) -> list[dict]:
        params = [p for p in self.upsampler.parameters() if p.requires_grad]
        params += list(self.downsampler.parameters()) + list(self.scale_net.parameters())
        return [{"params": params, "lr": self.lr}]

    def loss(self, images: torch.Tensor, step: int, gen: torch.Generator) -> dict:
        with torch.no_grad():
            lr_raw = self.backbone(images)
        hr = self.upsampler(lr_raw, images, output_size="native")
        hr = F.interpolate(hr, size=images.shape[-2:], mode="bilinear", align_corners=False)
        rec = hr.new_zeros(())
        crf = hr.new_zeros(())
        for j in range(self.n_jitters):
            jit = sample_featup_jitter(gen)
            img_j, hr_j = apply_featup_jitter(images, jit), apply_featup_jitter(hr, jit)
            with torch.no_grad():
                target = self.norm(self.backbone(img_j))
            down = self.downsampler(hr_j)
            scale = self.scale_net(target)
            proj = random_projection(images.shape[0], hr.shape[1], self.proj_dim, gen,
                                     hr.device, hr.dtype)
            rec = rec + uncertainty_reconstruction_loss(
                project(down, proj), project(target, proj), scale) / self.n_jitters
            if j == 0 and self.crf_weight > 0:
                crf = crf_loss(hr_j, img_j, gen, self.crf_samples)
        tv = total_variation(hr) if self.tv_weight > 0 else hr.new_zeros(())
        total = rec + self.crf_weight * crf + self.tv_weight * tv
        return {"loss": total, "rec": rec, "crf": crf, "tv": tv}
