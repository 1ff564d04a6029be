"""Anchor boxes fitted to a dataset: k-means over box sizes with ``1 - IoU`` as the distance.

An anchor only has a size, so boxes and anchors are compared as ``(w, h)`` pairs placed at the
same corner: ``IoU = min(w1, w2) * min(h1, h2) / union``. Euclidean k-means on raw sizes would
let the large boxes dominate; ``1 - IoU`` weighs a 5 px error on a 20 px box like a 50 px error
on a 200 px box, which is how the loss and the anchor assignment see them (YOLOv2's choice).

Box sizes are measured in network input pixels the way the validation letterbox places them: a
box's ``(w, h)`` times ``min(input_w / image_w, input_h / image_h)``, so the anchors fit the sizes
the model is asked to predict at the configured input size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from utils.data.index import Sample

DEFAULT_RESTARTS = 10  # k-means runs from different seeds; the best mean IoU is kept
MAX_ITERATIONS = 300  # a Lloyd run stops earlier once no box changes its cluster
RECALL_IOU = 0.5  # a box counts as covered when its best anchor overlaps it at least this much


@dataclass(frozen=True)
class AnchorFit:
    """How well a set of anchors covers a set of box sizes."""

    mean_iou: float  # mean over boxes of the IoU with the best-matching anchor
    recall: float  # fraction of boxes whose best anchor has IoU > RECALL_IOU


def wh_iou(sizes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU ``[N, K]`` of ``N`` box sizes and ``K`` anchor sizes, all ``(w, h)``, corner-aligned.

    Computed in float32: ample for pixel sizes, and k-means spends its time here.
    """
    w, h = np.asarray(sizes, np.float32).reshape(-1, 2).T[:, :, None]
    aw, ah = np.asarray(anchors, np.float32).reshape(-1, 2).T[:, None, :]
    inter = np.minimum(w, aw) * np.minimum(h, ah)
    return inter / (w * h + aw * ah - inter)


def fit_quality(sizes: np.ndarray, anchors: np.ndarray) -> AnchorFit:
    """Mean best IoU and recall at ``RECALL_IOU`` of ``anchors`` over ``sizes``."""
    best = wh_iou(sizes, anchors).max(axis=1)
    return AnchorFit(mean_iou=float(best.mean()), recall=float((best > RECALL_IOU).mean()))


def box_sizes(
    samples: Sequence[Sample], input_hw: Sequence[int], *, use_difficult: bool
) -> np.ndarray:
    """``[N, 2]`` box ``(w, h)`` of all samples in network pixels after the letterbox resize.

    ``use_difficult=False`` leaves out the boxes flagged difficult, as training does.
    """
    in_h, in_w = input_hw
    boxes, scales = [], []
    for sample in samples:
        keep = slice(None) if use_difficult else ~np.asarray(sample.difficult, bool)
        kept = np.asarray(sample.boxes, np.float64).reshape(-1, 4)[keep]
        boxes.append(kept)
        scale = min(in_w / sample.width, in_h / sample.height)
        scales.append(np.full(len(kept), scale))
    if not boxes:
        return np.zeros((0, 2))
    xyxy = np.concatenate(boxes)
    return (xyxy[:, 2:] - xyxy[:, :2]) * np.concatenate(scales)[:, None]


def _check_sizes(sizes: np.ndarray, k: int) -> np.ndarray:
    sizes = np.asarray(sizes, np.float64)
    if sizes.ndim != 2 or sizes.shape[1] != 2:
        raise ValueError(f"box sizes must be an [N, 2] array of (w, h), got shape {sizes.shape}")
    if k < 1:
        raise ValueError(f"the number of anchors must be at least 1, got {k}")
    bad = int((~(np.isfinite(sizes) & (sizes > 0)).all(axis=1)).sum())
    if bad:
        raise ValueError(
            f"{bad} of {len(sizes)} boxes have a zero, negative or non-finite width or height"
        )
    distinct = len(np.unique(sizes, axis=0))
    if distinct < k:
        raise ValueError(
            f"{k} anchors need at least {k} distinct box sizes, the data has {distinct} "
            f"({len(sizes)} boxes)"
        )
    return sizes


def _seed_centres(sizes: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre is drawn with probability ~ distance^2 to the chosen."""
    centres = [sizes[rng.integers(len(sizes))]]
    nearest = 1.0 - wh_iou(sizes, centres[0])[:, 0]
    for _ in range(1, k):
        weights = nearest**2
        centre = sizes[rng.choice(len(sizes), p=weights / weights.sum())]
        centres.append(centre)
        nearest = np.minimum(nearest, 1.0 - wh_iou(sizes, centre)[:, 0])
    return np.stack(centres)


def _lloyd(sizes: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Alternate assigning boxes to the best-IoU centre and moving centres to their mean box."""
    k = len(centres)
    assign = None
    for _ in range(MAX_ITERATIONS):
        iou = wh_iou(sizes, centres)
        new_assign = iou.argmax(axis=1)
        if assign is not None and np.array_equal(new_assign, assign):
            break
        assign = new_assign
        counts = np.bincount(assign, minlength=k)
        sums = np.stack(
            [np.bincount(assign, weights=sizes[:, i], minlength=k) for i in range(2)], axis=1
        )
        filled = counts > 0
        centres = centres.copy()
        centres[filled] = sums[filled] / counts[filled, None]
        if not filled.all():
            # An emptied cluster restarts at the worst-covered boxes instead of being lost.
            worst = np.argsort(iou.max(axis=1))[: int((~filled).sum())]
            centres[~filled] = sizes[worst]
    return centres


def kmeans_anchors(
    sizes: np.ndarray, k: int, *, seed: int, restarts: int = DEFAULT_RESTARTS
) -> np.ndarray:
    """Fit ``k`` anchors ``[k, 2]`` (w, h) to box ``sizes`` ``[N, 2]``, sorted by area, small first.

    Runs k-means with ``1 - IoU`` distance ``restarts`` times from k-means++ seeds drawn from
    ``seed`` and keeps the run with the highest mean best IoU. Raises ``ValueError`` for sizes
    that are not positive or with fewer than ``k`` distinct sizes.
    """
    sizes = _check_sizes(sizes, k)
    if restarts < 1:
        raise ValueError(f"restarts must be at least 1, got {restarts}")
    rng = np.random.default_rng(seed)
    best, best_iou = None, -1.0
    for _ in range(restarts):
        centres = _lloyd(sizes, _seed_centres(sizes, k, rng))
        mean_iou = fit_quality(sizes, centres).mean_iou
        if mean_iou > best_iou:
            best, best_iou = centres, mean_iou
    return best[np.argsort(best.prod(axis=1), kind="stable")]


def round_anchors(anchors: np.ndarray) -> np.ndarray:
    """Whole pixels, at least 1, as the anchor files in ``model_data/`` hold them."""
    return np.maximum(np.round(np.asarray(anchors, np.float64)), 1.0)


def order_for_mask(anchors: np.ndarray, anchors_mask: Sequence[Sequence[int]]) -> np.ndarray:
    """Place area-sorted anchors so each output gets its share, the smallest at the finest.

    ``anchors_mask`` lists the anchor indices per output, strides 32, 16, 8 (as in the config);
    the smallest anchors go to the last (stride 8) output, in the order its list names them.
    With the default mask ``[[6, 7, 8], [3, 4, 5], [0, 1, 2]]`` this is plain area order.
    """
    anchors = np.asarray(anchors, np.float64)
    slots = [i for mask in reversed(anchors_mask) for i in mask]
    if sorted(slots) != list(range(len(anchors))):
        raise ValueError(f"anchors_mask {anchors_mask} does not index {len(anchors)} anchors")
    by_area = anchors[np.argsort(anchors.prod(axis=1), kind="stable")]
    ordered = np.empty_like(by_area)
    ordered[slots] = by_area
    return ordered


def format_anchors(anchors: np.ndarray) -> str:
    """``w,h, w,h, ...`` on one line, the format ``utils.config.read_anchors`` reads."""
    return ", ".join(f"{w:g},{h:g}" for w, h in np.asarray(anchors).reshape(-1, 2)) + "\n"


def best_possible_recall(sizes: np.ndarray, anchors: np.ndarray, anchor_thresh: float) -> float:
    """Fraction of boxes that some anchor can be assigned to: width and height ratios to that
    anchor both within ``1 / anchor_thresh .. anchor_thresh`` (YOLOv5's check, the rule of the
    ``multi`` assignment). A box outside every anchor's reach never becomes a positive."""
    sizes = np.asarray(sizes, np.float64).reshape(-1, 1, 2)
    ratio = sizes / np.asarray(anchors, np.float64).reshape(1, -1, 2)
    worst_side = np.maximum(ratio, 1.0 / ratio).max(axis=2)  # [N, K]
    return float((worst_side.min(axis=1) < anchor_thresh).mean()) if len(sizes) else 1.0


@dataclass(frozen=True)
class AnchorCheck:
    """What autoanchor found: the configured anchors' recall and, when refitted, the new ones."""

    recall_before: float
    anchors: np.ndarray | None  # the fitted anchors in mask order; None: the configured ones stay
    recall_after: float
    reason: str  # one line for the log


def check_anchors(
    sizes: np.ndarray,
    anchors: np.ndarray,
    anchors_mask: Sequence[Sequence[int]],
    *,
    min_recall: float,
    anchor_thresh: float,
    seed: int,
) -> AnchorCheck:
    """Autoanchor: keep ``anchors`` when their best possible recall over ``sizes`` reaches
    ``min_recall``, else fit as many with k-means and take them if they reach more boxes."""
    anchors = np.asarray(anchors, np.float64)
    before = best_possible_recall(sizes, anchors, anchor_thresh)
    if before >= min_recall:
        return AnchorCheck(before, None, before, f"best possible recall {before:.4f}: kept")
    try:
        fitted = order_for_mask(round_anchors(kmeans_anchors(sizes, len(anchors), seed=seed)),
                                anchors_mask)  # fmt: skip
    except ValueError as exc:  # too few distinct boxes for k anchors
        return AnchorCheck(before, None, before, f"best possible recall {before:.4f}, not "
                           f"refitted: {exc}")  # fmt: skip
    after = best_possible_recall(sizes, fitted, anchor_thresh)
    if after <= before:
        return AnchorCheck(before, None, before, f"best possible recall {before:.4f}; k-means "
                           f"anchors reach only {after:.4f}: kept")  # fmt: skip
    return AnchorCheck(before, fitted, after, f"best possible recall {before:.4f} < "
                       f"{min_recall:g}: k-means anchors reach {after:.4f}")  # fmt: skip
