"""Tiny VOC datasets built in a test's tmp_path: images, XMLs and split files, one at a time.

Shared by the tests of the dataset index (test_data_index.py), the VOC format
(test_voc_format.py) and split writing (test_splits.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from utils.data.index import DatasetIndex, Issue
from utils.data.voc import load_split, split_file

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "car")


def write_image(path: Path, width: int = 64, height: int = 48) -> None:
    """A small noisy image, written by OpenCV in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)


def write_xml(
    path: Path,
    objects: Sequence[tuple] = (),
    size: tuple[str, str] | None = ("64", "48"),
) -> None:
    """An annotation. ``objects`` holds ``(name, bndbox, difficult)``; ``bndbox`` is a tuple of
    four strings (None leaves one tag out) or None for no ``<bndbox>`` at all."""
    parts = ["<annotation><folder>VOC</folder><filename>x.jpg</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height>")
        parts.append("<depth>3</depth></size>")
    for name, bndbox, difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult>")
        if bndbox is not None:
            tags = zip(("xmin", "ymin", "xmax", "ymax"), bndbox, strict=True)
            coords = "".join(f"<{t}>{v}</{t}>" for t, v in tags if v is not None)
            parts.append(f"<bndbox>{coords}</bndbox>")
        parts.append("</object>")
    parts.append("</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts))


def write_split(root: Path, split: str, ids: Sequence[str]) -> None:
    path = split_file(root, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def add_sample(root: Path, image_id: str, objects: Sequence[tuple] = (), **xml_kw) -> None:
    folder, stem = image_id.split("/")
    write_image(root / folder / "JPEGImages" / f"{stem}.jpg")
    write_xml(root / folder / "Annotations" / f"{stem}.xml", objects, **xml_kw)


def load_one(root: Path, image_id: str, objects: Sequence[tuple] = (), **xml_kw) -> DatasetIndex:
    """Build a one-image split and load it without the cache."""
    add_sample(root, image_id, objects, **xml_kw)
    write_split(root, f"{image_id.split('/')[0]}/train", [image_id.split("/")[1]])
    return load_split(root, [f"{image_id.split('/')[0]}/train"], CLASSES, cache=False)


def box(x1, y1, x2, y2) -> tuple[str, str, str, str]:
    return str(x1), str(y1), str(x2), str(y2)


def only_issue(index: DatasetIndex) -> tuple[Issue, str]:
    (problem,) = index.report.problems
    assert index.report.counts == {problem.issue: 1}
    return problem.issue, problem.detail
