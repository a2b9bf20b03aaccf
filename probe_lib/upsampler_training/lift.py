"""LiFT's self-supervised 2x objective (arXiv 2403.14625).

With F1 = f(I), F2 = f(I[::2, ::2]), F3 = f(I[::4, ::4]) (strided subsampling, no anti-aliasing, so
each coarser image is exactly every other pixel of the finer one), LiFT learns to predict the
finer features from the coarser ones and the coarser image:

    loss = D(LiFT(F2, I/2), F1) + D(LiFT(F3, I/4), F2),    D(a, b) = mean(1 - cos(a, b)),

with the cosine over channels and the mean over batch and pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean(1 - cos(a, b)) with the cosine over dim 1; a, b (B, C, H, W) of equal shape -> scalar."""
    if a.shape != b.shape:
        raise ValueError(f"cosine_distance needs equal shapes, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    return (1 - F.cosine_similarity(a, b, dim=1, eps=1e-8)).mean()


def strided_pyramid(images: torch.Tensor, levels: int = 3) -> list[torch.Tensor]:
    """[I, I[::2, ::2], I[::4, ::4], ...] for (B, 3, H, W); H, W must divide by 2**(levels-1)."""
    h, w = images.shape[-2:]
    f = 2 ** (levels - 1)
    if h % f or w % f:
        raise ValueError(f"image size {(h, w)} must be divisible by {f} for {levels} levels")
    return [images[..., :: 2**i, :: 2**i] for i in range(levels)]


@torch.no_grad()
def lift_features(backbone: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Frozen-backbone features of the strided pyramid: ``{"f1", "f2", "f3", "img2", "img4"}``.

    ``images`` (B, 3, H, W) RGB in [0, 1], H and W multiples of 4 * patch size (448 in the recipe,
    224 at ``small``). Computed once and cached at ``small``, since the backbone is frozen.
    """
    i1, i2, i4 = strided_pyramid(images, 3)
    return {"f1": backbone(i1), "f2": backbone(i2), "f3": backbone(i4), "img2": i2, "img4": i4}


def lift_objective(upsampler: nn.Module, f1: torch.Tensor, f2: torch.Tensor, f3: torch.Tensor,
                   img2: torch.Tensor, img4: torch.Tensor) -> dict[str, torch.Tensor]:
    """The two-term LiFT loss from precomputed features (see module docstring).

    ``upsampler(feats, image, output_size="native")`` must return 2x the feature grid.
    """
    p1 = upsampler(f2, img2, output_size="native")
    p2 = upsampler(f3, img4, output_size="native")
    if p1.shape != f1.shape or p2.shape != f2.shape:
        raise ValueError(f"LiFT must upsample exactly 2x: got {tuple(p1.shape)} for target "
                         f"{tuple(f1.shape)} and {tuple(p2.shape)} for {tuple(f2.shape)}")
    l1, l2 = cosine_distance(p1, f1), cosine_distance(p2, f2)
    return {"loss": l1 + l2, "cos_1to2": l1, "cos_2to4": l2}


class LiftTask:
    """LiFT training task for :func:`probe_lib.upsampler_training.loop.fit`.

    Batches are dicts from :func:`lift_features` (``f1, f2, f3, img2, img4``).
    """

    name = "lift"

    def __init__(self, upsampler: nn.Module, lr: float = 1e-3):
        self.upsampler = upsampler
        self.lr = lr

    def aux_modules(self) -> dict[str, nn.Module]:
        return {}

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.upsampler.parameters() if p.requires_grad],
                 "lr": self.lr}]

    def loss(self, batch: dict, step: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return lift_objective(self.upsampler, batch["f1"], batch["f2"], batch["f3"],
                              batch["img2"], batch["img4"])
