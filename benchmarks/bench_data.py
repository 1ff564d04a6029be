"""Throughput of the tf.data input pipeline (training with augmentation, and validation).

Reads real JPEG files: the generated demo dataset (written to a temporary folder unless --root
points at a VOCdevkit that holds it). Prints images/s for each pipeline after a warm-up.

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

from utils.data.augment import AugmentOptions
from utils.data.demo import DEMO_CLASSES, generate_demo_dataset
from utils.data.index import Sample, load_split
from utils.data.pipeline import build_dataset


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
    return parser.parse_args(argv)


def _time(
    dataset: tf.data.Dataset, warmup: int, batches: int, batch_size: int
) -> tuple[float, float]:
    iterator = iter(dataset.repeat())
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    elapsed = time.perf_counter() - start
    return batches * batch_size / elapsed, 1000.0 * elapsed / batches


def _run(samples: list[Sample], args: argparse.Namespace) -> list[_Result]:
    size = (args.size, args.size)
    pipelines = {
        "train, defaults (mosaic 0.5, mixup 0.5)": dict(training=True),
        "train, mosaic 1.0 + mixup 1.0": dict(
            training=True, augment=AugmentOptions(mosaic=1.0, mixup=1.0)
        ),
        "train, no mosaic/mixup": dict(training=True, augment=AugmentOptions(mosaic=0.0)),
        "validation (letterbox)": dict(training=False),
    }
    results = []
    for name, kwargs in pipelines.items():
        dataset = build_dataset(samples, input_size=size, batch_size=args.batch, **kwargs)
        rate, ms = _time(dataset, args.warmup, args.batches, args.batch)
        results.append(_Result(name, rate, ms))
    return results


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
        f"{args.warmup} warm-up + {args.batches} timed batches, {os.cpu_count()} CPU cores\n"
    )
    width = max(len(r.name) for r in results)
    print(f"{'pipeline':<{width}}  {'images/s':>9}  {'ms/batch':>9}")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 9}")
    for r in results:
        print(f"{r.name:<{width}}  {r.images_per_s:>9.1f}  {r.ms_per_batch:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
