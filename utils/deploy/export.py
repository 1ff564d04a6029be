"""Export a detector to SavedModel, TFLite (float32, float16 or int8 weights, or an int8 network)
and ONNX, and load it back.

Every format holds the whole inference path: uint8 RGB image in, letterbox, model, decode,
class-wise NMS, boxes in original-image pixels out. The outputs are always ``boxes [B, K, 4]``
(xyxy), ``scores [B, K]``, ``classes [B, K]`` int32 and ``counts [B]`` int32: the first
``counts[b]`` rows of image b are its detections, by falling score (``K = eval.max_detections``).

- ``saved_model`` is the :class:`Detector` graph itself, so it takes a batch of
  images of different sizes: ``images [B, H, W, 3]`` uint8 (each image in the top-left corner,
  see :func:`utils.deploy.detector.pad_batch`) and ``image_hw [B, 2]`` int32.
- ``tflite``, ``tflite_fp16``, ``tflite_dynamic``, ``tflite_int8`` and ``onnx`` take one image
  ``image [1, H, W, 3]`` uint8 of any size (TFLite: resize the input tensor per size). The
  Detector's graph does not convert as it is: its letterbox resamples with
  ``ScaleAndTranslate`` and its NMS is ``CombinedNonMaxSuppression``, neither of which TFLite
  has built in (they would need the Flex delegate, which the LiteRT runtime and most phones
  lack) and the first of which tf2onnx cannot convert. This graph computes the same thing from
  portable ops: ``utils.letterbox.letterbox_gather`` samples the same bilinear points with
  gathers, and :func:`classwise_nms` runs one ``NonMaxSuppressionV5`` per class. Every op is a
  TFLite builtin, so the files run on the plain LiteRT interpreter. A TFLite file has no
  signature: its outputs come in the order of ``OUTPUT_NAMES``; ONNX and SavedModel name them.

``tflite_int8`` computes the network in int8 and everything around it in float; see
:func:`export_tflite_int8` for how it is calibrated and which layers stay float.

:func:`load_exported` runs any export on one image, for tests, benchmarks and scripts.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from utils.config import Config
from utils.data.formats import load_config_split
from utils.data.pipeline import decode_image
from utils.deploy.detector import DETECTOR_SIGNATURE, Detector, pad_batch
from utils.eval.metrics import ImageDetections
from utils.letterbox import letterbox_correction, letterbox_gather

# Format -> file (or folder) name written under the output folder.
FORMATS = {
    "saved_model": "saved_model",
    "tflite": "model.tflite",
    "tflite_fp16": "model_fp16.tflite",
    "tflite_dynamic": "model_dynamic.tflite",
    "tflite_int8": "model_int8.tflite",
    "onnx": "model.onnx",
}
OUTPUT_NAMES = ("boxes", "scores", "classes", "counts")
IMAGE_SIGNATURE = tf.TensorSpec([1, None, None, 3], tf.uint8, name="image")
# ONNX opset 17 is supported by every onnxruntime release since 1.12.
ONNX_OPSET = 17

# INT8 export keeps a head's output conv in float when the RMS error of its int8 output exceeds
# this fraction of the float output's standard deviation (see export_tflite_int8).
HEAD_ERROR_LIMIT = 0.05
# ... and only if that leaves less than this fraction of its int8 error.
HEAD_KEEP_FLOAT_GAIN = 0.75
# Calibration images the per-head errors are measured on.
CHECK_IMAGES = 8

# Smallest box side the portable NMS sees, as a fraction of the input (see classwise_nms).
_MIN_NMS_SIZE = 1e-6

logger = logging.getLogger(__name__)

ExportedDetector = Callable[[np.ndarray], ImageDetections]
TFFunction = tf.types.experimental.PolymorphicFunction


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
        boxes, scores = spec.decode(outputs)
        boxes, scores, classes, count = classwise_nms(
            boxes[0],
            scores[0],
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


def _tflite_converter(detector: Detector, portable: TFFunction | None) -> tf.lite.TFLiteConverter:
    """A converter of the portable graph to builtin ops only, outputs in ``OUTPUT_NAMES`` order."""
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
    return converter


def export_tflite(
    detector: Detector, path: Path, *, weights: str, portable: TFFunction | None = None
) -> None:
    """The portable graph as a TFLite flatbuffer of builtin ops only.

    ``weights``: ``float32``; ``float16`` (half the file; CPU kernels compute in float32); or
    ``dynamic`` (int8 weights, a quarter of the file; convolutions quantize their float inputs
    on the fly). ``portable`` is ``single_image_function(detector)`` when the caller has it.
    """
    converter = _tflite_converter(detector, portable)
    if weights != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if weights == "float16":
        converter.target_spec.supported_types = [tf.float16]
    path.write_bytes(converter.convert())


@dataclass(frozen=True)
class Int8Choice:
    """What INT8 export kept in float and why: the RMS error of each head's raw output as a
    fraction of the float output's standard deviation, on ``check_images`` calibration images,
    all in int8 (``errors``); the heads above ``HEAD_ERROR_LIMIT`` (``tried``) in float; those
    kept float because that cut their error (``float_heads``); the errors of the file written
    (``final_errors``)."""

    calibration_images: int
    check_images: int
    errors: dict[str, float]
    tried: list[str]
    float_heads: list[str]
    final_errors: dict[str, float]

    def describe(self) -> str:
        def listed(errors: dict[str, float]) -> str:
            return ", ".join(f"{head} {err:.3f}" for head, err in errors.items())

        text = (
            f"network in int8, calibrated on {self.calibration_images} training images; float "
            "by design: letterbox, decode, NMS; head output error (RMS / std of float, "
            f"{self.check_images} images): {listed(self.errors)}; tried in float (error > "
            f"{HEAD_ERROR_LIMIT}): {', '.join(self.tried) or 'none'}; head convs kept float "
            f"(error cut below {HEAD_KEEP_FLOAT_GAIN:g}x): {', '.join(self.float_heads) or 'none'}"
        )
        return text + (f" (errors now {listed(self.final_errors)})" if self.float_heads else "")


def _head_tensors(
    names: Sequence[str], heads: Sequence[str], *, branches: bool = False
) -> dict[str, list[int]]:
    """Indices of each head's tensors among the TFLite tensor ``names`` (fused op names join
    their TensorFlow names with ';'; Keras adds ``_1`` to layer scopes): its output (the output
    conv, or the concatenation of an anchor-free head's branches), and with ``branches`` also
    the box and class convs that concatenation joins. The output is the last index listed."""
    layer = r"(_box|_cls)?" if branches else ""
    found: dict[str, list[int]] = {head: [] for head in heads}
    for index, name in enumerate(names):
        for head in heads:
            pattern = rf"(.*/)?{re.escape(head)}{layer}(_\d+)?/(BiasAdd|concat)"
            if any(re.fullmatch(pattern, part) for part in name.split(";")):
                found[head].append(index)
    missing = [head for head, indices in found.items() if not indices]
    if missing:
        raise ValueError(f"int8 export: no output conv found for {', '.join(missing)}")
    return found


def _head_errors(
    model: bytes,
    heads: Sequence[str],
    images: Sequence[np.ndarray],
    reference: Sequence[Sequence[np.ndarray]],
) -> dict[str, float]:
    """RMS error of each head's raw output in the TFLite ``model`` against ``reference`` (the
    float model's outputs per image), as a fraction of the reference's standard deviation."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, experimental_preserve_all_tensors=True)
    details = interpreter.get_tensor_details()
    index = _head_tensors([d["name"] for d in details], heads)
    (image_input,) = interpreter.get_input_details()
    errors: dict[str, list[np.ndarray]] = {head: [] for head in heads}
    for image, outputs in zip(images, reference, strict=True):
        interpreter.resize_tensor_input(image_input["index"], [1, *image.shape])
        interpreter.allocate_tensors()
        interpreter.set_tensor(image_input["index"], np.ascontiguousarray(image[None]))
        interpreter.invoke()
        for head, want in zip(heads, outputs, strict=True):
            got = interpreter.get_tensor(index[head][-1]).astype(np.float32)
            scale, zero_point = details[index[head][-1]]["quantization"]
            if scale:  # an int8 tensor
                got = (got - zero_point) * scale
            errors[head].append((got - want).ravel())
    return {
        head: float(
            np.sqrt(np.mean(np.concatenate(errors[head]) ** 2))
            / np.std(np.concatenate([np.ravel(r[i]) for r in reference]))
        )
        for i, head in enumerate(heads)
    }


def _network_statistics_only(calibrated: bytes, network: str) -> tuple[dict[str, bool], bytes]:
    """Each tensor name of a calibrated TFLite model -> whether the Keras model ``network``
    computes it, and the model with the calibration ranges of all other tensors removed.

    Denylisting the ops around the network keeps them float, but the quantizer still rounds
    their outputs to int8 and back wherever a range was recorded (scores and boxes included);
    without a range it cannot.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(calibrated)
    inside = re.compile(rf"{re.escape(network)}(_\d+)?/")  # Keras 3 scopes the layers "yolo_1/"
    names = {}
    for tensor in model.subgraphs[0].tensors:
        name = tensor.name.decode()
        names[name] = bool(inside.match(name))
        if not names[name]:
            tensor.quantization = None
    return names, bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def export_tflite_int8(
    detector: Detector,
    path: Path,
    calibration: Sequence[np.ndarray],
    *,
    portable: TFFunction | None = None,
) -> Int8Choice:
    """The portable graph as a TFLite file whose network computes in int8.

    Post-training full-integer quantization, calibrated on ``calibration`` (RGB uint8 images of
    any size, fed through the graph's own letterbox). The input stays the uint8 image. All ops
    outside the Keras model (letterbox, decode, NMS) stay float. Each head's output conv whose
    int8 raw output errs by more than ``HEAD_ERROR_LIMIT`` against the Keras model on the first
    ``CHECK_IMAGES`` calibration images is tried in float, and stays float if that cuts its
    error below ``HEAD_KEEP_FLOAT_GAIN`` times. Logs and returns what was measured and chosen.
    """
    if not calibration:
        raise ValueError("tflite_int8 needs calibration images (--calib-images at least 1)")
    converter = _tflite_converter(detector, portable)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    # int8 kernels where TFLite has them; ops without one (the NMS) run in float.
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]
    # Calibrates once; each change of its options quantizes the calibrated model again.
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter)
    names, debugger.calibrated_model = _network_statistics_only(
        debugger.calibrated_model, detector.model.name
    )
    outside = [name for name, inside in names.items() if not inside]

    def quantize(denylist: list[str]) -> bytes:
        debugger.options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_nodes=denylist
        )
        return debugger.get_nondebug_quantized_model()

    heads = list(detector.model.output_names)
    check = list(calibration[:CHECK_IMAGES])
    hw = detector.spec.input_hw
    reference = [
        [np.asarray(o) for o in detector.model(letterbox_gather(image, hw)[None], training=False)]
        for image in check
    ]
    tensors = list(names)

    def with_float(float_heads: list[str]) -> tuple[bytes, dict[str, float]]:
        index = _head_tensors(tensors, float_heads, branches=True) if float_heads else {}
        model = quantize(outside + [tensors[i] for indices in index.values() for i in indices])
        return model, _head_errors(model, heads, check, reference)

    model, errors = with_float([])
    tried = [head for head in heads if errors[head] > HEAD_ERROR_LIMIT]
    final_errors, float_heads = errors, []
    if tried:
        float_model, float_errors = with_float(tried)
        # A float head conv only helps when its own int8 output was the loss; error carried in
        # from the int8 layers before it stays, and then the head stays int8 too.
        float_heads = [h for h in tried if float_errors[h] < HEAD_KEEP_FLOAT_GAIN * errors[h]]
        if float_heads == tried:
            model, final_errors = float_model, float_errors
        elif float_heads:
            model, final_errors = with_float(float_heads)
    path.write_bytes(model)
    choice = Int8Choice(len(calibration), len(check), errors, tried, float_heads, final_errors)
    logger.info("%s: %s", path.name, choice.describe())
    return choice


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


# TFLite weights of each TFLite format but the int8 one (see export_tflite).
_TFLITE_WEIGHTS = {"tflite": "float32", "tflite_fp16": "float16", "tflite_dynamic": "dynamic"}


def export(
    detector: Detector,
    formats: Sequence[str],
    out_dir: Path,
    *,
    calibration: Sequence[np.ndarray] = (),
) -> dict[str, Path]:
    """Writes ``detector`` in each of ``formats`` (keys of ``FORMATS``) under ``out_dir``;
    ``tflite_int8`` calibrates on ``calibration`` (see :func:`calibration_images`).

    Returns each format's file (the folder, for a SavedModel). Bad formats are reported (see
    :func:`check_formats`) before anything slow starts.
    """
    check_formats(formats)
    if "tflite_int8" in formats and not calibration:
        raise ValueError("tflite_int8 needs calibration images (--calib-images at least 1)")
    out_dir.mkdir(parents=True, exist_ok=True)
    portable = single_image_function(detector)  # traced once, on first use, for every format
    written = {}
    for fmt in dict.fromkeys(formats):
        path = out_dir / FORMATS[fmt]
        if fmt == "saved_model":
            export_saved_model(detector, path)
        elif fmt == "onnx":
            export_onnx(detector, path, portable=portable)
        elif fmt == "tflite_int8":
            export_tflite_int8(detector, path, calibration, portable=portable)
        else:
            export_tflite(detector, path, weights=_TFLITE_WEIGHTS[fmt], portable=portable)
        written[fmt] = path
    return written


def size_mib(path: Path) -> float:
    """Size of an export in MiB: the file, or every file under a SavedModel folder."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 2**20


def calibration_images(cfg: Config, count: int) -> list[np.ndarray]:
    """Up to ``count`` images of the config's training split, spread evenly over it, as RGB
    uint8: the representative dataset of ``tflite_int8``."""
    samples = load_config_split(cfg, cfg.data.train_split, key="data.train_split")
    picked = np.linspace(0, len(samples) - 1, min(count, len(samples))).round().astype(int)
    return [decode_image(str(samples[i].image_path)).numpy() for i in picked]


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
