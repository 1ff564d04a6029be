"""VOC AP on hand-built cases whose answers are worked out by hand in the comments."""

import math

import numpy as np
import pytest

from utils.eval.metrics import (
    ImageDetections,
    ImageTruth,
    best_f1_threshold,
    evaluate_class,
    evaluate_voc,
    mean_ap,
    precision_recall_at,
    voc_ap,
)

BOX_A = [0, 0, 10, 10]
BOX_B = [20, 20, 40, 40]
FAR = [100, 100, 110, 110]


def truth(boxes, classes, difficult=None):
    n = len(boxes)
    return ImageTruth(
        np.array(boxes, float).reshape(-1, 4),
        np.array(classes, int),
        np.zeros(n, bool) if difficult is None else np.array(difficult, bool),
    )


def dets(boxes, scores, classes):
    return ImageDetections(
        np.array(boxes, float).reshape(-1, 4), np.array(scores, float), np.array(classes, int)
    )


def test_tp_then_fp_is_ap_one():
    result = evaluate_class([truth([BOX_A], [0])], [dets([BOX_A, FAR], [0.9, 0.8], [0, 0])], 0)
    assert result.ap == pytest.approx(1.0)
    assert result.ap11 == pytest.approx(1.0)


def test_fp_then_tp_is_half():
    # ranked: FP (p=0, r=0), TP (p=0.5, r=1) -> envelope 0.5 over recall 0..1
    result = evaluate_class([truth([BOX_A], [0])], [dets([FAR, BOX_A], [0.9, 0.8], [0, 0])], 0)
    assert result.ap == pytest.approx(0.5)
    assert result.ap11 == pytest.approx(0.5)


def test_two_gt_tp_fp_tp():
    # recall .5 .5 1, precision 1 .5 2/3: all-point = .5*1 + .5*2/3; 11-point = (6*1 + 5*2/3)/11
    result = evaluate_class(
        [truth([BOX_A, BOX_B], [0, 0])],
        [dets([BOX_A, FAR, BOX_B], [0.9, 0.8, 0.7], [0, 0, 0])],
        0,
    )
    assert result.ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert result.ap11 == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_difficult_is_neither_tp_nor_fp():
    gts = [truth([BOX_A, BOX_B], [0, 0], difficult=[False, True])]
    # the detection on the difficult box is ignored: the FP-free ranking keeps AP 1
    result = evaluate_class(gts, [dets([BOX_B, BOX_A], [0.95, 0.9], [0, 0])], 0)
    assert result.num_gt == 1
    assert result.num_det == 1
    assert result.ap == pytest.approx(1.0)


def test_duplicate_detection_is_false_positive():
    result = evaluate_class(
        [truth([BOX_A, BOX_B], [0, 0])],
        [dets([BOX_A, [0, 0, 10, 9], BOX_B], [0.9, 0.8, 0.7], [0, 0, 0])],
        0,
    )
    np.testing.assert_allclose(result.precision, [1, 0.5, 2 / 3])
    assert result.ap == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_iou_threshold_and_other_class():
    gts = [truth([BOX_A], [0])]
    shifted = [5, 0, 15, 10]  # IoU with BOX_A = 50 / 150 = 1/3
    assert evaluate_class(gts, [dets([shifted], [0.9], [0])], 0).ap == 0.0
    assert evaluate_class(gts, [dets([shifted], [0.9], [0])], 0, iou_threshold=0.3).ap == 1.0
    assert evaluate_class(gts, [dets([BOX_A], [0.9], [1])], 0).ap == 0.0  # wrong class


def test_class_without_detections_and_without_truth():
    gts = [truth([BOX_A], [0]), truth([], [])]  # second image has no objects
    detections = [dets([], [], []), dets([BOX_B], [0.5], [1])]
    results = evaluate_voc(gts, detections, 2)
    assert results[0].ap == 0.0 and results[0].num_det == 0
    assert math.isnan(results[1].ap) and results[1].num_det == 1
    assert mean_ap(results) == 0.0  # the class without ground truth does not count


def test_precision_recall_at_threshold():
    result = evaluate_class(
        [truth([BOX_A, BOX_B], [0, 0])],
        [dets([BOX_A, FAR, BOX_B], [0.9, 0.8, 0.7], [0, 0, 0])],
        0,
    )
    assert precision_recall_at(result, 0.85) == pytest.approx((1.0, 0.5, 2 / 3))
    p, r, f1 = precision_recall_at(result, 0.5)
    assert (p, r) == pytest.approx((2 / 3, 1.0))
    assert f1 == pytest.approx(0.8)


def test_voc_ap_monotone_envelope():
    assert voc_ap(np.array([0.2, 0.4]), np.array([0.5, 1.0])) == pytest.approx(0.4)


def test_best_f1_threshold_pools_the_classes_by_hand():
    """Class 0: two truths, detections 0.9 (TP), 0.6 (FP), 0.3 (TP); class 1: one truth,
    detection 0.8 (TP). Pooled, ranked 0.9 T, 0.8 T, 0.6 F, 0.3 T over 3 truths: F1 at the four
    thresholds is 0.5, 0.8, 0.667, 0.857, so 0.3 wins (P 0.75, R 1)."""
    truths = [truth([BOX_A, BOX_B], [0, 0]), truth([BOX_A], [1])]
    detections = [
        dets([BOX_A, FAR, BOX_B], [0.9, 0.6, 0.3], [0, 0, 0]),
        dets([BOX_A], [0.8], [1]),
    ]
    point = best_f1_threshold(evaluate_voc(truths, detections, 2))
    assert point.threshold == pytest.approx(0.3)
    assert point.f1 == pytest.approx(6 / 7)
    assert (point.precision, point.recall) == (pytest.approx(0.75), pytest.approx(1.0))


def test_best_f1_threshold_stops_before_a_tail_of_false_positives():
    truths = [truth([BOX_A], [0])]
    detections = [dets([BOX_A, FAR, BOX_B], [0.7, 0.4, 0.2], [0, 0, 0])]
    point = best_f1_threshold(evaluate_voc(truths, detections, 1))
    assert (point.threshold, point.f1) == (pytest.approx(0.7), pytest.approx(1.0))


def test_best_f1_threshold_keeps_ties_together():
    """Two detections tied at 0.5, one TP and one FP: a threshold keeps both or neither."""
    truths = [truth([BOX_A], [0])]
    detections = [dets([FAR, BOX_A], [0.5, 0.5], [0, 0])]
    point = best_f1_threshold(evaluate_voc(truths, detections, 1))
    assert point.precision == pytest.approx(0.5) and point.recall == pytest.approx(1.0)


def test_best_f1_threshold_is_none_without_detections_or_truths():
    assert best_f1_threshold(evaluate_voc([truth([BOX_A], [0])], [dets([], [], [])], 1)) is None
    assert best_f1_threshold(evaluate_voc([truth([], [])], [dets([BOX_A], [0.9], [0])], 1)) is None
