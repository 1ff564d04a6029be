"""PNG plots a person would rather look at than read: training curves."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


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
    for key in ("box", "obj", "cls"):
        _plot(axes[1], epochs, history.get(key, []), key)
    axes[1].set_title("loss parts (train, unweighted)")
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
