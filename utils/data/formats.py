"""Datasets in any of the three annotation formats: the one loader entry point and conversion.

``data.format`` picks the reader (`utils.data.voc`, `utils.data.coco`, `utils.data.yolo`); all
return the same `DatasetIndex` of validated Samples and a `LoadReport`, so the training pipeline,
evaluation and get_map never see the format. Conversion reads a dataset through that same loader
and writes it in another format, so what it writes is exactly what training would have read:
boxes as loaded (clipped to the image), bad samples skipped and reported, images copied
byte for byte. Difficult flags travel as COCO ``iscrowd``; YOLO-txt cannot hold them.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from utils.config import Config, DataConfig, DataFormat, class_names
from utils.data import coco as coco_format
from utils.data import yolo as yolo_format
from utils.data.demo import ensure_demo_dataset, get_preset
from utils.data.index import DatasetIndex, LoadReport, Sample
from utils.data.splits import write_split_files
from utils.data.voc import load_split, write_annotation

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = get_args(DataFormat)  # data.format
CLASSES_FILE = "classes.txt"


def load_files(
    fmt: str,
    root: Path | str,
    splits: Sequence[str],
    class_names: Sequence[str],
    *,
    coco_images: str,
    cache: bool,
) -> DatasetIndex:
    """Read, validate and index ``splits`` of a dataset in format ``fmt`` under ``root``."""
    _check_format(fmt)
    if fmt == "coco":
        return coco_format.load_coco(
            root, splits, class_names, coco_images=coco_images, cache=cache
        )
    if fmt == "yolo":
        return yolo_format.load_yolo(root, splits, class_names, cache=cache)
    return load_split(root, splits, class_names, cache=cache)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r} (expected one of {', '.join(FORMATS)})")


def load_dataset(
    data: DataConfig, splits: Sequence[str], class_names: Sequence[str]
) -> DatasetIndex:
    """`load_files` as the config's ``data`` section describes the dataset."""
    return load_files(
        data.format,
        data.root,
        splits,
        class_names,
        coco_images=data.coco_images,
        cache=data.cache_index,
    )


def load_config_split(cfg: Config, splits: Sequence[str], *, key: str) -> list[Sample]:
    """The usable samples of ``splits`` of the config's dataset, the one way scripts load data.

    Generates the demo dataset first when the config names one and it is missing. ``key`` names
    the setting or option the splits came from (``data.val_split``, ``--split test``), so the
    error for a split left without usable images points at what to change.
    """
    if cfg.data.demo_dataset:
        preset_classes = list(get_preset(cfg.data.demo_preset).classes)
        if class_names(cfg) != preset_classes:
            raise ValueError(
                f"data.classes {cfg.data.classes}: the {cfg.data.demo_preset} demo dataset "
                f"(data.demo_preset) has the classes {preset_classes}, in that order"
            )
        ensure_demo_dataset(
            Path(cfg.data.root) / cfg.data.demo_dataset, preset=cfg.data.demo_preset
        )
    samples = load_dataset(cfg.data, splits, class_names(cfg)).samples
    if not samples:
        raise ValueError(f"{key} {list(splits)}: no usable images (see the warnings above)")
    return samples


def split_name(fmt: str, split: str) -> str:
    """A split's short name: ``VOC2007/trainval`` -> trainval,
    ``annotations/instances_val2017.json`` -> val2017, ``images/train`` -> train."""
    if fmt == "coco":
        return coco_format.split_name(split)
    if fmt == "yolo":
        return yolo_format.split_name(split)
    return split.rpartition("/")[2]


def coco_classes(root: Path | str, splits: Sequence[str]) -> tuple[list[str], list[int]]:
    """The category names and ids of COCO ``splits``, in id order (a class list from the
    categories, for a COCO source given no class list)."""
    found: dict[int, str] = {}
    for split in splits:
        path = Path(root) / split
        for cid, name in coco_format.category_names(coco_format.read_instances(path)).items():
            if found.setdefault(cid, name) != name:
                raise ValueError(f"{path}: category {cid} is {name!r}, elsewhere {found[cid]!r}")
    ids = sorted(found)
    names = [found[cid] for cid in ids]
    if len(set(names)) != len(names):
        raise ValueError(f"{', '.join(splits)}: one category name under two ids")
    if not names:
        raise ValueError(f"{', '.join(splits)}: no categories")
    return names, ids


@dataclass(frozen=True)
class Conversion:
    """What `convert_dataset` wrote."""

    data: dict[str, Any]  # the config's data keys that read the new dataset
    splits: list[str]  # the new split entries, in the order of the source splits
    reports: list[LoadReport]  # how each source split was read
    images: int  # image files written
    difficult_dropped_flags: int  # difficult objects written as ordinary ones (YOLO-txt)


class _Placer:
    """Copies (or hard-links) images, once per destination; two different sources for one
    destination are an error rather than a silent overwrite."""

    def __init__(self, link: bool) -> None:
        self.link = link
        self.sources: dict[Path, Path] = {}

    def place(self, source: Path, target: Path) -> None:
        known = self.sources.get(target)
        if known is not None:
            if known.resolve() != source.resolve():
                raise ValueError(
                    f"{known} and {source} would both be written as {target}; convert those "
                    "splits one at a time into different folders"
                )
            return
        self.sources[target] = source
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.link:
            try:
                os.link(source, target)
                return
            except OSError:  # another file system, or links not allowed: copy instead
                logger.debug("cannot hard-link %s, copying", source)
        shutil.copyfile(source, target)


def _file_stems(samples: Sequence[Sample]) -> list[str]:
    """Output file stems: the images' own stems where they are unique in the split, else the
    sample ids without their split prefix, sub-folders joined by ``_``
    (``train/deeper/a`` -> ``deeper_a``), since every format keeps a split in one folder."""
    stems = [s.image_path.stem for s in samples]
    if len(set(stems)) == len(stems):
        return stems
    return [s.image_id.partition("/")[2].replace("/", "_") for s in samples]


def convert_dataset(
    source: str,
    root: Path | str,
    splits: Sequence[str],
    class_names: Sequence[str],
    target: str,
    out: Path | str,
    *,
    coco_images: str,
    category_ids: Sequence[int] | None = None,
    link: bool = False,
) -> Conversion:
    """Read ``splits`` of a ``source``-format dataset and write them to ``out`` as ``target``.

    Layouts written (``<name>`` is each split's short name, see `split_name`):

    - voc: ``out`` is a dataset folder: ``Annotations/``, ``JPEGImages/``,
      ``ImageSets/Main/<name>.txt``; the data root is ``out``'s parent.
    - coco: ``out/annotations/instances_<name>.json``, images in ``out/<name>/``; category ids
      are ``category_ids`` (per class) or 1, 2, ...
    - yolo: ``out/images/<name>/`` and ``out/labels/<name>/`` (an empty label file for a
      background image).

    ``out/classes.txt`` gets the class list. ``out`` must not exist or be empty.
    """
    _check_format(source)
    _check_format(target)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: exists and is not an empty folder")
    names = [split_name(source, split) for split in splits]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"splits {list(splits)} share the name {repeated[0]!r}; convert apart")
    category_ids = list(category_ids or range(1, len(class_names) + 1))
    placer = _Placer(link)
    new_splits, reports, dropped_flags = [], [], 0
    for split, name in zip(splits, names, strict=True):
        index = load_files(source, root, [split], class_names, coco_images=coco_images, cache=False)
        reports.append(index.report)
        samples = index.samples
        stems = _file_stems(samples)
        if target == "voc":
            for sample, stem in zip(samples, stems, strict=True):
                image = out / "JPEGImages" / f"{stem}{sample.image_path.suffix}"
                placer.place(sample.image_path, image)
                xml = out / "Annotations" / f"{stem}.xml"
                write_annotation(xml, sample, class_names, folder=out.name)
            write_split_files(out, {name: stems})
            new_splits.append(f"{out.name}/{name}")
        elif target == "coco":
            file_names = [
                f"{stem}{s.image_path.suffix}" for s, stem in zip(samples, stems, strict=True)
            ]
            for sample, file_name in zip(samples, file_names, strict=True):
                placer.place(sample.image_path, out / name / file_name)
            new_split = f"annotations/{coco_format.INSTANCES_PREFIX}{name}.json"
            coco_format.write_instances(
                out / new_split, samples, file_names, class_names, category_ids
            )
            new_splits.append(new_split)
        else:
            for sample, stem in zip(samples, stems, strict=True):
                image = out / "images" / name / f"{stem}{sample.image_path.suffix}"
                placer.place(sample.image_path, image)
                yolo_format.write_labels(yolo_format.label_path(image), sample)
                dropped_flags += int(sample.difficult.sum())
            new_splits.append(f"images/{name}")
    out.mkdir(parents=True, exist_ok=True)
    classes = out / CLASSES_FILE
    classes.write_text("".join(f"{n}\n" for n in class_names), encoding="utf-8")
    data = {
        "format": target,
        "root": str(out.parent if target == "voc" else out),
        "classes": str(classes),
    }
    if target == "coco":
        data["coco_images"] = "{name}"
    return Conversion(data, new_splits, reports, len(placer.sources), dropped_flags)
