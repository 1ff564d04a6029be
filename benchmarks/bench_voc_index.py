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

from utils.data import index as voc

_XML = (
    "<annotation><folder>VOCbench</folder><filename>{stem}.jpg</filename>"
    "<size><width>8</width><height>8</height><depth>3</depth></size>{objects}</annotation>"
)
_OBJECT = (
    "<object><name>{name}</name><difficult>{difficult}</difficult><bndbox><xmin>{x1}</xmin>"
    "<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
)


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
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dataset / sub).mkdir(parents=True)
    ok, jpeg = cv2.imencode(".jpg", np.full((8, 8, 3), 127, np.uint8))
    assert ok, "OpenCV could not encode a JPEG"
    jpeg_bytes = jpeg.tobytes()
    rng = np.random.default_rng(seed)
    corners = rng.integers(1, 5, (num, objects, 2))
    extents = rng.integers(1, 4, (num, objects, 2))
    classes = rng.integers(0, len(voc.VOC_CLASSES), (num, objects))
    stems = [f"{i:06d}" for i in range(num)]
    for i, stem in enumerate(stems):
        text = "".join(
            _OBJECT.format(
                name=voc.VOC_CLASSES[classes[i, j]],
                difficult=int(j == 0 and i % 10 == 0),
                x1=corners[i, j, 0],
                y1=corners[i, j, 1],
                x2=corners[i, j, 0] + extents[i, j, 0],
                y2=corners[i, j, 1] + extents[i, j, 1],
            )
            for j in range(objects)
        )
        (dataset / "Annotations" / f"{stem}.xml").write_text(_XML.format(stem=stem, objects=text))
        (dataset / "JPEGImages" / f"{stem}.jpg").write_bytes(jpeg_bytes)
    (dataset / "ImageSets" / "Main" / "train.txt").write_text("\n".join(stems) + "\n")


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
            index = voc.load_split(root, ["VOCbench/train"], voc.VOC_CLASSES)
            timings.append((label, time.perf_counter() - start))
        assert len(index.samples) == args.num, index.report.summary()

    print(f"{args.num} annotations x {args.objects} objects (generated in {generate_s:.1f} s)")
    print(f"{'load':<28} {'seconds':>8} {'ms / 1k images':>15}")
    for label, seconds in timings:
        print(f"{label:<28} {seconds:>8.3f} {1000 * seconds / args.num * 1000:>15.1f}")


if __name__ == "__main__":
    main()
