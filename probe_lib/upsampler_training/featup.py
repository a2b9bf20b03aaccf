"""FeatUp's multi-view reconstruction objective for the JBU stack (arXiv 2403.10516).

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

from probe_lib.upsamplers.base import imagenet_normalize

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
    """FeatUp's ``TVLoss``: (sum of squared vertical + horizontal neighbour differences) / (b*c*h*w).

    (B, C, H, W) -> scalar. The divisor is the element count of ``x``, not the number of
    differences, as in ``featup/losses.py`` (and LoftUp's copy).
    """
    b, c, h, w = x.shape
    return (((x[..., 1:, :] - x[..., :-1, :]) ** 2).sum()
            + ((x[..., :, 1:] - x[..., :, :-1]) ** 2).sum()) / (b * c * h * w)


CRF_GUIDANCE = ("unjittered", "jittered")


def sample_crf_coords(h: int, w: int, n: int, gen: torch.Generator | None = None
                      ) -> torch.Tensor:
    """(2, n) int64 pixel coordinates (rows, then cols), one set shared by the whole batch; drawn
    in FeatUp's order (all rows, then all cols) so a generator seeded like the global RNG gives
    the reference's pixels."""
    rows = torch.randint(0, h, (1, n), generator=gen)
    cols = torch.randint(0, w, (1, n), generator=gen)
    return torch.cat([rows, cols], 0)


def crf_loss(feats: torch.Tensor, guidance: torch.Tensor, gen: torch.Generator | None = None,
             n_samples: int = 1000, coords: torch.Tensor | None = None) -> torch.Tensor:
    """FeatUp's ``SampledCRFLoss`` (alpha 0.1, beta 0.15, gamma 0.005, w1 10, w2 3, shift 0).

    On ``n_samples`` pixels shared by the batch, with positions p in [0, 1) (row / H, col / W)
    and guidance colours g (FeatUp passes the ImageNet-normalised image):

        k_ij = 10 exp(-|p_i - p_j|^2 / 0.2 - |g_i - g_j|^2 / 0.3) + 3 exp(-|p_i - p_j|^2 / 0.01)
        loss = mean over (b, i, j) of k_ij * sum_c (f_ci - f_cj)^2

    (the feature term is *summed* over channels; FeatUp feeds the 30-d projected features).

    Args:
        feats: (B, C, H, W) features (FeatUp: the projected, jittered hr map).
        guidance: (B, 3, H, W) colours of the same size (FeatUp: the normalised, un-jittered image).
        gen: generator for the pixel draw (ignored when ``coords`` is given).
        coords: optional (2, n) int64 rows/cols (see :func:`sample_crf_coords`).
    """
    if guidance.shape[0] != feats.shape[0] or guidance.shape[2:] != feats.shape[2:]:
        raise ValueError(f"crf_loss: guidance {tuple(guidance.shape)} and feats "
                         f"{tuple(feats.shape)} need the same batch and spatial size")
    h, w = feats.shape[-2:]
    if coords is None:
        coords = sample_crf_coords(h, w, n_samples, gen)
    coords = coords.to(feats.device)
    norm = coords.to(feats.dtype) / torch.tensor([h, w], device=feats.device,
                                                 dtype=feats.dtype)[:, None]
    g = guidance[:, :, coords[0], coords[1]].to(feats.dtype)  # B, 3, n
    f = feats[:, :, coords[0], coords[1]]  # B, C, n
    dp = (norm[:, :, None] - norm[:, None, :]).square().sum(0)[None]  # 1, n, n
    dg = (g[..., :, None] - g[..., None, :]).square().sum(1)  # B, n, n
    k = 10.0 * torch.exp(-dp / 0.2 - dg / 0.3) + 3.0 * torch.exp(-dp / 0.01)
    df = torch.zeros_like(dg)
    for ci in range(f.shape[1]):  # channel by channel: (B, n, n) memory instead of (B, C, n, n)
        df = df + (f[:, ci, :, None] - f[:, ci, None, :]).square()
    return (df * k).mean()


def feature_norm(upsampler: nn.Module) -> nn.Module:
    """The feature normalisation an upsampler applies to its input (its ``channelnorm`` when it
    has one, FeatUp/LoftUp), which defines the space the targets live in; identity otherwise."""
    cn = getattr(upsampler, "channelnorm", None)
    return cn if isinstance(cn, nn.Module) else nn.Identity()


class FeatUpTask:
    """FeatUp JBU training task for :func:`~probe_lib.upsampler_training.loop.fit`.

    Batches: images (B, 3, S, S) RGB in [0, 1], S a multiple of the backbone patch size.
    As ``featup/train_jbu_upsampler.py``: for every jitter the upsampler runs again (fresh dropout
    masks), its native output is bilinearly resized to S (align_corners=False), and that jitter's
    loss is back-propagated at once (``manual_backward``: the loop hands in ``backward``), so the
    graph of one jitter is freed before the next. The CRF term (first jitter) compares the
    projected, jittered hr map with the ImageNet-normalised image: ``crf_guidance="unjittered"``
    is the reference's pairing (the image is *not* jittered), ``"jittered"`` the aligned one.
    """

    name = "featup_jbu"
    manual_backward = True

    def __init__(self, upsampler: nn.Module, backbone: nn.Module, dim: int | None = None,
                 n_jitters: int = 5, proj_dim: int = 30, lr: float = 1e-3,
                 tv_weight: float = 0.0, crf_weight: float = 0.001, crf_samples: int = 1000,
                 crf_guidance: str = "unjittered"):
        if crf_guidance not in CRF_GUIDANCE:
            raise ValueError(f"crf_guidance must be one of {CRF_GUIDANCE}, got {crf_guidance!r}")
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
        self.crf_guidance = crf_guidance

    def aux_modules(self) -> dict[str, nn.Module]:
        return {"downsampler": self.downsampler, "scale_net": self.scale_net}

    def param_groups(self) -> list[dict]:
        params = [p for p in self.upsampler.parameters() if p.requires_grad]
        params += list(self.downsampler.parameters()) + list(self.scale_net.parameters())
        return [{"params": params, "lr": self.lr}]

    def loss(self, images: torch.Tensor, step: int, gen: torch.Generator,
             backward=None) -> dict:
        """Per-jitter losses; with ``backward`` (a callable) each jitter's loss is
        back-propagated at once and the returned ``loss`` is detached (for logging), otherwise
        the returned ``loss`` is the differentiable sum (same gradients)."""
        with torch.no_grad():
            lr_raw = self.backbone(images)
        total = images.new_zeros(())
        rec_sum, crf, tv = images.new_zeros(()), images.new_zeros(()), images.new_zeros(())
        for j in range(self.n_jitters):
            hr = self.upsampler(lr_raw, images, output_size="native")
            hr = F.interpolate(hr, size=images.shape[-2:], mode="bilinear", align_corners=False)
            jit = sample_featup_jitter(gen)
            img_j, hr_j = apply_featup_jitter(images, jit), apply_featup_jitter(hr, jit)
            with torch.no_grad():
                target = self.norm(self.backbone(img_j))
            proj = random_projection(images.shape[0], hr.shape[1], self.proj_dim, gen,
                                     hr.device, hr.dtype)
            proj_hr = project(hr_j, proj)
            down = self.downsampler(hr_j)
            scale = self.scale_net(target)
            rec = uncertainty_reconstruction_loss(
                project(down, proj), project(target, proj), scale) / self.n_jitters
            loss = rec
            if j == 0 and self.crf_weight > 0:
                guide = images if self.crf_guidance == "unjittered" else img_j
                crf = crf_loss(proj_hr, imagenet_normalize(guide), gen, self.crf_samples)
                loss = loss + self.crf_weight * crf
            if j == 0 and self.tv_weight > 0:
                tv = total_variation(proj_hr.square().sum(1, keepdim=True))
                loss = loss + self.tv_weight * tv
            if backward is not None:
                backward(loss)
                loss = loss.detach()
            total = total + loss
            rec_sum = rec_sum + rec.detach()
        return {"loss": total, "rec": rec_sum, "crf": crf.detach(), "tv": tv.detach()}


def toy_multiview_reconstruction(truth: torch.Tensor, factor: int = 4, views: int = 24,
                                 steps: int = 150, lr: float = 0.05, seed: int = 0
                                 ) -> dict[str, torch.Tensor | list[float]]:
    """FeatUp's multi-view reconstruction (arXiv 2403.10516, Sec. 3) on a toy, for teaching.

    A fake "backbone" sees only ``avg_pool(factor)`` of a known high-res map ``truth``; each
    view is a FeatUp jitter (pad, zoom, crop, flip) of it. A free high-res map ``hr`` (the
    implicit variant's output, here a plain tensor) and a learned attention downsampler are
    fitted jointly so that ``down(jitter(hr)) == backbone(jitter(truth))`` for every view; the
    views shift the pooling windows by sub-patch amounts, which is what lets ``hr`` recover
    detail no single low-res map holds.

    Args:
        truth: (1, C, H, W), H and W multiples of ``factor``.
    Returns:
        ``{"lowres": (1, C, H/f, W/f), "bilinear": (1, C, H, W), "reconstruction": (1, C, H, W),
        "losses": [per-step loss]}``.
    """
    if truth.ndim != 4 or truth.shape[0] != 1 or truth.shape[-1] % factor or \
            truth.shape[-2] % factor:
        raise ValueError(f"truth must be (1, C, H, W) with H, W multiples of factor={factor}, "
                         f"got {tuple(truth.shape)}")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)

    def backbone(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, factor)

    jitters = [sample_featup_jitter(gen, pad=0.1, max_zoom=1.5) for _ in range(views)]
    targets = [backbone(apply_featup_jitter(truth, j)) for j in jitters]
    lowres = backbone(truth)
    bilinear = F.interpolate(lowres, size=truth.shape[-2:], mode="bilinear", align_corners=False)
    hr = bilinear.clone().requires_grad_(True)
    down = AttentionDownsampler(truth.shape[1], kernel=factor, stride=factor, padding=0,
                                blur="none", dropout=0.0, logit_dropout=0.0)
    opt = torch.optim.Adam([hr, *down.parameters()], lr=lr)
    losses = []
    for step in range(steps):
        k = step % views
        loss = F.mse_loss(down(apply_featup_jitter(hr, jitters[k])), targets[k])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return {"lowres": lowres, "bilinear": bilinear, "reconstruction": hr.detach(),
            "losses": losses}
