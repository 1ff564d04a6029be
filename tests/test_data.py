"""Tests for utils/data.py: decoding, dataset contract, filters, order, and the mosaic switch."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from utils.config import AugmentConfig, base_section
from utils.data.index import Sample
from utils.data.pipeline import build_dataset, decode_image, pad_boxes
from utils.letterbox import letterbox_params

# --- decoding ------------------------------------------------------------------------------------


def test_decode_grayscale_png_to_rgb(tmp_path):
    grey = np.array([[0, 100], [200, 255]], np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "grey.png")
    rgb = decode_image(str(tmp_path / "grey.png")).numpy()
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.repeat(grey[..., None], 3, axis=-1))


def test_decode_rgba_png_drops_alpha(tmp_path):
    rgba = np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(decode_image(str(tmp_path / "rgba.png")).numpy(), rgba[..., :3])


def test_decode_palette_png_expands_colours(tmp_path):
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    image.putdata([2, 0, 1])
    image.save(tmp_path / "palette.png")
    rgb = decode_image(str(tmp_path / "palette.png")).numpy()
    np.testing.assert_array_equal(rgb[0], [[0, 0, 255], [255, 0, 0], [0, 255, 0]])


def test_decode_16bit_png_rescales_to_8_bits(tmp_path):
    rgb16 = np.array([[[0, 32896, 65535], [257 * 10, 257 * 20, 257 * 30]]], np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), rgb16[..., ::-1])  # OpenCV writes BGR
    rgb = decode_image(str(tmp_path / "deep.png")).numpy()
    np.testing.assert_array_equal(rgb, [[[0, 128, 255], [10, 20, 30]]])


def test_decode_jpeg(tmp_path):
    bgr = np.zeros((16, 24, 3), np.uint8)
    bgr[:] = (30, 90, 200)
    cv2.imwrite(str(tmp_path / "flat.jpg"), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    rgb = decode_image(str(tmp_path / "flat.jpg")).numpy()
    assert rgb.shape == (16, 24, 3)
    np.testing.assert_allclose(rgb.mean(axis=(0, 1)), [200, 90, 30], atol=3)


def test_pad_boxes_pads_with_zeros_and_keeps_the_first_rows():
    boxes = np.arange(25, dtype=np.float32).reshape(5, 5)
    np.testing.assert_array_equal(pad_boxes(boxes, 3).numpy(), boxes[:3])
    padded = pad_boxes(boxes[:2], 4).numpy()
    np.testing.assert_array_equal(padded[:2], boxes[:2])
    np.testing.assert_array_equal(padded[2:], 0)


# --- fixtures ------------------------------------------------------------------------------------


def _write_sample(path: Path, index: int, shape_hw, rects, difficult=None) -> Sample:
    """A PNG: flat background, solid rectangles ``(x1, y1, x2, y2)``; class = rectangle index."""
    h, w = shape_hw
    image = np.full((h, w, 3), (20 + 10 * index, 40, 60), np.uint8)
    for x1, y1, x2, y2 in rects:
        image[y1:y2, x1:x2] = (250, 250, 250)
    cv2.imwrite(str(path), image[..., ::-1])
    n = len(rects)
    return Sample(
        image_path=path,
        image_id=f"fixture/{path.stem}",
        width=w,
        height=h,
        boxes=np.array(rects, np.float32).reshape(n, 4),
        classes=np.arange(n, dtype=np.int32),
        difficult=np.zeros(n, bool) if difficult is None else np.array(difficult, bool),
    )


@pytest.fixture
def samples(tmp_path) -> list[Sample]:
    shapes = [(60, 90), (90, 60), (64, 64), (50, 120)]
    return [
        _write_sample(tmp_path / f"img{i}.png", i, hw, [(5, 6, 30, 40), (10, 20, 50, 45)])
        for i, hw in enumerate(shapes)
    ]


# --- the dataset ---------------------------------------------------------------------------------


def test_training_dataset_contract(samples):
    dataset = build_dataset(
        samples, input_size=(64, 96), batch_size=2, training=True, max_boxes=7, shuffle_seed=0
    )
    assert dataset.element_spec[0].shape.as_list() == [2, 64, 96, 3]
    assert dataset.element_spec[1].shape.as_list() == [2, 7, 5]
    batches = list(dataset)
    assert len(batches) == 2  # 4 samples, batch 2, remainder dropped by default
    for images, boxes in batches:
        assert images.dtype == tf.float32 and boxes.dtype == tf.float32
        images, boxes = images.numpy(), boxes.numpy()
        assert images.min() >= 0.0 and images.max() <= 1.0
        valid = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
        np.testing.assert_array_equal(boxes[~valid], 0)  # padding rows are all zeros
        real = boxes[valid]
        assert np.all(real[:, [0, 2]] >= 0) and np.all(real[:, [0, 2]] <= 96)
        assert np.all(real[:, [1, 3]] >= 0) and np.all(real[:, [1, 3]] <= 64)
        assert np.all(real[:, 2] - real[:, 0] >= 2) and np.all(real[:, 3] - real[:, 1] >= 2)
        assert set(np.unique(real[:, 4])) <= {0.0, 1.0}


def test_training_drop_remainder_can_be_turned_off(samples):
    dataset = build_dataset(
        samples[:3], input_size=(64, 64), batch_size=2, training=True, drop_remainder=False
    )
    assert [int(images.shape[0]) for images, _ in dataset] == [2, 1]


@pytest.mark.parametrize("training", [False, True])
def test_images_cached_in_memory_give_the_same_batches(samples, training: bool):
    """RAM-cached images must feed exactly what decoding the files feeds, mosaic included."""
    options = base_section(AugmentConfig, mosaic=0.5, mixup=0.5)
    kwargs = dict(input_size=(64, 96), batch_size=2, training=training, shuffle_seed=3)
    if training:
        kwargs["augment"] = options

    def examples(**extra) -> tuple[np.ndarray, np.ndarray]:
        batches = list(build_dataset(samples, **kwargs, **extra))
        images = np.concatenate([images.numpy() for images, _ in batches])
        boxes = np.concatenate([boxes.numpy() for _, boxes in batches])
        # Training maps in parallel without a fixed order: compare in a canonical order.
        order = np.argsort(images.sum(axis=(1, 2, 3)))
        return images[order], boxes[order]

    from_files, from_memory = examples(), examples(cache_images=True)
    assert len(from_files[0]) > 0
    np.testing.assert_array_equal(from_files[0], from_memory[0])
    np.testing.assert_array_equal(from_files[1], from_memory[1])


def test_validation_letterbox_order_and_boxes(samples):
    dataset = build_dataset(samples, input_size=(64, 96), batch_size=3, training=False)
    batches = list(dataset)
    assert [int(images.shape[0]) for images, _ in batches] == [3, 1]  # no drop_remainder
    images = np.concatenate([b[0].numpy() for b in batches])
    boxes = np.concatenate([b[1].numpy() for b in batches])
    for i, sample in enumerate(samples):
        scale, dx, dy = letterbox_params((sample.height, sample.width), (64, 96))
        expected = sample.boxes * scale + np.array([dx, dy, dx, dy], np.float32)
        np.testing.assert_allclose(boxes[i, :2, :4], expected, atol=1e-4)
        np.testing.assert_array_equal(boxes[i, :2, 4], [0, 1])
        np.testing.assert_array_equal(boxes[i, 2:], 0)
        # The background colour identifies the sample: order is the input order.
        inside = images[i, int(dy) + 1, int(dx) + 1]
        np.testing.assert_allclose(inside * 255, [20 + 10 * i, 40, 60], atol=1)
    again = np.concatenate([b[0].numpy() for b in dataset])
    np.testing.assert_array_equal(images, again)


def test_use_difficult_false_drops_difficult_boxes(tmp_path):
    rects = [(5, 5, 20, 20), (30, 5, 50, 25), (5, 30, 25, 60)]
    sample = _write_sample(tmp_path / "d.png", 0, (64, 64), rects, difficult=[False, True, False])
    kept = build_dataset([sample], input_size=(64, 64), batch_size=1, training=False)
    dropped = build_dataset(
        [sample], input_size=(64, 64), batch_size=1, training=False, use_difficult=False
    )
    kept_boxes = next(iter(kept))[1].numpy()[0]
    dropped_boxes = next(iter(dropped))[1].numpy()[0]
    np.testing.assert_array_equal(kept_boxes[:3, 4], [0, 1, 2])
    np.testing.assert_array_equal(dropped_boxes[:2, 4], [0, 2])
    np.testing.assert_array_equal(dropped_boxes[2:], 0)


def test_max_boxes_keeps_the_first(tmp_path):
    rects = [(4 * k, 4 * k, 4 * k + 10, 4 * k + 10) for k in range(6)]
    sample = _write_sample(tmp_path / "many.png", 0, (64, 64), rects)
    dataset = build_dataset(
        [sample], input_size=(64, 64), batch_size=1, training=False, max_boxes=4
    )
    boxes = next(iter(dataset))[1].numpy()[0]
    assert boxes.shape == (4, 5)
    np.testing.assert_array_equal(boxes[:, 4], [0, 1, 2, 3])
    np.testing.assert_allclose(boxes[:, :4], np.array(rects[:4], np.float32), atol=1e-5)


def _full_frame_samples(tmp_path, n: int) -> list[Sample]:
    """Images whose single box is the whole image, class = sample index."""
    samples = []
    for i in range(n):
        sample = _write_sample(tmp_path / f"full{i}.png", i, (48, 64), [(0, 0, 64, 48)])
        samples.append(dataclasses.replace(sample, classes=np.array([i], np.int32)))
    return samples


def test_mosaic_switch_variable_turns_mosaic_off(tmp_path):
    samples = _full_frame_samples(tmp_path, 4)
    # A single placed image keeps its one full-frame box; a mosaic has one per quadrant (each
    # tile covers at least 40 % of a 30-70 % quadrant, far above min_box_size).
    options = base_section(AugmentConfig, mosaic=1.0, mixup=0.0)
    enabled = tf.Variable(True)
    dataset = build_dataset(
        samples, input_size=(64, 64), batch_size=4, training=True, augment=options,
        shuffle_seed=1, mosaic_enabled=enabled,
    )  # fmt: skip

    def box_counts() -> list[int]:
        _, boxes = next(iter(dataset))
        return sorted(np.count_nonzero(boxes.numpy()[..., 2] > 0, axis=1).tolist())

    assert box_counts() == [4, 4, 4, 4]
    enabled.assign(False)
    assert box_counts() == [1, 1, 1, 1]
    enabled.assign(True)
    assert box_counts() == [4, 4, 4, 4]


def test_mixup_concatenates_two_samples(tmp_path):
    samples = _full_frame_samples(tmp_path, 4)
    options = base_section(AugmentConfig, mosaic=1.0, mixup=1.0)
    dataset = build_dataset(
        samples, input_size=(64, 64), batch_size=4, training=True, augment=options
    )
    _, boxes = next(iter(dataset))
    counts = np.count_nonzero(boxes.numpy()[..., 2] > 0, axis=1)
    np.testing.assert_array_equal(counts, 5)  # 4 mosaic tiles + the mixed-in single image


def test_training_shuffles_every_epoch_and_covers_all_samples(tmp_path):
    samples = _full_frame_samples(tmp_path, 8)
    options = base_section(AugmentConfig, mosaic=0.0)
    dataset = build_dataset(
        samples, input_size=(64, 64), batch_size=8, training=True, augment=options, shuffle_seed=3
    )
    orders = [tuple(next(iter(dataset))[1].numpy()[:, 0, 4].astype(int)) for _ in range(3)]
    for order in orders:
        assert sorted(order) == list(range(8))
    assert len(set(orders)) > 1


def test_mixup_without_mosaic_blends_two_images(tmp_path):
    """Issue #17.2: with ``mosaic: 0``, mixup blends two single placed images."""
    samples = _full_frame_samples(tmp_path, 4)
    options = base_section(AugmentConfig, mosaic=0.0, mixup=1.0)
    enabled = tf.Variable(True)
    dataset = build_dataset(
        samples, input_size=(64, 64), batch_size=4, training=True, augment=options,
        shuffle_seed=2, mosaic_enabled=enabled,
    )  # fmt: skip

    def box_counts() -> list[int]:
        _, boxes = next(iter(dataset))
        return np.count_nonzero(boxes.numpy()[..., 2] > 0, axis=1).tolist()

    assert box_counts() == [2, 2, 2, 2]  # each image's full-frame box and its partner's
    enabled.assign(False)  # SpecialAugSwitch's cut-off ends the plain mixup too
    assert box_counts() == [1, 1, 1, 1]


def test_seeded_training_is_reproducible(tmp_path):
    """Issue #17.8: a seed fixes every batch (which examples, in which order, augmented how)
    over several epochs, the parallel map included; another seed changes them."""
    samples = _full_frame_samples(tmp_path, 8)

    def epochs(seed: int) -> tuple[np.ndarray, np.ndarray]:
        dataset = build_dataset(
            samples, input_size=(64, 64), batch_size=2, training=True, shuffle_seed=seed
        )
        batches = list(dataset.repeat(2))
        assert len(batches) == 8
        return np.stack([b[0].numpy() for b in batches]), np.stack([b[1].numpy() for b in batches])

    images, boxes = epochs(5)
    again_images, again_boxes = epochs(5)
    np.testing.assert_array_equal(boxes, again_boxes)  # classes = sample index: the order
    np.testing.assert_array_equal(images, again_images)
    _, other_boxes = epochs(6)
    assert not np.array_equal(boxes, other_boxes)


def test_multi_scale_resizes_each_batch_and_its_boxes(tmp_path):
    """augment.multi_scale: every batch is the fixed-size batch of the same seed, resized to its
    own size (multiples of 32 within the range) with its boxes scaled alike; seeded, it repeats."""
    samples = _full_frame_samples(tmp_path, 8)

    def batches(multi_scale: float) -> list:
        options = base_section(AugmentConfig, mosaic=0.0, mixup=0.0, multi_scale=multi_scale)
        dataset = build_dataset(
            samples, input_size=(64, 96), batch_size=2, training=True, augment=options,
            max_boxes=3, shuffle_seed=4,
        )  # fmt: skip
        if multi_scale:
            assert dataset.element_spec[0].shape.as_list() == [2, None, None, 3]
        return [(images.numpy(), boxes.numpy()) for images, boxes in dataset.repeat(3)]

    fixed, scaled = batches(0.0), batches(0.5)
    sizes = set()
    for (images, boxes), (scaled_images, scaled_boxes) in zip(fixed, scaled, strict=True):
        height, width = scaled_images.shape[1:3]
        sizes.add((height, width))
        assert height % 32 == 0 and width % 32 == 0 and 32 <= height <= 96
        expected = tf.image.resize(images, (height, width)).numpy()
        np.testing.assert_allclose(scaled_images, expected, atol=1e-6)
        factors = np.array([width / 96, height / 64] * 2, np.float32)
        np.testing.assert_allclose(scaled_boxes[..., :4], boxes[..., :4] * factors, atol=1e-4)
        np.testing.assert_array_equal(scaled_boxes[..., 4], boxes[..., 4])
    assert len(sizes) >= 2
    again = batches(0.5)
    assert [b[0].shape for b in again] == [b[0].shape for b in scaled]


def test_input_size_must_be_a_multiple_of_32(samples):
    with pytest.raises(ValueError, match="multiples of 32"):
        build_dataset(samples, input_size=(60, 64), batch_size=1, training=False)
