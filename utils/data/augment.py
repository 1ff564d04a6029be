"""Geometric and colour augmentation for detection, in TensorFlow ops.

Every transform takes and returns ``(image, boxes)``. ``image`` is ``[H, W, 3]`` (uint8, uint16 or
float in 0..1; outputs are float32 in 0..1) and ``boxes`` is ``[N, 5]`` float32 rows
``x1, y1, x2, y2, class_id`` in pixels of that image (continuous coordinates: pixel ``i`` spans
``[i, i + 1)``). Only the first four columns are ever moved, so any trailing columns ride along.

The deterministic transforms take their parameters explicitly (``place_image``, ``mosaic``,
``mixup``, ``hsv_jitter``, ``letterbox_image``) and are tested on their own; the ``random_*``
functions draw those parameters from a :class:`SeedStream`, following the recipe of the reference
Keras YOLO repositories (random scale + aspect jitter + placement, flip, 4-image mosaic around a
random centre, 0.5/0.5 mixup, HSV gains).

Resampling uses ``ScaleAndTranslate`` (the kernel behind ``tf.image.resize``, bilinear, half-pixel
centres), which renders any window of the scaled image directly: large images are never resized in
full only to be cropped, and the box map ``x * scale + offset`` is exactly the pixel map.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

__all__ = [
    "AugmentOptions",
    "SeedStream",
    "SpecialAugSwitch",
    "boxes_from_letterbox",
    "boxes_to_letterbox",
    "clip_boxes",
    "filter_boxes",
    "flip_horizontal",
    "hsv_jitter",
    "letterbox_image",
    "letterbox_params",
    "mixup",
    "mosaic",
    "place_image",
    "random_hsv",
    "random_mosaic",
    "random_place",
]

# Inputs accepted by the functions below: numpy arrays or tensors, Python numbers or scalar tensors,
# and (height, width)-style pairs of either.
Array = np.ndarray | tf.Tensor
Scalar = int | float | tf.Tensor
Size = Sequence[Scalar] | tf.Tensor

# Grey used for letterbox and crop padding (the reference repos paste onto (128, 128, 128)).
PAD_VALUE = 0.5


@dataclass(frozen=True)
class AugmentOptions:
    """Training augmentation settings (probabilities, ranges and gains).

    Attributes:
        jitter: aspect-ratio jitter, ``new_ar = w / h * U(1 - j, 1 + j) / U(1 - j, 1 + j)``.
        scale: range of the longer placed side relative to the input size (single images).
        flip: horizontal flip probability.
        hue: hue shift range, in turns of the colour wheel (``U(-hue, hue)``, additive as in
            keras-yolo3; the newer repos multiply the OpenCV hue instead).
        sat: saturation gain range, ``1 + U(-sat, sat)``.
        val: value (brightness) gain range, ``1 + U(-val, val)``.
        mosaic: probability that a sample is a 4-image mosaic.
        mixup: probability that a mosaic sample is blended 0.5/0.5 with a single-image sample.
        min_box_size: boxes narrower or shorter than this (pixels) after augmentation are dropped.
        mosaic_scale: like ``scale``, for each of the four mosaic tiles.
    """

    jitter: float = 0.3
    scale: tuple[float, float] = (0.25, 2.0)
    flip: float = 0.5
    hue: float = 0.1
    sat: float = 0.7
    val: float = 0.4
    mosaic: float = 0.5
    mixup: float = 0.5
    min_box_size: float = 2.0
    mosaic_scale: tuple[float, float] = (0.4, 1.0)


class SpecialAugSwitch(keras.callbacks.Callback):
    """Turns mosaic and mixup off for the last ``1 - special_aug_ratio`` of the epochs.

    ``variable`` is the ``tf.Variable(bool)`` passed to ``build_dataset(mosaic_enabled=...)``; the
    input pipeline reads it for every element, so the switch needs no dataset rebuild.

    Args:
        variable: boolean variable read by the training pipeline.
        total_epochs: number of epochs of the whole run.
        special_aug_ratio: fraction of the epochs (from the start) that use mosaic and mixup.
        initial_epoch_offset: added to Keras' epoch index, for runs split into several ``fit``
            calls that each count epochs from their own ``initial_epoch``.
    """

    def __init__(
        self,
        variable: tf.Variable,
        total_epochs: int,
        special_aug_ratio: float = 0.7,
        initial_epoch_offset: int = 0,
    ) -> None:
        super().__init__()
        self.variable = variable
        self.total_epochs = total_epochs
        self.special_aug_ratio = special_aug_ratio
        self.initial_epoch_offset = initial_epoch_offset

    def enabled_for(self, epoch: int) -> bool:
        """Whether mosaic/mixup are on for the 0-based ``epoch`` (Keras' index, before offset)."""
        return epoch + self.initial_epoch_offset < self.total_epochs * self.special_aug_ratio

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        enabled = self.enabled_for(epoch)
        if bool(self.variable.numpy()) != enabled:
            logger.info("Epoch %d: mosaic/mixup %s", epoch + 1, "on" if enabled else "off")
        self.variable.assign(enabled)


class SeedStream:
    """Stateless random numbers from one seed: each draw folds a new counter into the seed.

    The counter advances at trace time, so every call site in a traced function gets its own
    stream, and the same element seed always yields the same augmentation.
    """

    def __init__(self, seed: tf.Tensor) -> None:
        self._seed = tf.cast(seed, tf.int64)
        self._count = 0

    def _next(self) -> tf.Tensor:
        self._count += 1
        return tf.random.experimental.stateless_fold_in(self._seed, self._count)

    def uniform(self, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
        """A float32 scalar in ``[low, high)``."""
        return tf.random.stateless_uniform([], self._next(), minval=low, maxval=high)

    def integer(self, high: tf.Tensor | int, shape: Sequence[int] = ()) -> tf.Tensor:
        """int32 values in ``[0, high)``."""
        return tf.random.stateless_uniform(
            list(shape), self._next(), minval=0, maxval=tf.cast(high, tf.int32), dtype=tf.int32
        )

    def bernoulli(self, p: float) -> tf.Tensor:
        """A bool scalar that is True with probability ``p``."""
        return self.uniform() < p


# --------------------------------------------------------------------------------------------
# Letterbox geometry (numpy or TF)
# --------------------------------------------------------------------------------------------


def _has_tensor(value) -> bool:
    if isinstance(value, (list, tuple)):
        return any(tf.is_tensor(v) for v in value)
    return tf.is_tensor(value)


def _letterbox_layout(image_hw, input_hw):
    """``(scale, dx, dy, new_h, new_w)`` of an aspect-preserving, centred resize."""
    if _has_tensor(image_hw) or _has_tensor(input_hw):
        ih, iw = (tf.cast(image_hw[i], tf.float32) for i in (0, 1))
        h, w = (tf.cast(input_hw[i], tf.float32) for i in (0, 1))
        scale = tf.minimum(w / iw, h / ih)
        nh, nw = (tf.cast(tf.round(v * scale), tf.int32) for v in (ih, iw))
        dx = (tf.cast(w, tf.int32) - nw) // 2
        dy = (tf.cast(h, tf.int32) - nh) // 2
        return scale, dx, dy, nh, nw
    ih, iw = (float(v) for v in image_hw)
    h, w = (int(v) for v in input_hw)
    scale = min(w / iw, h / ih)
    nh, nw = round(ih * scale), round(iw * scale)
    return scale, (w - nw) // 2, (h - nh) // 2, nh, nw


def letterbox_params(image_hw: Size, input_hw: Size) -> tuple[Scalar, Scalar, Scalar]:
    """Scale and offsets of the letterbox that fits ``image_hw`` into ``input_hw``.

    The image is resized by ``scale = min(W / w, H / h)`` and centred; a point ``(x, y)`` of the
    image lands at ``(x * scale + dx, y * scale + dy)`` in the input. Works on Python numbers
    (returns ``(float, int, int)``) or on tensors (returns scalar tensors).
    """
    scale, dx, dy, _, _ = _letterbox_layout(image_hw, input_hw)
    return scale, dx, dy


def _offsets(boxes, dx, dy):
    if tf.is_tensor(boxes) or tf.is_tensor(dx) or tf.is_tensor(dy):
        dx, dy = tf.cast(dx, tf.float32), tf.cast(dy, tf.float32)
        return tf.stack([dx, dy, dx, dy])
    return np.array([dx, dy, dx, dy], dtype=np.float32)


def _with_xyxy(boxes, xyxy):
    """``boxes`` with its first four columns replaced by ``xyxy``."""
    if tf.is_tensor(boxes) or tf.is_tensor(xyxy):
        return tf.concat([xyxy, tf.cast(boxes[..., 4:], xyxy.dtype)], axis=-1)
    return np.concatenate([xyxy, boxes[..., 4:]], axis=-1).astype(np.float32)


def boxes_to_letterbox(boxes: Array, scale: Scalar, dx: Scalar, dy: Scalar) -> Array:
    """Maps xyxy boxes ``[..., 4+]`` from image pixels into letterboxed input pixels."""
    if tf.is_tensor(boxes) or tf.is_tensor(scale):
        boxes = tf.cast(boxes, tf.float32)
        xyxy = boxes[..., :4] * tf.cast(scale, tf.float32) + _offsets(boxes, dx, dy)
    else:
        boxes = np.asarray(boxes, np.float32)
        xyxy = boxes[..., :4] * np.float32(scale) + _offsets(boxes, dx, dy)
    return _with_xyxy(boxes, xyxy)


def boxes_from_letterbox(boxes: Array, scale: Scalar, dx: Scalar, dy: Scalar) -> Array:
    """Inverse of :func:`boxes_to_letterbox`: input pixels back to image pixels."""
    if tf.is_tensor(boxes) or tf.is_tensor(scale):
        boxes = tf.cast(boxes, tf.float32)
        xyxy = (boxes[..., :4] - _offsets(boxes, dx, dy)) / tf.cast(scale, tf.float32)
    else:
        boxes = np.asarray(boxes, np.float32)
        xyxy = (boxes[..., :4] - _offsets(boxes, dx, dy)) / np.float32(scale)
    return _with_xyxy(boxes, xyxy)


# --------------------------------------------------------------------------------------------
# Rendering and box bookkeeping
# --------------------------------------------------------------------------------------------


def _hw(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    shape = tf.shape(image)
    return shape[0], shape[1]


def _render(image, scale_yx, offset_yx, placed_hw, region):
    """Pixels of ``region`` of a grey canvas on which ``image`` is scaled and pasted.

    ``image`` is scaled by ``scale_yx`` to occupy the rectangle of size ``placed_hw`` whose top-left
    corner is ``offset_yx`` (canvas pixels, may be negative); ``region`` is ``(y0, x0, y1, x1)`` in
    canvas pixels. Returns float32 ``[y1 - y0, x1 - x0, 3]`` in 0..1.
    """
    image = tf.convert_to_tensor(image)
    y0, x0, y1, x1 = (tf.cast(v, tf.int32) for v in region)
    dy, dx = (tf.cast(v, tf.int32) for v in offset_yx)
    nh, nw = (tf.cast(v, tf.int32) for v in placed_hw)
    # The part of the pasted rectangle inside the region; empty when they do not meet.
    ry0, rx0 = tf.clip_by_value(dy, y0, y1), tf.clip_by_value(dx, x0, x1)
    ry1, rx1 = tf.clip_by_value(dy + nh, ry0, y1), tf.clip_by_value(dx + nw, rx0, x1)
    out_h, out_w = ry1 - ry0, rx1 - rx0

    unit = 1.0 / image.dtype.max if image.dtype.is_integer else 1.0
    pixels = tf.raw_ops.ScaleAndTranslate(
        images=tf.cast(image, tf.float32)[tf.newaxis],
        # The kernel rejects empty outputs: render at least one pixel and slice it away.
        size=tf.stack([tf.maximum(out_h, 1), tf.maximum(out_w, 1)]),
        scale=tf.cast(tf.stack(scale_yx), tf.float32),
        translation=tf.cast(tf.stack([dy - ry0, dx - rx0]), tf.float32),
        kernel_type="triangle",
        antialias=False,
    )[0, :out_h, :out_w]
    pixels = tf.clip_by_value(pixels * unit, 0.0, 1.0)
    paddings = [[ry0 - y0, y1 - ry1], [rx0 - x0, x1 - rx1], [0, 0]]
    return tf.pad(pixels, paddings, constant_values=PAD_VALUE)


def _as_boxes(boxes) -> tf.Tensor:
    return tf.reshape(tf.cast(boxes, tf.float32), [-1, 5])


def _map_boxes(boxes, scale_xy, offset_xy) -> tf.Tensor:
    sx, sy = (tf.cast(v, tf.float32) for v in scale_xy)
    dx, dy = (tf.cast(v, tf.float32) for v in offset_xy)
    xyxy = boxes[:, :4] * tf.stack([sx, sy, sx, sy]) + tf.stack([dx, dy, dx, dy])
    return tf.concat([xyxy, boxes[:, 4:]], axis=1)


def clip_boxes(boxes: Array, region: Sequence[Scalar]) -> tf.Tensor:
    """Clips xyxy boxes ``[N, 5]`` to ``region = (y0, x0, y1, x1)`` in pixels."""
    y0, x0, y1, x1 = (tf.cast(v, tf.float32) for v in region)
    boxes = _as_boxes(boxes)
    lo, hi = tf.stack([x0, y0, x0, y0]), tf.stack([x1, y1, x1, y1])
    return tf.concat([tf.clip_by_value(boxes[:, :4], lo, hi), boxes[:, 4:]], axis=1)


def filter_boxes(boxes: Array, min_size: float) -> tf.Tensor:
    """Keeps boxes at least ``min_size`` wide and tall (and always with positive area)."""
    boxes = _as_boxes(boxes)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    keep = (w >= min_size) & (h >= min_size) & (w > 0) & (h > 0)
    return tf.boolean_mask(boxes, keep)


def _flip_source(image, boxes):
    """Mirrors an image and its boxes left-right (in the image's own pixels)."""
    image = tf.convert_to_tensor(image)
    width = tf.cast(_hw(image)[1], tf.float32)
    x1, y1, x2, y2 = tf.unstack(boxes[:, :4], axis=1)
    mirrored = tf.stack([width - x2, y1, width - x1, y2], axis=1)
    return tf.reverse(image, axis=[1]), tf.concat([mirrored, boxes[:, 4:]], axis=1)


def flip_horizontal(image: Array, boxes: Array) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirrors ``image`` and ``boxes`` left-right; applying it twice is the identity."""
    return _flip_source(image, _as_boxes(boxes))


# --------------------------------------------------------------------------------------------
# Deterministic transforms
# --------------------------------------------------------------------------------------------


def letterbox_image(image: Array, boxes: Array, input_hw: Size) -> tuple[tf.Tensor, tf.Tensor]:
    """Aspect-preserving resize centred on a grey ``input_hw`` canvas (validation/inference).

    Returns the float32 canvas and the boxes mapped with :func:`boxes_to_letterbox`.
    """
    ih, iw = _hw(image)
    scale, dx, dy, nh, nw = _letterbox_layout((ih, iw), input_hw)
    region = (0, 0, input_hw[0], input_hw[1])
    canvas = _render(image, (scale, scale), (dy, dx), (nh, nw), region)
    boxes = clip_boxes(_map_boxes(_as_boxes(boxes), (scale, scale), (dx, dy)), region)
    return canvas, boxes


def place_image(
    image: Array,
    boxes: Array,
    new_hw: Size,
    dx: Scalar,
    dy: Scalar,
    flip: bool | tf.Tensor,
    canvas_hw: Size,
    region: Sequence[Scalar] | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Resizes ``image`` to ``new_hw`` and pastes it at ``(dx, dy)`` on a grey canvas.

    ``flip`` (bool, may be a tensor) mirrors the image before it is placed. ``dx``/``dy`` may be
    negative or push the image past the far edge: the canvas crops it. Boxes follow the pixels
    (``x * new_w / w + dx``) and are clipped to ``region`` (``(y0, x0, y1, x1)``, default the whole
    canvas); boxes left degenerate are kept here (see :func:`filter_boxes`). When ``region`` is
    given, only that window of the canvas is rendered and returned.
    """
    boxes = _as_boxes(boxes)
    image, boxes = tf.cond(
        tf.cast(flip, tf.bool),
        lambda: _flip_source(image, boxes),
        lambda: (image, boxes),
    )
    ih, iw = _hw(image)
    nh, nw = (tf.cast(v, tf.int32) for v in new_hw)
    sy = tf.cast(nh, tf.float32) / tf.cast(ih, tf.float32)
    sx = tf.cast(nw, tf.float32) / tf.cast(iw, tf.float32)
    if region is None:
        region = (0, 0, canvas_hw[0], canvas_hw[1])
    canvas = _render(image, (sy, sx), (dy, dx), (nh, nw), region)
    return canvas, clip_boxes(_map_boxes(boxes, (sx, sy), (dx, dy)), region)


def mosaic(
    images: Sequence[Array],
    boxes: Sequence[Array],
    centre_xy: Size,
    new_hws: Sequence[Size],
    flips: Sequence[bool | tf.Tensor],
    canvas_hw: Size,
    min_box_size: float = 0.0,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Four images tiled around ``centre_xy``: top-left, top-right, bottom-left, bottom-right.

    Tile ``k`` is resized to ``new_hws[k]`` (optionally mirrored by ``flips[k]``) and pasted with
    its inner corner on the centre (the top-left tile ends at the centre, the bottom-right one
    starts there), then cut to its quadrant. Boxes are clipped to their quadrant and those below
    ``min_box_size`` are dropped. Returns the float32 canvas and the concatenated boxes.
    """
    height, width = canvas_hw
    cx, cy = (tf.cast(v, tf.int32) for v in centre_xy)
    tiles, kept = [], []
    for k in range(4):
        right, bottom = k % 2 == 1, k >= 2
        nh, nw = (tf.cast(v, tf.int32) for v in new_hws[k])
        dx = cx if right else cx - nw
        dy = cy if bottom else cy - nh
        region = (
            cy if bottom else 0,
            cx if right else 0,
            height if bottom else cy,
            width if right else cx,
        )
        tile, tile_boxes = place_image(
            images[k], boxes[k], (nh, nw), dx, dy, flips[k], canvas_hw, region
        )
        tiles.append(tile)
        kept.append(filter_boxes(tile_boxes, min_box_size))
    top = tf.concat(tiles[:2], axis=1)
    bottom = tf.concat(tiles[2:], axis=1)
    canvas = tf.ensure_shape(tf.concat([top, bottom], axis=0), [height, width, 3])
    return canvas, tf.concat(kept, axis=0)


def mixup(
    image_a: Array, boxes_a: Array, image_b: Array, boxes_b: Array
) -> tuple[tf.Tensor, tf.Tensor]:
    """Blends two same-sized images 0.5/0.5 and concatenates their boxes (``a`` first)."""
    image = 0.5 * tf.cast(image_a, tf.float32) + 0.5 * tf.cast(image_b, tf.float32)
    return image, tf.concat([_as_boxes(boxes_a), _as_boxes(boxes_b)], axis=0)


def hsv_jitter(image: Array, hue_shift: Scalar, sat_gain: Scalar, val_gain: Scalar) -> tf.Tensor:
    """Shifts hue by ``hue_shift`` turns and scales saturation and value, as one 3x3 matrix.

    A cheap stand-in for an HSV round trip: hue is a rotation of RGB about the grey axis
    (``1/3`` turn maps pure red to pure green), saturation scales the distance from grey and
    value scales the whole vector. Output is clipped to 0..1.
    """
    angle = 2.0 * np.pi * tf.cast(hue_shift, tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Rotation about the unit axis k = (1, 1, 1)/sqrt(3): cos*I + sin*[k]x + (1 - cos)*k k^T.
    grey = tf.fill([3, 3], 1.0 / 3.0)
    cross = tf.constant([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / np.sqrt(3.0)
    rotation = cos * tf.eye(3) + sin * cross + (1.0 - cos) * grey
    # Rotation fixes the grey axis, so R (I - P) = R - P with P the projection onto grey.
    sat_gain, val_gain = tf.cast(sat_gain, tf.float32), tf.cast(val_gain, tf.float32)
    matrix = val_gain * (grey + sat_gain * (rotation - grey))
    image = tf.cast(image, tf.float32)
    out = tf.reshape(tf.reshape(image, [-1, 3]) @ tf.transpose(matrix), tf.shape(image))
    return tf.clip_by_value(out, 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Random transforms
# --------------------------------------------------------------------------------------------


def _random_size(image_hw, canvas_hw, scale_range, jitter, rng: SeedStream):
    """``(new_h, new_w)``: jittered aspect ratio, longer side ``U(scale_range)`` of the canvas."""
    ih, iw = (tf.cast(v, tf.float32) for v in image_hw)
    height, width = float(canvas_hw[0]), float(canvas_hw[1])
    stretch = rng.uniform(1.0 - jitter, 1.0 + jitter) / rng.uniform(1.0 - jitter, 1.0 + jitter)
    aspect = iw / ih * stretch
    scale = rng.uniform(*scale_range)
    tall = aspect < 1.0
    nh = tf.where(tall, scale * height, scale * width / aspect)
    nw = tf.where(tall, scale * height * aspect, scale * width)
    return tuple(tf.maximum(tf.cast(v, tf.int32), 1) for v in (nh, nw))


def random_place(
    image: Array, boxes: Array, canvas_hw: Size, options: AugmentOptions, rng: SeedStream
) -> tuple[tf.Tensor, tf.Tensor]:
    """Random scale, aspect jitter, placement (crop or pad) and flip; drops degenerate boxes."""
    nh, nw = _random_size(_hw(image), canvas_hw, options.scale, options.jitter, rng)
    # U(0, W - nw): inside the canvas when smaller, covering it when larger (a random crop).
    dx = tf.cast(rng.uniform() * tf.cast(canvas_hw[1] - nw, tf.float32), tf.int32)
    dy = tf.cast(rng.uniform() * tf.cast(canvas_hw[0] - nh, tf.float32), tf.int32)
    flip = rng.bernoulli(options.flip)
    canvas, boxes = place_image(image, boxes, (nh, nw), dx, dy, flip, canvas_hw)
    return canvas, filter_boxes(boxes, options.min_box_size)


def random_mosaic(
    images: Sequence[Array],
    boxes: Sequence[Array],
    canvas_hw: Size,
    options: AugmentOptions,
    rng: SeedStream,
) -> tuple[tf.Tensor, tf.Tensor]:
    """:func:`mosaic` with a centre in the middle 30-70 % and random tile sizes and flips."""
    cx = tf.cast(rng.uniform(0.3, 0.7) * canvas_hw[1], tf.int32)
    cy = tf.cast(rng.uniform(0.3, 0.7) * canvas_hw[0], tf.int32)
    new_hws, flips = [], []
    for image in images:
        new_hws.append(
            _random_size(_hw(image), canvas_hw, options.mosaic_scale, options.jitter, rng)
        )
        flips.append(rng.bernoulli(options.flip))
    return mosaic(images, boxes, (cx, cy), new_hws, flips, canvas_hw, options.min_box_size)


def random_hsv(image: Array, options: AugmentOptions, rng: SeedStream) -> tf.Tensor:
    """:func:`hsv_jitter` with ``U(-hue, hue)`` shift and ``1 + U(-g, g)`` gains."""
    return hsv_jitter(
        image,
        rng.uniform(-options.hue, options.hue),
        1.0 + rng.uniform(-options.sat, options.sat),
        1.0 + rng.uniform(-options.val, options.val),
    )
