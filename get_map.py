"""Score a trained run on a dataset split: VOC AP@0.5 (all-point and 11-point), COCO mAP, P/R/F1.

    python get_map.py --run logs/demo-20261124-201500 --split test
    python get_map.py --run logs/demo-... --split val --mode predict      (detection files only)
    python get_map.py --run logs/demo-... --mode score                    (score existing files)
    python get_map.py --run logs/demo-... --model logs/demo-.../export/model_int8.tflite

Everything goes to the run's mAP output folder (see --out):
  detection-results/<image id>.txt   one line per box: class_name score x1 y1 x2 y2
  ground-truth/<image id>.txt        one line per object: class_name x1 y1 x2 y2 [difficult]
  results.json                       every number below
  ap_per_class.png, ground_truth_counts.png, pr_curves/<class>.png
  coco-results/<json name>           COCO data only: the detections with the instances file's
                                     own image and category ids, as pycocotools' loadRes reads

Predictions keep boxes down to eval.map_score_threshold (0.001) and at most eval.max_detections
(100) per image, as VOC/COCO scoring expects; precision, recall and F1 are read at the display
threshold eval.score_threshold. Override any config field with key.sub=value.

--model scores an exported file (SavedModel folder, .tflite, .onnx) instead of the run's weights,
so each export's mAP compares with the Keras model's. An export keeps the score threshold it was
made with: make the ones to score with --conf 0.001 (eval.map_score_threshold), e.g.
    python predict.py --run logs/demo-... --mode export --conf 0.001 --out logs/demo-.../export_map
(predict.py --mode benchmark does all of this for every format and prints one table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from utils.cli import add_run_arguments, add_verbose_argument, configure_logging, fail
from utils.deploy.runs import run_config
from utils.engine.run_dir import RunDir
from utils.eval.evaluate import SplitEvaluation

MODES = ("both", "predict", "score")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_run_arguments(parser)
    add_verbose_argument(parser)
    parser.add_argument("--split", default="test",
                        help="train | val | test (the config's data.*_split), FOLDER/NAME, or an "
                             "ImageSets NAME in the test split's dataset folders "
                             "(default: %(default)s)")
    parser.add_argument("--mode", choices=MODES, default="both",
                        help="predict: write detection files only; score: score existing "
                             "detection files (no model needed); both (default)")
    parser.add_argument("--out", type=Path,
                        help=f"output folder (default: {RunDir(Path('<run>')).map_out})")
    parser.add_argument("--model", type=Path,
                        help="exported detector to score instead of the run's weights (default "
                             "--out: <run>/map_out/<file name>); export it with --conf 0.001")
    parser.add_argument("--batch", type=int, default=8,
                        help="images per detector call (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value",
                        help="override any field of the run's config, e.g. eval.map_iou=0.75")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(verbose=args.verbose)
    if args.batch < 1:
        return fail("--batch must be at least 1")
    out = args.out if args.out is not None else RunDir(args.run).map_out
    if args.model is not None and args.out is None:
        out = out / args.model.name
    try:  # config mistakes, missing weights, split or detection files: one line each
        cfg = run_config(args.run, args.overrides)
        evaluation = SplitEvaluation(args.run, cfg, args.split, out, echo=print)
        if args.mode in ("predict", "both"):
            evaluation.predict(args.weights, args.batch, progress=tqdm, model=args.model)
        if args.mode in ("score", "both"):
            evaluation.score()
    except (FileNotFoundError, ValueError, ImportError) as exc:  # ImportError: onnxruntime
        return fail(str(exc))
    print("time: " + ", ".join(f"{k} {v:.2f} s" for k, v in evaluation.timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
