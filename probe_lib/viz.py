"""Plot helpers for the notebooks: each takes an ``ax`` (or makes one) and returns it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _ax(ax):
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    return ax


def to_numpy_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) tensor in [0, 1], or (H, W, 3) array -> (H, W, 3) float array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        if image.ndim == 4:
            image = image[0]
        image = image.permute(1, 2, 0).numpy()
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    return np.clip(image, 0, 1)


def fit_pca(feats: torch.Tensor | Sequence[torch.Tensor], n_components: int = 3):
    """Fit a PCA on the pixels of one or more (C, H, W) / (1, C, H, W) feature maps.

    Fitting once and applying the same projection to several maps keeps their colours comparable.
    """
    from sklearn.decomposition import PCA

    maps = [feats] if isinstance(feats, torch.Tensor) else list(feats)
    rows = [_pixels(f) for f in maps]
    return PCA(n_components=n_components, random_state=0).fit(np.concatenate(rows, 0))


def _pixels(f: torch.Tensor) -> np.ndarray:
    f = f.detach().float().cpu()
    if f.ndim == 4:
        f = f[0]
    return f.reshape(f.shape[0], -1).T.numpy()


def pca_rgb(feats: torch.Tensor, pca=None) -> np.ndarray:
    """(C, H, W) or (1, C, H, W) features -> (H, W, 3) image in [0, 1] of the first 3 components.

    Components are min-max scaled per channel over this map (robust 1-99 percentiles).
    """
    f = feats[0] if feats.ndim == 4 else feats
    h, w = f.shape[-2:]
    pca = pca or fit_pca(f)
    proj = pca.transform(_pixels(f)).reshape(h, w, -1)[..., :3]
    lo, hi = np.percentile(proj, 1, axis=(0, 1)), np.percentile(proj, 99, axis=(0, 1))
    return np.clip((proj - lo) / np.maximum(hi - lo, 1e-8), 0, 1)


def show_image(image, ax=None, title: str | None = None):
    ax = _ax(ax)
    ax.imshow(to_numpy_image(image))
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def show_pca(feats: torch.Tensor, ax=None, title: str | None = None, pca=None):
    """Feature PCA as RGB (nearest-neighbour display so low-res grids stay visibly blocky)."""
    ax = _ax(ax)
    ax.imshow(pca_rgb(feats, pca), interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def overlay_mask(image, mask: np.ndarray, ax=None, color=(0.1, 0.6, 1.0), alpha: float = 0.5,
                 title: str | None = None):
    """Image with a boolean (H, W) mask tinted on top."""
    ax = _ax(ax)
    img = to_numpy_image(image).copy()
    m = np.asarray(mask).astype(bool)
    img[m] = (1 - alpha) * img[m] + alpha * np.asarray(color)
    ax.imshow(img)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def draw_clicks(ax, clicks: Sequence[tuple[int, int, bool]], size: float = 60):
    """Clicks as (row, col, is_positive): green positive, red negative."""
    for r, c, pos in clicks:
        ax.scatter([c], [r], s=size, c="lime" if pos else "red", edgecolors="black", linewidths=1)
    return ax


def plot_losses(steps: Sequence[float], values: Sequence[float] | dict[str, Sequence[float]],
                ax=None, title: str = "training loss", logy: bool = False):
    """One or several loss curves against step."""
    ax = _ax(ax)
    series = values if isinstance(values, dict) else {"loss": values}
    for name, v in series.items():
        ax.plot(list(steps)[: len(v)], list(v), label=name)
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=10)
    if logy:
        ax.set_yscale("log")
    if len(series) > 1:
        ax.legend(fontsize=8)
    return ax


def draw_patch_grid(ax, patch_size: int, shape: tuple[int, int], color: str = "white",
                    linewidth: float = 0.6, alpha: float = 0.8):
    """Overlay the ViT patch grid on an axes showing an (H, W) image: lines every ``patch_size`` px.

    Pixel (row, col) centres are at integer coordinates in ``imshow``, so patch borders sit at
    ``k * patch_size - 0.5``.
    """
    height, width = int(shape[0]), int(shape[1])
    for x in range(0, width + 1, patch_size):
        ax.axvline(x - 0.5, color=color, linewidth=linewidth, alpha=alpha)
    for y in range(0, height + 1, patch_size):
        ax.axhline(y - 0.5, color=color, linewidth=linewidth, alpha=alpha)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    return ax
