"""Score a trained run on a dataset split: VOC AP@0.5 (all-point and 11-point), COCO mAP, P/R/F1.

    python get_map.py --run logs/demo-20261124-201500 --split test
    python get_map.py --run logs/demo-... --split val --mode predict      (detection files only)
    python get_map.py --run logs/demo-... --mode score                    (score existing files)

Everything goes to <run>/map_out/ (or --out):
  detection-results/<image id>.txt   one line per box: class_name score x1 y1 x2 y2
  ground-truth/<image id>.txt        one line per object: class_name x1 y1 x2 y2 [difficult]
  results.json                       every number below
  ap_per_class.png, ground_truth_counts.png, pr_curves/<class>.png
  coco-results/<json name>           COCO data only: the detections with the instances file's
                                     own image and category ids, as pycocotools' loadRes reads

Predictions keep boxes down to eval.map_score_threshold (0.001) and at most eval.max_detections
(100) per image, as VOC/COCO scoring expects; precision, recall and F1 are read at the display
threshold eval.score_threshold. Override any config field with key.sub=value.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from utils.cli import add_run_arguments, configure_logging, fail, load_config_or_exit

MODES = ("both", "predict", "score")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_arguments(parser)
    parser.add_argument("--split", default="test",
                        help="train | val | test (the config's data.*_split), FOLDER/NAME, or an "
                             "ImageSets NAME in the test split's dataset folders "
                             "(default: %(default)s)")
    parser.add_argument("--mode", choices=MODES, default="both",
                        help="predict: write detection files only; score: score existing "
                             "detection files (no model needed); both (default)")
    parser.add_argument("--out", type=Path, help="output folder (default: <run>/map_out)")
    parser.add_argument("--batch", type=int, default=8,
                        help="images per detector call (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override any field of the run's config, e.g. eval.map_iou=0.75")
    return parser.parse_args(argv)


def load_samples(cfg, split: str):
    from utils.config import class_names
    from utils.data.formats import load_dataset
    from utils.eval.scoring import split_names

    root = Path(cfg.data.root)
    if cfg.data.demo_dataset:
        from utils.data.demo import ensure_demo_dataset

        ensure_demo_dataset(root / cfg.data.demo_dataset)
    splits = split_names(cfg, split)
    samples = load_dataset(cfg.data, splits, class_names(cfg)).samples
    if not samples:
        raise ValueError(f"--split {split} ({', '.join(splits)}): no usable images")
    return samples


def predict(args, cfg, samples, out: Path, timings: dict[str, float]) -> None:
    from tqdm import tqdm

    from utils.config import class_names
    from utils.deploy.detector import load_run
    from utils.eval.scoring import (
        DETECTIONS_DIR,
        GROUND_TRUTH_DIR,
        truths_of,
        write_detections,
        write_ground_truth,
    )

    start = time.perf_counter()
    run = load_run(args.run, weights=args.weights, config=cfg)
    detector = run.detector(for_map=True)
    timings["load model"] = time.perf_counter() - start

    start = time.perf_counter()
    paths = [s.image_path for s in samples]
    detections = list(
        tqdm(detector.detect_files(paths, args.batch), total=len(paths), unit="img", desc="predict")
    )
    timings["predict"] = time.perf_counter() - start

    names = class_names(cfg)
    ids = [s.image_id for s in samples]
    write_detections(out / DETECTIONS_DIR, ids, detections, names)
    write_ground_truth(out / GROUND_TRUTH_DIR, ids, truths_of(samples), names)
    count = sum(len(d.scores) for d in detections)
    print(f"{count} detections of {len(ids)} images written to {out / DETECTIONS_DIR}")


def score(args, cfg, samples, out: Path, timings: dict[str, float]) -> None:
    from utils.config import class_names
    from utils.eval.scoring import (
        DETECTIONS_DIR,
        format_table,
        read_detections,
        score_detections,
        split_names,
        truths_of,
        write_report,
    )

    start = time.perf_counter()
    ids = [s.image_id for s in samples]
    detections = read_detections(out / DETECTIONS_DIR, ids, class_names(cfg))
    report, curves = score_detections(
        truths_of(samples),
        detections,
        [(s.height, s.width) for s in samples],
        class_names(cfg),
        iou_threshold=cfg.eval.map_iou,
        score_threshold=cfg.eval.score_threshold,
    )
    timings["score"] = time.perf_counter() - start

    start = time.perf_counter()
    extra = {
        "run": str(args.run),
        "split": split_names(cfg, args.split),
        "map_score_threshold": cfg.eval.map_score_threshold,
        "nms_iou": cfg.eval.nms_iou,
        "max_detections": cfg.eval.max_detections,
    }
    write_report(out, report, curves, extra)
    timings["plots"] = time.perf_counter() - start
    print(format_table(report))
    print(f"results and plots written to {out}")
    if cfg.data.format == "coco":
        from utils.data.coco import write_detection_results

        for path in write_detection_results(
            out, cfg.data.root, extra["split"], cfg.data.coco_images, samples, detections,
            class_names(cfg),
        ):  # fmt: skip
            print(f"detections with the annotation file's own ids written to {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging()
    if args.batch < 1:
        return fail("--batch must be at least 1")
    config_path = args.run / "config.yaml"
    if not config_path.is_file():
        return fail(f"{config_path}: not found; is {args.run} a run folder made by train.py?")
    cfg = load_config_or_exit(config_path, args.overrides)
    out = args.out if args.out is not None else args.run / "map_out"
    timings: dict[str, float] = {}
    try:
        samples = load_samples(cfg, args.split)
        if args.mode in ("predict", "both"):
            predict(args, cfg, samples, out, timings)
        if args.mode in ("score", "both"):
            score(args, cfg, samples, out, timings)
    except (FileNotFoundError, ValueError) as exc:  # missing weights, split or detection files
        return fail(str(exc))
    print("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
