"""Geometric and colour augmentation for detection, in TensorFlow ops.

Every transform takes and returns ``(image, boxes)`` (the batch ones, ``rescale_batch`` and
``random_batch_size``, a batch of them). ``image`` is ``[H, W, 3]`` (uint8, uint16 or
float in 0..1; outputs are float32 in 0..1) and ``boxes`` is ``[N, 5]`` float32 rows
``x1, y1, x2, y2, class_id`` in pixels of that image (continuous coordinates: pixel ``i`` spans
``[i, i + 1)``). Only the first four columns are ever moved, so any trailing columns ride along.

The deterministic transforms take their parameters explicitly (``place_image``, ``mosaic``,
``mixup``, ``hsv_jitter``; the plain letterbox lives in ``utils.letterbox``) and are tested on their
own; the ``random_*`` functions draw those parameters from a :class:`SeedStream`, following the
recipe of the reference Keras YOLO repositories (random scale + aspect jitter + placement, flip,
4-image mosaic around a random centre, 0.5/0.5 mixup, HSV gains).

Resampling is the letterbox's ``utils.letterbox.render_scaled``: ``ScaleAndTranslate`` (the kernel
behind ``tf.image.resize``, bilinear, half-pixel centres), which renders any window of the scaled
image directly: large images are never resized in full only to be cropped, and the box map
``x * scale + offset`` is exactly the pixel map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from utils.config import AugmentConfig
from utils.letterbox import render_scaled

__all__ = [
    "SeedStream",
    "clip_boxes",
    "filter_boxes",
    "flip_horizontal",
    "hsv_jitter",
    "mixup",
    "mosaic",
    "place_image",
    "random_batch_size",
    "random_hsv",
    "random_mosaic",
    "random_place",
    "rescale_batch",
]

# Inputs accepted by the functions below: numpy arrays or tensors, Python numbers or scalar tensors,
# and (height, width)-style pairs of either.
Array = np.ndarray | tf.Tensor
Scalar = int | float | tf.Tensor
Size = Sequence[Scalar] | tf.Tensor


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
# Rendering and box bookkeeping
# --------------------------------------------------------------------------------------------


def _hw(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    shape = tf.shape(image)
    return shape[0], shape[1]


def _as_boxes(boxes) -> tf.Tensor:
    return tf.reshape(tf.cast(boxes, tf.float32), [-1, 5])


def _map_boxes(boxes, scale_xy, offset_xy) -> tf.Tensor:
    sx, sy = (tf.cast(v, tf.float32) for v in scale_xy)
    dx, dy = (tf.cast(v, tf.float32) for v in offset_xy)
    xyxy = boxes[..., :4] * tf.stack([sx, sy, sx, sy]) + tf.stack([dx, dy, dx, dy])
    return tf.concat([xyxy, boxes[..., 4:]], axis=-1)


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
    canvas = render_scaled(image, (sy, sx), (dy, dx), (nh, nw), region)
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
    image: Array, boxes: Array, canvas_hw: Size, options: AugmentConfig, rng: SeedStream
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
    options: AugmentConfig,
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


def rescale_batch(images: Array, boxes: Array, size_hw: Size) -> tuple[tf.Tensor, tf.Tensor]:
    """A batch ``images [B, H, W, 3]`` resized to ``size_hw`` (bilinear, half-pixel centres, as
    the letterbox resamples) and its ``boxes [B, M, 5]`` mapped with it; zero padding rows stay
    zero."""
    images = tf.convert_to_tensor(images, tf.float32)
    height, width = (tf.cast(v, tf.float32) for v in _hw(images[0]))
    new_h, new_w = tf.cast(size_hw[0], tf.int32), tf.cast(size_hw[1], tf.int32)
    resized = tf.image.resize(images, tf.stack([new_h, new_w]), method="bilinear")
    scale_xy = (tf.cast(new_w, tf.float32) / width, tf.cast(new_h, tf.float32) / height)
    return resized, _map_boxes(tf.cast(boxes, tf.float32), scale_xy, (0.0, 0.0))


def random_batch_size(input_hw: Sequence[int], multi_scale: float, rng: SeedStream) -> tf.Tensor:
    """``[2]`` int32 ``(height, width)`` of a multi-scale batch: ``input_hw`` times one ratio
    drawn from ``U(1 - multi_scale, 1 + multi_scale)``, each side rounded to a multiple of 32
    (at least 32), as Ultralytics' ``multi_scale`` draws its batch sizes."""
    ratio = rng.uniform(1.0 - multi_scale, 1.0 + multi_scale)
    sides = tf.constant([float(input_hw[0]), float(input_hw[1])]) * ratio / 32.0
    return tf.maximum(tf.cast(tf.round(sides), tf.int32), 1) * 32


def random_hsv(image: Array, options: AugmentConfig, rng: SeedStream) -> tf.Tensor:
    """:func:`hsv_jitter` with ``U(-hue, hue)`` shift and ``1 + U(-g, g)`` gains."""
    return hsv_jitter(
        image,
        rng.uniform(-options.hue, options.hue),
        1.0 + rng.uniform(-options.sat, options.sat),
        1.0 + rng.uniform(-options.val, options.val),
    )
