"""Detect objects with a trained run: an image, a folder, a video or a camera.

    python predict.py --run logs/demo-20261124-201500 --source img/street.jpg
    python predict.py --run logs/demo-... --source VOCdevkit/VOCdemo/JPEGImages --count
    python predict.py --run logs/demo-... --source clip.mp4 --conf 0.3
    python predict.py --run logs/demo-... --source 0 --frames 300        (camera 0)
    python predict.py --run logs/demo-... --source img/street.jpg --mode fps
    python predict.py --run logs/demo-... --source img/street.jpg --mode heatmap
    python predict.py --run logs/demo-... --mode export --format saved_model tflite onnx

Annotated copies go to --out (default <run>/predictions/; exports: <run>/export/). The run's
config.yaml decides the model and thresholds; key.sub=value arguments override it like in
train.py. Exports hold the whole path (letterbox, model, decode, NMS) with the thresholds baked
in; see the README's "Export" section for their inputs and outputs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from pathlib import Path

from utils.cli import add_run_arguments, configure_logging, fail

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_arguments(parser)
    parser.add_argument("--source",
                        help="image file, folder of images, video file, or camera index (0, 1, ..);"
                             " --mode fps without it times a blank 640x480 image")
    parser.add_argument("--mode", choices=("predict", "fps", "heatmap", "export"),
                        default="predict",
                        help="predict: annotated copies; fps: time the detector; heatmap: "
                             "objectness overlay PNGs; export: write the detector for deployment "
                             "(default: %(default)s)")
    parser.add_argument("--out", type=Path,
                        help="output folder (default: <run>/predictions, export: <run>/export)")
    parser.add_argument("--format", nargs="+", default=["saved_model"], metavar="FORMAT",
                        help="export mode: one or more of saved_model, tflite, tflite_fp16 "
                             "(float16 weights), onnx (needs tf2onnx) (default: saved_model)")
    parser.add_argument("--conf", type=float,
                        help="score threshold (default: the run's eval.score_threshold; "
                             "exports keep it)")
    parser.add_argument("--nms-iou", type=float,
                        help="class-wise NMS IoU threshold (default: the run's eval.nms_iou)")
    parser.add_argument("--crop", action="store_true",
                        help="also save each detection as its own image under <out>/crops/")
    parser.add_argument("--count", action="store_true",
                        help="print objects per class (videos: drawn on each frame)")
    parser.add_argument("--batch", type=int, default=4,
                        help="images per detector call for folders (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=0,
                        help="camera: stop after this many frames (default: until Ctrl-C)")
    parser.add_argument("--repeats", type=int, default=50,
                        help="fps mode: timed runs after 5 warm-up runs (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override any field of the run's config, e.g. eval.max_detections=50")
    return parser.parse_args(argv)


def source_kind(source: str) -> str:
    """``camera``, ``video``, ``image`` or ``folder``; ValueError for anything else."""
    if source.isdigit():
        return "camera"
    path = Path(source)
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise ValueError(f"--source {source}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    raise ValueError(f"--source {source}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                     f"or video ({', '.join(sorted(VIDEO_SUFFIXES))})")


def folder_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_rgb(path: Path):
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: cannot read this image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_rgb(path: Path, image) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"{path}: cannot write an image here")


def format_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {n}" for name, n in counts.items()) or "no objects"


class Predictor:
    """The annotate / crop / count steps shared by the image, folder and stream sources."""

    def __init__(self, detector, class_names: list[str], args: argparse.Namespace, out: Path):
        self.detector = detector
        self.class_names = class_names
        self.args = args
        self.out = out
        self.totals: Counter[str] = Counter()

    def annotate(self, image, detections, name: str) -> dict[str, int]:
        """Writes the annotated image (and crops); returns its objects per class."""
        from utils.deploy.draw import count_classes, crop_detections, draw_detections

        write_rgb(self.out / name, draw_detections(image, detections, self.class_names))
        if self.args.crop:
            stem = Path(name).stem
            for i, crop in enumerate(crop_detections(image, detections)):
                cls = self.class_names[int(detections.classes[i])]
                write_rgb(self.out / "crops" / f"{stem}_{i:03d}_{cls}.png", crop)
        counts = count_classes(detections, self.class_names)
        self.totals.update(counts)
        return counts

    def images(self, paths: list[Path]) -> None:
        from tqdm import tqdm

        single = len(paths) == 1
        bar = tqdm(total=len(paths), unit="img", disable=single)
        for start in range(0, len(paths), self.args.batch):
            chunk = paths[start : start + self.args.batch]
            images = [read_rgb(p) for p in chunk]
            for path, image, dets in zip(chunk, images, self.detector.detect(images), strict=True):
                counts = self.annotate(image, dets, path.name)
                if single:
                    for box, score, cls in zip(dets.boxes, dets.scores, dets.classes, strict=True):
                        coords = ", ".join(f"{v:.1f}" for v in box)
                        print(f"{self.class_names[int(cls)]} {score:.3f} [{coords}]")
                if self.args.count:
                    bar.write(f"{path.name}: {format_counts(counts)}")
                bar.update(1)
        bar.close()
        if self.args.count and not single:
            print(f"total: {format_counts(dict(self.totals.most_common()))}")
        print(f"{len(paths)} annotated image(s) written to {self.out}")

    def stream(self, capture, name: str, total: int | None) -> None:
        import cv2
        from tqdm import tqdm

        from utils.deploy.draw import count_classes, draw_counts, draw_detections

        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        writer = None
        path = self.out / name
        bar = tqdm(total=total, unit="frame")
        try:
            while not (self.args.frames and bar.n >= self.args.frames):
                ok, frame = capture.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                detections = self.detector.detect([rgb])[0]
                drawn = draw_detections(rgb, detections, self.class_names)
                if self.args.count:
                    drawn = draw_counts(drawn, count_classes(detections, self.class_names))
                if writer is None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    size = (drawn.shape[1], drawn.shape[0])
                    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
                    if not writer.isOpened():
                        raise ValueError(f"{path}: cannot write a video here")
                writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
                bar.update(1)
        except KeyboardInterrupt:
            pass  # Ctrl-C ends a camera stream; the video so far is kept
        finally:
            bar.close()
            capture.release()
            if writer is not None:
                writer.release()
        if writer is None:
            raise ValueError(f"{name}: no frame could be read")
        print(f"{bar.n} annotated frames written to {path}")


def run_predict(detector, class_names, args, kind: str, out: Path) -> None:
    import cv2

    predictor = Predictor(detector, class_names, args, out)
    if kind == "image":
        predictor.images([Path(args.source)])
    elif kind == "folder":
        paths = folder_images(Path(args.source))
        if not paths:
            raise ValueError(f"--source {args.source}: no images in this folder")
        predictor.images(paths)
    elif kind == "video":
        capture = cv2.VideoCapture(args.source)
        if not capture.isOpened():
            raise ValueError(f"--source {args.source}: cannot open this video")
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        predictor.stream(capture, f"{Path(args.source).stem}.mp4", frames)
    else:
        capture = cv2.VideoCapture(int(args.source))
        if not capture.isOpened():
            raise ValueError(f"--source {args.source}: camera {args.source} cannot be opened")
        predictor.stream(capture, f"camera{args.source}.mp4", args.frames or None)


def run_heatmap(detector, args, kind: str, out: Path) -> None:
    import numpy as np
    import tensorflow as tf

    from utils.deploy.detector import pad_batch
    from utils.deploy.draw import heatmap_overlay

    if kind not in ("image", "folder"):
        raise ValueError("--mode heatmap takes an image or a folder as --source")
    paths = [Path(args.source)] if kind == "image" else folder_images(Path(args.source))
    if not paths:
        raise ValueError(f"--source {args.source}: no images in this folder")
    for path in paths:
        image = read_rgb(path)
        canvas, sizes = pad_batch([image])
        heat = np.asarray(detector.heatmap(tf.constant(canvas), tf.constant(sizes))[0])
        write_rgb(out / f"{path.stem}_heatmap.png",
                  heatmap_overlay(image, heat, detector.spec.input_hw))
    print(f"{len(paths)} heat map(s) written to {out}")


def run_fps(detector, args, kind: str) -> None:
    import numpy as np
    import tensorflow as tf

    from utils.deploy.detector import pad_batch

    if args.source is None:
        image = np.full((480, 640, 3), 128, np.uint8)
    elif kind == "image":
        image = read_rgb(Path(args.source))
    elif kind == "folder" and (paths := folder_images(Path(args.source))):
        image = read_rgb(paths[0])
    else:
        raise ValueError("--mode fps takes an image or a folder of images as --source")
    canvas, sizes = (tf.constant(a) for a in pad_batch([image]))
    letterboxed = tf.zeros([1, *detector.spec.input_hw, 3], tf.float32)
    forward = tf.function(lambda x: detector.model(x, training=False))

    def timed(fn) -> float:
        for _ in range(5):
            tf.nest.map_structure(np.asarray, fn())
        start = time.perf_counter()
        for _ in range(args.repeats):
            tf.nest.map_structure(np.asarray, fn())
        return (time.perf_counter() - start) / args.repeats

    full = timed(lambda: detector(canvas, sizes))
    bare = timed(lambda: forward(letterboxed))
    h, w = image.shape[:2]
    print(f"image {w}x{h}, input {detector.spec.input_hw[1]}x{detector.spec.input_hw[0]}, "
          f"{args.repeats} runs after 5 warm-up runs")
    print(f"detector (letterbox + model + decode + NMS): {full * 1000:.1f} ms/image, "
          f"{1 / full:.1f} FPS")
    print(f"model forward only:                          {bare * 1000:.1f} ms/image, "
          f"{1 / bare:.1f} FPS")


def run_export(detector, class_names: list[str], formats: list[str], out: Path) -> None:
    from utils.deploy.export import export

    # SavedModel writing logs, at INFO, one line listing every captured weight it renames.
    logging.getLogger("absl").setLevel(logging.WARNING)
    for fmt, path in export(detector, formats, out).items():
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files) / 2**20
        print(f"{fmt:<12} {path} ({size:.1f} MiB)")
    # The exports output class indices; the names travel next to them.
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in class_names))
    print(f"class names written to {out / 'classes.txt'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    if args.mode not in ("fps", "export") and args.source is None:
        return fail(f"--mode {args.mode} needs --source (an image, folder, video or camera index)")
    if args.batch < 1 or args.repeats < 1:
        return fail("--batch and --repeats must be at least 1")
    try:
        kind = source_kind(args.source) if args.source is not None else None
        if args.mode == "export":
            from utils.deploy.export import check_formats

            check_formats(args.format)  # before the model is built
        from utils.deploy.detector import (
            load_run,  # TensorFlow loads only once the arguments are fine
        )

        # Config mistakes (ConfigError), missing files and missing weights are all one-liners;
        # so is an export format whose optional package (ImportError) is not installed.
        run = load_run(args.run, weights=args.weights, overrides=args.overrides)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        return fail(str(exc))

    detector = run.detector(score_threshold=args.conf, nms_iou=args.nms_iou)
    default_out = "export" if args.mode == "export" else "predictions"
    out = args.out if args.out is not None else args.run / default_out
    try:
        if args.mode == "export":
            run_export(detector, run.class_names, args.format, out)
        elif args.mode == "fps":
            run_fps(detector, args, kind)
        elif args.mode == "heatmap":
            run_heatmap(detector, args, kind, out)
        else:
            run_predict(detector, run.class_names, args, kind, out)
    except ValueError as exc:
        return fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
