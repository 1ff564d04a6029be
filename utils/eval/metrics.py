"""Detection metrics: Pascal VOC average precision (all-point and 11-point) with VOC devkit rules.

Boxes are ``xyxy`` in any pixel space shared by ground truth and detections (IoU does not change
under the uniform scale + shift of a letterbox, so letterboxed coordinates score the same as
original ones). IoU uses continuous coordinates (no VOC "+1"), as pycocotools does.

Devkit rules: detections of a class are ranked by score over all images; each is a true positive
when its best-overlap ground truth of that class (IoU >= threshold) is not matched yet, a false
positive when unmatched or a duplicate, and neither when that ground truth is ``difficult``.
Difficult objects do not count in the number of positives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class ImageDetections:
    """Detections of one image: boxes [K, 4] xyxy, scores [K], classes [K] (int)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


@dataclass(frozen=True, eq=False)
class ImageTruth:
    """Ground truth of one image: boxes [N, 4] xyxy, classes [N] (int), difficult [N] (bool)."""

    boxes: np.ndarray
    classes: np.ndarray
    difficult: np.ndarray


@dataclass(frozen=True, eq=False)
class ClassResult:
    """Scores of one class. ``ap`` is NaN for a class without (non-difficult) ground truth."""

    ap: float  # all-point interpolated (VOC2010+)
    ap11: float  # 11-point interpolated (VOC2007)
    num_gt: int
    num_det: int
    recall: np.ndarray  # cumulative, one entry per ranked detection
    precision: np.ndarray
    scores: np.ndarray  # ranked detection scores (to read P/R at a score threshold)
    matched: np.ndarray  # per ranked detection: True for a true positive


def voc_ap(recall: np.ndarray, precision: np.ndarray, *, eleven_point: bool = False) -> float:
    """Area under the precision envelope; ``recall``/``precision`` are cumulative curves."""
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if eleven_point:
        points = [
            precision[recall >= t].max() if np.any(recall >= t) else 0.0
            for t in np.linspace(0.0, 1.0, 11)
        ]
        return float(np.mean(points))
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope: best precision at recall >= r
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def _iou_one_to_many(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def evaluate_class(
    truths: Sequence[ImageTruth],
    detections: Sequence[ImageDetections],
    class_id: int,
    *,
    iou_threshold: float = 0.5,
) -> ClassResult:
    """VOC AP of one class over images paired by index in ``truths`` and ``detections``."""
    gt_boxes, gt_difficult, num_gt = [], [], 0
    det_image, det_score, det_box = [], [], []
    for index, (truth, dets) in enumerate(zip(truths, detections, strict=True)):
        keep = np.asarray(truth.classes) == class_id
        gt_boxes.append(np.asarray(truth.boxes, np.float64).reshape(-1, 4)[keep])
        difficult = np.asarray(truth.difficult, bool)[keep]
        gt_difficult.append(difficult)
        num_gt += int(np.sum(~difficult))
        mine = np.asarray(dets.classes) == class_id
        det_image.append(np.full(int(mine.sum()), index))
        det_score.append(np.asarray(dets.scores, np.float64)[mine])
        det_box.append(np.asarray(dets.boxes, np.float64).reshape(-1, 4)[mine])
    images = np.concatenate(det_image) if det_image else np.zeros(0, int)
    scores = np.concatenate(det_score) if det_score else np.zeros(0)
    boxes = np.concatenate(det_box) if det_box else np.zeros((0, 4))
    order = np.argsort(-scores, kind="stable")
    images, scores, boxes = images[order], scores[order], boxes[order]

    matched = [np.zeros(len(b), bool) for b in gt_boxes]
    tp = np.zeros(len(scores))
    fp = np.zeros(len(scores))
    for d, (image, box) in enumerate(zip(images, boxes, strict=True)):
        candidates = gt_boxes[image]
        if len(candidates) == 0:
            fp[d] = 1
            continue
        overlaps = _iou_one_to_many(box, candidates)
        best = int(np.argmax(overlaps))
        if overlaps[best] < iou_threshold:
            fp[d] = 1
        elif gt_difficult[image][best]:
            continue  # neither true nor false positive
        elif not matched[image][best]:
            matched[image][best] = True
            tp[d] = 1
        else:
            fp[d] = 1  # duplicate detection
    counted = (tp + fp) > 0
    tp_cum, fp_cum = np.cumsum(tp[counted]), np.cumsum(fp[counted])
    recall = tp_cum / max(num_gt, 1)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    if num_gt == 0:
        ap = ap11 = float("nan")
    else:
        ap = voc_ap(recall, precision)
        ap11 = voc_ap(recall, precision, eleven_point=True)
    return ClassResult(
        ap=ap,
        ap11=ap11,
        num_gt=num_gt,
        num_det=int(counted.sum()),
        recall=recall,
        precision=precision,
        scores=scores[counted],
        matched=tp[counted] > 0,
    )


def evaluate_voc(
    truths: Sequence[ImageTruth],
    detections: Sequence[ImageDetections],
    num_classes: int,
    *,
    iou_threshold: float = 0.5,
) -> list[ClassResult]:
    """Per-class VOC results for classes ``0 .. num_classes - 1``."""
    return [
        evaluate_class(truths, detections, c, iou_threshold=iou_threshold)
        for c in range(num_classes)
    ]


def mean_ap(results: Sequence[ClassResult], *, eleven_point: bool = False) -> float:
    """Mean AP over the classes that have ground truth (NaN when none has)."""
    values = [r.ap11 if eleven_point else r.ap for r in results if r.num_gt > 0]
    return float(np.mean(values)) if values else float("nan")


def precision_recall_at(result: ClassResult, score_threshold: float) -> tuple[float, float, float]:
    """Precision, recall and F1 of one class counting detections with score >= threshold."""
    kept = int(np.sum(result.scores >= score_threshold))
    if kept == 0 or result.num_gt == 0:
        return 0.0, 0.0, 0.0
    precision = float(result.precision[kept - 1])
    recall = float(result.recall[kept - 1])
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


@dataclass(frozen=True)
class F1Point:
    """The score threshold where the F1 of all classes' detections pooled is highest."""

    threshold: float
    f1: float
    precision: float
    recall: float


def best_f1_threshold(results: Sequence[ClassResult]) -> F1Point | None:
    """The score threshold maximising F1 over all classes pooled (every detection and every
    ground truth counts once, whatever its class); None without ground truth or detections.

    Pooling, rather than one threshold per class, gives the single display threshold a user sets
    (and ``eval.score_threshold: auto`` reads); detections tied at the threshold are all kept.
    """
    num_gt = sum(r.num_gt for r in results)
    scores = np.concatenate([r.scores for r in results] + [np.zeros(0)])
    if num_gt == 0 or scores.size == 0:
        return None
    matched = np.concatenate([r.matched for r in results])
    order = np.argsort(-scores, kind="stable")
    scores, tp_cum = scores[order], np.cumsum(matched[order])
    # A threshold keeps every detection scoring at least it: evaluate only at the last of ties.
    last_of_ties = np.append(scores[1:] != scores[:-1], True)
    kept = np.arange(1, scores.size + 1)[last_of_ties]
    tp = tp_cum[last_of_ties]
    precision, recall = tp / kept, tp / num_gt
    f1 = 2 * precision * recall / np.maximum(precision + recall, np.finfo(np.float64).eps)
    best = int(np.argmax(f1))
    return F1Point(
        threshold=float(scores[last_of_ties][best]),
        f1=float(f1[best]),
        precision=float(precision[best]),
        recall=float(recall[best]),
    )
