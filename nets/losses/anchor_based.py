"""Loss of the anchor-based head: in-graph anchor assignment, CIoU box loss, objectness with
ignore mask, class BCE.

Two assignment rules, each tied to its box parametrisation in :func:`utils.boxes.decode_level`:

- ``"best"`` (YOLOv3/v4): a ground-truth box goes to the one anchor (of all scales) whose
  shape IoU with it is highest, at the cell holding its centre. Predictions that are not
  positive but overlap a ground-truth box by more than ``ignore_thresh`` get no negative
  objectness loss (the ignore mask).
- ``"multi"`` (YOLOv5): a box goes to every anchor whose side ratios with it are all below
  ``anchor_thresh``, at its centre cell and at the two neighbouring cells nearest its centre.
  The objectness target of a positive is ``1 - r + r * CIoU`` (CIoU detached and clamped to
  [0, 1], ``r = obj_iou_ratio``, YOLOv5's ``gr``): r = 1 asks the objectness to predict the box
  quality, r = 0 gives the hard target 1 (learns confidence faster while boxes are still poor).

When two boxes claim the same (cell, anchor), the box later in ``y_true`` wins.

Normalisation (batch-size and image-size independent, no multiplication by the batch size):

- box: mean of ``1 - CIoU`` over the positives of a scale, summed over scales (YOLOv5);
- obj: mean BCE over all predictions of a scale times ``balance[i]``, summed over scales, times
  ``input_h * input_w / 640^2`` (YOLOv5's input-area scaling, at the nominal ``input_hw``: a
  multi-scale batch keeps the weight its recipe was tuned with);
- cls: mean BCE over the positives and classes of a scale, summed over scales; label smoothing
  uses the binary targets ``y * (1 - ls) + ls / 2`` (each class is its own sigmoid).

The returned parts are already multiplied by their ratios, so ``total = box + obj + cls``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from nets.losses.common import loss_settings, mean_over_replicas
from utils.boxes import ASSIGN_MODES, bbox_iou, box_iou, convert_format, decode_level
from utils.config import LossConfig

# YOLOv5 tuned the objectness weight at a 640x640 input; the weight scales with input area.
_REFERENCE_AREA = 640.0 * 640.0

# Cell offsets (dx, dy) tried per box under "multi": centre, then left, up, right, down. Only the
# neighbour on the side of the centre's fractional position is kept per axis.
_MULTI_OFFSETS = ((0, 0), (-1, 0), (0, -1), (1, 0), (0, 1))


@dataclasses.dataclass(frozen=True)
class LevelTargets:
    """Training targets of one output scale (h x w grid, A anchors).

    Attributes:
        mask: ``[B, h, w, A]`` float32, 1 where the prediction is a positive.
        boxes: ``[B, h, w, A, 4]`` float32 ground-truth box, ``"cxcywh"`` normalised to the
            input, at positives; 0 elsewhere.
        classes: ``[B, h, w, A]`` int32 class id at positives; 0 elsewhere.
    """

    mask: tf.Tensor
    boxes: tf.Tensor
    classes: tf.Tensor


@dataclasses.dataclass(frozen=True)
class _Assignment:
    """Candidate (box, cell, anchor) pairs of one output, flat over ``[B, M, offsets, A]``.

    Candidates that are not positives keep ``weight`` 0 (no box there, anchor not matched, cell
    off the grid, or a later box took the slot), so every tensor has a static size.
    """

    slot: tf.Tensor  # [K] int32 index into the flat [B * h * w * A] grid
    weight: tf.Tensor  # [K] float32, 1 for a positive
    boxes: tf.Tensor  # [K, 4] ground truth, cxcywh normalised to the input
    classes: tf.Tensor  # [K] int32
    grid_shape: tf.Tensor  # [4] (B, h, w, A)

    def scatter(self, values: tf.Tensor) -> tf.Tensor:
        """Dense ``[B, h, w, A, ...]`` grid of per-candidate ``values`` (zero for non-positives).

        Exact and order-independent: each slot has at most one positive, the rest add zeros.
        """
        extra = tf.shape(values)[1:]
        flat = tf.scatter_nd(
            self.slot[:, None], values, tf.concat([[tf.reduce_prod(self.grid_shape)], extra], 0)
        )
        return tf.reshape(flat, tf.concat([self.grid_shape, extra], 0))


class YoloLoss:
    """YOLOv3/v4/v5-style detection loss over the three raw heads.

    Args:
        anchors: ``[K, 2]`` anchor ``(w, h)`` in input pixels (K = 9 for three scales).
        anchors_mask: ``outputs[i]`` uses ``anchors[anchors_mask[i]]``, e.g.
            ``[[6, 7, 8], [3, 4, 5], [0, 1, 2]]`` for outputs ``[p5, p4, p3]``.
        num_classes: C.
        input_hw: ``(height, width)`` of the nominal network input in pixels (the objectness
            weight). The targets follow the size of each batch, read from the outputs (strides
            32, 16, 8 in output order), so multi-scale batches need no other loss.
        assign: ``"best"`` or ``"multi"`` (see the module docstring).
        anchor_thresh: ``"multi"`` only: largest side ratio between box and anchor.
        ignore_thresh: ``"best"`` only: a non-positive prediction overlapping a ground-truth box
            of its image by more IoU than this gets no negative objectness loss (1.0 disables).
        obj_iou_ratio: ``"multi"`` only: share of a positive's objectness target given by its
            CIoU (the rest is 1).
        balance: objectness weight per output, in output order (``p5, p4, p3``).
        box_ratio, obj_ratio, cls_ratio: weights of the three parts.
        label_smoothing: class targets become ``y * (1 - ls) + ls / 2``.
        focal_loss: multiply the objectness BCE by ``alpha_t * (1 - p_t) ** gamma``.
        focal_alpha, focal_gamma: focal-loss parameters.

    Call with ``y_true [B, max_boxes, 5]`` (rows ``x1, y1, x2, y2, class_id`` in input pixels,
    zero rows as padding) and the list of raw outputs; returns
    ``(total, {"box": ..., "obj": ..., "cls": ...})`` as float32 scalars. Works eagerly and in
    ``tf.function``; outputs of any float dtype are cast to float32 first.

    The loss settings have no defaults here: :meth:`from_config` takes them from ``cfg.loss``
    (``configs/base.yaml``).

    Example:
        >>> loss_fn = YoloLoss.from_config(cfg.loss, anchors=anchors, anchors_mask=[[6, 7, 8],
        ...     [3, 4, 5], [0, 1, 2]], num_classes=20, input_hw=(416, 416))
        >>> total, parts = loss_fn(y_true, model(images))
    """

    PARTS = ("box", "obj", "cls")  # the weighted parts __call__ returns

    def __init__(
        self,
        *,
        anchors,
        anchors_mask: Sequence[Sequence[int]],
        num_classes: int,
        input_hw: Sequence[int],
        assign: str,
        anchor_thresh: float,
        ignore_thresh: float,
        obj_iou_ratio: float,
        balance: Sequence[float],
        box_ratio: float,
        obj_ratio: float,
        cls_ratio: float,
        label_smoothing: float,
        focal_loss: bool,
        focal_alpha: float,
        focal_gamma: float,
    ) -> None:
        if assign not in ASSIGN_MODES:
            raise ValueError(f"assign must be one of {ASSIGN_MODES}. Received: {assign!r}")
        anchors = np.asarray(anchors, np.float32).reshape(-1, 2)
        anchors_mask = [list(mask) for mask in anchors_mask]
        used = [i for mask in anchors_mask for i in mask]
        if sorted(used) != list(range(len(anchors))):
            raise ValueError(
                f"anchors_mask must use each of the {len(anchors)} anchors exactly once. "
                f"Received: {anchors_mask}"
            )
        if len(balance) != len(anchors_mask):
            raise ValueError(
                f"balance needs one weight per output ({len(anchors_mask)}). Received: {balance}"
            )
        self.anchors = anchors
        self.anchors_mask = anchors_mask
        self.num_classes = int(num_classes)
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.assign = assign
        self.anchor_thresh = float(anchor_thresh)
        self.ignore_thresh = float(ignore_thresh)
        self.obj_iou_ratio = float(obj_iou_ratio)
        self.balance = tuple(float(b) for b in balance)
        self.box_ratio = float(box_ratio)
        self.obj_ratio = float(obj_ratio)
        self.cls_ratio = float(cls_ratio)
        self.label_smoothing = float(label_smoothing)
        self.focal_loss = bool(focal_loss)
        self.focal_alpha = float(focal_alpha)
        self.focal_gamma = float(focal_gamma)

    @classmethod
    def from_config(
        cls,
        loss: LossConfig,
        *,
        anchors,
        anchors_mask: Sequence[Sequence[int]],
        num_classes: int,
        input_hw: Sequence[int],
    ) -> YoloLoss:
        """The loss that ``loss`` (``cfg.loss``) describes, for the model's anchors, classes and
        input size."""
        return cls(
            anchors=anchors,
            anchors_mask=anchors_mask,
            num_classes=num_classes,
            input_hw=input_hw,
            **loss_settings(cls, loss),
        )

    def default_grid_shapes(self) -> list[tuple[int, int]]:
        """Grid ``(h, w)`` of each output, assuming strides 32, 16, 8, ... in output order."""
        height, width = self.input_hw
        return [(height // (32 >> i), width // (32 >> i)) for i in range(len(self.anchors_mask))]

    # === Targets ===

    def _match_anchors(self, box_wh: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
        """``[B, M, K]`` bool: which of the K anchors each valid box ``(w, h)`` is assigned to."""
        anchors = tf.constant(self.anchors)
        wh = box_wh[..., None, :]  # [B, M, 1, 2] against [K, 2]
        if self.assign == "best":
            inter = tf.reduce_prod(tf.minimum(wh, anchors), axis=-1)
            union = tf.reduce_prod(wh, axis=-1) + tf.reduce_prod(anchors, axis=-1) - inter
            shape_iou = inter / tf.maximum(union, 1e-9)
            match = tf.one_hot(tf.argmax(shape_iou, axis=-1), len(self.anchors)) > 0
        else:
            ratio = wh / anchors
            worst = tf.reduce_max(tf.maximum(ratio, 1.0 / tf.maximum(ratio, 1e-9)), axis=-1)
            match = worst < self.anchor_thresh
        return match & valid[..., None]

    def _assign(self, y_true: tf.Tensor, grid_shapes: Sequence[Sequence]) -> list[_Assignment]:
        """Candidate (box, cell, anchor) pairs per output and which of them are positives."""
        corners, classes = y_true[..., :4], tf.cast(y_true[..., 4], tf.int32)
        valid = (corners[..., 2] > corners[..., 0]) & (corners[..., 3] > corners[..., 1])
        input_wh = _input_wh(grid_shapes)
        boxes = convert_format(corners, "xyxy", "cxcywh")  # pixels
        match = self._match_anchors(boxes[..., 2:], valid)
        boxes_norm = boxes / tf.concat([input_wh, input_wh], 0)

        batch = tf.shape(y_true)[0]
        offsets = _MULTI_OFFSETS if self.assign == "multi" else _MULTI_OFFSETS[:1]
        assignments = []
        for (grid_h, grid_w), mask in zip(grid_shapes, self.anchors_mask, strict=True):
            num_anchors = len(mask)
            grid_size = tf.cast(tf.stack([grid_w, grid_h]), tf.int32)
            centre = boxes[..., :2] / input_wh * tf.cast(grid_size, tf.float32)  # grid units
            # A centre on the right/bottom edge belongs to the last cell.
            cell = tf.minimum(tf.cast(tf.floor(centre), tf.int32), grid_size - 1)
            frac = centre - tf.cast(cell, tf.float32)
            near = {  # offset -> whether the centre lies on that side of its cell
                (0, 0): tf.ones_like(valid),
                (-1, 0): frac[..., 0] < 0.5,
                (0, -1): frac[..., 1] < 0.5,
                (1, 0): frac[..., 0] > 0.5,
                (0, 1): frac[..., 1] > 0.5,
            }
            cells, usable = [], []
            for offset in offsets:
                candidate = cell + tf.constant(offset, tf.int32)
                inside = tf.reduce_all((candidate >= 0) & (candidate < grid_size), axis=-1)
                cells.append(candidate)
                usable.append(near[offset] & inside)
            cells = tf.stack(cells, axis=2)  # [B, M, O, 2] as (x, y)
            usable = tf.stack(usable, axis=2)  # [B, M, O]

            # One candidate per (box, offset, anchor), flattened in that order, and its slot in
            # the flat [B, h, w, A] grid.
            chosen = usable[..., None] & tf.gather(match, mask, axis=-1)[:, :, None, :]
            b_idx = tf.range(batch)[:, None, None, None]
            a_idx = tf.range(num_anchors)[None, None, None, :]
            slot = ((b_idx * grid_h + cells[..., 1:2]) * grid_w + cells[..., 0:1]) * num_anchors
            slot = tf.reshape(tf.where(chosen, slot + a_idx, -1), [-1])
            # Candidate ids grow with the box index, so the largest id in a slot is the latest
            # box; the segment op drops the -1 slots.
            candidate_id = tf.range(tf.size(slot))
            num_slots = batch * grid_h * grid_w * num_anchors
            winner = tf.math.unsorted_segment_max(candidate_id, slot, num_slots)
            slot = tf.maximum(slot, 0)
            owns_slot = tf.reshape(chosen, [-1]) & (tf.gather(winner, slot) == candidate_id)

            per_candidate = [1, 1, len(offsets), num_anchors]  # repeat each box's data
            assignments.append(
                _Assignment(
                    slot=slot,
                    weight=tf.cast(owns_slot, tf.float32),
                    boxes=tf.reshape(
                        tf.tile(boxes_norm[:, :, None, None], [*per_candidate, 1]), [-1, 4]
                    ),
                    classes=tf.reshape(tf.tile(classes[:, :, None, None], per_candidate), [-1]),
                    grid_shape=tf.stack([batch, grid_h, grid_w, num_anchors]),
                )
            )
        return assignments

    def build_targets(
        self, y_true, grid_shapes: Sequence[Sequence] | None = None
    ) -> list[LevelTargets]:
        """Assigns ground-truth boxes to (cell, anchor) slots of every output, as dense grids.

        The loss itself works on the sparse candidates; this view exists to inspect them.

        Args:
            y_true: ``[B, M, 5]`` rows ``x1, y1, x2, y2, class_id`` in input pixels; a row is a
                box iff ``x2 > x1`` and ``y2 > y1``.
            grid_shapes: ``(h, w)`` per output (ints or scalar tensors); by default the input
                size divided by 32, 16, 8.

        Returns:
            One :class:`LevelTargets` per output, in output order.
        """
        y_true = tf.cast(y_true, tf.float32)
        targets = []
        for assigned in self._assign(y_true, grid_shapes or self.default_grid_shapes()):
            weight = assigned.weight
            targets.append(
                LevelTargets(
                    mask=assigned.scatter(weight),
                    boxes=assigned.scatter(assigned.boxes * weight[:, None]),
                    classes=assigned.scatter(assigned.classes * tf.cast(weight, tf.int32)),
                )
            )
        return targets

    # === Loss ===

    def _objectness_bce(self, targets: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """Element-wise BCE, focal-weighted if configured (works with soft targets)."""
        bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
        if not self.focal_loss:
            return bce
        prob = tf.sigmoid(logits)
        p_t = targets * prob + (1.0 - targets) * (1.0 - prob)
        alpha_t = targets * self.focal_alpha + (1.0 - targets) * (1.0 - self.focal_alpha)
        return bce * alpha_t * (1.0 - p_t) ** self.focal_gamma

    def __call__(self, y_true, outputs: Sequence) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        """Total loss and its weighted parts ``{"box", "obj", "cls"}`` (float32 scalars)."""
        outputs = [tf.cast(output, tf.float32) for output in outputs]
        y_true = tf.cast(y_true, tf.float32)
        grid_shapes = [tf.unstack(tf.shape(output)[1:3]) for output in outputs]
        assignments = self._assign(y_true, grid_shapes)

        input_wh = _input_wh(grid_shapes)
        to_pixels = tf.concat([input_wh, input_wh], 0)
        gt_boxes = y_true[..., :4]  # xyxy pixels, [B, M, 4]
        gt_valid = (gt_boxes[..., 2] > gt_boxes[..., 0]) & (gt_boxes[..., 3] > gt_boxes[..., 1])
        use_ignore = self.assign == "best" and self.ignore_thresh < 1.0
        smooth = self.label_smoothing

        box_loss = obj_loss = cls_loss = tf.constant(0.0)
        for i, (output, assigned) in enumerate(zip(outputs, assignments, strict=True)):
            anchors = self.anchors[self.anchors_mask[i]]
            boxes, obj_logits, cls_logits = decode_level(
                output, anchors, self.num_classes, input_wh[::-1], self.assign
            )
            # Box and class terms only concern positives, so they run on the K candidates
            # instead of the whole grid (much cheaper with many classes or large inputs).
            weight = assigned.weight
            num_positive = mean_over_replicas(tf.reduce_sum(weight))
            pred_boxes = tf.gather(tf.reshape(boxes, [-1, 4]), assigned.slot)
            # CIoU in pixels: its centre-distance and aspect terms are not invariant to
            # stretching x and y differently, which normalised coordinates would do.
            ciou = bbox_iou(
                convert_format(pred_boxes, "cxcywh", "xyxy") * to_pixels,
                convert_format(assigned.boxes, "cxcywh", "xyxy") * to_pixels,
                kind="ciou",
            )
            box_loss += tf.reduce_sum((1.0 - ciou) * weight) / num_positive

            pred_cls = tf.gather(tf.reshape(cls_logits, [-1, self.num_classes]), assigned.slot)
            cls_target = tf.one_hot(assigned.classes, self.num_classes) * (1.0 - smooth)
            cls_bce = tf.nn.sigmoid_cross_entropy_with_logits(
                labels=cls_target + smooth / 2, logits=pred_cls
            )
            cls_loss += tf.reduce_sum(tf.reduce_mean(cls_bce, -1) * weight) / num_positive

            positive = assigned.scatter(weight)
            if self.assign == "multi":
                quality = tf.clip_by_value(tf.stop_gradient(ciou), 0.0, 1.0)
                ratio = self.obj_iou_ratio
                obj_target = assigned.scatter(weight * (1.0 - ratio + ratio * quality))
            else:
                obj_target = positive
            obj_bce = self._objectness_bce(obj_target, obj_logits)
            if use_ignore:
                pred_xyxy = convert_format(boxes, "cxcywh", "xyxy") * to_pixels
                flat_pred = tf.reshape(tf.stop_gradient(pred_xyxy), [tf.shape(boxes)[0], -1, 4])
                overlap = box_iou(flat_pred, gt_boxes) * tf.cast(gt_valid, tf.float32)[:, None]
                ignored = tf.reshape(
                    tf.reduce_max(overlap, axis=-1) > self.ignore_thresh, tf.shape(positive)
                )
                obj_bce *= tf.maximum(positive, 1.0 - tf.cast(ignored, tf.float32))
            obj_loss += self.balance[i] * tf.reduce_mean(obj_bce)

        height, width = self.input_hw
        parts = {
            "box": self.box_ratio * box_loss,
            "obj": self.obj_ratio * (height * width / _REFERENCE_AREA) * obj_loss,
            "cls": self.cls_ratio * cls_loss,
        }
        return parts["box"] + parts["obj"] + parts["cls"], parts


def _input_wh(grid_shapes: Sequence[Sequence]) -> tf.Tensor:
    """``[2]`` float32 ``(width, height)`` of the input whose first (stride-32) grid is
    ``grid_shapes[0]``: the size of this batch, multi-scale or not."""
    grid_h, grid_w = grid_shapes[0]
    return tf.cast(tf.stack([grid_w, grid_h]), tf.float32) * 32.0
