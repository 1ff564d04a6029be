"""The generated demo dataset: coloured shapes on textured backgrounds, in Pascal VOC layout.

It is the framework's embedded default, so training, evaluation and prediction can be tried
without downloading anything. Each class is a distinct shape with its own hue family:

=========  ==========
class      hue (deg)
=========  ==========
circle     0 (red)
square     240 (blue)
triangle   120 (green)
star       55 (yellow)
cross      300 (magenta)
hexagon    185 (cyan)
=========  ==========

Backgrounds are muted (low saturation) gradients, multi-scale smoothed noise and random clutter
(lines, blobs), different for every image. Each image holds 1-8 objects, fully inside the image;
later objects are drawn over earlier ones, but a new object is rejected if it would hide more than
half of an earlier one, so every annotated object stays visible. A box is the tight box of the
object's *visible* pixels (alpha >= 0.5), written VOC-style as 1-based inclusive integers: pixel
columns ``x0..x1`` (0-based) become ``xmin = x0 + 1``, ``xmax = x1 + 1``.

Generation is reproducible: image ``i`` is drawn from its own generator, spawned from
``SeedSequence(seed)`` with spawn key ``(i,)``, so it depends only on ``seed`` and ``i`` (not on
the split sizes or on other images) and images can be generated in any order.
"""

from __future__ import annotations

import colorsys
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from utils.data.index import Sample
from utils.data.splits import cut_ids, write_split_files
from utils.data.voc import write_annotation

logger = logging.getLogger(__name__)

DEMO_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "hexagon")

# Hue (degrees) of each class's colour family, in DEMO_CLASSES order.
_CLASS_HUES: tuple[float, ...] = (0.0, 240.0, 120.0, 55.0, 300.0, 185.0)
_HUE_JITTER = 8.0  # degrees either side
_OBJECT_SAT = (0.65, 1.0)
_OBJECT_VAL = (0.6, 1.0)
_BACKGROUND_SAT = (0.0, 0.25)  # muted, so clutter is never mistaken for an object

_IMAGE_SIDE = (224, 448)  # width and height are drawn independently, inclusive
_OBJECTS_PER_IMAGE = (1, 8)  # inclusive
_TINY_SIZE = (12.0, 24.0)  # uniform, for _TINY_FRACTION of the objects
_TINY_FRACTION = 0.12
_MIN_SIZE = 24.0  # log-uniform from here to half the shorter image side
_MAX_ROTATION = 20.0  # degrees either side
_MAX_HIDDEN = 0.5  # a new object may hide at most this fraction of an earlier one
_PLACEMENT_TRIES = 40
_JPEG_QUALITY = 90
_POLY_SHIFT = 4  # fractional bits for cv2.fillPoly, for sub-pixel edges

_SUBDIRS = ("Annotations", "JPEGImages", "ImageSets")
_SPLITS = ("train", "val", "test")
_DATABASE = "Generated demo shapes"  # the annotations' <source><database>
_MARKER = ".complete"
_STEM_PREFIX = "demo_"
_FORMAT_VERSION = 2  # bump when the generator's output changes, so old datasets are rebuilt

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class _Options:
    """What a generated dataset depends on; stored in the marker file."""

    num_train: int
    num_val: int
    num_test: int
    seed: int
    version: int = _FORMAT_VERSION


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


def _regular_polygon(n: int, start_deg: float) -> np.ndarray:
    angles = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    outer = _regular_polygon(2 * points, -90.0)
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return outer * radii[:, None]


def _cross(arm: float = 1.0 / 3.0) -> np.ndarray:
    a, b = arm, 1.0
    return np.array(
        [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a),
         (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)],
        dtype=np.float64,
    )  # fmt: skip


def _unit_shape(points: np.ndarray) -> np.ndarray:
    """Centres a polygon on its box and scales the box's longer side to 1."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    return (points - (lo + hi) / 2.0) / float((hi - lo).max())


# Unit outlines (longer box side 1, centred), in DEMO_CLASSES order; y points down.
_SHAPES: tuple[np.ndarray, ...] = tuple(
    _unit_shape(p)
    for p in (
        _regular_polygon(64, 0.0),
        _regular_polygon(4, 45.0),
        _regular_polygon(3, -90.0),
        _star(),
        _cross(),
        _regular_polygon(6, 0.0),
    )
)
assert len(_SHAPES) == len(_CLASS_HUES) == len(DEMO_CLASSES)


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _hsv_to_bgr(hue_deg: float, sat: float, val: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, sat, val)
    return np.array([b, g, r], dtype=np.float32) * 255.0


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv_to_bgr(
        rng.uniform(0.0, 360.0), rng.uniform(*_BACKGROUND_SAT), rng.uniform(0.15, 0.9)
    )


def _smooth_noise(
    rng: np.random.Generator, h: int, w: int, cells: int, channels: int
) -> np.ndarray:
    """Zero-mean noise with features about ``max(h, w) / cells`` pixels wide."""
    gh = max(2, round(cells * h / max(h, w)))
    gw = max(2, round(cells * w / max(h, w)))
    small = rng.standard_normal((gh, gw, channels), dtype=np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return big.reshape(h, w, channels)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A muted textured background, float32 BGR in 0..255."""
    # Linear gradient between two muted colours, in a random direction.
    theta = rng.uniform(0.0, 2.0 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xs * np.cos(theta) + ys * np.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    c0, c1 = _muted_colour(rng), _muted_colour(rng)
    image = c0 + t[..., None] * (c1 - c0)

    # Noise at several scales: mostly brightness, with a little colour so it stays muted.
    for cells in (3, 10, 40):
        image += rng.uniform(0.0, 22.0) * _smooth_noise(rng, h, w, cells, 1)
        image += rng.uniform(0.0, 5.0) * _smooth_noise(rng, h, w, cells, 3)

    # Clutter: lines and blobs in muted colours, blended in with one alpha.
    overlay = image.copy()
    for _ in range(rng.integers(0, 7)):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        colour = _muted_colour(rng).tolist()
        cv2.line(overlay, p0, p1, colour, int(rng.integers(1, 7)), cv2.LINE_AA)
    for _ in range(rng.integers(0, 5)):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(4, w // 4)), int(rng.integers(4, h // 4)))
        colour = _muted_colour(rng).tolist()
        angle = float(rng.uniform(0.0, 180.0))
        cv2.ellipse(overlay, centre, axes, angle, 0.0, 360.0, colour, -1, cv2.LINE_AA)
    alpha = float(rng.uniform(0.3, 0.8))
    image = cv2.addWeighted(overlay, alpha, image, 1.0 - alpha, 0.0)
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (3, 3), 0.0)
    return image


def _object_size(rng: np.random.Generator, h: int, w: int) -> float:
    if rng.random() < _TINY_FRACTION:
        return float(rng.uniform(*_TINY_SIZE))
    return float(np.exp(rng.uniform(np.log(_MIN_SIZE), np.log(min(h, w) / 2.0))))


def _place_outline(rng: np.random.Generator, class_index: int, h: int, w: int) -> np.ndarray:
    """A randomly sized, rotated and positioned outline in image pixels, fully inside the image.

    Sizes are at most half the shorter side, so every outline fits with room to move.
    """
    size = _object_size(rng, h, w)
    stretch = rng.uniform(0.85, 1.15)
    angle = np.deg2rad(rng.uniform(-_MAX_ROTATION, _MAX_ROTATION))
    cos, sin = np.cos(angle), np.sin(angle)
    points = _SHAPES[class_index] * np.array([stretch, 1.0 / stretch])
    points = points @ np.array([[cos, sin], [-sin, cos]])
    # Scale after stretching and rotating, so that ``size`` is the longer side of the box.
    points *= size / float((points.max(axis=0) - points.min(axis=0)).max())
    lo, hi = points.min(axis=0), points.max(axis=0)
    # One pixel of margin so anti-aliased edges stay inside too.
    x = rng.uniform(1.0 - lo[0], w - 2.0 - hi[0])
    y = rng.uniform(1.0 - lo[1], h - 2.0 - hi[1])
    return points + np.array([x, y])


def _rasterize(outline: np.ndarray) -> tuple[tuple[int, int], np.ndarray]:
    """Anti-aliased coverage (float32 0..1) of a polygon over its own pixel patch.

    Returns the patch's top-left ``(x, y)`` and the coverage array.
    """
    x0, y0 = np.floor(outline.min(axis=0)).astype(int)
    x1, y1 = np.ceil(outline.max(axis=0)).astype(int)
    patch = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    # cv2 puts pixel centres at integer coordinates; the outline treats them as cell corners.
    local = np.round((outline - [x0 + 0.5, y0 + 0.5]) * (1 << _POLY_SHIFT)).astype(np.int32)
    cv2.fillPoly(patch, [local], 255, cv2.LINE_AA, _POLY_SHIFT)
    return (int(x0), int(y0)), patch.astype(np.float32) / 255.0


def _render_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One BGR uint8 image, its boxes (VOC 1-based inclusive ``xmin, ymin, xmax, ymax``: whole
    pixels, float32 [N, 4]) and their class indices (int32 [N])."""
    h = int(rng.integers(_IMAGE_SIDE[0], _IMAGE_SIDE[1] + 1))
    w = int(rng.integers(_IMAGE_SIDE[0], _IMAGE_SIDE[1] + 1))
    image = _background(rng, h, w)
    # Which object owns each pixel (-1: background); drives occlusion and the boxes.
    owner = np.full((h, w), -1, dtype=np.int16)
    areas: list[int] = []
    visible: list[int] = []
    classes: list[int] = []

    wanted = int(rng.integers(_OBJECTS_PER_IMAGE[0], _OBJECTS_PER_IMAGE[1] + 1))
    for _ in range(_PLACEMENT_TRIES):
        if len(classes) == wanted:
            break
        class_index = int(rng.integers(len(DEMO_CLASSES)))
        outline = _place_outline(rng, class_index, h, w)
        (px, py), coverage = _rasterize(outline)
        ph, pw = coverage.shape
        solid = coverage >= 0.5
        area = int(solid.sum())
        owner_patch = owner[py : py + ph, px : px + pw]
        hidden = np.bincount(owner_patch[solid] + 1, minlength=len(classes) + 1)[1:]
        if np.any(np.asarray(visible) - hidden < (1.0 - _MAX_HIDDEN) * np.asarray(areas)):
            continue
        for j, hd in enumerate(hidden):
            visible[j] -= int(hd)
        owner_patch[solid] = len(classes)
        areas.append(area)
        visible.append(area)
        classes.append(class_index)

        # Flat colour with gentle shading across the object, blended by coverage.
        hue = _CLASS_HUES[class_index] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
        colour = _hsv_to_bgr(hue, rng.uniform(*_OBJECT_SAT), rng.uniform(*_OBJECT_VAL))
        ys, xs = np.mgrid[0:ph, 0:pw].astype(np.float32)
        phi = rng.uniform(0.0, 2.0 * np.pi)
        ramp = (xs * np.cos(phi) + ys * np.sin(phi)) / max(ph, pw)
        shade = 1.0 + rng.uniform(0.0, 0.25) * (ramp - ramp.mean())
        fill = np.clip(colour * shade[..., None], 0.0, 255.0)
        region = image[py : py + ph, px : px + pw]
        region += coverage[..., None] * (fill - region)

    image += rng.uniform(2.0, 7.0) * rng.standard_normal((h, w, 3), dtype=np.float32)
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)

    boxes = np.zeros((len(classes), 4), np.float32)
    for index in range(len(classes)):
        ys, xs = np.nonzero(owner == index)
        boxes[index] = xs.min() + 1, ys.min() + 1, xs.max() + 1, ys.max() + 1
    return pixels, boxes, np.asarray(classes, np.int32)


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _image_seeds(seed: int, count: int) -> list[np.random.SeedSequence]:
    return np.random.SeedSequence(seed).spawn(count)


def _write_sample(out_dir: Path, folder: str, stem: str, seed: np.random.SeedSequence) -> None:
    pixels, boxes, classes = _render_image(np.random.default_rng(seed))
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {stem}.jpg")
    image_path = out_dir / "JPEGImages" / f"{stem}.jpg"
    image_path.write_bytes(encoded.tobytes())
    h, w = pixels.shape[:2]
    sample = Sample(
        image_path=image_path,
        image_id=f"{folder}/{stem}",
        width=w,
        height=h,
        boxes=boxes,
        classes=classes,
        difficult=np.zeros(len(classes), bool),
    )
    path = out_dir / "Annotations" / f"{stem}.xml"
    write_annotation(path, sample, DEMO_CLASSES, folder=folder, database=_DATABASE)


def _is_generated_file(relative: Path) -> bool:
    """Whether a path inside a dataset directory is one this module writes."""
    parts = relative.parts
    if parts in ((_MARKER,), *((d,) for d in _SUBDIRS), ("ImageSets", "Main")):
        return True
    if len(parts) == 2 and parts[0] in ("Annotations", "JPEGImages"):
        return parts[1].startswith(_STEM_PREFIX)
    return len(parts) == 3 and parts[:2] == ("ImageSets", "Main") and relative.suffix == ".txt"


def _check_replaceable(dataset_dir: Path) -> None:
    """Refuses to delete a directory holding anything the generator did not write."""
    if not dataset_dir.exists():
        return
    if not dataset_dir.is_dir():
        raise FileExistsError(f"{dataset_dir} exists and is not a directory")
    foreign = [
        p for p in dataset_dir.rglob("*") if not _is_generated_file(p.relative_to(dataset_dir))
    ]
    if foreign:
        raise FileExistsError(
            f"{dataset_dir} holds files the demo generator did not write (e.g. {foreign[0]}); "
            "refusing to replace it, choose another directory"
        )


def _read_marker(dataset_dir: Path) -> _Options | None:
    try:
        return _Options(**json.loads((dataset_dir / _MARKER).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def generate_demo_dataset(
    dataset_dir: Path,
    *,
    num_train: int = 600,
    num_val: int = 150,
    num_test: int = 150,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Path:
    """Writes the demo dataset to ``dataset_dir`` (replacing an earlier demo dataset there).

    The files are written to a sibling ``<name>.partial`` directory, the ``.complete`` marker
    last, and the directory is then renamed into place, so an interrupted run never looks
    complete. ``progress``, if given, is called with 1 after each image. Returns ``dataset_dir``.
    Raises ``FileExistsError`` if ``dataset_dir`` holds files this generator did not write.
    """
    options = _Options(num_train, num_val, num_test, seed)
    counts = dict(zip(_SPLITS, (num_train, num_val, num_test), strict=True))
    if any(n < 0 for n in counts.values()) or sum(counts.values()) == 0:
        raise ValueError(f"split sizes must be >= 0 with at least one image, got {counts}")
    dataset_dir = Path(dataset_dir)
    _check_replaceable(dataset_dir)

    work_dir = dataset_dir.with_name(dataset_dir.name + ".partial")
    if work_dir.exists():
        shutil.rmtree(work_dir)
    (work_dir / "JPEGImages").mkdir(parents=True)

    stems = [f"{_STEM_PREFIX}{i:06d}" for i in range(sum(counts.values()))]
    for stem, image_seed in zip(stems, _image_seeds(seed, len(stems)), strict=True):
        _write_sample(work_dir, dataset_dir.name, stem, image_seed)
        if progress is not None:
            progress(1)

    write_split_files(work_dir, cut_ids(stems, num_train, num_val))

    (work_dir / _MARKER).write_text(json.dumps(asdict(options), sort_keys=True), encoding="utf-8")
    if dataset_dir.exists():
        shutil.rmtree(dataset_dir)
    work_dir.rename(dataset_dir)
    logger.info("Wrote the demo dataset (%s) to %s", counts, dataset_dir)
    return dataset_dir


def ensure_demo_dataset(
    dataset_dir: Path,
    *,
    num_train: int = 600,
    num_val: int = 150,
    num_test: int = 150,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Path:
    """Generates the demo dataset unless a complete one with the same options is there.

    A dataset without the ``.complete`` marker (an interrupted run, or one deleted by hand) or
    made with other options or an older generator is rebuilt. Returns ``dataset_dir``.
    """
    dataset_dir = Path(dataset_dir)
    wanted = _Options(num_train, num_val, num_test, seed)
    found = _read_marker(dataset_dir)
    if found == wanted:
        logger.debug("Demo dataset at %s is complete", dataset_dir)
        return dataset_dir
    if found is None:
        logger.info("No complete demo dataset at %s; generating it", dataset_dir)
    else:
        logger.info(
            "Demo dataset at %s was made with %s, %s is wanted; regenerating it",
            dataset_dir, asdict(found), asdict(wanted),
        )  # fmt: skip
    return generate_demo_dataset(
        dataset_dir,
        num_train=num_train,
        num_val=num_val,
        num_test=num_test,
        seed=seed,
        progress=progress,
    )
