"""From images to detections: letterbox, model, decode, class-wise NMS, back to original pixels.

Two entry points share the decoding:

- :func:`make_batch_detector` takes images already letterboxed by the tf.data pipeline (the
  training-time mAP uses it);
- :class:`Detector` takes raw uint8 images of any sizes and letterboxes them in its own graph, so
  one ``tf.function`` with a fixed signature does the whole path. ``predict.py``, ``get_map.py``
  and export use it; :func:`load_run` builds one from a run folder.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from utils.boxes import decode_level, decode_outputs, letterbox_correction, non_max_suppression
from utils.config import Config, class_names, load_config
from utils.config import anchors as config_anchors
from utils.data.augment import letterbox_image
from utils.data.pipeline import decode_image
from utils.eval.metrics import ImageDetections

logger = logging.getLogger(__name__)

# Weights looked up in a run folder, in order of preference.
WEIGHT_FILES = ("best.weights.h5", "last.weights.h5")
TRAIN_HINT = "train one first: python train.py --config configs/demo.yaml"


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
    """Raw heads of letterboxed images -> (boxes [B,K,4] xyxy original pixels, scores, classes,
    valid).

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


# --------------------------------------------------------------------------------------------
# The whole path in one graph: raw images of any sizes -> detections in original pixels
# --------------------------------------------------------------------------------------------

# A batch of images of any sizes: each image sits in the top-left corner of a shared canvas
# (see :func:`pad_batch`) and ``image_hw`` holds its own size.
DETECTOR_SIGNATURE = (
    tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
    tf.TensorSpec([None, 2], tf.int32, name="image_hw"),
)


def letterbox_batch(images: tf.Tensor, image_hw: tf.Tensor, input_hw: Sequence[int]) -> tf.Tensor:
    """Letterboxes each image ``images[i, :h_i, :w_i]`` to ``input_hw``, in-graph.

    The same resampling as the validation pipeline (``utils.data.augment.letterbox_image``), so a
    detector fed raw images sees exactly the pixels the training-time evaluation sees.
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


def objectness_heatmap(outputs: Sequence[tf.Tensor], spec: DecodeSpec) -> tf.Tensor:
    """Objectness ``[B, H, W]`` at input resolution: per pixel the highest sigmoid objectness of
    any anchor at any scale (each scale's grid resized bilinearly to the input)."""
    anchors = spec.anchors.reshape(-1, 2)
    maps = []
    for output, mask in zip(outputs, spec.anchors_mask, strict=True):
        _, obj, _ = decode_level(output, anchors[list(mask)], spec.num_classes, spec.input_hw,
                                 spec.assign)
        best = tf.reduce_max(tf.sigmoid(obj), axis=-1, keepdims=True)  # [B, h, w, 1]
        maps.append(tf.image.resize(best, spec.input_hw, method="bilinear")[..., 0])
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
        score_threshold: objectness x class probability below this is dropped.
        nms_iou: class-wise NMS IoU threshold.
        max_detections: K, boxes kept per image.
    """

    def __init__(
        self,
        model: keras.Model,
        spec: DecodeSpec,
        *,
        score_threshold: float,
        nms_iou: float,
        max_detections: int,
    ) -> None:
        super().__init__(name="detector")
        self.model = model
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
        """Objectness ``[B, H, W]`` on the letterboxed input (see :func:`objectness_heatmap`)."""
        outputs = self.model(letterbox_batch(images, image_hw, self.spec.input_hw), training=False)
        return objectness_heatmap(outputs, self.spec)

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


# --------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------


class MissingWeightsError(FileNotFoundError):
    """A run folder without weights; the message says how to get some."""


@dataclass(frozen=True)
class LoadedRun:
    """A trained detector as a run folder describes it."""

    config: Config
    class_names: list[str]
    model: keras.Model
    weights: Path

    def detector(
        self,
        *,
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        for_map: bool = False,
    ) -> Detector:
        """A :class:`Detector` with the config's thresholds unless given: ``eval.score_threshold``
        (display) or, with ``for_map``, ``eval.map_score_threshold`` (scoring)."""
        ev = self.config.eval
        default = ev.map_score_threshold if for_map else ev.score_threshold
        return Detector(
            self.model,
            DecodeSpec.from_config(self.config, len(self.class_names)),
            score_threshold=default if score_threshold is None else score_threshold,
            nms_iou=ev.nms_iou if nms_iou is None else nms_iou,
            max_detections=ev.max_detections,
        )


def run_config(run_dir: Path | str, overrides: Sequence[str] = ()) -> Config:
    """The resolved ``config.yaml`` of a run folder, with ``key=value`` overrides applied."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {run_dir} a run folder made by train.py?")
    return load_config(path, list(overrides))


def find_weights(run_dir: Path | str) -> Path:
    """``weights/best.weights.h5`` of a run folder, else ``weights/last.weights.h5``."""
    folder = Path(run_dir) / "weights"
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise MissingWeightsError(
        f"no weights in {folder} ({' or '.join(WEIGHT_FILES)}); {TRAIN_HINT}, "
        "or pass --weights FILE"
    )


def load_run(
    run_dir: Path | str,
    *,
    weights: Path | str | None = None,
    overrides: Sequence[str] = (),
    config: Config | None = None,
) -> LoadedRun:
    """Builds the model of a run folder and loads its best weights (or ``weights``).

    ``config`` skips reading ``config.yaml`` again when the caller already has it.
    """
    cfg = config if config is not None else run_config(run_dir, overrides)
    if weights is None:
        path = find_weights(run_dir)
    else:
        path = Path(weights)
        if not path.is_file():
            raise MissingWeightsError(f"--weights {path}: file not found; {TRAIN_HINT}")
    from nets.yolo import build_model  # the nets import every backbone family: only when needed

    names = class_names(cfg)
    # The trained weights replace the backbone's anyway: never download ImageNet ones for that.
    model = build_model(dataclasses.replace(cfg.model, pretrained=None), len(names))
    try:
        model.load_weights(path)
    except ValueError as exc:
        raise ValueError(f"{path}: weights do not fit the run's model ({exc})") from None
    logger.info("loaded %s", path)
    return LoadedRun(cfg, names, model, path)
