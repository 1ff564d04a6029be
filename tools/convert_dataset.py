r"""Convert a detection dataset between Pascal VOC XML, COCO JSON and YOLO txt.

Examples:
    python tools/convert_dataset.py --from voc --to coco --root VOCdevkit \
        --split VOC2007/train --split VOC2007/val --classes model_data/voc_classes.txt \
        --out datasets/voc2007-coco
    python tools/convert_dataset.py --from coco --to yolo --root datasets/coco \
        --split annotations/instances_val2017.json --out datasets/coco-yolo

Splits are named as in a config's data.*_split for the source format: voc
FOLDER/IMAGESET, coco an instances json, yolo an images folder or a .txt list (all relative to
--root). The dataset is read by the same loader training uses, so bad samples are skipped and
reported exactly as training would, boxes are clipped to their images, and what is written is
what training reads. Images are copied byte for byte (or hard-linked with --link).

Lossless: boxes, classes and image sizes survive every direction (coordinates to a millionth of a
pixel; YOLO fractions to 1e-8). Difficult objects become COCO "iscrowd": 1 and come back as
difficult. YOLO txt has no such flag: converting to yolo writes difficult objects as ordinary
ones (the count is printed), so yolo -> voc/coco marks none difficult. COCO category ids are kept
when converting coco -> coco; otherwise classes get ids 1, 2, ... in class-list order. The
output's class list is written to OUT/classes.txt (for a coco source without --classes: the
categories, in id order). The printed data: keys read the converted dataset in a config.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from utils.cli import fail
from utils.data.formats import FORMATS, coco_classes, convert_dataset
from utils.data.index import read_class_names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--from", dest="source", choices=FORMATS, required=True, help="format of the dataset read"
    )
    parser.add_argument(
        "--to", dest="target", choices=FORMATS, required=True, help="format to write"
    )
    parser.add_argument(
        "--root", type=Path, required=True, help="the source dataset root (what data.root would be)"
    )
    parser.add_argument(
        "--split",
        dest="splits",
        action="append",
        required=True,
        metavar="SPLIT",
        help="a split to convert (repeat for several)",
    )
    parser.add_argument(
        "--classes",
        type=Path,
        help="class list, one name per line (required unless --from coco, "
        "where the categories are the default)",
    )
    parser.add_argument(
        "--coco-images",
        default="{name}",
        help="--from coco: the images folder under --root; {name} is the json "
        "stem without 'instances_', {dir} its folder (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output folder (must not exist or be empty); for --to voc it is "
        "the dataset folder, e.g. VOCdevkit/MINE",
    )
    parser.add_argument(
        "--link",
        action="store_true",
        help="hard-link images instead of copying them (same file system)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        category_ids = None
        if args.classes is not None:
            class_names = read_class_names(args.classes)
        elif args.source == "coco":
            class_names, ids = coco_classes(args.root, args.splits)
            category_ids = ids if args.target == "coco" else None
        else:
            return fail(f"--classes is required with --from {args.source}")
        result = convert_dataset(
            args.source,
            args.root,
            args.splits,
            class_names,
            args.target,
            args.out,
            coco_images=args.coco_images,
            category_ids=category_ids,
            link=args.link,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        return fail(str(error))

    for report in result.reports:
        print(report.headline())
    print(f"wrote {result.images} images and their annotations to {args.out}")
    if result.difficult_dropped_flags:
        print(
            f"note: {result.difficult_dropped_flags} difficult objects were written as ordinary "
            "objects (YOLO txt has no difficult flag)"
        )
    print("\nconfig keys for the converted dataset:\ndata:")
    for key, value in result.data.items():
        print(f"  {key}: {value!r}" if "{" in str(value) else f"  {key}: {value}")
    print(f"  # splits: {', '.join(result.splits)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
