"""The dataset index every annotation format loads into: validated samples and a load report.

A format module (`utils.data.voc`, `utils.data.coco`, `utils.data.yolo`) reads its files into an
`IndexBuilder` through `load_index`, so every format checks images and objects, and reports and
repairs problems, the same way; all of them return a `DatasetIndex`.

Bad samples never stop a load. Each problem is counted by kind in a `LoadReport`, logged once
per file, and handled the way a user expects: an image that cannot be used is skipped, an object
that cannot be used is dropped, a box partly outside the image is clipped, a wrong stated size is
replaced by the real image size. Only configuration mistakes (a missing split file, a bad class
list) raise.

The parsed index is pickled under ``<root>/.cache/`` and reused while every file it was read
from keeps its size and modification time, so a warm load only ``stat``s files. The cache is a
pickle written by this module into the user's own dataset folder; do not point ``cache_dir`` at a
folder others can write to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

# Image files a dataset may hold, in the order a reader looks for ``<stem><ext>``; all are
# formats tf.io.decode_image reads.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")

# 2: sizes are upright (EXIF orientation applied) and each image's orientation is kept.
_CACHE_VERSION = 2
_MAX_WARNINGS = 20
# Bytes at the end of a JPEG searched for the end-of-image marker. Encoders and cameras often
# pad or append a little data after it, which decoders ignore, so the marker need not be last.
_JPEG_TAIL_BYTES = 1024
_ORIENTATION_TAG = 0x0112
# EXIF orientations that turn the image a quarter turn, swapping width and height.
_TRANSPOSING_ORIENTATIONS = frozenset({5, 6, 7, 8})


@dataclass(frozen=True, eq=False)
class Sample:
    """One annotated image.

    Sizes and boxes are those of the upright image: its EXIF orientation applied, as the input
    pipeline (``utils.data.pipeline.decode_image``) decodes it and as annotation tools show it.
    Boxes are ``xyxy`` in image pixels as continuous coordinates, clipped so that
    ``0 <= x1 < x2 <= width`` and ``0 <= y1 < y2 <= height`` (VOC's 1-based pixel indices are
    taken as they are; a one-pixel offset is below what detection metrics resolve).
    """

    image_path: Path
    image_id: str  # "<dataset folder>/<file stem>", e.g. "VOC2007/000005" (COCO, YOLO: see there)
    width: int
    height: int
    boxes: np.ndarray  # float32 [N, 4]
    classes: np.ndarray  # int32 [N], index into the class list
    difficult: np.ndarray  # bool [N]
    orientation: int = 1  # EXIF orientation of the file (1..8), applied when it is decoded


class Effect(StrEnum):
    """What loading did about a problem."""

    SKIPPED_IMAGE = "skipped images"
    DROPPED_OBJECT = "dropped objects"
    FIXED = "fixed"
    BACKGROUND = "taken as background"


class Issue(StrEnum):
    """A kind of problem found while loading; `ISSUE_EFFECT` says what was done about it."""

    MISSING_XML = "missing XML"
    MISSING_IMAGE = "missing image"
    MALFORMED_XML = "malformed XML"
    MALFORMED_ENTRY = "malformed annotation line or entry"
    MISSING_LABEL = "no label file"
    UNREADABLE_IMAGE = "unreadable image"
    DUPLICATE_ID = "duplicate image id"
    BAD_OBJECT = "object without a valid box"
    UNKNOWN_CLASS = "unknown class"
    ORPHAN_ANNOTATION = "annotation of an image id not in the images list"
    NOT_NORMALIZED = "coordinates outside 0..1"
    DEGENERATE_BOX = "zero-area or inverted box"
    OUTSIDE_BOX = "box outside the image"
    CLIPPED_BOX = "box clipped to the image"
    SIZE_FROM_IMAGE = "size taken from the image"


ISSUE_EFFECT: dict[Issue, Effect] = {
    Issue.MISSING_XML: Effect.SKIPPED_IMAGE,
    Issue.MISSING_IMAGE: Effect.SKIPPED_IMAGE,
    Issue.MALFORMED_XML: Effect.SKIPPED_IMAGE,
    Issue.MALFORMED_ENTRY: Effect.SKIPPED_IMAGE,
    Issue.MISSING_LABEL: Effect.BACKGROUND,  # the YOLO convention for images without objects
    Issue.UNREADABLE_IMAGE: Effect.SKIPPED_IMAGE,
    Issue.DUPLICATE_ID: Effect.SKIPPED_IMAGE,
    Issue.BAD_OBJECT: Effect.DROPPED_OBJECT,
    Issue.UNKNOWN_CLASS: Effect.DROPPED_OBJECT,
    Issue.ORPHAN_ANNOTATION: Effect.DROPPED_OBJECT,
    Issue.NOT_NORMALIZED: Effect.DROPPED_OBJECT,
    Issue.DEGENERATE_BOX: Effect.DROPPED_OBJECT,
    Issue.OUTSIDE_BOX: Effect.DROPPED_OBJECT,
    Issue.CLIPPED_BOX: Effect.FIXED,
    Issue.SIZE_FROM_IMAGE: Effect.FIXED,
}


class Problem(NamedTuple):
    """One problem: the file it is in (under the dataset root), its kind, and a
    detail such as the unknown class name."""

    file: Path
    issue: Issue
    detail: str = ""

    def __str__(self) -> str:
        suffix = f" ({self.detail})" if self.detail else ""
        return f"{self.issue}{suffix}"


@dataclass
class LoadReport:
    """Counts of what a load read, kept, skipped, dropped and fixed."""

    splits: tuple[str, ...]
    num_listed: int = 0  # ids in the split files, duplicates included
    num_samples: int = 0  # images kept, background images included
    num_background: int = 0  # kept images without any object
    num_objects: int = 0  # objects kept
    counts: Counter[Issue] = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    def add(self, file: Path, issue: Issue, detail: str = "") -> None:
        """Record one problem."""
        self.counts[issue] += 1
        self.problems.append(Problem(file, issue, detail))

    def count_effect(self, effect: Effect) -> int:
        """Total count of the problems with this effect (see `ISSUE_EFFECT`)."""
        return sum(n for issue, n in self.counts.items() if ISSUE_EFFECT[issue] == effect)

    def headline(self) -> str:
        """One line: what was kept and how much was skipped, dropped or fixed."""
        line = (
            f"{' + '.join(self.splits)}: {self.num_samples} of {self.num_listed} images kept "
            f"({self.num_background} background), {self.num_objects} objects"
        )
        changes = [
            f"{effect} {self.count_effect(effect)}"
            for effect in Effect
            if self.count_effect(effect)
        ]
        return line + ("; " + ", ".join(changes) if changes else "")

    def summary(self) -> str:
        """A readable multi-line summary: the headline, then the count of every problem kind."""
        lines = [self.headline()]
        for effect in Effect:
            kinds = [
                f"{self.counts[issue]} {issue}"
                for issue in Issue
                if ISSUE_EFFECT[issue] == effect and self.counts[issue]
            ]
            if kinds:
                lines.append(f"  {effect}: {', '.join(kinds)}")
        return "\n".join(lines)


@dataclass(frozen=True)
class DatasetIndex:
    """The samples of one or more splits and the report of how they were read."""

    samples: list[Sample]
    report: LoadReport
    class_names: tuple[str, ...]


def read_class_names(path: Path | str) -> list[str]:
    """Read a class list: one name per line; blank lines and surrounding spaces are ignored.

    Raises ``FileNotFoundError`` if the file is missing and ``ValueError`` naming the file and
    line for a duplicate name, or if the file names no class at all.
    """
    path = Path(path)
    names: list[str] = []
    first_line: dict[str, int] = {}
    try:  # utf-8-sig: files saved by Windows editors start with a byte-order mark.
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        name = line.strip()
        if not name:
            continue
        if name in first_line:
            raise ValueError(
                f"{path}:{line_no}: duplicate class name {name!r} (first on line "
                f"{first_line[name]})"
            )
        first_line[name] = line_no
        names.append(name)
    if not names:
        raise ValueError(f"{path}: no class names (expected one name per line)")
    return names


def load_index(
    root: Path | str,
    splits: Sequence[str],
    class_names: Sequence[str],
    read_split: Callable[[IndexBuilder, str], None],
    *,
    kind: str,
    options: Sequence[str] = (),
    cache: bool = True,
    cache_dir: Path | str | None = None,
) -> DatasetIndex:
    """Index ``splits`` with ``read_split`` (one call per split, feeding the builder), through
    the on-disk cache; what the loader of every annotation format calls.

    ``kind`` names the format and ``options`` any setting besides the splits and classes that
    changes the result; both are part of the cache key. ``read_split`` must ``stat`` (through
    the builder) every file the result depends on, so that a changed file invalidates the cache.
    """
    root = Path(root)
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    class_names = tuple(class_names)
    if not splits:
        raise ValueError("no split given")
    if not class_names:
        raise ValueError("the class list is empty")
    if len(set(class_names)) != len(class_names):
        duplicates = sorted(name for name, n in Counter(class_names).items() if n > 1)
        raise ValueError(f"duplicate class names: {duplicates}")

    key = _cache_key(kind, splits, class_names, options)
    cache_path = Path(cache_dir or root / ".cache") / f"{kind}_index_{key[:16]}.pkl"
    index = _load_cache(cache_path, root, key) if cache else None
    if index is None:
        builder = IndexBuilder(root, class_names, LoadReport(splits=splits))
        for split in splits:
            read_split(builder, split)
        index = builder.finish(key)
        if cache:
            _save_cache(cache_path, index)
    else:
        logger.debug("%s index cache hit: %s", kind, cache_path)

    result = _materialize(root, index, class_names)
    _log_report(result.report)
    return result


# --- building the index ---------------------------------------------------------------------


@dataclass
class _Index:
    """The picklable form of a loaded split: paths relative to the root, arrays concatenated."""

    key: str
    signature_paths: list[str]  # every file whose state the result depends on
    signatures: list[tuple[int, int] | None]  # (mtime_ns, size), None where the file was absent
    image_paths: list[str]
    image_ids: list[str]
    sizes: np.ndarray  # int32 [M, 2] width, height
    offsets: np.ndarray  # int64 [M + 1]; sample i owns objects offsets[i]:offsets[i + 1]
    boxes: np.ndarray  # float32 [K, 4]
    classes: np.ndarray  # int32 [K]
    difficult: np.ndarray  # bool [K]
    orientations: np.ndarray  # uint8 [M], EXIF orientation 1..8
    report: LoadReport  # problem files relative to the root
    version: int = _CACHE_VERSION


def _cache_key(
    kind: str, splits: Sequence[str], class_names: Sequence[str], options: Sequence[str]
) -> str:
    text = json.dumps(
        {
            "version": _CACHE_VERSION,
            "kind": kind,
            "splits": splits,
            "classes": class_names,
            "options": options,
        }
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def header_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened JPEG or PNG, from its header; 1 if it has none.

    Reads what the header already holds (``image.getexif()`` would decode a PNG whole to look for
    EXIF after the pixels, which ``utils.data.pipeline.exif_orientation`` ignores too).
    """
    data = image.info.get("exif")
    if not data or image.format not in ("JPEG", "PNG"):
        return 1
    exif = Image.Exif()
    # A corrupt EXIF block costs only its orientation: the pixels decode all the same.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            exif.load(data)
        except Exception:
            return 1
    orientation = exif.get(_ORIENTATION_TAG, 1)
    return orientation if orientation in range(1, 9) else 1


def _check_image(path: Path) -> tuple[int, int, int] | str:
    """The upright ``(width, height)`` and EXIF orientation of a usable image, or why it is not
    usable.

    Cheap: only the header is decoded. A JPEG must also end with an end-of-image marker, which a
    truncated download lacks; other formats go through ``PIL.Image.verify``.
    """
    try:
        with Image.open(path) as image:
            size = image.size
            orientation = header_orientation(image)
            if image.format == "JPEG":
                with path.open("rb") as f:
                    f.seek(0, os.SEEK_END)
                    f.seek(max(0, f.tell() - _JPEG_TAIL_BYTES))
                    if b"\xff\xd9" not in f.read():
                        return "no JPEG end-of-image marker, truncated?"
            else:
                image.verify()
    # PIL signals a corrupt file with many exception types (OSError, SyntaxError, struct.error,
    # DecompressionBombError, ...); any of them means the image cannot be used.
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    if size[0] <= 0 or size[1] <= 0:
        return f"empty image {size[0]}x{size[1]}"
    width, height = size[::-1] if orientation in _TRANSPOSING_ORIENTATIONS else size
    return width, height, orientation


class IndexBuilder:
    """Accumulates samples, file signatures and problems while splits are read for the first time.

    Every format's reader (`utils.data.voc`, `utils.data.coco`, `utils.data.yolo`) feeds it, so the
    checks of images and objects are the same for all of them.
    """

    def __init__(self, root: Path, class_names: Sequence[str], report: LoadReport) -> None:
        self.root = root
        self.root_str = str(root)
        self.class_names = tuple(class_names)
        self.class_index = {name: i for i, name in enumerate(class_names)}
        self.report = report
        self.seen_ids: set[str] = set()
        self.signature_paths: list[str] = []
        self.signatures: list[tuple[int, int] | None] = []
        self.image_paths: list[str] = []
        self.image_ids: list[str] = []
        self.sizes: list[tuple[int, int]] = []
        self.image_orientations: list[int] = []
        self.counts: list[int] = []
        self.boxes: list[tuple[float, float, float, float]] = []
        self.classes: list[int] = []
        self.difficult: list[bool] = []
        # EXIF orientation of the images checked by `image_size`, where it is not 1.
        self.orientations: dict[str, int] = {}

    def rel(self, path: Path) -> str:
        """``path`` relative to the root where it lies under it (so the cache survives moving
        the dataset), else as given."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def stat(self, rel: str) -> tuple[int, int] | None:
        """Stat a file and remember its state; stat happens before any read, so a file that
        changes while it is parsed differs from the recorded state on the next load."""
        signature = _stat(os.path.join(self.root_str, rel))
        self.signature_paths.append(rel)
        self.signatures.append(signature)
        return signature

    def claim_id(self, file: Path, image_id: str) -> bool:
        """True for a new image id; a repeated one is recorded as a problem of ``file``."""
        if image_id in self.seen_ids:
            self.report.add(file, Issue.DUPLICATE_ID, image_id)
            return False
        self.seen_ids.add(image_id)
        return True

    def image_size(self, image_rel: str) -> tuple[int, int] | None:
        """The upright ``(width, height)`` of an image the caller found (and stat-ed), EXIF
        orientation applied; None, and a recorded problem, if it cannot be decoded."""
        checked = _check_image(self.root / image_rel)
        if isinstance(checked, str):
            self.report.add(Path(image_rel), Issue.UNREADABLE_IMAGE, checked)
            return None
        width, height, orientation = checked
        if orientation != 1:
            self.orientations[image_rel] = orientation
        return width, height

    def add_image(
        self,
        annotation: Path,
        image_rel: str,
        image_id: str,
        size: tuple[int, int],
        objects: Iterable[tuple[str, tuple[float | None, ...] | None, bool]],
        stated_size: tuple[float | None, float | None] | None = None,
    ) -> None:
        """Add one image of the real (upright) ``size``, as `image_size` gave it, with its
        ``(class name, xyxy box, difficult)`` objects, each checked by `check_object`; problems
        are filed under ``annotation``. ``stated_size`` is what the annotation claims, where it
        claims one."""
        report = self.report
        width, height = size
        if stated_size is not None and stated_size != (width, height):
            stated_w, stated_h = stated_size
            stated = f"{stated_w:g}x{stated_h:g}" if stated_w and stated_h else "missing or 0"
            detail = f"stated {stated}, image {width}x{height}"
            orientation = self.orientations.get(image_rel, 1)
            if orientation in _TRANSPOSING_ORIENTATIONS and stated_size == (height, width):
                # The annotation tool showed the stored pixels; the boxes are likely turned too.
                detail += (
                    f" upright by its EXIF orientation {orientation}: boxes are read as drawn"
                    " on the upright image"
                )
            report.add(annotation, Issue.SIZE_FROM_IMAGE, detail)
        count = 0
        for name, coords, difficult in objects:
            box = self.check_object(annotation, name, coords, width, height)
            if box is not None:
                self.boxes.append(box)
                self.classes.append(self.class_index[name])
                self.difficult.append(difficult)
                count += 1
        self.image_paths.append(image_rel)
        self.image_ids.append(image_id)
        self.sizes.append((width, height))
        self.image_orientations.append(self.orientations.get(image_rel, 1))
        self.counts.append(count)
        report.num_samples += 1
        report.num_objects += count
        report.num_background += int(count == 0)

    def check_object(
        self,
        file: Path,
        name: str,
        coords: tuple[float | None, ...] | None,
        width: int,
        height: int,
    ) -> tuple[float, float, float, float] | None:
        """The object's box, clipped to the image, or None (and a recorded problem) to drop it."""
        report = self.report
        if not name:
            report.add(file, Issue.BAD_OBJECT, "object without a class name")
            return None
        if name not in self.class_index:
            report.add(file, Issue.UNKNOWN_CLASS, f"{name!r}")
            return None
        if coords is None:
            report.add(file, Issue.BAD_OBJECT, f"{name!r} has no box")
            return None
        if any(c is None for c in coords):
            report.add(file, Issue.BAD_OBJECT, f"{name!r} has a missing or non-numeric coordinate")
            return None
        x1, y1, x2, y2 = coords  # type: ignore[misc]
        shown = f"{name!r} {x1:g},{y1:g},{x2:g},{y2:g}"
        if x2 <= x1 or y2 <= y1:
            report.add(file, Issue.DEGENERATE_BOX, shown)
            return None
        if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
            report.add(file, Issue.OUTSIDE_BOX, f"{shown} in {width}x{height}")
            return None
        if x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            report.add(file, Issue.CLIPPED_BOX, f"{shown} in {width}x{height}")
            x1, y1, x2, y2 = max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)
        return x1, y1, x2, y2

    def finish(self, key: str) -> _Index:
        offsets = np.zeros(len(self.counts) + 1, np.int64)
        np.cumsum(self.counts, out=offsets[1:])
        return _Index(
            key=key,
            signature_paths=self.signature_paths,
            signatures=self.signatures,
            image_paths=self.image_paths,
            image_ids=self.image_ids,
            sizes=np.asarray(self.sizes, np.int32).reshape(-1, 2),
            offsets=offsets,
            boxes=np.asarray(self.boxes, np.float32).reshape(-1, 4),
            classes=np.asarray(self.classes, np.int32),
            difficult=np.asarray(self.difficult, bool),
            orientations=np.asarray(self.image_orientations, np.uint8),
            report=self.report,
        )


def _materialize(root: Path, index: _Index, class_names: tuple[str, ...]) -> DatasetIndex:
    """Samples and report with paths under ``root``; cold and warm loads both come through here,
    so they return the same thing."""
    # Samples share these arrays (as views); read-only keeps one sample's edit out of the others.
    for array in (index.boxes, index.classes, index.difficult):
        array.flags.writeable = False
    offsets = index.offsets.tolist()
    samples = [
        Sample(
            image_path=root / rel,
            image_id=image_id,
            width=width,
            height=height,
            boxes=index.boxes[start:stop],
            classes=index.classes[start:stop],
            difficult=index.difficult[start:stop],
            orientation=orientation,
        )
        for rel, image_id, (width, height), orientation, start, stop in zip(
            index.image_paths,
            index.image_ids,
            index.sizes.tolist(),
            index.orientations.tolist(),
            offsets[:-1],
            offsets[1:],
            strict=True,
        )
    ]
    report = replace(
        index.report,
        counts=Counter(index.report.counts),
        problems=[p._replace(file=root / p.file) for p in index.report.problems],
    )
    return DatasetIndex(samples=samples, report=report, class_names=class_names)


def _log_report(report: LoadReport) -> None:
    """One warning per file with problems (the first `_MAX_WARNINGS`), then the headline."""
    by_file: dict[Path, list[str]] = {}
    for problem in report.problems:
        by_file.setdefault(problem.file, []).append(str(problem))
    for i, (file, reasons) in enumerate(by_file.items()):
        if i == _MAX_WARNINGS:
            logger.warning(
                "... and %d more files with problems (all are listed in the load report)",
                len(by_file) - _MAX_WARNINGS,
            )
            break
        logger.warning("%s: %s", file, "; ".join(reasons))
    logger.info("%s", report.headline())


# --- the on-disk cache ----------------------------------------------------------------------


def _load_cache(path: Path, root: Path, key: str) -> _Index | None:
    """The cached index if it exists, matches ``key``, and no file it depends on changed."""
    try:
        with path.open("rb") as f:
            index = pickle.load(f)
    except FileNotFoundError:
        return None
    # A cache from another version of this module, or a partial write, cannot be trusted.
    except Exception as error:
        logger.debug("ignoring unreadable index cache %s: %s", path, error)
        return None
    # A pickled dataclass takes missing fields from the class defaults: a cache written before
    # a field was added can carry today's version number, so its fields are compared too.
    if (
        not isinstance(index, _Index)
        or set(vars(index)) != {f.name for f in fields(_Index)}
        or index.version != _CACHE_VERSION
        or index.key != key
    ):
        logger.debug("ignoring index cache of another version: %s", path)
        return None
    root_str = str(root)
    for rel, signature in zip(index.signature_paths, index.signatures, strict=True):
        if _stat(os.path.join(root_str, rel)) != signature:
            logger.debug("index cache stale (%s changed): %s", rel, path)
            return None
    return index


def _save_cache(path: Path, index: _Index) -> None:
    """Write atomically (temp file + rename), so a crashed or parallel run never leaves a torn
    file; a read-only dataset folder only costs the cache."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "wb", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False
        ) as f:
            tmp_name = f.name
            pickle.dump(index, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp_name, path)
    except OSError as error:
        logger.warning("could not write the index cache %s: %s", path, error)
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
