"""tf.data input pipeline: decode, augment or letterbox, pad the boxes, batch.

``build_dataset`` yields ``(images [B, H, W, 3] float32 in 0..1, boxes [B, max_boxes, 5] float32)``.
A box row is ``x1, y1, x2, y2, class_id`` in input pixels (``0..W``, ``0..H``); padding rows are
all zeros, and a row is valid iff ``x2 > x1`` and ``y2 > y1``.

The sample table lives in the graph as tensors (paths, boxes flattened with row offsets), and the
map runs over sample indices, so a mosaic draws its three extra images by index inside the graph
and no Python runs per element. Each element also gets its own random seed from
``tf.data.Dataset.random``, so the augmentation is reproducible when ``shuffle_seed`` is given.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from utils.data.augment import (
    AugmentOptions,
    SeedStream,
    filter_boxes,
    letterbox_image,
    mixup,
    random_hsv,
    random_mosaic,
    random_place,
)
from utils.data.index import Sample

logger = logging.getLogger(__name__)

__all__ = ["SampleTable", "build_dataset", "decode_image", "pad_boxes"]


@dataclass(frozen=True)
class SampleTable:
    """Samples as tensors: row ``i``'s boxes are ``boxes[offsets[i]:offsets[i + 1]]``.

    With ``pixels`` set (see :meth:`with_decoded_images`) image ``i`` is read from memory,
    ``pixels[pixel_offsets[i]:pixel_offsets[i + 1]]`` reshaped to ``shapes[i]``, instead of being
    decoded from its file every time it is drawn (a mosaic with mixup draws up to 8 per example).
    """

    paths: tf.Tensor  # string [N]
    boxes: tf.Tensor  # float32 [total boxes, 5]: x1, y1, x2, y2, class_id in image pixels
    offsets: tf.Tensor  # int32 [N + 1]
    pixels: tf.Tensor | None = None  # uint8 [total bytes]: every decoded image, flattened
    pixel_offsets: tf.Tensor | None = None  # int64 [N + 1]
    shapes: tf.Tensor | None = None  # int32 [N, 3]

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], use_difficult: bool = True) -> SampleTable:
        """Builds the table; ``use_difficult=False`` leaves out boxes flagged difficult."""
        rows, counts = [], []
        for sample in samples:
            keep = np.ones(len(sample.classes), bool)
            if not use_difficult:
                keep &= ~np.asarray(sample.difficult, bool)
            boxes = np.asarray(sample.boxes, np.float32).reshape(-1, 4)[keep]
            classes = np.asarray(sample.classes, np.float32).reshape(-1)[keep]
            rows.append(np.concatenate([boxes, classes[:, None]], axis=1))
            counts.append(len(boxes))
        flat = np.concatenate(rows, axis=0) if rows else np.zeros((0, 5), np.float32)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        return cls(
            paths=tf.constant([str(s.image_path) for s in samples], tf.string),
            boxes=tf.constant(flat.reshape(-1, 5), tf.float32),
            offsets=tf.constant(offsets),
        )

    def with_decoded_images(self) -> SampleTable:
        """The same table with every image decoded once into memory (uint8 RGB).

        Costs ``height * width * 3`` bytes per image: about 0.5 GB per 1,000 VOC-sized images.
        """
        decoded = tf.data.Dataset.from_tensor_slices(self.paths).map(
            decode_image, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
        images = [image.numpy() for image in decoded]
        sizes = [image.size for image in images]
        pixels = np.concatenate([image.reshape(-1) for image in images])
        logger.info("decoded %d images into memory (%.0f MB)", len(images), pixels.nbytes / 2**20)
        return dataclasses.replace(
            self,
            pixels=tf.constant(pixels),
            pixel_offsets=tf.constant(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)),
            shapes=tf.constant(np.array([image.shape for image in images], np.int32)),
        )

    def __len__(self) -> int:
        return int(self.paths.shape[0])

    def load(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The decoded uint8 image ``[h, w, 3]`` and boxes ``[n, 5]`` of sample ``index``."""
        boxes = self.boxes[self.offsets[index] : self.offsets[index + 1]]
        if self.pixels is None:
            return decode_image(self.paths[index]), boxes
        flat = self.pixels[self.pixel_offsets[index] : self.pixel_offsets[index + 1]]
        return tf.reshape(flat, self.shapes[index]), boxes


def decode_image(path: tf.Tensor | str) -> tf.Tensor:
    """Reads an image file as uint8 RGB ``[h, w, 3]``.

    JPEG, PNG (grey, grey+alpha, palette, RGBA, 16-bit), GIF (first frame) and BMP are accepted;
    alpha is dropped and 16-bit values are rescaled to 8 bits.
    """
    data = tf.io.read_file(path)
    return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)


def pad_boxes(boxes: tf.Tensor, max_boxes: int) -> tf.Tensor:
    """Keeps the first ``max_boxes`` rows of ``[n, 5]`` and pads with zero rows to ``max_boxes``."""
    boxes = tf.reshape(tf.cast(boxes, tf.float32), [-1, 5])[:max_boxes]
    boxes = tf.pad(boxes, [[0, max_boxes - tf.shape(boxes)[0]], [0, 0]])
    return tf.ensure_shape(boxes, [max_boxes, 5])


def _validation_example(table: SampleTable, input_hw: tuple[int, int], max_boxes: int):
    def parse(index):
        image, boxes = table.load(index)
        image, boxes = letterbox_image(image, boxes, input_hw)
        image = tf.ensure_shape(image, [*input_hw, 3])
        return image, pad_boxes(filter_boxes(boxes, 0.0), max_boxes)

    return parse


def _training_example(
    table: SampleTable,
    input_hw: tuple[int, int],
    max_boxes: int,
    options: AugmentOptions,
    mosaic_enabled: tf.Variable | None,
):
    def single(index, rng: SeedStream):
        image, boxes = table.load(index)
        return random_place(image, boxes, input_hw, options, rng)

    def four_tiles(index, rng: SeedStream):
        others = rng.integer(len(table), shape=[3])
        loaded = [table.load(i) for i in (index, others[0], others[1], others[2])]
        images, boxes = [x[0] for x in loaded], [x[1] for x in loaded]
        canvas, boxes = random_mosaic(images, boxes, input_hw, options, rng)
        if options.mixup <= 0:
            return canvas, boxes
        partner = rng.integer(len(table))
        return tf.cond(
            rng.bernoulli(options.mixup),
            lambda: mixup(canvas, boxes, *single(partner, rng)),
            lambda: (canvas, boxes),
        )

    def parse(index, seed):
        rng = SeedStream(seed)
        if options.mosaic <= 0:
            image, boxes = single(index, rng)
        else:
            use_mosaic = rng.bernoulli(options.mosaic)
            if mosaic_enabled is not None:
                use_mosaic &= tf.cast(mosaic_enabled, tf.bool)
            image, boxes = tf.cond(
                use_mosaic, lambda: four_tiles(index, rng), lambda: single(index, rng)
            )
        image = random_hsv(image, options, rng)
        image = tf.ensure_shape(image, [*input_hw, 3])
        return image, pad_boxes(boxes, max_boxes)

    return parse


def build_dataset(
    samples: Sequence[Sample],
    *,
    input_size: tuple[int, int],
    batch_size: int,
    training: bool,
    augment: AugmentOptions | None = None,
    max_boxes: int = 100,
    use_difficult: bool = True,
    shuffle_seed: int | None = None,
    mosaic_enabled: tf.Variable | None = None,
    drop_remainder: bool | None = None,
    cache_images: bool = False,
) -> tf.data.Dataset:
    """Builds the batched input pipeline over ``samples``.

    Args:
        samples: annotated images (``utils.data.index.Sample``).
        input_size: ``(H, W)`` of the network input, multiples of 32.
        batch_size: images per batch.
        training: random augmentation and per-epoch shuffling when True; otherwise a plain
            letterbox in the given order.
        augment: augmentation settings (training only); ``None`` means ``AugmentOptions()``.
        max_boxes: rows of the padded box tensor; extra boxes beyond it are dropped.
        use_difficult: keep boxes flagged difficult in the targets.
        shuffle_seed: makes the shuffle order and the augmentation reproducible.
        mosaic_enabled: a ``tf.Variable(bool)`` read for every element; False turns mosaic (and
            so mixup) off without rebuilding the dataset (see ``SpecialAugSwitch``).
        drop_remainder: drop the last partial batch; defaults to ``training``.
        cache_images: decode every image once up front and keep it in memory (see
            :meth:`SampleTable.with_decoded_images`); worth it when the images fit in RAM.

    Returns:
        A dataset of ``(images [B, H, W, 3] float32 0..1, boxes [B, max_boxes, 5] float32)``.
    """
    height, width = (int(v) for v in input_size)
    if height % 32 or width % 32:
        raise ValueError(f"input_size must be multiples of 32; received: {input_size}")
    if not samples:
        raise ValueError("build_dataset needs at least one sample; received an empty list")
    input_hw = (height, width)
    table = SampleTable.from_samples(samples, use_difficult=use_difficult)
    if cache_images:
        table = table.with_decoded_images()
    if drop_remainder is None:
        drop_remainder = training
    indices = tf.data.Dataset.range(len(table))

    if training:
        options = augment if augment is not None else AugmentOptions()
        indices = indices.shuffle(len(table), seed=shuffle_seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=shuffle_seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip(indices, seeds.batch(2)).map(
            _training_example(table, input_hw, max_boxes, options, mosaic_enabled),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=False,
        )
    else:
        dataset = indices.map(
            _validation_example(table, input_hw, max_boxes),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(tf.data.AUTOTUNE)
