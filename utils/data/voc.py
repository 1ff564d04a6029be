"""Pascal VOC datasets: split files and XML annotations read into the shared sample index, and
annotations written back.

Layout: ``<root>/<folder>/{Annotations,JPEGImages,ImageSets/Main}``, where ``root`` is usually
``VOCdevkit`` and ``folder`` any dataset name (``VOC2007``, ``VOCdemo``). A split names a folder
and a file of ``ImageSets/Main``: ``"VOC2007/trainval"`` reads
``VOCdevkit/VOC2007/ImageSets/Main/trainval.txt``, one image id (file stem) a line.

Problems follow `utils.data.index`: an id without an XML or an image, or an XML that does not
parse, skips the image; an unusable object is dropped; a wrong ``<size>`` is replaced by the
real image size. A missing split file raises ``FileNotFoundError`` naming it.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from utils.data.index import IMAGE_EXTENSIONS, DatasetIndex, IndexBuilder, Issue, Sample, load_index

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


class Annotation(NamedTuple):
    """The fields of a VOC XML that loading uses."""

    size: tuple[float | None, float | None]  # from <size>, None where missing or not a number
    objects: list[tuple[str, tuple[float | None, ...] | None, bool]]  # name, bndbox, difficult


# --- reading --------------------------------------------------------------------------------


def split_file(root: Path | str, split: str) -> Path:
    """The ImageSets file of a split such as ``"VOC2007/trainval"``."""
    folder, _, name = split.partition("/")
    if not folder or not name or "/" in name:
        raise ValueError(
            f"a split is '<dataset folder>/<ImageSets name>' like 'VOC2007/trainval', "
            f"received {split!r}"
        )
    return image_set_file(Path(root) / folder, name)


def image_set_file(dataset_dir: Path, name: str) -> Path:
    """``ImageSets/Main/<name>.txt`` of a dataset folder: the image ids of split ``name``."""
    return dataset_dir / "ImageSets" / "Main" / f"{name}.txt"


def load_split(
    root: Path | str,
    splits: Sequence[str],
    class_names: Sequence[str],
    *,
    cache: bool = True,
    cache_dir: Path | str | None = None,
) -> DatasetIndex:
    """Read, validate and index the samples of ``splits`` (concatenated, in file order).

    Args:
        root: the folder holding the dataset folders, usually ``VOCdevkit``.
        splits: ``"<dataset folder>/<ImageSets name>"`` entries, e.g.
            ``["VOC2007/trainval", "VOC2012/trainval"]``; a single string is one split.
        class_names: the class list; a sample's ``classes`` index into it.
        cache: reuse (and write) the on-disk index while no file changed.
        cache_dir: where the index is cached; ``<root>/.cache`` by default.

    Returns:
        A `DatasetIndex`. Difficult objects are kept and flagged in ``Sample.difficult``.

    Raises:
        FileNotFoundError: a split file does not exist.
        ValueError: a malformed split name or class list.
    """
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    for split in splits:
        path = split_file(root, split)
        if not path.is_file():
            raise FileNotFoundError(f"split file not found: {path}")
    return load_index(
        root, splits, class_names, _read_split, kind="voc", cache=cache, cache_dir=cache_dir
    )


def read_annotation(path: Path) -> Annotation:
    """Read the fields we use from a VOC XML; raises ``ET.ParseError`` or ``OSError``."""
    tree = ET.parse(path).getroot()
    size = tree.find("size")
    width = _number(size.findtext("width")) if size is not None else None
    height = _number(size.findtext("height")) if size is not None else None
    objects = []
    for obj in tree.findall("object"):
        name = (obj.findtext("name") or "").strip()
        bndbox = obj.find("bndbox")
        coords = (
            tuple(_number(bndbox.findtext(tag)) for tag in _BOX_TAGS)
            if bndbox is not None
            else None
        )
        difficult = bool(_number(obj.findtext("difficult")) or 0)
        objects.append((name, coords, difficult))
    return Annotation((width, height), objects)


def _number(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _read_ids(path: Path) -> list[str]:
    # The first token: per-class ImageSets files carry a label column after the id.
    return [
        line.split()[0]
        for line in path.read_text(encoding="utf-8-sig").splitlines()
        if line.strip()
    ]


def _read_split(builder: IndexBuilder, split: str) -> None:
    path = split_file(builder.root, split)
    builder.stat(path.relative_to(builder.root).as_posix())
    folder = split.partition("/")[0]
    for stem in _read_ids(path):
        builder.report.num_listed += 1
        if builder.claim_id(path.relative_to(builder.root), f"{folder}/{stem}"):
            _read_sample(builder, folder, stem)


def _read_sample(builder: IndexBuilder, folder: str, stem: str) -> None:
    report = builder.report
    xml_rel = f"{folder}/Annotations/{stem}.xml"
    if builder.stat(xml_rel) is None:
        report.add(Path(xml_rel), Issue.MISSING_XML)
        return
    image_rel = next(
        (
            rel
            for rel in (f"{folder}/JPEGImages/{stem}{ext}" for ext in IMAGE_EXTENSIONS)
            if builder.stat(rel) is not None
        ),
        None,
    )
    if image_rel is None:
        report.add(Path(f"{folder}/JPEGImages/{stem}.jpg"), Issue.MISSING_IMAGE)
        return
    try:
        annotation = read_annotation(builder.root / xml_rel)
    except (ET.ParseError, OSError, UnicodeDecodeError) as error:
        report.add(Path(xml_rel), Issue.MALFORMED_XML, str(error))
        return
    size = builder.image_size(image_rel)
    if size is not None:
        builder.add_image(
            Path(xml_rel), image_rel, f"{folder}/{stem}", size, annotation.objects, annotation.size
        )


# --- writing --------------------------------------------------------------------------------


def write_annotation(
    path: Path,
    sample: Sample,
    class_names: Sequence[str],
    *,
    folder: str,
    database: str = "Unknown",
) -> None:
    """Write ``sample`` as a VOC XML: ``<folder>`` is the dataset folder's name, ``<filename>``
    the image's file name and ``<source><database>`` says where the data came from.

    Every field of an official VOC annotation is written, so that other VOC tools find what they
    expect; ``segmented``, ``pose`` and ``truncated``, which a `Sample` does not hold, get VOC's
    neutral values (0, Unspecified, 0).
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = sample.image_path.name
    ET.SubElement(ET.SubElement(root, "source"), "database").text = database
    size = ET.SubElement(root, "size")
    for tag, value in (("width", sample.width), ("height", sample.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for box, cls, hard in zip(sample.boxes, sample.classes, sample.difficult, strict=True):
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[int(cls)]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(bool(hard)))
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in zip(_BOX_TAGS, box, strict=True):
            ET.SubElement(bndbox, tag).text = _coordinate(float(value))
    ET.indent(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")


def _coordinate(value: float) -> str:
    # Whole pixels stay integers as VOC writes them; a fraction keeps six decimals (all that a
    # float32 box holds), so a converted box reads back as it was.
    return f"{value:.6f}".rstrip("0").rstrip(".")
