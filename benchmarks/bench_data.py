"""Throughput of the tf.data input pipeline (training with augmentation, and validation).

Reads real JPEG files: the generated demo dataset (written to a temporary folder unless --root
points at a VOCdevkit that holds it). Prints images/s for each pipeline after a warm-up, the best
of --repeats rounds that time every pipeline in turn (so a busy machine slows all of them alike),
and what a seed costs: a seeded training pipeline maps in input order to be reproducible.

Example:
    python benchmarks/bench_data.py --size 416 --batch 16 --batches 30
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from utils.config import AugmentConfig, base_section
from utils.data.demo import DEMO_CLASSES, generate_demo_dataset
from utils.data.index import Sample
from utils.data.pipeline import build_dataset
from utils.data.voc import load_split


@dataclass(frozen=True)
class _Result:
    name: str
    images_per_s: float
    ms_per_batch: float


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="VOCdevkit holding VOCdemo/ (default: generate a demo dataset in a temp folder)",
    )
    parser.add_argument(
        "--images", type=int, default=96, help="demo images to generate (default: %(default)s)"
    )
    parser.add_argument("--size", type=int, default=416, help="input size (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (default: %(default)s)")
    parser.add_argument(
        "--batches", type=int, default=30, help="timed batches per run (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed batches first (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds over all pipelines (default: %(default)s)"
    )
    return parser.parse_args(argv)


def _time(dataset: tf.data.Dataset, warmup: int, batches: int) -> float:
    """Seconds to draw ``batches`` batches after ``warmup`` untimed ones, from a new iterator
    dropped afterwards (a live one would go on filling its buffers while others are timed)."""
    iterator = iter(dataset.repeat())
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return time.perf_counter() - start


def _run(samples: list[Sample], args: argparse.Namespace) -> list[_Result]:
    size = (args.size, args.size)
    pipelines = {
        "train, defaults (mosaic 0.5, mixup 0.5)": dict(training=True),
        "train, defaults, seeded (reproducible order)": dict(training=True, shuffle_seed=0),
        "train, mosaic 1.0 + mixup 1.0": dict(
            training=True, augment=base_section(AugmentConfig, mosaic=1.0, mixup=1.0)
        ),
        "train, no mosaic/mixup": dict(
            training=True, augment=base_section(AugmentConfig, mosaic=0.0)
        ),
        "validation (letterbox)": dict(training=False),
    }
    datasets = {
        name: build_dataset(samples, input_size=size, batch_size=args.batch, **kwargs)
        for name, kwargs in pipelines.items()
    }
    best = dict.fromkeys(pipelines, float("inf"))
    for _ in range(args.repeats):
        for name, dataset in datasets.items():
            best[name] = min(best[name], _time(dataset, args.warmup, args.batches))
    return [
        _Result(name, args.batches * args.batch / seconds, 1000.0 * seconds / args.batches)
        for name, seconds in best.items()
    ]


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch:
        root = args.root
        if root is None:
            root = Path(scratch) / "VOCdevkit"
            generate_demo_dataset(root / "VOCdemo", num_train=args.images, num_val=0, num_test=0)
        samples = load_split(root, ["VOCdemo/train"], DEMO_CLASSES, cache=False).samples
        results = _run(samples, args)

    print(
        f"\n{len(samples)} JPEG images, input {args.size}x{args.size}, batch {args.batch}, "
        f"{args.warmup} warm-up + best of {args.repeats} x {args.batches} timed batches, "
        f"{os.cpu_count()} CPU cores\n"
    )
    width = max(len(r.name) for r in results)
    print(f"{'pipeline':<{width}}  {'images/s':>9}  {'ms/batch':>9}")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 9}")
    for r in results:
        print(f"{r.name:<{width}}  {r.images_per_s:>9.1f}  {r.ms_per_batch:>9.1f}")
    free, seeded = results[0].images_per_s, results[1].images_per_s
    print(f"\nseeded / unseeded training throughput: {seeded / free:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
