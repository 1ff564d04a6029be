"""Tests for utils/letterbox.py: the layout by hand, box maps both ways, and every resampling
path (pipeline, Detector batch, portable gather) giving the same pixels."""

import numpy as np
import pytest
import tensorflow as tf

from tests.test_augment import BACKGROUND, RED, _assert_box_on_shape, _scene
from utils.deploy.detector import pad_batch
from utils.letterbox import (
    PAD_VALUE,
    boxes_from_letterbox,
    boxes_to_letterbox,
    letterbox_batch,
    letterbox_correction,
    letterbox_gather,
    letterbox_image,
    letterbox_layout,
    letterbox_params,
)

# --- layout and box maps ------------------------------------------------------------------------


def test_letterbox_params_hand_computed():
    # 100x200 (h, w) into 64x64: scale min(64/200, 64/100) = 0.32, placed 32x64, centred.
    scale, dx, dy = letterbox_params((100, 200), (64, 64))
    assert scale == pytest.approx(0.32)
    assert (dx, dy) == (0, 16)
    t_scale, t_dx, t_dy = letterbox_params(tf.constant([100, 200]), (64, 64))
    assert float(t_scale) == pytest.approx(0.32)
    assert (int(t_dx), int(t_dy)) == (0, 16)


def test_layout_agrees_for_numbers_tensors_and_batches():
    sizes = [(100, 200), (99, 200), (37, 301), (5, 7)]
    # 100x200 into 64x96: scale min(0.64, 0.48) = 0.48, placed 48x96, bars of 8 rows
    scale, offset, placed = letterbox_layout(sizes[0], (64, 96))
    assert scale.tolist() == pytest.approx([0.48])
    assert offset.tolist() == [8, 0] and placed.tolist() == [48, 96]
    b_scale, b_offset, b_placed = letterbox_layout(tf.constant(sizes), (64, 96))
    assert b_scale.shape == (4, 1) and b_offset.shape == b_placed.shape == (4, 2)
    for i, hw in enumerate(sizes):
        scale, offset, placed = letterbox_layout(hw, (64, 96))
        t_scale, t_offset, t_placed = letterbox_layout(tf.constant(hw), (64, 96))
        np.testing.assert_allclose(t_scale, scale, rtol=1e-6)
        np.testing.assert_allclose(b_scale[i], scale, rtol=1e-6)
        for got in (t_offset, b_offset[i]):
            np.testing.assert_array_equal(got, offset)
        for got in (t_placed, b_placed[i]):
            np.testing.assert_array_equal(got, placed)


def test_letterbox_box_maps_round_trip_numpy_and_tf():
    boxes = np.array([[40, 20, 120, 60, 3], [0, 0, 200, 100, 1]], np.float32)
    scale, dx, dy = letterbox_params((100, 200), (64, 64))
    forward = boxes_to_letterbox(boxes, scale, dx, dy)
    np.testing.assert_allclose(forward[0], [12.8, 22.4, 38.4, 35.2, 3], atol=1e-5)
    np.testing.assert_allclose(forward[1], [0, 16, 64, 48, 1], atol=1e-5)
    np.testing.assert_allclose(boxes_from_letterbox(forward, scale, dx, dy), boxes, atol=1e-4)

    t_forward = boxes_to_letterbox(tf.constant(boxes), tf.constant(scale), dx, dy)
    np.testing.assert_allclose(t_forward.numpy(), forward, atol=1e-5)
    back = boxes_from_letterbox(t_forward, tf.constant(scale), tf.constant(dx), tf.constant(dy))
    np.testing.assert_allclose(back.numpy(), boxes, atol=1e-4)


def test_letterbox_image_pixels_and_boxes():
    image, boxes = _scene(100, 200, [(40, 20, 120, 60, RED)])
    canvas, out = letterbox_image(tf.constant(image), boxes, (64, 64))
    canvas = canvas.numpy()
    assert canvas.shape == (64, 64, 3) and canvas.dtype == np.float32
    np.testing.assert_allclose(out.numpy()[0], [12.8, 22.4, 38.4, 35.2, 0], atol=1e-4)
    _assert_box_on_shape(canvas, out.numpy()[0], RED)
    # Grey bars above and below the 32-pixel-high image, background inside.
    np.testing.assert_allclose(canvas[:16], PAD_VALUE)
    np.testing.assert_allclose(canvas[48:], PAD_VALUE)
    np.testing.assert_allclose(canvas[17, 1], BACKGROUND, atol=1e-6)


def test_letterbox_accepts_uint8_and_inverse_maps_back_within_a_pixel():
    image, boxes = _scene(90, 70, [(10, 30, 50, 80, RED)])
    uint8 = tf.constant(np.round(image * 255).astype(np.uint8))
    canvas, out = letterbox_image(uint8, boxes, (128, 96))
    assert float(tf.reduce_max(canvas)) <= 1.0
    _assert_box_on_shape(canvas.numpy(), out.numpy()[0], RED)
    scale, dx, dy = letterbox_params((90, 70), (128, 96))
    np.testing.assert_allclose(boxes_from_letterbox(out.numpy(), scale, dx, dy), boxes, atol=1.0)


# --- normalised network boxes back to image pixels ----------------------------------------------


def test_letterbox_correction_known_box():
    # 100 x 200 (h x w) image into 64 x 64: scale 0.32, resized 32 x 64, 16 px bars top/bottom.
    boxes = np.array([[0.25, 0.5, 0.75, 0.75], [-0.1, 0.0, 0.5, 1.0]], np.float32)
    got = letterbox_correction(boxes, [100, 200], (64, 64)).numpy()
    # (16, 32, 48, 48) px in the input -> x / 0.32, (y - 16) / 0.32.
    np.testing.assert_allclose(got[0], [50.0, 50.0, 150.0, 100.0], rtol=1e-5)
    # The second box reaches into the bars and beyond the left edge: clipped to the image.
    np.testing.assert_allclose(got[1], [0.0, 0.0, 100.0, 100.0], rtol=1e-5)


def test_letterbox_correction_uses_whole_pixel_offset():
    # 99 x 200 into 64 x 64: scale 0.32, resized height round(31.68) = 32, bars (64 - 32) // 2
    # = 16 px (not 16.16), as the data pipeline places the image.
    got = letterbox_correction(np.array([[0.0, 0.5, 1.0, 0.75]]), [99, 200], (64, 64)).numpy()
    # y: (32 - 16) / 0.32 = 50 and (48 - 16) / 0.32 = 100 clipped to the height 99.
    np.testing.assert_allclose(got[0], [0.0, 50.0, 200.0, 99.0], rtol=1e-5)


def test_letterbox_correction_per_image_sizes():
    boxes = np.array([[[0.25, 0.5, 0.75, 0.75]], [[0.25, 0.25, 0.75, 0.75]]], np.float32)
    image_hw = np.array([[100, 200], [64, 64]], np.int32)
    got = letterbox_correction(boxes, image_hw, (64, 64)).numpy()
    assert got.shape == (2, 1, 4)
    np.testing.assert_allclose(got[0, 0], [50.0, 50.0, 150.0, 100.0], rtol=1e-5)
    np.testing.assert_allclose(got[1, 0], [16.0, 16.0, 48.0, 48.0], rtol=1e-5)


# --- the resampling paths give the pipeline's pixels --------------------------------------------


def test_letterbox_batch_matches_the_pipeline_letterbox():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((90, 150, 3), (200, 60, 3))]
    canvas, sizes = pad_batch(images)
    assert canvas.shape == (2, 200, 150, 3) and sizes.tolist() == [[90, 150], [200, 60]]
    out = letterbox_batch(tf.constant(canvas), tf.constant(sizes), (96, 128)).numpy()
    for image, got in zip(images, out, strict=True):
        want, _ = letterbox_image(tf.constant(image), tf.zeros([0, 5]), (96, 128))
        np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.parametrize("input_hw", [(128, 128), (96, 160)])
def test_letterbox_gather_equals_the_pipeline_letterbox(input_hw):
    rng = np.random.default_rng(0)
    for shape in ((90, 150, 3), (200, 60, 3), (37, 301, 3), (5, 7, 3), (96, 160, 3)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        want, _ = letterbox_image(tf.constant(image), tf.zeros([0, 5]), input_hw)
        got = letterbox_gather(tf.constant(image), input_hw)
        # float32 rounding of the sample positions only: 1e-4 is 1/40 of a grey level
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-4)
