"""Tests for nets/losses/anchor_based.py on a 64x64 input (grids 2, 4, 8) with hand-built cases."""

import math

import numpy as np
import pytest
import tensorflow as tf

from nets.losses import YoloLoss
from nets.losses.common import loss_settings
from utils.boxes import bbox_iou
from utils.config import LossConfig, base_section

INPUT_HW = (64, 64)
GRIDS = (2, 4, 8)
NUM_CLASSES = 3
BLOCK = 5 + NUM_CLASSES
AREA_SCALE = 64 * 64 / 640**2
ANCHORS = np.array(
    [[4, 4], [6, 6], [8, 8], [12, 12], [16, 16], [20, 20], [28, 28], [40, 40], [56, 56]],
    np.float32,
)
MASK = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]

# A 20x20 box centred at (37, 13), class 2. Its best anchor is (20, 20) = index 5, i.e. output 1
# (p4, stride 16), local anchor 2, cell x = 37 // 16 = 2, y = 13 // 16 = 0.
BOX_20 = [27.0, 3.0, 47.0, 23.0, 2.0]
# A 6x7 box centred at (5, 59), class 0: best anchor (6, 6) (IoU 36/42) = index 1, i.e. output 2
# (p3, stride 8), local anchor 1, cell x = 0, y = 59 // 8 = 7.
BOX_6x7 = [2.0, 55.5, 8.0, 62.5, 0.0]


# The loss settings the hand-computed cases assume unless a test overrides one (YOLOv3's "best"
# assignment; base.yaml's settings differ, see test_from_config_takes_every_loss_setting).
SETTINGS = {
    "assign": "best",
    "anchor_thresh": 4.0,
    "ignore_thresh": 0.5,
    "obj_iou_ratio": 1.0,
    "balance": (0.4, 1.0, 4.0),
    "box_ratio": 0.05,
    "obj_ratio": 1.0,
    "cls_ratio": 0.5,
    "label_smoothing": 0.0,
    "focal_loss": False,
    "focal_alpha": 0.25,
    "focal_gamma": 2.0,
}


def make_loss(**overrides) -> YoloLoss:
    options = {
        "anchors": ANCHORS,
        "anchors_mask": MASK,
        "num_classes": NUM_CLASSES,
        "input_hw": INPUT_HW,
        **SETTINGS,
    }
    options.update(overrides)
    return YoloLoss(**options)


def make_y_true(*images: list, max_boxes: int = 4) -> np.ndarray:
    y_true = np.zeros((len(images), max_boxes, 5), np.float32)
    for b, rows in enumerate(images):
        if rows:
            y_true[b, : len(rows)] = rows
    return y_true


def constant_outputs(batch: int, obj_logit: float = 0.0) -> list[np.ndarray]:
    """Zero logits everywhere except objectness."""
    outputs = []
    for grid in GRIDS:
        out = np.zeros((batch, grid, grid, 3, BLOCK), np.float32)
        out[..., 4] = obj_logit
        outputs.append(out.reshape(batch, grid, grid, 3 * BLOCK))
    return outputs


def positives(targets) -> list[list[tuple]]:
    """Per output, the sorted (b, y, x, anchor) indices of positives."""
    return [sorted(map(tuple, np.argwhere(t.mask.numpy() > 0).tolist())) for t in targets]


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


def perfect_outputs(loss_fn: YoloLoss, y_true: np.ndarray) -> list[np.ndarray]:
    """Logits whose decoded positives equal their targets, with saturated obj and class."""
    targets = loss_fn.build_targets(y_true)
    outputs = []
    for grid, mask, target in zip(GRIDS, MASK, targets, strict=True):
        out = np.zeros((y_true.shape[0], grid, grid, 3, BLOCK), np.float32)
        out[..., 4] = -20.0
        for b, y, x, a in np.argwhere(target.mask.numpy() > 0):
            cx, cy, w, h = target.boxes.numpy()[b, y, x, a]
            offset = np.array([cx * grid - x, cy * grid - y])
            size = np.array([w, h]) * 64 / ANCHORS[mask[a]]
            if loss_fn.assign == "best":
                out[b, y, x, a, 0:2] = _logit(offset)
                out[b, y, x, a, 2:4] = np.log(size)
            else:
                out[b, y, x, a, 0:2] = _logit((offset + 0.5) / 2)
                out[b, y, x, a, 2:4] = _logit(np.sqrt(size) / 2)
            out[b, y, x, a, 4] = 20.0
            out[b, y, x, a, 5:] = -20.0
            out[b, y, x, a, 5 + target.classes.numpy()[b, y, x, a]] = 20.0
        outputs.append(out.reshape(out.shape[0], grid, grid, 3 * BLOCK))
    return outputs


def test_best_assigns_right_scale_cell_anchor():
    loss_fn = make_loss(assign="best")
    targets = loss_fn.build_targets(make_y_true([BOX_20], [BOX_6x7]))
    assert [t.mask.shape for t in targets] == [(2, g, g, 3) for g in GRIDS]
    assert positives(targets) == [[], [(0, 0, 2, 2)], [(1, 7, 0, 1)]]
    np.testing.assert_allclose(
        targets[1].boxes.numpy()[0, 0, 2, 2], [37 / 64, 13 / 64, 20 / 64, 20 / 64], rtol=1e-6
    )
    np.testing.assert_allclose(
        targets[2].boxes.numpy()[1, 7, 0, 1], [5 / 64, 59 / 64, 6 / 64, 7 / 64], rtol=1e-6
    )
    assert targets[1].classes.numpy()[0, 0, 2, 2] == 2
    assert targets[2].classes.numpy()[1, 7, 0, 1] == 0
    # Non-positive slots are zero.
    assert np.count_nonzero(targets[1].boxes.numpy()) == 4
    assert np.count_nonzero(targets[1].classes.numpy()) == 1


def test_later_box_wins_a_shared_slot():
    loss_fn = make_loss(assign="best")
    same_place_class_1 = [*BOX_20[:4], 1.0]
    targets = loss_fn.build_targets(make_y_true([BOX_20, same_place_class_1]))
    assert positives(targets) == [[], [(0, 0, 2, 2)], []]
    assert targets[1].classes.numpy()[0, 0, 2, 2] == 1


def test_multi_assigns_centre_and_nearest_neighbours_for_all_matching_anchors():
    loss_fn = make_loss(assign="multi")
    targets = loss_fn.build_targets(make_y_true([BOX_20]))
    # Anchors with every side ratio < 4 against 20x20: all but (4, 4) (ratio 5).
    # p5 (grid 2): centre (1.156, 0.406) -> cell (x1, y0), left (x0, y0); "up" is off the grid.
    # p4 (grid 4): centre (2.3125, 0.8125) -> cell (x2, y0), left (x1, y0), down (x2, y1).
    # p3 (grid 8): centre (4.625, 1.625) -> cell (x4, y1), right (x5, y1), down (x4, y2);
    # only anchors 1 and 2 of p3 match.
    expected = [
        sorted((0, y, x, a) for y, x in [(0, 1), (0, 0)] for a in range(3)),
        sorted((0, y, x, a) for y, x in [(0, 2), (0, 1), (1, 2)] for a in range(3)),
        sorted((0, y, x, a) for y, x in [(1, 4), (1, 5), (2, 4)] for a in (1, 2)),
    ]
    assert positives(targets) == expected
    for target in targets:
        boxes = target.boxes.numpy()[target.mask.numpy() > 0]
        np.testing.assert_allclose(boxes, [[37 / 64, 13 / 64, 20 / 64, 20 / 64]] * len(boxes))
        assert np.all(target.classes.numpy()[target.mask.numpy() > 0] == 2)


@pytest.mark.parametrize("assign", ["best", "multi"])
def test_perfect_prediction_gives_near_zero_loss(assign):
    loss_fn = make_loss(assign=assign)
    y_true = make_y_true([BOX_20], [BOX_6x7, BOX_20])
    total, parts = loss_fn(y_true, perfect_outputs(loss_fn, y_true))
    assert float(parts["box"]) < 1e-5
    assert float(parts["obj"]) < 1e-5
    assert float(parts["cls"]) < 1e-6
    # The same targets with uninformative logits cost clearly more.
    worse, _ = loss_fn(y_true, constant_outputs(2))
    assert float(worse) > 1000 * float(total)


@pytest.mark.parametrize("assign", ["best", "multi"])
def test_a_batch_at_another_size_is_scored_at_its_own_size(assign):
    """Multi-scale training: outputs of a 128x128 batch (grids 4, 8, 16) under a loss built for
    64x64 give the box and class terms of a loss built for 128x128; only the objectness weight
    stays at the nominal size's area."""
    rng = np.random.default_rng(0)
    y_true = make_y_true([BOX_20], [BOX_6x7, BOX_20]) * np.array([2, 2, 2, 2, 1], np.float32)
    outputs = [rng.normal(0, 1, (2, 2 * g, 2 * g, 3 * BLOCK)).astype(np.float32) for g in GRIDS]
    _, nominal = make_loss(assign=assign)(y_true, outputs)
    _, actual = make_loss(assign=assign, input_hw=(128, 128))(y_true, outputs)
    for part in ("box", "cls"):
        np.testing.assert_allclose(float(nominal[part]), float(actual[part]), rtol=1e-5)
    np.testing.assert_allclose(float(nominal["obj"]) * 4, float(actual["obj"]), rtol=1e-5)


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.0])
def test_multi_objectness_target_blends_clamped_ciou(ratio: float):
    loss_fn = make_loss(assign="multi", obj_iou_ratio=ratio)
    y_true = make_y_true([BOX_20])
    _, parts = loss_fn(y_true, constant_outputs(1, obj_logit=2.0))
    expected, targets_seen = 0.0, []
    for grid, mask, balance, target in zip(
        GRIDS, MASK, (0.4, 1.0, 4.0), loss_fn.build_targets(y_true), strict=True
    ):
        b_y_x_a = np.argwhere(target.mask.numpy() > 0)
        # Zero box logits decode to the cell centre (2 * 0.5 - 0.5 = 0.5) with the anchor's size.
        centres = (b_y_x_a[:, [2, 1]] + 0.5) * (64 / grid)
        sizes = ANCHORS[np.array(mask)[b_y_x_a[:, 3]]]
        predicted = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
        quality = np.clip(bbox_iou(predicted, BOX_20[:4], kind="ciou").numpy(), 0.0, 1.0)
        targets_seen.extend(quality)
        obj_target = 1.0 - ratio + ratio * quality
        # BCE(z, t) = softplus(z) - t * z, averaged over the grid * 3 predictions of the scale.
        slots = grid * grid * 3
        expected += balance * (slots * math.log1p(math.exp(2.0)) - 2.0 * obj_target.sum()) / slots
    # Some CIoUs are negative (clamped to 0), none reaches 1: the target is not a plain 1.
    assert len(targets_seen) == 21 and min(targets_seen) == 0.0 and 0.0 < max(targets_seen) < 1.0
    assert float(parts["obj"]) == pytest.approx(expected * AREA_SCALE, rel=1e-5)


def test_ignore_mask_removes_negative_loss_of_overlapping_prediction():
    y_true = make_y_true([BOX_20])
    outputs = constant_outputs(1, obj_logit=-20.0)
    p4 = outputs[1].reshape(1, 4, 4, 3, BLOCK)
    # Anchor 1 (16x16) of the positive's cell predicts exactly the ground truth box but is not
    # the positive (anchor 2 is), with a confident objectness of 5.
    p4[0, 0, 2, 1, 0:4] = [_logit(0.3125), _logit(0.8125), math.log(20 / 16), math.log(20 / 16)]
    p4[0, 0, 2, 1, 4] = 5.0
    _, with_ignore = make_loss(ignore_thresh=0.5)(y_true, outputs)
    _, without_ignore = make_loss(ignore_thresh=1.0)(y_true, outputs)
    # softplus(5) is the negative BCE of that prediction; p4 has weight 1.0 and 4*4*3 slots.
    expected = math.log1p(math.exp(5.0)) / 48 * AREA_SCALE
    difference = float(without_ignore["obj"]) - float(with_ignore["obj"])
    assert difference == pytest.approx(expected, rel=1e-4)


def test_objectness_balance_and_area_normalisation_without_boxes():
    y_true = make_y_true([], [])
    loss_fn = make_loss()
    total, parts = loss_fn(y_true, constant_outputs(2))
    # Every prediction has BCE log 2; per-output means weighted (0.4, 1.0, 4.0).
    assert float(parts["obj"]) == pytest.approx((0.4 + 1.0 + 4.0) * math.log(2) * AREA_SCALE)
    assert float(parts["box"]) == 0.0 and float(parts["cls"]) == 0.0
    assert float(total) == pytest.approx(float(parts["obj"]))
    # Only p3 (stride 8) uncertain: its weight is 4.0.
    outputs = constant_outputs(2, obj_logit=-30.0)
    outputs[2][:] = 0.0
    _, parts = loss_fn(y_true, outputs)
    assert float(parts["obj"]) == pytest.approx(4.0 * math.log(2) * AREA_SCALE, rel=1e-6)


def test_loss_does_not_depend_on_batch_size():
    loss_fn = make_loss()
    rng = np.random.default_rng(0)
    one = [rng.normal(size=(1, g, g, 3 * BLOCK)).astype(np.float32) for g in GRIDS]
    two = [np.concatenate([o, o]) for o in one]
    total_one, _ = loss_fn(make_y_true([BOX_20, BOX_6x7]), one)
    total_two, _ = loss_fn(make_y_true([BOX_20, BOX_6x7], [BOX_20, BOX_6x7]), two)
    assert float(total_two) == pytest.approx(float(total_one), rel=1e-5)


def test_focal_loss_scales_objectness_by_hand_computed_factor():
    y_true = make_y_true([])
    plain = make_loss()(y_true, constant_outputs(1))[1]["obj"]
    focal = make_loss(focal_loss=True, focal_alpha=0.25, focal_gamma=2.0)(
        y_true, constant_outputs(1)
    )[1]["obj"]
    # p = 0.5 and target 0: (1 - alpha) * (1 - p_t)^gamma = 0.75 * 0.25.
    assert float(focal) == pytest.approx(0.1875 * float(plain), rel=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_label_smoothing_targets(smoothing):
    loss_fn = make_loss(label_smoothing=smoothing, cls_ratio=1.0)
    outputs = constant_outputs(1)
    logits = np.array([2.0, -1.0, 0.5], np.float32)
    outputs[1].reshape(1, 4, 4, 3, BLOCK)[0, 0, 2, 2, 5:] = logits  # BOX_20's positive
    _, parts = loss_fn(make_y_true([BOX_20]), outputs)
    one_hot = np.array([0.0, 0.0, 1.0])
    smoothed = one_hot * (1 - smoothing) + smoothing / 2
    bce = np.log1p(np.exp(logits)) - smoothed * logits
    assert float(parts["cls"]) == pytest.approx(bce.mean(), rel=1e-6)


def test_tf_function_bfloat16_and_finite_gradient():
    loss_fn = make_loss(assign="multi")
    y_true = tf.constant(make_y_true([BOX_20, BOX_6x7], []))
    rng = np.random.default_rng(1)
    outputs = [
        tf.Variable(rng.normal(scale=3.0, size=(2, g, g, 3 * BLOCK)).astype(np.float32))
        for g in GRIDS
    ]

    @tf.function
    def step(y, outs):
        with tf.GradientTape() as tape:
            total, parts = loss_fn(y, [tf.cast(o, tf.bfloat16) for o in outs])
        return total, parts, tape.gradient(total, outs)

    total, parts, grads = step(y_true, outputs)
    assert total.dtype == tf.float32
    rounded = [tf.cast(tf.cast(o, tf.bfloat16), tf.float32) for o in outputs]
    eager_total, _ = loss_fn(y_true, rounded)
    assert float(total) == pytest.approx(float(eager_total), rel=1e-5)
    assert float(parts["box"]) > 0 and float(parts["cls"]) > 0
    for grad in grads:
        assert np.all(np.isfinite(grad.numpy())) and np.any(grad.numpy() != 0)


@pytest.mark.parametrize("assign", ["best", "multi"])
def test_no_boxes_gives_finite_loss_and_gradient(assign):
    loss_fn = make_loss(assign=assign)
    outputs = [tf.Variable(o) for o in constant_outputs(2, obj_logit=1.0)]
    with tf.GradientTape() as tape:
        total, parts = loss_fn(make_y_true([], []), outputs)
    grads = tape.gradient(total, outputs)
    assert np.isfinite(float(total)) and float(parts["box"]) == 0.0
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_rejects_bad_configuration():
    with pytest.raises(ValueError, match="assign"):
        make_loss(assign="nearest")
    with pytest.raises(ValueError, match="anchors_mask"):
        make_loss(anchors_mask=[[0, 1, 2], [3, 4, 5]])
    with pytest.raises(ValueError, match="balance"):
        make_loss(balance=(1.0, 1.0))


def test_from_config_takes_every_loss_setting():
    config = base_section(LossConfig, assign="best", ignore_thresh=0.7, balance=[1.0, 2.0, 3.0])
    loss_fn = YoloLoss.from_config(
        config, anchors=ANCHORS, anchors_mask=MASK, num_classes=NUM_CLASSES, input_hw=INPUT_HW
    )
    assert (loss_fn.num_classes, loss_fn.input_hw, loss_fn.anchors_mask) == (3, INPUT_HW, MASK)
    taken = loss_settings(YoloLoss, config)
    assert "assign" in taken and "tal_topk" not in taken  # the other head's keys stay out
    for key, value in taken.items():
        expected = tuple(value) if isinstance(value, list) else value
        assert getattr(loss_fn, key) == expected, key
