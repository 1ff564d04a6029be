"""The letterbox: an image scaled without distortion and centred on a grey network input.

One layout serves every path that letterboxes, so training-time evaluation, the Detector and the
exports see the same pixels and map boxes the same way:

- :func:`letterbox_params` gives the layout: ``scale = min(H / h, W / w)``, the image placed at
  ``round(h * scale) x round(w * scale)`` pixels with the whole-pixel offsets
  ``(dx, dy) = ((W - placed_w) // 2, (H - placed_h) // 2)``;
- :func:`boxes_to_letterbox` and :func:`boxes_from_letterbox` map xyxy pixel boxes forward and
  back, :func:`letterbox_correction` maps the network's normalised boxes back to image pixels;
- :func:`letterbox_image` resamples with ``ScaleAndTranslate`` (bilinear, half-pixel centres,
  through :func:`render_scaled`, which augmentation shares), :func:`letterbox_batch` does it
  per image of a padded batch, and :func:`letterbox_gather` computes the same pixels from ops
  that TFLite and ONNX have built in.

Pixel coordinates are continuous: pixel ``i`` spans ``[i, i + 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

# Grey of the letterbox bars and of augmentation's padding (the reference repos paste onto
# (128, 128, 128)); images are float in 0..1.
PAD_VALUE = 0.5

Array = np.ndarray | tf.Tensor
Scalar = int | float | tf.Tensor
Size = Sequence[Scalar] | tf.Tensor


def _has_tensor(value) -> bool:
    if isinstance(value, list | tuple):
        return any(tf.is_tensor(v) for v in value)
    return tf.is_tensor(value)


def letterbox_layout(image_hw, input_hw) -> tuple[Array, Array, Array]:
    """``(scale [..., 1], offset_hw [..., 2], placed_hw [..., 2])`` of the letterbox that fits
    ``image_hw [..., 2]`` (one size or one per image) into ``input_hw``.

    Tensors in, float32 tensors out (no slicing, so tf2onnx converts it for any rank); Python
    numbers in, float64 numpy out. Offsets and placed sizes are whole pixels.
    """
    if _has_tensor(image_hw) or _has_tensor(input_hw):
        image_hw, input_hw = tf.cast(image_hw, tf.float32), tf.cast(input_hw, tf.float32)
        scale = tf.reduce_min(input_hw / image_hw, axis=-1, keepdims=True)
        placed = tf.round(image_hw * scale)
        return scale, tf.floor((input_hw - placed) / 2.0), placed
    image_hw, input_hw = np.asarray(image_hw, np.float64), np.asarray(input_hw, np.float64)
    scale = np.min(input_hw / image_hw, axis=-1, keepdims=True)
    placed = np.round(image_hw * scale)
    return scale, np.floor((input_hw - placed) / 2.0), placed


def letterbox_params(image_hw: Size, input_hw: Size) -> tuple[Scalar, Scalar, Scalar]:
    """Scale and offsets of the letterbox that fits ``image_hw`` into ``input_hw``.

    A point ``(x, y)`` of the image lands at ``(x * scale + dx, y * scale + dy)`` in the input.
    Works on Python numbers (returns ``(float, int, int)``) or on tensors (returns a float32 and
    two int32 scalar tensors).
    """
    scale, offset, _ = letterbox_layout(image_hw, input_hw)
    if tf.is_tensor(scale):
        dy, dx = tf.unstack(tf.cast(offset, tf.int32))
        return scale[0], dx, dy
    return float(scale[0]), int(offset[1]), int(offset[0])


# --------------------------------------------------------------------------------------------
# Box maps
# --------------------------------------------------------------------------------------------


def _offsets(dx, dy, as_tensor: bool):
    if as_tensor:
        dx, dy = tf.cast(dx, tf.float32), tf.cast(dy, tf.float32)
        return tf.stack([dx, dy, dx, dy])
    return np.array([dx, dy, dx, dy], dtype=np.float32)


def _with_xyxy(boxes, xyxy):
    """``boxes`` with its first four columns replaced by ``xyxy``."""
    if tf.is_tensor(boxes) or tf.is_tensor(xyxy):
        return tf.concat([xyxy, tf.cast(boxes[..., 4:], xyxy.dtype)], axis=-1)
    return np.concatenate([xyxy, boxes[..., 4:]], axis=-1).astype(np.float32)


def boxes_to_letterbox(boxes: Array, scale: Scalar, dx: Scalar, dy: Scalar) -> Array:
    """Maps xyxy boxes ``[..., 4+]`` from image pixels into letterboxed input pixels (numpy in,
    numpy out, unless an argument is a tensor); trailing columns ride along."""
    as_tensor = any(tf.is_tensor(v) for v in (boxes, scale, dx, dy))
    if as_tensor:
        boxes = tf.cast(boxes, tf.float32)
        xyxy = boxes[..., :4] * tf.cast(scale, tf.float32) + _offsets(dx, dy, as_tensor)
    else:
        boxes = np.asarray(boxes, np.float32)
        xyxy = boxes[..., :4] * np.float32(scale) + _offsets(dx, dy, as_tensor)
    return _with_xyxy(boxes, xyxy)


def boxes_from_letterbox(boxes: Array, scale: Scalar, dx: Scalar, dy: Scalar) -> Array:
    """Inverse of :func:`boxes_to_letterbox`: input pixels back to image pixels."""
    as_tensor = any(tf.is_tensor(v) for v in (boxes, scale, dx, dy))
    if as_tensor:
        boxes = tf.cast(boxes, tf.float32)
        xyxy = (boxes[..., :4] - _offsets(dx, dy, as_tensor)) / tf.cast(scale, tf.float32)
    else:
        boxes = np.asarray(boxes, np.float32)
        xyxy = (boxes[..., :4] - _offsets(dx, dy, as_tensor)) / np.float32(scale)
    return _with_xyxy(boxes, xyxy)


def letterbox_correction(boxes, image_hw, input_hw: Sequence[int]) -> tf.Tensor:
    """Maps xyxy boxes normalised to the letterboxed input back to original-image pixels.

    Args:
        boxes: ``[..., N, 4]`` xyxy normalised to the network input.
        image_hw: original ``(height, width)``, either ``[2]`` for all boxes or ``[B, 2]`` per
            image (then ``boxes`` is ``[B, N, 4]``).
        input_hw: network input ``(height, width)``.

    Returns:
        ``[..., N, 4]`` xyxy float32 in original-image pixels, clipped to the image.
    """
    boxes = tf.cast(boxes, tf.float32)
    image_hw = tf.cast(image_hw, tf.float32)
    input_hw_t = tf.constant([float(input_hw[0]), float(input_hw[1])])
    scale, offset_hw, _ = letterbox_layout(image_hw, input_hw_t)

    def xyxy(hw: tf.Tensor) -> tf.Tensor:
        """(h, w) -> (w, h, w, h), to line up with xyxy coordinates."""
        return tf.concat([hw[..., ::-1], hw[..., ::-1]], axis=-1)

    offset, image_size, input_size = xyxy(offset_hw), xyxy(image_hw), xyxy(input_hw_t)
    if image_hw.shape.rank == 2:  # per image: broadcast over the N boxes
        scale, offset, image_size = scale[:, None], offset[:, None], image_size[:, None]
    pixels = (boxes * input_size - offset) / scale
    return tf.minimum(tf.maximum(pixels, 0.0), image_size)


# --------------------------------------------------------------------------------------------
# Resampling
# --------------------------------------------------------------------------------------------


def render_scaled(image, scale_yx, offset_yx, placed_hw, region) -> tf.Tensor:
    """Pixels of ``region`` of a grey canvas on which ``image`` is scaled and pasted.

    ``image`` is scaled by ``scale_yx`` to occupy the rectangle of size ``placed_hw`` whose top-left
    corner is ``offset_yx`` (canvas pixels, may be negative); ``region`` is ``(y0, x0, y1, x1)`` in
    canvas pixels. Only that window is resampled, so a large image is never resized in full only
    to be cropped. Returns float32 ``[y1 - y0, x1 - x0, 3]`` in 0..1.
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


def letterbox_image(image: Array, boxes: Array, input_hw: Size) -> tuple[tf.Tensor, tf.Tensor]:
    """Letterboxes ``image`` ``[h, w, 3]`` (uint8, uint16 or float in 0..1) and its boxes.

    Returns the float32 ``input_hw`` canvas in 0..1 and the ``[N, 5]`` boxes (``x1, y1, x2, y2,
    class_id`` in image pixels) mapped with :func:`boxes_to_letterbox` and clipped to the canvas.
    """
    image = tf.convert_to_tensor(image)
    scale, offset, placed = letterbox_layout(tf.shape(image)[:2], input_hw)
    height, width = input_hw[0], input_hw[1]
    canvas = render_scaled(image, (scale[0], scale[0]), tf.unstack(offset), tf.unstack(placed),
                           (0, 0, height, width))
    boxes = boxes_to_letterbox(tf.reshape(tf.cast(boxes, tf.float32), [-1, 5]), scale[0],
                               offset[1], offset[0])
    corner = tf.cast(tf.stack([width, height, width, height]), tf.float32)
    return canvas, _with_xyxy(boxes, tf.clip_by_value(boxes[:, :4], 0.0, corner))


def letterbox_batch(images: tf.Tensor, image_hw: tf.Tensor, input_hw: Sequence[int]) -> tf.Tensor:
    """Letterboxes each image ``images[i, :h_i, :w_i]`` of a padded batch to ``input_hw``,
    in-graph, with :func:`letterbox_image`'s resampling.

    Returns float32 ``[B, H, W, 3]`` in 0..1 with grey padding.
    """
    input_hw = (int(input_hw[0]), int(input_hw[1]))
    no_boxes = tf.zeros([0, 5], tf.float32)

    def one(args: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        image, hw = args
        canvas, _ = letterbox_image(image[: hw[0], : hw[1]], no_boxes, input_hw)
        return canvas

    return tf.map_fn(
        one,
        (images, tf.cast(image_hw, tf.int32)),
        fn_output_signature=tf.TensorSpec([*input_hw, 3], tf.float32),
    )


def letterbox_gather(image: tf.Tensor, input_hw: Sequence[int]) -> tf.Tensor:
    """One uint8 image ``[h, w, 3]`` letterboxed to float32 ``[H, W, 3]`` in 0..1, portably.

    The same pixels as :func:`letterbox_image`: its ``ScaleAndTranslate`` with a triangle kernel
    and no antialiasing is bilinear sampling at ``(p - offset + 0.5) / scale - 0.5`` with the
    border pixel repeated, which two gathers and two blends compute (to float32 rounding: within
    1e-4). Every op is a TFLite builtin and converts to ONNX.
    """
    height, width = int(input_hw[0]), int(input_hw[1])
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    scale, offset, placed = letterbox_layout(size, (height, width))

    def taps(axis: int, length: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
        """Both source indices, the weight of the second and which output pixels show the image."""
        pos = tf.range(length, dtype=tf.float32)
        src = tf.clip_by_value((pos - offset[axis] + 0.5) / scale - 0.5, 0.0, size[axis] - 1.0)
        low = tf.floor(src)
        last = tf.cast(size[axis], tf.int32) - 1
        low_i = tf.cast(low, tf.int32)
        inside = (pos >= offset[axis]) & (pos < offset[axis] + placed[axis])
        return low_i, tf.minimum(low_i + 1, last), src - low, inside

    y0, y1, wy, in_y = taps(0, height)
    x0, x1, wx, in_x = taps(1, width)
    pixels = tf.cast(image, tf.float32)
    wy, wx = wy[:, None, None], wx[None, :, None]
    rows = tf.gather(pixels, y0) * (1.0 - wy) + tf.gather(pixels, y1) * wy
    out = tf.gather(rows, x0, axis=1) * (1.0 - wx) + tf.gather(rows, x1, axis=1) * wx
    out = tf.clip_by_value(out / 255.0, 0.0, 1.0)
    return tf.where(in_y[:, None, None] & in_x[None, :, None], out, PAD_VALUE)
