"""Figures of the robustness and flatness tools (matplotlib, headless).

* :func:`plot_robustness`: retention against perturbation level, one panel per kind;
* :func:`plot_slices`: 1-D loss slices as curves, 2-D ones as contour panels;
* :func:`plot_comparison`: the one figure of :func:`~mirrorgrad_jax.analysis.comparison.compare_runs`;
* the ``draw_*`` functions draw one panel on a given axes, to compose other figures.

matplotlib is imported on first use with the ``Agg`` backend, so nothing here needs a
display.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from mirrorgrad_jax.analysis.perturb import PERTURBATIONS

__all__ = [
    "contour_levels",
    "draw_robustness",
    "draw_slice_2d",
    "draw_slices_1d",
    "perturbation_kinds",
    "plot_comparison",
    "plot_robustness",
    "plot_slices",
    "save_figure",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def draw_slices_1d(ax: Any, slices: Mapping[str, Any]) -> None:
    """Draws 1-D slices on a matplotlib axes, one curve per label."""
    for label, s in slices.items():
        ax.plot(s.alphas, s.losses, marker=".", label=label)
    ax.set_xlabel("step along a filter-normalised direction")
    ax.set_ylabel("training loss")
    ax.set_title("1-D loss slice")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def contour_levels(slices: Mapping[str, Any], count: int = 21) -> np.ndarray:
    """Contour levels shared by several 2-D slices, so their panels use one colour scale."""
    values = np.concatenate([np.ravel(s.losses) for s in slices.values()])
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if not high > low:
        high = low + max(abs(low), 1.0) * 1e-6
    return np.linspace(low, high, count)


def draw_slice_2d(ax: Any, label: str, s: Any, fig: Any = None, levels: np.ndarray | None = None) -> None:
    """Draws one 2-D slice as a filled contour panel (``levels``: shared contour levels)."""
    losses = np.asarray(s.losses).T  # contourf wants (y, x)
    levels = contour_levels({label: s}) if levels is None else levels
    contour = ax.contourf(s.alphas, s.betas, losses, levels=levels, cmap="viridis")
    ax.contour(s.alphas, s.betas, losses, levels=levels[::2], colors="k", linewidths=0.4)
    ax.plot([0], [0], "r+", markersize=10)
    ax.set_title(label)
    ax.set_xlabel("direction 1")
    ax.set_ylabel("direction 2")
    if fig is not None:
        fig.colorbar(contour, ax=ax, format="%.3g")


def plot_slices(slices: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Writes a PNG of loss slices: 1-D ones as curves on one axes, 2-D ones as contour panels.

    Args:
      slices: label -> :class:`~mirrorgrad_jax.analysis.flatness.LossSlice`; all 1-D or all 2-D.
      path: the PNG file (folders are created).

    Returns:
      The path written.

    Raises:
      ValueError: no slices, or 1-D and 2-D slices mixed.
    """
    if not slices:
        raise ValueError("no slices to plot")
    dims = {1 if s.betas is None else 2 for s in slices.values()}
    if len(dims) != 1:
        raise ValueError("plot_slices needs all-1-D or all-2-D slices, got a mix")
    plt = _pyplot()
    if dims == {1}:
        fig, ax = plt.subplots(figsize=(6, 4))
        draw_slices_1d(ax, slices)
    else:
        fig, axes = plt.subplots(1, len(slices), figsize=(4.5 * len(slices), 4), squeeze=False)
        levels = contour_levels(slices)
        for ax, (label, s) in zip(axes[0], slices.items()):
            draw_slice_2d(ax, label, s, fig, levels)
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | os.PathLike) -> str:
    """Saves ``fig`` as a PNG at ``path`` (folders created) and closes it; returns the path."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


#: Axis label of each perturbation's level.
_LEVEL_LABELS = {
    "noise": "noise sigma (x per-dimension feature std)",
    "swap": "fraction of items with another item's features",
    "campaign": "campaign shift (x mean feature-row norm)",
    "missing": "fraction of items with missing features",
}


def draw_robustness(ax: Any, curves: Mapping[str, Sequence[Mapping[str, Any]]], kind: str, metric: str) -> None:
    for label, summary in curves.items():
        points = sorted((s["level"], s["mean"], s["std"]) for s in summary if s["kind"] == kind and s["metric"] == metric)
        if points:
            levels, means, stds = zip(*points)
            ax.errorbar(levels, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
    ax.set_title(f"robustness: {kind}")
    ax.set_xlabel(_LEVEL_LABELS.get(kind, "perturbation level"))
    ax.set_ylabel(f"{metric} retention (perturbed / clean)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)


def perturbation_kinds(curves: Mapping[str, Sequence[Mapping[str, Any]]], metric: str) -> list[str]:
    present = {s["kind"] for summary in curves.values() for s in summary if s["metric"] == metric}
    return [k for k in PERTURBATIONS if k in present] + sorted(present - set(PERTURBATIONS))


def plot_robustness(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike, metric: str = "recall@20") -> str:
    """Writes a PNG of retention against perturbation level: one panel per kind, one line per label.

    Args:
      curves: label (e.g. ``"no MG"``, ``"MG gradient"``) -> :func:`~mirrorgrad_jax.analysis.robustness.summarise` output.
      path: the PNG file (folders are created).
      metric: the metric whose retention is drawn; error bars are the std over seeds.

    Returns:
      The path written.

    Raises:
      ValueError: when no curve has ``metric``.
    """
    kinds = perturbation_kinds(curves, metric)
    if not kinds:
        raise ValueError(f"no summary rows for metric {metric!r}")
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        draw_robustness(ax, curves, kind, metric)
    return save_figure(fig, path)


def plot_comparison(curves: Mapping[str, Any], slices: Mapping[str, Any], slices2: Mapping[str, Any], metric: str, path: str | os.PathLike) -> str | None:
    """Retention panels per kind, a 1-D slice panel and 2-D slice panels in one PNG; None when there is nothing to draw."""
    kinds = perturbation_kinds(curves, metric) if curves else []
    panels = len(kinds) + (1 if slices else 0) + len(slices2)
    if panels == 0:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, panels, figsize=(4.8 * panels, 4), squeeze=False)
    axes = list(axes[0])
    for kind in kinds:
        draw_robustness(axes.pop(0), curves, kind, metric)
    if slices:
        draw_slices_1d(axes.pop(0), slices)
    levels = contour_levels(slices2) if slices2 else None
    for label, s in slices2.items():
        draw_slice_2d(axes.pop(0), f"2-D loss slice: {label}", s, fig, levels)
    return save_figure(fig, path)
