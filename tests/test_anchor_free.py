"""The anchor-free head: its decoding, task-aligned assignment and loss on hand-built cases, the
head's layout and priors, and its config rules.

Hand-built cases use a 64x64 input: grids 2, 4 and 8 at strides 32, 16 and 8, so N = 84 points
(``anchor_points`` order: the 4 points of p5, the 16 of p4, then the 64 of p3).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from nets import build_yolo
from nets.heads import HEAD_LEVELS
from nets.losses import TaskAlignedLoss, build_loss
from tests.training_fixtures import tiny_config
from utils.boxes import anchor_points, decode_anchor_free, distribution_to_distance
from utils.config import ConfigError, LossConfig, base_section, load_config

SIZE, REG_MAX, NUM_CLASSES = 64, 8, 2
GRIDS = (2, 4, 8)
STRIDES = (32, 16, 8)
POINTS, POINT_STRIDES = (t.numpy() for t in anchor_points([(g, g) for g in GRIDS], STRIDES))


def _loss(**changes) -> TaskAlignedLoss:
    return TaskAlignedLoss.from_config(
        base_section(LossConfig, **changes),
        num_classes=NUM_CLASSES,
        reg_max=REG_MAX,
    )


def _distance_logits(distances: np.ndarray) -> np.ndarray:
    """Logits whose softmax expectation is exactly ``distances`` (in bins): the weight of a
    distance goes linearly to its two neighbouring bins, the other bins get ~0."""
    weights = np.zeros((*distances.shape, REG_MAX), np.float64)
    left = np.floor(distances).astype(int)
    frac = distances - left
    np.put_along_axis(weights, left[..., None], (1 - frac)[..., None], axis=-1)
    right = np.minimum(left + 1, REG_MAX - 1)
    np.put_along_axis(weights, right[..., None], frac[..., None], axis=-1)
    return np.log(np.maximum(weights, 1e-30)).astype(np.float32)


def _outputs(pred_boxes: np.ndarray, class_logits: np.ndarray) -> list[tf.Tensor]:
    """Raw heads ``[p5, p4, p3]`` that predict ``pred_boxes [B, N, 4]`` (xyxy px) and
    ``class_logits [B, N, C]`` at the points."""
    ltrb = np.concatenate([POINTS - pred_boxes[..., :2], pred_boxes[..., 2:] - POINTS], -1)
    ltrb = np.clip(ltrb / POINT_STRIDES, 0, REG_MAX - 1)
    flat = np.concatenate(
        [_distance_logits(ltrb).reshape(*ltrb.shape[:2], 4 * REG_MAX), class_logits], -1
    )
    outputs, start = [], 0
    for grid in GRIDS:
        part = flat[:, start : start + grid * grid]
        outputs.append(tf.constant(part.reshape(len(flat), grid, grid, -1)))
        start += grid * grid
    return outputs


def _tiny_boxes(batch: int) -> np.ndarray:
    """Predictions that overlap nothing: a 1 px box on each point."""
    return np.broadcast_to(np.concatenate([POINTS - 0.5, POINTS + 0.5], -1), (batch, 84, 4)).copy()


def _point(x: float, y: float, stride: int) -> int:
    """The index of the point at (x, y) px on the grid of ``stride``."""
    match = np.equal(POINTS, [x, y]).all(-1) & (POINT_STRIDES[:, 0] == stride)
    (index,) = np.flatnonzero(match)
    return int(index)


# --- decoding ------------------------------------------------------------------------------


def test_anchor_points_are_cell_centres_in_output_order():
    assert POINTS.shape == (84, 2)
    np.testing.assert_array_equal(POINTS[:4], [[16, 16], [48, 16], [16, 48], [48, 48]])
    np.testing.assert_array_equal(POINTS[4], [8, 8])
    np.testing.assert_array_equal(POINTS[-1], [60, 60])
    assert POINT_STRIDES[:4, 0].tolist() == [32] * 4 and POINT_STRIDES[-1, 0] == 8


def test_distribution_expectation_and_decoding_by_hand():
    logits = np.full((4, REG_MAX), -30.0, np.float32)
    logits[0, 2] = 0.0  # left: all mass on bin 2
    logits[1, [1, 2]] = 0.0  # top: half on 1, half on 2 -> 1.5
    logits[2] = 0.0  # right: uniform over 0..7 -> 3.5
    logits[3, 0] = 0.0  # bottom: 0
    np.testing.assert_allclose(distribution_to_distance(logits), [2, 1.5, 3.5, 0], atol=1e-5)

    boxes = np.zeros((1, 84, 4), np.float32)
    p4 = _point(40, 24, 16)  # a p4 point predicting l, t, r, b = 2, 1.5, 3.5, 0 strides
    outputs = _outputs(_tiny_boxes(1), np.full((1, 84, NUM_CLASSES), -9.0, np.float32))
    head = outputs[1].numpy()
    head[0, 1, 2, : 4 * REG_MAX] = logits.reshape(-1)  # row 1, column 2 of the 4x4 grid
    head[0, 1, 2, 4 * REG_MAX + 1] = 0.0  # class 1 at probability 0.5
    outputs[1] = tf.constant(head)
    boxes, probs = decode_anchor_free(outputs, NUM_CLASSES, REG_MAX, (SIZE, SIZE))
    # (40 - 32, 24 - 24, 40 + 56, 24 + 0) px, normalised by 64
    np.testing.assert_allclose(boxes[0, p4], np.float32([8, 0, 96, 24]) / 64, atol=1e-5)
    np.testing.assert_allclose(probs[0, p4], [1 / (1 + math.exp(9)), 0.5], rtol=1e-5)


# --- assignment ----------------------------------------------------------------------------


def _box_predicted_by_p4(label: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """A 32x32 box of class ``label`` (one padding row after it); the four p4 points inside it
    predict it exactly, every other point predicts a 1 px box. Returns the box, y_true, the
    predicted boxes and the four points."""
    gt = np.float32([16, 16, 48, 48])
    y_true = np.zeros((1, 2, 5), np.float32)
    y_true[0, 0] = [*gt, label]
    pred = _tiny_boxes(1)
    inside_p4 = [_point(x, y, 16) for x in (24, 40) for y in (24, 40)]
    pred[0, inside_p4] = gt
    return gt, y_true, pred, inside_p4


def test_box_goes_to_the_points_that_predict_it_best_at_the_right_scale():
    # With k = 4 the box takes exactly the four points that predict it.
    gt, y_true, pred, inside_p4 = _box_predicted_by_p4(label=1)
    probs = np.full((1, 84, NUM_CLASSES), 0.5, np.float32)
    targets = _loss(tal_topk=4).assign(y_true, probs, pred, POINTS)
    assert sorted(np.flatnonzero(targets.positive[0])) == sorted(inside_p4)
    np.testing.assert_allclose(targets.boxes.numpy()[0, inside_p4], [gt] * 4)
    # perfect boxes: aligned score = best IoU = 1, at class 1 only
    np.testing.assert_allclose(targets.scores.numpy()[0, inside_p4], [[0, 1]] * 4, atol=1e-5)
    assert targets.scores.numpy().sum() == pytest.approx(4, abs=1e-4)


def test_only_points_inside_a_box_are_assigned():
    y_true = np.zeros((1, 1, 5), np.float32)
    # 12x12 px: holds the p4 centre (24, 8) and the p3 centres x in {20, 28}, y in {4, 12}
    y_true[0, 0] = [18, 2, 30, 14, 0]
    probs = np.full((1, 84, NUM_CLASSES), 0.5, np.float32)
    pred = np.broadcast_to(y_true[0, 0, :4], (1, 84, 4)).copy()  # every point predicts it
    targets = _loss().assign(y_true, probs, pred, POINTS)
    # by hand: p4 row 0 column 1 -> 4 + 1; p3 rows 0-1, columns 2-3 -> 20 + 8 * row + column
    assert np.flatnonzero(targets.positive[0]).tolist() == [5, 22, 23, 30, 31]


def test_point_claimed_by_two_boxes_goes_to_the_one_it_overlaps_most():
    # Two overlapping boxes both hold the p4 point (24, 24); it predicts box B exactly.
    box_a, box_b = np.float32([0, 0, 34, 34]), np.float32([14, 14, 46, 46])
    y_true = np.float32([[[*box_a, 0], [*box_b, 1]]])
    pred = _tiny_boxes(1)
    shared = _point(24, 24, 16)
    pred[0, shared] = box_b
    probs = np.full((1, 84, NUM_CLASSES), 0.5, np.float32)
    targets = _loss().assign(y_true, probs, pred, POINTS)
    assert targets.positive[0, shared]
    assert int(targets.box_index[0, shared]) == 1
    np.testing.assert_allclose(targets.boxes[0, shared], box_b)
    assert targets.scores[0, shared, 0] == 0 and targets.scores[0, shared, 1] > 0.99


def test_image_without_boxes_has_no_positives_and_a_finite_loss():
    y_true = np.zeros((2, 4, 5), np.float32)
    y_true[1, 0] = [8, 8, 40, 40, 0]  # the second image has one box
    outputs = _outputs(_tiny_boxes(2), np.zeros((2, 84, NUM_CLASSES), np.float32))
    loss = _loss()
    probs = tf.sigmoid(tf.zeros((2, 84, NUM_CLASSES)))
    targets = loss.assign(y_true, probs, _tiny_boxes(2), POINTS)
    assert not targets.positive.numpy()[0].any() and targets.positive.numpy()[1].any()
    total, parts = loss(np.zeros((1, 4, 5), np.float32), [o[:1] for o in outputs])
    assert float(parts["box"]) == 0 and float(parts["dfl"]) == 0
    # no targets: every class logit 0 pays BCE log 2, summed and divided by the floor of 1
    assert float(parts["cls"]) == pytest.approx(0.5 * 84 * NUM_CLASSES * math.log(2), rel=1e-5)
    assert np.isfinite(float(total))


def test_perfect_predictions_give_near_zero_box_loss():
    gt, y_true, pred, inside_p4 = _box_predicted_by_p4(label=0)
    class_logits = np.full((1, 84, NUM_CLASSES), -9.0, np.float32)
    class_logits[0, inside_p4, 0] = 9.0
    loss = _loss(tal_topk=4)
    _, parts = loss(y_true, _outputs(pred, class_logits))
    assert float(parts["box"]) < 1e-4
    # the worse the boxes, the larger the box loss
    pred[0, inside_p4] = gt + np.float32([2, -2, 4, 3])
    _, worse = loss(y_true, _outputs(pred, class_logits))
    assert float(worse["box"]) > 100 * float(parts["box"]) + 1e-3


def _anchor_free_model(**options) -> keras.Model:
    return build_yolo(
        (SIZE, SIZE, 3),
        NUM_CLASSES,
        backbone="mobilenetv1",
        backbone_options={"alpha": 0.25},
        neck="yolov4_panet",
        neck_options={"alpha": 0.25},
        head="anchor_free",
        head_options={"reg_max": REG_MAX},
        **options,
    )


def test_gradients_are_finite_under_mixed_bfloat16():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(0)
        model = _anchor_free_model()
        y_true = np.zeros((2, 3, 5), np.float32)
        y_true[0, 0] = [4, 6, 60, 50, 1]
        y_true[0, 1] = [30, 30, 34, 35, 0]  # a 4x5 px box
        y_true[1, 0] = [10, 10, 20, 60, 0]
        images = np.random.default_rng(0).random((2, SIZE, SIZE, 3), np.float32)
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            total, parts = _loss()(y_true, outputs)
        grads = tape.gradient(total, model.trainable_variables)
    finally:
        keras.config.set_dtype_policy(previous)
    assert all(o.dtype == tf.float32 for o in outputs)
    assert np.isfinite(float(total)) and all(float(v) > 0 for v in parts.values())
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)


# --- the head -------------------------------------------------------------------------------


@pytest.mark.parametrize("conv", ["standard", "depthwise", "ghost"])
def test_head_layout_and_prior_biases(conv):
    model = _anchor_free_model(neck_conv=conv)
    assert model.output_names == [name for name, _ in HEAD_LEVELS]
    assert [tuple(o.shape) for o in model.outputs] == [
        (None, g, g, 4 * REG_MAX + NUM_CLASSES) for g in GRIDS
    ]
    for name, stride in HEAD_LEVELS:
        np.testing.assert_array_equal(model.get_layer(f"{name}_box").bias.numpy(), 1.0)
        cells = (SIZE // stride) ** 2
        prior = math.log(5 / NUM_CLASSES / cells)
        np.testing.assert_allclose(model.get_layer(f"{name}_cls").bias.numpy(), prior, rtol=1e-6)
    layers = {layer.name for layer in model.layers}
    block = {"standard": "head_p3_box_1_conv", "depthwise": "head_p3_box_1_dw",
             "ghost": "head_p3_box_1_ghost"}[conv]  # fmt: skip
    assert block in layers
    # untrained: class probabilities start near the prior, far below any display threshold
    probs = tf.sigmoid(model(np.zeros((1, SIZE, SIZE, 3), np.float32))[2][..., 4 * REG_MAX :])
    assert float(tf.reduce_max(probs)) < 0.2


# --- config ---------------------------------------------------------------------------------


def test_config_builds_the_anchor_free_loss_and_refuses_anchor_settings(tmp_path):
    config = tiny_config(tmp_path)
    cfg = load_config(config, ["model.head=anchor_free", "model.reg_max=8"])
    loss = build_loss(cfg, 2)
    assert isinstance(loss, TaskAlignedLoss) and loss.reg_max == 8 and loss.topk == 10
    with pytest.raises(ConfigError, match=r"model.anchors: model.head anchor_free uses no"):
        load_config(config, ["model.head=anchor_free", "model.anchors=model_data/x.txt"])
    with pytest.raises(ConfigError, match=r"model.anchors_mask, loss.assign: .* these settings"):
        load_config(
            config,
            ["model.head=anchor_free", "model.anchors_mask=[[0],[1],[2]]", "loss.assign=best"],
        )
    with pytest.raises(ConfigError, match=r"model.reg_max: only the anchor_free head"):
        load_config(config, ["model.reg_max=8"])
    with pytest.raises(ConfigError, match=r"loss.tal_topk: must be at least 1"):
        load_config(config, ["model.head=anchor_free", "loss.tal_topk=0"])
