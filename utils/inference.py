"""From raw heads to detections: decode, score, class-wise NMS, back to original-image pixels."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from utils.boxes import decode_outputs, letterbox_correction, non_max_suppression
from utils.config import Config
from utils.config import anchors as config_anchors
from utils.metrics import ImageDetections


@dataclass(frozen=True)
class DecodeSpec:
    """What decoding needs to know about the model (all from the config)."""

    anchors: np.ndarray  # [9, 2] (w, h) input pixels
    anchors_mask: list[list[int]]
    num_classes: int
    input_hw: tuple[int, int]
    assign: str

    @classmethod
    def from_config(cls, cfg: Config, num_classes: int) -> DecodeSpec:
        return cls(
            anchors=np.asarray(config_anchors(cfg), np.float32),
            anchors_mask=[list(m) for m in cfg.model.anchors_mask],
            num_classes=num_classes,
            input_hw=(cfg.model.input_size[0], cfg.model.input_size[1]),
            assign=cfg.loss.assign,
        )


def postprocess(
    outputs: Sequence[tf.Tensor],
    image_hw: tf.Tensor,
    spec: DecodeSpec,
    *,
    score_threshold: float,
    nms_iou: float,
    max_detections: int,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Raw heads of letterboxed images -> (boxes [B,K,4] xyxy original pixels, scores, classes, valid).

    ``image_hw`` [B, 2] holds each original image's (height, width). Score = objectness x class
    probability.
    """
    boxes, objectness, class_probs = decode_outputs(
        outputs, spec.anchors, spec.anchors_mask, spec.num_classes, spec.input_hw, spec.assign
    )
    scores = objectness[..., None] * class_probs
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
