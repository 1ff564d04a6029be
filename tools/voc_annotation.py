"""Write train/val/test/trainval split files for your own VOC-layout dataset.

Example:
    python tools/voc_annotation.py VOCdevkit/VOCmine --classes model_data/my_classes.txt

The folder needs Annotations/*.xml and JPEGImages/*; ids with both an XML and an image are
shuffled (seeded) and written to ImageSets/Main/{train,val,test,trainval}.txt. The ones without
a partner are listed, and a per-class object count is printed so that a mistyped class name in
an XML stands out.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from utils.cli import fail
from utils.data.index import read_class_names
from utils.data.splits import ClassCount, count_classes, scan_dataset, write_splits

_SHOWN_IDS = 10  # ids listed per kind of unpaired file before "... and N more"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset_dir", type=Path, help="the dataset folder, e.g. VOCdevkit/VOCmine")
    parser.add_argument(
        "--train-ratio", type=float, default=0.8, help="share of images for train (default 0.8)"
    )
    parser.add_argument(
        "--val-ratio", type=float, default=0.1, help="share of images for val (default 0.1)"
    )
    parser.add_argument(
        "--test-ratio", type=float, default=0.1, help="share of images for test (default 0.1)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="shuffle seed; the same seed gives the same splits"
    )
    parser.add_argument(
        "--classes",
        type=Path,
        help="class list (one name per line); names found in the XMLs but not here are flagged",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing ImageSets/Main split files"
    )
    return parser.parse_args(argv)


def _print_unpaired(what: str, ids: list[str]) -> None:
    if not ids:
        return
    shown = ", ".join(ids[:_SHOWN_IDS])
    more = f" ... and {len(ids) - _SHOWN_IDS} more" if len(ids) > _SHOWN_IDS else ""
    print(f"{len(ids)} {what} (not used): {shown}{more}")


def _print_class_table(counts: dict[str, ClassCount], class_names: list[str] | None) -> None:
    rows = dict(counts)
    for name in class_names or ():
        rows.setdefault(name, ClassCount())
    known = set(class_names or ())
    width = max([5, *(len(name) for name in rows)])
    print(f"{'class':<{width}}  {'objects':>8}  {'images':>7}  {'difficult':>9}")
    for name in sorted(rows):
        count = rows[name]
        note = ""
        if class_names is not None and name not in known:
            note = "  <- not in the class list"
        elif count.objects == 0:
            note = "  <- no objects"
        print(f"{name:<{width}}  {count.objects:>8}  {count.images:>7}  {count.difficult:>9}{note}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    ratios = (args.train_ratio, args.val_ratio, args.test_ratio)
    try:
        class_names = read_class_names(args.classes) if args.classes else None
        files = scan_dataset(args.dataset_dir)
        splits = write_splits(args.dataset_dir, ratios, args.seed, overwrite=args.overwrite)
    except FileExistsError as error:
        return fail(f"{error}; use --overwrite to replace them")
    except (FileNotFoundError, ValueError) as error:
        return fail(str(error))

    out_dir = args.dataset_dir / "ImageSets" / "Main"
    sizes = ", ".join(f"{name} {len(ids)}" for name, ids in splits.items())
    print(f"wrote {out_dir}: {sizes}")
    _print_unpaired("annotations without an image", files.xml_only)
    _print_unpaired("images without an annotation", files.image_only)
    print()
    _print_class_table(count_classes(args.dataset_dir, files.paired), class_names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
