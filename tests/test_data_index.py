"""Tests for utils/voc.py and tools/voc_annotation.py on tiny datasets built in tmp_path."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.data import index as voc
from utils.data.index import Issue

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cat", "dog", "car")


# --- fixture helpers ------------------------------------------------------------------------


def write_image(path: Path, width: int = 64, height: int = 48) -> None:
    """A small noisy image, written by OpenCV in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)


def write_xml(
    path: Path,
    objects: Sequence[tuple] = (),
    size: tuple[str, str] | None = ("64", "48"),
) -> None:
    """An annotation. ``objects`` holds ``(name, bndbox, difficult)``; ``bndbox`` is a tuple of
    four strings (None leaves one tag out) or None for no ``<bndbox>`` at all."""
    parts = ["<annotation><folder>VOC</folder><filename>x.jpg</filename>"]
    if size is not None:
        parts.append(f"<size><width>{size[0]}</width><height>{size[1]}</height>")
        parts.append("<depth>3</depth></size>")
    for name, bndbox, difficult in objects:
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult>")
        if bndbox is not None:
            tags = zip(("xmin", "ymin", "xmax", "ymax"), bndbox, strict=True)
            coords = "".join(f"<{t}>{v}</{t}>" for t, v in tags if v is not None)
            parts.append(f"<bndbox>{coords}</bndbox>")
        parts.append("</object>")
    parts.append("</annotation>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts))


def write_split(root: Path, split: str, ids: Sequence[str]) -> None:
    path = voc.split_file(root, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{i}\n" for i in ids))


def add_sample(root: Path, image_id: str, objects: Sequence[tuple] = (), **xml_kw) -> None:
    folder, stem = image_id.split("/")
    write_image(root / folder / "JPEGImages" / f"{stem}.jpg")
    write_xml(root / folder / "Annotations" / f"{stem}.xml", objects, **xml_kw)


def load_one(root: Path, image_id: str, objects: Sequence[tuple] = (), **xml_kw) -> voc.VocIndex:
    """Build a one-image split and load it without the cache."""
    add_sample(root, image_id, objects, **xml_kw)
    write_split(root, f"{image_id.split('/')[0]}/train", [image_id.split("/")[1]])
    return voc.load_split(root, [f"{image_id.split('/')[0]}/train"], CLASSES, cache=False)


def box(x1, y1, x2, y2) -> tuple[str, str, str, str]:
    return str(x1), str(y1), str(x2), str(y2)


# --- class lists ----------------------------------------------------------------------------


def test_read_class_names_ignores_blank_lines_and_spaces(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("\ufeffcat\n\n  dog  \r\npotted plant\n\n")
    assert voc.read_class_names(path) == ["cat", "dog", "potted plant"]


def test_read_class_names_duplicate_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("cat\ndog\n\n dog\n")
    with pytest.raises(ValueError, match=r"classes\.txt:4: duplicate class name 'dog'.*line 2"):
        voc.read_class_names(path)


def test_read_class_names_empty_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match="no class names"):
        voc.read_class_names(path)
    with pytest.raises(FileNotFoundError):
        voc.read_class_names(tmp_path / "nope.txt")


def test_model_data_voc_classes_match_constant() -> None:
    assert tuple(voc.read_class_names(REPO / "model_data" / "voc_classes.txt")) == voc.VOC_CLASSES


# --- good samples ---------------------------------------------------------------------------


def test_good_sample_boxes_classes_difficult(tmp_path: Path) -> None:
    objects = [
        ("dog", box(1, 2, 30, 40), 0),
        ("car", ("48.0", "10.5", "64", "48"), 1),
        (" cat ", box(5, 6, 7, 8), 0),  # VOC tools sometimes pad names
    ]
    index = load_one(tmp_path, "VOC2007/000005", objects)
    (sample,) = index.samples
    assert sample.image_id == "VOC2007/000005"
    assert sample.image_path == tmp_path / "VOC2007" / "JPEGImages" / "000005.jpg"
    assert (sample.width, sample.height) == (64, 48)
    np.testing.assert_array_equal(sample.boxes, [[1, 2, 30, 40], [48, 10.5, 64, 48], [5, 6, 7, 8]])
    assert sample.boxes.dtype == np.float32
    assert sample.classes.tolist() == [1, 2, 0]
    assert sample.classes.dtype == np.int32
    assert sample.difficult.tolist() == [False, True, False]
    report = index.report
    assert (report.num_listed, report.num_samples, report.num_objects) == (1, 1, 3)
    assert report.problems == []
    assert not sample.boxes.flags.writeable  # shared storage must not be edited in place


def test_several_splits_concatenate_in_order(tmp_path: Path) -> None:
    for image_id in ("VOC2007/a", "VOC2007/b", "VOC2012/c"):
        add_sample(tmp_path, image_id, [("cat", box(1, 1, 10, 10), 0)])
    write_split(tmp_path, "VOC2007/trainval", ["b", "a"])
    write_split(tmp_path, "VOC2012/trainval", ["c"])
    index = voc.load_split(tmp_path, ["VOC2007/trainval", "VOC2012/trainval"], CLASSES)
    assert [s.image_id for s in index.samples] == ["VOC2007/b", "VOC2007/a", "VOC2012/c"]
    # a plain string is one split, not a sequence of characters
    single = voc.load_split(tmp_path, "VOC2012/trainval", CLASSES)
    assert [s.image_id for s in single.samples] == ["VOC2012/c"]


def test_png_image_is_found_and_checked(tmp_path: Path) -> None:
    write_image(tmp_path / "VOCdemo" / "JPEGImages" / "p.png", 20, 10)
    write_xml(tmp_path / "VOCdemo" / "Annotations" / "p.xml", [], size=("20", "10"))
    write_split(tmp_path, "VOCdemo/test", ["p"])
    (sample,) = voc.load_split(tmp_path, ["VOCdemo/test"], CLASSES, cache=False).samples
    assert sample.image_path.name == "p.png"
    assert (sample.width, sample.height) == (20, 10)


# --- bad samples ----------------------------------------------------------------------------


def only_issue(index: voc.VocIndex) -> tuple[Issue, str]:
    (problem,) = index.report.problems
    assert index.report.counts == {problem.issue: 1}
    return problem.issue, problem.detail


def test_missing_image_skipped(tmp_path: Path) -> None:
    write_xml(tmp_path / "VOC2007" / "Annotations" / "a.xml", [("cat", box(1, 1, 5, 5), 0)])
    write_split(tmp_path, "VOC2007/train", ["a"])
    index = voc.load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
    assert index.samples == []
    assert only_issue(index)[0] is Issue.MISSING_IMAGE
    assert index.report.count_effect(voc.Effect.SKIPPED_IMAGE) == 1


def test_id_without_xml_skipped(tmp_path: Path) -> None:
    add_sample(tmp_path, "VOC2007/a", [("cat", box(1, 1, 5, 5), 0)])
    write_split(tmp_path, "VOC2007/train", ["a", "ghost"])
    index = voc.load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
    assert [s.image_id for s in index.samples] == ["VOC2007/a"]
    assert only_issue(index)[0] is Issue.MISSING_XML
    assert index.report.problems[0].file == tmp_path / "VOC2007/Annotations/ghost.xml"


def test_duplicate_id_loaded_once(tmp_path: Path) -> None:
    add_sample(tmp_path, "VOC2007/a")
    write_split(tmp_path, "VOC2007/train", ["a"])
    write_split(tmp_path, "VOC2007/trainval", ["a"])
    index = voc.load_split(tmp_path, ["VOC2007/train", "VOC2007/trainval"], CLASSES, cache=False)
    assert len(index.samples) == 1
    assert index.report.num_listed == 2
    assert only_issue(index) == (Issue.DUPLICATE_ID, "VOC2007/a")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_garbage_image_skipped(tmp_path: Path, suffix: str) -> None:
    (tmp_path / "VOC2007" / "JPEGImages").mkdir(parents=True)
    (tmp_path / "VOC2007" / "JPEGImages" / f"a{suffix}").write_bytes(b"not an image at all")
    write_xml(tmp_path / "VOC2007" / "Annotations" / "a.xml", [("cat", box(1, 1, 5, 5), 0)])
    write_split(tmp_path, "VOC2007/train", ["a"])
    index = voc.load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
    assert index.samples == []
    assert only_issue(index)[0] is Issue.UNREADABLE_IMAGE


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image_skipped(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / "VOC2007" / "JPEGImages" / f"a{suffix}"
    write_image(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])  # the header survives, the end does not
    write_xml(tmp_path / "VOC2007" / "Annotations" / "a.xml", [("cat", box(1, 1, 5, 5), 0)])
    write_split(tmp_path, "VOC2007/train", ["a"])
    index = voc.load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
    assert index.samples == []
    assert only_issue(index)[0] is Issue.UNREADABLE_IMAGE


def test_jpeg_with_padding_after_end_marker_is_fine(tmp_path: Path) -> None:
    add_sample(tmp_path, "VOC2007/a", [("cat", box(1, 1, 5, 5), 0)])
    path = tmp_path / "VOC2007" / "JPEGImages" / "a.jpg"
    path.write_bytes(path.read_bytes() + b"\x00" * 100)
    write_split(tmp_path, "VOC2007/train", ["a"])
    index = voc.load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
    assert len(index.samples) == 1 and index.report.problems == []


def test_malformed_xml_skipped(tmp_path: Path) -> None:
    write_image(tmp_path / "VOC2007" / "JPEGImages" / "a.jpg")
    xml = tmp_path / "VOC2007" / "Annotations" / "a.xml"
    xml.parent.mkdir(parents=True)
    xml.write_text("<annotation><object><name>cat</name></annotation>")
    write_split(tmp_path, "VOC2007/train", ["a"])
    index = voc.load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
    assert index.samples == []
    assert only_issue(index)[0] is Issue.MALFORMED_XML


@pytest.mark.parametrize(
    "bndbox",
    [None, ("1", "2", "abc", "9"), ("1", None, "5", "9"), ("1", "2", "nan", "9"), ("", "", "", "")],
)
def test_object_without_valid_bndbox_dropped_image_kept(tmp_path: Path, bndbox) -> None:
    index = load_one(tmp_path, "VOC2007/a", [("cat", bndbox, 0), ("dog", box(1, 2, 3, 4), 1)])
    (sample,) = index.samples
    assert sample.classes.tolist() == [1]
    np.testing.assert_array_equal(sample.boxes, [[1, 2, 3, 4]])
    assert sample.difficult.tolist() == [True]
    assert only_issue(index)[0] is Issue.BAD_OBJECT


def test_unknown_class_dropped_with_warning_naming_class_and_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="utils.data.index"):
        index = load_one(tmp_path, "VOC2007/a", [("Dgo", box(1, 1, 9, 9), 0)])
    assert only_issue(index) == (Issue.UNKNOWN_CLASS, "'Dgo'")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "'Dgo'" in warning and str(Path("VOC2007/Annotations/a.xml")) in warning
    # its only object dropped: kept as a background image
    assert index.report.num_background == 1 and index.samples[0].boxes.shape == (0, 4)


@pytest.mark.parametrize("coords", [(5, 5, 5, 9), (5, 5, 9, 5), (9, 5, 5, 9), (5, 9, 9, 5)])
def test_zero_area_or_inverted_box_dropped(tmp_path: Path, coords) -> None:
    index = load_one(tmp_path, "VOC2007/a", [("cat", box(*coords), 0)])
    assert only_issue(index)[0] is Issue.DEGENERATE_BOX
    assert index.samples[0].boxes.shape == (0, 4)


@pytest.mark.parametrize(
    ("coords", "clipped"),
    [
        ((-3, 10, 20, 30), [0, 10, 20, 30]),
        ((10, -1.5, 70, 30), [10, 0, 64, 30]),
        ((-5, -5, 100, 100), [0, 0, 64, 48]),
        ((50, 40, 64.5, 48.25), [50, 40, 64, 48]),
    ],
)
def test_box_partly_outside_clipped(tmp_path: Path, coords, clipped) -> None:
    index = load_one(tmp_path, "VOC2007/a", [("car", box(*coords), 0)])
    np.testing.assert_array_equal(index.samples[0].boxes, [clipped])
    assert only_issue(index)[0] is Issue.CLIPPED_BOX


def test_box_on_the_image_edge_is_not_clipped(tmp_path: Path) -> None:
    # VOC 1-based coordinates reach exactly the width/height on the last pixel.
    index = load_one(tmp_path, "VOC2007/a", [("car", box(1, 1, 64, 48), 0)])
    np.testing.assert_array_equal(index.samples[0].boxes, [[1, 1, 64, 48]])
    assert index.report.problems == []


@pytest.mark.parametrize("coords", [(64, 1, 80, 9), (1, 48, 9, 60), (-9, 1, 0, 9), (1, -9, 9, 0)])
def test_box_fully_outside_dropped(tmp_path: Path, coords) -> None:
    index = load_one(tmp_path, "VOC2007/a", [("car", box(*coords), 0)])
    assert only_issue(index)[0] is Issue.OUTSIDE_BOX
    assert index.samples[0].boxes.shape == (0, 4)


def test_image_without_objects_kept_as_background(tmp_path: Path) -> None:
    index = load_one(tmp_path, "VOC2007/a", [])
    (sample,) = index.samples
    assert sample.boxes.shape == (0, 4) and sample.classes.shape == (0,)
    assert index.report.num_background == 1
    assert index.report.problems == []


@pytest.mark.parametrize("size", [None, ("0", "0"), ("500", "375"), ("64", "")])
def test_wrong_or_missing_size_taken_from_image(tmp_path: Path, size) -> None:
    index = load_one(tmp_path, "VOC2007/a", [("cat", box(1, 1, 9, 9), 0)], size=size)
    (sample,) = index.samples
    assert (sample.width, sample.height) == (64, 48)
    assert only_issue(index)[0] is Issue.SIZE_FROM_IMAGE


def test_clipping_uses_the_real_image_size(tmp_path: Path) -> None:
    # <size> claims 500x375; a box inside that but past the real 64x48 image is clipped.
    objects = [("cat", box(10, 10, 200, 30), 0)]
    index = load_one(tmp_path, "VOC2007/a", objects, size=("500", "375"))
    np.testing.assert_array_equal(index.samples[0].boxes, [[10, 10, 64, 30]])
    assert index.report.counts == {Issue.SIZE_FROM_IMAGE: 1, Issue.CLIPPED_BOX: 1}


def test_missing_split_file_names_the_file(tmp_path: Path) -> None:
    expected = str(tmp_path / "VOC2007" / "ImageSets" / "Main" / "trainval.txt")
    with pytest.raises(FileNotFoundError, match=expected.replace("\\", "\\\\")):
        voc.load_split(tmp_path, ["VOC2007/trainval"], CLASSES)


@pytest.mark.parametrize("split", ["VOC2007", "VOC2007/Main/train", "/train"])
def test_malformed_split_name(tmp_path: Path, split: str) -> None:
    with pytest.raises(ValueError, match="VOC2007/trainval"):
        voc.load_split(tmp_path, [split], CLASSES)


def test_report_summary_and_warning_cap(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ids = [f"{i:03d}" for i in range(25)]
    for stem in ids:  # 25 files with an unknown class, one missing image
        add_sample(tmp_path, f"VOC2007/{stem}", [("bird", box(1, 1, 5, 5), 0)])
    add_sample(tmp_path, "VOC2007/ok", [("cat", box(1, 1, 5, 5), 0), ("dog", box(-1, 1, 5, 5), 0)])
    write_xml(tmp_path / "VOC2007" / "Annotations" / "noimg.xml")
    write_split(tmp_path, "VOC2007/train", [*ids, "ok", "noimg"])
    with caplog.at_level(logging.INFO, logger="utils.data.index"):
        index = voc.load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
    report = index.report
    assert (report.num_listed, report.num_samples, report.num_background) == (27, 26, 25)
    assert report.counts == {Issue.UNKNOWN_CLASS: 25, Issue.CLIPPED_BOX: 1, Issue.MISSING_IMAGE: 1}
    assert len(report.problems) == 27  # the full list stays in the report
    assert report.summary().splitlines() == [
        "VOC2007/train: 26 of 27 images kept (25 background), 2 objects; "
        "skipped images 1, dropped objects 25, fixed 1",
        "  skipped images: 1 missing image",
        "  dropped objects: 25 unknown class",
        "  fixed: 1 box clipped to the image",
    ]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 21
    assert warnings[-1].startswith("... and 7 more files")
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == [report.headline()]


# --- the cache ------------------------------------------------------------------------------


def make_cached_dataset(root: Path) -> None:
    add_sample(root, "VOC2007/a", [("cat", box(1, 2, 3, 4), 0)])
    add_sample(root, "VOC2007/b", [("bird", box(1, 2, 3, 4), 0), ("dog", box(-1, 2, 3, 4), 1)])
    write_split(root, "VOC2007/train", ["a", "b", "c"])


def forbid_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(path):
        raise AssertionError(f"re-read {path}")

    monkeypatch.setattr(voc, "_parse_annotation", fail)
    monkeypatch.setattr(voc, "_check_image", fail)


def assert_same(first: voc.VocIndex, second: voc.VocIndex) -> None:
    assert len(first.samples) == len(second.samples)
    for a, b in zip(first.samples, second.samples, strict=True):
        assert (a.image_path, a.image_id, a.width, a.height) == (
            b.image_path,
            b.image_id,
            b.width,
            b.height,
        )
        for field in ("boxes", "classes", "difficult"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
            assert getattr(a, field).dtype == getattr(b, field).dtype
    assert first.report == second.report


def test_cache_hit_parses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_cached_dataset(tmp_path)
    cold = voc.load_split(tmp_path, ["VOC2007/train"], CLASSES)
    assert list((tmp_path / ".cache").glob("*.pkl"))
    assert not list((tmp_path / ".cache").glob("*.tmp"))
    forbid_parsing(monkeypatch)
    warm = voc.load_split(tmp_path, ["VOC2007/train"], CLASSES)
    assert_same(cold, warm)
    assert warm.report.counts[Issue.MISSING_XML] == 1  # problems are replayed from the cache


def test_cache_survives_moving_the_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_cached_dataset(tmp_path / "old")
    voc.load_split(tmp_path / "old", ["VOC2007/train"], CLASSES)
    (tmp_path / "old").rename(tmp_path / "new")
    forbid_parsing(monkeypatch)
    warm = voc.load_split(tmp_path / "new", ["VOC2007/train"], CLASSES)
    assert warm.samples[0].image_path == tmp_path / "new" / "VOC2007" / "JPEGImages" / "a.jpg"
    assert all(str(p.file).startswith(str(tmp_path / "new")) for p in warm.report.problems)


def test_cache_is_keyed_by_classes_and_splits(tmp_path: Path) -> None:
    make_cached_dataset(tmp_path)
    voc.load_split(tmp_path, ["VOC2007/train"], CLASSES)
    with_bird = voc.load_split(tmp_path, ["VOC2007/train"], (*CLASSES, "bird"))
    assert with_bird.samples[1].classes.tolist() == [3, 1]
    assert len(list((tmp_path / ".cache").glob("*.pkl"))) == 2


def bump(path: Path) -> None:
    """Move the modification time on, as an editor saving the file would."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_cache_invalidated_by_changed_xml(tmp_path: Path) -> None:
    make_cached_dataset(tmp_path)
    voc.load_split(tmp_path, ["VOC2007/train"], CLASSES)
    xml = tmp_path / "VOC2007" / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<name>cat</name>", "<name>car</name>"))
    bump(xml)
    index = voc.load_split(tmp_path, ["VOC2007/train"], CLASSES)
    assert index.samples[0].classes.tolist() == [2]


def test_cache_invalidated_by_touched_image(tmp_path: Path, monkeypatch) -> None:
    make_cached_dataset(tmp_path)
    voc.load_split(tmp_path, ["VOC2007/train"], CLASSES)
    bump(tmp_path / "VOC2007" / "JPEGImages" / "b.jpg")
    forbid_parsing(monkeypatch)
    with pytest.raises(AssertionError, match="re-read"):
        voc.load_split(tmp_path, ["VOC2007/train"], CLASSES)


def test_cache_invalidated_by_new_files_and_split_change(tmp_path: Path) -> None:
    make_cached_dataset(tmp_path)
    first = voc.load_split(tmp_path, ["VOC2007/train"], CLASSES)
    assert [s.image_id for s in first.samples] == ["VOC2007/a", "VOC2007/b"]
    add_sample(tmp_path, "VOC2007/c", [("dog", box(1, 1, 2, 2), 0)])  # the missing XML appears
    second = voc.load_split(tmp_path, ["VOC2007/train"], CLASSES)
    assert [s.image_id for s in second.samples] == ["VOC2007/a", "VOC2007/b", "VOC2007/c"]
    write_split(tmp_path, "VOC2007/train", ["c"])
    third = voc.load_split(tmp_path, ["VOC2007/train"], CLASSES)
    assert [s.image_id for s in third.samples] == ["VOC2007/c"]


def test_cache_invalidated_when_missing_image_appears(tmp_path: Path) -> None:
    write_xml(tmp_path / "VOC2007" / "Annotations" / "a.xml", [("cat", box(1, 1, 5, 5), 0)])
    write_split(tmp_path, "VOC2007/train", ["a"])
    assert voc.load_split(tmp_path, ["VOC2007/train"], CLASSES).samples == []
    write_image(tmp_path / "VOC2007" / "JPEGImages" / "a.png")
    assert len(voc.load_split(tmp_path, ["VOC2007/train"], CLASSES).samples) == 1


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    make_cached_dataset(tmp_path)
    voc.load_split(tmp_path, ["VOC2007/train"], CLASSES)
    (cache_file,) = (tmp_path / ".cache").glob("*.pkl")
    cache_file.write_bytes(b"garbage")
    assert len(voc.load_split(tmp_path, ["VOC2007/train"], CLASSES).samples) == 2


def test_cache_false_writes_nothing(tmp_path: Path) -> None:
    make_cached_dataset(tmp_path)
    voc.load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
    assert not (tmp_path / ".cache").exists()


# --- splitting a user's own dataset ---------------------------------------------------------


def test_split_ids_counts_hand_computed() -> None:
    ids = [f"{i:02d}" for i in range(10)]
    counts = {k: len(v) for k, v in voc.split_ids(ids, (0.8, 0.1, 0.1), seed=0).items()}
    assert counts == {"train": 8, "val": 1, "test": 1, "trainval": 9}
    # n=7 with 0.5/0.25/0.25: floors 3, 1, 1; the 2 left go to val and test (remainder 0.75)
    counts = {k: len(v) for k, v in voc.split_ids(ids[:7], (0.5, 0.25, 0.25), seed=0).items()}
    assert counts == {"train": 3, "val": 2, "test": 2, "trainval": 5}
    # 0.7 * 10 is 6.999... in floating point and must still give 7
    counts = {k: len(v) for k, v in voc.split_ids(ids, (0.7, 0.3, 0.0), seed=0).items()}
    assert counts == {"train": 7, "val": 3, "test": 0, "trainval": 10}


def test_split_ids_partition_and_determinism() -> None:
    ids = [f"img{i}" for i in range(50)]
    a = voc.split_ids(ids, (0.6, 0.2, 0.2), seed=3)
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(ids)
    assert a["trainval"] == sorted(a["train"] + a["val"])
    assert all(a[k] == sorted(a[k]) for k in a)
    assert voc.split_ids(list(reversed(ids)), (0.6, 0.2, 0.2), seed=3) == a
    assert voc.split_ids(ids, (0.6, 0.2, 0.2), seed=4)["test"] != a["test"]


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.2), (1.2, -0.1, -0.1), (0.5, 0.5)])
def test_split_ids_rejects_bad_ratios(ratios) -> None:
    with pytest.raises(ValueError, match="adding up to 1"):
        voc.split_ids(["a"], ratios, seed=0)


def make_user_dataset(dataset: Path) -> None:
    for i in range(8):
        write_image(dataset / "JPEGImages" / f"{i}.jpg", 16, 16)
        write_xml(dataset / "Annotations" / f"{i}.xml", [("cat", box(1, 1, 9, 9), i % 2)], None)
    write_xml(dataset / "Annotations" / "lonely.xml", [("cat", box(1, 1, 9, 9), 0)])
    write_image(dataset / "JPEGImages" / "unlabelled.png", 8, 8)
    typo = [("cat", box(1, 1, 9, 9), 0), ("cta", box(1, 1, 2, 2), 0)]
    write_xml(dataset / "Annotations" / "5.xml", typo, None)


def test_scan_and_write_splits(tmp_path: Path) -> None:
    dataset = tmp_path / "VOCdevkit" / "VOCmine"
    make_user_dataset(dataset)
    files = voc.scan_dataset(dataset)
    assert files.paired == [str(i) for i in range(8)]
    assert (files.xml_only, files.image_only) == (["lonely"], ["unlabelled"])
    splits = voc.write_splits(dataset, (0.5, 0.25, 0.25), seed=1)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 4, "val": 2, "test": 2, "trainval": 6}
    for name, ids in splits.items():
        assert (dataset / "ImageSets" / "Main" / f"{name}.txt").read_text().split() == ids
    index = voc.load_split(tmp_path / "VOCdevkit", ["VOCmine/trainval"], CLASSES, cache=False)
    assert [s.image_id for s in index.samples] == [f"VOCmine/{i}" for i in splits["trainval"]]
    with pytest.raises(FileExistsError, match=r"train\.txt"):
        voc.write_splits(dataset, (0.5, 0.25, 0.25), seed=2)
    assert voc.write_splits(dataset, (0.5, 0.25, 0.25), seed=1, overwrite=True) == splits


def test_count_classes_finds_typos(tmp_path: Path) -> None:
    dataset = tmp_path / "VOCmine"
    make_user_dataset(dataset)
    counts = voc.count_classes(dataset, [str(i) for i in range(8)])
    assert list(counts) == ["cat", "cta"]
    # 8 XMLs with one cat each, difficult on odd ids except 5, whose XML adds the typo "cta"
    assert (counts["cat"].objects, counts["cat"].images, counts["cat"].difficult) == (8, 8, 3)
    assert (counts["cta"].objects, counts["cta"].images) == (1, 1)


def test_voc_annotation_tool(tmp_path: Path) -> None:
    dataset = tmp_path / "VOCmine"
    make_user_dataset(dataset)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    result = subprocess.run(
        [sys.executable, "tools/voc_annotation.py", str(dataset), "--classes", str(classes)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (dataset / "ImageSets" / "Main" / "trainval.txt").exists()
    out = result.stdout
    assert "lonely" in out and "unlabelled" in out
    cta_row = next(line for line in out.splitlines() if line.startswith("cta"))
    assert "not in" in cta_row
    dog_row = next(line for line in out.splitlines() if line.startswith("dog"))
    assert dog_row.split()[1] == "0"
    # a second run refuses to overwrite the split files, with a one-line error
    again = subprocess.run(
        [sys.executable, "tools/voc_annotation.py", str(dataset)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode != 0
    assert "--overwrite" in again.stderr and "Traceback" not in again.stderr
