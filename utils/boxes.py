"""Box maths: formats, the IoU family, YOLO head decoding, class-wise NMS (the letterbox box maps
live in ``utils.letterbox``).

Box formats (every function names the one it takes and returns):

- ``"xyxy"``: ``(x1, y1, x2, y2)``, top-left and bottom-right corners.
- ``"cxcywh"``: ``(cx, cy, w, h)``, centre and size.
- ``"xywh"``: ``(x1, y1, w, h)``, top-left corner and size (the COCO json format).

Coordinates are either *normalised* (0..1 of the letterboxed network input, x by its width and y
by its height) or *pixels*; the IoU functions work in either as long as both arguments agree.
Every function is built from TensorFlow ops, accepts numpy arrays or tensors and returns tensors,
so the same code runs eagerly, inside ``tf.function`` and in exported graphs.

Head layouts (fixed by ``nets/heads.py``), outputs at strides 32, 16, 8:

- anchor-based: ``[B, H/s, W/s, A * (5 + C)]`` raw logits, the A anchor blocks concatenated along
  channels, each block ``(tx, ty, tw, th, obj, cls_0..)``;
- anchor-free: ``[B, H/s, W/s, 4 * reg_max + C]``, per side (left, top, right, bottom) a
  distribution over ``reg_max`` distance bins in strides from the cell centre, then C class logits.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from utils.config import AssignMode

BOX_FORMATS = ("xyxy", "cxcywh", "xywh")
ASSIGN_MODES: tuple[str, ...] = typing.get_args(AssignMode)  # loss.assign
IOU_KINDS = ("iou", "giou", "diou", "ciou")

# Keeps exp(tw) finite for wild logits early in training (an inf box makes the CIoU gradient NaN).
# log(1000 / 16) is the bound torchvision uses for the same purpose: 62x the anchor is larger than
# any image the anchor could be meant for.
_MAX_LOG_WH = math.log(1000.0 / 16.0)


def _as_float(x) -> tf.Tensor:
    """Tensor from x, cast to float32 unless it already is floating point."""
    x = tf.convert_to_tensor(x)
    return x if x.dtype.is_floating else tf.cast(x, tf.float32)


def convert_format(boxes, source: str, target: str) -> tf.Tensor:
    """Converts boxes ``[..., 4]`` between ``"xyxy"``, ``"cxcywh"`` and ``"xywh"``.

    Units are kept (pixels stay pixels, normalised stays normalised). Integer input becomes
    float32; float input keeps its dtype.
    """
    for name, value in (("source", source), ("target", target)):
        if value not in BOX_FORMATS:
            raise ValueError(f"{name} must be one of {BOX_FORMATS}. Received: {value!r}")
    boxes = _as_float(boxes)
    if source == target:
        return boxes
    a, b, c, d = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    if source == "cxcywh":
        x1, y1, x2, y2 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    elif source == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    else:
        x1, y1, x2, y2 = a, b, c, d
    if target == "xyxy":
        out = (x1, y1, x2, y2)
    elif target == "cxcywh":
        out = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
    else:
        out = (x1, y1, x2 - x1, y2 - y1)
    return tf.stack(out, axis=-1)


def bbox_iou(a, b, kind: str = "iou", eps: float = 1e-7) -> tf.Tensor:
    """Element-wise IoU (or GIoU / DIoU / CIoU) of xyxy boxes ``a`` and ``b`` ``[..., 4]``.

    The two arguments broadcast against each other; the result has their broadcast shape without
    the last axis. Zero-size or inverted boxes give IoU 0, never NaN. CIoU's aspect-ratio weight
    ``alpha`` is treated as a constant in the gradient, as in the CIoU paper and YOLOv5.

    Args:
        a, b: boxes in ``"xyxy"`` format, both in the same units.
        kind: ``"iou"``, ``"giou"`` (minus the empty share of the enclosing box), ``"diou"``
            (minus centre distance^2 / enclosing diagonal^2) or ``"ciou"`` (DIoU minus
            ``alpha * v``, with ``v = 4 / pi^2 * (atan(w_b / h_b) - atan(w_a / h_a))^2``).
        eps: keeps every division finite.
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"kind must be one of {IOU_KINDS}. Received: {kind!r}")
    a = _as_float(a)
    b = tf.cast(_as_float(b), a.dtype)
    ax1, ay1, ax2, ay2 = a[..., 0], a[..., 1], a[..., 2], a[..., 3]
    bx1, by1, bx2, by2 = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    aw, ah = tf.maximum(ax2 - ax1, 0.0), tf.maximum(ay2 - ay1, 0.0)
    bw, bh = tf.maximum(bx2 - bx1, 0.0), tf.maximum(by2 - by1, 0.0)

    inter_w = tf.maximum(tf.minimum(ax2, bx2) - tf.maximum(ax1, bx1), 0.0)
    inter_h = tf.maximum(tf.minimum(ay2, by2) - tf.maximum(ay1, by1), 0.0)
    inter = inter_w * inter_h
    union = aw * ah + bw * bh - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou

    # Enclosing box.
    cw = tf.maximum(ax2, bx2) - tf.minimum(ax1, bx1)
    ch = tf.maximum(ay2, by2) - tf.minimum(ay1, by1)
    if kind == "giou":
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area

    diag2 = cw**2 + ch**2 + eps
    centre_dist2 = ((bx1 + bx2 - ax1 - ax2) ** 2 + (by1 + by2 - ay1 - ay2) ** 2) / 4.0
    if kind == "diou":
        return iou - centre_dist2 / diag2

    v = (4.0 / math.pi**2) * (tf.atan(bw / (bh + eps)) - tf.atan(aw / (ah + eps))) ** 2
    alpha = tf.stop_gradient(v / (v - iou + 1.0 + eps))
    return iou - (centre_dist2 / diag2 + alpha * v)


def box_iou(a, b, kind: str = "iou", eps: float = 1e-7) -> tf.Tensor:
    """Pairwise IoU of xyxy boxes: ``a [..., N, 4]`` and ``b [..., M, 4]`` give ``[..., N, M]``.

    Leading (batch) axes must broadcast. ``kind`` and ``eps`` are as in :func:`bbox_iou`.
    """
    a = _as_float(a)
    b = _as_float(b)
    return bbox_iou(a[..., :, None, :], b[..., None, :, :], kind=kind, eps=eps)


def decode_level(
    output,
    anchors,
    num_classes: int,
    input_hw: Sequence[int],
    assign: str,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Decodes one head ``[B, h, w, A * (5 + C)]`` into boxes and raw logits, in float32.

    Args:
        output: raw logits of one scale (any float dtype; cast to float32 here).
        anchors: ``[A, 2]`` anchor ``(w, h)`` in input pixels, the anchors of this scale.
        num_classes: C.
        input_hw: ``(height, width)`` of the network input in pixels (ints or scalar tensors).
        assign: ``"best"`` (YOLOv3/v4: ``xy = sigmoid(t) + cell``, ``wh = exp(t) * anchor``) or
            ``"multi"`` (YOLOv5: ``xy = 2 * sigmoid(t) - 0.5 + cell``,
            ``wh = (2 * sigmoid(t))^2 * anchor``).

    Returns:
        ``boxes [B, h, w, A, 4]`` in ``"cxcywh"`` normalised to the input,
        ``obj_logits [B, h, w, A]`` and ``cls_logits [B, h, w, A, C]``.
    """
    if assign not in ASSIGN_MODES:
        raise ValueError(f"assign must be one of {ASSIGN_MODES}. Received: {assign!r}")
    anchors = tf.constant(np.asarray(anchors, np.float32).reshape(-1, 2))
    num_anchors = anchors.shape[0]
    output = tf.cast(output, tf.float32)
    shape = tf.shape(output)
    grid_h, grid_w = shape[1], shape[2]
    feats = tf.reshape(output, [shape[0], grid_h, grid_w, num_anchors, 5 + num_classes])

    # cell[y, x] = (x, y), broadcast over the batch and anchor axes.
    cell_x, cell_y = tf.meshgrid(tf.range(grid_w), tf.range(grid_h))
    cell = tf.cast(tf.stack([cell_x, cell_y], axis=-1), tf.float32)[None, :, :, None, :]
    grid_wh = tf.cast(tf.stack([grid_w, grid_h]), tf.float32)
    input_wh = tf.cast(tf.stack([input_hw[1], input_hw[0]]), tf.float32)

    # One split instead of four slices: its gradient is a single concat, where every slice's
    # gradient would be a zero-padded copy of the whole head.
    txy, twh, obj, cls = tf.split(feats, [2, 2, 1, num_classes], axis=-1)
    if assign == "best":
        xy = (tf.sigmoid(txy) + cell) / grid_wh
        wh = tf.exp(tf.minimum(twh, _MAX_LOG_WH)) * anchors / input_wh
    else:
        xy = (2.0 * tf.sigmoid(txy) - 0.5 + cell) / grid_wh
        wh = tf.square(2.0 * tf.sigmoid(twh)) * anchors / input_wh
    return tf.concat([xy, wh], axis=-1), tf.squeeze(obj, -1), cls


def decode_outputs(
    outputs: Sequence,
    anchors,
    anchors_mask: Sequence[Sequence[int]],
    num_classes: int,
    input_hw: Sequence[int],
    assign: str,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Decodes all heads into flat per-prediction tensors for NMS.

    Args:
        outputs: ``[p5, p4, p3]`` raw heads (see the module docstring).
        anchors: ``[9, 2]`` anchor ``(w, h)`` in input pixels.
        anchors_mask: ``outputs[i]`` uses ``anchors[anchors_mask[i]]``.
        num_classes: C.
        input_hw: ``(height, width)`` of the network input.
        assign: box parametrisation, ``"best"`` or ``"multi"`` (see :func:`decode_level`).

    Returns:
        ``boxes [B, N, 4]`` xyxy normalised to the letterboxed input, ``objectness [B, N]`` and
        ``class_probs [B, N, C]`` (sigmoids), float32, with ``N = sum(h * w * A)``. Predictions
        are ordered by output, then row, column and anchor.
    """
    anchors = np.asarray(anchors, np.float32).reshape(-1, 2)
    all_boxes, all_obj, all_cls = [], [], []
    for output, mask in zip(outputs, anchors_mask, strict=True):
        boxes, obj, cls = decode_level(output, anchors[list(mask)], num_classes, input_hw, assign)
        batch = tf.shape(boxes)[0]
        all_boxes.append(tf.reshape(convert_format(boxes, "cxcywh", "xyxy"), [batch, -1, 4]))
        all_obj.append(tf.reshape(tf.sigmoid(obj), [batch, -1]))
        all_cls.append(tf.reshape(tf.sigmoid(cls), [batch, -1, num_classes]))
    return tf.concat(all_boxes, 1), tf.concat(all_obj, 1), tf.concat(all_cls, 1)


def anchor_points(
    grid_shapes: Sequence[Sequence], strides: Sequence[int]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Cell centres of every output of an anchor-free head, flat in output, row, column order.

    Args:
        grid_shapes: ``(h, w)`` per output (ints or scalar tensors).
        strides: the stride of each output in input pixels.

    Returns:
        ``points [N, 2]`` (x, y) in input pixels and ``point_strides [N, 1]``, float32, with
        ``N = sum(h * w)``.
    """
    points, point_strides = [], []
    for (grid_h, grid_w), stride in zip(grid_shapes, strides, strict=True):
        cell_x, cell_y = tf.meshgrid(tf.range(grid_w), tf.range(grid_h))
        centre = (tf.cast(tf.stack([cell_x, cell_y], -1), tf.float32) + 0.5) * float(stride)
        points.append(tf.reshape(centre, [-1, 2]))
        point_strides.append(tf.fill([tf.shape(points[-1])[0], 1], float(stride)))
    return tf.concat(points, 0), tf.concat(point_strides, 0)


def split_anchor_free(
    outputs: Sequence, num_classes: int, reg_max: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Anchor-free heads ``[B, h, w, 4 * reg_max + C]`` -> flat ``distance_logits
    [B, N, 4, reg_max]`` (sides left, top, right, bottom) and ``class_logits [B, N, C]``, float32,
    in the order of :func:`anchor_points`."""
    distances, classes = [], []
    for output in outputs:
        output = tf.cast(output, tf.float32)
        batch = tf.shape(output)[0]
        box, cls = tf.split(output, [4 * reg_max, num_classes], axis=-1)
        distances.append(tf.reshape(box, [batch, -1, 4, reg_max]))
        classes.append(tf.reshape(cls, [batch, -1, num_classes]))
    return tf.concat(distances, 1), tf.concat(classes, 1)


def distribution_to_distance(distance_logits) -> tf.Tensor:
    """The expected bin of each side's distribution: ``[..., 4, R]`` logits -> ``[..., 4]``
    distances in strides, within ``[0, R - 1]`` (DFL, Generalized Focal Loss)."""
    reg_max = distance_logits.shape[-1]
    bins = tf.range(reg_max, dtype=tf.float32)
    return tf.reduce_sum(tf.nn.softmax(distance_logits, axis=-1) * bins, axis=-1)


def distance_to_box(points, distances) -> tf.Tensor:
    """xyxy boxes from ``points [..., 2]`` and ``distances [..., 4]`` (left, top, right, bottom,
    same units as the points)."""
    return tf.concat([points - distances[..., :2], points + distances[..., 2:]], axis=-1)


def decode_anchor_free(
    outputs: Sequence, num_classes: int, reg_max: int, input_hw: Sequence[int]
) -> tuple[tf.Tensor, tf.Tensor]:
    """Decodes anchor-free heads (strides 32, 16, 8 in output order) for NMS.

    Returns:
        ``boxes [B, N, 4]`` xyxy normalised to the letterboxed input and ``class_probs
        [B, N, C]`` (sigmoids; the head has no objectness), float32.
    """
    distance_logits, class_logits = split_anchor_free(outputs, num_classes, reg_max)
    grid_shapes = [tf.unstack(tf.shape(output)[1:3]) for output in outputs]
    points, strides = anchor_points(grid_shapes, [32 >> i for i in range(len(outputs))])
    boxes = distance_to_box(points, distribution_to_distance(distance_logits) * strides)
    height, width = float(input_hw[0]), float(input_hw[1])
    return boxes / tf.constant([width, height, width, height]), tf.sigmoid(class_logits)


def non_max_suppression(
    boxes,
    scores,
    *,
    max_per_class: int,
    max_total: int,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Batched class-wise NMS, in-graph.

    Args:
        boxes: ``[B, N, 4]`` xyxy (any units; shared by all classes).
        scores: ``[B, N, C]`` per-class scores, usually ``objectness[..., None] * class_probs``.
        max_per_class: detections kept per class and image.
        max_total: detections kept per image (K).
        iou_threshold: a box is suppressed by a higher-scoring box *of its class* above this IoU.
        score_threshold: scores below this are dropped before NMS.

    Returns:
        ``boxes [B, K, 4]`` (xyxy, same units as the input), ``scores [B, K]``,
        ``classes [B, K]`` int32 and ``valid [B]`` int32: the first ``valid[b]`` rows of image b
        are detections sorted by score, the rest is zero padding.
    """
    boxes = tf.cast(boxes, tf.float32)
    scores = tf.cast(scores, tf.float32)
    # combined_non_max_suppression documents [y1, x1, y2, x2] but only needs diagonal corners,
    # so xyxy passes through unchanged; clip_boxes=False keeps pixel boxes intact.
    nms_boxes, nms_scores, nms_classes, valid = tf.image.combined_non_max_suppression(
        boxes[:, :, None, :],
        scores,
        max_output_size_per_class=max_per_class,
        max_total_size=max_total,
        iou_threshold=iou_threshold,
        score_threshold=score_threshold,
        clip_boxes=False,
    )
    return nms_boxes, nms_scores, tf.cast(nms_classes, tf.int32), tf.cast(valid, tf.int32)

