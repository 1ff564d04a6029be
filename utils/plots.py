"""PNG plots a person would rather look at than read: training curves, per-class scores, PR,
box sizes with anchors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from utils.anchors import fit_quality


def read_history(csv_path: Path) -> dict[str, list[float]]:
    """Columns of a Keras CSVLogger file as float lists (missing or 'NA' cells become NaN)."""
    columns: dict[str, list[float]] = {}
    with open(csv_path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                try:
                    number = float(value)
                except (TypeError, ValueError):
                    number = math.nan
                columns.setdefault(key, []).append(number)
    return columns


def _plot(ax, epochs: list[float], values: list[float], label: str) -> bool:
    points = [(e, v) for e, v in zip(epochs, values, strict=False) if math.isfinite(v)]
    if not points:
        return False
    xs, ys = zip(*points, strict=True)
    ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
    return True


def plot_training_curves(csv_path: Path, out_dir: Path) -> list[Path]:
    """Write ``loss.png`` (train/val losses and parts) and ``map.png`` (if mAP was measured)."""
    history = read_history(csv_path)
    if not history.get("epoch"):
        return []
    epochs = [e + 1 for e in history["epoch"]]
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "val_loss"):
        _plot(axes[0], epochs, history.get(key, []), key)
    axes[0].set_title("total loss")
    for key in ("box", "obj", "cls", "dfl"):  # the parts of either head's loss
        _plot(axes[1], epochs, history.get(key, []), key)
    axes[1].set_title("loss parts (train, weighted)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "loss.png", dpi=100)
    plt.close(fig)
    written.append(out_dir / "loss.png")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    if _plot(ax, epochs, history.get("val_map", []), "val mAP@0.5"):
        ax.set_xlabel("epoch")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title("validation mAP@0.5 (VOC all-point)")
        fig.tight_layout()
        fig.savefig(out_dir / "map.png", dpi=100)
        written.append(out_dir / "map.png")
    plt.close(fig)
    return written


def _nan_low(value: float) -> float:
    return -math.inf if math.isnan(value) else value


def plot_class_values(
    names: list[str],
    values: list[float],
    path: Path,
    *,
    title: str,
    xlabel: str,
    limit: float | None = None,
) -> Path:
    """A horizontal bar per class, largest on top, each bar labelled with its value.

    NaN values (e.g. AP of a class without ground truth) are drawn as empty bars labelled n/a.
    """
    # Ascending, because barh draws the first bar at the bottom.
    order = sorted(range(len(names)), key=lambda i: _nan_low(values[i]))
    shown = [0.0 if math.isnan(values[i]) else float(values[i]) for i in order]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.32 * len(names) + 1.2)))
    bars = ax.barh([names[i] for i in order], shown, color="royalblue")
    right = limit if limit is not None else max([*shown, 1.0]) * 1.15
    for bar, i in zip(bars, order, strict=True):
        value = values[i]
        text = "n/a" if math.isnan(value) else (f"{value:.3f}" if limit else f"{value:g}")
        ax.text(
            bar.get_width() + right * 0.01,
            bar.get_y() + bar.get_height() / 2,
            text,
            va="center",
            fontsize=8,
        )
    ax.set_xlim(0, right * (1.12 if limit else 1.0))
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_pr_curve(recall, precision, path: Path, *, title: str) -> Path:
    """Precision against recall of one class, with the precision envelope VOC AP integrates."""
    fig, ax = plt.subplots(figsize=(5, 4))
    if len(recall):
        r = [0.0, *recall]
        p = [float(precision[0]), *precision]
        envelope = list(p)
        for i in range(len(envelope) - 2, -1, -1):
            envelope[i] = max(envelope[i], envelope[i + 1])
        ax.plot(r, p, color="royalblue", linewidth=1.2, label="precision")
        ax.fill_between(
            r, envelope, step="pre", alpha=0.2, color="orange", label="interpolated (area = AP)"
        )
        ax.legend(loc="lower left")
    else:
        ax.text(0.5, 0.5, "no detections", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


_PLOTTED_BOXES = 20_000  # a random subset keeps large datasets' scatter plots quick and legible


def plot_anchors(
    sizes: np.ndarray,
    new: np.ndarray,
    old: np.ndarray,
    path: Path,
    *,
    title: str,
) -> Path:
    """Scatter the box sizes with the new and the current anchors (and their mean IoU) on top."""
    new_iou, old_iou = fit_quality(sizes, new).mean_iou, fit_quality(sizes, old).mean_iou
    if len(sizes) > _PLOTTED_BOXES:
        sizes = sizes[np.random.default_rng(0).choice(len(sizes), _PLOTTED_BOXES, replace=False)]
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.scatter(
        sizes[:, 0], sizes[:, 1], s=4, alpha=0.3, color="tab:blue", label="boxes", rasterized=True
    )
    ax.scatter(
        old[:, 0],
        old[:, 1],
        s=70,
        marker="o",
        facecolors="none",
        edgecolors="grey",
        label=f"current anchors (mean IoU {old_iou:.3f})",
    )
    ax.scatter(
        new[:, 0],
        new[:, 1],
        s=90,
        marker="x",
        color="tab:red",
        linewidths=2,
        label=f"k-means anchors (mean IoU {new_iou:.3f})",
    )
    ax.set_xlabel("box width (input pixels)")
    ax.set_ylabel("box height (input pixels)")
    ax.set_title(title)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
