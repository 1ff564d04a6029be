"""Scoring detections of a split: detection files, VOC AP, COCO mAP, P/R/F1, a JSON report.

Detections travel through plain text files so that other tools can score them too, and so that
scoring needs no model: ``<out>/detection-results/<image id>.txt`` holds one line per box,
``class_name score x1 y1 x2 y2`` (original-image pixels, continuous coordinates), and
``<out>/ground-truth/<image id>.txt`` one line per object, ``class_name x1 y1 x2 y2`` plus the
word ``difficult`` for difficult objects. An image id such as ``VOC2007/000005`` makes a
sub-folder per dataset folder, so ids from several datasets never collide.

VOC AP follows ``utils.eval.metrics`` (devkit rules). COCO figures come from pycocotools itself:
difficult objects become ``iscrowd`` regions, the COCO way of saying "neither true nor false
positive" (a detection inside one is ignored; pycocotools measures that overlap as the share of
the detection inside the region).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from utils.config import Config
from utils.eval.metrics import (
    ClassResult,
    ImageDetections,
    ImageTruth,
    evaluate_voc,
    mean_ap,
    precision_recall_at,
)

logger = logging.getLogger(__name__)

DETECTIONS_DIR = "detection-results"
GROUND_TRUTH_DIR = "ground-truth"
RESULTS_FILE = "results.json"

# COCOeval.stats, in pycocotools' order.
COCO_STAT_NAMES = (
    "map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
    "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large",
)  # fmt: skip


class DetectionFileError(ValueError):
    """A detection file is missing or malformed; the message names the file (and line)."""


# --------------------------------------------------------------------------------------------
# Which images
# --------------------------------------------------------------------------------------------


def split_names(cfg: Config, split: str) -> list[str]:
    """The ImageSets splits that ``--split`` names.

    ``train``, ``val`` and ``test`` mean the config's ``data.<name>_split``; ``FOLDER/NAME`` is
    taken as it is; any other ``NAME`` is that ImageSets file in each dataset folder of
    ``data.test_split`` (e.g. ``trainval``). For COCO and YOLO data any other name is a split
    of that format as it is (a json, a folder or a list under ``data.root``).
    """
    if split in ("train", "val", "test"):
        return list(getattr(cfg.data, f"{split}_split"))
    if "/" in split or cfg.data.format != "voc":
        return [split]
    folders = dict.fromkeys(s.partition("/")[0] for s in cfg.data.test_split)
    return [f"{folder}/{split}" for folder in folders]


def truths_of(samples: Sequence) -> list[ImageTruth]:
    """Ground truth of ``utils.data.index.Sample`` objects (difficult flags kept)."""
    return [ImageTruth(s.boxes, s.classes, s.difficult) for s in samples]


# --------------------------------------------------------------------------------------------
# Text files
# --------------------------------------------------------------------------------------------


def _txt_path(folder: Path, image_id: str) -> Path:
    return folder / f"{image_id}.txt"


def _write_txt(folder: Path, image_id: str, lines: Iterable[str]) -> None:
    path = _txt_path(folder, image_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines), encoding="utf-8")


def _coords(box) -> str:
    return f"{box[0]:.2f} {box[1]:.2f} {box[2]:.2f} {box[3]:.2f}"


def write_detections(
    folder: Path,
    image_ids: Sequence[str],
    detections: Sequence[ImageDetections],
    class_names: Sequence[str],
) -> None:
    """One ``<image id>.txt`` per image (empty when nothing was found)."""
    for image_id, dets in zip(image_ids, detections, strict=True):
        rows = zip(dets.boxes, dets.scores, dets.classes, strict=True)
        lines = (f"{class_names[int(c)]} {s:.6f} {_coords(b)}\n" for b, s, c in rows)
        _write_txt(folder, image_id, lines)


def write_ground_truth(
    folder: Path,
    image_ids: Sequence[str],
    truths: Sequence[ImageTruth],
    class_names: Sequence[str],
) -> None:
    """One ``<image id>.txt`` per image: ``class x1 y1 x2 y2 [difficult]`` per object."""
    for image_id, truth in zip(image_ids, truths, strict=True):
        rows = zip(truth.boxes, truth.classes, truth.difficult, strict=True)
        flag = {True: " difficult", False: ""}
        lines = (f"{class_names[int(c)]} {_coords(b)}{flag[bool(h)]}\n" for b, c, h in rows)
        _write_txt(folder, image_id, lines)


def _parse_detection_line(path: Path, line_no: int, line: str, index: dict[str, int]):
    parts = line.split()
    # The class name is everything before the five numbers, so names may contain spaces.
    if len(parts) < 6:
        raise DetectionFileError(
            f"{path}:{line_no}: expected 'class_name score x1 y1 x2 y2', got {line.strip()!r}"
        )
    name = " ".join(parts[:-5])
    if name not in index:
        raise DetectionFileError(f"{path}:{line_no}: unknown class {name!r}")
    try:
        score, *box = (float(v) for v in parts[-5:])
    except ValueError:
        numbers = " ".join(parts[-5:])
        raise DetectionFileError(f"{path}:{line_no}: not numbers: {numbers!r}") from None
    return box, score, index[name]


def read_detections(
    folder: Path, image_ids: Sequence[str], class_names: Sequence[str]
) -> list[ImageDetections]:
    """Reads the detection file of every image; a missing file is an error (an incomplete
    prediction run would otherwise score as if the detector had found nothing)."""
    missing = [i for i in image_ids if not _txt_path(folder, i).is_file()]
    if missing:
        raise DetectionFileError(
            f"{folder}: {len(missing)} of {len(image_ids)} images have no detection file "
            f"(first: {_txt_path(folder, missing[0]).name}); predict them first"
        )
    index = {name: i for i, name in enumerate(class_names)}
    results = []
    for image_id in image_ids:
        path = _txt_path(folder, image_id)
        rows = [
            _parse_detection_line(path, n, line, index)
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
            if line.strip()
        ]
        results.append(
            ImageDetections(
                np.array([r[0] for r in rows], np.float64).reshape(-1, 4),
                np.array([r[1] for r in rows], np.float64),
                np.array([r[2] for r in rows], np.int64),
            )
        )
    return results


# --------------------------------------------------------------------------------------------
# COCO through pycocotools
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CocoScores:
    """COCOeval.stats by name (``map`` is AP@[.5:.95], ``ap50`` AP@0.5, ...) and per-class AP."""

    stats: dict[str, float]
    class_ap: list[float]  # AP@[.5:.95] per class, NaN without ground truth


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_datasets(
    truths: Sequence[ImageTruth],
    detections: Sequence[ImageDetections],
    image_hw: Sequence[tuple[int, int]],
    num_classes: int,
) -> tuple[dict, list[dict]]:
    """The COCO ground-truth dataset and result list of the same data (ids: image index + 1,
    category = class index + 1); difficult objects are ``iscrowd`` regions."""
    images, annotations, results = [], [], []
    for i, (truth, dets, (h, w)) in enumerate(zip(truths, detections, image_hw, strict=True)):
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for box, cls, hard in zip(truth.boxes, truth.classes, truth.difficult, strict=True):
            xywh = _xywh(box)
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": int(bool(hard)),
            })  # fmt: skip
        for box, score, cls in zip(dets.boxes, dets.scores, dets.classes, strict=True):
            results.append({
                "image_id": i + 1, "category_id": int(cls) + 1, "bbox": _xywh(box),
                "score": float(score),
            })  # fmt: skip
    categories = [{"id": c + 1, "name": str(c)} for c in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}, results


def coco_scores(
    truths: Sequence[ImageTruth],
    detections: Sequence[ImageDetections],
    image_hw: Sequence[tuple[int, int]],
    num_classes: int,
) -> CocoScores:
    """COCO box AP/AR computed by pycocotools' ``COCOeval`` (its console output is swallowed).

    Without any detection pycocotools cannot load results; every figure is then 0 (what it
    reports for classes that have ground truth and no detection), or NaN without ground truth.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_data, results = coco_datasets(truths, detections, image_hw, num_classes)
    counted = [np.asarray(t.classes)[~np.asarray(t.difficult, bool)] for t in truths]
    has_truth = [any(np.any(c == k) for c in counted) for k in range(num_classes)]
    if not results or not any(has_truth):
        value = 0.0 if any(has_truth) else math.nan
        return CocoScores(
            {name: value for name in COCO_STAT_NAMES},
            [0.0 if has else math.nan for has in has_truth],
        )
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_data
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # precision [iou thresholds, recall points, classes, area ranges, max dets]; -1 = no truth.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    class_ap = []
    for k in range(num_classes):
        values = precision[:, :, k]
        values = values[values > -1]
        class_ap.append(float(values.mean()) if values.size else math.nan)
    stats = {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats, strict=True)}
    return CocoScores(stats, class_ap)


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassScore:
    """Every number of one class."""

    name: str
    ap: float  # VOC all-point at the IoU threshold (NaN without ground truth)
    ap_11point: float
    coco_ap: float  # AP@[.5:.95]
    num_gt: int  # non-difficult objects
    num_det: int  # detections scored (difficult matches left out)
    precision: float  # at the display score threshold
    recall: float
    f1: float


@dataclass(frozen=True)
class EvaluationReport:
    """What get_map reports; :meth:`to_json` is the ``results.json`` content."""

    num_images: int
    iou_threshold: float
    score_threshold: float  # the display threshold P/R/F1 are read at
    voc_map: float
    voc_map_11point: float
    coco: dict[str, float]
    classes: list[ClassScore]

    def to_json(self, extra: dict | None = None) -> str:
        """The report as JSON (NaN as null), after the ``extra`` fields (split, settings)."""
        return json.dumps(_no_nan({**(extra or {}), **asdict(self)}), indent=2)


def _no_nan(value):
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


def score_detections(
    truths: Sequence[ImageTruth],
    detections: Sequence[ImageDetections],
    image_hw: Sequence[tuple[int, int]],
    class_names: Sequence[str],
    *,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[EvaluationReport, list[ClassResult]]:
    """VOC AP (all-point and 11-point) at ``iou_threshold``, COCO figures, and P/R/F1 at
    ``score_threshold``; also returns the per-class VOC curves (for plots)."""
    num_classes = len(class_names)
    voc = evaluate_voc(truths, detections, num_classes, iou_threshold=iou_threshold)
    coco = coco_scores(truths, detections, image_hw, num_classes)
    classes = []
    for name, result, coco_ap in zip(class_names, voc, coco.class_ap, strict=True):
        precision, recall, f1 = precision_recall_at(result, score_threshold)
        classes.append(
            ClassScore(
                name=name,
                ap=result.ap,
                ap_11point=result.ap11,
                coco_ap=coco_ap,
                num_gt=result.num_gt,
                num_det=result.num_det,
                precision=precision,
                recall=recall,
                f1=f1,
            )
        )
    report = EvaluationReport(
        num_images=len(truths),
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        voc_map=mean_ap(voc),
        voc_map_11point=mean_ap(voc, eleven_point=True),
        coco=coco.stats,
        classes=classes,
    )
    return report, voc


def write_report(
    out_dir: Path,
    report: EvaluationReport,
    curves: Sequence[ClassResult],
    extra: dict | None = None,
) -> list[Path]:
    """``results.json`` (with ``extra`` fields first) and the PNGs: per-class AP, ground-truth
    counts per class and one PR curve per class under ``pr_curves/``."""
    from utils.plots import plot_class_values, plot_pr_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / RESULTS_FILE
    json_path.write_text(report.to_json(extra) + "\n", encoding="utf-8")
    names = [c.name for c in report.classes]
    written = [json_path]
    written.append(
        plot_class_values(
            names,
            [c.ap for c in report.classes],
            out_dir / "ap_per_class.png",
            title=f"VOC AP@{report.iou_threshold:g} per class (mAP {report.voc_map:.4f})",
            xlabel="average precision",
            limit=1.0,
        )
    )
    written.append(
        plot_class_values(
            names,
            [c.num_gt for c in report.classes],
            out_dir / "ground_truth_counts.png",
            title=f"objects per class ({report.num_images} images, difficult ones not counted)",
            xlabel="objects",
        )
    )
    curve_dir = out_dir / "pr_curves"
    curve_dir.mkdir(exist_ok=True)
    for score, curve in zip(report.classes, curves, strict=True):
        written.append(
            plot_pr_curve(
                curve.recall,
                curve.precision,
                curve_dir / f"{_safe_name(score.name)}.png",
                title=f"{score.name}: AP@{report.iou_threshold:g} = {_fmt(score.ap)}",
            )
        )
    return written


def _safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def format_table(report: EvaluationReport) -> str:
    """The per-class numbers and the summary as a console table."""
    header = (
        f"{'class':<16} {'AP':>7} {'AP11':>7} {'cocoAP':>7} {'GT':>6} {'dets':>7} "
        f"{'P':>6} {'R':>6} {'F1':>6}"
    )
    lines = [header, "-" * len(header)]
    for c in report.classes:
        lines.append(
            f"{c.name[:16]:<16} {_fmt(c.ap):>7} {_fmt(c.ap_11point):>7} "
            f"{_fmt(c.coco_ap):>7} {c.num_gt:>6} {c.num_det:>7} "
            f"{c.precision:>6.3f} {c.recall:>6.3f} {c.f1:>6.3f}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"VOC mAP@{report.iou_threshold:g}: {_fmt(report.voc_map)} (all-point), "
        f"{_fmt(report.voc_map_11point)} (11-point)   COCO mAP@[.5:.95]: "
        f"{_fmt(report.coco['map'])}  AP50: {_fmt(report.coco['ap50'])}   "
        f"(P/R/F1 at score >= {report.score_threshold:g})"
    )
    return "\n".join(lines)
