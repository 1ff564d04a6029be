"""Tests for utils/augment.py: geometry with hand-computed values, and boxes that follow pixels."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from utils.config import AugmentConfig, base_section
from utils.data.augment import (
    SeedStream,
    clip_boxes,
    filter_boxes,
    flip_horizontal,
    hsv_jitter,
    mixup,
    mosaic,
    place_image,
    random_batch_size,
    random_mosaic,
    random_place,
    rescale_batch,
)
from utils.engine.callbacks import SpecialAugSwitch
from utils.engine.time_budget import EpochPlan
from utils.letterbox import PAD_VALUE

BACKGROUND = (0.1, 0.2, 0.6)
RED = (1.0, 0.0, 0.0)


def _scene(h: int, w: int, rects, background=BACKGROUND) -> tuple[np.ndarray, np.ndarray]:
    """A flat ``background`` image with solid rectangles; ``rects`` are (x1, y1, x2, y2, colour)."""
    image = np.empty((h, w, 3), np.float32)
    image[:] = background
    boxes = []
    for cls, (x1, y1, x2, y2, colour) in enumerate(rects):
        image[y1:y2, x1:x2] = colour
        boxes.append([x1, y1, x2, y2, cls])
    return image, np.array(boxes, np.float32).reshape(-1, 5)


def _colour_extent(image: np.ndarray, colour, region=None, background=BACKGROUND) -> np.ndarray:
    """xyxy extent (continuous coordinates) of the pixels nearer ``colour`` than anything else.

    A pixel counts when it is within half the colour distance to the background, i.e. when the
    shape covers at least about half of it after bilinear resampling.
    """
    image = np.asarray(image)
    distance = np.linalg.norm(image - np.asarray(colour, np.float32), axis=-1)
    mask = distance < 0.5 * np.linalg.norm(np.subtract(colour, background))
    if region is not None:
        y0, x0, y1, x1 = region
        keep = np.zeros_like(mask)
        keep[y0:y1, x0:x1] = True
        mask &= keep
    ys, xs = np.nonzero(mask)
    assert len(xs), f"colour {colour} not found"
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def _assert_box_on_shape(image, box, colour, tol=1.0, region=None, background=BACKGROUND):
    extent = _colour_extent(image, colour, region, background)
    np.testing.assert_allclose(np.asarray(box)[:4], extent, atol=tol)


# --- letterbox geometry -------------------------------------------------------------------------


# --- placement, flip ----------------------------------------------------------------------------


def test_place_image_shrink_and_pad_hand_computed():
    image, boxes = _scene(100, 200, [(40, 20, 120, 60, RED)])
    canvas, out = place_image(tf.constant(image), boxes, (50, 100), 10, -5, False, (64, 128))
    canvas, out = canvas.numpy(), out.numpy()
    # x * 100/200 + 10, y * 50/100 - 5.
    np.testing.assert_allclose(out[0], [30, 5, 70, 25, 0], atol=1e-5)
    _assert_box_on_shape(canvas, out[0], RED)
    np.testing.assert_allclose(canvas[:, :10], PAD_VALUE)  # left of the image
    np.testing.assert_allclose(canvas[45:], PAD_VALUE)  # below it (50 - 5 rows)
    np.testing.assert_allclose(canvas[:, 110:], PAD_VALUE)  # right of it
    np.testing.assert_allclose(canvas[40, 20], BACKGROUND, atol=1e-6)


def test_place_image_enlarge_crops_and_clips_boxes():
    image, boxes = _scene(100, 200, [(20, 10, 180, 90, RED)])
    canvas, out = place_image(tf.constant(image), boxes, (200, 400), -60, -30, False, (64, 128))
    # [20, 10, 180, 90] * 2 - (60, 30) = [-20, -10, 300, 150]: the shape covers the whole canvas.
    np.testing.assert_allclose(out.numpy()[0], [0, 0, 128, 64, 0], atol=1e-5)
    np.testing.assert_allclose(canvas.numpy(), np.broadcast_to(RED, (64, 128, 3)), atol=1e-6)


def test_place_image_partial_crop_hand_computed():
    image, boxes = _scene(100, 200, [(40, 20, 120, 60, RED)])
    canvas, out = place_image(tf.constant(image), boxes, (200, 400), -60, -30, False, (64, 128))
    # [40, 20, 120, 60] * 2 - (60, 30) = [20, 10, 180, 90] -> clipped to [20, 10, 128, 64].
    np.testing.assert_allclose(out.numpy()[0], [20, 10, 128, 64, 0], atol=1e-5)
    _assert_box_on_shape(canvas.numpy(), out.numpy()[0], RED)


def test_place_image_flip_mirrors_source_first():
    image, boxes = _scene(100, 200, [(40, 20, 120, 60, RED)])
    canvas, out = place_image(tf.constant(image), boxes, (50, 100), 10, -5, True, (64, 128))
    # Mirrored in the source: x -> 200 - x gives [80, 160]; then * 0.5 + 10.
    np.testing.assert_allclose(out.numpy()[0], [50, 5, 90, 25, 0], atol=1e-5)
    _assert_box_on_shape(canvas.numpy(), out.numpy()[0], RED)


def test_place_image_resamples_like_tf_image_resize():
    rng = np.random.default_rng(0)
    image = rng.random((37, 53, 3)).astype(np.float32)
    for new_hw in [(64, 96), (20, 30)]:
        canvas, _ = place_image(image, np.zeros((0, 5)), new_hw, 0, 0, False, new_hw)
        expected = tf.image.resize(image, new_hw, method="bilinear", antialias=False)
        np.testing.assert_allclose(canvas.numpy(), expected.numpy(), atol=1e-5)


def test_flip_horizontal_hand_computed_and_twice_is_identity():
    image, boxes = _scene(40, 60, [(5, 10, 20, 30, RED)])
    flipped, fboxes = flip_horizontal(tf.constant(image), boxes)
    np.testing.assert_allclose(fboxes.numpy()[0], [40, 10, 55, 30, 0])
    _assert_box_on_shape(flipped.numpy(), fboxes.numpy()[0], RED, tol=0)
    again, aboxes = flip_horizontal(flipped, fboxes)
    np.testing.assert_array_equal(again.numpy(), image)
    np.testing.assert_array_equal(aboxes.numpy(), boxes)


def test_clip_and_filter_boxes():
    boxes = np.array(
        [[-5, -5, 10, 10, 1], [60, 0, 80, 10, 2], [30, 30, 31, 50, 3], [10, 10, 20, 20, 4]],
        np.float32,
    )
    clipped = clip_boxes(boxes, (0, 0, 40, 64)).numpy()
    np.testing.assert_allclose(clipped[0], [0, 0, 10, 10, 1])
    np.testing.assert_allclose(clipped[1], [60, 0, 64, 10, 2])
    kept = filter_boxes(clipped, 2.0).numpy()
    # The 1-pixel-wide box is dropped; the 4-wide clipped one survives.
    np.testing.assert_array_equal(kept[:, 4], [1, 2, 4])
    kept = filter_boxes(clip_boxes(boxes, (0, 0, 40, 40)), 2.0).numpy()
    np.testing.assert_array_equal(kept[:, 4], [1, 4])  # [60, 80] is outside x < 40


# --- mosaic, mixup, colour -----------------------------------------------------------------------


TILE_COLOURS = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (1.0, 1.0, 0.0), (1.0, 0.0, 1.0)]
TILE_BACKGROUNDS = [(0.2, 0.2, 0.2), (0.0, 0.0, 0.4), (0.0, 0.4, 0.4), (0.4, 0.4, 0.0)]


def _tiles():
    images, boxes = [], []
    for k, (colour, background) in enumerate(zip(TILE_COLOURS, TILE_BACKGROUNDS, strict=True)):
        image, box = _scene(64, 64, [(8, 8, 40, 40, colour)], background=background)
        box[:, 4] = k  # the class id names the tile
        images.append(tf.constant(image))
        boxes.append(box)
    return images, boxes


def test_mosaic_hand_computed_layout():
    images, boxes = _tiles()
    sizes = [(64, 64)] * 4
    canvas, out = mosaic(images, boxes, (50, 40), sizes, [False] * 4, (96, 128), min_box_size=2)
    canvas, out = canvas.numpy(), out.numpy()
    assert canvas.shape == (96, 128, 3)
    # Tiles: top-left at (50 - 64, 40 - 64), top-right at (50, -24), bottom-left at (-14, 40),
    # bottom-right at (50, 40); each box [8, 8, 40, 40] moves with its tile and is cut at the
    # quadrant borders x = 50, y = 40.
    expected = [[0, 0, 26, 16], [58, 0, 90, 16], [0, 48, 26, 80], [58, 48, 90, 80]]
    np.testing.assert_allclose(out[:, :4], expected, atol=1e-5)
    regions = [(0, 0, 40, 50), (0, 50, 40, 128), (40, 0, 96, 50), (40, 50, 96, 128)]
    np.testing.assert_array_equal(out[:, 4], [0, 1, 2, 3])
    for k, (box, region) in enumerate(zip(out, regions, strict=True)):
        _assert_box_on_shape(canvas, box, TILE_COLOURS[k], 0.5, region, TILE_BACKGROUNDS[k])
    # Quadrant backgrounds, and grey where the right-hand tiles end (x >= 114).
    np.testing.assert_allclose(canvas[30, 45], TILE_BACKGROUNDS[0], atol=1e-6)
    np.testing.assert_allclose(canvas[30, 100], TILE_BACKGROUNDS[1], atol=1e-6)
    np.testing.assert_allclose(canvas[90, 45], TILE_BACKGROUNDS[2], atol=1e-6)
    np.testing.assert_allclose(canvas[90, 100], TILE_BACKGROUNDS[3], atol=1e-6)
    np.testing.assert_allclose(canvas[10, 120], PAD_VALUE)
    np.testing.assert_allclose(canvas[60, 120], PAD_VALUE)


def test_mosaic_drops_boxes_cut_below_min_size():
    images, boxes = _tiles()
    # Centre x = 9: the left tiles start at 9 - 64 = -55, so their boxes [8, 40] land on
    # [-47, -15], are clipped to zero width and dropped; the right-hand tiles keep theirs.
    canvas, out = mosaic(images, boxes, (9, 40), [(64, 64)] * 4, [False] * 4, (96, 128), 2.0)
    assert canvas.shape == (96, 128, 3)
    np.testing.assert_array_equal(out[:, 4].numpy(), [1, 3])
    np.testing.assert_allclose(out[:, 0].numpy(), [17, 17])


def test_mixup_blends_and_concatenates():
    a = tf.fill([32, 32, 3], 0.2)
    b = tf.fill([32, 32, 3], 0.6)
    boxes_a = np.array([[1, 2, 3, 4, 5]], np.float32)
    boxes_b = np.array([[6, 7, 8, 9, 1], [2, 2, 9, 9, 0]], np.float32)
    image, boxes = mixup(a, boxes_a, b, boxes_b)
    np.testing.assert_allclose(image.numpy(), 0.4, atol=1e-6)
    np.testing.assert_array_equal(boxes.numpy(), np.concatenate([boxes_a, boxes_b]))


def test_hsv_jitter_hand_computed():
    pixels = tf.constant([[[1.0, 0.0, 0.0], [0.2, 0.4, 0.6]]])
    np.testing.assert_allclose(hsv_jitter(pixels, 0.0, 1.0, 1.0).numpy(), pixels.numpy(), atol=1e-6)
    # A third of a turn about the grey axis maps red to green.
    np.testing.assert_allclose(hsv_jitter(pixels, 1 / 3, 1.0, 1.0)[0, 0], [0, 1, 0], atol=1e-5)
    # Zero saturation leaves the grey of each pixel (its channel mean).
    np.testing.assert_allclose(
        hsv_jitter(pixels, 0.0, 0.0, 1.0)[0].numpy(), [[1 / 3] * 3, [0.4] * 3], atol=1e-6
    )
    np.testing.assert_allclose(
        hsv_jitter(pixels, 0.0, 1.0, 0.5).numpy(), 0.5 * pixels.numpy(), atol=1e-6
    )
    # Gains past the range are clipped to 0..1.
    assert float(tf.reduce_max(hsv_jitter(pixels, 0.0, 1.0, 3.0))) == 1.0


# --- random transforms ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_random_place_boxes_follow_pixels(seed):
    image, boxes = _scene(80, 120, [(30, 20, 90, 60, RED)])
    options = base_section(AugmentConfig, min_box_size=4.0)
    canvas, out = random_place(tf.constant(image), boxes, (96, 96), options, SeedStream([seed, 7]))
    canvas, out = canvas.numpy(), out.numpy()
    assert canvas.shape == (96, 96, 3)
    assert out.shape[1] == 5 and len(out) <= 1
    if len(out):
        assert np.all(out[:, :4] >= 0) and np.all(out[:, [0, 2]] <= 96)
        _assert_box_on_shape(canvas, out[0], RED, tol=1.0)
    else:
        # Dropped only when the shape is (nearly) off the canvas.
        distance = np.linalg.norm(canvas - np.array(RED, np.float32), axis=-1)
        assert (distance < 0.3).sum() < 4 * 96


def test_random_place_is_reproducible_per_seed():
    image, boxes = _scene(80, 120, [(30, 20, 90, 60, RED)])
    options = base_section(AugmentConfig)
    first = random_place(tf.constant(image), boxes, (64, 64), options, SeedStream([3, 4]))
    second = random_place(tf.constant(image), boxes, (64, 64), options, SeedStream([3, 4]))
    other = random_place(tf.constant(image), boxes, (64, 64), options, SeedStream([5, 4]))
    np.testing.assert_array_equal(first[0].numpy(), second[0].numpy())
    assert not np.array_equal(first[0].numpy(), other[0].numpy())


def test_rescale_batch_boxes_follow_pixels_and_padding_stays_zero():
    image, boxes = _scene(64, 96, [(20, 8, 52, 40, RED)])
    images = np.stack([image, image])
    padded = np.zeros((2, 3, 5), np.float32)
    padded[:, 0] = boxes[0]
    out_images, out_boxes = rescale_batch(images, padded, (96, 128))
    out_images, out_boxes = out_images.numpy(), out_boxes.numpy()
    assert out_images.shape == (2, 96, 128, 3)
    # x scales by 128 / 96, y by 96 / 64: hand-computed.
    np.testing.assert_allclose(out_boxes[:, 0], [[80 / 3, 12, 208 / 3, 60, 0]] * 2, rtol=1e-6)
    np.testing.assert_array_equal(out_boxes[:, 1:], 0)
    _assert_box_on_shape(out_images[1], out_boxes[1, 0], RED, tol=1.0)


def test_random_batch_size_draws_multiples_of_32_within_the_range():
    sizes = {
        tuple(random_batch_size((320, 256), 0.5, SeedStream([seed, 1])).numpy())
        for seed in range(200)
    }
    heights = sorted(h for h, _ in sizes)
    assert all(h % 32 == 0 and w % 32 == 0 for h, w in sizes)
    assert heights[0] == 160 and heights[-1] == 480  # 320 x [0.5, 1.5], every step reached
    assert len({h for h, _ in sizes}) == 11
    for h, w in sizes:  # one ratio for both sides, each rounded to its nearest multiple of 32
        assert abs(w / 256 - h / 320) <= 32 / 256
    # A ratio that rounds a side to 0 gives the smallest size the model takes, 32.
    small = [random_batch_size((64, 64), 0.9, SeedStream([seed, 2])).numpy() for seed in range(200)]
    assert np.min(small) == 32 and np.max(small) == 128


@pytest.mark.parametrize("seed", range(4))
def test_random_mosaic_boxes_follow_pixels(seed):
    images, boxes = _tiles()
    options = base_section(AugmentConfig, min_box_size=3.0)
    canvas, out = random_mosaic(images, boxes, (128, 128), options, SeedStream([seed, 11]))
    canvas, out = canvas.numpy(), out.numpy()
    assert canvas.shape == (128, 128, 3)
    assert len(out) >= 1
    for box in out:
        # Each tile's shape has its own colour; a box must frame exactly that colour's pixels.
        k = int(box[4])
        _assert_box_on_shape(canvas, box, TILE_COLOURS[k], 1.0, background=TILE_BACKGROUNDS[k])


def test_special_aug_switch_turns_off_for_the_last_epochs_of_the_plan():
    variable = tf.Variable(True)
    plan = EpochPlan(total=10)
    switch = SpecialAugSwitch(variable, plan, special_aug_ratio=0.7, mosaic=0.5, mixup=0.5)
    states = []
    for epoch in range(10):
        switch.on_epoch_begin(epoch)
        states.append(bool(variable.numpy()))
    assert states == [True] * 7 + [False] * 3
    plan.total = 20  # a time budget lengthened the run: the cut-off moves with it
    switch.on_epoch_begin(10)
    assert bool(variable.numpy())
    switch.on_epoch_begin(14)
    assert not bool(variable.numpy())


@pytest.mark.parametrize(
    ("mosaic_p", "mixup_p", "expected"),
    [
        (0.5, 0.5, ["Epoch 8: mosaic/mixup off"]),
        (0.5, 0.0, ["Epoch 8: mosaic off"]),
        (0.0, 0.5, ["Epoch 8: mixup off"]),
        (0.0, 0.0, []),
    ],
)
def test_special_aug_switch_logs_only_what_was_on(caplog, mosaic_p, mixup_p, expected):
    """Issue #17.2: "mosaic/mixup off" must not be logged when neither was on."""
    switch = SpecialAugSwitch(tf.Variable(True), EpochPlan(10), 0.7, mosaic=mosaic_p, mixup=mixup_p)
    with caplog.at_level("INFO", logger="utils.engine.callbacks"):
        for epoch in range(10):
            switch.on_epoch_begin(epoch)
    assert [r.getMessage() for r in caplog.records] == expected
