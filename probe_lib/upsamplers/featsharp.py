"""FeatSharp (Ranzinger et al., ICML 2025; arXiv 2502.16025) — clean-room, from the paper only.

FeatSharp sharpens a ViT's low-res features by looking at the image twice:

1. the low-res (LR) view ``feats`` is upsampled by a small FeatUp-style joint bilateral branch
   (JBU, one 2x stage per prime factor of u);
2. the image, enlarged u times, is cut into u x u tiles that go through the *same frozen backbone*;
   the tile features, put back together, form a u x finer but seam-prone map;
3. a single transformer block (local 7x7 window attention with 2-D ALiBi + SwiGLU) fuses the two,
   returning the JBU map plus a learned correction.

Everything happens in PHI-S space (:mod:`.phis`) after a learned *bias buffer* has been added to
every backbone output; the bias learns to cancel position-fixed ViT artefacts because it is shared
by the LR view and every tile. The result is mapped back to backbone space (bias stays removed)
unless ``phis_space=True``.

No official checkpoints exist (the reference code's licence forbids reuse and no weights were
released). Choices where the paper is silent (documented in docs/loftup_featsharp.md):
bias buffer init 0, tile_pos init N(0, 0.02²), range/spatial gains init 1 and applied as
exponents of the two kernel terms, PHI-S = identity until fitted, non-square inputs tiled on the
LR grid's own aspect ratio, the backbone held by reference (not a submodule, so it is neither
saved in nor counted by the upsampler's state).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Upsampler, imagenet_normalize, register_upsampler
from .phis import PHIS

# --------------------------------------------------------------------------------------------
# JBU branch
# --------------------------------------------------------------------------------------------


def prime_factors(n: int) -> list[int]:
    """Prime factors of n with multiplicity, ascending (4 -> [2, 2])."""
    out, d = [], 2
    while n > 1:
        while n % d == 0:
            out.append(d)
            n //= d
        d += 1
    return out


def _shift(x: torch.Tensor, dy: int, dx: int, pad: int) -> torch.Tensor:
    # x is padded by `pad` on each side; return the window whose (y, x) holds x[y + dy, x + dx].
    h, w = x.shape[-2] - 2 * pad, x.shape[-1] - 2 * pad
    return x[..., pad + dy:pad + dy + h, pad + dx:pad + dx + w]


class JBUStage(nn.Module):
    """One joint-bilateral upsampling stage (factor f) in the FeatSharp variant.

    K(p, p+d) ∝ exp(g_r · log softmax_d(τ ⟨q_p, q_{p+d}⟩) − g_s · |d|² / (2σ²)) over a 7x7
    window (d on linspace(−1, 1, 7) per axis, q = range_proj(guidance)), normalised over d;
    out(p) = Σ_d K(p, p+d) · S↑(p + d) with S↑ the *bilinear* f x upsampled source, reflect
    padded. With g_r = g_s = 1 this is FeatUp's normalised range x spatial product. No kernel
    fixup and no dropout (paper, JBU branch).
    """

    def __init__(self, factor: int = 2, radius: int = 3, key_dim: int = 32):
        super().__init__()
        self.factor, self.radius = factor, radius
        self.range_proj = nn.Sequential(nn.Conv2d(3, key_dim, 1), nn.GELU(),
                                        nn.Conv2d(key_dim, key_dim, 1))
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))
        self.range_gain = nn.Parameter(torch.tensor(1.0))
        self.spatial_gain = nn.Parameter(torch.tensor(1.0))

    def kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """guidance (B, 3, H, W) -> normalised kernel (B, (2r+1)^2, H, W), taps row-major."""
        r = self.radius
        q = self.range_proj(guidance)
        qp = F.pad(q, (r, r, r, r), mode="reflect")
        tau = self.range_temp.exp().clamp(1e-4, 1e4)
        offs = range(-r, r + 1)
        logits = torch.stack([(q * _shift(qp, dy, dx, r)).sum(1) for dy in offs for dx in offs],
                             dim=1) * tau
        log_range = torch.log_softmax(logits, dim=1)
        lin = torch.linspace(-1.0, 1.0, 2 * r + 1, device=q.device, dtype=q.dtype)
        d2 = (lin.view(-1, 1) ** 2 + lin.view(1, -1) ** 2).reshape(1, -1, 1, 1)
        log_spatial = -d2 / (2 * self.sigma_spatial ** 2)
        return torch.softmax(self.range_gain * log_range + self.spatial_gain * log_spatial, dim=1)

    def forward(self, source: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """source (B, C, h, w), guidance (B, 3, f h, f w) -> (B, C, f h, f w)."""
        r = self.radius
        size = guidance.shape[-2:]
        up = F.interpolate(source, size=size, mode="bilinear", align_corners=False)
        k = self.kernel(guidance)
        upp = F.pad(up, (r, r, r, r), mode="reflect")
        out = torch.zeros_like(up)
        t = 0
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                out = out + k[:, t:t + 1] * _shift(upp, dy, dx, r)
                t += 1
        return out


# --------------------------------------------------------------------------------------------
# Fusion block
# --------------------------------------------------------------------------------------------


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Head h: 1 / 2^floor((h + 2) / 2) (even heads act on |Δrow|, odd heads on |Δcol|)."""
    return torch.tensor([1.0 / 2 ** ((h + 2) // 2) for h in range(num_heads)])


class LocalALiBiAttention(nn.Module):
    """Multi-head attention restricted to a (2r+1)^2 window with a 2-D ALiBi bias.

    score(p, p+d) = ⟨q_p, k_{p+d}⟩ / √head_dim − slope_h · |d_row| (even h) or |d_col| (odd h);
    keys outside the map are excluded. q, k, v are projected to ``qk_dim`` per head (no bias,
    layout [q | k | v]); each head keeps the first ``head_dim`` dims of its output, so the
    output projection sees heads x head_dim = dim channels (docs/loftup_featsharp.md).

    Computed as a loop over the window's offsets (memory ~ heads x window x H x W), never as an
    (HW) x (HW) matrix; :func:`dense_alibi_mask` gives the equivalent dense additive mask.
    """

    def __init__(self, dim: int = 768, num_heads: int = 16, qk_dim: int = 64,
                 head_dim: int | None = None, radius: int = 3):
        super().__init__()
        head_dim = head_dim or dim // num_heads
        if head_dim > qk_dim:
            raise ValueError(f"head_dim {head_dim} must not exceed qk_dim {qk_dim}")
        self.num_heads, self.qk_dim, self.head_dim, self.radius = num_heads, qk_dim, head_dim, radius
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * num_heads * qk_dim, bias=False)
        self.proj = nn.Linear(num_heads * head_dim, dim)
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)

    def project(self, x: torch.Tensor):
        """x (B, H, W, dim) -> q, k, v each (B, heads, qk_dim, H, W)."""
        b, h, w, _ = x.shape
        qkv = self.qkv(x).view(b, h, w, 3, self.num_heads, self.qk_dim)
        q, k, v = qkv.permute(3, 0, 4, 5, 1, 2).unbind(0)
        return q, k, v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, dim) channels-last -> (B, H, W, dim)."""
        b, h, w, _ = x.shape
        q, k, v = self.project(x)
        r = self.radius
        kp = F.pad(k, (r, r, r, r))
        vp = F.pad(v[:, :, :self.head_dim], (r, r, r, r))
        rows = torch.arange(h, device=x.device).view(h, 1)
        cols = torch.arange(w, device=x.device).view(1, w)
        even = (torch.arange(self.num_heads, device=x.device) % 2 == 0).view(1, -1, 1, 1)
        slopes = self.slopes.to(x).view(1, -1, 1, 1)
        scores = []
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                s = (q * _shift(kp, dy, dx, r)).sum(2) * self.scale
                s = s - slopes * torch.where(even, float(abs(dy)), float(abs(dx))).to(x)
                inside = ((rows + dy >= 0) & (rows + dy < h) & (cols + dx >= 0) & (cols + dx < w))
                scores.append(s.masked_fill(~inside, float("-inf")))
        p = torch.softmax(torch.stack(scores, dim=2), dim=2)  # B, heads, taps, H, W
        out = torch.zeros_like(v[:, :, :self.head_dim])
        t = 0
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                out = out + p[:, :, t:t + 1] * _shift(vp, dy, dx, r)
                t += 1
        out = out.permute(0, 3, 4, 1, 2).reshape(b, h, w, self.num_heads * self.head_dim)
        return self.proj(out)


def dense_alibi_mask(height: int, width: int, slopes: torch.Tensor, radius: int) -> torch.Tensor:
    """(heads, HW, HW) additive mask: −slope·|Δ| inside the window (Δrow for even heads, Δcol for
    odd heads), −inf outside. Row-major pixel order. For tests and teaching (memory ~ (HW)^2)."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    yy, xx = yy.reshape(-1).float(), xx.reshape(-1).float()
    dr = (yy.view(1, -1) - yy.view(-1, 1)).abs()
    dc = (xx.view(1, -1) - xx.view(-1, 1)).abs()
    out = []
    for h, s in enumerate(slopes.tolist()):
        m = -s * (dr if h % 2 == 0 else dc)
        out.append(m.masked_fill((dr > radius) | (dc > radius), float("-inf")))
    return torch.stack(out)


class SwiGLU(nn.Module):
    """w3(silu(a) * b) with [a | b] = w12(x)."""

    def __init__(self, dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class FusionBlock(nn.Module):
    """Pre-norm block on cat[JBU (C), tiles (C)]: x ← x + ls1·attn(norm1 x);
    out = x[:, :C] + ls2·SwiGLU(norm2 x) (the tile half only informs the correction)."""

    def __init__(self, dim: int, num_heads: int = 16, qk_dim: int = 64, hidden: int = 2048,
                 radius: int = 3, layerscale_init: float = 1e-6):
        super().__init__()
        width = 2 * dim
        self.dim = dim
        self.norm1 = nn.LayerNorm(width)
        self.attn = LocalALiBiAttention(width, num_heads, qk_dim, radius=radius)
        self.ls1 = nn.Parameter(torch.full((width,), layerscale_init))
        self.norm2 = nn.LayerNorm(width)
        self.ffn = SwiGLU(width, hidden, dim)
        self.ls2 = nn.Parameter(torch.full((dim,), layerscale_init))

    def forward(self, jbu: torch.Tensor, tiles: torch.Tensor) -> torch.Tensor:
        """jbu, tiles (B, C, H, W) -> (B, C, H, W)."""
        x = torch.cat([jbu, tiles], dim=1).permute(0, 2, 3, 1)
        x = x + self.ls1 * self.attn(self.norm1(x))
        out = x[..., :self.dim] + self.ls2 * self.ffn(self.norm2(x))
        return out.permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------
# The upsampler
# --------------------------------------------------------------------------------------------


def split_tiles(image: torch.Tensor, u: int) -> torch.Tensor:
    """(B, 3, uH, uW) -> (B*u*u, 3, H, W); order per image: tile rows, then tile columns."""
    b, c, hh, ww = image.shape
    h, w = hh // u, ww // u
    t = image.view(b, c, u, h, u, w).permute(0, 2, 4, 1, 3, 5)
    return t.reshape(b * u * u, c, h, w)


def merge_tiles(tiles: torch.Tensor, u: int) -> torch.Tensor:
    """Inverse of :func:`split_tiles` for feature maps: (B*u*u, C, h, w) -> (B, C, u h, u w)."""
    n, c, h, w = tiles.shape
    b = n // (u * u)
    return tiles.view(b, u, u, c, h, w).permute(0, 3, 1, 4, 2, 5).reshape(b, c, u * h, u * w)


@register_upsampler("featsharp")
class FeatSharp(Upsampler):
    """FeatSharp: LR view + u x u tiles through the frozen backbone, JBU branch, fusion block.

    Args:
        dim: backbone channels C (must equal ``backbone.embed_dim``).
        backbone: the frozen backbone (``embed_dim``, ``patch_size``, ``forward(images RGB [0, 1])
            -> (B, C, H/p, W/p)``). Required. Held by reference, not saved in the state_dict.
        factor / featsharp_factor: u (2 or 4; any u whose prime factors give the JBU stages).
        phis_space: return features in PHI-S space instead of backbone space.
        resolution: R, the model resolution of the LR view used by :meth:`forward_train`.
        bias_grid: side of the learned bias buffer (16 = 224/14).
        tile_clicks, hr_source: IS-integration options (docs/loftup_featsharp.md); only the defaults
            (``False``, ``"network"``) are implemented.

    ``forward(feats, image)``: ``feats`` is the LR view (the caller's backbone output, e.g. with
    early-injected clicks); the tiles are computed here from ``image`` *without clicks*.
    Native output: (u h, u w).
    """

    def __init__(self, dim: int = 384, backbone: nn.Module | None = None, factor: int | None = None,
                 featsharp_factor: int = 2, phis_space: bool = False, resolution: int = 224,
                 bias_grid: int = 16, num_heads: int = 16, qk_dim: int = 64, hidden: int = 2048,
                 radius: int = 3, tile_clicks: bool = False, hr_source: str = "network"):
        super().__init__(dim)
        if backbone is None:
            raise ValueError("featsharp needs the frozen backbone: create_upsampler('featsharp', "
                             "backbone=create_backbone(...)) — it runs the backbone on the tiles")
        for attr in ("embed_dim", "patch_size"):
            if not hasattr(backbone, attr):
                raise ValueError(f"featsharp: backbone must have attribute {attr!r} "
                                 "(use probe_lib.backbones.create_backbone)")
        if backbone.embed_dim != dim:
            raise ValueError(f"featsharp: dim={dim} but backbone.embed_dim={backbone.embed_dim}")
        u = featsharp_factor if factor is None else factor
        if not isinstance(u, int) or u < 2:
            raise ValueError(f"featsharp factor u must be an int >= 2, got {u!r}")
        if tile_clicks:
            raise NotImplementedError(
                "featsharp tile_clicks=True (injecting cropped click maps into every tile) is not "
                "implemented; tiles are computed without clicks (the default)")
        if hr_source != "network":
            raise NotImplementedError(
                f"featsharp hr_source={hr_source!r} is not implemented; only 'network' (tiles "
                "cut from the network input) is")
        self.factor = u
        self.phis_space = bool(phis_space)
        self.resolution = int(resolution)
        self._backbone = (backbone,)  # a tuple hides it from state_dict/parameters
        self.phis = PHIS(dim)
        self.bias_buffer = nn.Parameter(torch.zeros(1, dim, bias_grid, bias_grid))
        self.tile_pos = nn.Parameter(torch.randn(1, dim, u, u) * 0.02)
        self.jbu = nn.ModuleList(JBUStage(f, radius=3) for f in prime_factors(u))
        self.fusion = FusionBlock(dim, num_heads=num_heads, qk_dim=qk_dim, hidden=hidden,
                                  radius=radius)

    # -- plumbing -----------------------------------------------------------------------------

    @property
    def backbone(self) -> nn.Module:
        return self._backbone[0]

    def _apply(self, fn, recurse=True):
        # keep the (unregistered) backbone on the same device/dtype as the upsampler
        self.backbone._apply(fn)
        return super()._apply(fn, recurse)

    @staticmethod
    def is_jbu_param(name: str) -> bool:
        """Whether a parameter name belongs to the JBU branch (trained with a lower lr)."""
        return name.startswith("jbu.")

    def num_parameters(self, include_bias_buffer: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n if include_bias_buffer else n - self.bias_buffer.numel()

    def native_size(self, feats_hw, image_hw):
        return (self.factor * feats_hw[0], self.factor * feats_hw[1])

    # -- pieces -------------------------------------------------------------------------------

    def bias_for(self, h: int, w: int) -> torch.Tensor:
        """The learned bias (1, C, h, w), bilinearly resized from its stored grid if needed."""
        b = self.bias_buffer
        if b.shape[-2:] != (h, w):
            b = F.interpolate(b, size=(h, w), mode="bilinear", align_corners=False)
        return b

    def standardize(self, feats: torch.Tensor) -> torch.Tensor:
        """Backbone features (B, C, h, w) -> PHI-S(feats + bias): the space FeatSharp works in
        (and the training target's space)."""
        return self.phis(feats + self.bias_for(*feats.shape[-2:]))

    def to_backbone_space(self, y: torch.Tensor) -> torch.Tensor:
        """PHI-S space -> backbone space (the bias stays removed)."""
        return self.phis.inverse(y)

    @torch.no_grad()
    def fit_phis(self, features: torch.Tensor) -> FeatSharp:
        """Estimate PHI-S's μ, Σ from backbone features (N, C) or (B, C, h, w)."""
        self.phis.fit(features)
        return self

    def tile_images(self, image: torch.Tensor, tile_hw: tuple[int, int]) -> torch.Tensor:
        """image (B, 3, H, W) -> tiles (B*u*u, 3, *tile_hw) of the image resized to u x tile_hw."""
        u = self.factor
        big = F.interpolate(image, size=(u * tile_hw[0], u * tile_hw[1]), mode="bilinear",
                            align_corners=False, antialias=True)
        return split_tiles(big, u)

    def _run_backbone(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.backbone(images)

    def tile_features(self, image: torch.Tensor, lr_hw: tuple[int, int]) -> torch.Tensor:
        """Raw backbone features of the u x u tiles, reassembled: (B, C, u h, u w)."""
        p = self.backbone.patch_size
        tiles = self.tile_images(image, (lr_hw[0] * p, lr_hw[1] * p))
        return merge_tiles(self._run_backbone(tiles), self.factor)

    def guidance(self, image: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
        """Normalised image resized to the output grid (area-like antialiased bilinear)."""
        return F.interpolate(imagenet_normalize(image), size=out_hw, mode="bilinear",
                             align_corners=False, antialias=True)

    def jbu_branch(self, lr: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """lr (B, C, h, w) (PHI-S space) -> (B, C, u h, u w); each stage's guidance is the output
        grid guidance average-pooled to that stage's size."""
        x = lr
        for stage in self.jbu:
            size = (x.shape[-2] * stage.factor, x.shape[-1] * stage.factor)
            g = guidance if size == tuple(guidance.shape[-2:]) else \
                F.adaptive_avg_pool2d(guidance, size)
            x = stage(x, g)
        return x

    def sharpen(self, lr_raw: torch.Tensor, tiles_raw: torch.Tensor,
                image: torch.Tensor) -> torch.Tensor:
        """Core: raw LR (B, C, h, w) and reassembled raw tile features (B, C, u h, u w) + image
        RGB [0, 1] -> PHI-S-space output (B, C, u h, u w)."""
        u = self.factor
        h, w = lr_raw.shape[-2:]
        out_hw = (u * h, u * w)
        if tuple(tiles_raw.shape[-2:]) != out_hw:
            raise ValueError(f"tile features {tuple(tiles_raw.shape[-2:])} != u x LR {out_hw}")
        lr = self.standardize(lr_raw)
        tiles = self.phis(tiles_raw + self.bias_for(h, w).repeat(1, 1, u, u))
        tiles = tiles + F.interpolate(self.tile_pos, size=out_hw, mode="nearest")
        jbu = self.jbu_branch(lr, self.guidance(image, out_hw))
        return self.fusion(jbu, tiles)

    # -- entry points -------------------------------------------------------------------------

    def upsample(self, feats: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        if min(feats.shape[-2:]) < 2:
            raise ValueError(f"featsharp needs a feature grid of at least 2x2, got "
                             f"{tuple(feats.shape[-2:])}")
        tiles = self.tile_features(image, tuple(feats.shape[-2:]))
        out = self.sharpen(feats, tiles, image)
        return out if self.phis_space else self.to_backbone_space(out)

    def forward_from_image(self, image: torch.Tensor, phis_space: bool | None = None
                           ) -> torch.Tensor:
        """Whole pipeline from an image (B, 3, H, W), H, W multiples of the patch size: the LR
        view and the u x u tiles go through the backbone in *one* batch. -> (B, C, u H/p, u W/p)."""
        p = self.backbone.patch_size
        hh, ww = image.shape[-2:]
        if hh % p or ww % p:
            raise ValueError(f"image size {hh}x{ww} must be a multiple of the patch size {p}")
        b = image.shape[0]
        tiles = self.tile_images(image, (hh, ww))
        feats = self._run_backbone(torch.cat([image, tiles], dim=0))
        out = self.sharpen(feats[:b], merge_tiles(feats[b:], self.factor), image)
        use_phis = self.phis_space if phis_space is None else phis_space
        return out if use_phis else self.to_backbone_space(out)

    def forward_train(self, base: torch.Tensor) -> torch.Tensor:
        """Training entry: base image (B, 3, R u, R u) RGB [0, 1]; the LR view is ``base`` resized
        to R (antialiased) and the tiles are cut from ``base`` directly, all in one backbone
        batch. Returns the PHI-S-space output (B, C, 16u, 16u) for R = 224, p = 14."""
        u = self.factor
        hh, ww = base.shape[-2:]
        if hh % u or ww % u:
            raise ValueError(f"base image {hh}x{ww} must be divisible by u={u}")
        lr_img = F.interpolate(base, size=(hh // u, ww // u), mode="bilinear",
                               align_corners=False, antialias=True)
        b = base.shape[0]
        feats = self._run_backbone(torch.cat([lr_img, split_tiles(base, u)], dim=0))
        return self.sharpen(feats[:b], merge_tiles(feats[b:], u), lr_img)


def seam_contrast(feats: torch.Tensor, u: int) -> float:
    """How much a (B, C, H, W) map jumps at the u x u tile seams compared with elsewhere.

    Mean L2 norm of neighbour differences (both axes) across the seam lines divided by the mean
    over all other neighbour pairs: ~1 for a seamless map, large when the tiles disagree.
    """
    if feats.ndim != 4 or feats.shape[-2] % u or feats.shape[-1] % u:
        raise ValueError(f"feats must be (B, C, H, W) with H, W divisible by u={u}, "
                         f"got {tuple(feats.shape)}")
    f = feats.detach().float()
    th, tw = f.shape[-2] // u, f.shape[-1] // u
    dy = (f[:, :, 1:] - f[:, :, :-1]).norm(dim=1)  # (B, H-1, W): pair (y, y+1)
    dx = (f[..., 1:] - f[..., :-1]).norm(dim=1)  # (B, H, W-1)
    sy = torch.zeros(dy.shape[1], dtype=torch.bool)
    sy[th - 1::th] = True
    sx = torch.zeros(dx.shape[2], dtype=torch.bool)
    sx[tw - 1::tw] = True
    seam = torch.cat([dy[:, sy].reshape(-1), dx[:, :, sx].reshape(-1)])
    rest = torch.cat([dy[:, ~sy].reshape(-1), dx[:, :, ~sx].reshape(-1)])
    return float(seam.mean() / rest.mean().clamp_min(1e-12))


__all__ = [
    "FeatSharp",
    "FusionBlock",
    "JBUStage",
    "LocalALiBiAttention",
    "SwiGLU",
    "alibi_slopes",
    "dense_alibi_mask",
    "merge_tiles",
    "prime_factors",
    "seam_contrast",
    "split_tiles",
]
