"""Generate the demo dataset (coloured shapes, VOC layout) and optionally a preview image.

Example:
    python tools/make_demo_dataset.py --out VOCdevkit/VOCdemo --preview demo_preview.png
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from utils.cli import fail
from utils.data.demo import DEMO_CLASSES, generate_demo_dataset
from utils.data.voc import image_set_file, read_annotation

PREVIEW_CELL = 320  # pixels per grid cell side
PREVIEW_COLUMNS = 4


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("VOCdevkit/VOCdemo"),
        help="dataset directory to write; an earlier demo dataset there is "
        "replaced (default: %(default)s)",
    )
    parser.add_argument("--train", type=int, default=600, help="train images (default: 600)")
    parser.add_argument("--val", type=int, default=150, help="val images (default: 150)")
    parser.add_argument("--test", type=int, default=150, help="test images (default: 150)")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="random seed; the same seed gives the same dataset (default: 0)",
    )
    parser.add_argument(
        "--preview",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write a PNG grid of the first train images with their "
        "annotated boxes and class names",
    )
    parser.add_argument(
        "--preview-count", type=int, default=8, help="images in the preview grid (default: 8)"
    )
    return parser.parse_args(argv)


def _class_colour(name: str) -> tuple[int, int, int]:
    """A BGR drawing colour per class, far from the shapes' own colours (dark and light)."""
    index = DEMO_CLASSES.index(name) if name in DEMO_CLASSES else 0
    return (255, 255, 255) if index % 2 == 0 else (0, 0, 0)


def _draw_annotations(image: np.ndarray, xml_path: Path, scale: float) -> np.ndarray:
    """Resizes the image by ``scale`` and draws the boxes and names from its VOC XML on it."""
    canvas = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    height, width = canvas.shape[:2]
    for name, (xmin, ymin, xmax, ymax), _ in read_annotation(xml_path).objects:
        # VOC 1-based inclusive pixel indices -> continuous corners, then scaled.
        x0, y0 = round((xmin - 1) * scale), round((ymin - 1) * scale)
        x1, y1 = round(xmax * scale) - 1, round(ymax * scale) - 1
        colour = _class_colour(name)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, 1)
        (tw, th), base = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        tx = min(x0, width - tw)
        ty = y0 - 3 if y0 - th - base >= 0 else min(y1 + th + 3, height - base)
        cv2.putText(canvas, name, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return canvas


def write_preview(dataset_dir: Path, out_file: Path, count: int) -> Path:
    """Writes a grid of the first ``count`` train images with their annotations."""
    stems = image_set_file(dataset_dir, "train").read_text().split()[:count]
    if not stems:
        raise ValueError(f"{dataset_dir} has no train images to preview")
    rows = -(-len(stems) // PREVIEW_COLUMNS)
    grid = np.full((rows * PREVIEW_CELL, PREVIEW_COLUMNS * PREVIEW_CELL, 3), 40, np.uint8)
    for i, stem in enumerate(stems):
        image = cv2.imread(str(dataset_dir / "JPEGImages" / f"{stem}.jpg"))
        scale = PREVIEW_CELL / max(image.shape[:2])
        image = _draw_annotations(image, dataset_dir / "Annotations" / f"{stem}.xml", scale)
        r, c = divmod(i, PREVIEW_COLUMNS)
        y, x = r * PREVIEW_CELL, c * PREVIEW_CELL
        grid[y : y + image.shape[0], x : x + image.shape[1]] = image
    out_file.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_file), grid):
        raise OSError(f"could not write {out_file}")
    return out_file


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.preview is not None and min(args.train, args.preview_count) < 1:
        return fail(
            f"--preview draws train images: it needs --train and --preview-count of at least 1 "
            f"(received {args.train} and {args.preview_count})"
        )
    total = args.train + args.val + args.test
    start = time.perf_counter()
    try:
        with tqdm(total=total, unit="img", desc="demo dataset", delay=0.5) as bar:
            generate_demo_dataset(
                args.out,
                num_train=args.train,
                num_val=args.val,
                num_test=args.test,
                seed=args.seed,
                progress=bar.update,
            )
    except (ValueError, FileExistsError) as err:
        return fail(str(err))
    print(f"{total} images in {time.perf_counter() - start:.1f} s -> {args.out}")
    if args.preview is not None:
        print(f"preview -> {write_preview(args.out, args.preview, args.preview_count)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
