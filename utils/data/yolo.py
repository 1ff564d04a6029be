"""YOLO-txt datasets: one label file per image read into the shared sample index, and written.

A split is, relative to the dataset root, a folder of images (searched recursively) or a
``.txt`` list of image paths, one per line, relative paths taken from the list's folder. The
label file of an image follows the rule Ultralytics uses: the last ``images`` folder in the
image's path becomes ``labels`` and the suffix ``.txt`` (``images/train/a.jpg`` ->
``labels/train/a.txt``); without an ``images`` folder the label lies beside the image. A label
line is ``class cx cy w h``: a class index into ``data.classes``, then the box centre and size as
fractions of the image width and height.

Problems follow `utils.data.index`: a malformed line skips the image (it is not known what the file
meant), a class index outside the class list or a value outside 0..1 (pixels written where
fractions belong?) drops that object, and an image without a label file is a background image,
as in YOLO's convention, noted in the report. When not one image of a split has a label file
the layout is wrong, and loading raises ``FileNotFoundError`` naming where labels were sought.
The format has no "difficult" flag: every object is an ordinary one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from utils.data.index import (
    IMAGE_EXTENSIONS,
    DatasetIndex,
    IndexBuilder,
    Issue,
    Sample,
    load_index,
)

IMAGE_SUFFIXES = frozenset(ext.lower() for ext in IMAGE_EXTENSIONS)
LIST_SUFFIX = ".txt"


def split_name(split: str) -> str:
    """A split's short name: its folder name or its list's stem (``images/train`` -> train)."""
    return Path(split).stem


def label_path(image: Path) -> Path:
    """The label file of an image (see the module docstring)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def _list_images(builder: IndexBuilder, path: Path) -> list[Path]:
    """The images a split names, in a stable order; every folder or list read is stat-ed, so a
    file added or removed invalidates the cache."""
    builder.stat(builder.rel(path))
    if path.is_dir():
        images = []
        for folder, subfolders, files in os.walk(path):
            subfolders.sort()
            if Path(folder) != path:
                builder.stat(builder.rel(Path(folder)))
            images.extend(
                Path(folder) / f for f in sorted(files) if Path(f).suffix.lower() in IMAGE_SUFFIXES
            )
        return images
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    # normpath: a "../" entry must not carry ".." into the sample id (detection file paths).
    return [Path(os.path.normpath(path.parent / line.strip())) for line in lines if line.strip()]


def _parse_labels(path: Path) -> list[tuple[int, float, float, float, float]] | str:
    """The rows of a label file, or what is wrong with it."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        return f"{type(error).__name__}: {error}"
    rows = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            return f"line {line_no}: {len(parts)} values, expected 5 (class cx cy w h)"
        try:
            values = [float(p) for p in parts]
        except ValueError:
            return f"line {line_no}: not numbers: {line.strip()!r}"
        if not all(math.isfinite(v) for v in values) or not values[0].is_integer():
            return f"line {line_no}: expected an integer class and finite numbers: {line.strip()!r}"
        rows.append((int(values[0]), *values[1:]))
    return rows


def _read_split(builder: IndexBuilder, split: str) -> None:
    path = builder.root / split
    report = builder.report
    base = path if path.is_dir() else path.parent
    prefix = split_name(split)
    images = _list_images(builder, path)
    labels_found = 0
    for image in images:
        report.num_listed += 1
        try:
            inside = image.relative_to(base).with_suffix("").as_posix()
        except ValueError:  # a listed image outside the list's folder
            inside = image.stem
        image_id = f"{prefix}/{inside}"
        image_rel = builder.rel(image)
        if not builder.claim_id(Path(builder.rel(path)), image_id):
            continue
        if builder.stat(image_rel) is None:
            report.add(Path(image_rel), Issue.MISSING_IMAGE)
            continue
        label = Path(builder.rel(label_path(image)))
        rows: list[tuple[int, float, float, float, float]] | str = []
        if builder.stat(label.as_posix()) is None:
            report.add(label, Issue.MISSING_LABEL)
        else:
            labels_found += 1
            rows = _parse_labels(builder.root / label)
        if isinstance(rows, str):
            report.add(label, Issue.MALFORMED_ENTRY, rows)
            continue
        size = builder.image_size(image_rel)
        if size is None:
            continue
        builder.add_image(label, image_rel, image_id, size, _objects(builder, label, rows, size))
    if images and not labels_found:
        raise FileNotFoundError(
            f"{path}: none of its {len(images)} images has a label file (the first is looked "
            f"up at {label_path(images[0])}; labels go in a 'labels' folder beside 'images')"
        )


def _objects(
    builder: IndexBuilder,
    label: Path,
    rows: Sequence[tuple[int, float, float, float, float]],
    size: tuple[int, int],
) -> list[tuple[str, tuple[float, ...], bool]]:
    """Rows as ``(class name, xyxy pixels, difficult)``; rows that cannot be objects are
    recorded and left out (the builder checks the boxes themselves)."""
    names = builder.class_names
    width, height = size
    objects = []
    for cls, cx, cy, w, h in rows:
        if not 0 <= cls < len(names):
            detail = f"class index {cls} (the class list has {len(names)})"
            builder.report.add(label, Issue.UNKNOWN_CLASS, detail)
        elif not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
            builder.report.add(label, Issue.NOT_NORMALIZED, f"{cls} {cx:g} {cy:g} {w:g} {h:g}")
        else:
            box = (
                (cx - w / 2) * width,
                (cy - h / 2) * height,
                (cx + w / 2) * width,
                (cy + h / 2) * height,
            )
            objects.append((names[cls], box, False))
    return objects


def load_yolo(
    root: Path | str, splits: Sequence[str], class_names: Sequence[str], *, cache: bool = True
) -> DatasetIndex:
    """Read, validate and index the YOLO-txt ``splits`` (folders or lists, relative to ``root``).

    Sample ids are ``<split name>/<image path under the split's folder, without suffix>``.
    Raises ``FileNotFoundError`` for a missing split or a split without any label file.
    """
    root = Path(root)
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    for split in splits:
        path = root / split
        if not (path.is_dir() or (path.is_file() and path.suffix == LIST_SUFFIX)):
            raise FileNotFoundError(
                f"YOLO split not found: {path} (expected an images folder or a .txt list)"
            )
    return load_index(root, splits, class_names, _read_split, kind="yolo", cache=cache)


def _fraction(value: float) -> str:
    # Eight decimals: a hundredth of a pixel even at 10,000 pixels, and short lines.
    return f"{value:.8f}".rstrip("0").rstrip(".")


def write_labels(path: Path, sample: Sample) -> None:
    """Write the label file of ``sample`` (an empty file for a background image)."""
    lines = []
    for box, cls in zip(sample.boxes, sample.classes, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        values = (
            (x1 + x2) / 2 / sample.width,
            (y1 + y2) / 2 / sample.height,
            (x2 - x1) / sample.width,
            (y2 - y1) / sample.height,
        )
        lines.append(f"{int(cls)} {' '.join(_fraction(v) for v in values)}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")
