"""The generated demo datasets, in Pascal VOC layout: one generator, two presets.

It is the framework's embedded default, so training, evaluation and prediction can be tried
without downloading anything. A *preset* (``data.demo_preset``) says what the images show:

``shapes`` (the default, ``VOCdemo``): coloured shapes on muted textured backgrounds. Each class
is a distinct shape with its own hue family:

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
(lines, blobs), different for every image. Each image holds 1-8 objects.

``dense`` (``VOCdense``): many small objects of one class, ``tree``, as a stand-in for aerial
tree-crown tiles: 320x320 images holding 1-40 roundish, irregular, leaf-textured crowns (median
about 12 per image, box sides about 10-100 px, median about 36) in green to olive and brown
shades, lit from one side per image, each with a darker shadow side and a soft cast shadow, on
ground of grass and soil with roads, tracks and pale spots.

In both, objects lie fully inside the image; later objects are drawn over earlier ones, but a new
object is rejected if it would hide more than the preset's fraction of an earlier one (half for
shapes, a quarter for dense, where a new crown may also lie at most a quarter over earlier ones
and every visible box keeps at least 6 px a side), so every annotated object stays visible. A
box is the tight box of the object's *visible* pixels (alpha >= 0.5), written VOC-style as
1-based inclusive integers: pixel columns ``x0..x1`` (0-based) become ``xmin = x0 + 1``,
``xmax = x1 + 1``.

Generation is reproducible: image ``i`` is drawn from its own generator, spawned from
``SeedSequence(seed)`` with spawn key ``(i,)``, so it depends only on the preset, ``seed`` and
``i`` (not on the split sizes or on other images) and images can be generated in any order.
"""

from __future__ import annotations

import colorsys
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, get_args

import cv2
import numpy as np

from utils.config import DemoPreset
from utils.data.index import Sample
from utils.data.splits import cut_ids, write_split_files
from utils.data.voc import write_annotation

logger = logging.getLogger(__name__)

DEMO_PRESETS: tuple[str, ...] = get_args(DemoPreset)  # data.demo_preset
DEMO_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "hexagon")
DENSE_CLASSES: tuple[str, ...] = ("tree",)

_JPEG_QUALITY = 90
_POLY_SHIFT = 4  # fractional bits for cv2.fillPoly, for sub-pixel edges

_SUBDIRS = ("Annotations", "JPEGImages", "ImageSets")
_SPLITS = ("train", "val", "test")
_MARKER = ".complete"
_STEM_PREFIX = "demo_"
_FORMAT_VERSION = 2  # bump when the generator's output changes, so old datasets are rebuilt

ProgressFn = Callable[[int], None]


@dataclass(frozen=True)
class _Options:
    """What a generated dataset depends on; stored in the marker file.

    ``preset`` defaults to shapes, so a marker written before presets existed still matches.
    """

    num_train: int
    num_val: int
    num_test: int
    seed: int
    preset: str = "shapes"
    version: int = _FORMAT_VERSION


class _Renderer(Protocol):
    """Draws one image's objects; made per image, so it may hold what they share (the light)."""

    def outline(self, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        """A class index and an outline (polygon, image pixels) fully inside the image."""
        ...

    def paint(
        self,
        rng: np.random.Generator,
        image: np.ndarray,
        origin: tuple[int, int],
        coverage: np.ndarray,
        class_index: int,
    ) -> None:
        """Draws an accepted object into ``image`` (float32 BGR), in place; ``coverage`` is its
        anti-aliased 0..1 mask over the patch whose top-left pixel is ``origin`` (x, y)."""
        ...


@dataclass(frozen=True)
class Preset:
    """What one kind of generated dataset holds and how its images are drawn."""

    name: str
    classes: tuple[str, ...]
    folder: str  # the dataset folder's usual name under VOCdevkit
    default_splits: tuple[int, int, int]  # train, val, test images
    database: str  # the annotations' <source><database>
    label_colours: tuple[tuple[int, int, int], ...]  # BGR per class, for drawing boxes on images
    image_side: tuple[int, int]  # width and height are drawn independently, inclusive
    background: Callable[[np.random.Generator, int, int], np.ndarray]  # float32 BGR 0..255
    object_count: Callable[[np.random.Generator], int]  # objects wanted in an image
    renderer: Callable[[np.random.Generator, int, int], _Renderer]  # (rng, height, width)
    placement_tries: int  # candidate objects per image at most
    max_hidden: float  # a new object may hide at most this fraction of an earlier one
    max_overlap: float  # ... and lie over earlier ones with at most this fraction of itself
    min_visible_side: int  # ... and leave each visible box at least this many pixels a side
    noise: tuple[float, float]  # range of the final per-pixel noise's standard deviation


# --------------------------------------------------------------------------------------------
# Shared drawing helpers
# --------------------------------------------------------------------------------------------


def _hsv_to_bgr(hue_deg: float, sat: float, val: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb((hue_deg % 360.0) / 360.0, sat, val)
    return np.array([b, g, r], dtype=np.float32) * 255.0


def _smooth_noise(
    rng: np.random.Generator, h: int, w: int, cells: int, channels: int
) -> np.ndarray:
    """Zero-mean noise with features about ``max(h, w) / cells`` pixels wide."""
    gh = max(2, round(cells * h / max(h, w)))
    gw = max(2, round(cells * w / max(h, w)))
    small = rng.standard_normal((gh, gw, channels), dtype=np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    return big.reshape(h, w, channels)


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


def _fit_inside(rng: np.random.Generator, points: np.ndarray, h: int, w: int) -> np.ndarray:
    """``points`` (centred near 0) moved to a uniformly drawn place fully inside the image, with
    one pixel of margin so anti-aliased edges stay inside too."""
    lo, hi = points.min(axis=0), points.max(axis=0)
    x = rng.uniform(1.0 - lo[0], w - 2.0 - hi[0])
    y = rng.uniform(1.0 - lo[1], h - 2.0 - hi[1])
    return points + np.array([x, y])


# --------------------------------------------------------------------------------------------
# The shapes preset
# --------------------------------------------------------------------------------------------

# Hue (degrees) of each class's colour family, in DEMO_CLASSES order.
_CLASS_HUES: tuple[float, ...] = (0.0, 240.0, 120.0, 55.0, 300.0, 185.0)
_HUE_JITTER = 8.0  # degrees either side
_OBJECT_SAT = (0.65, 1.0)
_OBJECT_VAL = (0.6, 1.0)
_BACKGROUND_SAT = (0.0, 0.25)  # muted, so clutter is never mistaken for an object

_OBJECTS_PER_IMAGE = (1, 8)  # inclusive
_TINY_SIZE = (12.0, 24.0)  # uniform, for _TINY_FRACTION of the objects
_TINY_FRACTION = 0.12
_MIN_SIZE = 24.0  # log-uniform from here to half the shorter image side
_MAX_ROTATION = 20.0  # degrees either side


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


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    return _hsv_to_bgr(
        rng.uniform(0.0, 360.0), rng.uniform(*_BACKGROUND_SAT), rng.uniform(0.15, 0.9)
    )


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
    return _fit_inside(rng, points, h, w)


def _shapes_count(rng: np.random.Generator) -> int:
    return int(rng.integers(_OBJECTS_PER_IMAGE[0], _OBJECTS_PER_IMAGE[1] + 1))


class _ShapesRenderer:
    """Flat-coloured shapes, each class its own outline and hue family."""

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        del rng  # nothing is shared between the objects of an image
        self._h, self._w = h, w

    def outline(self, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        class_index = int(rng.integers(len(DEMO_CLASSES)))
        return class_index, _place_outline(rng, class_index, self._h, self._w)

    def paint(
        self,
        rng: np.random.Generator,
        image: np.ndarray,
        origin: tuple[int, int],
        coverage: np.ndarray,
        class_index: int,
    ) -> None:
        # Flat colour with gentle shading across the object, blended by coverage.
        hue = _CLASS_HUES[class_index] + rng.uniform(-_HUE_JITTER, _HUE_JITTER)
        colour = _hsv_to_bgr(hue, rng.uniform(*_OBJECT_SAT), rng.uniform(*_OBJECT_VAL))
        (px, py), (ph, pw) = origin, coverage.shape
        ys, xs = np.mgrid[0:ph, 0:pw].astype(np.float32)
        phi = rng.uniform(0.0, 2.0 * np.pi)
        ramp = (xs * np.cos(phi) + ys * np.sin(phi)) / max(ph, pw)
        shade = 1.0 + rng.uniform(0.0, 0.25) * (ramp - ramp.mean())
        fill = np.clip(colour * shade[..., None], 0.0, 255.0)
        region = image[py : py + ph, px : px + pw]
        region += coverage[..., None] * (fill - region)


# --------------------------------------------------------------------------------------------
# The dense preset: tree crowns seen from above
# --------------------------------------------------------------------------------------------

_CROWN_COUNT = (12.0, 0.7, 1, 40)  # log-normal median and sigma, clipped to [min, max]
_CROWN_SIZE = (38.0, 0.25, 0.38)  # median longer side (px); log sigma per image, per crown
_CROWN_SIZE_LIMITS = (9.0, 100.0)
_CROWN_ROUNDNESS = (0.8, 1.0)  # shorter / longer axis before the outline's wobble
_CROWN_WOBBLE = 0.16  # amplitude of the outline's harmonic k is at most this / sqrt(k)
_CROWN_POINTS = 56
_CROWN_HUE = (75.0, 125.0)  # the image's main (green) hue, drawn once per image
_CROWN_HUE_JITTER = 12.0
_CROWN_ODD = (0.15, 25.0, 50.0)  # fraction of olive-brown (dry) crowns, their hue range
_CROWN_SAT = (0.35, 0.75)
_CROWN_VAL = (0.25, 0.5)
_GRASS = ((55.0, 95.0), (0.25, 0.5), (0.45, 0.7))  # hue, saturation, value ranges
_SOIL = ((18.0, 40.0), (0.15, 0.45), (0.4, 0.72))
_ROAD = ((20.0, 45.0), (0.0, 0.15), (0.65, 0.85))


def _uniform_hsv(rng: np.random.Generator, ranges: tuple[tuple[float, float], ...]) -> np.ndarray:
    return _hsv_to_bgr(*(rng.uniform(*r) for r in ranges))


def _ground(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Grass and soil patches with roads, tracks and pale spots, float32 BGR in 0..255."""
    grass, soil = _uniform_hsv(rng, _GRASS), _uniform_hsv(rng, _SOIL)
    # Where soil shows through: a smooth field, shifted so some images are mostly one or other.
    field = _smooth_noise(rng, h, w, int(rng.integers(2, 6)), 1) + rng.normal(0.0, 0.8)
    mix = 1.0 / (1.0 + np.exp(-2.5 * field))
    image = soil + mix * (grass - soil)
    for cells in (4, 16, 60, 160):  # brightness from fields down to grain
        image += rng.uniform(4.0, 16.0) * _smooth_noise(rng, h, w, cells, 1)
        image += rng.uniform(0.0, 4.0) * _smooth_noise(rng, h, w, cells, 3)

    overlay = image.copy()
    for _ in range(rng.choice(3, p=(0.45, 0.4, 0.15))):  # roads and paths, edge to edge
        p0 = (-10, int(rng.integers(0, h)))
        p1 = (w + 10, int(rng.integers(0, h)))
        if rng.random() < 0.5:
            p0, p1 = (p0[1], -10), (p1[1], h + 10)
        colour = _uniform_hsv(rng, _ROAD).tolist()
        cv2.line(overlay, p0, p1, colour, int(rng.integers(4, 18)), cv2.LINE_AA)
    if rng.random() < 0.35:  # tracks or furrows: faint parallel lines
        angle = rng.uniform(0.0, np.pi)
        step = rng.uniform(8.0, 20.0)
        direction = np.array([np.cos(angle), np.sin(angle)])
        normal = np.array([-direction[1], direction[0]])
        colour = (soil * rng.uniform(0.8, 1.1)).tolist()
        for k in np.arange(-(h + w), h + w, step):
            centre = np.array([w / 2.0, h / 2.0]) + k * normal
            p0, p1 = centre - (h + w) * direction, centre + (h + w) * direction
            cv2.line(overlay, tuple(map(int, p0)), tuple(map(int, p1)), colour, 2, cv2.LINE_AA)
    for _ in range(rng.integers(0, 12)):  # pale spots: stones, bare patches
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
        colour = _uniform_hsv(rng, _ROAD).tolist()
        cv2.ellipse(overlay, centre, axes, rng.uniform(0.0, 180.0), 0.0, 360.0, colour, -1)
    alpha = float(rng.uniform(0.4, 0.8))
    image = cv2.addWeighted(overlay, alpha, image, 1.0 - alpha, 0.0)
    return cv2.GaussianBlur(image, (3, 3), 0.0)


def _crown_count(rng: np.random.Generator) -> int:
    median, sigma, low, high = _CROWN_COUNT
    return int(np.clip(round(median * np.exp(sigma * rng.standard_normal())), low, high))


class _CrownRenderer:
    """Roundish irregular crowns with leaf texture, lit from one side per image: brighter
    towards the sun, a darker shadow side and rim, and a soft shadow cast on what lies below."""

    def __init__(self, rng: np.random.Generator, h: int, w: int) -> None:
        self._h, self._w = h, w
        angle = rng.uniform(0.0, 2.0 * np.pi)
        self._sun = np.array([np.cos(angle), np.sin(angle)])  # towards the sun, image x/y
        self._shadow_strength = rng.uniform(0.25, 0.55)  # overcast .. bright sun
        self._shadow_length = rng.uniform(0.1, 0.3)  # in crown sizes
        median, image_sigma, _ = _CROWN_SIZE
        self._median = median * np.exp(image_sigma * rng.standard_normal())  # similar trees
        self._hue = rng.uniform(*_CROWN_HUE)

    def outline(self, rng: np.random.Generator) -> tuple[int, np.ndarray]:
        size = self._median * np.exp(_CROWN_SIZE[2] * rng.standard_normal())
        size = float(np.clip(size, *_CROWN_SIZE_LIMITS))
        theta = np.linspace(0.0, 2.0 * np.pi, _CROWN_POINTS, endpoint=False)
        radius = np.ones_like(theta)
        for k in range(2, 9):  # a wobbly outline: a few low harmonics, small leafy ones
            amplitude = rng.uniform(0.0, _CROWN_WOBBLE / np.sqrt(k))
            radius += amplitude * np.cos(k * theta + rng.uniform(0.0, 2.0 * np.pi))
        points = np.stack([np.cos(theta), np.sin(theta)], axis=1) * radius[:, None]
        points *= np.array([rng.uniform(*_CROWN_ROUNDNESS), 1.0])
        angle = rng.uniform(0.0, np.pi)
        cos, sin = np.cos(angle), np.sin(angle)
        points = points @ np.array([[cos, sin], [-sin, cos]])
        points *= size / float((points.max(axis=0) - points.min(axis=0)).max())
        return 0, _fit_inside(rng, points, self._h, self._w)

    def _cast_shadow(self, image: np.ndarray, origin: tuple[int, int], coverage: np.ndarray):
        """Darkens the ground (and crowns) beside the crown, away from the sun."""
        ph, pw = coverage.shape
        size = max(ph, pw)
        blur = 0.6 + 0.06 * size
        shift = -self._sun * self._shadow_length * size
        margin = int(np.ceil(np.abs(shift).max() + 3.0 * blur)) + 1
        canvas = np.zeros((ph + 2 * margin, pw + 2 * margin), np.float32)
        canvas[margin : margin + ph, margin : margin + pw] = coverage
        move = np.float32([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]]])
        canvas = cv2.warpAffine(canvas, move, canvas.shape[::-1], flags=cv2.INTER_LINEAR)
        canvas = cv2.GaussianBlur(canvas, (0, 0), blur)
        x0, y0 = origin[0] - margin, origin[1] - margin
        ix0, iy0 = max(x0, 0), max(y0, 0)
        ix1, iy1 = min(x0 + canvas.shape[1], self._w), min(y0 + canvas.shape[0], self._h)
        shade = canvas[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        image[iy0:iy1, ix0:ix1] *= (1.0 - self._shadow_strength * shade)[..., None]

    def paint(
        self,
        rng: np.random.Generator,
        image: np.ndarray,
        origin: tuple[int, int],
        coverage: np.ndarray,
        class_index: int,
    ) -> None:
        del class_index  # one class
        self._cast_shadow(image, origin, coverage)
        if rng.random() < _CROWN_ODD[0]:
            hue = rng.uniform(*_CROWN_ODD[1:])
        else:
            hue = self._hue + rng.uniform(-_CROWN_HUE_JITTER, _CROWN_HUE_JITTER)
        colour = _hsv_to_bgr(hue, rng.uniform(*_CROWN_SAT), rng.uniform(*_CROWN_VAL))

        (px, py), (ph, pw) = origin, coverage.shape
        ys, xs = np.mgrid[0:ph, 0:pw].astype(np.float32)
        mass = float(coverage.sum())
        cx, cy = float((xs * coverage).sum()) / mass, float((ys * coverage).sum()) / mass
        u, v = (xs - cx) / (pw / 2.0), (ys - cy) / (ph / 2.0)
        # A dome: brighter towards the sun, darker on the far side and towards the rim.
        lit = u * self._sun[0] + v * self._sun[1]
        shade = 1.0 + rng.uniform(0.2, 0.4) * lit - rng.uniform(0.15, 0.3) * (u * u + v * v)
        # Leaf clumps a few pixels wide, and finer grain.
        clumps = max(2, round(max(ph, pw) / rng.uniform(4.0, 7.0)))
        shade += rng.uniform(0.08, 0.18) * _smooth_noise(rng, ph, pw, clumps, 1)[..., 0]
        shade += 0.06 * _smooth_noise(rng, ph, pw, max(2, max(ph, pw) // 2), 1)[..., 0]
        fill = np.clip(colour * np.maximum(shade, 0.2)[..., None], 0.0, 255.0)
        region = image[py : py + ph, px : px + pw]
        region += coverage[..., None] * (fill - region)


# --------------------------------------------------------------------------------------------
# The presets and the generator
# --------------------------------------------------------------------------------------------

PRESETS: dict[str, Preset] = {
    "shapes": Preset(
        name="shapes",
        classes=DEMO_CLASSES,
        folder="VOCdemo",
        default_splits=(600, 150, 150),
        database="Generated demo shapes",
        label_colours=tuple(
            (255, 255, 255) if i % 2 == 0 else (0, 0, 0) for i in range(len(DEMO_CLASSES))
        ),
        image_side=(224, 448),
        background=_background,
        object_count=_shapes_count,
        renderer=_ShapesRenderer,
        placement_tries=40,
        max_hidden=0.5,
        max_overlap=1.0,
        min_visible_side=0,
        noise=(2.0, 7.0),
    ),
    "dense": Preset(
        name="dense",
        classes=DENSE_CLASSES,
        folder="VOCdense",
        default_splits=(50, 20, 20),
        database="Generated demo tree crowns",
        label_colours=((255, 0, 255),),  # magenta: far from greens and browns
        image_side=(320, 320),
        background=_ground,
        object_count=_crown_count,
        renderer=_CrownRenderer,
        placement_tries=300,
        max_hidden=0.25,
        max_overlap=0.25,
        min_visible_side=6,
        noise=(2.0, 5.0),
    ),
}
assert tuple(PRESETS) == DEMO_PRESETS


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError naming the presets if there is none."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown demo preset {name!r} (expected one of {', '.join(DEMO_PRESETS)})"
        ) from None


def _visible_sides_stay(
    owner: np.ndarray,
    patches: list[tuple[int, int, int, int]],
    hidden: np.ndarray,
    origin: tuple[int, int],
    solid: np.ndarray,
    min_side: int,
) -> bool:
    """Whether the new object (``solid`` at ``origin``) and every earlier object it would
    partly hide keep visible boxes at least ``min_side`` pixels on each side.

    ``patches`` holds each earlier object's patch as ``(x, y, width, height)``.
    """
    px, py = origin
    ph, pw = solid.shape
    rows, cols = np.flatnonzero(solid.any(axis=1)), np.flatnonzero(solid.any(axis=0))
    if min(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 < min_side:
        return False
    for j in np.flatnonzero(hidden):
        x, y, w, h = patches[j]
        mine = owner[y : y + h, x : x + w] == j
        # The overlap of the two patches, cleared where the new object covers it.
        x0, y0 = max(x, px), max(y, py)
        x1, y1 = min(x + w, px + pw), min(y + h, py + ph)
        mine[y0 - y : y1 - y, x0 - x : x1 - x] &= ~solid[y0 - py : y1 - py, x0 - px : x1 - px]
        rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
        if len(rows) == 0 or min(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 < min_side:
            return False
    return True


def _render_image(
    rng: np.random.Generator, preset: Preset
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One BGR uint8 image, its boxes (VOC 1-based inclusive ``xmin, ymin, xmax, ymax``: whole
    pixels, float32 [N, 4]) and their class indices (int32 [N])."""
    h = int(rng.integers(preset.image_side[0], preset.image_side[1] + 1))
    w = int(rng.integers(preset.image_side[0], preset.image_side[1] + 1))
    image = preset.background(rng, h, w)
    renderer = preset.renderer(rng, h, w)
    # Which object owns each pixel (-1: background); drives occlusion and the boxes.
    owner = np.full((h, w), -1, dtype=np.int16)
    areas: list[int] = []
    visible: list[int] = []
    classes: list[int] = []
    patches: list[tuple[int, int, int, int]] = []

    wanted = preset.object_count(rng)
    for _ in range(preset.placement_tries):
        if len(classes) == wanted:
            break
        class_index, outline = renderer.outline(rng)
        (px, py), coverage = _rasterize(outline)
        ph, pw = coverage.shape
        solid = coverage >= 0.5
        area = int(solid.sum())
        owner_patch = owner[py : py + ph, px : px + pw]
        hidden = np.bincount(owner_patch[solid] + 1, minlength=len(classes) + 1)[1:]
        if np.any(np.asarray(visible) - hidden < (1.0 - preset.max_hidden) * np.asarray(areas)):
            continue
        if preset.max_overlap < 1.0 and hidden.sum() > preset.max_overlap * area:
            continue
        if preset.min_visible_side and not _visible_sides_stay(
            owner, patches, hidden, (px, py), solid, preset.min_visible_side
        ):
            continue
        for j, hd in enumerate(hidden):
            visible[j] -= int(hd)
        owner_patch[solid] = len(classes)
        areas.append(area)
        visible.append(area)
        classes.append(class_index)
        patches.append((px, py, pw, ph))
        renderer.paint(rng, image, (px, py), coverage, class_index)

    image += rng.uniform(*preset.noise) * rng.standard_normal((h, w, 3), dtype=np.float32)
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


def _write_sample(
    out_dir: Path, folder: str, stem: str, seed: np.random.SeedSequence, preset: Preset
) -> None:
    pixels, boxes, classes = _render_image(np.random.default_rng(seed), preset)
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
    write_annotation(path, sample, preset.classes, folder=folder, database=preset.database)


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


def split_sizes(
    preset: str, num_train: int | None, num_val: int | None, num_test: int | None
) -> tuple[int, int, int]:
    """The train, val and test sizes asked for, those not given (None) the preset's defaults."""
    given = (num_train, num_val, num_test)
    defaults = get_preset(preset).default_splits
    return tuple(d if n is None else n for n, d in zip(given, defaults, strict=True))


def _options(
    preset: str, num_train: int | None, num_val: int | None, num_test: int | None, seed: int
) -> _Options:
    """The options asked for, split sizes not given taking the preset's defaults."""
    train, val, test = split_sizes(preset, num_train, num_val, num_test)
    return _Options(num_train=train, num_val=val, num_test=test, seed=seed, preset=preset)


def generate_demo_dataset(
    dataset_dir: Path,
    *,
    preset: DemoPreset = "shapes",
    num_train: int | None = None,
    num_val: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Path:
    """Writes a demo dataset of ``preset`` to ``dataset_dir`` (replacing an earlier demo dataset
    there). Split sizes not given take the preset's defaults (shapes 600/150/150, dense
    50/20/20).

    The files are written to a sibling ``<name>.partial`` directory, the ``.complete`` marker
    last, and the directory is then renamed into place, so an interrupted run never looks
    complete. ``progress``, if given, is called with 1 after each image. Returns ``dataset_dir``.
    Raises ``FileExistsError`` if ``dataset_dir`` holds files this generator did not write, and
    ``ValueError`` for an unknown preset or bad split sizes.
    """
    options = _options(preset, num_train, num_val, num_test, seed)
    spec = get_preset(preset)
    counts = dict(zip(_SPLITS, (options.num_train, options.num_val, options.num_test), strict=True))
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
        _write_sample(work_dir, dataset_dir.name, stem, image_seed, spec)
        if progress is not None:
            progress(1)

    write_split_files(work_dir, cut_ids(stems, options.num_train, options.num_val))

    (work_dir / _MARKER).write_text(json.dumps(asdict(options), sort_keys=True), encoding="utf-8")
    if dataset_dir.exists():
        shutil.rmtree(dataset_dir)
    work_dir.rename(dataset_dir)
    logger.info("Wrote the %s demo dataset (%s) to %s", preset, counts, dataset_dir)
    return dataset_dir


def ensure_demo_dataset(
    dataset_dir: Path,
    *,
    preset: DemoPreset = "shapes",
    num_train: int | None = None,
    num_val: int | None = None,
    num_test: int | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Path:
    """Generates the demo dataset unless a complete one with the same options is there.

    A dataset without the ``.complete`` marker (an interrupted run, or one deleted by hand) or
    made with other options (another preset, split sizes or seed) or an older generator is
    rebuilt. Split sizes not given take the preset's defaults. Returns ``dataset_dir``.
    """
    dataset_dir = Path(dataset_dir)
    wanted = _options(preset, num_train, num_val, num_test, seed)
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
        preset=preset,
        num_train=wanted.num_train,
        num_val=wanted.num_val,
        num_test=wanted.num_test,
        seed=seed,
        progress=progress,
    )
