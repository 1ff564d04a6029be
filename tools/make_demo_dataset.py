"""Generate a demo dataset (VOC layout) and optionally a preview image.

Presets: shapes (coloured shapes, 6 classes; the default) and dense (many small tree crowns on
aerial-like ground, one class). Split sizes and the folder default to the preset's.

Examples:
    python tools/make_demo_dataset.py --out VOCdevkit/VOCdemo --preview demo_preview.png
    python tools/make_demo_dataset.py --preset dense --preview dense_preview.png
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
from utils.data.demo import DEMO_PRESETS, PRESETS, Preset, generate_demo_dataset, split_sizes
from utils.data.voc import image_set_file, read_annotation

PREVIEW_CELL = 320  # pixels per grid cell side
PREVIEW_COLUMNS = 4


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset",
        choices=DEMO_PRESETS,
        default="shapes",
        help="what the images hold: shapes (6 classes) or dense (many small tree crowns, "
        "one class) (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="dataset directory to write; an earlier demo dataset there is replaced "
        "(default: VOCdevkit/VOCdemo for shapes, VOCdevkit/VOCdense for dense)",
    )
    for split in ("train", "val", "test"):
        parser.add_argument(
            f"--{split}",
            type=int,
            default=None,
            help=f"{split} images (default: the preset's, shapes 600/150/150, dense 50/20/20)",
        )
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


def _draw_annotations(
    image: np.ndarray, xml_path: Path, scale: float, preset: Preset
) -> np.ndarray:
    """Resizes the image by ``scale`` and draws the boxes from its VOC XML on it, in the preset's
    label colours, with the class names when the preset has several classes."""
    colours = dict(zip(preset.classes, preset.label_colours, strict=True))
    canvas = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    height, width = canvas.shape[:2]
    for name, (xmin, ymin, xmax, ymax), _ in read_annotation(xml_path).objects:
        # VOC 1-based inclusive pixel indices -> continuous corners, then scaled.
        x0, y0 = round((xmin - 1) * scale), round((ymin - 1) * scale)
        x1, y1 = round(xmax * scale) - 1, round(ymax * scale) - 1
        colour = colours.get(name, (255, 255, 255))
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, 1)
        if len(preset.classes) == 1:
            continue
        (tw, th), base = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)
        tx = min(x0, width - tw)
        ty = y0 - 3 if y0 - th - base >= 0 else min(y1 + th + 3, height - base)
        cv2.putText(canvas, name, (tx, ty), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return canvas


def write_preview(dataset_dir: Path, out_file: Path, count: int, preset: Preset) -> Path:
    """Writes a grid of the first ``count`` train images with their annotations."""
    stems = image_set_file(dataset_dir, "train").read_text().split()[:count]
    if not stems:
        raise ValueError(f"{dataset_dir} has no train images to preview")
    rows = -(-len(stems) // PREVIEW_COLUMNS)
    grid = np.full((rows * PREVIEW_CELL, PREVIEW_COLUMNS * PREVIEW_CELL, 3), 40, np.uint8)
    for i, stem in enumerate(stems):
        image = cv2.imread(str(dataset_dir / "JPEGImages" / f"{stem}.jpg"))
        scale = PREVIEW_CELL / max(image.shape[:2])
        xml_path = dataset_dir / "Annotations" / f"{stem}.xml"
        image = _draw_annotations(image, xml_path, scale, preset)
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
    preset = PRESETS[args.preset]
    train, val, test = split_sizes(args.preset, args.train, args.val, args.test)
    out = args.out if args.out is not None else Path("VOCdevkit") / preset.folder
    if args.preview is not None and min(train, args.preview_count) < 1:
        return fail(
            f"--preview draws train images: it needs --train and --preview-count of at least 1 "
            f"(received {train} and {args.preview_count})"
        )
    total = train + val + test
    start = time.perf_counter()
    try:
        with tqdm(total=total, unit="img", desc="demo dataset", delay=0.5) as bar:
            generate_demo_dataset(
                out,
                preset=args.preset,
                num_train=train,
                num_val=val,
                num_test=test,
                seed=args.seed,
                progress=bar.update,
            )
    except (ValueError, FileExistsError) as err:
        return fail(str(err))
    print(f"{total} {args.preset} images in {time.perf_counter() - start:.1f} s -> {out}")
    if args.preview is not None:
        print(f"preview -> {write_preview(out, args.preview, args.preview_count, preset)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
