"""predict.py and get_map.py end to end on a tiny run folder (untrained weights: plumbing only)."""

import json
import shutil

import cv2
import numpy as np
import pytest

import get_map
import predict
from tests.run_fixtures import make_run
from tests.training_fixtures import REPO, tiny_config
from utils.config import ConfigError, load_config, load_run_config
from utils.engine.run_dir import RunDir

# one worker builds the module fixtures once (see tests/conftest.py)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("scripts_predict_map")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("scripts"))


@pytest.fixture(scope="module")
def images(run):
    return run.parent / "VOCdevkit" / "TINY" / "JPEGImages"


def test_predict_image_with_crops_and_counts(run, images, tmp_path, capsys):
    out = tmp_path / "out"
    source = images / "img000.jpg"
    code = predict.main(["--run", str(run), "--source", str(source), "--out", str(out),
                         "--conf", "0.001", "--crop", "--count"])
    assert code == 0
    annotated = cv2.imread(str(out / "img000.jpg"))
    assert annotated.shape == cv2.imread(str(source)).shape
    printed = capsys.readouterr().out
    assert "img000.jpg: " in printed and "annotated image(s) written" in printed
    # one line per detection "name score [x1, y1, x2, y2]", and one crop per detection
    lines = [line for line in printed.splitlines() if line.endswith("]")]
    assert lines and len(lines) == len(list((out / "crops").glob("img000_*.png")))


def test_predict_folder_video_heatmap_fps(run, images, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict.main(["--run", str(run), "--source", str(images), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.glob("*.jpg")) == sorted(p.name for p in images.iterdir())

    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (96, 64))
    for k in range(3):
        writer.write(np.full((64, 96, 3), 60 * k, np.uint8))
    writer.release()
    code = predict.main(["--run", str(run), "--source", str(video), "--out", str(out), "--count"])
    assert code == 0
    result = cv2.VideoCapture(str(out / "clip.mp4"))
    assert int(result.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert (int(result.get(cv2.CAP_PROP_FRAME_WIDTH)), int(result.get(cv2.CAP_PROP_FRAME_HEIGHT))) \
        == (96, 64)

    source = images / "img001.jpg"
    args = ["--run", str(run), "--source", str(source), "--out", str(out)]
    assert predict.main([*args, "--mode", "heatmap"]) == 0
    assert cv2.imread(str(out / "img001_heatmap.png")).shape == cv2.imread(str(source)).shape
    capsys.readouterr()
    assert predict.main([*args, "--mode", "fps", "--repeats", "2"]) == 0
    assert "ms/image" in capsys.readouterr().out


def test_predict_user_mistakes_are_one_line(run, tmp_path, capsys):
    bare = make_run(tmp_path, weights=False)
    source = str(bare.parent / "VOCdevkit" / "TINY" / "JPEGImages" / "img000.jpg")
    assert predict.main(["--run", str(bare), "--source", source]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no weights" in err and "python train.py" in err
    assert predict.main(["--run", str(run), "--source", str(tmp_path / "missing.jpg")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert predict.main(["--run", str(run), "--source", "9"]) == 2  # no camera 9 here
    assert "camera 9 cannot be opened" in capsys.readouterr().err


def test_get_map_both_modes_writes_everything(run, tmp_path, capsys):
    out = tmp_path / "map_out"
    assert get_map.main(["--run", str(run), "--split", "train", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "time: load model" in printed and "predict" in printed and "score" in printed
    files = sorted((out / "detection-results" / "TINY").glob("*.txt"))
    assert len(files) == 8
    first = files[0].read_text().splitlines()
    assert 0 < len(first) <= 100  # at most eval.max_detections, down to score 0.001
    name, score, *box = first[0].split()
    assert name in ("red_box", "blue_disc") and 0.001 <= float(score) <= 1 and len(box) == 4
    report = json.loads((out / "results.json").read_text())
    assert report["split"] == ["TINY/train"] and report["num_images"] == 8
    assert set(report["coco"]) >= {"map", "ap50"}
    assert [c["num_gt"] for c in report["classes"]] == [8, 4]  # tiny set: 12 objects
    for png in ("ap_per_class.png", "ground_truth_counts.png", "pr_curves/red_box.png",
                "pr_curves/blue_disc.png"):
        assert (out / png).stat().st_size > 1000


def test_get_map_score_only_needs_no_model(tmp_path, capsys):
    # perfect detections, written by hand from the ground truth: every AP is 1
    run = make_run(tmp_path, weights=False)
    out = tmp_path / "map_out"
    assert get_map.main(["--run", str(run), "--split", "train", "--out", str(out),
                         "--mode", "predict"]) == 2
    assert "no weights" in capsys.readouterr().err
    truth_dir = out / "ground-truth"
    # get_map writes ground truth in predict mode only; make it here from the annotations
    from utils.data.voc import load_split
    from utils.eval.scoring import truths_of, write_ground_truth

    samples = load_split(run.parent / "VOCdevkit", ["TINY/train"], ["red_box", "blue_disc"]).samples
    write_ground_truth(truth_dir, [s.image_id for s in samples], truths_of(samples),
                       ["red_box", "blue_disc"])
    shutil.copytree(truth_dir, out / "detection-results")
    for path in (out / "detection-results").rglob("*.txt"):
        lines = [line.split() for line in path.read_text().splitlines()]
        path.write_text("".join(f"{p[0]} 0.9 {' '.join(p[1:5])}\n" for p in lines))
    assert get_map.main(["--run", str(run), "--split", "train", "--out", str(out),
                         "--mode", "score"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["voc_map"] == pytest.approx(1.0)
    assert report["voc_map_11point"] == pytest.approx(1.0)
    assert report["coco"]["map"] == pytest.approx(1.0)
    assert "load model" not in capsys.readouterr().out

    (out / "detection-results" / "TINY" / "img003.txt").unlink()
    assert get_map.main(["--run", str(run), "--split", "train", "--out", str(out),
                         "--mode", "score"]) == 2
    assert "1 of 8 images have no detection file" in capsys.readouterr().err


def test_predict_and_get_map_on_a_run_folder_from_an_older_version(tmp_path):
    """A run whose config.yaml predates settings added since (tests/fixtures/old_run: demo.yaml as
    saved at commit bcb70c3) takes those from base.yaml; its own settings still decide."""
    from nets.yolo import build_model

    tiny = load_config(tiny_config(tmp_path))  # the tiny data, in place of the demo set
    run = RunDir(tmp_path / "old-run")
    run.weights_dir.mkdir(parents=True)
    shutil.copy(REPO / "tests" / "fixtures" / "old_run" / "config.yaml", run.config)
    with pytest.raises(ConfigError, match="missing"):
        load_config(run.config)  # old indeed: the current schema alone rejects it
    overrides = [
        f"model.anchors={tiny.model.anchors}",
        "model.input_size=[64,64]",
        f"data.root={tiny.data.root}",
        f"data.classes={tiny.data.classes}",
        "data.test_split=[TINY/train]",
        "data.demo_dataset=null",
    ]
    cfg = load_run_config(run.config, overrides)
    build_model(cfg.model, 2).save_weights(run.best_weights)
    source = tmp_path / "VOCdevkit" / "TINY" / "JPEGImages" / "img000.jpg"
    out = tmp_path / "out"
    assert predict.main(["--run", str(run), "--source", str(source), "--out", str(out),
                         *overrides]) == 0
    assert cv2.imread(str(out / "img000.jpg")).shape == cv2.imread(str(source)).shape
    assert get_map.main(["--run", str(run), *overrides]) == 0  # --split test, into <run>/map_out
    report = json.loads((run.map_out / "results.json").read_text())
    assert report["split"] == ["TINY/train"] and report["num_images"] == 8
