r"""Ultralytics YOLOv8n trained from scratch on one of our datasets, in a wall-clock budget, and
scored by our scorer, so both frameworks' numbers come from one scorer.

Ultralytics and torch are never a dependency of this project: they live in their own virtual
environment, made once with (from the repo root)

    python -m venv .venv-ultralytics && \
        .venv-ultralytics/bin/pip install torch==2.14.1 torchvision==0.29.1 ultralytics==8.4.190

This script runs in the project's Python and drives that environment's Python (``--venv``, else
$ULTRALYTICS_VENV, else .venv-ultralytics) through ``benchmarks/ultralytics_job.py``:

1. the config's train and val splits are converted to YOLO txt (utils.data.formats, images
   hard-linked) and described in an Ultralytics data yaml;
2. YOLOv8n is built from ``yolov8n.yaml`` (random weights) and trained with Ultralytics' own
   budget ``time=`` (--minutes), on --device (cpu), no AMP, no plots, validating every epoch;
3. its best.pt predicts the val images (conf eval.map_score_threshold, NMS IoU eval.nms_iou, at
   most eval.max_detections boxes, as our mAP evaluation does);
4. those detections are scored with our VOC AP (utils.eval.metrics, eval.map_iou) against the
   split's ground truth, exactly as the trainer scores its val_map (the same images: the first
   train.eval_max_images when set).

With --ours, ``train.py --config ... train.time_budget=<minutes>`` trains our detector in the
same budget (train.epochs stays its cap: raise it with an override to let the budget decide),
and its final val_map joins the table with the ratio to YOLOv8n. Train time is each training
process's wall time (start-up, data loading and final evaluation included); Ultralytics' budget
counts from its first step, ours from the trainer's start.

Notes: YOLO txt has no "difficult" flag, so YOLOv8n trains on objects marked difficult as
ordinary ones (data.use_difficult: false keeps them out of ours); neither framework counts them
when scored. Ultralytics' own mAP50 (its final validation of best.pt) is printed for reference
only: it interpolates over 101 recall points and uses its own NMS IoU.

Nothing is downloaded: see ultralytics_job.py for how each download is avoided; any network
access the Ultralytics side still attempts is blocked and counted in the summary.

Everything goes to --out (default logs/compare_ultralytics/<config name>-<timestamp>/):
data/ (YOLO txt), data.yaml, job.json, ultralytics_job.py, yolov8n/ (Ultralytics' run:
results.csv, weights/best.pt), ultralytics.log, val_images.json, detections.json, ours/ and
ours.log (--ours), summary.json.

Examples (from the repo root):
    python benchmarks/compare_ultralytics.py --config configs/demo.yaml --minutes 10
    python benchmarks/compare_ultralytics.py --config configs/demo.yaml --minutes 10 --ours
    python benchmarks/compare_ultralytics.py --config configs/mine.yaml --minutes 60 \
        --batch 32 --device 0 train.eval_max_images=500
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from utils.cli import fail
from utils.config import Config, ConfigError, class_names, load_config
from utils.data.formats import convert_dataset, load_config_split
from utils.data.index import Sample
from utils.engine.run_dir import RunDir
from utils.eval.metrics import ImageDetections, ImageTruth, evaluate_voc, mean_ap
from utils.plots import read_history

logger = logging.getLogger("compare_ultralytics")

REPO = Path(__file__).resolve().parents[1]
JOB_SCRIPT = Path(__file__).with_name("ultralytics_job.py")
DEFAULT_VENV = REPO / ".venv-ultralytics"
VENV_VARIABLE = "ULTRALYTICS_VENV"
INSTALL_COMMAND = (
    "python -m venv .venv-ultralytics && .venv-ultralytics/bin/pip install torch==2.14.1 "
    "torchvision==0.29.1 ultralytics==8.4.190"
)
BLOCKED = "ultralytics_job: blocked network access:"  # the same string as in ultralytics_job.py
MODEL = "yolov8n.yaml"  # the architecture file shipped in the package: no weights
MAX_EPOCHS = 10_000  # Ultralytics' time= re-plans the epochs after the first one
RESULTS_MAP50 = "metrics/mAP50(B)"  # Ultralytics' results.csv column


class BadInput(Exception):
    """A user mistake: one line, exit code 2."""


class RunFailed(Exception):
    """A training or prediction process that failed: one line, exit code 1."""


@dataclass(frozen=True)
class Row:
    """One framework's result."""

    framework: str
    budget_min: float
    train_min: float
    epochs: int
    val_map: float  # VOC mAP at eval.map_iou, our scorer
    ultralytics_map50: float | None = None  # Ultralytics' own, for reference


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        help="our config: its data section names the dataset and splits",
    )
    parser.add_argument(
        "--minutes",
        type=float,
        required=True,
        help="wall-clock training budget of each framework, in minutes",
    )
    parser.add_argument(
        "--venv",
        type=Path,
        help=f"the Ultralytics virtual environment (default: ${VENV_VARIABLE}, "
        f"else {DEFAULT_VENV.name} in the repo root)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="work folder, new or empty (default: "
        "logs/compare_ultralytics/<config name>-<timestamp>)",
    )
    parser.add_argument(
        "--imgsz", type=int, help="Ultralytics' image size (default: the config's input size)"
    )
    parser.add_argument(
        "--batch", type=int, default=16, help="Ultralytics' batch size (default: %(default)s)"
    )
    parser.add_argument(
        "--device", default="cpu", help="Ultralytics' device: cpu, 0, 0,1 (default: %(default)s)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="Ultralytics' data-loader workers (default: %(default)s)",
    )
    parser.add_argument(
        "--ours", action="store_true", help="also train our detector (train.py) in the same budget"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="override any config field (also passed to train.py with --ours)",
    )
    return parser.parse_args(argv)


# --- the Ultralytics environment ---------------------------------------------------------------


def resolve_venv(given: Path | None) -> Path:
    """--venv, else $ULTRALYTICS_VENV, else .venv-ultralytics in the repo root (absolute: the
    Ultralytics processes run in the work folder)."""
    from_env = os.environ.get(VENV_VARIABLE)
    venv = given if given is not None else Path(from_env) if from_env else DEFAULT_VENV
    return venv.absolute()


def venv_python(venv: Path) -> Path:
    windows = venv / "Scripts" / "python.exe"
    return windows if windows.is_file() else venv / "bin" / "python"


def check_venv(venv: Path) -> str:
    """The versions of ultralytics and torch in ``venv`` (read from their metadata, nothing
    imported); `BadInput` when there is no environment or it lacks them."""
    python = venv_python(venv)
    if not python.is_file():
        raise BadInput(f"no Python environment at {venv}; create it with: {INSTALL_COMMAND}")
    probe = (
        "import importlib.metadata as m; "
        "print('ultralytics', m.version('ultralytics') + ',', 'torch', m.version('torch'))"
    )
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    if done.returncode != 0:
        raise BadInput(f"{venv} has no ultralytics (or torch); install with: {INSTALL_COMMAND}")
    return done.stdout.strip()


def job_environment(work: Path) -> dict[str, str]:
    """The environment of the Ultralytics processes: offline, settings kept in the work folder."""
    env = dict(os.environ)
    env.update(
        YOLO_OFFLINE="1",  # no online check: no update check, telemetry or pip auto-install
        YOLO_AUTOINSTALL="0",
        YOLO_CONFIG_DIR=str(work / "ultralytics_config"),
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",  # stream its output as it comes
    )
    return env


def run_streamed(
    what: str, command: Sequence[str], log: Path, *, env: dict[str, str], cwd: Path
) -> float:
    """Run ``command`` (``what`` names it in errors) with its output going to the console and
    appended to ``log``; return its wall time in seconds. `RunFailed` when it exits non-zero."""
    start = time.monotonic()
    console = getattr(sys.stdout, "buffer", None)
    with (
        open(log, "ab") as log_file,
        subprocess.Popen(
            list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd
        ) as process,
    ):
        assert process.stdout is not None
        while chunk := process.stdout.read1(1 << 16):
            log_file.write(chunk)
            if console is not None:
                console.write(chunk)
                console.flush()
            else:
                print(chunk.decode(errors="replace"), end="", flush=True)
        status = process.wait()
    if status != 0:
        raise RunFailed(f"{what} failed (exit status {status}); see {log}")
    return time.monotonic() - start


def blocked_attempts(log: Path) -> list[str]:
    """The network accesses the Ultralytics side tried (and was denied), from its log."""
    if not log.is_file():
        return []
    lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    return [line for line in lines if line.startswith(BLOCKED)]


# --- data -----------------------------------------------------------------------------------


def load_splits(cfg: Config) -> tuple[list[Sample], list[Sample]]:
    """The usable train and val samples (the demo dataset generated first if the config names
    one); the val samples are the ones the trainer's mAP uses (train.eval_max_images)."""
    train = load_config_split(cfg, cfg.data.train_split, key="data.train_split")
    val = load_config_split(cfg, cfg.data.val_split, key="data.val_split")
    if cfg.train.eval_max_images > 0:
        val = val[: cfg.train.eval_max_images]
    return train, val


def convert_splits(cfg: Config, splits: Sequence[str], out: Path) -> list[Path]:
    """Each split converted to YOLO txt in its own folder ``out/<i>`` (two splits may share a
    short name, e.g. VOC2007/trainval and VOC2012/trainval); the image folders, those of
    splits without usable images left out."""
    names = class_names(cfg)
    folders = []
    for i, split in enumerate(splits):
        done = convert_dataset(
            cfg.data.format,
            cfg.data.root,
            [split],
            names,
            "yolo",
            out / str(i),
            coco_images=cfg.data.coco_images,
            link=True,
        )
        if done.images:
            folders.append((Path(done.data["root"]) / done.splits[0]).resolve())
        else:
            logger.warning("split %s has no usable images; left out", split)
    return folders


def data_yaml(train: Sequence[Path], val: Sequence[Path], names: Sequence[str]) -> dict[str, Any]:
    """Ultralytics' dataset description: image folders (labels next to them, images/ ->
    labels/) and the class names by id."""
    return {
        "train": [str(p) for p in train],
        "val": [str(p) for p in val],
        "nc": len(names),
        "names": dict(enumerate(names)),
    }


def prepare_data(cfg: Config, work: Path) -> Path:
    """The config's train and val splits as YOLO txt under ``work/data``; returns the data yaml
    (``work/data.yaml``). `BadInput` when a role is left without images."""
    train = convert_splits(cfg, cfg.data.train_split, work / "data" / "train")
    val = convert_splits(cfg, cfg.data.val_split, work / "data" / "val")
    for key, folders in (("data.train_split", train), ("data.val_split", val)):
        if not folders:
            raise BadInput(f"{key}: no usable images to convert")
    path = work / "data.yaml"
    text = yaml.safe_dump(data_yaml(train, val, class_names(cfg)), sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def write_image_list(samples: Sequence[Sample], path: Path) -> Path:
    """The images to predict, by sample id (the original files: boxes come back in their
    pixels, as our ground truth is)."""
    images = [{"image_id": s.image_id, "path": str(s.image_path.resolve())} for s in samples]
    path.write_text(json.dumps(images, indent=1), encoding="utf-8")
    return path


# --- scoring --------------------------------------------------------------------------------


def read_detections(path: Path, samples: Sequence[Sample]) -> list[ImageDetections]:
    """The detections of ``path`` (``{"images": [{"image_id", "boxes" xyxy, "classes",
    "scores"}]}``) in the order of ``samples``; every sample must have an entry."""
    found: dict[str, ImageDetections] = {}
    for image in json.loads(path.read_text(encoding="utf-8"))["images"]:
        found[image["image_id"]] = ImageDetections(
            boxes=np.asarray(image["boxes"], np.float32).reshape(-1, 4),
            scores=np.asarray(image["scores"], np.float32).reshape(-1),
            classes=np.asarray(image["classes"], np.int32).reshape(-1),
        )
    missing = [s.image_id for s in samples if s.image_id not in found]
    if missing:
        raise RunFailed(
            f"{path}: no detections entry for {len(missing)} of {len(samples)} images "
            f"(first: {missing[0]})"
        )
    return [found[s.image_id] for s in samples]


def score_detections(
    path: Path, samples: Sequence[Sample], num_classes: int, iou_threshold: float
) -> float:
    """VOC mAP (all-point) of the detections in ``path``, as the trainer's val_map scores."""
    truths = [ImageTruth(s.boxes, s.classes, s.difficult) for s in samples]
    detections = read_detections(path, samples)
    return mean_ap(evaluate_voc(truths, detections, num_classes, iou_threshold=iou_threshold))


def finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def results_summary(results_csv: Path) -> tuple[int, float | None]:
    """Epochs logged in Ultralytics' results.csv (the last may be cut short by the budget) and
    its last mAP50."""
    history = read_history(results_csv)
    maps = finite(history.get(RESULTS_MAP50, []))
    return len(finite(history.get("epoch", []))), (maps[-1] if maps else None)


def ours_result(folder: Path) -> tuple[int, float]:
    """Epochs and final val_map (the last finite value) of the run train.py made in
    ``folder``."""
    runs = RunDir.find(folder)
    if not runs:
        raise RunFailed(f"{folder}: no run folder with a history.csv")
    history = read_history(runs[-1].history)
    maps = finite(history.get("val_map", []))
    if not maps:
        raise RunFailed(f"{runs[-1].history}: no val_map (train.eval_period 0?)")
    return len(finite(history.get("epoch", []))), maps[-1]


# --- the two runs ---------------------------------------------------------------------------


def ultralytics_job(cfg: Config, args: argparse.Namespace, work: Path, data: Path) -> dict:
    """What ultralytics_job.py does, every setting and file named."""
    imgsz = args.imgsz or max(cfg.model.input_size)
    return {
        "train": {
            "model": MODEL,
            "data": str(data),
            "epochs": MAX_EPOCHS,
            "hours": args.minutes / 60.0,
            "imgsz": imgsz,
            "batch": args.batch,
            "device": args.device,
            "workers": args.workers,
            "seed": cfg.train.seed,
            "project": str(work),
            "name": "yolov8n",
        },
        "predict": {
            "images": str(work / "val_images.json"),
            "conf": cfg.eval.map_score_threshold,
            "iou": cfg.eval.nms_iou,
            "max_det": cfg.eval.max_detections,
            "imgsz": imgsz,
            "device": args.device,
        },
        "train_result": str(work / "train_result.json"),
        "detections": str(work / "detections.json"),
    }


def run_ultralytics(
    cfg: Config, args: argparse.Namespace, python: Path, work: Path, val: Sequence[Sample]
) -> Row:
    """Train and predict in the venv, then score with our scorer."""
    job = ultralytics_job(cfg, args, work, prepare_data(cfg, work))
    write_image_list(val, Path(job["predict"]["images"]))
    job_file = work / "job.json"
    job_file.write_text(json.dumps(job, indent=1), encoding="utf-8")
    script = Path(shutil.copy(JOB_SCRIPT, work / JOB_SCRIPT.name))
    env, log = job_environment(work), work / "ultralytics.log"
    logger.info("training YOLOv8n for %g minutes (log: %s)", args.minutes, log)
    command = [str(python), str(script), "train", str(job_file)]
    seconds = run_streamed("YOLOv8n training", command, log, env=env, cwd=work)
    logger.info("predicting %d val images with YOLOv8n", len(val))
    command = [str(python), str(script), "predict", str(job_file)]
    run_streamed("YOLOv8n prediction", command, log, env=env, cwd=work)

    trained = json.loads(Path(job["train_result"]).read_text(encoding="utf-8"))
    epochs, last_map50 = results_summary(Path(trained["save_dir"]) / "results.csv")
    final_map50 = trained.get("final_map50")
    return Row(
        framework="YOLOv8n (Ultralytics)",
        budget_min=args.minutes,
        train_min=seconds / 60.0,
        epochs=epochs,
        val_map=score_detections(
            Path(job["detections"]), val, len(class_names(cfg)), cfg.eval.map_iou
        ),
        ultralytics_map50=final_map50 if final_map50 is not None else last_map50,
    )


def ours_overrides(args: argparse.Namespace, work: Path) -> list[str]:
    """The user's overrides, the budget and the run folder's place, for train.py."""
    return [
        *args.overrides,
        f"train.time_budget={args.minutes:g}",
        f"train.save_dir={work / 'ours'}",
    ]


def run_ours(cfg: Config, args: argparse.Namespace, work: Path) -> Row:
    """train.py in the same budget; its final val_map (the trainer's own mAP evaluation)."""
    command = [sys.executable, str(REPO / "train.py"), "--config", str(args.config),
               *ours_overrides(args, work), "--quiet"]  # fmt: skip
    logger.info(
        "training ours (%s) for %g minutes (log: %s)", cfg.name, args.minutes, work / "ours.log"
    )
    seconds = run_streamed(
        "train.py", command, work / "ours.log", env=dict(os.environ), cwd=Path.cwd()
    )
    epochs, val_map = ours_result(work / "ours")
    return Row(f"ours ({cfg.name})", args.minutes, seconds / 60.0, epochs, val_map)


# --- report ---------------------------------------------------------------------------------


def table(rows: Sequence[Row], iou_threshold: float) -> list[str]:
    """The rows as a Markdown table; the last column is each mAP over YOLOv8n's (the first
    row; "-" when that is 0)."""
    our_map = f"val mAP@{iou_threshold:g} (our scorer)"
    head = ["framework", "budget (min)", "train time (min)", "epochs", our_map,
            "Ultralytics mAP50", "/ YOLOv8n"]  # fmt: skip
    reference = rows[0].val_map
    lines = [head, ["---"] + ["---:"] * (len(head) - 1)]
    for row in rows:
        ratio = f"{row.val_map / reference:.2f}" if reference > 0 else "-"
        lines.append([
            row.framework,
            f"{row.budget_min:g}",
            f"{row.train_min:.1f}",
            str(row.epochs),
            f"{row.val_map:.4f}",
            "-" if row.ultralytics_map50 is None else f"{row.ultralytics_map50:.4f}",
            ratio,
        ])  # fmt: skip
    return [f"| {' | '.join(cells)} |" for cells in lines]


def work_folder(out: Path | None, name: str) -> Path:
    """--out (new or empty), else a new timestamped folder under logs/compare_ultralytics."""
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("logs") / "compare_ultralytics" / f"{name}-{stamp}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"--out {out}: exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return out.resolve()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not args.minutes > 0:
        return fail(f"--minutes must be positive, got {args.minutes:g}")
    try:
        cfg = load_config(args.config, args.overrides)
        if args.ours:  # fail now rather than after YOLOv8n's run
            load_config(args.config, ours_overrides(args, Path("logs")))
        venv = resolve_venv(args.venv)
        versions = check_venv(venv)
        _, val = load_splits(cfg)
        work = work_folder(args.out, cfg.name)
        logger.info("%s in %s; work folder %s", versions, venv, work)
        rows = [run_ultralytics(cfg, args, venv_python(venv), work, val)]
        if args.ours:
            rows.append(run_ours(cfg, args, work))
    except (BadInput, ConfigError, ValueError, FileNotFoundError, FileExistsError) as error:
        return fail(str(error))
    except RunFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    blocked = blocked_attempts(work / "ultralytics.log")
    lines = table(rows, cfg.eval.map_iou)
    print("\n" + "\n".join(lines))
    print(f"{len(val)} val images of {', '.join(cfg.data.val_split)}; {versions}")
    print(f"network accesses Ultralytics attempted (all blocked): {len(blocked)}")
    if blocked:
        print(f"warning: see them in {work / 'ultralytics.log'}: {blocked[0]} ...", file=sys.stderr)
    summary = {
        "config": str(args.config),
        "overrides": args.overrides,
        "minutes": args.minutes,
        "versions": versions,
        "val_images": len(val),
        "map_iou": cfg.eval.map_iou,
        "job": json.loads((work / "job.json").read_text(encoding="utf-8")),
        "network_blocked": blocked,
        "rows": [asdict(row) for row in rows],
        "table": lines,
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    print(f"summary: {work / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
