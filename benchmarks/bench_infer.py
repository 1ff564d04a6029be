"""Inference speed: the whole predict path against the bare model forward pass, side by side.

(a) forward: the model alone on an already letterboxed float batch (compiled ``tf.function``);
(b) full:    what predict.py does per image: read the JPEG (OpenCV), letterbox in-graph, model,
             decode, class-wise NMS, letterbox correction, back to numpy, draw boxes and labels.

Both are timed in alternation (one (a) batch, one (b) batch, ...) so that a busy machine slows
them alike, and the median batch is reported as ms/image. The model runs as predict.py runs it,
with its BatchNorms folded into the convs; a second table times the forward and the detector
(letterbox to NMS) with and without folding, round-robin. A third table times the exported
detector (``predict.py --mode export``) loaded back: SavedModel, TFLite (float32 and float16
weights, LiteRT interpreter) and ONNX Runtime, one decoded image per call, each against the bare
forward at batch 1 timed in the same rounds. A fourth times get_map's scoring (VOC AP + COCO
through pycocotools) on synthetic detections.

The model has its initial (untrained) weights: speed does not depend on them, except that NMS
sees fewer candidate boxes above the display threshold than with a trained model.

Example:
    python benchmarks/bench_infer.py                          # MobileNetV1-YOLOv4 at 416, b1 & b8
    python benchmarks/bench_infer.py --batches 1 4 --repeats 10 --size 320
    python benchmarks/bench_infer.py --batches 1 --formats tflite onnx    # fewer export rows
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import tensorflow as tf

from benchmarks.timing import forward_call, median_ms
from nets.yolo import build_model
from utils.config import class_names, load_config
from utils.deploy.detector import DecodeSpec, Detector
from utils.deploy.draw import draw_detections
from utils.deploy.export import FORMATS, export, load_exported
from utils.deploy.runs import display_threshold
from utils.eval.metrics import ImageDetections, ImageTruth
from utils.eval.scoring import score_detections

DEMO_IMAGES = Path("VOCdevkit/VOCdemo/JPEGImages")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("configs/base.yaml"),
                        help="model config (default: %(default)s, MobileNetV1 x1.0 + YOLOv4 PANet)")
    parser.add_argument("--size", type=int, default=416, help="input size (default: %(default)s)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8],
                        help="batch sizes (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed batches per batch size and path (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed batches first (default: %(default)s)")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of JPEGs to read (default: the demo dataset's, else 640x480 "
                             "noise images written to a temporary folder)")
    parser.add_argument("--formats", nargs="*", default=list(FORMATS), choices=list(FORMATS),
                        help="export formats to time, none for no export table (default: all; "
                             "onnx needs tf2onnx and onnxruntime)")
    parser.add_argument("--score-images", type=int, default=500,
                        help="images in the scoring benchmark, 20 classes (default: %(default)s)")
    return parser.parse_args(argv)


def _image_files(folder: Path | None, count: int, scratch: Path) -> list[Path]:
    if folder is None and DEMO_IMAGES.is_dir():
        folder = DEMO_IMAGES
    if folder is not None:
        files = sorted(folder.glob("*.jpg"))[:count]
        if files:
            return files
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        path = scratch / f"noise{i}.jpg"
        cv2.imwrite(str(path), rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
        files.append(path)
    return files


def _read(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _time_paths(detector: Detector, names: list[str], files: list[Path], batch: int,
                args: argparse.Namespace) -> dict[str, float]:
    """Median ms/image of (a) the bare forward and (b) the full path, plus (b)'s stage split."""
    bare = forward_call(detector.model, batch)
    chunk = files[:batch]

    def full() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        images = [_read(p) for p in chunk]
        t1 = time.perf_counter()
        found = detector.detect(images)
        t2 = time.perf_counter()
        for image, dets in zip(images, found, strict=True):
            draw_detections(image, dets, names)
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    for _ in range(args.warmup):
        bare()
        full()
    bare_times, full_times, stages = [], [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        bare()
        bare_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        stages.append(full())
        full_times.append(time.perf_counter() - start)
    per_image = 1000.0 / batch
    split = np.median(np.asarray(stages), axis=0) * per_image
    return {
        "forward": statistics.median(bare_times) * per_image,
        "full": statistics.median(full_times) * per_image,
        "read": split[0],
        "detect": split[1],
        "draw": split[2],
    }


def _time_folding(folded: Detector, plain: Detector, images: list[np.ndarray],
                  args: argparse.Namespace) -> dict[tuple[str, bool], float]:
    """Median ms/image of the bare forward and of the detector (letterbox to NMS) on
    ``images``, with the BatchNorms folded (True) and not (False), timed round-robin."""
    batch = len(images)
    calls = {
        ("forward", False): forward_call(plain.model, batch),
        ("forward", True): forward_call(folded.model, batch),
        ("detector", False): lambda: plain.detect(images),
        ("detector", True): lambda: folded.detect(images),
    }
    return {key: ms / batch for key, ms in median_ms(calls, args.repeats, args.warmup).items()}


def _time_exports(detector: Detector, image: np.ndarray, formats: list[str], scratch: Path,
                  args: argparse.Namespace) -> dict[str, float]:
    """Median ms/image of the bare forward (batch 1), the Keras detector and each export, all
    on one image, timed round-robin (one call of each per round)."""
    paths = export(detector, formats, scratch / "export")
    calls = {
        "forward": forward_call(detector.model, 1),
        "keras detector": lambda: detector.detect([image]),
        **{fmt: partial(load_exported(path), image) for fmt, path in paths.items()},
    }
    return median_ms(calls, args.repeats, args.warmup)


def _synthetic_scoring(num_images: int, num_classes: int = 20, per_image: int = 100):
    """Ground truth and get_map-like detections: 100 per image, jittered truths and noise."""
    rng = np.random.default_rng(0)
    truths, detections = [], []
    for _ in range(num_images):
        n = int(rng.integers(1, 6))
        xy = rng.uniform(0, 400, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(20, 200, (n, 2))], axis=1)
        classes = rng.integers(0, num_classes, n)
        truths.append(ImageTruth(boxes, classes, rng.random(n) < 0.1))
        source = rng.integers(0, n, per_image)
        wrong = rng.random(per_image) < 0.3
        detections.append(ImageDetections(
            boxes[source] + rng.normal(0, 15, (per_image, 4)),
            rng.random(per_image),
            np.where(wrong, rng.integers(0, num_classes, per_image), classes[source]),
        ))  # fmt: skip
    return truths, detections


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    size = args.size
    cfg = load_config(args.config, [f"model.input_size=[{size},{size}]", "model.pretrained=null"])
    names = class_names(cfg)
    model = build_model(cfg.model, len(names))
    detector, plain = (
        Detector(
            model,
            DecodeSpec.from_config(cfg, len(names)),
            score_threshold=display_threshold(cfg).value,
            nms_iou=cfg.eval.nms_iou,
            max_detections=cfg.eval.max_detections,
            fold=fold,
        )
        for fold in (True, False)
    )
    with tempfile.TemporaryDirectory() as scratch:
        files = _image_files(args.images, max(args.batches), Path(scratch))
        h, w = _read(files[0]).shape[:2]
        print(f"{cfg.model.backbone} x{cfg.model.backbone_options.get('alpha', 1.0)} + "
              f"{cfg.model.neck} at {size}x{size}, {len(names)} classes, {w}x{h} JPEGs, "
              f"{os.cpu_count()} CPU cores, TF {tf.__version__}, median of {args.repeats}")
        print(f"{'batch':>5} | {'forward':>8} | {'full':>8} | {'overhead':>8} || "
              f"{'read':>6} {'detect':>7} {'draw':>6}   (ms/image)")
        for batch in args.batches:
            r = _time_paths(detector, names, files, batch, args)
            overhead = 100.0 * (r["full"] / r["forward"] - 1.0)
            print(f"{batch:>5} | {r['forward']:8.1f} | {r['full']:8.1f} | {overhead:+7.1f}% || "
                  f"{r['read']:6.1f} {r['detect']:7.1f} {r['draw']:6.1f}")
        print("\nBatchNorm folding (ms/image: unfolded -> folded, x folded / unfolded)")
        print(f"{'batch':>5} | {'forward':>22} | {'detector':>22}")
        for batch in args.batches:
            r = _time_folding(detector, plain, [_read(p) for p in files[:batch]], args)
            cells = []
            for key in ("forward", "detector"):
                before, after = r[(key, False)], r[(key, True)]
                cells.append(f"{before:6.1f} -> {after:6.1f} x{after / before:.2f}")
            print(f"{batch:>5} | {cells[0]:>22} | {cells[1]:>22}")
        formats = list(args.formats)
        if "onnx" in formats and not all(map(importlib.util.find_spec, ("tf2onnx", "onnxruntime"))):
            formats.remove("onnx")
            print("onnx: not timed (pip install tf2onnx onnxruntime)")
        if formats:
            image = _read(files[0])
            rows = _time_exports(detector, image, formats, Path(scratch), args)
            print(f"\nexports, one {w}x{h} image per call (letterbox, model, decode, NMS; "
                  "ms/image, x bare forward at batch 1)")
            for name, ms in rows.items():
                print(f"{name:>15} | {ms:8.1f} | x{ms / rows['forward']:.2f}")

    truths, detections = _synthetic_scoring(args.score_images)
    start = time.perf_counter()
    report, _ = score_detections(
        truths, detections, [(600, 600)] * len(truths), [f"c{i}" for i in range(20)],
        iou_threshold=0.5, score_threshold=0.5,
    )
    seconds = time.perf_counter() - start
    count = sum(len(d.scores) for d in detections)
    print(f"scoring {len(truths)} images x 20 classes ({count} detections): {seconds:.2f} s "
          f"(VOC mAP {report.voc_map:.3f}, COCO AP50 {report.coco['ap50']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
