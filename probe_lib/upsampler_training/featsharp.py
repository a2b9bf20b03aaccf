"""FeatSharp multi-view training (SPEC §7.4, from the paper; clean-room).

Losses live in PHI-S space: x' = alpha * Q (x - mu) with Q = H V^T (V the eigenvectors of the
feature covariance, H a normalised Hadamard matrix) and alpha = 1 / sqrt(mean eigenvalue), so
every channel of x' has the same variance and an MSE weighs all directions equally. It is fitted
once on training features before training (:func:`fit_phi_s`).

Per sample: a base image at R*u (shared zoom + crop), 5 views, each a random homography of the
base. The prediction hr = FeatSharp(base) (16u x 16u) is warped into each view's frame, pooled by a
learned attention downsampler to 16 x 16 and compared with PHI-S(backbone(view) + bias). Pixels
whose view position falls outside the base get weight 0, pixels on tile seams weight 2 (weights
renormalised to mean 1), and a predicted uncertainty u turns the error e into exp(-u) e + u / 2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .downsampler import AttentionDownsampler, FeatSharpUncertainty
from .views import apply_base_crop, sample_base_crop, sample_homography, warp

# ----------------------------------------------------------------------------- PHI-S


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def _is_prime(q: int) -> bool:
    return q > 1 and all(q % d for d in range(2, int(q**0.5) + 1))


def _paley1(q: int) -> torch.Tensor:
    """Paley construction I: Hadamard matrix of order q + 1 for a prime q = 3 (mod 4)."""
    residues = {(i * i) % q for i in range(1, q)}
    chi = torch.tensor([0 if d == 0 else (1 if d in residues else -1) for d in range(q)],
                       dtype=torch.float64)
    jac = torch.stack([chi[(torch.arange(q) - i) % q] for i in range(q)])  # Q[i, j] = chi(j - i)
    s = torch.zeros(q + 1, q + 1, dtype=torch.float64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = jac
    return s + torch.eye(q + 1, dtype=torch.float64)


def hadamard(n: int) -> torch.Tensor:
    """Normalised (orthogonal) Hadamard matrix of order n, float64.

    n = 2^k (Sylvester) or n = (q + 1) 2^k with q prime, q = 3 mod 4 (Paley I x Sylvester; 384 =
    12 * 32). Other orders raise a ValueError.
    """
    k = 1
    while n % (2 * k) == 0:
        k *= 2
    for m in range(1, n + 1):  # n = m * 2^j with m = q + 1
        if n % m or (n // m) & (n // m - 1):
            continue
        if m == 1:
            h = _sylvester(n)
            break
        if m % 4 == 0 and _is_prime(m - 1) and (m - 1) % 4 == 3:
            h = torch.kron(_paley1(m - 1), _sylvester(n // m))
            break
    else:
        raise ValueError(f"no Hadamard construction for order {n} (need 2^k or (q+1)*2^k, "
                         "q prime = 3 mod 4)")
    return h / math.sqrt(n)


@torch.no_grad()
def fit_phi_s(feats: torch.Tensor) -> dict[str, torch.Tensor]:
    """PHI-S statistics from features (N, C) (or (B, C, h, w), pixels pooled).

    Returns float32 ``{"mean" (C,), "alpha" (), "rotation" (C, C), "inv_rotation" (C, C)}`` with
    x' = alpha * rotation @ (x - mean) and x = inv_rotation @ x' / alpha + mean.
    """
    if feats.ndim == 4:
        feats = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
    x = feats.double()
    if x.shape[0] < 2:
        raise ValueError("fit_phi_s needs at least 2 feature vectors")
    mean = x.mean(0)
    cov = torch.cov((x - mean).T)
    evals, evecs = torch.linalg.eigh(cov)
    alpha = 1.0 / evals.clamp_min(0).mean().clamp_min(1e-12).sqrt()
    rot = hadamard(x.shape[1]) @ evecs.T
    return {"mean": mean.float(), "alpha": alpha.float(), "rotation": rot.float(),
            "inv_rotation": rot.T.contiguous().float()}


def apply_phi_s(x: torch.Tensor, stats: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, C, h, w) -> PHI-S space with ``stats`` from :func:`fit_phi_s`."""
    y = torch.einsum("dc,bchw->bdhw", stats["rotation"].to(x), x - stats["mean"].to(x)[:, None, None])
    return stats["alpha"].to(x) * y


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


class FeatSharpTask:
    """FeatSharp training task for :func:`~probe_lib.upsampler_training.loop.fit`.

    ``upsampler`` is a ``featsharp`` module built with ``backbone=``; it must expose
    ``forward_train(base) -> hr`` in PHI-S space at 16u x 16u (tiles of ``base`` (B, 3, R u, R u)),
    ``bias_for(h, w)`` -> (1, C, h, w) learned bias, ``phis`` buffers, ``factor`` u, ``resolution`` R
    — adapted by :func:`featsharp_adapter` to the module's real API.
    Batches: images (B, 3, R u, R u) RGB [0, 1].
    """

    name = "featsharp"

    def __init__(self, adapter, backbone: nn.Module, n_views: int = 5, lr: float = 5e-4,
                 jbu_lr: float = 1e-4, seam_weight: float = 2.0):
        self.ad = adapter
        self.upsampler = adapter.module
        self.backbone = backbone
        dim = backbone.embed_dim
        u = adapter.factor
        dev = next(self.upsampler.parameters()).device
        self.downsampler = AttentionDownsampler(dim, kernel=9, stride=u, blur="gaussian").to(dev)
        self.uncertainty = FeatSharpUncertainty(dim).to(dev)
        self.n_views, self.lr, self.jbu_lr, self.seam_weight = n_views, lr, jbu_lr, seam_weight

    def aux_modules(self) -> dict[str, nn.Module]:
        return {"downsampler": self.downsampler, "uncertainty": self.uncertainty}

    def param_groups(self) -> list[dict]:
        jbu, rest = [], []
        for n, p in self.upsampler.named_parameters():
            if p.requires_grad:
                (jbu if self.ad.is_jbu_param(n) else rest).append(p)
        rest += list(self.downsampler.parameters()) + list(self.uncertainty.parameters())
        groups = [{"params": rest, "lr": self.lr}]
        if jbu:
            groups.append({"params": jbu, "lr": self.jbu_lr})
        return groups

    def loss(self, images: torch.Tensor, step: int, gen: torch.Generator) -> dict:
        ad = self.ad
        u, r = ad.factor, ad.resolution
        base = apply_base_crop(images, sample_base_crop(gen))
        hr = ad.forward_train(base)  # B, C, 16u, 16u (PHI-S space)
        g = hr.shape[-1]
        seam = seam_weight_map(g, u, self.seam_weight).to(hr)[None, None].expand(len(hr), 1, g, g)
        total = hr.new_zeros(())
        for _ in range(self.n_views):
            hom = sample_homography(gen).to(hr.device)
            view_img, _ = warp(base, hom, size=(r, r))
            hr_v, valid = warp(hr, hom, size=(g, g))
            seam_v, _ = warp(seam, hom, size=(g, g), mode="nearest", padding_mode="border")
            with torch.no_grad():
                feats = self.backbone(view_img)
            target = ad.target(feats)  # + learned bias (gets gradients), then PHI-S
            pred = self.downsampler(hr_v)
            w = F.avg_pool2d(valid * seam_v, u)
            total = total + weighted_view_loss(pred, target, w, self.uncertainty(target))
        return {"loss": total / self.n_views}
