"""benchmarks/compare_ultralytics.py without the Ultralytics environment: the YOLO-txt
conversion and data yaml it hands Ultralytics, our scorer on hand-made detection files, the
tables, and its one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks import compare_ultralytics as compare
from tests.training_fixtures import CLASSES, tiny_config
from utils.config import class_names, load_config
from utils.data.formats import load_files

# make_tiny_voc's 8 images: image i holds red_box (class 0), odd images also blue_disc (1).
RED_BOXES, BLUE_DISCS = 8, 4


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The tiny VOC config with a val split of its own: the last three train images."""
    path = tiny_config(tmp_path)
    split = tmp_path / "VOCdevkit" / "TINY" / "ImageSets" / "Main"
    (split / "val.txt").write_text("img005\nimg006\nimg007\n")
    return path


def _cfg(path: Path, *overrides: str):
    return load_config(path, ["data.val_split=[TINY/val]", *overrides])


def _args(**changes) -> argparse.Namespace:
    """The command line ``--config x.yaml --minutes 3`` with ``changes``."""
    args = vars(compare.parse_args(["--config", "x.yaml", "--minutes", "3"]))
    return argparse.Namespace(**{**args, **changes})


def _write_detections(path: Path, per_image: dict[str, list[tuple]]) -> Path:
    """``per_image``: image id -> [(x1, y1, x2, y2, class, score)]."""
    images = [
        {
            "image_id": image_id,
            "boxes": [list(d[:4]) for d in found],
            "classes": [d[4] for d in found],
            "scores": [d[5] for d in found],
        }
        for image_id, found in per_image.items()
    ]
    path.write_text(json.dumps({"images": images}))
    return path


def _truth_detections(samples, keep=lambda i: True, score=0.9) -> dict[str, list[tuple]]:
    """Each sample's ground truth as detections (for the samples ``keep`` takes by index)."""
    found = {}
    for i, s in enumerate(samples):
        pairs = zip(s.boxes.tolist(), s.classes.tolist(), strict=True)
        found[s.image_id] = [(*box, c, score) for box, c in pairs] if keep(i) else []
    return found


def test_conversion_and_data_yaml(config: Path, tmp_path: Path) -> None:
    cfg = _cfg(config)
    work = tmp_path / "work"
    data = yaml.safe_load(compare.prepare_data(cfg, work).read_text())
    assert data["nc"] == 2 and data["names"] == dict(enumerate(CLASSES))
    assert len(data["train"]) == len(data["val"]) == 1
    for role, count in (("train", 8), ("val", 3)):
        folder = Path(data[role][0])
        assert folder.is_absolute() and folder == work / "data" / role / "0" / "images" / role
        images = sorted(folder.glob("*.jpg"))
        assert len(images) == count
        labels = folder.parents[1] / "labels" / role
        assert sorted(p.stem for p in labels.glob("*.txt")) == [p.stem for p in images]

    # Ultralytics reads what we read: the converted val split loads to the same boxes, and the
    # images are hard links to the originals (no copies of a large dataset).
    original = compare.load_splits(cfg)[1]
    converted = load_files(
        "yolo", work / "data" / "val" / "0", ["images/val"], class_names(cfg),
        coco_images="", cache=False,
    ).samples  # fmt: skip
    assert [s.image_path.stem for s in converted] == [s.image_path.stem for s in original]
    for ours, theirs in zip(original, converted, strict=True):
        np.testing.assert_allclose(theirs.boxes, ours.boxes, atol=1e-3)
        np.testing.assert_array_equal(theirs.classes, ours.classes)
        assert os.path.samefile(theirs.image_path, ours.image_path)


def test_a_split_without_images_is_left_out(config: Path, tmp_path: Path) -> None:
    empty = tmp_path / "VOCdevkit" / "TINY" / "ImageSets" / "Main" / "none.txt"
    empty.write_text("")
    cfg = _cfg(config, "data.train_split=[TINY/train,TINY/none]")
    data = yaml.safe_load(compare.prepare_data(cfg, tmp_path / "work").read_text())
    assert [Path(p).parts[-3] for p in data["train"]] == ["0"]


def test_job_settings_follow_the_config(config: Path, tmp_path: Path) -> None:
    cfg = _cfg(config, "eval.nms_iou=0.6", "eval.max_detections=50")
    job = compare.ultralytics_job(cfg, _args(), tmp_path, tmp_path / "data.yaml")
    assert job["train"]["imgsz"] == job["predict"]["imgsz"] == 128  # model.input_size
    assert job["train"]["hours"] == pytest.approx(3 / 60)
    assert job["train"]["model"] == "yolov8n.yaml" and job["train"]["device"] == "cpu"
    assert (job["predict"]["iou"], job["predict"]["max_det"]) == (0.6, 50)
    assert job["predict"]["conf"] == cfg.eval.map_score_threshold
    assert (
        compare.ultralytics_job(cfg, _args(imgsz=320), tmp_path, tmp_path)["train"]["imgsz"] == 320
    )


def test_perfect_detections_score_one(config: Path, tmp_path: Path) -> None:
    cfg = _cfg(config, "data.val_split=[TINY/train]")
    samples = compare.load_splits(cfg)[1]
    path = _write_detections(tmp_path / "d.json", _truth_detections(samples))
    assert compare.score_detections(path, samples, 2, 0.5) == pytest.approx(1.0)


def test_detections_on_half_the_images_score_their_recall(config: Path, tmp_path: Path) -> None:
    cfg = _cfg(config, "data.val_split=[TINY/train]")
    samples = compare.load_splits(cfg)[1]
    counts = np.bincount(np.concatenate([s.classes for s in samples]), minlength=2)
    assert counts.tolist() == [RED_BOXES, BLUE_DISCS]
    # Images 0-3 hold 4 of the 8 red boxes and 2 of the 4 blue discs: every detection is right,
    # so each AP is the recall reached, 0.5, with precision 1.
    half = _truth_detections(samples, keep=lambda i: i < 4)
    path = _write_detections(tmp_path / "d.json", half)
    assert compare.score_detections(path, samples, 2, 0.5) == pytest.approx(0.5)


def test_a_false_positive_ranked_first(config: Path, tmp_path: Path) -> None:
    cfg = _cfg(config, "data.val_split=[TINY/train]")
    samples = compare.load_splits(cfg)[1]
    found = _truth_detections(samples)
    found[samples[0].image_id].append((0.0, 0.0, 2.0, 2.0, 0, 0.95))  # a red box at nothing
    # red_box: precision k/(k+1) at recall k/8, its envelope 8/9 everywhere: AP 8/9;
    # blue_disc AP 1: mAP (8/9 + 1) / 2 = 17/18.
    path = _write_detections(tmp_path / "d.json", found)
    assert compare.score_detections(path, samples, 2, 0.5) == pytest.approx(17 / 18)


def test_an_image_without_an_entry_is_an_error(config: Path, tmp_path: Path) -> None:
    samples = compare.load_splits(_cfg(config))[1]
    found = _truth_detections(samples)
    del found[samples[-1].image_id]
    path = _write_detections(tmp_path / "d.json", found)
    with pytest.raises(compare.RunFailed, match="1 of 3 images"):
        compare.read_detections(path, samples)


def test_results_and_the_table(tmp_path: Path) -> None:
    results = tmp_path / "results.csv"
    results.write_text(
        "epoch,time,train/box_loss,metrics/mAP50(B)\n1,10.5,3.2,0.1\n2,20.1,2.9,0.25\n"
    )
    assert compare.results_summary(results) == (2, 0.25)

    run = tmp_path / "ours" / "tiny-20260101-000000"  # as train.py leaves it
    run.mkdir(parents=True)
    (run / "history.csv").write_text(
        "epoch,loss,val_map\n0,5.0,nan\n1,4.0,0.3\n2,3.0,0.45\n3,2.5,\n"
    )
    assert compare.ours_result(tmp_path / "ours") == (4, 0.45)
    with pytest.raises(compare.RunFailed, match="no run folder"):
        compare.ours_result(tmp_path / "nothing")

    rows = [
        compare.Row("YOLOv8n (Ultralytics)", 10, 10.6, 40, 0.3, 0.35),
        compare.Row("ours (tiny)", 10, 9.8, 4, 0.45),
    ]
    lines = compare.table(rows, 0.5)
    assert lines[0].startswith("| framework |") and "val mAP@0.5 (our scorer)" in lines[0]
    assert lines[2] == "| YOLOv8n (Ultralytics) | 10 | 10.6 | 40 | 0.3000 | 0.3500 | 1.00 |"
    assert lines[3] == "| ours (tiny) | 10 | 9.8 | 4 | 0.4500 | - | 1.50 |"
    assert compare.table([compare.Row("YOLOv8n", 1, 1.2, 3, 0.0)], 0.5)[2].endswith("| - |")


def test_ours_gets_the_budget_and_a_run_folder_in_the_work_folder(tmp_path: Path) -> None:
    args = _args(overrides=["train.batch_size=4"], minutes=2.5)
    assert compare.ours_overrides(args, tmp_path) == [
        "train.batch_size=4",
        "train.time_budget=2.5",
        f"train.save_dir={tmp_path / 'ours'}",
    ]


def test_streamed_output_reaches_the_log(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    env = dict(os.environ)
    compare.run_streamed("hello", [sys.executable, "-c", "print('hi')"], log, env=env, cwd=tmp_path)
    assert log.read_text().strip() == "hi"
    with pytest.raises(compare.RunFailed, match="boom failed"):
        compare.run_streamed("boom", [sys.executable, "-c", "exit(3)"], log, env=env, cwd=tmp_path)


def test_blocked_lines_match_the_job_script() -> None:
    """The job script is never imported here (it needs the venv): its marker is read as text."""
    assert f'BLOCKED = "{compare.BLOCKED}"' in compare.JOB_SCRIPT.read_text()


def _main_error(capsys, argv: list[str]) -> tuple[int, list[str]]:
    status = compare.main(argv)
    return status, capsys.readouterr().err.strip().splitlines()


def test_a_missing_venv_is_one_line_and_exit_2(config: Path, tmp_path: Path, capsys) -> None:
    argv = ["--config", str(config), "--minutes", "1", "--venv", str(tmp_path / "nope")]
    status, err = _main_error(capsys, argv)
    assert status == 2 and len(err) == 1
    assert err[0].startswith("error: no Python environment at") and "pip install" in err[0]


def test_a_venv_without_ultralytics_is_exit_2(config: Path, tmp_path: Path, capsys) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)  # the project's: no ultralytics
    status, err = _main_error(
        capsys, ["--config", str(config), "--minutes", "1", "--venv", str(venv)]
    )
    assert status == 2 and len(err) == 1 and "has no ultralytics" in err[0]


def test_the_venv_comes_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(compare.VENV_VARIABLE, str(tmp_path / "env-venv"))
    assert compare.resolve_venv(None) == tmp_path / "env-venv"
    assert compare.resolve_venv(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv(compare.VENV_VARIABLE)
    assert compare.resolve_venv(None) == compare.DEFAULT_VENV


def test_bad_input_is_exit_2(config: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(compare, "check_venv", lambda venv: "ultralytics (faked)")
    (tmp_path / "VOCdevkit" / "TINY" / "ImageSets" / "Main" / "none.txt").write_text("")
    cases = [
        (["--config", str(tmp_path / "nope.yaml")], "config file not found"),
        (["--config", str(config), "data.val_split=[TINY/none]"], "data.val_split"),
        (["--config", str(config), "train.epochz=3"], "train.epochz: unknown key"),
    ]
    for argv, message in cases:
        status, err = _main_error(capsys, [*argv, "--minutes", "1"])
        assert status == 2 and len(err) == 1 and message in err[0], err
    status, err = _main_error(capsys, ["--config", str(config), "--minutes", "0"])
    assert status == 2 and err == ["error: --minutes must be positive, got 0"]
