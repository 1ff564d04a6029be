"""Tests for utils/boxes.py with hand-computed expected values."""

import math

import numpy as np
import pytest
import tensorflow as tf

from utils.boxes import (
    bbox_iou,
    box_iou,
    convert_format,
    decode_level,
    decode_outputs,
    non_max_suppression,
)

# Two boxes used for the IoU family: a is 2x2 at the origin, b is 2 wide, 4 tall.
# intersection [1,2]x[0,2] = 2, union 4 + 8 - 2 = 10, IoU 0.2; enclosing box [0,3]x[0,4].
BOX_A = [0.0, 0.0, 2.0, 2.0]
BOX_B = [1.0, 0.0, 3.0, 4.0]
IOU_AB = 0.2
GIOU_AB = 0.2 - (12.0 - 10.0) / 12.0  # enclosing area 12
DIOU_AB = 0.2 - 2.0 / 25.0  # centres (1,1) and (2,2): distance^2 2; enclosing diagonal^2 9 + 16
_V_AB = 4.0 / math.pi**2 * (math.atan(2.0 / 4.0) - math.atan(2.0 / 2.0)) ** 2
CIOU_AB = DIOU_AB - _V_AB / (_V_AB - IOU_AB + 1.0) * _V_AB


def test_convert_format_known_values_and_round_trip():
    xyxy = np.array([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 1.0, 3.0]], np.float32)
    cxcywh = convert_format(xyxy, "xyxy", "cxcywh").numpy()
    np.testing.assert_allclose(cxcywh[0], [30.0, 50.0, 40.0, 60.0])
    xywh = convert_format(xyxy, "xyxy", "xywh").numpy()
    np.testing.assert_allclose(xywh[0], [10.0, 20.0, 40.0, 60.0])
    for source, boxes in (("cxcywh", cxcywh), ("xywh", xywh)):
        np.testing.assert_allclose(convert_format(boxes, source, "xyxy").numpy(), xyxy)
    np.testing.assert_allclose(convert_format(xywh, "xywh", "cxcywh").numpy(), cxcywh)


def test_convert_format_rejects_unknown_format():
    with pytest.raises(ValueError, match="yxyx"):
        convert_format(np.zeros((1, 4)), "yxyx", "xyxy")


def test_convert_format_casts_integer_input():
    out = convert_format(np.array([[0, 0, 3, 5]]), "xyxy", "cxcywh")
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), [[1.5, 2.5, 3.0, 5.0]])


def test_iou_identical_disjoint_half():
    a = np.array([[0.0, 0.0, 2.0, 2.0]] * 3, np.float32)
    b = np.array([[0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0], [0.0, 0.0, 2.0, 1.0]], np.float32)
    np.testing.assert_allclose(bbox_iou(a, b).numpy(), [1.0, 0.0, 0.5], atol=1e-6)


def test_iou_family_hand_computed():
    expected = {"iou": IOU_AB, "giou": GIOU_AB, "diou": DIOU_AB, "ciou": CIOU_AB}
    for kind, value in expected.items():
        got = bbox_iou(np.array(BOX_A), np.array(BOX_B), kind=kind).numpy()
        np.testing.assert_allclose(got, value, rtol=1e-5, err_msg=kind)
        # Symmetric in its arguments.
        np.testing.assert_allclose(bbox_iou(BOX_B, BOX_A, kind=kind).numpy(), value, rtol=1e-5)
    # The closed forms above, evaluated: 1/30 and 0.12 - 0.0419561 * 0.0498317.
    assert math.isclose(GIOU_AB, 1 / 30)
    assert math.isclose(CIOU_AB, 0.117909, abs_tol=1e-6)


def test_iou_zero_size_boxes_give_no_nan_and_finite_gradient():
    a = tf.Variable([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 3.0], [0.0, 0.0, 2.0, 2.0]])
    b = tf.constant([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    for kind in ("iou", "giou", "diou", "ciou"):
        with tf.GradientTape() as tape:
            value = bbox_iou(a, b, kind=kind)
            total = tf.reduce_sum(value)
        grad = tape.gradient(total, a)
        assert np.all(np.isfinite(value.numpy())), kind
        assert np.all(np.isfinite(grad.numpy())), kind
        assert value.numpy()[0] == pytest.approx(0.0, abs=1e-6)


def test_box_iou_pairwise_and_batched():
    a = np.array([BOX_A, [10.0, 10.0, 11.0, 11.0]], np.float32)
    b = np.array([BOX_A, BOX_B, [0.0, 0.0, 2.0, 1.0]], np.float32)
    got = box_iou(a, b).numpy()
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, [[1.0, IOU_AB, 0.5], [0.0, 0.0, 0.0]], atol=1e-6)
    batched = box_iou(np.stack([a, a]), np.stack([b, b])).numpy()
    assert batched.shape == (2, 2, 3)
    np.testing.assert_allclose(batched[1], got)


ANCHORS = np.array(
    [[4, 4], [6, 6], [8, 8], [12, 12], [16, 16], [20, 20], [28, 28], [40, 40], [56, 56]],
    np.float32,
)
MASK = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]


def _head(grid: int, num_classes: int, num_anchors: int = 3) -> np.ndarray:
    return np.zeros((1, grid, grid, num_anchors * (5 + num_classes)), np.float32)


@pytest.mark.parametrize(
    ("assign", "expected_cx", "expected_w"),
    [
        # sigmoid(log 3) = 0.75. best: (0.75 + 1) / 2; exp(log 2) * 40 / 64.
        ("best", 0.875, 2 * 40 / 64),
        # multi: (2 * 0.75 - 0.5 + 1) / 2; (2 * sigmoid(log 2))^2 * 40 / 64 = (4/3)^2 * 40 / 64.
        ("multi", 1.0, (4 / 3) ** 2 * 40 / 64),
    ],
)
def test_decode_hand_set_logit(assign, expected_cx, expected_w):
    num_classes = 2
    head = _head(2, num_classes)
    block = 5 + num_classes
    # cell (x=1, y=0), anchor 1 of p5 = (40, 40); ty = 0 gives sigmoid 0.5.
    channels = head[0, 0, 1, block : 2 * block]
    channels[:] = [math.log(3.0), 0.0, math.log(2.0), 0.0, 2.0, -1.0, 1.0]
    boxes, obj, cls = decode_level(head, ANCHORS[[6, 7, 8]], num_classes, (64, 64), assign)
    cx, cy, w, h = boxes.numpy()[0, 0, 1, 1]
    # ty = th = 0 happens to give the same y and h in both: (0.5 + 0) / 2 = (1 - 0.5 + 0) / 2
    # and exp(0) = (2 * 0.5)^2.
    np.testing.assert_allclose([cx, cy, w, h], [expected_cx, 0.25, expected_w, 40 / 64], rtol=1e-6)
    assert obj.numpy()[0, 0, 1, 1] == pytest.approx(2.0)
    np.testing.assert_allclose(cls.numpy()[0, 0, 1, 1], [-1.0, 1.0])


def test_decode_outputs_flat_order_and_shapes():
    num_classes = 2
    outputs = [_head(2, num_classes), _head(4, num_classes), _head(8, num_classes)]
    block = 5 + num_classes
    # p4 (grid 4), cell (x=3, y=2), anchor 2 = (20, 20); all logits 0 except tw = log 2.
    outputs[1][0, 2, 3, 2 * block + 2] = math.log(2.0)
    outputs[1][0, 2, 3, 2 * block + 4] = 3.0
    boxes, obj, cls = decode_outputs(outputs, ANCHORS, MASK, num_classes, (64, 64), "best")
    n = (4 + 16 + 64) * 3
    assert boxes.shape == (1, n, 4) and obj.shape == (1, n) and cls.shape == (1, n, 2)
    index = 2 * 2 * 3 + (2 * 4 + 3) * 3 + 2
    # centre ((0.5 + 3) / 4, (0.5 + 2) / 4); w = 40 / 64, h = 20 / 64.
    cx, cy, w, h = 3.5 / 4, 2.5 / 4, 40 / 64, 20 / 64
    np.testing.assert_allclose(
        boxes.numpy()[0, index], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], atol=1e-6
    )
    assert obj.numpy()[0, index] == pytest.approx(1 / (1 + math.exp(-3.0)))
    np.testing.assert_allclose(cls.numpy()[0, index], [0.5, 0.5])


def test_decode_rejects_unknown_assign():
    with pytest.raises(ValueError, match="nearest"):
        decode_level(_head(2, 1), ANCHORS[:3], 1, (64, 64), "nearest")


def test_nms_suppresses_same_class_and_keeps_other_class():
    boxes = np.array(
        [[[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [50, 50, 60, 60]]],
        np.float32,
    )
    # Box 1 overlaps box 0 (IoU 9/11) in class 0 and is suppressed; box 2 is the same place
    # but class 1 and survives; box 3 is below the score threshold.
    scores = np.array([[[0.9, 0.0], [0.8, 0.0], [0.0, 0.7], [0.005, 0.0]]], np.float32)
    out_boxes, out_scores, out_classes, valid = non_max_suppression(
        boxes, scores, max_per_class=10, max_total=5, iou_threshold=0.5, score_threshold=0.01
    )
    assert out_boxes.shape == (1, 5, 4) and out_classes.dtype == tf.int32
    assert int(valid[0]) == 2
    np.testing.assert_allclose(out_scores.numpy()[0, :2], [0.9, 0.7])
    np.testing.assert_array_equal(out_classes.numpy()[0, :2], [0, 1])
    np.testing.assert_allclose(out_boxes.numpy()[0, :2], boxes[0, [0, 2]])


def test_nms_keeps_same_class_below_iou_threshold():
    boxes = np.array([[[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]]], np.float32)  # IoU 1/3
    scores = np.array([[[0.9], [0.8]]], np.float32)
    *_, valid = non_max_suppression(
        boxes, scores, max_per_class=10, max_total=5, iou_threshold=0.5, score_threshold=0.01
    )
    assert int(valid[0]) == 2


