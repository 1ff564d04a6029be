"""Video speed: frames/s of predict.py's video loop against the detector's own images/s.

A 640x480 mp4v video of ``--chunk`` frames is made from the demo images (letterboxed onto
grey, cycled), then timed in alternating rounds, so that a busy machine slows both alike:

(a) detector: ``Detector.detect`` on each frame, one frame per call, frames already decoded
    in memory: the most the video loop could reach;
(b) video:    ``Predictor.stream``, what ``predict.py --source clip.mp4`` runs: open, decode,
    detect, draw, encode in its three overlapping stages, close.

The model has random weights. So that its boxes and scores depend on the image as a trained
model's do, its BatchNorm statistics are those of the frames (one training-mode pass) and its
head kernels are scaled up (untouched, every box scores the same); the score threshold is then
set so that ``--boxes`` boxes per frame are drawn on average. Reported: the median of the
rounds and the ratio (b) / (a), which the loop aims to keep at 0.85 or more.

Example:
    python benchmarks/bench_video.py                   # configs/demo.yaml, 6 rounds of 50 frames
    python benchmarks/bench_video.py --chunk 300 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from nets.yolo import HEAD_LEVELS, build_model, set_bn_momentum
from utils.config import Config, class_names, load_config
from utils.data.demo import generate_demo_dataset
from utils.deploy.detector import DecodeSpec, Detector
from utils.deploy.predictor import Predictor
from utils.deploy.sources import read_rgb
from utils.letterbox import letterbox_layout

DEMO_IMAGES = Path("VOCdevkit/VOCdemo/JPEGImages")
WIDTH, HEIGHT = 640, 480
WARMUP_FRAMES = 10
# Head kernels start at stddev 0.01 around a prior bias; x10 spreads the scores out.
HEAD_GAIN = 10.0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"),
                        help="model config (default: %(default)s, the demo-width model)")
    parser.add_argument("--chunk", type=int, default=50,
                        help="frames per round, the video's length (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="alternating (detector, video) rounds (default: %(default)s)")
    parser.add_argument("--boxes", type=int, default=5,
                        help="boxes drawn per frame, on average (default: %(default)s)")
    return parser.parse_args(argv)


def _demo_frames(scratch: Path) -> list[np.ndarray]:
    """The demo images (generated into ``scratch`` when the demo dataset is absent), each
    letterboxed onto a grey 640x480 frame, RGB."""
    folder = DEMO_IMAGES
    if not folder.is_dir():
        folder = generate_demo_dataset(scratch / "VOCdemo", num_train=30, num_val=0,
                                       num_test=0) / "JPEGImages"
    frames = []
    for path in sorted(folder.glob("*.jpg"))[:30]:
        image = read_rgb(path)
        _, offset, placed = letterbox_layout(image.shape[:2], (HEIGHT, WIDTH))
        (dy, dx), (h, w) = offset.astype(int), placed.astype(int)
        frame = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)
        frame[dy : dy + h, dx : dx + w] = cv2.resize(image, (w, h))
        frames.append(frame)
    return frames


def _write_video(path: Path, frames: list[np.ndarray], count: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (WIDTH, HEIGHT))
    for i in range(count):
        writer.write(cv2.cvtColor(frames[i % len(frames)], cv2.COLOR_RGB2BGR))
    writer.release()


def _responsive(model: keras.Model, frames: list[np.ndarray]) -> None:
    """Makes the untrained ``model`` respond to images: BatchNorm statistics of ``frames``
    (stretched to the input, one training-mode pass with momentum 0), head kernels x HEAD_GAIN.
    """
    set_bn_momentum(model, 0.0)
    batch = tf.image.resize(np.stack(frames), model.input_shape[1:3]) / 255.0
    model(batch, training=True)
    for name, _ in HEAD_LEVELS:
        head = model.get_layer(name)
        head.kernel.assign(head.kernel * HEAD_GAIN)


def _detector(cfg: Config, model, num_classes: int, score_threshold: float) -> Detector:
    return Detector(
        model,
        DecodeSpec.from_config(cfg, num_classes),
        score_threshold=score_threshold,
        nms_iou=cfg.eval.nms_iou,
        max_detections=cfg.eval.max_detections,
    )


def _threshold_for(detector: Detector, frames: list[np.ndarray], boxes: int) -> float:
    """The score above which ``detector`` (run with threshold 0) keeps ``boxes`` boxes per
    frame on average (NMS keeps a box or not whatever the threshold below its score)."""
    scores = np.concatenate([detector.detect([frame])[0].scores for frame in frames])
    return float(np.sort(scores)[::-1][boxes * len(frames)])


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    cfg = load_config(args.config, ["model.pretrained=null"])
    names = class_names(cfg)
    model = build_model(cfg.model, len(names))
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        frames = _demo_frames(scratch)
        _responsive(model, frames)
        threshold = _threshold_for(_detector(cfg, model, len(names), 0.0), frames, args.boxes)
        detector = _detector(cfg, model, len(names), threshold)
        video = scratch / "clip.mp4"
        _write_video(video, frames, args.chunk)
        in_memory = [frames[i % len(frames)] for i in range(args.chunk)]
        drawn = np.mean([len(detector.detect([f])[0].scores) for f in frames])
        for frame in in_memory[:WARMUP_FRAMES]:
            detector.detect([frame])

        predictor = Predictor(
            detector, names, scratch / "out", crop=False, count=False, batch=1, frames=0,
            echo=lambda line: None, progress=partial(tqdm, disable=True),
        )  # fmt: skip
        detector_fps, video_fps = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for frame in in_memory:
                detector.detect([frame])
            detector_fps.append(args.chunk / (time.perf_counter() - start))
            start = time.perf_counter()
            predictor.run(str(video), "video")
            video_fps.append(args.chunk / (time.perf_counter() - start))

    size = "x".join(str(s) for s in cfg.model.input_size)
    print(f"{cfg.model.backbone} x{cfg.model.backbone_options.get('alpha', 1.0)} + "
          f"{cfg.model.neck} at {size}, {args.chunk} frames {WIDTH}x{HEIGHT} mp4v, "
          f"{drawn:.1f} boxes/frame (score >= {threshold:.3f}), {os.cpu_count()} CPU cores, "
          f"TF {tf.__version__}, median of {args.rounds} rounds")
    a, b = statistics.median(detector_fps), statistics.median(video_fps)
    print(f"detector, decoded frames, 1 per call:      {a:7.1f} frames/s "
          f"(rounds {min(detector_fps):.1f}..{max(detector_fps):.1f})")
    print(f"video loop (decode, detect, draw, encode): {b:7.1f} frames/s "
          f"(rounds {min(video_fps):.1f}..{max(video_fps):.1f})  x{b / a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
