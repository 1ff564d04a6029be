"""Drawing detections on images: boxes, labels, crops, objectness heat maps.

Labels use DejaVu Sans, the font matplotlib ships, so no font file is committed and every
machine draws the same text. Sizes follow the image (a label is about 2.8% of its mean side), a
class keeps its colour across images and runs, and a label never leaves the canvas.
"""

from __future__ import annotations

import colorsys
import math
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from utils.eval.metrics import ImageDetections
from utils.letterbox import letterbox_params

FONT_PATH = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
_GOLDEN = 0.618033988749895
_MIN_FONT = 8


def class_colour(class_id: int) -> tuple[int, int, int]:
    """RGB colour of a class: hues stepped by the golden ratio, so neighbours differ and a
    class's colour does not depend on how many classes there are."""
    hue = (class_id * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


@lru_cache(maxsize=32)
def label_font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans at ``size`` pixels."""
    return ImageFont.truetype(str(FONT_PATH), size)


def style_for(width: int, height: int) -> tuple[int, int]:
    """``(font size, box line width)`` in pixels for an image of this size."""
    side = math.sqrt(width * height)
    return max(_MIN_FONT, round(0.028 * side)), max(1, round(side / 320))


def place_label(
    box: Sequence[float], text_wh: tuple[int, int], image_wh: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Where a label of ``text_wh`` goes for an xyxy ``box``: on top of the box's top-left
    corner, or just inside the box when there is no room above; shifted left/up to stay inside
    the image. Returns the label rectangle ``(x1, y1, x2, y2)``."""
    tw, th = text_wh
    width, height = image_wh
    x = min(max(int(box[0]), 0), max(width - tw, 0))
    y = int(box[1]) - th
    if y < 0:
        y = max(int(box[1]), 0)
    y = min(y, max(height - th, 0))
    return x, y, x + tw, y + th


def _fitting_font(text: str, size: int, width: int) -> tuple[ImageFont.FreeTypeFont, int, int]:
    """The font at ``size`` or smaller so that ``text`` plus padding fits ``width``."""
    while True:
        font = label_font(size)
        left, top, right, bottom = font.getbbox(text)
        pad = max(1, size // 5)
        tw, th = right - left + 2 * pad, bottom - min(top, 0) + 2 * pad
        if tw <= width or size <= _MIN_FONT:
            return font, tw, th
        size = max(_MIN_FONT, int(size * width / tw))


def _text_colour(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def draw_detections(
    image: np.ndarray, detections: ImageDetections, class_names: Sequence[str]
) -> np.ndarray:
    """A copy of RGB uint8 ``image`` with each detection's box and ``"name 0.87"`` label.

    Lower scores are drawn first, so the most confident box and label end up on top.
    """
    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    font_size, line = style_for(width, height)
    for i in np.argsort(detections.scores, kind="stable"):
        cls = int(detections.classes[i])
        colour = class_colour(cls)
        x1, y1, x2, y2 = (float(v) for v in detections.boxes[i])
        draw.rectangle(
            [round(x1), round(y1), max(round(x2) - 1, round(x1)), max(round(y2) - 1, round(y1))],
            outline=colour,
            width=line,
        )
        text = f"{class_names[cls]} {float(detections.scores[i]):.2f}"
        font, tw, th = _fitting_font(text, font_size, width)
        lx1, ly1, lx2, ly2 = place_label((x1, y1, x2, y2), (tw, th), (width, height))
        draw.rectangle([lx1, ly1, lx2 - 1, ly2 - 1], fill=colour)
        pad = max(1, font.size // 5)
        top = font.getbbox(text)[1]
        draw.text((lx1 + pad, ly1 + pad - min(top, 0)), text, fill=_text_colour(colour), font=font)
    return np.asarray(canvas)


def draw_counts(image: np.ndarray, counts: dict[str, int]) -> np.ndarray:
    """A copy of ``image`` with ``name: n`` per class in the top-left corner."""
    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    font_size, _ = style_for(width, height)
    text = "  ".join(f"{name}: {n}" for name, n in counts.items()) or "no objects"
    font, tw, th = _fitting_font(text, font_size, width)
    pad = max(1, font.size // 5)
    draw.rectangle([0, 0, min(tw, width) - 1, th - 1], fill=(0, 0, 0))
    draw.text((pad, pad - min(font.getbbox(text)[1], 0)), text, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def count_classes(detections: ImageDetections, class_names: Sequence[str]) -> dict[str, int]:
    """Detections per class name, most frequent first."""
    counts = Counter(class_names[int(c)] for c in detections.classes)
    return dict(counts.most_common())


def crop_detections(
    image: np.ndarray, detections: ImageDetections
) -> list[tuple[int, np.ndarray]]:
    """``(detection index, pixels)`` of each detection (whole pixels covering its box), in
    detection order. A box covering no pixel of the image gives no crop, so the index is what
    names a crop's detection, never its place in the list."""
    height, width = image.shape[:2]
    crops = []
    for i, (x1, y1, x2, y2) in enumerate(detections.boxes):
        left, top = max(math.floor(x1), 0), max(math.floor(y1), 0)
        right, bottom = min(math.ceil(x2), width), min(math.ceil(y2), height)
        if right > left and bottom > top:
            crops.append((i, image[top:bottom, left:right].copy()))
    return crops


def heatmap_overlay(
    image: np.ndarray, heat: np.ndarray, input_hw: Sequence[int], alpha: float = 0.5
) -> np.ndarray:
    """Blends a 0..1 ``heat`` map of the letterboxed input ``[H, W]`` over RGB ``image``.

    The letterbox padding is cut away and the rest resized to the image, so the map lines up
    with the image pixels. Colours use matplotlib's ``jet`` (blue = 0, red = 1).
    """
    height, width = image.shape[:2]
    scale, dx, dy = letterbox_params((height, width), input_hw)
    inner = heat[dy : dy + round(height * scale), dx : dx + round(width * scale)]
    inner = cv2.resize(np.asarray(inner, np.float32), (width, height), cv2.INTER_LINEAR)
    colours = matplotlib.colormaps["jet"](np.clip(inner, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)
