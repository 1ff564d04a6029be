"""Draw a grid of augmented training samples with their boxes, to check the input pipeline by eye.

Example:
    python tools/show_augmentations.py --root VOCdevkit --split VOCdemo/train \\
        --classes model_data/demo_classes.txt --size 416 --n 16 --out aug_grid.png
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import cv2
import numpy as np

from utils.cli import configure_logging, fail
from utils.config import AugmentConfig, base_section
from utils.data.index import read_class_names
from utils.data.voc import load_split

# Distinct BGR colours for the class outlines, cycled by class id.
_PALETTE = [
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207),
    (10, 249, 72), (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0),
    (168, 153, 44), (255, 194, 0), (147, 69, 52), (255, 115, 100), (236, 24, 0),
    (255, 56, 132), (133, 0, 82), (255, 56, 203), (200, 149, 255), (199, 55, 255),
]  # fmt: skip


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write a PNG grid of augmented training samples (mosaic, mixup, scale, "
        "flip, HSV) with their boxes and class names drawn.",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("VOCdevkit"),
        help="folder holding the VOC dataset folders (default: %(default)s)",
    )
    parser.add_argument(
        "--split",
        action="append",
        default=None,
        help="'<dataset folder>/<ImageSets name>', repeatable (default: VOCdemo/train)",
    )
    parser.add_argument(
        "--classes",
        type=Path,
        default=Path("model_data/demo_classes.txt"),
        help="class list, one name per line (default: %(default)s)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=416,
        help="square input size, a multiple of 32 (default: %(default)s)",
    )
    parser.add_argument("--n", type=int, default=16, help="images in the grid (default: 16)")
    parser.add_argument(
        "--mosaic",
        type=float,
        default=base_section(AugmentConfig).mosaic,
        help="mosaic probability (default: %(default)s)",
    )
    parser.add_argument(
        "--mixup",
        type=float,
        default=base_section(AugmentConfig).mixup,
        help="mixup probability of a mosaic sample (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="shuffle and augmentation seed (default: %(default)s)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("aug_grid.png"), help="output PNG (default: %(default)s)"
    )
    return parser.parse_args(argv)


def _draw(image: np.ndarray, boxes: np.ndarray, class_names: list[str]) -> np.ndarray:
    """Draws the valid boxes of one sample (RGB float 0..1 in, BGR uint8 out)."""
    canvas = cv2.cvtColor((image * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    for x1, y1, x2, y2, cls in boxes:
        if x2 <= x1 or y2 <= y1:
            continue
        colour = _PALETTE[int(cls) % len(_PALETTE)]
        # Box edges are continuous coordinates: pixel columns x1 .. x2 - 1 are inside.
        top_left = (round(x1), round(y1))
        bottom_right = (max(round(x2) - 1, round(x1)), max(round(y2) - 1, round(y1)))
        cv2.rectangle(canvas, top_left, bottom_right, colour, 1)
        name = class_names[int(cls)] if 0 <= int(cls) < len(class_names) else str(int(cls))
        (tw, th), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        y_text = max(top_left[1], th + 2)
        label_box = (top_left[0], y_text - th - 2), (top_left[0] + tw, y_text)
        cv2.rectangle(canvas, *label_box, colour, -1)
        cv2.putText(canvas, name, (top_left[0], y_text - 2), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
    return canvas


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    configure_logging(logging.INFO)
    if args.size % 32 or args.size <= 0:
        return fail(f"--size must be a positive multiple of 32; received {args.size}")
    if args.n < 1:
        return fail(f"--n must be at least 1; received {args.n}")
    splits = args.split or ["VOCdemo/train"]
    try:
        class_names = read_class_names(args.classes)
        samples = load_split(args.root, splits, class_names).samples
    except (FileNotFoundError, ValueError) as error:
        return fail(str(error))
    if not samples:
        return fail(f"no samples in {splits} under {args.root}")

    from utils.data.pipeline import build_dataset  # TensorFlow: only once the arguments are fine

    options = base_section(AugmentConfig, mosaic=args.mosaic, mixup=args.mixup)
    dataset = build_dataset(
        samples,
        input_size=(args.size, args.size),
        batch_size=1,
        training=True,
        augment=options,
        shuffle_seed=args.seed,
    )
    tiles = []
    for images, boxes in dataset.repeat().take(args.n):
        tiles.append(_draw(images[0].numpy(), boxes[0].numpy(), class_names))

    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    gap = 4
    grid = np.full(
        (rows * (args.size + gap) - gap, cols * (args.size + gap) - gap, 3), 255, np.uint8
    )
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        y, x = r * (args.size + gap), c * (args.size + gap)
        grid[y : y + args.size, x : x + args.size] = tile
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(args.out), grid):
        return fail(f"--out {args.out}: could not write it")
    print(f"wrote {args.out} ({len(tiles)} samples, {args.size}x{args.size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
