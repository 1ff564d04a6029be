"""What ``predict.py --source`` names: an image, a folder of images, a video or a camera, and
reading and writing RGB images and video frames.

Every user mistake is a ``ValueError`` whose message names ``--source`` or ``--mode`` and the
problem, for the front door to print as one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
# Failed reads in a row that end a stream: the end of a video file, or a camera that is gone.
# Fewer, followed by a good frame, are bad frames, skipped.
MAX_FAILED_READS = 5


class Capture(Protocol):
    """What the prediction loop uses of a ``cv2.VideoCapture``."""

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def get(self, prop: int) -> float: ...

    def release(self) -> None: ...


def source_kind(source: str) -> str:
    """``camera``, ``video``, ``image`` or ``folder``; ValueError for anything else."""
    if source.isdigit():
        return "camera"
    path = Path(source)
    if path.is_dir():
        return "folder"
    if not path.is_file():
        raise ValueError(f"--source {source}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    raise ValueError(f"--source {source}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))}) "
                     f"or video ({', '.join(sorted(VIDEO_SUFFIXES))})")


def folder_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def source_images(source: str, kind: str, mode: str) -> list[Path]:
    """The image files of an image or folder ``--source`` (at least one); ValueError naming
    ``--mode`` for a video or camera, or naming the folder when it holds no image."""
    if kind == "image":
        return [Path(source)]
    if kind != "folder":
        raise ValueError(f"--mode {mode} takes an image or a folder of images as --source")
    paths = folder_images(Path(source))
    if not paths:
        raise ValueError(f"--source {source}: no images in this folder")
    return paths


def open_capture(source: str, kind: str) -> tuple[Capture, str, int | None]:
    """An opened video file or camera: ``(capture, output file name, frame count or None)``."""
    if kind == "video":
        capture = cv2.VideoCapture(source)
        if not capture.isOpened():
            raise ValueError(f"--source {source}: cannot open this video")
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        return capture, f"{Path(source).stem}.mp4", frames
    capture = cv2.VideoCapture(int(source))
    if not capture.isOpened():
        raise ValueError(f"--source {source}: camera {source} cannot be opened")
    return capture, f"camera{source}.mp4", None


def read_rgb(path: Path) -> np.ndarray:
    """An image file as RGB uint8 ``[H, W, 3]``, upright: ``imread`` applies the EXIF
    orientation (without ``IMREAD_IGNORE_ORIENTATION``) as the training pipeline's
    ``decode_image`` does, so drawn boxes and crops land where the detector found them."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path}: cannot read this image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def write_rgb(path: Path, image: np.ndarray) -> None:
    """Writes RGB uint8 ``image`` to ``path`` (format by suffix), making its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise ValueError(f"{path}: cannot write an image here")


class FrameReader:
    """The frames of a capture as RGB uint8 arrays, in order, at most ``limit`` (0: all).

    A frame that cannot be read or decoded, or whose size differs from the first frame's, is
    skipped and counted in ``skipped``; the stream ends after ``MAX_FAILED_READS`` failed reads
    in a row (those at the end of a video are not counted).
    """

    def __init__(self, capture: Capture, limit: int = 0) -> None:
        self.capture = capture
        self.limit = limit
        self.skipped = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        count, failed, shape = 0, 0, None
        while failed < MAX_FAILED_READS and not (self.limit and count >= self.limit):
            frame = self._read()
            if frame is None or (shape is not None and frame.shape != shape):
                failed += 1
                continue
            self.skipped += failed
            count, failed, shape = count + 1, 0, frame.shape
            yield frame

    def _read(self) -> np.ndarray | None:
        try:
            ok, frame = self.capture.read()
            return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if ok else None
        except cv2.error:  # a frame OpenCV cannot convert (empty, wrong channels): a bad frame
            return None
