"""Detect objects with a trained run: an image, a folder, a video or a camera.

    python predict.py --run logs/demo-20261124-201500 --source img/street.jpg
    python predict.py --run logs/demo-... --source VOCdevkit/VOCdemo/JPEGImages --count
    python predict.py --run logs/demo-... --source clip.mp4 --conf 0.3
    python predict.py --run logs/demo-... --source 0 --frames 300        (camera 0)
    python predict.py --run logs/demo-... --source img/street.jpg --mode fps
    python predict.py --run logs/demo-... --source img/street.jpg --mode heatmap
    python predict.py --run logs/demo-... --mode export --format saved_model tflite onnx
    python predict.py --run logs/demo-... --mode benchmark        (every format: size, ms, mAP)

Annotated copies go to --out (default <run>/predictions/; exports: <run>/export/). The run's
saved config decides the model and thresholds; key.sub=value arguments override it like in
train.py. Exports hold the whole path (letterbox, model, decode, NMS) with the thresholds baked
in; see the README's "Export" section for their inputs and outputs. --mode benchmark exports every
format (or --format) to <run>/benchmark/ with the mAP score threshold, scores each on the val split
and exits with 1 when one loses more than --max-map-drop mAP@0.5: a release gate.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from utils.cli import add_run_arguments, add_verbose_argument, configure_logging, fail
from utils.deploy.sources import source_images, source_kind
from utils.engine.run_dir import RunDir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_arguments(parser)
    add_verbose_argument(parser)
    parser.add_argument("--source",
                        help="image file, folder of images, video file, or camera index (0, 1, ..);"
                             " --mode fps without it times a blank 640x480 image")
    parser.add_argument("--mode", choices=("predict", "fps", "heatmap", "export", "benchmark"),
                        default="predict",
                        help="predict: annotated copies; fps: time the detector; heatmap: object-"
                             "score overlay PNGs; export: write the detector for deployment; "
                             "benchmark: every format's size, speed and mAP (default: %(default)s)")
    parser.add_argument("--out", type=Path,
                        help="output folder (default: <run>/predictions, export: <run>/export, "
                             "benchmark: <run>/benchmark)")
    parser.add_argument("--format", nargs="+", metavar="FORMAT",
                        help="export/benchmark: one or more of saved_model, tflite, tflite_fp16 "
                             "(float16 weights), tflite_dynamic (int8 weights), tflite_int8 (int8 "
                             "network, see --calib-images), onnx (needs tf2onnx) (default: "
                             "saved_model; benchmark: all)")
    parser.add_argument("--calib-images", type=int, default=300,
                        help="tflite_int8: training images to calibrate on (default: "
                             "%(default)s, or all if fewer)")
    parser.add_argument("--max-map-drop", type=float, default=0.02,
                        help="benchmark: largest val mAP@0.5 loss against the Keras model a "
                             "format may have; exit 1 if one loses more (default: %(default)s)")
    parser.add_argument("--conf", type=float,
                        help="score threshold (default: eval.score_threshold, auto: the one of "
                             "best F1 on the run's validation split; exports keep it)")
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
                        help="fps/benchmark: timed runs (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override any field of the run's config, e.g. eval.max_detections=50")
    return parser.parse_args(argv)


def run_mode(args: argparse.Namespace, kind: str | None) -> int:
    """Loads the run and does what --mode says; ValueError (and its kin) for user mistakes.
    Returns the exit status: 1 when the benchmark's gate fails."""
    from tqdm import tqdm

    from utils.deploy import benchmark, predictor
    from utils.deploy.export import calibration_images
    from utils.deploy.runs import (  # TensorFlow loads only once the arguments are fine
        display_threshold,
        load_run,
    )

    # Config mistakes (ConfigError), missing files and missing weights are all one-liners.
    run = load_run(args.run, weights=args.weights, overrides=args.overrides)
    # The display threshold is resolved (and its file read) once, for the detector and the log.
    shown = display_threshold(run.config, run.run_dir) if args.conf is None else None
    threshold = shown.value if shown else args.conf
    detector = run.detector(score_threshold=threshold, nms_iou=args.nms_iou)
    if args.mode in ("predict", "export"):  # where the threshold decides which boxes show
        print(f"score threshold {threshold:g} ({shown.source if shown else '--conf'})")
    run_dir = RunDir(args.run)
    default_out = {"export": run_dir.export_dir, "benchmark": run_dir.benchmark_dir}
    out = args.out or default_out.get(args.mode, run_dir.predictions)
    formats = args.format or (benchmark.default_formats() if args.mode == "benchmark"
                              else ["saved_model"])  # fmt: skip
    calibration = []
    if "tflite_int8" in formats:  # the representative dataset: images of the training split
        calibration = calibration_images(run.config, args.calib_images)
    # SavedModel writing logs, at INFO, one line listing every captured weight it renames.
    logging.getLogger("absl").setLevel(logging.WARNING)
    if args.mode == "export":
        predictor.export_run(detector, run.class_names, formats, out, print, calibration)
    elif args.mode == "benchmark":
        rows = benchmark.benchmark_formats(
            run, args.run, formats, out, split="val", calibration=calibration,
            repeats=args.repeats, max_map_drop=args.max_map_drop, echo=print,
            progress=lambda items, **kw: tqdm(items, leave=False, **kw),
        )  # fmt: skip
        print(benchmark.format_table(rows, args.max_map_drop, "val"))
        return 0 if all(row.passed for row in rows) else 1
    elif args.mode == "fps":
        predictor.time_detector(detector, predictor.fps_image(args.source, kind), args.repeats,
                                print)
    elif args.mode == "heatmap":
        predictor.write_heatmaps(detector, source_images(args.source, kind, args.mode), out, print)
    else:
        predictor.Predictor(
            detector, run.class_names, out, crop=args.crop, count=args.count, batch=args.batch,
            frames=args.frames, echo=print, progress=tqdm,
        ).run(args.source, kind)  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(verbose=args.verbose)
    if args.mode not in ("fps", "export", "benchmark") and args.source is None:
        return fail(f"--mode {args.mode} needs --source (an image, folder, video or camera index)")
    if min(args.batch, args.repeats, args.calib_images) < 1:
        return fail("--batch, --repeats and --calib-images must be at least 1")
    try:
        kind = source_kind(args.source) if args.source is not None else None
        if args.format:
            from utils.deploy.export import check_formats

            check_formats(args.format)  # before the model is built; ImportError without tf2onnx
        return run_mode(args, kind)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        return fail(str(exc))


if __name__ == "__main__":
    sys.exit(main())
