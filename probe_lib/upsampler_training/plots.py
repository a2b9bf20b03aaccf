"""Figures for the training notebooks (each takes ``ax``/``axes`` and returns them)."""

from __future__ import annotations

import torch

from probe_lib.viz import fit_pca, plot_losses, show_image, show_pca

from .loop import TrainResult, history_series


def plot_history(result: TrainResult | list[dict], ax=None, title: str = "training loss",
                 logy: bool = False):
    """Loss curves (every logged loss term) of a :class:`TrainResult` or a history list."""
    history = result.history if isinstance(result, TrainResult) else result
    steps, series = history_series(history)
    series = {k: v for k, v in series.items() if any(x != 0 for x in v)}  # drop unused terms
    return plot_losses(steps, series, ax=ax, title=title, logy=logy)


@torch.no_grad()
def show_pca_row(maps: dict[str, torch.Tensor], image: torch.Tensor | None, axes):
    """One shared 3-component PCA over all ``maps`` ((1, C, H, W) or (C, H, W) each), so colours
    are comparable; ``image`` (1, 3, H, W) first when given. ``axes`` needs len(maps) (+1) slots."""
    axes = list(axes)
    if image is not None:
        show_image(image, axes.pop(0), "image")
    pca = fit_pca([m.float().cpu() for m in maps.values()])
    for ax, (name, m) in zip(axes, maps.items()):
        show_pca(m.float().cpu(), ax, f"{name} {tuple(m.shape[-2:])}", pca=pca)
    return axes


def plot_evidence(scores: dict[str, dict[str, float]], axes):
    """Bar charts of :func:`~probe_lib.upsampler_training.recipes.evaluate_boundaries` output:
    within-region variance ratio (lower = better) and boundary recall (higher = better)."""
    names = list(scores)
    for ax, key, note in zip(axes, ("variance_ratio", "boundary_recall"),
                             ("lower is better", "higher is better")):
        vals = [scores[n][key] for n in names]
        ax.bar(range(len(names)), vals, color="tab:blue")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{key} ({note})", fontsize=9)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:.3f}", ha="center", va="bottom", fontsize=7)
    return axes


def format_scores(scores: dict[str, dict[str, float]]) -> str:
    """A small text table of evidence scores."""
    lines = [f"{'upsampler':28s} {'variance ratio':>15s} {'boundary recall':>16s}"]
    for n, s in scores.items():
        lines.append(f"{n:28s} {s['variance_ratio']:15.4f} {s['boundary_recall']:16.4f}")
    return "\n".join(lines)
