"""The prediction loop and its sources, with a stand-in detector (no model needed)."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from tqdm import tqdm

from utils.deploy.predictor import Predictor, format_counts
from utils.deploy.sources import read_rgb, source_images, source_kind, write_rgb
from utils.eval.metrics import ImageDetections

NAMES = ["dog", "cat"]


class FixedDetector:
    """Finds the same detections in every image."""

    def __init__(self, detections: ImageDetections):
        self.detections = detections

    def detect(self, images):
        return [self.detections for _ in images]


def predictor(detections: ImageDetections, out: Path, lines: list[str], **options) -> Predictor:
    settings = dict(crop=True, count=False, batch=4, frames=0) | options
    return Predictor(FixedDetector(detections), NAMES, out, echo=lines.append, progress=tqdm,
                     **settings)


def test_crop_files_name_the_detection_they_show(tmp_path):
    # Detection 0 (a dog) covers no whole pixel and gives no crop; detection 1 (a cat) must not
    # be saved under the dog's index or name.
    image = np.zeros((40, 60, 3), np.uint8)
    image[10:30, 20:50] = 200
    write_rgb(tmp_path / "street.png", image)
    found = ImageDetections(np.array([[5.0, 5.0, 5.0, 9.0], [20.0, 10.0, 50.0, 30.0]]),
                            np.array([0.9, 0.8]), np.array([0, 1]))
    lines: list[str] = []
    out = tmp_path / "out"
    predictor(found, out, lines).run(str(tmp_path / "street.png"), "image")
    assert sorted(p.name for p in (out / "crops").iterdir()) == ["street_001_cat.png"]
    crop = read_rgb(out / "crops" / "street_001_cat.png")
    np.testing.assert_array_equal(crop, image[10:30, 20:50])
    # the printed list numbers detections the same way: line 1 is the cat
    assert lines[1].startswith("cat 0.800 [20.0, 10.0, 50.0, 30.0]")
    assert cv2.imread(str(out / "street.png")).shape == image.shape


def test_folder_counts_and_totals(tmp_path):
    for name in ("a.png", "b.jpg"):
        write_rgb(tmp_path / "in" / name, np.full((16, 24, 3), 90, np.uint8))
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    found = ImageDetections(np.array([[1.0, 1.0, 8.0, 8.0]] * 3), np.array([0.9, 0.8, 0.7]),
                            np.array([1, 0, 1]))
    lines: list[str] = []
    predictor(found, tmp_path / "out", lines, crop=False, count=True, batch=1).run(
        str(tmp_path / "in"), "folder")
    assert lines == [f"total: {format_counts({'cat': 4, 'dog': 2})}",
                     f"2 annotated image(s) written to {tmp_path / 'out'}"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.jpg"]


def test_sources_name_the_mistake(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    write_rgb(tmp_path / "one.png", np.zeros((4, 4, 3), np.uint8))
    assert source_kind("0") == "camera"
    assert source_kind(str(tmp_path / "one.png")) == "image"
    assert source_kind(str(tmp_path / "empty")) == "folder"
    with pytest.raises(ValueError, match="not an image"):
        source_kind(str(tmp_path / "notes.txt"))
    with pytest.raises(ValueError, match="no images in this folder"):
        source_images(str(tmp_path / "empty"), "folder", "heatmap")
    with pytest.raises(ValueError, match="--mode heatmap takes an image or a folder"):
        source_images("0", "camera", "heatmap")
    assert source_images(str(tmp_path / "one.png"), "image", "fps") == [tmp_path / "one.png"]


# --- videos: the threaded decode -> detect -> draw/encode loop -------------------------------

STRIPES = 8  # a frame's number in binary, one black or white stripe per bit, top half


def numbered_frame(number: int, height: int = 96, width: int = 128) -> np.ndarray:
    frame = np.full((height, width, 3), 128, np.uint8)
    stripe = width // STRIPES
    for bit in range(STRIPES):
        frame[: height // 2, bit * stripe : (bit + 1) * stripe] = 255 * ((number >> bit) & 1)
    return frame


def frame_number(frame: np.ndarray) -> int:
    """Inverse of :func:`numbered_frame` on a lossy-encoded copy: each stripe's centre mean."""
    height, width = frame.shape[:2]
    stripe = width // STRIPES
    centres = [frame[4 : height // 2 - 4, b * stripe + 4 : (b + 1) * stripe - 4].mean()
               for b in range(STRIPES)]
    return sum(1 << bit for bit, mean in enumerate(centres) if mean > 128)


def video_numbers(path: Path) -> list[int]:
    capture = cv2.VideoCapture(str(path))
    numbers = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        numbers.append(frame_number(frame))
    capture.release()
    return numbers


# Drawn in the bottom half, below the stripes.
BOTTOM_BOX = ImageDetections(np.array([[10.0, 60.0, 60.0, 90.0]]), np.array([0.9]), np.array([0]))


@pytest.mark.parametrize("limit", [0, 7])
def test_video_keeps_every_frame_in_order(tmp_path, limit):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (128, 96))
    for i in range(40):
        writer.write(numbered_frame(i))
    writer.release()
    assert video_numbers(video) == list(range(40))  # the pattern survives mp4v
    lines: list[str] = []
    out = tmp_path / "out"
    predictor(BOTTOM_BOX, out, lines, crop=False, count=True, frames=limit).run(
        str(video), "video")
    expected = list(range(limit or 40))
    assert video_numbers(out / "clip.mp4") == expected
    assert lines == [f"{len(expected)} annotated frames written to {out / 'clip.mp4'}"]


class ScriptedCapture:
    """A capture whose ``read`` plays a script: a frame number, ``None`` (a failed read), a
    frame of another size, or an exception to raise."""

    def __init__(self, script):
        self.script = list(script)
        self.released = False

    def read(self):
        if not self.script:
            return False, None
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        if step is None:
            return False, None
        if isinstance(step, np.ndarray):
            return True, step
        return True, numbered_frame(step)

    def get(self, prop):
        return 10.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self):
        self.released = True


def test_bad_frames_are_skipped_and_counted(tmp_path):
    odd_size = np.zeros((50, 50, 3), np.uint8)
    empty = np.zeros((0, 0, 3), np.uint8)  # read "ok" but nothing to convert: cv2.error
    script = [0, None, 1, odd_size, 2, empty, None, 3, 4]
    capture = ScriptedCapture(script)
    lines: list[str] = []
    out = tmp_path / "out"
    predictor(BOTTOM_BOX, out, lines, crop=False).stream(capture, "cam.mp4", None)
    assert video_numbers(out / "cam.mp4") == [0, 1, 2, 3, 4]
    assert lines == ["cam.mp4: skipped 4 unreadable frame(s)",
                     f"5 annotated frames written to {out / 'cam.mp4'}"]
    assert capture.released


def test_reader_and_writer_errors_end_the_stream_with_that_error(tmp_path):
    # an unexpected reader error reaches the caller after the frames before it are written
    capture = ScriptedCapture([0, 1, RuntimeError("camera unplugged")])
    with pytest.raises(RuntimeError, match="camera unplugged"):
        predictor(BOTTOM_BOX, tmp_path / "out", [], crop=False).stream(capture, "a.mp4", None)
    assert capture.released
    assert video_numbers(tmp_path / "out" / "a.mp4") == [0, 1]
    # a writer that cannot start stops the reader and the detector instead of waiting forever
    (tmp_path / "file").write_text("not a folder")
    capture = ScriptedCapture(range(100))
    with pytest.raises((OSError, ValueError)):
        predictor(BOTTOM_BOX, tmp_path / "file", [], crop=False).stream(capture, "b.mp4", None)
    assert capture.released and len(capture.script) > 50
