"""Split files of a VOC-layout dataset folder: pairing annotations with images, seeded
train/val/test splits, writing ``ImageSets/Main``, and per-class counts that expose typos.

`tools/voc_annotation.py` prepares a user's own dataset with these; the demo generator
(`utils.data.demo`) and the converter (`utils.data.formats`) write their split files here too.
"""

from __future__ import annotations

import logging
import math
import random
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from utils.data.index import IMAGE_EXTENSIONS, Issue
from utils.data.voc import image_set_file, read_annotation

logger = logging.getLogger(__name__)

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test", "trainval")


@dataclass(frozen=True)
class DatasetFiles:
    """Image ids of a dataset folder, by whether both an XML and an image exist."""

    paired: list[str]
    xml_only: list[str]
    image_only: list[str]


@dataclass
class ClassCount:
    """How often a class name occurs in a set of XMLs."""

    objects: int = 0
    images: int = 0
    difficult: int = 0


def scan_dataset(dataset_dir: Path | str) -> DatasetFiles:
    """Pair ``Annotations/*.xml`` with ``JPEGImages/*`` by file stem (all lists sorted)."""
    dataset_dir = Path(dataset_dir)
    for sub in ("Annotations", "JPEGImages"):
        if not (dataset_dir / sub).is_dir():
            raise FileNotFoundError(f"folder not found: {dataset_dir / sub}")
    xml = {p.stem for p in (dataset_dir / "Annotations").iterdir() if p.suffix == ".xml"}
    extensions = set(IMAGE_EXTENSIONS)
    images = {p.stem for p in (dataset_dir / "JPEGImages").iterdir() if p.suffix in extensions}
    return DatasetFiles(
        paired=sorted(xml & images), xml_only=sorted(xml - images), image_only=sorted(images - xml)
    )


def cut_ids(ids: Sequence[str], num_train: int, num_val: int) -> dict[str, list[str]]:
    """``ids`` cut in their order: the first ``num_train`` are ``train``, the next ``num_val``
    ``val``, the rest ``test``; ``trainval`` is train + val (the keys in `SPLIT_NAMES` order)."""
    train, val = list(ids[:num_train]), list(ids[num_train : num_train + num_val])
    test = list(ids[num_train + num_val :])
    return {"train": train, "val": val, "test": test, "trainval": train + val}


def split_ids(
    ids: Sequence[str], ratios: tuple[float, float, float], seed: int
) -> dict[str, list[str]]:
    """Shuffle ``ids`` with ``seed`` and cut them by ``(train, val, test)`` ratios.

    Counts are ``floor(n * ratio)``, the remainder going one each to the largest fractional
    parts (ties in train, val, test order), so they always add up to ``n``. Returns sorted
    ``train``, ``val``, ``test`` and ``trainval`` (= train + val) lists.
    """
    if len(ratios) != 3 or any(not 0 <= r <= 1 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise ValueError(
            f"ratios must be three numbers in [0, 1] (train, val, test) adding up to 1, "
            f"received {tuple(ratios)}"
        )
    n = len(ids)
    # The epsilon keeps 0.7 * 10 = 6.999... from flooring to 6.
    exact = [n * r for r in ratios]
    counts = [math.floor(x + 1e-9) for x in exact]
    by_remainder = sorted(range(3), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    shuffled = sorted(ids)
    random.Random(seed).shuffle(shuffled)
    splits = cut_ids(shuffled, counts[0], counts[1])
    return {name: sorted(split) for name, split in splits.items()}


def write_split_files(dataset_dir: Path, splits: Mapping[str, Sequence[str]]) -> None:
    """Write each split's ids, one a line, to ``ImageSets/Main/<name>.txt`` of ``dataset_dir``."""
    for name, ids in splits.items():
        path = image_set_file(dataset_dir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{image_id}\n" for image_id in ids), encoding="utf-8")


def write_splits(
    dataset_dir: Path | str,
    ratios: tuple[float, float, float],
    seed: int,
    *,
    overwrite: bool = False,
) -> dict[str, list[str]]:
    """Write ``ImageSets/Main/{train,val,test,trainval}.txt`` for a VOC-layout folder.

    Only ids with both an XML and an image are used (see `scan_dataset` for the others).
    Existing split files are kept unless ``overwrite``: official VOC splits must not be lost to a
    mistyped path. Returns the ids written per split.
    """
    dataset_dir = Path(dataset_dir)
    splits = split_ids(scan_dataset(dataset_dir).paired, ratios, seed)
    existing = [
        path
        for path in (image_set_file(dataset_dir, name) for name in SPLIT_NAMES)
        if path.exists()
    ]
    if existing and not overwrite:
        raise FileExistsError(f"split files exist (pass overwrite to replace): {existing[0]}")
    write_split_files(dataset_dir, splits)
    return splits


def count_classes(dataset_dir: Path | str, ids: Iterable[str]) -> dict[str, ClassCount]:
    """Per class name: objects, images and difficult objects in ``Annotations/<id>.xml``.

    Every name found is counted, known or not, which is the point: a typo shows up as its own
    row. Unreadable XMLs are skipped with a warning. Names are sorted.
    """
    dataset_dir = Path(dataset_dir)
    counts: dict[str, ClassCount] = {}
    for image_id in ids:
        path = dataset_dir / "Annotations" / f"{image_id}.xml"
        try:
            annotation = read_annotation(path)
        except (ET.ParseError, OSError, UnicodeDecodeError) as error:
            logger.warning("%s: %s (%s)", path, Issue.MALFORMED_XML, error)
            continue
        for name in {name for name, _, _ in annotation.objects}:
            counts.setdefault(name, ClassCount()).images += 1
        for name, _, difficult in annotation.objects:
            counts[name].objects += 1
            counts[name].difficult += difficult
    return dict(sorted(counts.items()))
