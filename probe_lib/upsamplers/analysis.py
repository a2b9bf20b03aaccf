"""Small measurements and kernels used by the upsampler notebooks (02, 03).

Images are ``(B, 3, H, W)`` RGB in [0, 1]; features ``(B, C, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import imagenet_normalize
from .featup import RADIUS, JBUStage


def token_positions(h: int, size: int, align_corners: bool) -> torch.Tensor:
    """Where 2-D interpolation from ``h`` tokens to ``size`` pixels puts each token's own value.

    Pixel ``x`` (its centre at the integer ``x``) reads the source position
    ``u = x (h-1)/(size-1)`` with ``align_corners=True`` and ``u = (x + 0.5) h/size - 0.5`` with
    ``align_corners=False``; token ``i`` sits where ``u = i``. Returns ``(h,)`` float64 pixel
    coordinates: ``i (size-1)/(h-1)`` resp. ``(i + 0.5) size/h - 0.5``. With ``size = p h`` (p the
    patch size) the second is the patch centre ``p i + (p-1)/2`` (:func:`patch_centres`); the
    first stretches the grid so the corner tokens land on the corner pixels (224 px, 16 tokens:
    14.87 i, up to 6.5 px from the patch centres at the borders).
    """
    if h < 2 or size < 2:
        raise ValueError(f"token_positions: need h >= 2 and size >= 2, got h={h}, size={size}")
    i = torch.arange(h, dtype=torch.float64)
    if align_corners:
        return i * (size - 1) / (h - 1)
    return (i + 0.5) * size / h - 0.5


def patch_centres(h: int, patch: int) -> torch.Tensor:
    """Pixel coordinate of the centre of each of ``h`` patches of ``patch`` pixels: ``(h,)``
    float64, ``patch i + (patch - 1)/2`` (pixel centres at integers, as in :func:`token_positions`).
    """
    if h < 1 or patch < 1:
        raise ValueError(f"patch_centres: need h >= 1 and patch >= 1, got h={h}, patch={patch}")
    return torch.arange(h, dtype=torch.float64) * patch + (patch - 1) / 2


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H, W)``: L2 norm over channels of central differences
    (replicate-padded), i.e. how fast the map changes at each pixel."""
    xp = F.pad(x, [1, 1, 1, 1], mode="replicate")
    gy = (xp[..., 2:, 1:-1] - xp[..., :-2, 1:-1]) / 2
    gx = (xp[..., 1:-1, 2:] - xp[..., 1:-1, :-2]) / 2
    return (gx.pow(2) + gy.pow(2)).sum(1).sqrt()


def edge_alignment(feats: torch.Tensor, image: torch.Tensor, top: float = 0.1) -> float:
    """How much of the features' change happens on the image's edges.

    Share of the total feature-gradient magnitude that falls on the ``top`` fraction of pixels
    with the strongest image gradient. A map that changes uniformly scores ``top``; a map that
    changes exactly where the image does scores close to 1.

    Args:
        feats: ``(1, C, H, W)`` features at the image's resolution.
        image: ``(1, 3, H, W)`` RGB in [0, 1].
        top: fraction of pixels counted as edges (0 < top < 1).
    """
    if feats.shape[-2:] != image.shape[-2:]:
        raise ValueError(f"feats {tuple(feats.shape)} and image {tuple(image.shape)} must have "
                         "the same height and width")
    if not 0 < top < 1:
        raise ValueError(f"top must be in (0, 1), got {top}")
    gf = gradient_magnitude(feats.float())[0].flatten()
    gi = gradient_magnitude(image.float())[0].flatten()
    k = max(1, int(top * gi.numel()))
    edges = gi.topk(k).indices
    return float(gf[edges].sum() / gf.sum().clamp_min(1e-12))


def colour_range_stage(temperature: float = 2.0, sigma: float = 1.0, gain: float = 1.0
                       ) -> JBUStage:
    """A JBU stage whose range term compares raw (normalised) colours, for illustration.

    The key projection is set so that ``q = gain * colour`` (an identity in the first three of
    the 32 key channels, the GELU kept in its near-linear positive range by a bias shift that
    cancels in the softmax up to a per-centre constant); the kernel correction is switched off.
    So the range kernel is ``softmax_n(exp(temperature) * <c_n, c_centre>)`` — a bilateral
    weight that favours neighbours of similar colour, which is what a trained JBU learns to do
    with richer keys.
    """
    stage = JBUStage().eval()
    with torch.no_grad():
        for p in stage.parameters():
            p.zero_()
        shift = 4.0  # GELU(x) ~ x for x > ~3: keep the colour channels in that range
        stage.range_proj[0].weight[:3, :, 0, 0] = torch.eye(3) * gain
        stage.range_proj[0].bias[:3] = shift
        stage.range_proj[3].weight[:3, :3, 0, 0] = torch.eye(3)
        stage.range_proj[3].bias[:3] = -shift
        stage.range_temp.fill_(float(torch.log(torch.tensor(temperature))))
        stage.sigma_spatial.fill_(sigma)
    for p in stage.parameters():
        p.requires_grad_(False)
    return stage


@torch.no_grad()
def jbu_kernels_at(stage: JBUStage, image: torch.Tensor, points: list[tuple[int, int]]
                   ) -> dict[str, torch.Tensor]:
    """The 7x7 range, spatial and final kernels of ``stage`` at some pixels of ``image``.

    Args:
        stage: a :class:`JBUStage`.
        image: ``(1, 3, H, W)`` RGB in [0, 1] at the stage's *output* resolution (normalised
            inside, as the upsampler does).
        points: ``(row, col)`` pixels.

    Returns:
        ``{"range", "spatial", "kernel"}`` each ``(len(points), 7, 7)``, plus ``"patch"``
        ``(len(points), 3, 7, 7)`` the reflect-padded image around each point.
    """
    g = imagenet_normalize(image)
    rng = stage.range_kernel(g)
    spatial = stage.spatial_kernel().view(7, 7)
    ker = stage.kernel(g)
    pad = F.pad(image, [RADIUS] * 4, mode="reflect")
    out = {"range": [], "spatial": [], "kernel": [], "patch": []}
    for r, c in points:
        out["range"].append(rng[0, :, r, c].view(7, 7))
        out["spatial"].append(spatial / spatial.sum())
        out["kernel"].append(ker[0, :, r, c].view(7, 7))
        out["patch"].append(pad[0, :, r:r + 7, c:c + 7])
    return {k: torch.stack(v) for k, v in out.items()}


def colour_guided_jbu(dim: int = 384, temperature: float = 5.0, sigma: float = 1.0,
                      gain: float = 1.0):
    """A ``featup_jbu`` stack built from :func:`colour_range_stage` (no training, no fixups).

    Frozen; its ``weights_id`` says it is hand-set. Useful to see what an image-guided kernel does
    before any learning, and as a sanity baseline for trained JBU weights.
    """
    from .base import create_upsampler

    up = create_upsampler("featup_jbu", dim=dim, featup_channelnorm=False)
    for name in ("up1", "up2", "up3", "up4"):
        setattr(up, name, colour_range_stage(temperature, sigma, gain))
    with torch.no_grad():
        up.fixup_proj[1].weight.zero_()
        up.fixup_proj[1].bias.zero_()
    up.freeze()
    up.weights_id = (f"hand-set colour range kernel (temperature {temperature}, sigma {sigma}); "
                     "not trained")
    return up


def token_grid_ceiling(mask, size: int, patch: int = 14) -> float:
    """IoU a mask keeps when it is drawn on the token grid: the best a probe that reads
    features at token resolution and upsamples bilinearly can do.

    The mask is resized to the network input (``size`` × ``size``, area averaging), averaged over
    each ``patch`` × ``patch`` token cell, resized back bilinearly (``align_corners=False``, so
    each token value sits on its patch centre) and thresholded at 0.5; returns its IoU with the
    resized mask (1.0 for an empty mask and an empty result).

    Args:
        mask: (H, W) bool / {0, 1} array or tensor, the object.
        size: network input side in pixels (a multiple of ``patch``).
        patch: backbone patch size.
    """
    if size % patch:
        raise ValueError(f"size={size} is not a multiple of the patch size {patch}")
    m = torch.as_tensor(mask).float()
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {tuple(m.shape)}")
    g = F.interpolate(m[None, None], size=(size, size), mode="area")
    tokens = F.adaptive_avg_pool2d(g, (size // patch, size // patch))
    back = F.interpolate(tokens, size=(size, size), mode="bilinear", align_corners=False)
    gt, pred = g > 0.5, back > 0.5
    union = (gt | pred).sum()
    return 1.0 if union == 0 else float((gt & pred).sum() / union)
