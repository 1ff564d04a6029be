"""Fit anchors to the training boxes of a config's dataset (k-means, 1 - IoU distance).

Examples (from the repo root):

    python tools/kmeans_anchors.py --config configs/demo_mobilenetv1_yolov4.yaml \
        --out model_data/demo_anchors.txt
    python tools/kmeans_anchors.py --config configs/my_data.yaml model.input_size=[608,608]

Box sizes are taken from data.train_split and scaled to model.input_size as the letterbox
resize scales them. The number of anchors is the count of indices in model.anchors_mask, and
the written file lists them in the order that mask expects (smallest for the stride-8 output).
The tool prints the mean best IoU and the recall (share of boxes with best IoU > 0.5) of the
new anchors and of the config's current model.anchors, and draws the box sizes with both.
Use the result with `model.anchors=<file>` or by setting model.anchors in your config.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from utils.anchors import (
    RECALL_IOU,
    box_sizes,
    fit_quality,
    format_anchors,
    kmeans_anchors,
    order_for_mask,
    round_anchors,
)
from utils.cli import configure_logging, fail, load_config_or_exit
from utils.config import Config, anchors
from utils.data.formats import load_config_split
from utils.plots import plot_anchors


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="experiment YAML")
    parser.add_argument(
        "--out",
        type=Path,
        help="anchors file to write (default: model_data/<config name>_anchors.txt)",
    )
    parser.add_argument(
        "--plot", type=Path, help="scatter plot PNG to write (default: --out with .png)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        help="k-means seed; the same seed gives the same anchors "
        "(default: the config's train.seed)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="config overrides, e.g. model.input_size=[608,608] data.train_split=[VOC2012/train]",
    )
    return parser.parse_args(argv)


def load_box_sizes(cfg: Config) -> np.ndarray:
    """The training boxes' letterboxed ``(w, h)``; the demo dataset is generated if configured."""
    samples = load_config_split(cfg, cfg.data.train_split, key="data.train_split")
    return box_sizes(samples, cfg.model.input_size, use_difficult=cfg.data.use_difficult)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    cfg = load_config_or_exit(args.config, args.overrides)
    if cfg.model.head != "anchor_based":
        return fail(f"{args.config}: model.head {cfg.model.head} uses no anchors; k-means anchors "
                    "serve the anchor_based head only")  # fmt: skip
    out = args.out or Path("model_data") / f"{cfg.name}_anchors.txt"
    plot = args.plot or out.with_suffix(".png")
    seed = cfg.train.seed if args.seed is None else args.seed
    mask = cfg.model.anchors_mask
    k = sum(len(m) for m in mask)
    try:
        sizes = load_box_sizes(cfg)
    except (FileNotFoundError, ValueError) as exc:  # a missing or empty split, bad class list
        return fail(str(exc))
    start = time.perf_counter()
    try:
        fitted = kmeans_anchors(sizes, k, seed=seed)
    except ValueError as exc:  # too few or degenerate boxes
        return fail(f"data.train_split {cfg.data.train_split}: {exc}")
    seconds = time.perf_counter() - start

    new = order_for_mask(round_anchors(fitted), mask)
    old = np.asarray(anchors(cfg))
    new_fit, old_fit = fit_quality(sizes, new), fit_quality(sizes, old)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(format_anchors(new), encoding="utf-8")
    height, width = cfg.model.input_size
    plot_anchors(
        sizes,
        new,
        old,
        plot,
        title=f"{cfg.name}: {len(sizes)} training boxes at {height}x{width}",
    )

    print(
        f"{len(sizes)} training boxes ({', '.join(cfg.data.train_split)}) at input "
        f"{height}x{width}; {k} anchors, seed {seed}, k-means {seconds:.2f} s"
    )
    print(f"{'anchors':<10} {'mean IoU':>9} {f'recall@{RECALL_IOU:g}':>11}")
    print(f"{'current':<10} {old_fit.mean_iou:>9.4f} {old_fit.recall:>11.4f}  {cfg.model.anchors}")
    print(f"{'k-means':<10} {new_fit.mean_iou:>9.4f} {new_fit.recall:>11.4f}  {out}")
    print(f"anchors: {format_anchors(new).strip()}")
    print(f"plot: {plot}")
    print(f"use them with model.anchors={out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
