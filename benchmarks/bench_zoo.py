"""Model zoo table: every backbone x neck config with its parameters, GFLOPs, latency and mAP.

Each config (by default every file in configs/ but base.yaml, so the demo recipes too) is built
once, with random weights, at the same input size and class count, and measured:

- params and GFLOPs, counted as tools/summary.py counts them (utils/flops, one image);
- ms/image of the bare compiled Keras forward, the one bench_infer.py times (benchmarks/timing.py):
  median of --repeats batches per batch size, the batch sizes timed in alternation;
- demo mAP@0.5 (with --map-from): the last measured val_map of the latest finished training run
  whose config has the same backbone, backbone options, neck, neck conv and head; "-" if none.

Rows print as they finish; --markdown then prints the table for the README.

Examples (from the repo root):
    python benchmarks/bench_zoo.py                                 # every config, 416, batch 1
    python benchmarks/bench_zoo.py --configs configs/mobilenetv1_yolov4.yaml --repeats 2
    python benchmarks/bench_zoo.py --batches 1 8 --neck-convs standard depthwise ghost
    python benchmarks/bench_zoo.py --map-from logs --markdown
    python benchmarks/bench_zoo.py --configs configs/demo_mobilenetv1_yolov4.yaml --size 320 \
        --heads anchor_based anchor_free --map-from logs --markdown  # the README's head comparison
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf
from tqdm import tqdm

from benchmarks.timing import forward_call, median_ms
from nets import HEADS, build_model
from nets.necks import NECK_CONVS
from utils.cli import fail
from utils.config import Config, ConfigError, ModelConfig, load_config, load_run_config
from utils.engine.checkpoint import ResumeStateError, read_resume_info
from utils.engine.run_dir import RunDir
from utils.flops import count_flops
from utils.plots import read_history

log = logging.getLogger("bench_zoo")

ROOT = Path(__file__).resolve().parents[1]

NOT_ZOO = ("base.yaml",)  # the defaults are no model of their own
# Left-aligned columns; the rest are numbers.
TEXT_COLUMNS = ("config", "backbone", "neck", "neck conv", "head")


@dataclass(frozen=True)
class RunResult:
    """The final validation mAP of a finished training run."""

    run_dir: RunDir
    model: ModelConfig
    val_map: float
    finished_at: float  # the history's modification time: the latest of equal runs wins


@dataclass(frozen=True)
class ZooRow:
    """One measured model of the table."""

    config: str
    model: ModelConfig
    params: int
    flops: int
    ms_per_image: dict[int, float]  # batch size -> median ms/image
    demo_map: float | None  # None: no finished run of this model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--configs",
        type=Path,
        nargs="+",
        help=f"config files, one row each (default: configs/*.yaml but {', '.join(NOT_ZOO)})",
    )
    parser.add_argument(
        "--neck-convs",
        nargs="+",
        choices=NECK_CONVS,
        help="one row per config and neck conv block (default: the config's own)",
    )
    parser.add_argument(
        "--heads",
        nargs="+",
        choices=HEADS.names(),
        help="one row per config (and neck conv) and head family (default: the config's own)",
    )
    parser.add_argument(
        "--size",
        type=int,
        default=416,
        help="input size N (NxN), multiple of 32 (default: %(default)s)",
    )
    parser.add_argument(
        "--classes", type=int, default=20, help="classes of the heads (default: %(default)s, VOC)"
    )
    parser.add_argument(
        "--batches",
        type=int,
        nargs="+",
        default=[1],
        help="batch sizes to time, e.g. 1 8 (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=10,
        help="timed batches per batch size (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed batches first, tracing included (default: %(default)s)",
    )
    parser.add_argument(
        "--map-from",
        type=Path,
        nargs="+",
        metavar="RUNS_DIR",
        help="folders holding training runs (any depth) to take demo mAP from",
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="also print the finished table as Markdown, for the README",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="config overrides applied to every config, e.g. model.neck_options.alpha=0.5; after a "
        "list option (--configs, --map-from, ...) put them after --",
    )
    args = parser.parse_args(argv)
    for flag in ("configs", "map_from"):
        # A list option swallows the overrides that follow it; say so instead of "not found".
        swallowed = [str(path) for path in getattr(args, flag) or [] if "=" in str(path)]
        if swallowed:
            parser.error(
                f"--{flag.replace('_', '-')} took the overrides {swallowed}; "
                "put overrides before the options or after --"
            )
    for flag in ("classes", "repeats"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be at least 0")
    if min(args.batches) < 1:
        parser.error(f"--batches must be at least 1; received {args.batches}")
    args.batches = list(dict.fromkeys(args.batches))  # one column per batch size
    return args


def default_configs(folder: Path = ROOT / "configs") -> list[Path]:
    return sorted(path for path in folder.glob("*.yaml") if path.name not in NOT_ZOO)


def load_zoo(
    paths: list[Path],
    overrides: list[str],
    neck_convs: list[str] | None,
    size: int,
    heads: list[str] | None = None,
) -> list[Config]:
    """Each config at ``size`` with random weights and ``overrides``, once per neck conv and
    head family."""
    # Overrides given by the user come after the table's own, so they can still change them.
    common = ["model.pretrained=null", f"model.input_size=[{size},{size}]", *overrides]
    configs = []
    for path in paths:
        for conv, head in itertools.product(neck_convs or [None], heads or [None]):
            extra = [] if conv is None else [f"model.neck_conv={conv}"]
            extra += [] if head is None else [f"model.head={head}"]
            configs.append(load_config(path, [*common, *extra]))
    return configs


def model_key(model: ModelConfig) -> tuple[str, dict[str, Any], str, str, str]:
    """What makes two models the same zoo entry; an option set to null is the builder's default."""
    options = {key: value for key, value in model.backbone_options.items() if value is not None}
    return model.backbone, options, model.neck, model.neck_conv, model.head


def planned_epochs(run_dir: RunDir, cfg: Config) -> int:
    """The run's length: train.epochs, or under train.time_budget the length it planned last
    (train.epochs is only a cap there)."""
    if cfg.train.time_budget is None:
        return cfg.train.epochs
    return read_resume_info(run_dir.resume_state).planned_epochs or cfg.train.epochs


def read_run(run_dir: RunDir) -> RunResult | None:
    """The result of the run in ``run_dir``; None, with the reason logged, if it cannot count."""
    try:
        cfg = load_run_config(run_dir.config)  # older runs: newer settings from base.yaml
    except ConfigError as exc:
        log.warning("skipped run %s: %s", run_dir, exc)
        return None
    history = read_history(run_dir.history)
    epochs = [epoch for epoch in history.get("epoch", []) if math.isfinite(epoch)]
    done = int(max(epochs)) + 1 if epochs else 0  # Keras numbers epochs from 0
    try:
        planned = planned_epochs(run_dir, cfg)
    except ResumeStateError as exc:
        log.warning("skipped run %s: %s", run_dir, exc)
        return None
    if done < planned:
        log.warning("skipped run %s: unfinished (%d of %d epochs)", run_dir, done, planned)
        return None
    maps = [value for value in history.get("val_map", []) if math.isfinite(value)]
    if not maps:
        log.warning("skipped run %s: no val_map in %s", run_dir, run_dir.history.name)
        return None
    return RunResult(run_dir, cfg.model, maps[-1], run_dir.history.stat().st_mtime)


def read_runs(folders: list[Path]) -> list[RunResult]:
    """The finished runs with a validation mAP found at any depth under ``folders``."""
    runs = []
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"--map-from {folder}: not a folder")
        for run_dir in RunDir.find(folder):
            run = read_run(run_dir)
            if run is not None:
                runs.append(run)
    return runs


def match_run(model: ModelConfig, runs: list[RunResult]) -> RunResult | None:
    """The latest run of the same zoo entry as ``model``, None if there is none."""
    same = [run for run in runs if model_key(run.model) == model_key(model)]
    latest = max(same, key=lambda run: run.finished_at, default=None)
    if len(same) > 1:
        log.warning(
            "%d runs match %s; using the latest, %s", len(same), model_key(model), latest.run_dir
        )
    return latest


def build_row(
    cfg: Config,
    classes: int,
    batches: list[int],
    repeats: int,
    warmup: int,
    runs: list[RunResult] | None = None,
) -> ZooRow:
    """Build ``cfg``'s model once, count it, time its forward at each batch size, find its mAP."""
    model = build_model(cfg.model, classes)
    calls = {batch: forward_call(model, batch) for batch in batches}
    ms_per_call = median_ms(calls, repeats, warmup)
    run = match_run(cfg.model, runs or [])
    return ZooRow(
        config=cfg.name,
        model=cfg.model,
        params=model.count_params(),
        flops=count_flops(model),
        ms_per_image={batch: ms / batch for batch, ms in ms_per_call.items()},
        demo_map=None if run is None else run.val_map,
    )


def _described(name: str, options: dict[str, Any]) -> str:
    shown = [f"{key}={value}" for key, value in options.items() if value is not None]
    return f"{name} ({', '.join(shown)})" if shown else name


def header(batches: list[int], with_map: bool) -> list[str]:
    numbers = ["params (M)", "GFLOPs", *(f"ms/img b{batch}" for batch in batches)]
    return [*TEXT_COLUMNS, *numbers, *(["demo mAP@0.5"] if with_map else [])]


def text_cells(name: str, model: ModelConfig) -> list[str]:
    return [
        name,
        _described(model.backbone, model.backbone_options),
        _described(model.neck, model.neck_options),
        model.neck_conv,
        model.head,
    ]


def row_cells(row: ZooRow, with_map: bool) -> list[str]:
    cells = [
        *text_cells(row.config, row.model),
        f"{row.params / 1e6:.2f}",
        f"{row.flops / 1e9:.2f}",
        *(f"{ms:.1f}" for ms in row.ms_per_image.values()),
    ]
    if with_map:
        cells.append("-" if row.demo_map is None else f"{row.demo_map:.3f}")
    return cells


def plain_line(cells: list[str], widths: list[int]) -> str:
    text = len(TEXT_COLUMNS)
    parts = [
        c.ljust(w) if i < text else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    ]
    return "  ".join(parts).rstrip()


def markdown_table(head: list[str], rows: list[list[str]]) -> list[str]:
    align = ["---" if i < len(TEXT_COLUMNS) else "---:" for i in range(len(head))]
    return [f"| {' | '.join(cells)} |" for cells in (head, align, *rows)]


def _device() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return f"CPU ({os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    try:
        configs = load_zoo(
            args.configs or default_configs(),
            args.overrides,
            args.neck_convs,
            args.size,
            args.heads,
        )
        runs = None if args.map_from is None else read_runs(args.map_from)
    except ConfigError as exc:
        return fail(str(exc))

    with_map = runs is not None
    head = header(args.batches, with_map)
    # Widths are fixed before the first row so that rows can print as they finish.
    texts = [text_cells(cfg.name, cfg.model) for cfg in configs]
    widths = [max([len(h), *(len(t[i]) for t in texts)]) for i, h in enumerate(TEXT_COLUMNS)]
    widths += [max(len(h), 6) for h in head[len(TEXT_COLUMNS) :]]
    sizes = sorted({"x".join(map(str, cfg.model.input_size)) for cfg in configs})
    print(
        f"{len(configs)} models at {', '.join(sizes)}, {args.classes} classes, bare Keras "
        f"forward on {_device()}, TF {tf.__version__}, median of {args.repeats}"
    )
    print(plain_line(head, widths), flush=True)

    rows = []
    for cfg in tqdm(configs, desc="models", unit="model", file=sys.stderr):
        try:
            row = build_row(cfg, args.classes, args.batches, args.repeats, args.warmup, runs)
        except (KeyError, ValueError) as exc:  # e.g. an option the backbone does not take
            return fail(f"{cfg.name}: {exc}")
        keras.backend.clear_session()  # the model is gone: drop Keras' global state with it
        rows.append(row)
        tqdm.write(plain_line(row_cells(row, with_map), widths), file=sys.stdout)
        sys.stdout.flush()

    if args.markdown:
        print()
        print("\n".join(markdown_table(head, [row_cells(row, with_map) for row in rows])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
