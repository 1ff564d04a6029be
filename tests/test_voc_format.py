"""Tests for utils/data/voc.py: split files, reading VOC XMLs into the index, and writing them."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from tests.voc_fixtures import (
    CLASSES,
    REPO,
    add_sample,
    box,
    load_one,
    only_issue,
    write_image,
    write_split,
    write_xml,
)
from utils.data.index import Effect, Issue, Sample, read_class_names
from utils.data.voc import VOC_CLASSES, load_split, write_annotation

# --- class list -----------------------------------------------------------------------------


def test_model_data_voc_classes_match_constant() -> None:
    assert tuple(read_class_names(REPO / "model_data" / "voc_classes.txt")) == VOC_CLASSES


# --- split files ----------------------------------------------------------------------------


def test_missing_split_file_names_the_file(tmp_path: Path) -> None:
    expected = str(tmp_path / "VOC2007" / "ImageSets" / "Main" / "trainval.txt")
    with pytest.raises(FileNotFoundError, match=expected.replace("\\", "\\\\")):
        load_split(tmp_path, ["VOC2007/trainval"], CLASSES)


@pytest.mark.parametrize("split", ["VOC2007", "VOC2007/Main/train", "/train"])
def test_malformed_split_name(tmp_path: Path, split: str) -> None:
    with pytest.raises(ValueError, match="VOC2007/trainval"):
        load_split(tmp_path, [split], CLASSES)


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
    index = load_split(tmp_path, ["VOC2007/trainval", "VOC2012/trainval"], CLASSES)
    assert [s.image_id for s in index.samples] == ["VOC2007/b", "VOC2007/a", "VOC2012/c"]
    # a plain string is one split, not a sequence of characters
    single = load_split(tmp_path, "VOC2012/trainval", CLASSES)
    assert [s.image_id for s in single.samples] == ["VOC2012/c"]


def test_png_image_is_found_and_checked(tmp_path: Path) -> None:
    write_image(tmp_path / "VOCdemo" / "JPEGImages" / "p.png", 20, 10)
    write_xml(tmp_path / "VOCdemo" / "Annotations" / "p.xml", [], size=("20", "10"))
    write_split(tmp_path, "VOCdemo/test", ["p"])
    (sample,) = load_split(tmp_path, ["VOCdemo/test"], CLASSES, cache=False).samples
    assert sample.image_path.name == "p.png"
    assert (sample.width, sample.height) == (20, 10)


# --- bad files ------------------------------------------------------------------------------


def test_missing_image_skipped(tmp_path: Path) -> None:
    write_xml(tmp_path / "VOC2007" / "Annotations" / "a.xml", [("cat", box(1, 1, 5, 5), 0)])
    write_split(tmp_path, "VOC2007/train", ["a"])
    index = load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
    assert index.samples == []
    assert only_issue(index)[0] is Issue.MISSING_IMAGE
    assert index.report.count_effect(Effect.SKIPPED_IMAGE) == 1


def test_id_without_xml_skipped(tmp_path: Path) -> None:
    add_sample(tmp_path, "VOC2007/a", [("cat", box(1, 1, 5, 5), 0)])
    write_split(tmp_path, "VOC2007/train", ["a", "ghost"])
    index = load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
    assert [s.image_id for s in index.samples] == ["VOC2007/a"]
    assert only_issue(index)[0] is Issue.MISSING_XML
    assert index.report.problems[0].file == tmp_path / "VOC2007/Annotations/ghost.xml"


def test_malformed_xml_skipped(tmp_path: Path) -> None:
    write_image(tmp_path / "VOC2007" / "JPEGImages" / "a.jpg")
    xml = tmp_path / "VOC2007" / "Annotations" / "a.xml"
    xml.parent.mkdir(parents=True)
    xml.write_text("<annotation><object><name>cat</name></annotation>")
    write_split(tmp_path, "VOC2007/train", ["a"])
    index = load_split(tmp_path, ["VOC2007/train"], CLASSES, cache=False)
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


# --- writing --------------------------------------------------------------------------------


def test_write_annotation_reads_back_with_every_voc_field(tmp_path: Path) -> None:
    image = tmp_path / "VOCout" / "JPEGImages" / "a.png"
    write_image(image)
    sample = Sample(
        image_path=image,
        image_id="VOCout/a",
        width=64,
        height=48,
        boxes=np.array([[1, 2, 30, 40], [3.25, 4, 64, 48]], np.float32),
        classes=np.array([1, 2], np.int32),
        difficult=np.array([False, True]),
    )
    xml = tmp_path / "VOCout" / "Annotations" / "a.xml"
    write_annotation(xml, sample, CLASSES, folder="VOCout", database="Tests")
    root = ET.parse(xml).getroot()
    tags = ["folder", "filename", "source", "size", "segmented", "object", "object"]
    assert [child.tag for child in root] == tags
    assert [child.tag for child in root.find("object")] == [
        "name", "pose", "truncated", "difficult", "bndbox",
    ]  # fmt: skip
    assert (root.findtext("folder"), root.findtext("filename")) == ("VOCout", "a.png")
    assert root.findtext("source/database") == "Tests"
    # Whole pixels are written as integers, fractions as they are.
    coords = [[c.text for c in obj.find("bndbox")] for obj in root.iter("object")]
    assert coords == [["1", "2", "30", "40"], ["3.25", "4", "64", "48"]]
    assert xml.read_text().endswith("</annotation>\n")

    write_split(tmp_path, "VOCout/train", ["a"])
    index = load_split(tmp_path, ["VOCout/train"], CLASSES, cache=False)
    (back,) = index.samples
    assert index.report.problems == []
    assert (back.image_path, back.width, back.height) == (image, 64, 48)
    np.testing.assert_array_equal(back.boxes, sample.boxes)
    assert back.classes.tolist() == [1, 2] and back.difficult.tolist() == [False, True]
