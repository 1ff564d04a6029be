"""Export a detector to SavedModel, TFLite (float32 or float16 weights) and ONNX, and load it back.

Every format holds the whole inference path: uint8 RGB image in, letterbox, model, decode,
class-wise NMS, boxes in original-image pixels out. The outputs are always ``boxes [B, K, 4]``
(xyxy), ``scores [B, K]``, ``classes [B, K]`` int32 and ``counts [B]`` int32: the first
``counts[b]`` rows of image b are its detections, by falling score (``K = eval.max_detections``).

- ``saved_model`` is the :class:`Detector` graph itself, so it takes a batch of
  images of different sizes: ``images [B, H, W, 3]`` uint8 (each image in the top-left corner,
  see :func:`utils.deploy.detector.pad_batch`) and ``image_hw [B, 2]`` int32.
- ``tflite``, ``tflite_fp16`` and ``onnx`` take one image ``image [1, H, W, 3]`` uint8 of any
  size (TFLite: resize the input tensor per size). The Detector's graph does not convert as it
  is: its letterbox resamples with ``ScaleAndTranslate`` and its NMS is
  ``CombinedNonMaxSuppression``, neither of which TFLite has built in (they would need the Flex
  delegate, which the LiteRT runtime and most phones lack) and the first of which tf2onnx cannot
  convert. This graph computes the same thing from portable ops: :func:`letterbox_gather`
  samples the same bilinear points with gathers, and :func:`classwise_nms` runs one
  ``NonMaxSuppressionV5`` per class. Every op is a TFLite builtin, so the files run on the plain
  LiteRT interpreter. A TFLite file has no signature: its outputs come in the order of
  ``OUTPUT_NAMES``; ONNX and SavedModel name them.

:func:`load_exported` runs any export on one image, for tests, benchmarks and scripts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from utils.boxes import decode_outputs, letterbox_correction
from utils.data.augment import PAD_VALUE
from utils.deploy.detector import DETECTOR_SIGNATURE, Detector, pad_batch
from utils.eval.metrics import ImageDetections

# Format -> file (or folder) name written under the output folder.
FORMATS = {
    "saved_model": "saved_model",
    "tflite": "model.tflite",
    "tflite_fp16": "model_fp16.tflite",
    "onnx": "model.onnx",
}
OUTPUT_NAMES = ("boxes", "scores", "classes", "counts")
IMAGE_SIGNATURE = tf.TensorSpec([1, None, None, 3], tf.uint8, name="image")
# ONNX opset 17 is supported by every onnxruntime release since 1.12.
ONNX_OPSET = 17

# Smallest box side the portable NMS sees, as a fraction of the input (see classwise_nms).
_MIN_NMS_SIZE = 1e-6

ExportedDetector = Callable[[np.ndarray], ImageDetections]
TFFunction = tf.types.experimental.PolymorphicFunction


def letterbox_gather(image: tf.Tensor, input_hw: Sequence[int]) -> tf.Tensor:
    """One uint8 image ``[h, w, 3]`` letterboxed to float32 ``[H, W, 3]`` in 0..1, portably.

    The same pixels as ``utils.data.augment.letterbox_image``: its ``ScaleAndTranslate`` with a
    triangle kernel and no antialiasing is bilinear sampling at ``(p - offset + 0.5) / scale - 0.5``
    with the border pixel repeated, which two gathers and two blends compute (to float32
    rounding: within 1e-4).
    """
    height, width = int(input_hw[0]), int(input_hw[1])
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.minimum(height / size[0], width / size[1])
    placed = tf.round(size * scale)
    offset = tf.floor((tf.constant([height, width], tf.float32) - placed) / 2.0)

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


def classwise_nms(
    boxes: tf.Tensor,
    scores: tf.Tensor,
    *,
    max_detections: int,
    iou_threshold: float,
    score_threshold: float,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Class-wise NMS of one image with one ``NonMaxSuppressionV5`` per class.

    Gives what ``utils.boxes.non_max_suppression`` gives (``CombinedNonMaxSuppression`` with K
    per class and K in all): each class keeps its own NMS survivors, and the K best of all
    classes are returned by falling score. Ties may come out in another order.

    Args:
        boxes: ``[N, 4]`` xyxy normalised to the network input, shared by every class.
        scores: ``[N, C]``; C must be static (one NMS op per class is unrolled).

    Returns:
        ``boxes [K, 4]``, ``scores [K]``, ``classes [K]`` int32 and ``count`` int32; rows from
        ``count`` on are zero.
    """
    k = int(max_detections)
    rank = tf.range(k)
    # TFLite's NMS kernel returns the best box again and again once any box has zero area (an
    # exp(tw) too small to move x2 off x1 in float32). The NMS sees such boxes widened by a
    # millionth of the input, which changes no IoU that matters; the outputs keep them as they are.
    corner = boxes[:, :2]
    nms_boxes = tf.concat([corner, tf.maximum(boxes[:, 2:], corner + _MIN_NMS_SIZE)], axis=1)
    picked, picked_scores, found = [], [], []
    for c in range(scores.shape[-1]):
        index, score, count = tf.raw_ops.NonMaxSuppressionV5(
            boxes=nms_boxes,
            scores=scores[:, c],
            max_output_size=k,
            iou_threshold=float(iou_threshold),
            score_threshold=float(score_threshold),
            soft_nms_sigma=0.0,
            pad_to_max_output_size=True,
        )
        picked.append(index)
        picked_scores.append(tf.where(rank < count, score, -1.0))  # padding sorts last
        found.append(count)
    best, order = tf.math.top_k(tf.concat(picked_scores, 0), k)
    count = tf.minimum(tf.reduce_sum(tf.stack(found)), k)  # AddN of int32 is not valid ONNX
    valid = rank < count
    chosen = tf.gather(boxes, tf.gather(tf.concat(picked, 0), order))
    return (
        tf.where(valid[:, None], chosen, 0.0),
        tf.where(valid, best, 0.0),
        tf.where(valid, order // k, 0),  # class c's candidates sit at [c * k, (c + 1) * k)
        count,
    )


def single_image_function(detector: Detector) -> TFFunction:
    """The portable graph of ``detector`` (its model, decoding and thresholds) for one image:
    ``image [1, H, W, 3]`` uint8 -> the outputs named in ``OUTPUT_NAMES``."""
    spec = detector.spec

    @tf.function(input_signature=[IMAGE_SIGNATURE])
    def detect(image: tf.Tensor) -> dict[str, tf.Tensor]:
        outputs = detector.model(letterbox_gather(image[0], spec.input_hw)[None], training=False)
        boxes, objectness, class_probs = decode_outputs(
            outputs, spec.anchors, spec.anchors_mask, spec.num_classes, spec.input_hw, spec.assign
        )
        boxes, scores, classes, count = classwise_nms(
            boxes[0],
            objectness[0, :, None] * class_probs[0],
            max_detections=detector.max_detections,
            iou_threshold=detector.nms_iou,
            score_threshold=detector.score_threshold,
        )
        # A batch of one: tf2onnx mistranslates letterbox_correction's slices for a single [2]
        # size (an ellipsis over no axes).
        boxes = letterbox_correction(boxes[None], tf.shape(image)[None, 1:3], spec.input_hw)
        outputs = (boxes, scores[None], classes[None], count[None])
        return dict(zip(OUTPUT_NAMES, outputs, strict=True))

    return detect


def export_saved_model(detector: Detector, path: Path) -> None:
    """The Detector's graph as a SavedModel whose ``serving_default`` names its outputs."""

    @tf.function(input_signature=DETECTOR_SIGNATURE)
    def serve(images: tf.Tensor, image_hw: tf.Tensor) -> dict[str, tf.Tensor]:
        return dict(zip(OUTPUT_NAMES, detector(images, image_hw), strict=True))

    # Only the variables and the signature: saving the Keras layer objects as well would double
    # the time to save and to load, for Python-side objects a deployment never calls.
    module = tf.Module()
    module.weights = list(detector.model.weights)
    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})


def export_tflite(
    detector: Detector, path: Path, *, fp16: bool, portable: TFFunction | None = None
) -> None:
    """The portable graph as a TFLite flatbuffer of builtin ops only; ``fp16`` stores the
    weights as float16 (half the file; CPU kernels compute in float32).

    ``portable`` is ``single_image_function(detector)`` when the caller already has it.
    """
    portable = portable or single_image_function(detector)

    # Converted from a frozen graph the file has no signature to name its outputs: they come in
    # the order of OUTPUT_NAMES.
    @tf.function(input_signature=[IMAGE_SIGNATURE])
    def ordered(image: tf.Tensor) -> tuple[tf.Tensor, ...]:
        outputs = portable(image)
        return tuple(outputs[name] for name in OUTPUT_NAMES)

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [ordered.get_concrete_function()], detector.model
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    # Freeze the weights into the graph first: the default route through a temporary SavedModel
    # leaves Keras 3 weights as resource variables that arrive uninitialised (every output NaN)
    # and takes several times longer.
    converter.experimental_lower_to_saved_model = False
    if fp16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    path.write_bytes(converter.convert())


def _tf2onnx():
    try:
        import tf2onnx
    except ImportError:
        raise ImportError("ONNX export needs tf2onnx: pip install tf2onnx onnxruntime") from None
    return tf2onnx


def export_onnx(detector: Detector, path: Path, *, portable: TFFunction | None = None) -> None:
    """The portable graph as ONNX (opset ``ONNX_OPSET``) through tf2onnx, an optional
    dependency; inputs and outputs keep their names. ``portable`` as in :func:`export_tflite`."""
    _tf2onnx().convert.from_function(
        portable or single_image_function(detector),
        input_signature=[IMAGE_SIGNATURE],
        opset=ONNX_OPSET,
        output_path=str(path),
    )


def check_formats(formats: Sequence[str]) -> None:
    """ValueError for a format not in ``FORMATS``, ImportError for ``onnx`` without tf2onnx."""
    unknown = [fmt for fmt in formats if fmt not in FORMATS]
    if unknown:
        raise ValueError(
            f"unknown export format {', '.join(unknown)}; choose from {', '.join(FORMATS)}"
        )
    if "onnx" in formats:
        _tf2onnx()


def export(detector: Detector, formats: Sequence[str], out_dir: Path) -> dict[str, Path]:
    """Writes ``detector`` in each of ``formats`` (keys of ``FORMATS``) under ``out_dir``.

    Returns each format's file (the folder, for a SavedModel). Bad formats are reported (see
    :func:`check_formats`) before anything slow starts.
    """
    check_formats(formats)
    out_dir.mkdir(parents=True, exist_ok=True)
    portable = single_image_function(detector)  # traced once, on first use, for every format
    written = {}
    for fmt in dict.fromkeys(formats):
        path = out_dir / FORMATS[fmt]
        if fmt == "saved_model":
            export_saved_model(detector, path)
        elif fmt == "onnx":
            export_onnx(detector, path, portable=portable)
        else:
            export_tflite(detector, path, fp16=fmt == "tflite_fp16", portable=portable)
        written[fmt] = path
    return written


# --------------------------------------------------------------------------------------------
# Loading an export back: one RGB uint8 image -> ImageDetections
# --------------------------------------------------------------------------------------------


def _first_image(outputs: dict[str, np.ndarray]) -> ImageDetections:
    n = int(np.asarray(outputs["counts"])[0])
    boxes, scores, classes = (np.asarray(outputs[name])[0, :n] for name in OUTPUT_NAMES[:3])
    return ImageDetections(boxes, scores, classes)


def _load_saved_model(path: Path) -> ExportedDetector:
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]

    def detect(image: np.ndarray) -> ImageDetections:
        canvas, sizes = pad_batch([image])
        outputs = serve(images=tf.constant(canvas), image_hw=tf.constant(sizes))
        return _first_image({name: t.numpy() for name, t in outputs.items()})

    return detect


def _load_tflite(path: Path) -> ExportedDetector:
    from ai_edge_litert.interpreter import Interpreter

    # All cores, as TensorFlow and ONNX Runtime use by default.
    interpreter = Interpreter(model_path=str(path), num_threads=os.cpu_count())
    (image_input,) = interpreter.get_input_details()
    outputs = interpreter.get_output_details()

    allocated = None  # the input shape the tensors are allocated for: re-allocate on a change

    def detect(image: np.ndarray) -> ImageDetections:
        nonlocal allocated
        batch = np.ascontiguousarray(image[None], np.uint8)
        if batch.shape != allocated:
            interpreter.resize_tensor_input(image_input["index"], batch.shape)
            interpreter.allocate_tensors()
            allocated = batch.shape
        interpreter.set_tensor(image_input["index"], batch)
        interpreter.invoke()
        values = [interpreter.get_tensor(output["index"]) for output in outputs]
        return _first_image(dict(zip(OUTPUT_NAMES, values, strict=True)))

    return detect


def _load_onnx(path: Path) -> ExportedDetector:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]

    def detect(image: np.ndarray) -> ImageDetections:
        values = session.run(None, {IMAGE_SIGNATURE.name: image[None].astype(np.uint8)})
        return _first_image(dict(zip(names, values, strict=True)))

    return detect


def load_exported(path: Path) -> ExportedDetector:
    """An exported model (any format of ``FORMATS``) as ``detect(rgb_uint8_image)``."""
    if path.is_dir():
        return _load_saved_model(path)
    if path.suffix == ".tflite":
        return _load_tflite(path)
    if path.suffix == ".onnx":
        return _load_onnx(path)
    raise ValueError(f"{path}: not an export (a SavedModel folder, .tflite or .onnx file)")
