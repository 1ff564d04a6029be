"""COCO-JSON and YOLO-txt datasets: loading, bad input, lossless conversion, get_map's COCO
results with the annotation file's own ids, and training from each format."""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import get_map
from tests.training_fixtures import CLASSES, make_tiny_voc, tiny_config
from tools import convert_dataset
from utils.config import ConfigError, load_config, save_config
from utils.data.coco import RESULTS_DIR
from utils.data.formats import load_config_split, load_files
from utils.data.index import DatasetIndex, Effect, Issue, Sample
from utils.data.yolo import label_path
from utils.eval.metrics import ImageDetections
from utils.eval.scoring import DETECTIONS_DIR, split_names, write_detections

COCO_SPLIT = "annotations/instances_train.json"


def convert(capsys, source: str, target: str, root: Path, split: str, out: Path, *extra) -> str:
    """Run the converter's CLI; returns what it printed (asserting success)."""
    args = ["--from", source, "--to", target, "--root", str(root), "--split", split]
    code = convert_dataset.main([*args, "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def load(fmt: str, root: Path, split: str, **kw) -> DatasetIndex:
    kw.setdefault("coco_images", "{name}")
    return load_files(fmt, root, [split], CLASSES, cache=kw.pop("cache", False), **kw)


def by_stem(samples: list[Sample]) -> dict[str, Sample]:
    return {s.image_path.stem: s for s in samples}


def assert_same_samples(a: DatasetIndex, b: DatasetIndex, *, difficult: bool = True) -> None:
    """Same images (by file stem), sizes, boxes (float tolerance), classes, difficult flags."""
    left, right = by_stem(a.samples), by_stem(b.samples)
    assert sorted(left) == sorted(right) and left
    for stem, x in left.items():
        y = right[stem]
        assert (x.width, x.height) == (y.width, y.height), stem
        np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-3, err_msg=stem)
        np.testing.assert_array_equal(x.classes, y.classes, err_msg=stem)
        if difficult:
            np.testing.assert_array_equal(x.difficult, y.difficult, err_msg=stem)
        assert x.image_path.read_bytes() == y.image_path.read_bytes(), stem


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """make_tiny_voc data (96 px) with one difficult object and one box off whole pixels."""
    root = tmp_path / "VOCdevkit"
    dataset = make_tiny_voc(root, num_images=6, size=96)
    xml = dataset / "Annotations" / "img001.xml"
    text = xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1)
    xml.write_text(text)
    xml = dataset / "Annotations" / "img002.xml"
    text = xml.read_text()
    start = text.index("<xmin>") + len("<xmin>")
    xml.write_text(text[:start] + "3.25" + text[text.index("</xmin>") :])
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def to_coco(capsys, voc_root: Path, out: Path) -> Path:
    classes = str(voc_root.parent / "classes.txt")
    convert(capsys, "voc", "coco", voc_root, "TINY/train", out, "--classes", classes)
    return out


# --- conversion -----------------------------------------------------------------------------


def test_round_trip_voc_coco_yolo_voc_is_lossless(voc_root: Path, tmp_path: Path, capsys):
    classes = str(tmp_path / "classes.txt")
    source = load("voc", voc_root, "TINY/train")
    assert source.samples[1].difficult.any() and source.samples[2].boxes[0, 0] == 3.25

    coco = to_coco(capsys, voc_root, tmp_path / "coco")
    assert_same_samples(source, load("coco", coco, COCO_SPLIT))  # iscrowd carries difficult

    printed = convert(capsys, "coco", "yolo", coco, COCO_SPLIT, tmp_path / "yolo")
    assert "1 difficult objects were written as ordinary objects" in printed
    assert "format: yolo" in printed and "# splits: images/train" in printed
    yolo = load("yolo", tmp_path / "yolo", "images/train")
    assert_same_samples(source, yolo, difficult=False)
    assert not any(s.difficult.any() for s in yolo.samples)
    assert (tmp_path / "yolo" / "classes.txt").read_text().split() == list(CLASSES)

    out = tmp_path / "back" / "TINY2"
    convert(capsys, "yolo", "voc", tmp_path / "yolo", "images/train", out, "--classes", classes)
    back = load("voc", out.parent, "TINY2/train")
    assert_same_samples(source, back, difficult=False)
    # Difficult flags survive a format that holds them: voc -> coco -> voc.
    convert(capsys, "coco", "voc", coco, COCO_SPLIT, tmp_path / "back" / "TINY3")
    assert_same_samples(source, load("voc", tmp_path / "back", "TINY3/train"))


def test_coco_to_coco_keeps_category_ids_and_link_hard_links(voc_root, tmp_path, capsys):
    coco = to_coco(capsys, voc_root, tmp_path / "coco")
    path = coco / COCO_SPLIT
    data = json.loads(path.read_text())
    remap = {1: 7, 2: 3}
    data["categories"] = [{"id": remap[c["id"]], "name": c["name"]} for c in data["categories"]]
    for ann in data["annotations"]:
        ann["category_id"] = remap[ann["category_id"]]
    path.write_text(json.dumps(data))
    out = tmp_path / "copy"
    convert(capsys, "coco", "coco", coco, COCO_SPLIT, out, "--link")
    copied = json.loads((out / COCO_SPLIT).read_text())
    categories = [(c["id"], c["name"]) for c in copied["categories"]]
    assert categories == [(3, "blue_disc"), (7, "red_box")]
    assert (out / "classes.txt").read_text().split() == ["blue_disc", "red_box"]  # id order
    image = copied["images"][0]["file_name"]
    assert os.stat(out / "train" / image).st_ino == os.stat(coco / "train" / image).st_ino


def test_converter_names_files_by_path_where_stems_repeat(tmp_path: Path, capsys):
    for name in ("a", "deeper/a", "deeper/b"):
        yolo_image(tmp_path, name, "0 0.5 0.5 0.5 0.5\n")
    (tmp_path / "classes.txt").write_text("\n".join(CLASSES))
    out = tmp_path / "voc" / "SET"
    convert(capsys, "yolo", "voc", tmp_path, "images/train", out, "--classes",
            str(tmp_path / "classes.txt"))  # fmt: skip
    listed = (out / "ImageSets" / "Main" / "train.txt").read_text().split()
    assert listed == ["a", "deeper_a", "deeper_b"]
    source, written = load("yolo", tmp_path, "images/train"), load("voc", out.parent, "SET/train")
    for x, y in zip(source.samples, written.samples, strict=True):  # the same order
        assert x.image_path.read_bytes() == y.image_path.read_bytes()
        np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-3)


def test_converter_mistakes_are_one_line_errors(voc_root, tmp_path, capsys):
    base = ["--root", str(voc_root), "--split", "TINY/train", "--out", str(tmp_path / "o")]
    assert convert_dataset.main(["--from", "voc", "--to", "yolo", *base]) == 2
    assert "--classes is required with --from voc" in capsys.readouterr().err
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "x").write_text("")
    classes = ["--classes", str(tmp_path / "classes.txt")]
    assert convert_dataset.main(["--from", "voc", "--to", "yolo", *base, *classes]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists and is not an empty folder" in err
    args = ["--from", "coco", "--to", "voc", "--root", str(tmp_path), "--split", "no.json",
            "--out", str(tmp_path / "p")]  # fmt: skip
    assert convert_dataset.main(args) == 2
    assert "no.json" in capsys.readouterr().err


# --- COCO input -----------------------------------------------------------------------------


def write_image(path: Path, width: int = 64, height: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((height, width, 3), 90, np.uint8))


def coco_file(root: Path, images: list, annotations: list, categories=None) -> None:
    categories = categories or [{"id": 5, "name": "red_box"}, {"id": 9, "name": "blue_disc"}]
    path = root / COCO_SPLIT
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": annotations, "categories": categories}
    path.write_text(json.dumps(data))


def issues(index: DatasetIndex) -> list[tuple[Issue, str]]:
    return [(p.issue, p.detail) for p in index.report.problems]


def test_coco_bad_entries_are_reported_and_skipped(tmp_path: Path):
    for name in ("a", "b", "c"):
        write_image(tmp_path / "train" / f"{name}.jpg")
    images = [
        {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
        {"id": 2, "file_name": "missing.jpg", "width": 64, "height": 48},
        {"id": 3, "width": 64, "height": 48},  # no file_name
        {"id": 4, "file_name": "b.jpg", "width": 64, "height": 48},
        {"id": 4, "file_name": "c.jpg", "width": 64, "height": 48},  # id repeated
    ]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 9, "bbox": [10, 5, 20.5, 30], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [0, 0, 8, 8], "iscrowd": 1},
        {"id": 3, "image_id": 1, "category_id": 5, "bbox": [1, 1, 0, 5]},  # zero width
        {"id": 4, "image_id": 1, "category_id": 77, "bbox": [1, 1, 5, 5]},  # unknown category
        {"id": 5, "image_id": 99, "category_id": 5, "bbox": [1, 1, 5, 5]},  # unknown image
        {"id": 6, "image_id": 4, "category_id": 5, "bbox": [1, 1, "x", 5]},  # not a number
        {"id": 7, "image_id": 4, "category_id": 5, "bbox": [50, 40, 30, 30]},  # clipped
    ]
    coco_file(tmp_path, images, annotations)
    index = load("coco", tmp_path, COCO_SPLIT)
    assert [s.image_id for s in index.samples] == ["train/a", "train/b"]
    a, b = index.samples
    np.testing.assert_allclose(a.boxes, [[10, 5, 30.5, 35], [0, 0, 8, 8]])
    assert a.classes.tolist() == [1, 0] and a.difficult.tolist() == [False, True]
    np.testing.assert_allclose(b.boxes, [[50, 40, 64, 48]])
    found = {issue for issue, _ in issues(index)}
    assert found == {
        Issue.MISSING_IMAGE, Issue.MALFORMED_ENTRY, Issue.DEGENERATE_BOX, Issue.UNKNOWN_CLASS,
        Issue.ORPHAN_ANNOTATION, Issue.BAD_OBJECT, Issue.CLIPPED_BOX,
    }  # fmt: skip
    assert (Issue.UNKNOWN_CLASS, "category id 77 (not in the categories)") in issues(index)
    assert index.report.count_effect(Effect.SKIPPED_IMAGE) == 3
    assert index.report.num_listed == 5
    missing = next(p for p in index.report.problems if p.issue is Issue.MISSING_IMAGE)
    assert missing.file == tmp_path / "train" / "missing.jpg"


def test_coco_category_names_not_in_the_class_list_are_dropped(tmp_path: Path):
    write_image(tmp_path / "imgs" / "sub" / "a.png")
    coco_file(
        tmp_path,
        [{"id": 1, "file_name": "sub/a.png", "width": 64, "height": 48}],
        [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5]},
         {"id": 2, "image_id": 1, "category_id": 3, "bbox": [2, 2, 5, 5]}],
        [{"id": 2, "name": "blue_disc"}, {"id": 3, "name": "zebra"}],
    )  # fmt: skip
    index = load("coco", tmp_path, COCO_SPLIT, coco_images="imgs")
    (sample,) = index.samples
    assert sample.image_id == "train/sub/a" and sample.classes.tolist() == [1]
    assert issues(index) == [(Issue.UNKNOWN_CLASS, "'zebra'")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "top level is not an object"),
        ('{"images": [], "annotations": []}', "'categories' is not a list"),
        ('{"images": [], "annotations": [], "categories": [{"id": "1", "name": "a"}]}',
         "without an int id"),
        ('{"images": [], "annotations": [], "categories": '
         '[{"id": 1, "name": "a"}, {"id": 2, "name": "a"}]}', "category names listed twice"),
    ],
)  # fmt: skip
def test_coco_file_that_is_not_coco_raises_naming_it(tmp_path: Path, text: str, message: str):
    (tmp_path / "annotations").mkdir()
    (tmp_path / COCO_SPLIT).write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        load("coco", tmp_path, COCO_SPLIT)
    assert str(tmp_path / COCO_SPLIT) in str(error.value)


def test_coco_missing_file_and_bad_images_template(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="COCO annotation file not found"):
        load("coco", tmp_path, COCO_SPLIT)
    coco_file(tmp_path, [], [])
    with pytest.raises(ValueError, match=r"data.coco_images '\{split\}'"):
        load("coco", tmp_path, COCO_SPLIT, coco_images="{split}")


def test_coco_images_template_dir(tmp_path: Path):
    """{dir}: a json exported beside its images (e.g. train/_annotations.coco.json)."""
    write_image(tmp_path / "train" / "a.jpg")
    coco_file(tmp_path, [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}], [])
    (tmp_path / "train" / "ann.json").write_text((tmp_path / COCO_SPLIT).read_text())
    index = load("coco", tmp_path, "train/ann.json", coco_images="{dir}")
    assert [s.image_path for s in index.samples] == [tmp_path / "train" / "a.jpg"]


# --- YOLO input -----------------------------------------------------------------------------


def test_label_path_rule():
    assert label_path(Path("/d/images/x/images/train/a.jpg")) == Path(
        "/d/images/x/labels/train/a.txt"
    )
    assert label_path(Path("data/pics/a.b.png")) == Path("data/pics/a.b.txt")
    assert label_path(Path("images/a.jpg")) == Path("labels/a.txt")


def yolo_image(root: Path, name: str, label: str | None) -> None:
    write_image(root / "images" / "train" / f"{name}.jpg", 100, 50)
    if label is not None:
        path = root / "labels" / "train" / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(label)


def test_yolo_bad_lines_are_reported_and_skipped(tmp_path: Path):
    yolo_image(tmp_path, "a", "1 0.5 0.5 0.2 0.4\n\n0 0.05 0.5 0.2 0.2\n")  # 2nd clipped
    yolo_image(tmp_path, "b", "0 0.5 0.5 0.2\n")  # 4 values
    yolo_image(tmp_path, "c", "0 0.5 0.5 0.2 nan\n")
    yolo_image(tmp_path, "d", "2 0.5 0.5 0.2 0.2\n0 50 25 10 10\n0 0.5 0.5 0 0.2\n")
    yolo_image(tmp_path, "e", None)  # background
    yolo_image(tmp_path, "f", "")  # background
    index = load("yolo", tmp_path, "images/train")
    assert [s.image_id for s in index.samples] == ["train/a", "train/d", "train/e", "train/f"]
    a = index.samples[0]
    np.testing.assert_allclose(a.boxes, [[40, 15, 60, 35], [0, 20, 15, 30]])
    assert a.classes.tolist() == [1, 0] and not a.difficult.any()
    assert index.report.num_background == 3
    labels = tmp_path / "labels" / "train"
    assert [(p.file, p.issue, p.detail) for p in index.report.problems] == [
        (labels / "a.txt", Issue.CLIPPED_BOX, "'red_box' -5,20,15,30 in 100x50"),
        (labels / "b.txt", Issue.MALFORMED_ENTRY,
         "line 1: 4 values, expected 5 (class cx cy w h)"),
        (labels / "c.txt", Issue.MALFORMED_ENTRY,
         "line 1: expected an integer class and finite numbers: '0 0.5 0.5 0.2 nan'"),
        (labels / "d.txt", Issue.UNKNOWN_CLASS, "class index 2 (the class list has 2)"),
        (labels / "d.txt", Issue.NOT_NORMALIZED, "0 50 25 10 10"),
        (labels / "d.txt", Issue.DEGENERATE_BOX, "'red_box' 50,20,50,30"),
        (labels / "e.txt", Issue.MISSING_LABEL, ""),
    ]  # fmt: skip
    assert index.report.count_effect(Effect.BACKGROUND) == 1
    assert "taken as background 1" in index.report.headline()


def test_yolo_list_split_and_missing_labels_everywhere(tmp_path: Path):
    yolo_image(tmp_path, "a", "0 0.5 0.5 0.5 0.5\n")
    yolo_image(tmp_path, "b", "1 0.5 0.5 0.5 0.5\n")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "val.txt").write_text(
        "../images/train/b.jpg\n\n../images/train/gone.jpg\n" + f"{tmp_path}/images/train/a.jpg\n"
    )
    index = load("yolo", tmp_path, "lists/val.txt")
    assert [s.image_id for s in index.samples] == ["val/b", "val/a"]
    assert [s.classes.tolist() for s in index.samples] == [[1], [0]]
    assert issues(index) == [(Issue.MISSING_IMAGE, "")]

    for label in (tmp_path / "labels" / "train").iterdir():
        label.unlink()
    with pytest.raises(FileNotFoundError, match="none of its 2 images has a label file"):
        load("yolo", tmp_path, "images/train")
    with pytest.raises(FileNotFoundError, match="YOLO split not found"):
        load("yolo", tmp_path, "images/nothing")


def test_yolo_cache_sees_changed_labels_and_new_images(tmp_path: Path):
    yolo_image(tmp_path, "a", "0 0.5 0.5 0.5 0.5\n")
    first = load("yolo", tmp_path, "images/train", cache=True)
    assert list((tmp_path / ".cache").glob("yolo_index_*.pkl"))
    label = tmp_path / "labels" / "train" / "a.txt"
    label.write_text("0 0.5 0.5 0.5 0.5\n1 0.2 0.2 0.1 0.1\n")
    os.utime(label, ns=(1, 1))  # a different mtime even on a coarse clock
    second = load("yolo", tmp_path, "images/train", cache=True)
    assert (first.report.num_objects, second.report.num_objects) == (1, 2)
    write_image(tmp_path / "images" / "train" / "deeper" / "b.jpg")
    third = load("yolo", tmp_path, "images/train", cache=True)
    assert [s.image_id for s in third.samples] == ["train/a", "train/deeper/b"]


# --- config, get_map, training --------------------------------------------------------------


def test_format_key_is_validated_and_splits_pass_through(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"data.format: expected 'voc' \| 'coco' \| 'yolo'"):
        load_config(tiny_config(tmp_path), ["data.format=json"])
    with pytest.raises(ConfigError, match="the demo dataset is VOC; set it to null"):
        load_config(tiny_config(tmp_path), ["data.format=coco", "data.demo_dataset=VOCdemo"])
    cfg = load_config(tiny_config(tmp_path), ["data.format=yolo"])
    assert split_names(cfg, "lists/x.txt") == ["lists/x.txt"]
    assert split_names(cfg, "more") == ["more"]
    assert split_names(cfg, "val") == ["TINY/train"]


def coco_config(tmp_path: Path, capsys, extra: list[str] = ()):
    """tiny_config's data as COCO with category ids 7 (red_box) and 3 (blue_disc), image ids
    100, 110, ... and one crowd annotation."""
    voc_path = tiny_config(tmp_path)
    coco = to_coco(capsys, tmp_path / "VOCdevkit", tmp_path / "coco")
    path = coco / COCO_SPLIT
    data = json.loads(path.read_text())
    remap = {1: 7, 2: 3}
    data["categories"] = sorted(
        [{"id": remap[c["id"]], "name": c["name"]} for c in data["categories"]]
        + [{"id": 9, "name": "ghost"}],
        key=lambda c: c["id"],
    )
    for image in data["images"]:
        image["id"] = 90 + 10 * image["id"]
    for ann in data["annotations"]:
        ann["category_id"] = remap[ann["category_id"]]
        ann["image_id"] = 90 + 10 * ann["image_id"]
    data["annotations"][0]["iscrowd"] = 1
    path.write_text(json.dumps(data))
    split = f"[{COCO_SPLIT}]"
    overrides = [
        "data.format=coco", f"data.root={coco}", f"data.train_split={split}",
        f"data.val_split={split}", f"data.test_split={split}", *extra,
    ]  # fmt: skip
    return load_config(voc_path, overrides), path


def test_get_map_on_coco_writes_results_pycocotools_scores_alike(tmp_path: Path, capsys):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cfg, source = coco_config(tmp_path, capsys)
    run = tmp_path / "run"
    run.mkdir()
    save_config(cfg, run / "config.yaml")
    samples = load_config_split(cfg, split_names(cfg, "test"), key="--split test")
    assert sum(s.difficult.sum() for s in samples) == 1  # the crowd annotation
    # Detections from the truth: shifted, some of the wrong class, plus false positives.
    rng = np.random.default_rng(0)
    detections = []
    for sample in samples:
        boxes = sample.boxes + rng.uniform(-6, 6, sample.boxes.shape)
        classes = np.where(rng.random(len(boxes)) < 0.2, 1 - sample.classes, sample.classes)
        extra = rng.uniform(0, 60, (2, 2))
        boxes = np.concatenate([boxes, np.concatenate([extra, extra + 40], 1)])
        classes = np.concatenate([classes, [0, 1]])
        detections.append(ImageDetections(boxes, rng.random(len(boxes)), classes))
    out = tmp_path / "map_out"
    write_detections(out / DETECTIONS_DIR, [s.image_id for s in samples], detections, CLASSES)
    assert get_map.main(["--run", str(run), "--out", str(out), "--mode", "score"]) == 0
    assert "own ids written to" in capsys.readouterr().out
    ours = json.loads((out / "results.json").read_text())["coco"]

    written = out / RESULTS_DIR / source.name
    results = json.loads(written.read_text())
    assert {r["category_id"] for r in results} == {3, 7}
    assert {r["image_id"] for r in results} == {100 + 10 * i for i in range(8)}
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(source))
        evaluator = COCOeval(truth, truth.loadRes(str(written)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert 0.1 < ours["map"] < 0.9  # a score that a wrong id mapping would change
    np.testing.assert_allclose(
        [ours[k] for k in ("map", "ap50", "ap75", "ar1", "ar10", "ar100")],
        [evaluator.stats[i] for i in (0, 1, 2, 6, 7, 8)],
        atol=1e-6,
    )


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_trainer_takes_each_format(tmp_path: Path, capsys, fmt: str):
    from utils.engine.trainer import Trainer

    small = ["model.input_size=[64,64]", "train.epochs=1", "train.eval_period=0"]
    if fmt == "coco":
        cfg, _ = coco_config(tmp_path, capsys, small)
    else:
        voc_path = tiny_config(tmp_path)
        classes = str(tmp_path / "classes.txt")
        voc = tmp_path / "VOCdevkit"
        convert(capsys, "voc", "yolo", voc, "TINY/train", tmp_path / "yolo", "--classes", classes)
        overrides = [
            "data.format=yolo", f"data.root={tmp_path / 'yolo'}",
            "data.train_split=[images/train]", "data.val_split=[images/train]", *small,
        ]  # fmt: skip
        cfg = load_config(voc_path, overrides)
    trainer = Trainer(cfg, verbose=0)
    assert load_config(trainer.run_dir.config).data.format == fmt
    # After loading, every format is the same Samples, so the batches of the trainer's own
    # pipeline are where a format can still go wrong; the steps after them are shared.
    trainer.build()
    train_ds, _, steps = trainer.phase_datasets(trainer.phases[0])
    images, boxes = next(iter(train_ds))
    assert steps == 2 and images.shape == (4, 64, 64, 3)
    real = boxes.numpy()[boxes.numpy()[..., 2] > 0]
    assert len(real) >= 4 and set(real[:, 4]) <= {0, 1}
