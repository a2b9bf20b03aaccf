"""FeatSharp multi-view training (arXiv 2502.16025, from the paper; clean-room).

Losses live in PHI-S space: x' = alpha * Q (x - mu) with Q = H V^T (V the eigenvectors of the
feature covariance, H a normalised Hadamard matrix) and alpha = 1 / sqrt(mean eigenvalue), so
every channel of x' has the same variance and an MSE weighs all directions equally. It is fitted
once on training features before training (:func:`fit_phi_s_on_images`; the transform itself is
``probe_lib.upsamplers.phis.PHIS``).

Per sample: a base image at R*u (shared zoom + crop), 5 views, each a random homography of the
base. The prediction hr = FeatSharp(base) (16u x 16u) is warped into each view's frame, pooled by a
learned attention downsampler to 16 x 16 and compared with PHI-S(backbone(view) + bias). Pixels
whose view position falls outside the base get weight 0, pixels on tile seams weight 2 (weights
renormalised to mean 1), and a predicted uncertainty u turns the error e into exp(-u) e + u / 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .downsampler import AttentionDownsampler, FeatSharpUncertainty
from .views import apply_base_crop, sample_base_crop, sample_homography, warp

# ----------------------------------------------------------------------------- weights


def seam_weight_map(grid: int, u: int, weight: float = 2.0, band: int = 1) -> torch.Tensor:
    """(grid, grid) weights: ``weight`` within ``band`` feature pixels of a tile seam, 1 elsewhere.

    ``grid`` = the high-res feature side (16u); tiles are ``grid / u`` wide. Not normalised (the
    loss renormalises together with the validity mask).
    """
    w = torch.ones(grid, grid)
    t = grid // u
    for k in range(1, u):
        lo, hi = max(0, k * t - band), min(grid, k * t + band)
        w[lo:hi, :] = weight
        w[:, lo:hi] = weight
    return w


def weighted_view_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                       log_unc: torch.Tensor | None = None) -> torch.Tensor:
    """sum(w * l) / sum(w) with l = e or exp(-u) e + u / 2, e = mean over channels of the squared
    error. pred, target (B, C, h, w); weight (B, 1, h, w) >= 0 (validity x seam weight; dividing
    by its sum renormalises it to mean 1 over the counted pixels); log_unc u (B, 1, h, w)."""
    err = ((pred - target) ** 2).mean(1, keepdim=True)
    if log_unc is not None:
        err = torch.exp(-log_unc) * err + log_unc / 2
    return (weight * err).sum() / weight.sum().clamp_min(1e-6)


# ----------------------------------------------------------------------------- task


@torch.no_grad()
def fit_phi_s_on_images(upsampler: nn.Module, backbone: nn.Module, images: torch.Tensor,
                        chunk: int = 8) -> dict[str, float]:
    """Fit the FeatSharp module's PHI-S on the backbone features of ``images`` (N, 3, R, R) RGB
    [0, 1] (all token vectors pooled), before training. Returns summary numbers."""
    device = next(upsampler.parameters()).device
    feats = torch.cat([backbone(images[i:i + chunk].to(device)) for i in range(0, len(images), chunk)])
    upsampler.fit_phis(feats)
    y = upsampler.phis(feats)
    return {"phis_vectors": float(feats.shape[0] * feats.shape[2] * feats.shape[3]),
            "phis_mean_channel_var": float(y.var(dim=(0, 2, 3)).mean())}


class FeatSharpTask:
    """FeatSharp training task for :func:`~probe_lib.upsampler_training.loop.fit`.

    ``upsampler``: a ``featsharp`` module (``create_upsampler("featsharp", backbone=...)``) whose
    PHI-S has been fitted; used through ``forward_train(base)`` (PHI-S-space output 16u x 16u
    from the LR view and the u x u tiles of ``base``), ``standardize(feats)`` (PHI-S(feats +
    learned bias), the target space) and ``factor`` / ``resolution``.
    Batches: images (B, 3, R u, R u) RGB [0, 1]. NAdam 5e-4, JBU branch 1e-4.
    """

    name = "featsharp"

    def __init__(self, upsampler: nn.Module, backbone: nn.Module, n_views: int = 5,
                 lr: float = 5e-4, jbu_lr: float = 1e-4, seam_weight: float = 2.0):
        if not upsampler.phis.is_fitted:
            raise ValueError("fit PHI-S before training FeatSharp (fit_phi_s_on_images): the "
                             "losses live in PHI-S space")
        self.upsampler, self.backbone = upsampler, backbone
        dim, u = backbone.embed_dim, upsampler.factor
        dev = next(upsampler.parameters()).device
        self.downsampler = AttentionDownsampler(dim, kernel=9, stride=u, blur="gaussian").to(dev)
        self.uncertainty = FeatSharpUncertainty(dim).to(dev)
        self.n_views, self.lr, self.jbu_lr, self.seam_weight = n_views, lr, jbu_lr, seam_weight

    def aux_modules(self) -> dict[str, nn.Module]:
        return {"downsampler": self.downsampler, "uncertainty": self.uncertainty}

    def param_groups(self) -> list[dict]:
        jbu, rest = [], []
        for n, p in self.upsampler.named_parameters():
            if p.requires_grad:
                (jbu if self.upsampler.is_jbu_param(n) else rest).append(p)
        rest += list(self.downsampler.parameters()) + list(self.uncertainty.parameters())
        groups = [{"params": rest, "lr": self.lr}]
        if jbu:
            groups.append({"params": jbu, "lr": self.jbu_lr})
        return groups

    def loss(self, images: torch.Tensor, step: int, gen: torch.Generator) -> dict:
        up = self.upsampler
        u = up.factor
        r = images.shape[-1] // u
        base = apply_base_crop(images, sample_base_crop(gen))
        hr = up.forward_train(base)  # B, C, g, g in PHI-S space
        g = hr.shape[-1]
        seam = seam_weight_map(g, u, self.seam_weight).to(hr)[None, None].expand(len(hr), 1, g, g)
        base_r = F.interpolate(base, size=(r, r), mode="bilinear", align_corners=False,
                               antialias=True)
        total = hr.new_zeros(())
        for _ in range(self.n_views):
            hom = sample_homography(gen).to(hr.device)
            view_img, _ = warp(base_r, hom)
            hr_v, valid = warp(hr, hom, size=(g, g))
            seam_v, _ = warp(seam, hom, size=(g, g), mode="nearest", padding_mode="border")
            with torch.no_grad():
                feats = self.backbone(view_img.clamp(0, 1))
            target = up.standardize(feats)  # + learned bias (gets gradients), then PHI-S
            pred = self.downsampler(hr_v)
            w = F.avg_pool2d(valid * seam_v, u)
            total = total + weighted_view_loss(pred, target, w, self.uncertainty(target))
        return {"loss": total / self.n_views}
