"""The work behind ``predict.py``: annotated images (with crops and counts) for an image or a
folder, annotated videos from a file or a camera, objectness heat maps, detector timing, export.

Nothing here writes to the console itself: lines go through ``echo`` and progress bars through
``progress`` (called like ``tqdm``), both passed in by the front door.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tensorflow as tf

from utils.deploy.detector import Detector, pad_batch
from utils.deploy.draw import (
    count_classes,
    crop_detections,
    draw_counts,
    draw_detections,
    heatmap_overlay,
)
from utils.deploy.export import export, size_mib
from utils.deploy.sources import (
    Capture,
    FrameReader,
    open_capture,
    read_rgb,
    source_images,
    write_rgb,
)
from utils.eval.metrics import ImageDetections

Echo = Callable[[str], None]
# Builds a progress bar as tqdm does: (total=, unit=, disable=) -> .update(), .write(), .close(), .n
Progress = Callable[..., Any]

CROPS_DIR = "crops"
# Exports output class indices; the names travel next to them in this file.
CLASSES_FILE = "classes.txt"
WARMUP_RUNS = 5
# Frames waiting between the stream's stages (decoded, detected): enough to ride out jitter,
# few enough to bound the memory (a 1080p frame is 6 MB).
STREAM_QUEUE = 8


def format_counts(counts: dict[str, int]) -> str:
    """``"name: n, ..."``, or ``"no objects"``."""
    return ", ".join(f"{name}: {n}" for name, n in counts.items()) or "no objects"


class Predictor:
    """Detects, draws and writes: the steps shared by the image, folder and stream sources.

    Args:
        detector: the run's detector.
        class_names: names of the class indices it outputs.
        out: folder for the annotated images and videos (and ``crops/``).
        crop: also write each detection as its own image, ``<out>/crops/<stem>_<k>_<class>.png``
            with ``k`` the detection's index (its line in the printed list).
        count: report objects per class (videos: drawn on each frame).
        batch: images per detector call for folders.
        frames: streams stop after this many frames (0: at the end, or Ctrl-C for a camera).
        echo: prints one line for the user.
        progress: builds a progress bar.
    """

    def __init__(
        self,
        detector: Detector,
        class_names: Sequence[str],
        out: Path,
        *,
        crop: bool,
        count: bool,
        batch: int,
        frames: int,
        echo: Echo,
        progress: Progress,
    ) -> None:
        self.detector = detector
        self.class_names = list(class_names)
        self.out = out
        self.crop = crop
        self.count = count
        self.batch = batch
        self.frames = frames
        self.echo = echo
        self.progress = progress
        self.totals: Counter[str] = Counter()

    def run(self, source: str, kind: str) -> None:
        """Annotates a ``--source`` of the given kind (see ``utils.deploy.sources``)."""
        if kind in ("image", "folder"):
            self.images(source_images(source, kind, "predict"))
        else:
            self.stream(*open_capture(source, kind))

    def annotate(self, image: np.ndarray, detections: ImageDetections, name: str) -> dict[str, int]:
        """Writes the annotated image (and crops) as ``name``; returns its objects per class."""
        write_rgb(self.out / name, draw_detections(image, detections, self.class_names))
        if self.crop:
            stem = Path(name).stem
            for i, crop in crop_detections(image, detections):
                cls = self.class_names[int(detections.classes[i])]
                write_rgb(self.out / CROPS_DIR / f"{stem}_{i:03d}_{cls}.png", crop)
        counts = count_classes(detections, self.class_names)
        self.totals.update(counts)
        return counts

    def images(self, paths: Sequence[Path]) -> None:
        """Annotates image files, ``batch`` per detector call; a single image also has its
        detections listed, one ``name score [x1, y1, x2, y2]`` line each."""
        single = len(paths) == 1
        bar = self.progress(total=len(paths), unit="img", disable=single)
        for start in range(0, len(paths), self.batch):
            chunk = paths[start : start + self.batch]
            images = [read_rgb(p) for p in chunk]
            for path, image, dets in zip(chunk, images, self.detector.detect(images), strict=True):
                counts = self.annotate(image, dets, path.name)
                if single:
                    for box, score, cls in zip(dets.boxes, dets.scores, dets.classes, strict=True):
                        coords = ", ".join(f"{v:.1f}" for v in box)
                        self.echo(f"{self.class_names[int(cls)]} {score:.3f} [{coords}]")
                if self.count:
                    bar.write(f"{path.name}: {format_counts(counts)}")
                bar.update(1)
        bar.close()
        if self.count and not single:
            self.echo(f"total: {format_counts(dict(self.totals.most_common()))}")
        self.echo(f"{len(paths)} annotated image(s) written to {self.out}")

    def stream(self, capture: Capture, name: str, total: int | None) -> None:
        """Annotates every frame of ``capture`` into the video ``<out>/<name>`` (mp4v).

        Three stages overlap: a thread decodes frames, this thread runs the detector, a thread
        draws and encodes; bounded queues between them keep the order and bound the memory.
        Ctrl-C ends the stream and keeps the video so far; unreadable frames are skipped and
        counted.
        """
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        bar = self.progress(total=total if total is not None else (self.frames or None),
                            unit="frame")
        reader = FrameReader(capture, self.frames)
        sink = _VideoSink(self.out / name, fps, self.class_names, self.count)
        frames, found = _Channel(STREAM_QUEUE), _Channel(STREAM_QUEUE)
        errors: list[BaseException] = []
        threads = [
            threading.Thread(target=_produce, args=(reader, frames, errors), daemon=True),
            threading.Thread(target=_consume, args=(found, sink.write, errors), daemon=True),
        ]
        for thread in threads:
            thread.start()
        try:
            while (frame := frames.get()) is not _END:
                if not found.put((frame, self.detector.detect([frame])[0])):
                    break  # the writer failed; its error is raised below
                bar.update(1)
        except KeyboardInterrupt:
            pass  # Ctrl-C ends a camera stream; the video so far is kept
        finally:
            frames.close()  # the reader stops at its next frame
            found.put(_END)  # the writer finishes the frames already detected
            for thread in threads:
                thread.join()
            bar.close()
            capture.release()
            sink.close()
        if errors:
            raise errors[0]
        if reader.skipped:
            self.echo(f"{name}: skipped {reader.skipped} unreadable frame(s)")
        if not sink.written:
            raise ValueError(f"{name}: no frame could be read")
        self.echo(f"{sink.written} annotated frames written to {sink.path}")


# Marks the end of a channel's items.
_END = object()
# Seconds a blocked put or get waits before it checks whether the other side gave up.
_POLL_S = 0.1


class _Channel:
    """A bounded FIFO between two threads. Either side can ``close`` it, which makes the
    other side's blocked ``put`` return False and its ``get`` return ``_END`` (once empty)."""

    def __init__(self, size: int) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(size)
        self.closed = threading.Event()

    def put(self, item: Any) -> bool:
        """Queues ``item``; False (and not queued) once the channel is closed."""
        while not self.closed.is_set():
            try:
                self.queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self) -> Any:
        while True:
            try:
                return self.queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self.closed.is_set():
                    return _END

    def close(self) -> None:
        self.closed.set()


def _produce(items: Iterable[Any], channel: _Channel, errors: list[BaseException]) -> None:
    """Thread body: ``items`` into ``channel``, then ``_END``; an error is kept in ``errors``."""
    try:
        for item in items:
            if not channel.put(item):
                return
    except BaseException as exc:  # handed to the main thread, which raises it
        errors.append(exc)
    finally:
        channel.put(_END)


def _consume(channel: _Channel, handle: Callable[[Any], None], errors: list[BaseException]) -> None:
    """Thread body: ``handle`` each item of ``channel`` until ``_END``; on an error, keeps it in
    ``errors`` and closes the channel so that the producer stops."""
    try:
        while (item := channel.get()) is not _END:
            handle(item)
    except BaseException as exc:  # handed to the main thread, which raises it
        errors.append(exc)
        channel.close()


class _VideoSink:
    """Draws detections on frames and encodes them into an mp4v video, opened at the first
    frame (its size is the video's)."""

    def __init__(self, path: Path, fps: float, class_names: list[str], count: bool) -> None:
        self.path = path
        self.fps = fps
        self.class_names = class_names
        self.count = count
        self.writer: cv2.VideoWriter | None = None
        self.written = 0

    def write(self, item: tuple[np.ndarray, ImageDetections]) -> None:
        frame, detections = item
        drawn = draw_detections(frame, detections, self.class_names)
        if self.count:
            drawn = draw_counts(drawn, count_classes(detections, self.class_names))
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            size = (drawn.shape[1], drawn.shape[0])
            self.writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, size
            )
            if not self.writer.isOpened():
                raise ValueError(f"{self.path}: cannot write a video here")
        self.writer.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        self.written += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def write_heatmaps(detector: Detector, paths: Sequence[Path], out: Path, echo: Echo) -> None:
    """``<out>/<stem>_heatmap.png``: each image with its object heat (anchor-based: objectness;
    anchor-free: the highest class score) blended over it."""
    for path in paths:
        image = read_rgb(path)
        canvas, sizes = pad_batch([image])
        heat = np.asarray(detector.heatmap(tf.constant(canvas), tf.constant(sizes))[0])
        write_rgb(out / f"{path.stem}_heatmap.png",
                  heatmap_overlay(image, heat, detector.spec.input_hw))
    echo(f"{len(paths)} heat map(s) written to {out}")


def fps_image(source: str | None, kind: str | None) -> np.ndarray:
    """The image ``--mode fps`` times: the first of an image or folder ``--source``, or a grey
    640x480 one without a source."""
    if source is None:
        return np.full((480, 640, 3), 128, np.uint8)
    return read_rgb(source_images(source, kind, "fps")[0])


def time_detector(detector: Detector, image: np.ndarray, repeats: int, echo: Echo) -> None:
    """Times the whole detector on ``image`` against the bare model forward pass on an already
    letterboxed input: mean of ``repeats`` runs after ``WARMUP_RUNS`` untimed ones."""
    canvas, sizes = (tf.constant(a) for a in pad_batch([image]))
    letterboxed = tf.zeros([1, *detector.spec.input_hw, 3], tf.float32)
    forward = tf.function(lambda x: detector.model(x, training=False))

    def timed(fn: Callable[[], Any]) -> float:
        for _ in range(WARMUP_RUNS):
            tf.nest.map_structure(np.asarray, fn())
        start = time.perf_counter()
        for _ in range(repeats):
            tf.nest.map_structure(np.asarray, fn())
        return (time.perf_counter() - start) / repeats

    full = timed(lambda: detector(canvas, sizes))
    bare = timed(lambda: forward(letterboxed))
    h, w = image.shape[:2]
    echo(f"image {w}x{h}, input {detector.spec.input_hw[1]}x{detector.spec.input_hw[0]}, "
         f"{repeats} runs after {WARMUP_RUNS} warm-up runs")
    echo(f"detector (letterbox + model + decode + NMS): {full * 1000:.1f} ms/image, "
         f"{1 / full:.1f} FPS")
    echo(f"model forward only:                          {bare * 1000:.1f} ms/image, "
         f"{1 / bare:.1f} FPS")


def export_run(
    detector: Detector,
    class_names: Sequence[str],
    formats: Sequence[str],
    out: Path,
    echo: Echo,
    calibration: Sequence[np.ndarray] = (),
) -> None:
    """Exports ``detector`` in each format under ``out`` (see ``utils.deploy.export``;
    ``calibration``: images for ``tflite_int8``), with the class names in
    ``<out>/classes.txt``, one per line."""
    for fmt, path in export(detector, formats, out, calibration=calibration).items():
        echo(f"{fmt:<14} {path} ({size_mib(path):.1f} MiB)")
    (out / CLASSES_FILE).write_text("".join(f"{name}\n" for name in class_names))
    echo(f"class names written to {out / CLASSES_FILE}")
