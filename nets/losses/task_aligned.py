"""Loss of the anchor-free head: task-aligned assignment (TOOD / YOLOv8), CIoU + DFL, class BCE.

Assignment, per image and in-graph (``[B, M, N]`` tensors for M ground-truth slots and N points):

1. A point is a *candidate* of a box when its cell centre lies inside the box.
2. Each candidate gets the alignment metric ``s^alpha * IoU^beta``: s the predicted score of the
   box's class at the point, IoU the CIoU (clamped at 0) of the point's predicted box with it.
3. Each box keeps the ``topk`` candidates with the highest metric. A point kept by several boxes
   goes to the one its predicted box overlaps most.
4. A positive's class target is not 1 but the *aligned score*: its metric scaled so that, per
   box, the best point's target equals the best IoU any of its points reached. Poorly localised
   points thus learn low scores, and the score ranks boxes by quality for NMS.

Loss (the three parts multiplied by ``box_gain``, ``dfl_gain`` and ``cls_gain``), each normalised by
the sum of the class targets (at least 1; the mean over replicas under tf.distribute):

- box: ``(1 - CIoU)`` of each positive, weighted by its aligned score;
- DFL: cross-entropy of each side's distance distribution against the two bins around the
  target distance (linear weights), weighted by the aligned score;
- cls: BCE of every point's class logits against the aligned-score targets (0 for negatives).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import tensorflow as tf

from nets.losses.common import loss_settings, mean_over_replicas
from utils.boxes import anchor_points, bbox_iou, distance_to_box, split_anchor_free
from utils.config import LossConfig

_EPS = 1e-9


@dataclasses.dataclass(frozen=True)
class AlignedTargets:
    """Targets of every point (N over all scales, in ``anchor_points`` order).

    Attributes:
        positive: ``[B, N]`` bool, the point was assigned a box.
        box_index: ``[B, N]`` int32, the index of that box in ``y_true`` (0 for negatives).
        boxes: ``[B, N, 4]`` xyxy input pixels of the assigned box (that of box 0 for negatives).
        scores: ``[B, N, C]`` class targets: the aligned score at the box's class, 0 elsewhere.
    """

    positive: tf.Tensor
    box_index: tf.Tensor
    boxes: tf.Tensor
    scores: tf.Tensor


class TaskAlignedLoss:
    """Loss of the anchor-free head (see the module docstring).

    Args:
        num_classes: C.
        reg_max: distance bins per side (``model.reg_max``).
        tal_topk, tal_alpha, tal_beta: the assignment's k, score exponent and IoU exponent.
        box_gain, cls_gain, dfl_gain: weights of the three parts.

    Call with ``y_true [B, M, 5]`` (rows ``x1, y1, x2, y2, class_id`` in input pixels, zero
    rows as padding) and the list of raw outputs ``[p5, p4, p3]`` at any input size (the points
    come from the outputs' grids, so multi-scale batches need nothing more); returns ``(total,
    {"box", "cls", "dfl"})`` as float32 scalars, the parts already weighted. The settings have
    no defaults here: :meth:`from_config` takes them from ``cfg.loss``.
    """

    PARTS = ("box", "cls", "dfl")  # the weighted parts __call__ returns

    def __init__(
        self,
        *,
        num_classes: int,
        reg_max: int,
        tal_topk: int,
        tal_alpha: float,
        tal_beta: float,
        box_gain: float,
        cls_gain: float,
        dfl_gain: float,
    ) -> None:
        if reg_max < 2 or tal_topk < 1:
            raise ValueError(f"need reg_max >= 2 and tal_topk >= 1; got {reg_max}, {tal_topk}")
        self.num_classes = int(num_classes)
        self.reg_max = int(reg_max)
        self.topk = int(tal_topk)
        self.alpha = float(tal_alpha)
        self.beta = float(tal_beta)
        self.box_gain = float(box_gain)
        self.cls_gain = float(cls_gain)
        self.dfl_gain = float(dfl_gain)

    @classmethod
    def from_config(
        cls, loss: LossConfig, *, num_classes: int, reg_max: int
    ) -> TaskAlignedLoss:
        """The loss that ``loss`` (``cfg.loss``) describes for the model's classes and
        ``reg_max``."""
        return cls(
            num_classes=num_classes,
            reg_max=reg_max,
            **loss_settings(cls, loss),
        )

    def assign(
        self, y_true, class_probs: tf.Tensor, pred_boxes: tf.Tensor, points: tf.Tensor
    ) -> AlignedTargets:
        """Task-aligned targets of every point; no gradient flows through them.

        Args:
            y_true: ``[B, M, 5]`` as in ``__call__``; a row is a box iff ``x2 > x1``, ``y2 > y1``.
            class_probs: ``[B, N, C]`` predicted class probabilities.
            pred_boxes: ``[B, N, 4]`` predicted xyxy boxes in input pixels.
            points: ``[N, 2]`` the points' cell centres in input pixels.
        """
        y_true = tf.cast(y_true, tf.float32)
        class_probs = tf.stop_gradient(class_probs)
        pred_boxes = tf.stop_gradient(pred_boxes)
        valid = (y_true[..., 2] > y_true[..., 0]) & (y_true[..., 3] > y_true[..., 1])
        # Every [B, M, N] tensor below costs M x the points: drop the padding rows after the
        # last box of the batch (max_boxes is sized for the busiest image, most rows are empty).
        slot = tf.range(1, tf.shape(y_true)[1] + 1)
        used = tf.maximum(tf.reduce_max(tf.where(valid, slot[None], 0)), 1)  # keep one row
        y_true, valid = y_true[:, :used], valid[:, :used]
        gt_boxes, labels = y_true[..., :4], tf.cast(y_true[..., 4], tf.int32)

        # [B, M, N]: the point's centre lies inside the box.
        x, y = points[None, None, :, 0], points[None, None, :, 1]
        margin = tf.minimum(
            tf.minimum(x - gt_boxes[..., 0:1], y - gt_boxes[..., 1:2]),
            tf.minimum(gt_boxes[..., 2:3] - x, gt_boxes[..., 3:4] - y),
        )
        candidate = (margin > _EPS) & valid[..., None]
        mask = tf.cast(candidate, tf.float32)

        iou = tf.maximum(bbox_iou(gt_boxes[:, :, None], pred_boxes[:, None], kind="ciou"), 0.0)
        iou *= mask
        # The predicted probability of each box's class at every point: [B, M, N].
        score = tf.gather(tf.transpose(class_probs, [0, 2, 1]), labels, batch_dims=1)
        metric = tf.pow(score, self.alpha) * tf.pow(iou, self.beta) * mask

        num_points = tf.shape(points)[0]
        k = tf.minimum(self.topk, num_points)
        top = tf.math.top_k(metric, k=k).indices  # [B, M, k]
        shape = tf.shape(top)
        b = tf.broadcast_to(tf.range(shape[0])[:, None, None], shape)
        m = tf.broadcast_to(tf.range(shape[1])[None, :, None], shape)
        in_top = tf.scatter_nd(
            tf.stack([b, m, top], -1), tf.ones(shape, tf.float32), tf.shape(metric)
        )
        chosen = tf.cast(in_top, tf.bool) & candidate

        # A point claimed by several boxes keeps the one its prediction overlaps most.
        claims = tf.reduce_sum(tf.cast(chosen, tf.int32), axis=1, keepdims=True)  # [B, 1, N]
        best_box = tf.one_hot(tf.argmax(iou, axis=1), tf.shape(iou)[1], axis=1) > 0
        chosen = tf.where(claims > 1, best_box & candidate, chosen)

        positive = tf.reduce_any(chosen, axis=1)  # [B, N]
        box_index = tf.cast(tf.argmax(tf.cast(chosen, tf.int32), axis=1), tf.int32)
        boxes = tf.gather(gt_boxes, box_index, batch_dims=1)
        classes = tf.gather(labels, box_index, batch_dims=1)

        # Aligned score: per box, its metric scaled so the best point's target is the best IoU.
        chosen_f = tf.cast(chosen, tf.float32)
        metric *= chosen_f
        best_metric = tf.reduce_max(metric, axis=-1, keepdims=True)
        best_iou = tf.reduce_max(iou * chosen_f, axis=-1, keepdims=True)
        aligned = tf.reduce_max(metric * best_iou / (best_metric + _EPS), axis=1)  # [B, N]
        scores = tf.one_hot(classes, self.num_classes) * (aligned * tf.cast(positive, tf.float32))[
            ..., None
        ]
        return AlignedTargets(positive, box_index, boxes, scores)

    def __call__(self, y_true, outputs: Sequence) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Total loss and its weighted parts ``{"box", "cls", "dfl"}`` (float32 scalars)."""
        y_true = tf.cast(y_true, tf.float32)
        distance_logits, class_logits = split_anchor_free(outputs, self.num_classes, self.reg_max)
        grid_shapes = [tf.unstack(tf.shape(output)[1:3]) for output in outputs]
        points, strides = anchor_points(grid_shapes, [32 >> i for i in range(len(outputs))])
        # One log-softmax serves the expected distances and the DFL.
        log_probs = tf.nn.log_softmax(distance_logits, axis=-1)  # [B, N, 4, R]
        bins = tf.range(self.reg_max, dtype=tf.float32)
        distances = tf.reduce_sum(tf.exp(log_probs) * bins, axis=-1)  # [B, N, 4] in strides
        pred_boxes = distance_to_box(points, distances * strides)

        targets = self.assign(y_true, tf.sigmoid(class_logits), pred_boxes, points)
        target_sum = mean_over_replicas(tf.reduce_sum(targets.scores))
        weight = tf.reduce_sum(targets.scores, axis=-1)  # [B, N], 0 at negatives

        cls = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets.scores, logits=class_logits)
        cls_loss = tf.reduce_sum(cls) / target_sum

        ciou = bbox_iou(pred_boxes, targets.boxes, kind="ciou")
        box_loss = tf.reduce_sum((1.0 - ciou) * weight) / target_sum

        # Target distances in strides, just inside the last bin so its right neighbour exists.
        target = tf.concat(
            [points - targets.boxes[..., :2], targets.boxes[..., 2:] - points], axis=-1
        ) / strides
        target = tf.clip_by_value(target, 0.0, self.reg_max - 1.01)
        # The target as a distribution: linear weights on the two bins around it.
        left = tf.floor(target)
        left_weight = (left + 1.0 - target)[..., None]
        left_bin = tf.one_hot(tf.cast(left, tf.int32), self.reg_max)
        right_bin = tf.one_hot(tf.cast(left, tf.int32) + 1, self.reg_max)
        target_dist = left_bin * left_weight + right_bin * (1.0 - left_weight)
        dfl = -tf.reduce_mean(tf.reduce_sum(target_dist * log_probs, axis=-1), axis=-1)
        dfl_loss = tf.reduce_sum(dfl * weight) / target_sum

        parts = {
            "box": self.box_gain * box_loss,
            "cls": self.cls_gain * cls_loss,
            "dfl": self.dfl_gain * dfl_loss,
        }
        return parts["box"] + parts["cls"] + parts["dfl"], parts
