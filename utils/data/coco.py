"""COCO-JSON datasets: an instances file read into the shared sample index, written back, and
detections written with the file's own image and category ids.

A split is an instances file relative to the dataset root, e.g.
``annotations/instances_train2017.json``. Its images lie in the folder that ``data.coco_images``
names, relative to the root; ``{name}`` in it is the file's stem without ``instances_``
(COCO's own layout: ``train2017/``) and ``{dir}`` the file's folder (exports that keep the json
beside the images). An image's ``file_name`` is relative to that folder.

Classes are matched by category NAME to the configured class list, so category ids may be any
integers (COCO's own skip numbers: 1..90 for 80 classes); the class list's order fixes the
contiguous class indices the model uses, and `detection_results` maps them back to the ids.
``iscrowd`` annotations become difficult objects: both mean "neither a true nor a false
positive", which is how scoring treats them either way (`utils.eval.scoring` scores difficult
objects as COCO crowd regions), and training skips them unless ``data.use_difficult``.

Problems follow `utils.data.index`: an unusable image entry skips the image, an unusable annotation
drops the object, and a file that is not COCO JSON at all raises ``ValueError`` naming it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from utils.data.index import DatasetIndex, IndexBuilder, Issue, Sample, load_index
from utils.eval.metrics import ImageDetections

logger = logging.getLogger(__name__)

INSTANCES_PREFIX = "instances_"
RESULTS_DIR = "coco-results"


def split_name(split: str) -> str:
    """A split's short name: the file stem without ``instances_`` (``train2017``)."""
    return Path(split).stem.removeprefix(INSTANCES_PREFIX)


def images_folder(split: str, coco_images: str) -> str:
    """The images folder of ``split`` (relative to the root) that the template names."""
    folder = Path(split).parent.as_posix()
    try:
        return coco_images.format(name=split_name(split), dir=folder)
    except (KeyError, IndexError, ValueError):
        raise ValueError(
            f"data.coco_images {coco_images!r}: only {{name}} and {{dir}} may stand in braces"
        ) from None


def read_instances(path: Path) -> dict[str, Any]:
    """The parsed file, checked to be a COCO instances file (``images``, ``annotations`` and
    ``categories`` lists, categories with unique int ids and unique names)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a COCO instances file (the top level is not an object)")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: not a COCO instances file ('{key}' is not a list)")
    categories = data["categories"]
    for category in categories:
        valid = (
            isinstance(category, dict)
            and _is_int(category.get("id"))
            and isinstance(category.get("name"), str)
        )
        if not valid:
            raise ValueError(f"{path}: a category without an int id and a name: {category!r}")
    for key in ("id", "name"):
        values = [c[key] for c in categories]
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            raise ValueError(f"{path}: category {key}s listed twice: {repeated}")
    return data


def category_names(data: dict[str, Any]) -> dict[int, str]:
    """Category id -> name, in id order."""
    return {c["id"]: c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _box(bbox: Any) -> tuple[float | None, ...] | None:
    """``[x, y, w, h]`` as xyxy (None entries where not numbers), None when not 4 values."""
    if not isinstance(bbox, list) or len(bbox) != 4:
        return None
    x, y, w, h = (_number(v) for v in bbox)
    x2 = x + w if x is not None and w is not None else None
    y2 = y + h if y is not None and h is not None else None
    return x, y, x2, y2


def _read_split(builder: IndexBuilder, split: str, coco_images: str) -> None:
    path = builder.root / split
    json_file = Path(builder.rel(path))
    builder.stat(json_file.as_posix())
    data = read_instances(path)
    names = category_names(data)
    folder = builder.root / images_folder(split, coco_images)
    prefix = split_name(split)
    report = builder.report

    entries: dict[int, dict[str, Any]] = {}
    for entry in data["images"]:
        report.num_listed += 1
        file_name = entry.get("file_name") if isinstance(entry, dict) else None
        if not (isinstance(file_name, str) and file_name and _is_int(entry.get("id"))):
            report.add(json_file, Issue.MALFORMED_ENTRY, f"image entry {entry!r:.80}")
        elif entry["id"] in entries:
            report.add(json_file, Issue.MALFORMED_ENTRY, f"image id {entry['id']} listed twice")
        else:
            entries[entry["id"]] = entry

    objects: dict[int, list[tuple[str, tuple[float | None, ...] | None, bool]]] = {}
    for ann in data["annotations"]:
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        if not (_is_int(image_id) and image_id in entries):
            report.add(json_file, Issue.ORPHAN_ANNOTATION, f"image id {image_id!r}")
            continue
        category = ann.get("category_id")
        if not (_is_int(category) and category in names):
            detail = f"category id {category!r} (not in the categories)"
            report.add(json_file, Issue.UNKNOWN_CLASS, detail)
            continue
        difficult = bool(ann.get("iscrowd", 0))
        objects.setdefault(ann["image_id"], []).append(
            (names[category], _box(ann.get("bbox")), difficult)
        )

    for coco_id, entry in entries.items():
        file_name = entry["file_name"]
        image_rel = builder.rel(folder / file_name)
        image_id = f"{prefix}/{Path(file_name).with_suffix('').as_posix()}"
        if not builder.claim_id(json_file, image_id):
            continue
        if builder.stat(image_rel) is None:
            report.add(Path(image_rel), Issue.MISSING_IMAGE)
            continue
        size = builder.image_size(image_rel)
        if size is None:
            continue
        stated = (_number(entry.get("width")), _number(entry.get("height")))
        # Object problems are filed under the image: the json alone would not say which one.
        objs = objects.get(coco_id, [])
        builder.add_image(Path(image_rel), image_rel, image_id, size, objs, stated)


def load_coco(
    root: Path | str,
    splits: Sequence[str],
    class_names: Sequence[str],
    *,
    coco_images: str,
    cache: bool = True,
) -> DatasetIndex:
    """Read, validate and index the instances files ``splits`` (relative to ``root``).

    Sample ids are ``<split name>/<file_name without suffix>``, e.g. ``val2017/000000000139``.
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for one that is not COCO.
    """
    root = Path(root)
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    for split in splits:
        images_folder(split, coco_images)  # a bad template is an error before any reading
        if not (root / split).is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {root / split}")
    read = partial(_read_split, coco_images=coco_images)
    return load_index(
        root, splits, class_names, read, kind="coco", options=(coco_images,), cache=cache
    )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _rounded(values: Sequence[float]) -> list[float]:
    # Boxes are float32 in a Sample; six decimals keep every digit float32 has for pixels.
    return [round(float(v), 6) for v in values]


def write_instances(
    path: Path,
    samples: Sequence[Sample],
    file_names: Sequence[str],
    class_names: Sequence[str],
    category_ids: Sequence[int],
) -> None:
    """Write ``samples`` as a COCO instances file; image ``i`` gets id ``i + 1`` and
    ``file_names[i]``, class ``k`` the category id ``category_ids[k]``, difficult objects
    ``iscrowd: 1``."""
    images, annotations = [], []
    for image_id, (sample, file_name) in enumerate(zip(samples, file_names, strict=True), 1):
        images.append(
            {"id": image_id, "file_name": file_name, "width": sample.width, "height": sample.height}
        )
        for box, cls, hard in zip(sample.boxes, sample.classes, sample.difficult, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            bbox = _rounded([x1, y1, x2 - x1, y2 - y1])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category_ids[int(cls)]),
                    "bbox": bbox,
                    "area": round(bbox[2] * bbox[3], 6),
                    "iscrowd": int(bool(hard)),
                    "segmentation": [],
                }
            )
    categories = [
        {"id": int(cid), "name": name} for cid, name in zip(category_ids, class_names, strict=True)
    ]
    data = {"images": images, "annotations": annotations, "categories": categories}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def detection_results(
    root: Path | str,
    split: str,
    coco_images: str,
    samples: Sequence[Sample],
    detections: Sequence[ImageDetections],
    class_names: Sequence[str],
) -> tuple[list[dict[str, Any]], int]:
    """The detections of the samples that ``split`` lists, as a COCO result list with the
    file's own image ids and category ids (what ``COCO.loadRes`` reads).

    Returns the results and the number of detections left out because their class has no
    category of that name in the file.
    """
    root = Path(root)
    data = read_instances(root / split)
    category_of = {name: cid for cid, name in category_names(data).items()}
    folder = root / images_folder(split, coco_images)
    image_of = {
        folder / e["file_name"]: e["id"]
        for e in data["images"]
        if isinstance(e, dict) and isinstance(e.get("file_name"), str) and _is_int(e.get("id"))
    }
    results: list[dict[str, Any]] = []
    unmatched = 0
    for sample, dets in zip(samples, detections, strict=True):
        image_id = image_of.get(sample.image_path)
        if image_id is None:
            continue
        for box, score, cls in zip(dets.boxes, dets.scores, dets.classes, strict=True):
            category = category_of.get(class_names[int(cls)])
            if category is None:
                unmatched += 1
                continue
            x1, y1, x2, y2 = (float(v) for v in np.asarray(box))
            results.append(
                {
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": _rounded([x1, y1, x2 - x1, y2 - y1]),
                    "score": round(float(score), 6),
                }
            )
    return results, unmatched


def write_detection_results(
    out_dir: Path,
    root: Path | str,
    splits: Sequence[str],
    coco_images: str,
    samples: Sequence[Sample],
    detections: Sequence[ImageDetections],
    class_names: Sequence[str],
) -> list[Path]:
    """One ``<out_dir>/coco-results/<instances file name>`` result list per split (see
    `detection_results`); returns the files written."""
    names = [Path(split).name for split in splits]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"two splits are named {repeated[0]}; score them one at a time")
    written = []
    for split, name in zip(splits, names, strict=True):
        results, unmatched = detection_results(
            root, split, coco_images, samples, detections, class_names
        )
        if unmatched:
            logger.warning(
                "%s: %d detections left out: their class is not a category there", split, unmatched
            )
        path = out_dir / RESULTS_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results), encoding="utf-8")
        written.append(path)
    return written
