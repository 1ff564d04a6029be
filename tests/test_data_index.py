"""Tests for utils/data/index.py: class lists, the image and object checks every format shares,
the load report, and the on-disk cache, on tiny VOC datasets built in tmp_path."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from tests.voc_fixtures import (
    CLASSES,
    add_sample,
    box,
    load_one,
    only_issue,
    write_image,
    write_split,
    write_xml,
)
from utils.data import index, voc
from utils.data.index import DatasetIndex, Issue, read_class_names
from utils.data.voc import load_split

# --- class lists ----------------------------------------------------------------------------


def test_read_class_names_ignores_blank_lines_and_spaces(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("\ufeffcat\n\n  dog  \r\npotted plant\n\n")
    assert read_class_names(path) == ["cat", "dog", "potted plant"]


def test_read_class_names_duplicate_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("cat\ndog\n\n dog\n")
    with pytest.raises(ValueError, match=r"classes\.txt:4: duplicate class name 'dog'.*line 2"):
        read_class_names(path)


def test_read_class_names_empty_and_missing(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("\n  \n")
    with pytest.raises(ValueError, match="no class names"):
        read_class_names(path)
    with pytest.raises(FileNotFoundError):
        read_class_names(tmp_path / "nope.txt")


# --- image checks ---------------------------------------------------------------------------


def test_duplicate_id_loaded_once(tmp_path: Path) -> None:
    add_sample(tmp_path, "VOC2007/a")
    write_split(tmp_path, "VOC2007/train", ["a"])
    write_split(tmp_path, "VOC2007/trainval", ["a"])
    index = load_split(tmp_path, ["VOC2007/train", "VOC2007/trainval"], CLASSES, cache=False)
    assert len(index.samples) == 1
    assert index.report.num_listed == 2
    assert only_issue(index) == (Issue.DUPLICATE_ID, "VOC2007/a")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_garbage_image_skipped(tmp_path: Path, suffix: str) -> None:
    (tmp_path / "VOC2007" / "JPEGImages").mkdir(parents=True)
    (tmp_path / "VOC2007" / "JPEGImages" / f"a{suffix}").write_bytes(b"not an image at all")
    write_xml(tmp_path / "VOC2007" / "Annotations" / "a.xml", [("cat", box(1, 1, 5, 5), 0)])
    write_split(tmp_path, "VOC2007/train", ["a"])
    index = load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
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
    index = load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
    assert index.samples == []
    assert only_issue(index)[0] is Issue.UNREADABLE_IMAGE


def test_jpeg_with_padding_after_end_marker_is_fine(tmp_path: Path) -> None:
    add_sample(tmp_path, "VOC2007/a", [("cat", box(1, 1, 5, 5), 0)])
    path = tmp_path / "VOC2007" / "JPEGImages" / "a.jpg"
    path.write_bytes(path.read_bytes() + b"\x00" * 100)
    write_split(tmp_path, "VOC2007/train", ["a"])
    index = load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
    assert len(index.samples) == 1 and index.report.problems == []


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


def test_image_without_objects_kept_as_background(tmp_path: Path) -> None:
    index = load_one(tmp_path, "VOC2007/a", [])
    (sample,) = index.samples
    assert sample.boxes.shape == (0, 4) and sample.classes.shape == (0,)
    assert index.report.num_background == 1
    assert index.report.problems == []


# --- object checks --------------------------------------------------------------------------


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


# --- the load report ------------------------------------------------------------------------


def test_report_summary_and_warning_cap(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ids = [f"{i:03d}" for i in range(25)]
    for stem in ids:  # 25 files with an unknown class, one missing image
        add_sample(tmp_path, f"VOC2007/{stem}", [("bird", box(1, 1, 5, 5), 0)])
    add_sample(tmp_path, "VOC2007/ok", [("cat", box(1, 1, 5, 5), 0), ("dog", box(-1, 1, 5, 5), 0)])
    write_xml(tmp_path / "VOC2007" / "Annotations" / "noimg.xml")
    write_split(tmp_path, "VOC2007/train", [*ids, "ok", "noimg"])
    with caplog.at_level(logging.INFO, logger="utils.data.index"):
        index = load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
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

    monkeypatch.setattr(voc, "read_annotation", fail)
    monkeypatch.setattr(index, "_check_image", fail)


def assert_same(first: DatasetIndex, second: DatasetIndex) -> None:
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
    cold = load_split(tmp_path, ["VOC2007/train"], CLASSES)
    assert list((tmp_path / ".cache").glob("*.pkl"))
    assert not list((tmp_path / ".cache").glob("*.tmp"))
    forbid_parsing(monkeypatch)
    warm = load_split(tmp_path, ["VOC2007/train"], CLASSES)
    assert_same(cold, warm)
    assert warm.report.counts[Issue.MISSING_XML] == 1  # problems are replayed from the cache


def test_cache_survives_moving_the_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_cached_dataset(tmp_path / "old")
    load_split(tmp_path / "old", ["VOC2007/train"], CLASSES)
    (tmp_path / "old").rename(tmp_path / "new")
    forbid_parsing(monkeypatch)
    warm = load_split(tmp_path / "new", ["VOC2007/train"], CLASSES)
    assert warm.samples[0].image_path == tmp_path / "new" / "VOC2007" / "JPEGImages" / "a.jpg"
    assert all(str(p.file).startswith(str(tmp_path / "new")) for p in warm.report.problems)


def test_cache_is_keyed_by_classes_and_splits(tmp_path: Path) -> None:
    make_cached_dataset(tmp_path)
    load_split(tmp_path, ["VOC2007/train"], CLASSES)
    with_bird = load_split(tmp_path, ["VOC2007/train"], (*CLASSES, "bird"))
    assert with_bird.samples[1].classes.tolist() == [3, 1]
    assert len(list((tmp_path / ".cache").glob("*.pkl"))) == 2


def bump(path: Path) -> None:
    """Move the modification time on, as an editor saving the file would."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_cache_invalidated_by_changed_xml(tmp_path: Path) -> None:
    make_cached_dataset(tmp_path)
    load_split(tmp_path, ["VOC2007/train"], CLASSES)
    xml = tmp_path / "VOC2007" / "Annotations" / "a.xml"
    xml.write_text(xml.read_text().replace("<name>cat</name>", "<name>car</name>"))
    bump(xml)
    index = load_split(tmp_path, ["VOC2007/train"], CLASSES)
    assert index.samples[0].classes.tolist() == [2]


def test_cache_invalidated_by_touched_image(tmp_path: Path, monkeypatch) -> None:
    make_cached_dataset(tmp_path)
    load_split(tmp_path, ["VOC2007/train"], CLASSES)
    bump(tmp_path / "VOC2007" / "JPEGImages" / "b.jpg")
    forbid_parsing(monkeypatch)
    with pytest.raises(AssertionError, match="re-read"):
        load_split(tmp_path, ["VOC2007/train"], CLASSES)


def test_cache_invalidated_by_new_files_and_split_change(tmp_path: Path) -> None:
    make_cached_dataset(tmp_path)
    first = load_split(tmp_path, ["VOC2007/train"], CLASSES)
    assert [s.image_id for s in first.samples] == ["VOC2007/a", "VOC2007/b"]
    add_sample(tmp_path, "VOC2007/c", [("dog", box(1, 1, 2, 2), 0)])  # the missing XML appears
    second = load_split(tmp_path, ["VOC2007/train"], CLASSES)
    assert [s.image_id for s in second.samples] == ["VOC2007/a", "VOC2007/b", "VOC2007/c"]
    write_split(tmp_path, "VOC2007/train", ["c"])
    third = load_split(tmp_path, ["VOC2007/train"], CLASSES)
    assert [s.image_id for s in third.samples] == ["VOC2007/c"]


def test_cache_invalidated_when_missing_image_appears(tmp_path: Path) -> None:
    write_xml(tmp_path / "VOC2007" / "Annotations" / "a.xml", [("cat", box(1, 1, 5, 5), 0)])
    write_split(tmp_path, "VOC2007/train", ["a"])
    assert load_split(tmp_path, ["VOC2007/train"], CLASSES).samples == []
    write_image(tmp_path / "VOC2007" / "JPEGImages" / "a.png")
    assert len(load_split(tmp_path, ["VOC2007/train"], CLASSES).samples) == 1


def test_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    make_cached_dataset(tmp_path)
    load_split(tmp_path, ["VOC2007/train"], CLASSES)
    (cache_file,) = (tmp_path / ".cache").glob("*.pkl")
    cache_file.write_bytes(b"garbage")
    assert len(load_split(tmp_path, ["VOC2007/train"], CLASSES).samples) == 2


def test_cache_from_before_a_field_was_added_is_rebuilt(tmp_path: Path) -> None:
    """A pickled index lacking a field (written before it existed) unpickles with the class
    default in its place, today's version number included; it must not be used."""
    import pickle

    make_cached_dataset(tmp_path)
    load_split(tmp_path, ["VOC2007/train"], CLASSES)
    (cache_file,) = (tmp_path / ".cache").glob("*.pkl")
    old = pickle.loads(cache_file.read_bytes())
    del old.__dict__["orientations"], old.__dict__["version"]  # as an older writer left it
    cache_file.write_bytes(pickle.dumps(old))
    assert len(load_split(tmp_path, ["VOC2007/train"], CLASSES).samples) == 2


def test_cache_false_writes_nothing(tmp_path: Path) -> None:
    make_cached_dataset(tmp_path)
    load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
    assert not (tmp_path / ".cache").exists()
