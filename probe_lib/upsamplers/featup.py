"""FeatUp (Fu et al., ICLR 2024): the joint-bilateral-upsampler stack ``featup_jbu`` and the
per-image implicit network ``featup_implicit`` (FeatUp, arXiv 2403.10516).

JBU stage (2x): every output pixel mixes its 7x7 neighbourhood of the bicubically doubled
source features with a kernel that is the product of a *range* term (softmax over the 49
neighbours of a learned similarity of guidance-pixel embeddings) and a *spatial* Gaussian,
renormalised, then corrected by a small learned 1x1 network. The adaptive convolution is plain
PyTorch: 49 shifted multiply-accumulates over the padded source (:func:`adaptive_conv`), exact and
linear in memory, instead of the reference's compiled extension.
"""

from __future__ import annotations

import copy
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    ChannelNorm,
    PretrainedWeights,
    Upsampler,
    fourier_features,
    imagenet_normalize,
    register_upsampler,
    strip_prefix,
)

RADIUS = 3
TAPS = (2 * RADIUS + 1) ** 2  # 49


def adaptive_conv(src_padded: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Per-pixel 7x7 filtering: ``out[b,c,y,x] = sum_{i,j} K[b,7i+j,y,x] * S[b,c,y+i,x+j]``.

    Args:
        src_padded: ``(B, C, H + 6, W + 6)`` source, already padded by 3 on every side.
        kernel: ``(B, 49, H, W)`` taps in row-major (i = row offset, j = column offset) order.

    Returns:
        ``(B, C, H, W)`` in channels-last memory layout. Exact and differentiable; works on
        blocks of rows in channels-last layout (see :func:`_adaptive_conv_cl`), so peak extra
        memory is one output-sized tensor and the 49 multiply-accumulates of a block stay in
        cache. Inputs already in channels-last layout are used without a copy.
    """
    b, _, hp, wp = src_padded.shape
    k = 2 * RADIUS + 1
    h, w = hp - 2 * RADIUS, wp - 2 * RADIUS
    if kernel.shape != (b, k * k, h, w):
        raise ValueError(f"kernel must have shape {(b, k * k, h, w)}, got {tuple(kernel.shape)}")
    if torch.is_grad_enabled() and (src_padded.requires_grad or kernel.requires_grad):
        return _AdaptiveConv.apply(src_padded, kernel)
    return _adaptive_conv_forward(src_padded, kernel)


def _cl(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> contiguous (B, H, W, C); free for channels-last tensors."""
    return x.permute(0, 2, 3, 1).contiguous()


_BLOCK_BYTES = 3 << 19  # ~1.5 MB of output per block: with its source rows it stays in L2/L3


def _blocks(b: int, h: int, row_bytes: int):
    """(b0, b1, r0, r1) blocks of about ``_BLOCK_BYTES`` of output; whole images are grouped
    when they are small, large ones are cut into bands of rows."""
    rows = max(1, _BLOCK_BYTES // max(1, row_bytes))
    if rows >= h:
        per = max(1, rows // h)
        for b0 in range(0, b, per):
            yield b0, min(b, b0 + per), 0, h
        return
    for b0 in range(b):
        for r0 in range(0, h, rows):
            yield b0, b0 + 1, r0, min(h, r0 + rows)


def _adaptive_conv_cl(s: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Channels-last core: ``s`` (B, H+6, W+6, C), ``k`` (B, H, W, 49) -> (B, H, W, C)."""
    n = 2 * RADIUS + 1
    b, _, _, c = s.shape
    h, w = k.shape[1:3]
    out = s.new_empty(b, h, w, c)
    for b0, b1, r0, r1 in _blocks(b, h, w * c * s.element_size()):
        o, kb = out[b0:b1, r0:r1], k[b0:b1, r0:r1]
        torch.mul(s[b0:b1, r0:r1, :w], kb[..., :1], out=o)
        for t in range(1, n * n):
            i, j = divmod(t, n)
            o.addcmul_(s[b0:b1, r0 + i:r1 + i, j:j + w], kb[..., t:t + 1])
    return out


def _adaptive_conv_forward(src_padded: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    return _adaptive_conv_cl(_cl(src_padded), _cl(kernel)).permute(0, 3, 1, 2)


class _AdaptiveConv(torch.autograd.Function):
    """Hand-written backward: autograd through the 49-term sum would keep 49 output-sized
    products alive; here backward accumulates in place, block by block in channels-last
    layout, so training memory stays linear in output pixels."""

    @staticmethod
    def forward(ctx, src_padded, kernel):
        s, k = _cl(src_padded), _cl(kernel)
        ctx.save_for_backward(s, k)
        return _adaptive_conv_cl(s, k).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_out):
        s, k = ctx.saved_tensors
        n = 2 * RADIUS + 1
        b, h, w, c = grad_out.shape[0], *k.shape[1:3], s.shape[-1]
        g = _cl(grad_out)
        grad_src = grad_kernel = None
        blocks = list(_blocks(b, h, w * c * s.element_size()))
        if ctx.needs_input_grad[0]:
            gs = torch.zeros_like(s)
            for b0, b1, r0, r1 in blocks:
                gb, kb = g[b0:b1, r0:r1], k[b0:b1, r0:r1]
                for t in range(n * n):
                    i, j = divmod(t, n)
                    gs[b0:b1, r0 + i:r1 + i, j:j + w].addcmul_(gb, kb[..., t:t + 1])
            grad_src = gs.permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            gk = torch.empty_like(k)
            for b0, b1, r0, r1 in blocks:
                gb = g[b0:b1, r0:r1]
                for t in range(n * n):
                    i, j = divmod(t, n)
                    gk[b0:b1, r0:r1, :, t] = (gb * s[b0:b1, r0 + i:r1 + i, j:j + w]).sum(-1)
            grad_kernel = gk.permute(0, 3, 1, 2)
        return grad_src, grad_kernel


@functools.lru_cache(maxsize=64)
def _bicubic_pad_matrix(n_in: int, n_out: int, pad: int) -> torch.Tensor:
    """(n_out + 2 pad, n_in) matrix M with ``M @ x`` = bicubic resize of ``x`` along one axis
    (PyTorch's weights: A = -0.75, half-pixel centres, clamped border) followed by reflect
    padding by ``pad``. The weights are read off ``F.interpolate`` applied to unit vectors."""
    if n_out <= pad:
        raise ValueError(f"JBU: a {n_out}-pixel side cannot be reflect-padded by {pad} "
                         "(feature grids need at least 2x2 tokens)")
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, 1, n_in)
    m = F.interpolate(eye, size=(1, n_out), mode="bicubic", align_corners=False)
    m = m.view(n_in, n_out).t()
    idx = torch.arange(-pad, n_out + pad).abs()
    idx = torch.where(idx > n_out - 1, 2 * (n_out - 1) - idx, idx)
    return m[idx].contiguous()


def bicubic_reflect_pad(x: torch.Tensor, size: tuple[int, int], pad: int = RADIUS
                        ) -> torch.Tensor:
    """``F.pad(F.interpolate(x, size, mode="bicubic"), [pad] * 4, mode="reflect")`` as two small
    matrix products (separable resampling), returned in channels-last layout.

    Same weights as ``F.interpolate`` (float rounding differs at the 1e-6 level); on CPU it is
    several times faster than ``upsample_bicubic2d`` and its backward, for many channels.
    """
    b, c, h, w = x.shape
    mh = _bicubic_pad_matrix(h, size[0], pad).to(x)
    mw = _bicubic_pad_matrix(w, size[1], pad).to(x)
    xc = _cl(x)  # (B, h, w, C)
    rows = torch.matmul(mh, xc.reshape(b, h, w * c))  # (B, H', w*C)
    hp = rows.shape[1]
    out = torch.matmul(mw, rows.reshape(b * hp, w, c))  # (B*H', W', C)
    return out.view(b, hp, -1, c).permute(0, 3, 1, 2)


def adaptive_conv_reference(src_padded: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Naive per-pixel loop of :func:`adaptive_conv` (tests only; tiny inputs)."""
    b, c, hp, wp = src_padded.shape
    k = 2 * RADIUS + 1
    h, w = hp - 2 * RADIUS, wp - 2 * RADIUS
    out = torch.zeros(b, c, h, w, dtype=torch.float64)
    for bi in range(b):
        for y in range(h):
            for x in range(w):
                patch = src_padded[bi, :, y:y + k, x:x + k].double().reshape(c, k * k)
                out[bi, :, y, x] = patch @ kernel[bi, :, y, x].double()
    return out.to(src_padded.dtype)


class JBUStage(nn.Module):
    """One 2x joint bilateral upsampling stage (key dim 32, radius 3).

    Parameters: ``range_temp`` (log temperature of the range softmax), ``sigma_spatial``,
    ``range_proj`` (guidance pixel -> 32-d key), ``fixup_proj`` (kernel correction).
    """

    def __init__(self, guidance_dim: int = 3, key_dim: int = 32):
        super().__init__()
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))
        self.range_proj = nn.Sequential(nn.Conv2d(guidance_dim, key_dim, 1), nn.GELU(),
                                        nn.Dropout2d(0.1), nn.Conv2d(key_dim, key_dim, 1))
        self.fixup_proj = nn.Sequential(nn.Conv2d(TAPS + guidance_dim, TAPS, 1), nn.GELU(),
                                        nn.Dropout2d(0.1), nn.Conv2d(TAPS, TAPS, 1))

    def spatial_kernel(self) -> torch.Tensor:
        """``(49,)`` Gaussian over offsets ``linspace(-1, 1, 7)`` in both axes (row-major)."""
        d = torch.linspace(-1, 1, 2 * RADIUS + 1, device=self.sigma_spatial.device,
                           dtype=self.sigma_spatial.dtype)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        return torch.exp(-(dx ** 2 + dy ** 2) / (2 * self.sigma_spatial ** 2)).reshape(-1)

    def range_kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """``(B, 49, H, W)`` softmax over neighbours of ``tau * <q_neighbour, q_centre>``."""
        q = self.range_proj(guidance)
        h, w = q.shape[-2:]
        qp = F.pad(q, [RADIUS] * 4, mode="reflect")
        k = 2 * RADIUS + 1
        logits = torch.stack([(qp[:, :, i:i + h, j:j + w] * q).sum(1)
                              for i in range(k) for j in range(k)], dim=1)
        tau = torch.exp(self.range_temp).clamp(1e-4, 1e4)
        return torch.softmax(tau * logits, dim=1)

    def kernel(self, guidance: torch.Tensor) -> torch.Tensor:
        """Final ``(B, 49, H, W)`` taps: normalised range x spatial, plus the learned correction."""
        k = self.range_kernel(guidance) * self.spatial_kernel().view(1, -1, 1, 1)
        k = k / k.sum(1, keepdim=True).clamp_min(1e-7)
        # The correction is added after normalising: taps need not sum to one afterwards.
        return k + 0.1 * self.fixup_proj(torch.cat([k, guidance], dim=1))

    def forward(self, source: torch.Tensor, guidance: torch.Tensor,
                kernel: torch.Tensor | None = None) -> torch.Tensor:
        """``source (B, C, h, w)``, ``guidance (B, 3, 2h, 2w)`` normalised -> ``(B, C, 2h, 2w)``.

        ``kernel``: this stage's :meth:`kernel` for ``guidance`` when already computed (it
        depends on the image only).
        """
        up = bicubic_reflect_pad(source, tuple(guidance.shape[-2:]))
        return adaptive_conv(up, self.kernel(guidance) if kernel is None else kernel)


@register_upsampler("featup_jbu", aliases=("jbu_featup",))
class FeatUpJBU(Upsampler):
    """FeatUp's JBU stack: four 2x stages (16x native) and a residual 1x1 ``fixup_proj``.

    Args:
        dim: feature channels ``C`` (384: 172,772 JBU parameters).
        featup_channelnorm: apply FeatUp's ChannelNorm (LayerNorm over channels) to the input
            features first, as FeatUp's own pipeline does (project default). ``False`` feeds raw
            backbone features, as iSegProbe does (docs/upsamplers.md).

    Input image: RGB in [0, 1], normalised inside with ImageNet mean/std. Native output is
    ``16h x 16w``; ``output_size="image"`` resizes bilinearly (align_corners=True).
    """

    pretrained = PretrainedWeights(
        filename="featup_dinov2_jbu_stack_cocostuff.ckpt",
        url=("https://marhamilresearch4.blob.core.windows.net/feature-upsampling-public/"
             "pretrained/dinov2_jbu_stack_cocostuff.ckpt"),
        description="FeatUp JBU stack for DINOv2 ViT-S/14 (trained with ChannelNorm)")

    def __init__(self, dim: int = 384, featup_channelnorm: bool = True):
        super().__init__(dim)
        self.featup_channelnorm = bool(featup_channelnorm)
        if self.featup_channelnorm:
            self.channelnorm = ChannelNorm(dim)
        self.up1, self.up2, self.up3, self.up4 = (JBUStage() for _ in range(4))
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(dim, dim, 1))

    def native_size(self, feats_hw, image_hw):
        return (feats_hw[0] * 16, feats_hw[1] * 16)

    def _stage_guidance(self, image: torch.Tensor, feats_hw: tuple[int, int]
                        ) -> list[torch.Tensor]:
        # Each stage sees the image pooled to its output grid (the last one may pool "up").
        guidance = imagenet_normalize(image)
        h, w = feats_hw
        return [F.adaptive_avg_pool2d(guidance, (h * 2 ** s, w * 2 ** s)) for s in range(1, 5)]

    def prepare_guidance(self, image, feats_hw):
        """The four stages' 7x7 kernels (range x spatial + correction) depend on the image only."""
        with torch.no_grad():
            guides = self._stage_guidance(image, feats_hw)
            kernels = [st.kernel(g).contiguous(memory_format=torch.channels_last)
                       for st, g in zip(self.stages, guides, strict=True)]
        return self._guidance(image, feats_hw, (guides, kernels))

    @property
    def stages(self) -> tuple[JBUStage, ...]:
        return (self.up1, self.up2, self.up3, self.up4)

    def upsample(self, feats: torch.Tensor, image: torch.Tensor,
                 guidance: tuple | None = None) -> torch.Tensor:
        x = self.channelnorm(feats) if self.featup_channelnorm else feats
        if guidance is None:
            guides, kernels = self._stage_guidance(image, feats.shape[-2:]), [None] * 4
        else:
            guides, kernels = guidance
        for stage, g, k in zip(self.stages, guides, kernels, strict=True):
            x = stage(x, g, kernel=k)
        return x + 0.1 * self.fixup_proj(x)

    def remap_official_state_dict(self, sd):
        """FeatUp Lightning checkpoint -> our keys.

        Keeps ``upsampler.*`` (the JBU stack) and maps ``model.1.norm.*`` to ``channelnorm.norm.*``
        when this module applies ChannelNorm; drops the DINOv2 copy (``model.0.*``), the
        training-only ``downsampler.*`` and ``scale_net.*``. A plain JBU state_dict (our keys,
        optionally ``module.``-prefixed) passes through.
        """
        sd = strip_prefix(sd, "module.")
        if not any(k.startswith("upsampler.") for k in sd):
            return sd
        out = {k[len("upsampler."):]: v for k, v in sd.items() if k.startswith("upsampler.")}
        if self.featup_channelnorm:
            for k, v in sd.items():
                if k.startswith("model.1.norm."):
                    out["channelnorm.norm." + k[len("model.1.norm."):]] = v
        return out


# --------------------------------------------------------------------------------------------
# Implicit FeatUp: a small MLP over Fourier features, fitted to one image at a time
# --------------------------------------------------------------------------------------------


class _ImplicitNet(nn.Module):
    """Fourier features of (row, col, r, g, b) -> MLP -> ``out_dim`` channels per pixel."""

    def __init__(self, num_freqs: int = 30, hidden: int = 128, out_dim: int = 128):
        super().__init__()
        self.num_freqs = num_freqs
        self.phases = nn.Parameter(torch.zeros(2, 5, num_freqs))
        cin = 2 * 5 * num_freqs + 3
        self.net = nn.Sequential(
            ChannelNorm(cin), nn.Dropout2d(0.2), nn.Conv2d(cin, hidden, 1), nn.ReLU(),
            nn.Dropout2d(0.2), ChannelNorm(hidden), nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
            nn.Conv2d(hidden, out_dim, 1))

    def encode(self, image_norm: torch.Tensor) -> torch.Tensor:
        b, _, h, w = image_norm.shape
        lo = image_norm.amin(dim=(2, 3), keepdim=True)
        hi = image_norm.amax(dim=(2, 3), keepdim=True)
        colour = (image_norm - lo) / (hi - lo).clamp_min(1e-4) - 0.5
        rows = torch.linspace(-1, 1, h, device=image_norm.device, dtype=image_norm.dtype)
        cols = torch.linspace(-1, 1, w, device=image_norm.device, dtype=image_norm.dtype)
        gy, gx = torch.meshgrid(rows, cols, indexing="ij")
        coords = torch.stack([gy, gx]).unsqueeze(0).expand(b, -1, -1, -1)
        x = torch.cat([coords, colour], dim=1)
        freqs = torch.exp(torch.linspace(-2, 10, self.num_freqs, device=x.device, dtype=x.dtype))
        return torch.cat([fourier_features(x, freqs, self.phases), colour], dim=1)

    def forward(self, image_norm: torch.Tensor) -> torch.Tensor:
        return self.net(self.encode(image_norm))


def _view_grid(theta: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.affine_grid(theta, [theta.shape[0], 1, *size], align_corners=False)


@register_upsampler("featup_implicit")
class FeatUpImplicit(Upsampler):
    """Implicit FeatUp: for every image, fit a fresh Fourier-feature MLP so that its high-res
    output, viewed through random jitters and a learned blur-and-stride downsampler, reproduces
    the backbone's low-res features of those views (in a PCA space of the features).

    Args:
        dim: feature channels ``C``.
        steps: optimisation steps per image (paper: 1200; tests 2).
        n_views: jittered views per step (paper: 10). Needs ``backbone`` for views other than
            the identity view; without a backbone only the given features are fitted (single
            view, stated in ``weights_id``).
        pca_dim: dimension of the PCA space the MLP predicts (paper 128; capped by ``C`` and by
            the number of low-res pixels).
        lr: NAdam learning rate.
        backbone: optional frozen backbone (``forward(images in [0,1]) -> (B, C, h, w)``).
        seed: seed for the per-image initialisation and view sampling (deterministic output).

    The registered parameters (73,098 at the defaults) are the *initial* network; each image is
    fitted on a copy, so the module itself never changes. The fit always runs with gradients
    enabled, but the returned features are detached.
    """

    fits_per_image = True

    def __init__(self, dim: int = 384, steps: int = 1200, n_views: int = 10, pca_dim: int = 128,
                 lr: float = 1e-3, backbone: nn.Module | None = None, seed: int = 0,
                 progress: bool = False):
        super().__init__(dim)
        for n, v in (("steps", steps), ("n_views", n_views), ("pca_dim", pca_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{n} must be a positive int, got {v!r}")
        self.steps, self.n_views, self.pca_dim, self.lr = steps, n_views, pca_dim, lr
        self.seed, self.progress = seed, progress
        self.backbone = [backbone]  # a list keeps the backbone out of parameters()/state_dict()
        self.net = _ImplicitNet(out_dim=pca_dim)
        self.downsampler_kernel = 29
        self.history: list[list[float]] = []
        self._describe()

    def _describe(self) -> None:
        views = self.n_views if self.backbone[0] is not None else 1
        self.weights_id = (f"fitted per image ({self.steps} steps x {views} view"
                           f"{'s' if views > 1 else ''}"
                           f"{'' if self.backbone[0] is not None else ', no backbone'})")

    @property
    def weights_id(self) -> str:
        return self._weights_id

    @weights_id.setter
    def weights_id(self, value: str) -> None:
        # Loading or randomising never changes what this method is: a per-image fit.
        if "fitted per image" in value or not hasattr(self, "_weights_id"):
            self._weights_id = value

    def upsample(self, feats: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        outs = [self.fit_one(feats[b:b + 1], image[b:b + 1]) for b in range(feats.shape[0])]
        return torch.cat(outs, 0)

    # -- one image ---------------------------------------------------------------------------

    def _sample_theta(self, n: int, gen: torch.Generator, size: tuple[int, int]) -> torch.Tensor:
        """Affine maps of random views: zoom U[1, 1.8], shift within the frame + 30 px pad, flip."""
        thetas = [torch.eye(2, 3)]  # the identity view is always fitted
        h, w = size
        for _ in range(n - 1):
            zoom = 1 + 0.8 * float(torch.rand((), generator=gen))
            s = 1 / zoom
            pad_y, pad_x = 2 * 30 / h, 2 * 30 / w
            ty = (1 - s + pad_y) * (2 * float(torch.rand((), generator=gen)) - 1)
            tx = (1 - s + pad_x) * (2 * float(torch.rand((), generator=gen)) - 1)
            flip = -1.0 if float(torch.rand((), generator=gen)) < 0.5 else 1.0
            thetas.append(torch.tensor([[s * flip, 0.0, tx], [0.0, s, ty]]))
        return torch.stack(thetas)

    def fit_one(self, feats: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """Fit a fresh network to one image: ``(1, C, h, w)`` + ``(1, 3, H, W)`` -> ``(1, C, H, W)``."""
        backbone = self.backbone[0]
        dev, dt = feats.device, feats.dtype
        gen = torch.Generator().manual_seed(self.seed)
        h, w = feats.shape[-2:]
        H, W = image.shape[-2:]
        image_norm = imagenet_normalize(image)
        n_views = self.n_views if backbone is not None else 1
        with torch.no_grad():
            # PCA basis of the low-res features: the MLP predicts k coefficients, not C channels.
            pix = feats[0].reshape(self.dim, -1).T
            mean = pix.mean(0, keepdim=True)
            k = min(self.pca_dim, self.dim, pix.shape[0])
            centred = (pix - mean).double()
            # Eigen-decomposition of the C x C covariance (LAPACK's SVD is erratic in speed here).
            _, evecs = torch.linalg.eigh(centred.T @ centred)
            basis = evecs.flip(1)[:, :k].T.to(dt)  # (k, C), orthonormal rows, largest first

            def to_pca(f: torch.Tensor) -> torch.Tensor:
                return torch.einsum("bchw,kc->bkhw", f - mean.view(1, -1, 1, 1), basis)

            target0 = to_pca(feats)

        net = copy.deepcopy(self.net).to(dev).train()
        torch.manual_seed(self.seed)  # deterministic re-initialisation of the copy
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.reset_parameters()
        for p in net.parameters():
            p.requires_grad_(True)
        ks = self.downsampler_kernel
        stride_y, stride_x = max(1, round(H / h)), max(1, round(W / w))
        down_logits = torch.zeros(1, 1, ks, ks, device=dev, dtype=dt, requires_grad=True)
        log_scale = torch.zeros(1, 1, h, w, device=dev, dtype=dt, requires_grad=True)
        opt = torch.optim.NAdam([*net.parameters(), down_logits, log_scale], lr=self.lr)

        def downsample(hr: torch.Tensor) -> torch.Tensor:
            kern = torch.softmax(down_logits.flatten(), 0).view(1, 1, ks, ks)
            kern = kern.expand(hr.shape[1], 1, ks, ks)
            pad_y, pad_x = math.ceil((ks - stride_y) / 2), math.ceil((ks - stride_x) / 2)
            hp = F.pad(hr, [pad_x, pad_x, pad_y, pad_y], mode="reflect")
            lr = F.conv2d(hp, kern.to(hr), stride=(stride_y, stride_x), groups=hr.shape[1])
            if lr.shape[-2:] != (h, w):
                lr = F.adaptive_avg_pool2d(lr, (h, w))
            return lr

        history = []
        iterator = range(self.steps)
        if self.progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="featup_implicit fit", leave=False)
        with torch.enable_grad():
            for step in iterator:
                thetas = self._sample_theta(n_views, gen, (H, W)).to(dev, dt)
                opt.zero_grad(set_to_none=True)
                hr = net(image_norm)[:, :k]  # (1, k, H, W); extra outputs unused
                loss_total = 0.0
                for vi in range(n_views):
                    theta = thetas[vi:vi + 1]
                    if vi == 0:
                        hr_v, target = hr, target0
                    else:
                        grid = _view_grid(theta, (H, W))
                        hr_v = F.grid_sample(hr, grid, mode="bilinear", padding_mode="reflection",
                                             align_corners=False)
                        with torch.no_grad():
                            img_v = F.grid_sample(image, grid, mode="bilinear",
                                                  padding_mode="reflection", align_corners=False)
                            target = to_pca(backbone(img_v.clamp(0, 1)))
                    pred = downsample(hr_v)
                    scale = F.softplus(log_scale) + 1e-4
                    nll = ((pred - target) ** 2 / (2 * scale ** 2) + torch.log(scale)).mean()
                    loss = nll / n_views
                    if vi == 0:
                        norm = hr.norm(dim=1, keepdim=True)
                        tv = ((norm[..., 1:, :] - norm[..., :-1, :]).abs().mean()
                              + (norm[..., :, 1:] - norm[..., :, :-1]).abs().mean())
                        # "blur pin": the blurred high-res map stays close to the smooth
                        # bilinear upsampling of the target (keeps the fit anchored off-grid).
                        # Compared at a quarter of the resolution to keep the fit cheap.
                        blur = F.avg_pool2d(hr, 4, ceil_mode=True)
                        pin = F.interpolate(target0, size=blur.shape[-2:], mode="bilinear",
                                            align_corners=False)
                        loss = loss + 0.001 * hr.pow(2).mean() + 0.05 * tv \
                            + 0.1 * (blur - pin).pow(2).mean()
                    loss.backward(retain_graph=vi < n_views - 1)
                    loss_total += float(loss.detach())
                opt.step()
                history.append(loss_total)
        self.history.append(history)
        net.eval()
        with torch.no_grad():
            coeffs = net(image_norm)[:, :k]
            return torch.einsum("bkhw,kc->bchw", coeffs, basis) + mean.view(1, -1, 1, 1)
