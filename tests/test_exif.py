"""EXIF orientation (issue #17.4): a photo stored sideways with an orientation tag is decoded
upright everywhere (index sizes, training and validation pipelines, the RAM cache, the detector's
file decoding and prediction's image reading), so pixels and annotated boxes agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

from tests.test_inference import SPEC, fake_model
from tests.voc_fixtures import write_split, write_xml
from utils.config import AugmentConfig, base_section
from utils.data.index import Issue, header_orientation
from utils.data.pipeline import build_dataset, decode_image, exif_orientation
from utils.data.voc import load_split
from utils.deploy.detector import Detector
from utils.deploy.sources import read_rgb

ORIENTATION_TAG = 0x0112
# The Pillow transpose that stores an upright image so that orientation ``o`` turns it back
# upright (the inverse of what ``ImageOps.exif_transpose`` does for ``o``).
STORE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
# The upright scene: 80 wide, 48 tall, one red rectangle on blue. Edges on multiples of 16 keep
# JPEG's 8x8 blocks and 2x2 colour subsampling from smearing them, whichever way it is stored.
WIDTH, HEIGHT = 80, 48
BOX = (16, 16, 48, 32)
RED, BLUE = (230, 20, 20), (20, 60, 200)
CLASSES = ["thing"]


def upright_scene() -> np.ndarray:
    image = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    image[:] = BLUE
    x1, y1, x2, y2 = BOX
    image[y1:y2, x1:x2] = RED
    return image


def both_orientations(path: Path) -> tuple[int, int]:
    """The orientation as the input graph reads it and as the dataset index (Pillow) reads it."""
    with Image.open(path) as image:
        return int(exif_orientation(tf.io.read_file(str(path)))), header_orientation(image)


def save_oriented(path: Path, upright: np.ndarray, orientation: int, **save_kw) -> None:
    """Stores ``upright`` turned so that its EXIF ``orientation`` shows it upright again."""
    stored = Image.fromarray(upright)
    if orientation != 1:
        stored = stored.transpose(STORE[orientation])
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, exif=exif.tobytes(), **save_kw)


def assert_scene(image: np.ndarray, box, tolerance: float) -> None:
    """Red inside ``box`` (x1, y1, x2, y2) and not red just around it (inside the image)."""
    x1, y1, x2, y2 = (round(float(v)) for v in box)
    inside = image[y1 + 2 : y2 - 2, x1 + 2 : x2 - 2].reshape(-1, 3).astype(float)
    np.testing.assert_allclose(inside.mean(axis=0), RED, atol=tolerance)
    h, w = image.shape[:2]
    ring = np.ones((h, w), bool)
    ring[max(y1 - 2, 0) : y2 + 2, max(x1 - 2, 0) : x2 + 2] = False
    ring[: max(y1 - 6, 0)] = ring[y2 + 6 :] = False
    ring[:, : max(x1 - 6, 0)] = ring[:, x2 + 6 :] = False
    assert ring.any()
    assert (image[ring].astype(float)[:, 0] < 128).all(), "red outside the box"


# --- reading the tag -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_is_read_and_applied_as_pillow_does(tmp_path, suffix, orientation):
    path = tmp_path / f"o{orientation}{suffix}"
    save_oriented(path, upright_scene(), orientation, quality=95)
    assert both_orientations(path) == (orientation, orientation)
    decoded = decode_image(str(path)).numpy()
    assert decoded.shape == (HEIGHT, WIDTH, 3)
    with Image.open(path) as image:
        shown = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    if suffix == ".png":
        np.testing.assert_array_equal(decoded, shown)
    assert_scene(decoded, BOX, tolerance=8)


def _big_endian_exif(orientation: int) -> bytes:
    """An EXIF block in Motorola byte order: TIFF header, IFD0 with two entries, no next IFD."""
    entries = [
        (0x010F, 2, 4, b"cam\0"),  # Make, an ASCII value that fits in the entry
        (ORIENTATION_TAG, 3, 1, orientation.to_bytes(2, "big") + b"\0\0"),
    ]
    ifd = len(entries).to_bytes(2, "big")
    for tag, kind, count, value in entries:
        ifd += tag.to_bytes(2, "big") + kind.to_bytes(2, "big") + count.to_bytes(4, "big") + value
    return b"Exif\0\0MM\0\x2a" + (8).to_bytes(4, "big") + ifd + bytes(4)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_big_endian_exif(tmp_path, suffix):
    path = tmp_path / f"motorola{suffix}"
    stored = Image.fromarray(upright_scene()).transpose(STORE[8])
    stored.save(path, exif=_big_endian_exif(8))
    with Image.open(path) as image:
        assert image.getexif()[ORIENTATION_TAG] == 8  # Pillow reads what we wrote
    assert both_orientations(path) == (8, 8)
    assert_scene(decode_image(str(path)).numpy(), BOX, tolerance=8)


WITHOUT_A_VALID_TAG = {
    "plain.jpg": None,
    "plain.png": None,
    "plain.bmp": None,
    "no_tag.jpg": b"Exif\0\0II*\0\x08\0\0\0\0\0",  # an IFD0 without entries
    "out_of_range.jpg": _big_endian_exif(9),
    "bad_offset.jpg": b"Exif\0\0II*\0\xff\xff\xff\x7f",
    "garbage.png": b"Exif\0\0garbage",
}


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow, writing the broken ones
@pytest.mark.parametrize(("name", "exif"), WITHOUT_A_VALID_TAG.items(), ids=WITHOUT_A_VALID_TAG)
def test_without_a_valid_tag_the_image_is_taken_as_stored(tmp_path, name, exif):
    path = tmp_path / name
    options = {} if exif is None else {"exif": exif}
    Image.fromarray(upright_scene()).save(path, **options)
    assert both_orientations(path) == (1, 1)
    assert decode_image(str(path)).shape == (HEIGHT, WIDTH, 3)


def test_bytes_that_are_no_image_give_orientation_1():
    for data in (b"", b"\xff\xd8", b"\xff\xd8\xff\xe1\xff\xff", b"not an image at all"):
        assert int(exif_orientation(tf.constant(data))) == 1


# --- the dataset index ---------------------------------------------------------------------------


def _voc_with_one_photo(root: Path, orientation: int, stated: tuple[int, int]) -> None:
    save_oriented(root / "VOCx" / "JPEGImages" / "photo.jpg", upright_scene(), orientation,
                  quality=95)  # fmt: skip
    box = tuple(str(v) for v in BOX)
    write_xml(root / "VOCx" / "Annotations" / "photo.xml", [("thing", box, 0)],
              size=(str(stated[0]), str(stated[1])))  # fmt: skip
    write_split(root, "VOCx/train", ["photo"])


def test_index_takes_the_upright_size_without_a_warning(tmp_path):
    _voc_with_one_photo(tmp_path, 6, stated=(WIDTH, HEIGHT))
    for _ in ("cold", "warm"):  # the orientation survives the index cache
        index = load_split(tmp_path, ["VOCx/train"], CLASSES, cache_dir=tmp_path / "cache")
        assert index.report.problems == []
        (sample,) = index.samples
        assert (sample.width, sample.height, sample.orientation) == (WIDTH, HEIGHT, 6)


def test_index_says_why_a_stored_size_differs(tmp_path):
    """An XML that states the stored (sideways) size was likely drawn on the stored pixels."""
    _voc_with_one_photo(tmp_path, 8, stated=(HEIGHT, WIDTH))
    index = load_split(tmp_path, ["VOCx/train"], CLASSES, cache=False)
    (problem,) = index.report.problems
    assert problem.issue == Issue.SIZE_FROM_IMAGE
    assert "EXIF orientation 8" in problem.detail


# --- the input pipeline --------------------------------------------------------------------------


@pytest.mark.parametrize("cache_images", [False, True])
@pytest.mark.parametrize("training", [False, True])
def test_pipeline_pixels_and_boxes_agree_on_a_rotated_jpeg(tmp_path, training, cache_images):
    _voc_with_one_photo(tmp_path, 6, stated=(WIDTH, HEIGHT))
    samples = load_split(tmp_path, ["VOCx/train"], CLASSES, cache=False).samples
    # Geometry only: no mosaic, mixup or colour jitter, and a scale that keeps the box large.
    options = base_section(AugmentConfig, mosaic=0.0, mixup=0.0, hue=0.0, sat=0.0, val=0.0,
                           scale=[0.9, 1.1], jitter=0.1)  # fmt: skip
    dataset = build_dataset(samples, input_size=(64, 96), batch_size=1, training=training,
                            augment=options, shuffle_seed=0, cache_images=cache_images)  # fmt: skip
    for images, boxes in dataset.take(3):
        assert_scene(images.numpy()[0] * 255, boxes.numpy()[0, 0, :4], tolerance=12)


# --- prediction and evaluation from files --------------------------------------------------------


def test_detector_decodes_files_upright(tmp_path):
    """``detect_files`` (get_map's path) maps boxes back to the upright image: the fake model's
    box lands at (50, 25, 100, 125) in a 100 x 200 (w x h) image, elsewhere in a 200 x 100 one."""
    detector = Detector(fake_model, SPEC, score_threshold=0.5, nms_iou=0.5, max_detections=5,
                        fold=False)  # fmt: skip
    tall = np.zeros((200, 100, 3), np.uint8)
    path = tmp_path / "tall_stored_wide.jpg"
    save_oriented(path, tall, 6)
    (detections,) = detector.detect_files([path], batch_size=1)
    np.testing.assert_allclose(detections.boxes, [[50, 25, 100, 125]], atol=1e-3)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_predict_reads_images_upright_as_the_pipeline_decodes_them(tmp_path, suffix, orientation):
    path = tmp_path / f"o{orientation}{suffix}"
    save_oriented(path, upright_scene(), orientation, quality=95)
    image = read_rgb(path)
    assert image.shape == decode_image(str(path)).shape
    assert_scene(image, BOX, tolerance=8)
