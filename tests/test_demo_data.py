"""Tests for the generated demo dataset (utils/data/demo.py, tools/make_demo_dataset.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from utils.config import ConfigError, load_config
from utils.data import demo as demo_data
from utils.data.demo import (
    DEMO_CLASSES,
    DENSE_CLASSES,
    ensure_demo_dataset,
    generate_demo_dataset,
    split_sizes,
)

# one worker builds the module fixtures once (see tests/conftest.py)
pytestmark = pytest.mark.xdist_group("demo_data")

REPO_ROOT = Path(__file__).resolve().parents[1]
SPLITS = {"train": 8, "val": 2, "test": 2}
NUM_IMAGES = sum(SPLITS.values())


def _generate(root: Path, seed: int = 0, **counts: int) -> Path:
    sizes = {f"num_{k}": v for k, v in (SPLITS | counts).items()}
    return generate_demo_dataset(root / "VOCdemo", seed=seed, **sizes)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _generate(tmp_path_factory.mktemp("a"))


def _annotations(dataset_dir: Path) -> list[ET.Element]:
    return [ET.parse(p).getroot() for p in sorted((dataset_dir / "Annotations").glob("*.xml"))]


def _box(obj: ET.Element) -> tuple[int, int, int, int]:
    xmin, ymin, xmax, ymax = (
        int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")
    )
    return xmin, ymin, xmax, ymax


def _counting_progress() -> tuple[list[int], demo_data.ProgressFn]:
    calls: list[int] = []
    return calls, calls.append


def test_class_file_matches_tuple() -> None:
    lines = (REPO_ROOT / "model_data/demo_classes.txt").read_text().splitlines()
    assert tuple(lines) == DEMO_CLASSES
    assert len(set(DEMO_CLASSES)) == len(DEMO_CLASSES) >= 5


def test_layout_and_split_counts(dataset: Path) -> None:
    main = dataset / "ImageSets/Main"
    ids = {split: (main / f"{split}.txt").read_text().split() for split in (*SPLITS, "trainval")}
    for split, count in SPLITS.items():
        assert len(ids[split]) == count
    assert ids["trainval"] == ids["train"] + ids["val"]
    every = ids["train"] + ids["val"] + ids["test"]
    assert len(set(every)) == NUM_IMAGES
    for stem in every:
        assert (dataset / "JPEGImages" / f"{stem}.jpg").is_file()
        assert (dataset / "Annotations" / f"{stem}.xml").is_file()
    assert (dataset / ".complete").is_file()
    assert not dataset.with_name("VOCdemo.partial").exists()


def test_xml_has_voc_fields_and_matches_image(dataset: Path) -> None:
    for root in _annotations(dataset):
        assert root.tag == "annotation"
        assert root.findtext("folder") == "VOCdemo"
        filename = root.findtext("filename")
        image = cv2.imread(str(dataset / "JPEGImages" / filename))
        assert image is not None
        height, width = image.shape[:2]
        assert int(root.findtext("size/width")) == width
        assert int(root.findtext("size/height")) == height
        assert root.findtext("size/depth") == "3"
        assert 224 <= width <= 448 and 224 <= height <= 448
        objects = root.findall("object")
        assert 1 <= len(objects) <= 8
        for obj in objects:
            assert obj.findtext("name") in DEMO_CLASSES
            assert obj.findtext("pose") == "Unspecified"
            assert obj.findtext("truncated") == "0"
            assert obj.findtext("difficult") == "0"
            xmin, ymin, xmax, ymax = _box(obj)
            # VOC 1-based inclusive: fully inside means 1 <= min <= max <= side.
            assert 1 <= xmin <= xmax <= width and 1 <= ymin <= ymax <= height
            longer = max(xmax - xmin + 1, ymax - ymin + 1)
            # Sizes are 12 px .. half the shorter side; occlusion may hide up to half an object.
            assert 6 <= longer <= min(width, height) / 2 + 1


def test_classes_and_objects_per_image(dataset: Path) -> None:
    roots = _annotations(dataset)
    names = {obj.findtext("name") for root in roots for obj in root.iter("object")}
    assert names == set(DEMO_CLASSES)
    counts = [len(root.findall("object")) for root in roots]
    assert min(counts) >= 1 and max(counts) <= 8
    assert len(set(counts)) > 2  # the count varies between images


def test_boxes_hold_their_class_colour(dataset: Path) -> None:
    """Each box is largely the class's hue, and vivid colour is rare outside boxes."""
    for root in _annotations(dataset):
        image = cv2.imread(str(dataset / "JPEGImages" / root.findtext("filename")))
        hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV_FULL).astype(np.float32)
        hue = hsv[..., 0] * 360.0 / 256.0
        vivid = (hsv[..., 1] > 0.4 * 255) & (hsv[..., 2] > 0.35 * 255)
        inside = np.zeros(image.shape[:2], dtype=bool)
        for obj in root.iter("object"):
            xmin, ymin, xmax, ymax = _box(obj)
            window = (slice(ymin - 1, ymax), slice(xmin - 1, xmax))
            class_hue = demo_data._CLASS_HUES[DEMO_CLASSES.index(obj.findtext("name"))]
            hue_error = np.abs((hue[window] - class_hue + 180.0) % 360.0 - 180.0)
            # A star fills ~38% of its box and may be half hidden; flat shapes fill far more.
            assert np.mean((hue_error < 25.0) & vivid[window]) > 0.15, obj.findtext("name")
            inside[window] = True
        assert np.mean(vivid[~inside]) < 0.05


def test_same_seed_is_identical_and_other_seed_differs(dataset: Path, tmp_path: Path) -> None:
    again = _generate(tmp_path / "b")
    other = _generate(tmp_path / "c", seed=1)
    for xml in sorted((dataset / "Annotations").glob("*.xml")):
        assert (again / "Annotations" / xml.name).read_text() == xml.read_text()
    for jpg in sorted((dataset / "JPEGImages").glob("*.jpg")):
        twin = again / "JPEGImages" / jpg.name
        assert twin.read_bytes() == jpg.read_bytes()  # same OpenCV build here
        np.testing.assert_array_equal(cv2.imread(str(twin)), cv2.imread(str(jpg)))
    differing = [
        xml.name
        for xml in (dataset / "Annotations").glob("*.xml")
        if (other / "Annotations" / xml.name).read_text() != xml.read_text()
    ]
    assert len(differing) == NUM_IMAGES


def test_image_depends_only_on_seed_and_index(dataset: Path, tmp_path: Path) -> None:
    small = _generate(tmp_path, train=3, val=0, test=0)
    assert (small / "ImageSets/Main/train.txt").read_text().split() == [
        "demo_000000", "demo_000001", "demo_000002",
    ]  # fmt: skip
    for stem in ("demo_000000", "demo_000001", "demo_000002"):
        xml = f"Annotations/{stem}.xml"
        assert (small / xml).read_text() == (dataset / xml).read_text()
    assert (small / "ImageSets/Main/val.txt").read_text() == ""


def test_ensure_skips_complete_and_rebuilds_incomplete(tmp_path: Path) -> None:
    target = tmp_path / "VOCdemo"
    options = {"num_train": 2, "num_val": 1, "num_test": 1, "seed": 5}
    calls, progress = _counting_progress()
    assert ensure_demo_dataset(target, **options, progress=progress) == target
    assert calls == [1, 1, 1, 1]

    calls.clear()
    ensure_demo_dataset(target, **options, progress=progress)
    assert calls == []  # complete: nothing regenerated

    (target / ".complete").unlink()
    ensure_demo_dataset(target, **options, progress=progress)
    assert calls == [1, 1, 1, 1]
    assert (target / ".complete").is_file()

    calls.clear()
    ensure_demo_dataset(target, **(options | {"num_test": 2}), progress=progress)
    assert len(calls) == 5  # other options: rebuilt with them
    assert len((target / "ImageSets/Main/test.txt").read_text().split()) == 2


def test_interrupted_run_is_not_complete_and_is_redone(tmp_path: Path) -> None:
    target = tmp_path / "VOCdemo"

    seen: list[int] = []

    def fail_after_two(step: int) -> None:
        seen.append(step)
        if len(seen) == 2:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        generate_demo_dataset(target, num_train=3, num_val=0, num_test=0, progress=fail_after_two)
    assert not (target / ".complete").exists()

    calls, progress = _counting_progress()
    ensure_demo_dataset(target, num_train=3, num_val=0, num_test=0, progress=progress)
    assert len(calls) == 3
    assert (target / ".complete").is_file()
    assert not target.with_name("VOCdemo.partial").exists()


def test_refuses_to_replace_foreign_directory(tmp_path: Path) -> None:
    target = tmp_path / "VOC2007"
    (target / "JPEGImages").mkdir(parents=True)
    precious = target / "JPEGImages/000005.jpg"
    precious.write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match=r"000005\.jpg"):
        ensure_demo_dataset(target, num_train=1, num_val=0, num_test=0)
    assert precious.read_bytes() == b"not ours"


@pytest.mark.parametrize(
    "counts", [{"num_train": -1}, {"num_train": 0, "num_val": 0, "num_test": 0}]
)
def test_rejects_bad_split_sizes(tmp_path: Path, counts: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="split sizes"):
        generate_demo_dataset(tmp_path / "VOCdemo", **counts)


def test_tool_writes_dataset_and_preview(tmp_path: Path) -> None:
    out, preview = tmp_path / "VOCdemo", tmp_path / "preview.png"
    result = subprocess.run(
        [sys.executable, "tools/make_demo_dataset.py", "--out", str(out), "--train", "3",
         "--val", "1", "--test", "1", "--preview", str(preview), "--preview-count", "3"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(list((out / "JPEGImages").glob("*.jpg"))) == 5
    grid = cv2.imread(str(preview))
    assert grid.shape == (320, 4 * 320, 3)
    assert grid[:, 3 * 320 :].max() == 40  # the unused fourth cell stays background


# --------------------------------------------------------------------------------------------
# Presets: shapes unchanged, dense
# --------------------------------------------------------------------------------------------

DENSE_TRAIN = 30


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dense") / "VOCdense"
    return generate_demo_dataset(root, preset="dense", num_train=DENSE_TRAIN, num_val=1, num_test=1)


def test_shapes_output_is_what_it_was_before_presets(dataset: Path) -> None:
    """VOCdemo folders made before presets existed stay valid (no format version bump) only as
    long as the shapes preset draws exactly the same objects: a change must bump the version."""
    digest = hashlib.sha256()
    for xml in sorted((dataset / "Annotations").glob("*.xml")):
        digest.update(xml.read_bytes())
    assert digest.hexdigest() == (
        "408a2a6d82768e2854c4e2762b6e7a409d143f6df2f5b3fcfd14c1371f65d844"
    )


def test_marker_from_before_presets_still_matches_shapes(tmp_path: Path) -> None:
    target = tmp_path / "VOCdemo"
    options = {"num_train": 2, "num_val": 0, "num_test": 0, "seed": 3}
    ensure_demo_dataset(target, **options)
    old = options | {"version": demo_data._FORMAT_VERSION}
    (target / ".complete").write_text(json.dumps(old), encoding="utf-8")  # no "preset" key
    calls, progress = _counting_progress()
    ensure_demo_dataset(target, **options, progress=progress)
    assert calls == []


def test_dense_class_file_matches_tuple() -> None:
    lines = (REPO_ROOT / "model_data/dense_classes.txt").read_text().splitlines()
    assert tuple(lines) == DENSE_CLASSES == ("tree",)


def test_default_split_sizes_per_preset() -> None:
    assert split_sizes("shapes", None, None, None) == (600, 150, 150)
    assert split_sizes("dense", None, None, None) == (50, 20, 20)
    assert split_sizes("dense", 3, None, 0) == (3, 20, 0)
    with pytest.raises(ValueError, match=r"unknown demo preset 'trees'.*shapes, dense"):
        split_sizes("trees", None, None, None)


def test_dense_statistics(dense: Path) -> None:
    """One class, 320x320, about a dozen small boxes per image (up to 40), all inside."""
    roots = _annotations(dense)[:DENSE_TRAIN]
    counts, sides = [], []
    for root in roots:
        assert root.findtext("folder") == "VOCdense"
        assert (root.findtext("size/width"), root.findtext("size/height")) == ("320", "320")
        image = cv2.imread(str(dense / "JPEGImages" / root.findtext("filename")))
        assert image.shape == (320, 320, 3)
        objects = root.findall("object")
        counts.append(len(objects))
        for obj in objects:
            assert obj.findtext("name") == "tree"
            xmin, ymin, xmax, ymax = _box(obj)
            assert 1 <= xmin <= xmax <= 320 and 1 <= ymin <= ymax <= 320
            sides += [xmax - xmin + 1, ymax - ymin + 1]
    assert min(counts) >= 1 and max(counts) <= 40
    assert 8 <= np.median(counts) <= 16 and max(counts) > 20
    assert len(set(counts)) > 8  # spread, not a constant count
    assert min(sides) >= 6 and max(sides) <= 110
    assert 20 <= np.median(sides) <= 60
    assert np.percentile(sides, 90) > 1.5 * np.percentile(sides, 10)  # small and large crowns


def test_dense_crowns_are_darker_greens_and_browns(dense: Path) -> None:
    """Inside the boxes the pixels are mostly green-to-brown hues (crowns)."""
    for root in _annotations(dense)[:5]:
        image = cv2.imread(str(dense / "JPEGImages" / root.findtext("filename")))
        hue = cv2.cvtColor(image, cv2.COLOR_BGR2HSV_FULL)[..., 0].astype(np.float32) * 360 / 256
        for obj in root.iter("object"):
            xmin, ymin, xmax, ymax = _box(obj)
            window = hue[ymin - 1 : ymax, xmin - 1 : xmax]
            assert np.mean((window > 10.0) & (window < 160.0)) > 0.6


def test_dense_is_reproducible_and_independent_of_split_sizes(dense: Path, tmp_path: Path) -> None:
    small = generate_demo_dataset(
        tmp_path / "VOCdense", preset="dense", num_train=2, num_val=1, num_test=0
    )
    for stem in ("demo_000000", "demo_000001", "demo_000002"):
        for name in (f"Annotations/{stem}.xml", f"JPEGImages/{stem}.jpg"):
            assert (small / name).read_bytes() == (dense / name).read_bytes(), name
    other = generate_demo_dataset(
        tmp_path / "seed1" / "VOCdense", preset="dense", num_train=2, num_val=0, num_test=0,
        seed=1,
    )  # fmt: skip
    xml = "Annotations/demo_000000.xml"
    assert (other / xml).read_text() != (dense / xml).read_text()


def test_preset_change_regenerates(tmp_path: Path) -> None:
    target = tmp_path / "VOCdemo"
    sizes = {"num_train": 2, "num_val": 1, "num_test": 0}
    calls, progress = _counting_progress()
    ensure_demo_dataset(target, **sizes, progress=progress)
    assert len(calls) == 3
    assert {o.findtext("name") for r in _annotations(target) for o in r.iter("object")} <= set(
        DEMO_CLASSES
    )

    calls.clear()
    ensure_demo_dataset(target, preset="dense", **sizes, progress=progress)
    assert len(calls) == 3  # another preset: rebuilt
    assert json.loads((target / ".complete").read_text())["preset"] == "dense"
    assert {o.findtext("name") for r in _annotations(target) for o in r.iter("object")} == {"tree"}

    calls.clear()
    ensure_demo_dataset(target, preset="dense", **sizes, progress=progress)
    assert calls == []  # complete with this preset


def test_unknown_preset_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown demo preset 'trees'"):
        generate_demo_dataset(tmp_path / "VOCdemo", preset="trees", num_train=1)
    assert not (tmp_path / "VOCdemo").exists()


def test_config_unknown_demo_preset_names_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(ConfigError, match=r"data\.demo_preset: expected 'shapes' \| 'dense'"):
        load_config(REPO_ROOT / "configs/demo.yaml", ["data.demo_preset=trees"])


def test_dense_demo_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO_ROOT)
    cfg = load_config(REPO_ROOT / "configs/dense_demo.yaml")
    demo = load_config(REPO_ROOT / "configs/demo.yaml")
    recipe = load_config(REPO_ROOT / "configs/small_data.yaml")
    assert (cfg.data.demo_dataset, cfg.data.demo_preset) == ("VOCdense", "dense")
    assert cfg.data.train_split == ["VOCdense/train"]
    assert Path(cfg.data.classes).read_text().split() == list(DENSE_CLASSES)
    assert (cfg.model, cfg.train) == (recipe.model, recipe.train)  # the small-data recipe
    assert recipe.train.time_budget is not None and demo.train.time_budget is not None
    # the demo is the recipe's data and training with the model that learns the shapes fastest
    assert (demo.data, demo.augment, demo.loss) == (recipe.data, recipe.augment, recipe.loss)
    assert (recipe.model.backbone, recipe.model.head) == ("mobilenetv3_small", "anchor_free")
    assert (demo.model.backbone, demo.model.head) == ("shufflenetv2", "anchor_free")
    assert demo.data.demo_preset == "shapes"


def test_tool_dense_preset_with_default_sizes(tmp_path: Path) -> None:
    out, preview = tmp_path / "VOCdense", tmp_path / "preview.png"
    result = subprocess.run(
        [sys.executable, "tools/make_demo_dataset.py", "--preset", "dense", "--out", str(out),
         "--train", "3", "--val", "1", "--preview", str(preview), "--preview-count", "3"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    marker = json.loads((out / ".complete").read_text())
    assert (marker["preset"], marker["num_train"], marker["num_val"]) == ("dense", 3, 1)
    assert marker["num_test"] == 20  # not given: the preset's default
    grid = cv2.imread(str(preview))
    assert grid.shape == (320, 4 * 320, 3)
    # Boxes are drawn in magenta, a colour the crowns and the ground never have.
    magenta = (grid[..., 0] > 200) & (grid[..., 1] < 60) & (grid[..., 2] > 200)
    assert magenta[:, : 3 * 320].sum() > 100


def test_a_class_list_that_is_not_the_presets_is_a_clear_error(tmp_path):
    from utils.config import load_config
    from utils.data.formats import load_config_split

    overrides = [f"data.root={tmp_path}", "data.classes=model_data/demo_classes.txt"]
    cfg = load_config(REPO_ROOT / "configs" / "dense_demo.yaml", overrides)
    with pytest.raises(ValueError, match=r"data\.classes .*\['tree'\]"):
        load_config_split(cfg, cfg.data.train_split, key="data.train_split")
