"""tf.data input pipeline: decode, augment or letterbox, pad the boxes, batch.

``build_dataset`` yields ``(images [B, H, W, 3] float32 in 0..1, boxes [B, max_boxes, 5] float32)``.
A box row is ``x1, y1, x2, y2, class_id`` in input pixels (``0..W``, ``0..H``); padding rows are
all zeros, and a row is valid iff ``x2 > x1`` and ``y2 > y1``.

The sample table lives in the graph as tensors (paths, boxes flattened with row offsets), and the
map runs over sample indices, so a mosaic draws its three extra images by index inside the graph
and no Python runs per element. Each element also gets its own random seed from
``tf.data.Dataset.random``, paired with its index before the parallel map; with a
``shuffle_seed`` the map also keeps its input order, so every batch of every epoch (which
examples, in which order, augmented how) is the same in every run. Images are decoded upright
(EXIF orientation, see :func:`decode_image`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from utils.config import AugmentConfig, base_section
from utils.data.augment import (
    SeedStream,
    filter_boxes,
    mixup,
    random_batch_size,
    random_hsv,
    random_mosaic,
    random_place,
    rescale_batch,
)
from utils.data.index import Sample
from utils.letterbox import letterbox_image

logger = logging.getLogger(__name__)

__all__ = [
    "SampleTable",
    "apply_orientation",
    "build_dataset",
    "decode_image",
    "exif_orientation",
    "pad_boxes",
]


@dataclass(frozen=True)
class SampleTable:
    """Samples as tensors: row ``i``'s boxes are ``boxes[offsets[i]:offsets[i + 1]]``.

    With ``pixels`` set (see :meth:`with_decoded_images`) image ``i`` is read from memory,
    ``pixels[pixel_offsets[i]:pixel_offsets[i + 1]]`` reshaped to ``shapes[i]``, instead of being
    decoded from its file every time it is drawn (a mosaic with mixup draws up to 8 per example).
    """

    paths: tf.Tensor  # string [N]
    orientations: tf.Tensor  # int32 [N]: EXIF orientation, read by the dataset index
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
            orientations=tf.constant([s.orientation for s in samples], tf.int32),
            boxes=tf.constant(flat.reshape(-1, 5), tf.float32),
            offsets=tf.constant(offsets),
        )

    def with_decoded_images(self) -> SampleTable:
        """The same table with every image decoded once into memory (uint8 RGB).

        Costs ``height * width * 3`` bytes per image: about 0.5 GB per 1,000 VOC-sized images.
        """
        decoded = tf.data.Dataset.from_tensor_slices((self.paths, self.orientations)).map(
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
            return decode_image(self.paths[index], self.orientations[index]), boxes
        flat = self.pixels[self.pixel_offsets[index] : self.pixel_offsets[index + 1]]
        return tf.reshape(flat, self.shapes[index]), boxes


def decode_image(
    path: tf.Tensor | str, orientation: tf.Tensor | int | None = None
) -> tf.Tensor:
    """Reads an image file as uint8 RGB ``[h, w, 3]``, turned upright by its EXIF orientation.

    JPEG, PNG (grey, grey+alpha, palette, RGBA, 16-bit), GIF (first frame) and BMP are accepted;
    alpha is dropped and 16-bit values are rescaled to 8 bits. The orientation tag of a JPEG or
    PNG is applied as viewers, OpenCV's ``imread`` and the dataset index (which checks annotated
    sizes against the upright size) apply it, so pixels and annotated boxes agree.

    Args:
        path: the image file.
        orientation: its EXIF orientation where already known (``Sample.orientation``: the
            training pipeline's graph stays small); None reads it (:func:`exif_orientation`).
    """
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    return apply_orientation(image, exif_orientation(data) if orientation is None else orientation)


# EXIF is found only within this many leading bytes of a file: cameras write it first (JPEG APP1
# after at most a JFIF APP0; PNG eXIf before the image data), and IFD0 opens the EXIF block.
_EXIF_SCAN_BYTES = 1 << 17
_MAX_IFD_ENTRIES = 128  # IFD0 entries searched for the orientation tag
_ORIENTATION_TAG = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (int32 1..8) of the encoded image ``data`` (a string scalar).

    Reads the first EXIF block of a JPEG (an APP1 segment ``Exif\\0\\0``) or PNG (an ``eXIf``
    chunk before the image data), as Pillow does, in graph ops without loops or branches, so
    that tf.data maps and exported graphs stay cheap to build. Other formats, files without the
    tag and values outside 1..8 give 1 (upright).
    """
    data = tf.strings.substr(data, 0, _EXIF_SCAN_BYTES)
    head = tf.io.decode_raw(data, tf.uint8)
    size = tf.size(head, out_type=tf.int64)
    head = tf.pad(tf.cast(head, tf.int64), [[0, 1]])

    def read(start: tf.Tensor | int, length: int) -> tf.Tensor:
        # Clipped: bytes past the data (at a corrupt offset) read as the zero after it.
        index = tf.clip_by_value(start + tf.range(length, dtype=tf.int64), 0, size)
        return tf.gather(head, index)

    def equal(found: tf.Tensor, expected: bytes) -> tf.Tensor:
        return tf.reduce_all(tf.equal(found, tf.constant(list(expected), tf.int64)))

    def number(digits: tf.Tensor, width: int, little: tf.Tensor) -> tf.Tensor:
        # Unsigned integers from their ``width`` bytes (the last axis), in the file's byte order.
        powers = 256 ** tf.range(width, dtype=tf.int64)
        return tf.reduce_sum(digits * tf.where(little, powers, tf.reverse(powers, [0])), -1)

    def offset(marker: bytes) -> tf.Tensor:
        # Where ``marker`` first occurs (``size`` if nowhere): the length of what precedes it.
        parts = tf.raw_ops.StringSplitV2(input=tf.reshape(data, [1]), sep=marker, maxsplit=1)
        return tf.cast(tf.strings.length(parts.values[0]), tf.int64)

    signature = read(0, len(_PNG_SIGNATURE))
    # JPEG: FF E1 <16-bit length> "Exif\0\0" <TIFF>; entropy-coded data never holds FF E1.
    jpeg_exif = offset(b"Exif\0\0")
    in_jpeg = equal(signature[:2], b"\xff\xd8") & equal(read(jpeg_exif - 4, 2), b"\xff\xe1")
    # PNG: <32-bit length> "eXIf" <TIFF> <CRC>, read only before the pixels (IDAT).
    png_exif = offset(b"eXIf")
    in_png = equal(signature, _PNG_SIGNATURE) & (png_exif < offset(b"IDAT"))
    tiff = tf.where(in_jpeg, jpeg_exif + 6, png_exif + 4)
    # TIFF header: byte order ("II" little-endian, "MM" big), 42, the offset of IFD0. IFD0 is a
    # 16-bit count of 12-byte entries <tag> <type> <count> <value>; a SHORT value comes first.
    header = read(tiff, 8)
    little = equal(header[:2], b"II")
    ifd = tiff + number(header[4:], 4, little)
    table = tf.reshape(read(ifd + 2, 12 * _MAX_IFD_ENTRIES), [_MAX_IFD_ENTRIES, 12])
    slots = tf.range(_MAX_IFD_ENTRIES, dtype=tf.int64)
    listed = (slots < number(read(ifd, 2), 2, little)) & (ifd + 14 + 12 * slots <= size)
    is_tag = listed & tf.equal(number(table[:, :2], 2, little), _ORIENTATION_TAG)
    value = number(table[tf.argmax(tf.cast(is_tag, tf.int32)), 8:10], 2, little)
    valid = (in_jpeg | in_png) & tf.reduce_any(is_tag) & (value >= 1) & (value <= 8)
    return tf.cast(tf.where(valid, value, 1), tf.int32)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor | int) -> tf.Tensor:
    """Turns an image ``[h, w, c]`` stored with EXIF ``orientation`` (1..8) upright.

    The same transforms as ``PIL.ImageOps.exif_transpose``: 2 mirrors left-right, 3 turns
    180 degrees, 4 mirrors top-bottom, 5 transposes, 6 turns 90 degrees clockwise, 7 transposes
    across the other diagonal, 8 turns 90 degrees counter-clockwise. Each is a transpose (5-8)
    followed by mirroring rows (3, 4, 7, 8) and columns (2, 3, 6, 7), done without branches.
    """
    image = tf.convert_to_tensor(image)
    orientation = tf.cast(orientation, tf.int32)
    swap = tf.where(orientation >= 5, tf.constant([1, 0, 2]), tf.constant([0, 1, 2]))
    mirror_rows = tf.reduce_any(tf.equal(orientation, [3, 4, 7, 8]))
    mirror_columns = tf.reduce_any(tf.equal(orientation, [2, 3, 6, 7]))
    axes = tf.boolean_mask(tf.constant([0, 1]), tf.stack([mirror_rows, mirror_columns]))
    upright = tf.reverse(tf.transpose(image, swap), axes)
    return tf.ensure_shape(upright, [None, None, image.shape[-1]])


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
    options: AugmentConfig,
    mosaic_enabled: tf.Variable | None,
):
    def single(index, rng: SeedStream):
        image, boxes = table.load(index)
        return random_place(image, boxes, input_hw, options, rng)

    def blend(image, boxes, allowed, rng: SeedStream):
        # With probability ``mixup``: a 0.5/0.5 blend with another randomly placed sample.
        partner = rng.integer(len(table))
        return tf.cond(
            rng.bernoulli(options.mixup) & allowed,
            lambda: mixup(image, boxes, *single(partner, rng)),
            lambda: (image, boxes),
        )

    def four_tiles(index, rng: SeedStream):
        others = rng.integer(len(table), shape=[3])
        loaded = [table.load(i) for i in (index, others[0], others[1], others[2])]
        images, boxes = [x[0] for x in loaded], [x[1] for x in loaded]
        canvas, boxes = random_mosaic(images, boxes, input_hw, options, rng)
        if options.mixup <= 0:
            return canvas, boxes
        return blend(canvas, boxes, tf.constant(True), rng)

    def parse(index, seed):
        rng = SeedStream(seed)
        # SpecialAugSwitch's cut-off: mosaic and mixup only while it is on.
        special = tf.constant(True) if mosaic_enabled is None else tf.cast(mosaic_enabled, tf.bool)
        if options.mosaic <= 0:
            # Without mosaic, mixup blends two single placed images (YOLOv5 and YOLOX, as the
            # branch below, blend only mosaics: a mosaic setting keeps their recipe).
            image, boxes = single(index, rng)
            if options.mixup > 0:
                image, boxes = blend(image, boxes, special, rng)
        else:
            use_mosaic = rng.bernoulli(options.mosaic) & special
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
    augment: AugmentConfig | None = None,
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
        augment: augmentation settings (training only); ``None``: ``configs/base.yaml``'s.
            With ``augment.multi_scale`` each batch comes at its own size (see
            :func:`utils.data.augment.random_batch_size`): the model must accept any size.
        max_boxes: rows of the padded box tensor; extra boxes beyond it are dropped.
        use_difficult: keep boxes flagged difficult in the targets.
        shuffle_seed: makes the batches reproducible: shuffle order, batch order and
            augmentation, epoch after epoch (None: the map may also yield out of order).
        mosaic_enabled: a ``tf.Variable(bool)`` read for every element; False turns mosaic and
            mixup off without rebuilding the dataset (see ``SpecialAugSwitch``).
        drop_remainder: drop the last partial batch; defaults to ``training``.
        cache_images: decode every image once up front and keep it in memory (see
            :meth:`SampleTable.with_decoded_images`); worth it when the images fit in RAM.

    Returns:
        A dataset of ``(images [B, H, W, 3] float32 0..1, boxes [B, max_boxes, 5] float32)``
        (H, W: ``input_size``, or a multi-scale batch's size).
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
        options = augment if augment is not None else base_section(AugmentConfig)
        indices = indices.shuffle(len(table), seed=shuffle_seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=shuffle_seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip(indices, seeds.batch(2)).map(
            _training_example(table, input_hw, max_boxes, options, mosaic_enabled),
            num_parallel_calls=tf.data.AUTOTUNE,
            # Input order when a seed asks for reproducible batches (no measurable throughput
            # cost: benchmarks/bench_data.py), so it holds even where tf.data does not fuse
            # this map with the batch below (the fused kernel keeps the order anyway).
            deterministic=shuffle_seed is not None,
        )
    else:
        dataset = indices.map(
            _validation_example(table, input_hw, max_boxes),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if training and options.multi_scale > 0:
        # One size per batch, from its own seed stream (the elements' stream uses shuffle_seed).
        batch_seed = None if shuffle_seed is None else shuffle_seed + 1
        sizes = tf.data.Dataset.random(seed=batch_seed, rerandomize_each_iteration=True)
        dataset = tf.data.Dataset.zip(dataset, sizes.batch(2)).map(
            _multi_scale_batch(input_hw, options.multi_scale),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=shuffle_seed is not None,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _multi_scale_batch(input_hw: tuple[int, int], multi_scale: float):
    """The map that resizes a batch ``(images, boxes)`` to the size its seed draws."""

    def rescale(batch, seed):
        images, boxes = batch
        size_hw = random_batch_size(input_hw, multi_scale, SeedStream(seed))
        return rescale_batch(images, boxes, size_hw)

    return rescale
