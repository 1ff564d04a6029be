"""Time `load_split` cold (parse every XML, check every image) and warm (cache hit).

Generates N annotation + tiny JPEG pairs in a temporary VOC tree, loads the split twice and
prints both times. The warm load only stats files, so it should stay well under 2 s at 16,000.

    python benchmarks/bench_voc_index.py --num 16000
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from utils.data.index import Sample
from utils.data.splits import write_split_files
from utils.data.voc import VOC_CLASSES, load_split, write_annotation


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num", type=int, default=16000, help="annotations to generate")
    parser.add_argument("--objects", type=int, default=3, help="objects per annotation")
    parser.add_argument("--seed", type=int, default=0, help="seed for the generated boxes")
    return parser.parse_args()


def generate(root: Path, num: int, objects: int, seed: int) -> None:
    """Write ``root/VOCbench`` with ``num`` 8x8 JPEGs (all the same bytes, encoded once), their
    XMLs with random boxes, and ``ImageSets/Main/train.txt``."""
    dataset = root / "VOCbench"
    (dataset / "JPEGImages").mkdir(parents=True)
    ok, jpeg = cv2.imencode(".jpg", np.full((8, 8, 3), 127, np.uint8))
    assert ok, "OpenCV could not encode a JPEG"
    jpeg_bytes = jpeg.tobytes()
    rng = np.random.default_rng(seed)
    corners = rng.integers(1, 5, (num, objects, 2))
    extents = rng.integers(1, 4, (num, objects, 2))
    classes = rng.integers(0, len(VOC_CLASSES), (num, objects))
    difficult = np.zeros((num, objects), bool)
    difficult[::10, 0] = True
    stems = [f"{i:06d}" for i in range(num)]
    for i, stem in enumerate(stems):
        image = dataset / "JPEGImages" / f"{stem}.jpg"
        image.write_bytes(jpeg_bytes)
        sample = Sample(
            image_path=image,
            image_id=f"VOCbench/{stem}",
            width=8,
            height=8,
            boxes=np.concatenate([corners[i], corners[i] + extents[i]], axis=1).astype(np.float32),
            classes=classes[i].astype(np.int32),
            difficult=difficult[i],
        )
        xml = dataset / "Annotations" / f"{stem}.xml"
        write_annotation(xml, sample, VOC_CLASSES, folder=dataset.name)
    write_split_files(dataset, {"train": stems})


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        generate(root, args.num, args.objects, args.seed)
        generate_s = time.perf_counter() - start

        timings = []
        for label in ("cold (parse + write cache)", "warm (cache hit)"):
            start = time.perf_counter()
            index = load_split(root, ["VOCbench/train"], VOC_CLASSES)
            timings.append((label, time.perf_counter() - start))
        assert len(index.samples) == args.num, index.report.summary()

    print(f"{args.num} annotations x {args.objects} objects (generated in {generate_s:.1f} s)")
    print(f"{'load':<28} {'seconds':>8} {'ms / 1k images':>15}")
    for label, seconds in timings:
        print(f"{label:<28} {seconds:>8.3f} {1000 * seconds / args.num * 1000:>15.1f}")


if __name__ == "__main__":
    main()
