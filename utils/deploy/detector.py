"""From images to detections: letterbox, model, decode, class-wise NMS, back to original pixels.

Two entry points share the decoding:

- :func:`make_batch_detector` takes images already letterboxed by the tf.data pipeline (the
  training-time mAP uses it);
- :class:`Detector` takes raw uint8 images of any sizes and letterboxes them in its own graph, so
  one ``tf.function`` with a fixed signature does the whole path. ``predict.py``, ``get_map.py``
  and export use it; ``utils.deploy.runs.load_run`` builds one from a run folder.

Both run the model with each BatchNorm folded into the conv before it (``nets.fold``): the
Detector folds a copy of the model it is given, and the training-time mAP passes the copy that a
:class:`~nets.fold.BatchNormFolding` refreshes before each evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from nets.fold import fold_batch_norms
from utils.boxes import (
    decode_anchor_free,
    decode_level,
    decode_outputs,
    non_max_suppression,
)
from utils.config import Config
from utils.config import anchors as config_anchors
from utils.data.pipeline import decode_image
from utils.eval.metrics import ImageDetections
from utils.letterbox import letterbox_batch, letterbox_correction


@dataclass(frozen=True)
class DecodeSpec:
    """What decoding needs to know about the model (all from the config).

    ``head`` picks the decoding: ``anchor_based`` uses ``anchors``, ``anchors_mask`` and
    ``assign``; ``anchor_free`` uses ``reg_max`` (``anchors`` is then empty).
    """

    head: str
    anchors: np.ndarray  # [9, 2] (w, h) input pixels
    anchors_mask: list[list[int]]
    num_classes: int
    input_hw: tuple[int, int]
    assign: str
    reg_max: int

    @classmethod
    def from_config(cls, cfg: Config, num_classes: int) -> DecodeSpec:
        anchor_based = cfg.model.head == "anchor_based"
        return cls(
            head=cfg.model.head,
            anchors=np.asarray(config_anchors(cfg) if anchor_based else [], np.float32),
            anchors_mask=[list(m) for m in cfg.model.anchors_mask],
            num_classes=num_classes,
            input_hw=(cfg.model.input_size[0], cfg.model.input_size[1]),
            assign=cfg.loss.assign,
            reg_max=cfg.model.reg_max,
        )

    def decode(self, outputs: Sequence[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """Raw heads -> ``boxes [B, N, 4]`` xyxy normalised to the letterboxed input and
        per-class ``scores [B, N, C]`` (anchor-based: objectness x class probability;
        anchor-free: class probability)."""
        if self.head == "anchor_free":
            return decode_anchor_free(outputs, self.num_classes, self.reg_max, self.input_hw)
        boxes, objectness, class_probs = decode_outputs(
            outputs, self.anchors, self.anchors_mask, self.num_classes, self.input_hw, self.assign
        )
        return boxes, objectness[..., None] * class_probs

    def heat(self, outputs: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Per output ``[B, h, w]``: how strongly each cell sees an object (anchor-based: the
        highest objectness of its anchors; anchor-free: its highest class probability)."""
        maps = []
        if self.head == "anchor_free":
            for output in outputs:
                classes = tf.cast(output[..., 4 * self.reg_max :], tf.float32)
                maps.append(tf.reduce_max(tf.sigmoid(classes), axis=-1))
            return maps
        anchors = self.anchors.reshape(-1, 2)
        for output, mask in zip(outputs, self.anchors_mask, strict=True):
            _, obj, _ = decode_level(
                output, anchors[list(mask)], self.num_classes, self.input_hw, self.assign
            )
            maps.append(tf.reduce_max(tf.sigmoid(obj), axis=-1))
        return maps


def postprocess(
    outputs: Sequence[tf.Tensor],
    image_hw: tf.Tensor,
    spec: DecodeSpec,
    *,
    score_threshold: float,
    nms_iou: float,
    max_detections: int,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Raw heads of letterboxed images -> (boxes [B,K,4] xyxy original pixels, scores, classes,
    valid).

    ``image_hw`` [B, 2] holds each original image's (height, width); scores as in
    :meth:`DecodeSpec.decode`.
    """
    boxes, scores = spec.decode(outputs)
    boxes, scores, classes, valid = non_max_suppression(
        boxes,
        scores,
        max_per_class=max_detections,
        max_total=max_detections,
        iou_threshold=nms_iou,
        score_threshold=score_threshold,
    )
    return letterbox_correction(boxes, image_hw, spec.input_hw), scores, classes, valid


def make_batch_detector(
    model: keras.Model,
    spec: DecodeSpec,
    *,
    score_threshold: float,
    nms_iou: float,
    max_detections: int,
) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, ...]]:
    """A compiled ``(letterboxed images [B,H,W,3], image_hw [B,2]) -> detections`` function."""

    @tf.function(reduce_retracing=True)
    def detect(images: tf.Tensor, image_hw: tf.Tensor):
        outputs = model(images, training=False)
        return postprocess(
            outputs,
            image_hw,
            spec,
            score_threshold=score_threshold,
            nms_iou=nms_iou,
            max_detections=max_detections,
        )

    return detect


def detect_dataset(
    detect: Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, ...]],
    batches: Iterable,
    image_sizes: Sequence[tuple[int, int]],
) -> list[ImageDetections]:
    """Run ``detect`` over letterboxed batches whose images have the given (h, w), in order."""
    results: list[ImageDetections] = []
    for batch in batches:
        images = batch[0] if isinstance(batch, tuple | list) else batch
        count = int(images.shape[0])
        hw = np.asarray(image_sizes[len(results) : len(results) + count], np.float32)
        boxes, scores, classes, valid = (t.numpy() for t in detect(images, tf.constant(hw)))
        for i in range(count):
            n = int(valid[i])
            results.append(ImageDetections(boxes[i, :n], scores[i, :n], classes[i, :n]))
    if len(results) != len(image_sizes):
        raise ValueError(f"dataset gave {len(results)} images, expected {len(image_sizes)}")
    return results


# --------------------------------------------------------------------------------------------
# The whole path in one graph: raw images of any sizes -> detections in original pixels
# --------------------------------------------------------------------------------------------

# A batch of images of any sizes: each image sits in the top-left corner of a shared canvas
# (see :func:`pad_batch`) and ``image_hw`` holds its own size.
DETECTOR_SIGNATURE = (
    tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
    tf.TensorSpec([None, 2], tf.int32, name="image_hw"),
)


def score_heatmap(outputs: Sequence[tf.Tensor], spec: DecodeSpec) -> tf.Tensor:
    """``[B, H, W]`` at input resolution: per pixel the highest cell score of any scale (see
    :meth:`DecodeSpec.heat`; each scale's grid resized bilinearly to the input)."""
    maps = [
        tf.image.resize(heat[..., None], spec.input_hw, method="bilinear")[..., 0]
        for heat in spec.heat(outputs)
    ]
    return tf.reduce_max(tf.stack(maps, axis=0), axis=0)


def pad_batch(images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 images ``[h_i, w_i, 3]`` -> (canvas ``[B, max h, max w, 3]``, sizes ``[B, 2]``)."""
    if not images:
        raise ValueError("pad_batch needs at least one image")
    sizes = np.array([image.shape[:2] for image in images], np.int32)
    canvas = np.zeros((len(images), *sizes.max(axis=0), 3), np.uint8)
    for i, image in enumerate(images):
        canvas[i, : image.shape[0], : image.shape[1]] = image
    return canvas, sizes


class Detector(tf.Module):
    """Raw images -> detections: letterbox, model, decode, class-wise NMS, letterbox correction.

    Calling it runs one graph with the signature ``DETECTOR_SIGNATURE``: ``images`` uint8
    ``[B, H, W, 3]`` RGB (each image top-left, see :func:`pad_batch`) and ``image_hw`` int32
    ``[B, 2]``. It returns ``boxes [B, K, 4]`` xyxy in each image's own pixels (clipped to it),
    ``scores [B, K]``, ``classes [B, K]`` int32 and ``valid [B]`` int32 (the first ``valid[b]``
    rows of image b are detections, by falling score), with ``K = max_detections``.

    Args:
        model: the YOLO model (``nets.yolo.build_model``), weights loaded.
        spec: its decoding parameters.
        score_threshold: scores (see :meth:`DecodeSpec.decode`) below this are dropped.
        nms_iou: class-wise NMS IoU threshold.
        max_detections: K, boxes kept per image.
        fold: run a copy of ``model`` with its BatchNorms folded into the convs (its weights as
            they are now; ``self.model`` is that copy); False runs ``model`` itself, e.g. a
            plain function of the images.
    """

    def __init__(
        self,
        model: keras.Model,
        spec: DecodeSpec,
        *,
        score_threshold: float,
        nms_iou: float,
        max_detections: int,
        fold: bool = True,
    ) -> None:
        super().__init__(name="detector")
        self.model = fold_batch_norms(model) if fold else model
        self.spec = spec
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self.max_detections = int(max_detections)

    @tf.function(input_signature=DETECTOR_SIGNATURE)
    def __call__(self, images: tf.Tensor, image_hw: tf.Tensor):
        outputs = self.model(letterbox_batch(images, image_hw, self.spec.input_hw), training=False)
        return postprocess(
            outputs,
            image_hw,
            self.spec,
            score_threshold=self.score_threshold,
            nms_iou=self.nms_iou,
            max_detections=self.max_detections,
        )

    @tf.function(input_signature=DETECTOR_SIGNATURE)
    def heatmap(self, images: tf.Tensor, image_hw: tf.Tensor) -> tf.Tensor:
        """Object heat ``[B, H, W]`` on the letterboxed input (see :func:`score_heatmap`)."""
        outputs = self.model(letterbox_batch(images, image_hw, self.spec.input_hw), training=False)
        return score_heatmap(outputs, self.spec)

    def detect(self, images: Sequence[np.ndarray]) -> list[ImageDetections]:
        """Detections of RGB uint8 images of any sizes, as numpy, one entry per image."""
        canvas, sizes = pad_batch(images)
        return _split(self(tf.constant(canvas), tf.constant(sizes)))

    def detect_files(
        self, paths: Sequence[Path | str], batch_size: int
    ) -> Iterator[ImageDetections]:
        """Detections of image files, in order, read and decoded in parallel by tf.data.

        Decoding is the training pipeline's ``decode_image``, so boxes line up with
        VOC annotations exactly as they do during training.
        """
        if not paths:
            return
        dataset = (
            tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
            .map(_decode_with_size, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .padded_batch(batch_size, padding_values=(tf.constant(0, tf.uint8), 0))
            .prefetch(tf.data.AUTOTUNE)
        )
        for images, sizes in dataset:
            yield from _split(self(images, sizes))


def _decode_with_size(path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    image = decode_image(path)
    return image, tf.shape(image)[:2]


def _split(outputs: tuple[tf.Tensor, ...]) -> list[ImageDetections]:
    boxes, scores, classes, valid = (t.numpy() for t in outputs)
    return [
        ImageDetections(boxes[i, :n], scores[i, :n], classes[i, :n])
        for i, n in enumerate(valid.astype(int))
    ]

