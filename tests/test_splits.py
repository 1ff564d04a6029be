"""Tests for utils/data/splits.py and tools/voc_annotation.py: pairing files, seeded splits,
split files, class counts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.voc_fixtures import CLASSES, REPO, box, write_image, write_xml
from utils.data.splits import (
    SPLIT_NAMES,
    count_classes,
    cut_ids,
    scan_dataset,
    split_ids,
    write_split_files,
    write_splits,
)
from utils.data.voc import load_split

# --- splitting ids --------------------------------------------------------------------------


def test_split_ids_counts_hand_computed() -> None:
    ids = [f"{i:02d}" for i in range(10)]
    counts = {k: len(v) for k, v in split_ids(ids, (0.8, 0.1, 0.1), seed=0).items()}
    assert counts == {"train": 8, "val": 1, "test": 1, "trainval": 9}
    # n=7 with 0.5/0.25/0.25: floors 3, 1, 1; the 2 left go to val and test (remainder 0.75)
    counts = {k: len(v) for k, v in split_ids(ids[:7], (0.5, 0.25, 0.25), seed=0).items()}
    assert counts == {"train": 3, "val": 2, "test": 2, "trainval": 5}
    # 0.7 * 10 is 6.999... in floating point and must still give 7
    counts = {k: len(v) for k, v in split_ids(ids, (0.7, 0.3, 0.0), seed=0).items()}
    assert counts == {"train": 7, "val": 3, "test": 0, "trainval": 10}


def test_split_ids_partition_and_determinism() -> None:
    ids = [f"img{i}" for i in range(50)]
    a = split_ids(ids, (0.6, 0.2, 0.2), seed=3)
    assert sorted(a["train"] + a["val"] + a["test"]) == sorted(ids)
    assert a["trainval"] == sorted(a["train"] + a["val"])
    assert all(a[k] == sorted(a[k]) for k in a)
    assert split_ids(list(reversed(ids)), (0.6, 0.2, 0.2), seed=3) == a
    assert split_ids(ids, (0.6, 0.2, 0.2), seed=4)["test"] != a["test"]


@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.2), (1.2, -0.1, -0.1), (0.5, 0.5)])
def test_split_ids_rejects_bad_ratios(ratios) -> None:
    with pytest.raises(ValueError, match="adding up to 1"):
        split_ids(["a"], ratios, seed=0)


def test_cut_ids_keeps_the_order() -> None:
    splits = cut_ids(["e", "d", "c", "b", "a"], 2, 1)
    assert splits == {
        "train": ["e", "d"], "val": ["c"], "test": ["b", "a"], "trainval": ["e", "d", "c"],
    }  # fmt: skip
    assert tuple(splits) == SPLIT_NAMES


def test_write_split_files_one_id_a_line(tmp_path: Path) -> None:
    dataset = tmp_path / "VOCdevkit" / "VOCnew"
    write_split_files(dataset, {"train": ["b", "a"], "val": []})
    main = dataset / "ImageSets" / "Main"
    assert sorted(p.name for p in main.iterdir()) == ["train.txt", "val.txt"]
    assert (main / "train.txt").read_text() == "b\na\n"
    assert (main / "val.txt").read_text() == ""


# --- a user's own dataset -------------------------------------------------------------------


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
    files = scan_dataset(dataset)
    assert files.paired == [str(i) for i in range(8)]
    assert (files.xml_only, files.image_only) == (["lonely"], ["unlabelled"])
    splits = write_splits(dataset, (0.5, 0.25, 0.25), seed=1)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 4, "val": 2, "test": 2, "trainval": 6}
    for name, ids in splits.items():
        assert (dataset / "ImageSets" / "Main" / f"{name}.txt").read_text().split() == ids
    index = load_split(tmp_path / "VOCdevkit", ["VOCmine/trainval"], CLASSES, cache=False)
    assert [s.image_id for s in index.samples] == [f"VOCmine/{i}" for i in splits["trainval"]]
    with pytest.raises(FileExistsError, match=r"train\.txt"):
        write_splits(dataset, (0.5, 0.25, 0.25), seed=2)
    assert write_splits(dataset, (0.5, 0.25, 0.25), seed=1, overwrite=True) == splits


def test_count_classes_finds_typos(tmp_path: Path) -> None:
    dataset = tmp_path / "VOCmine"
    make_user_dataset(dataset)
    counts = count_classes(dataset, [str(i) for i in range(8)])
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
