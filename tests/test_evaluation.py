"""get_map's scoring library: hand-worked AP cases, COCO figures against pycocotools, files."""

import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tests.test_metrics import BOX_A, BOX_B, dets, truth
from utils.eval.metrics import ImageDetections, ImageTruth, evaluate_class, evaluate_voc, mean_ap
from utils.eval.scoring import (
    COCO_STAT_NAMES,
    DetectionFileError,
    coco_scores,
    format_table,
    read_detections,
    score_detections,
    split_names,
    write_detections,
    write_ground_truth,
    write_report,
)

SIZES = [(200, 200)] * 3


# --- hand-worked cases not in test_metrics.py --------------------------------------------------


def test_detection_on_image_without_truth_is_false_positive():
    # image 2 has no objects: its 0.9 detection is an FP ranked first, then the TP -> AP 0.5
    gts = [truth([BOX_A], [0]), truth([], [])]
    result = evaluate_class(gts, [dets([BOX_A], [0.8], [0]), dets([BOX_A], [0.9], [0])], 0)
    np.testing.assert_allclose(result.precision, [0.0, 0.5])
    np.testing.assert_allclose(result.recall, [0.0, 1.0])
    assert result.ap == pytest.approx(0.5)


def test_class_without_detections_counts_zero_in_voc_and_coco():
    # class 0 found exactly (AP 1 at every IoU), class 1 never detected (AP 0): both means = 0.5
    gts = [truth([BOX_A, BOX_B], [0, 1])]
    detections = [dets([BOX_A], [0.9], [0])]
    report, _ = score_detections(
        gts, detections, SIZES[:1], ["a", "b"], iou_threshold=0.5, score_threshold=0.5
    )
    assert [c.ap for c in report.classes] == [pytest.approx(1.0), 0.0]
    assert report.classes[1].num_det == 0
    assert report.voc_map == pytest.approx(0.5)
    assert report.voc_map_11point == pytest.approx(0.5)
    assert report.coco["map"] == pytest.approx(0.5)
    assert report.coco["ap50"] == pytest.approx(0.5)
    assert report.classes[0].coco_ap == pytest.approx(1.0)
    assert report.classes[1].coco_ap == 0.0
    # P/R/F1 at 0.5: class 0 is 1/1/1, class 1 has nothing above the threshold
    assert (report.classes[0].precision, report.classes[0].recall, report.classes[0].f1) == (
        pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0)
    )
    assert (report.classes[1].precision, report.classes[1].recall) == (0.0, 0.0)


def test_no_detections_at_all():
    report, _ = score_detections(
        [truth([BOX_A], [0])], [dets([], [], [])], SIZES[:1], ["a"], iou_threshold=0.5,
        score_threshold=0.5,
    )
    assert report.voc_map == 0.0
    assert all(report.coco[name] == 0.0 for name in COCO_STAT_NAMES)


def test_difficult_detection_is_ignored_by_coco_too():
    # the only detection lies on a difficult object: neither TP nor FP in either scorer, and
    # the ranked FP-free list keeps AP 1 for the other (found) object
    gts = [truth([BOX_A, BOX_B], [0, 0], difficult=[False, True])]
    detections = [dets([BOX_B, BOX_A], [0.95, 0.9], [0, 0])]
    report, _ = score_detections(
        gts, detections, SIZES[:1], ["a"], iou_threshold=0.5, score_threshold=0.5
    )
    assert report.voc_map == pytest.approx(1.0)
    assert report.coco["ap50"] == pytest.approx(1.0)
    assert report.classes[0].num_gt == 1


# --- against pycocotools -------------------------------------------------------------------


def random_data(seed: int, num_images: int = 60, num_classes: int = 3):
    """Sparse ground truth, jittered true detections, random false ones, some objects missed."""
    rng = np.random.default_rng(seed)
    truths, detections = [], []
    for _ in range(num_images):
        n = int(rng.integers(0, 5))
        xy = rng.uniform(0, 400, (n, 2))
        gt = np.concatenate([xy, xy + rng.uniform(30, 150, (n, 2))], axis=1)
        cls = rng.integers(0, num_classes, n)
        truths.append(ImageTruth(gt, cls, np.zeros(n, bool)))
        found = rng.random(n) < 0.8
        true_boxes = gt[found] + rng.normal(0, 6, (int(found.sum()), 4))
        m = int(rng.integers(0, 6))
        xy = rng.uniform(0, 450, (m, 2))
        false_boxes = np.concatenate([xy, xy + rng.uniform(20, 150, (m, 2))], axis=1)
        boxes = np.concatenate([true_boxes, false_boxes]).reshape(-1, 4)
        classes = np.concatenate([cls[found], rng.integers(0, num_classes, m)])
        detections.append(ImageDetections(boxes, rng.random(len(boxes)), classes))
    return truths, detections


def pycocotools_stats(tmp_path, truths, detections, image_hw, num_classes):
    """An independent COCO evaluation through JSON files, as a user would run pycocotools."""
    images, annotations, results = [], [], []
    for i, (t, d, (h, w)) in enumerate(zip(truths, detections, image_hw, strict=True)):
        images.append({"id": i + 1, "height": h, "width": w})
        for (x1, y1, x2, y2), c, hard in zip(t.boxes, t.classes, t.difficult, strict=True):
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                "area": (x2 - x1) * (y2 - y1), "iscrowd": int(hard)})
        for (x1, y1, x2, y2), s, c in zip(d.boxes, d.scores, d.classes, strict=True):
            results.append({"image_id": i + 1, "category_id": int(c) + 1,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s})
    categories = [{"id": k + 1, "name": f"c{k}"} for k in range(num_classes)]
    gt_file, dt_file = tmp_path / "gt.json", tmp_path / "dt.json"
    gt_file.write_text(json.dumps({"images": images, "annotations": annotations,
                                   "categories": categories}))
    dt_file.write_text(json.dumps(results))
    gt = COCO(str(gt_file))
    evaluator = COCOeval(gt, gt.loadRes(str(dt_file)), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_voc_ap_close_to_coco_ap50_on_random_detections(seed):
    truths, detections = random_data(seed)
    voc = mean_ap(evaluate_voc(truths, detections, 3))
    coco = coco_scores(truths, detections, [(600, 600)] * len(truths), 3)
    assert 0.2 < voc < 0.9  # a meaningful middle, not a degenerate 0 or 1
    assert abs(voc - coco.stats["ap50"]) < 0.02


def test_coco_figures_are_exactly_pycocotools(tmp_path):
    truths, detections = random_data(3, num_images=30)
    # make some objects difficult: they must become crowd regions on both sides
    truths = [ImageTruth(t.boxes, t.classes, np.arange(len(t.classes)) % 4 == 3) for t in truths]
    sizes = [(480, 640)] * len(truths)
    expected = pycocotools_stats(tmp_path, truths, detections, sizes, 3)
    report, _ = score_detections(
        truths, detections, sizes, ["a", "b", "c"], iou_threshold=0.5, score_threshold=0.5
    )
    assert [report.coco[name] for name in COCO_STAT_NAMES] == list(expected)


# --- files and report ----------------------------------------------------------------------


def test_detection_files_round_trip(tmp_path):
    names = ["cat", "dog"]
    ids = ["VOC2007/000001", "VOC2012/000001"]  # same stem, two datasets: two files
    detections = [dets([[1.234, 2, 30.5, 40]], [0.9876543], [1]), dets([], [], [])]
    write_detections(tmp_path, ids, detections, names)
    assert (tmp_path / "VOC2007/000001.txt").read_text() == "dog 0.987654 1.23 2.00 30.50 40.00\n"
    assert (tmp_path / "VOC2012/000001.txt").read_text() == ""
    back = read_detections(tmp_path, ids, names)
    np.testing.assert_allclose(back[0].boxes, [[1.23, 2, 30.5, 40]])
    np.testing.assert_allclose(back[0].scores, [0.987654])
    assert back[0].classes.tolist() == [1] and len(back[1].scores) == 0


def test_ground_truth_file_marks_difficult(tmp_path):
    gts = [truth([BOX_A, BOX_B], [0, 1], [False, True])]
    write_ground_truth(tmp_path, ["D/x"], gts, ["a", "b"])
    assert (tmp_path / "D/x.txt").read_text().splitlines() == [
        "a 0.00 0.00 10.00 10.00",
        "b 20.00 20.00 40.00 40.00 difficult",
    ]


def test_read_detections_errors_name_the_file(tmp_path):
    with pytest.raises(DetectionFileError, match="1 of 1 images have no detection file"):
        read_detections(tmp_path, ["D/x"], ["a"])
    (tmp_path / "D").mkdir()
    (tmp_path / "D/x.txt").write_text("a 0.5 0 0 10 10\nzebra 0.4 0 0 5 5\n")
    with pytest.raises(DetectionFileError, match=r"x.txt:2: unknown class 'zebra'"):
        read_detections(tmp_path, ["D/x"], ["a"])
    (tmp_path / "D/x.txt").write_text("a 0.5 0 0 10\n")
    with pytest.raises(DetectionFileError, match=r"x.txt:1: expected"):
        read_detections(tmp_path, ["D/x"], ["a"])


def test_report_json_and_plots(tmp_path):
    gts = [truth([BOX_A], [0])]
    report, curves = score_detections(
        gts, [dets([BOX_A], [0.9], [0])], SIZES[:1], ["a", "no truth"], iou_threshold=0.5,
        score_threshold=0.5,
    )
    written = write_report(tmp_path, report, curves, {"split": ["D/test"]})
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["split"] == ["D/test"]
    assert data["voc_map"] == 1.0
    assert data["classes"][1]["ap"] is None  # NaN (no ground truth) is written as null
    assert data["coco"]["map"] == pytest.approx(1.0)
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert {"ap_per_class.png", "ground_truth_counts.png", "pr_curves/a.png",
            "pr_curves/no_truth.png"} <= names
    assert all(p.stat().st_size > 1000 for p in written if p.suffix == ".png")
    assert "VOC mAP@0.5: 1.0000" in format_table(report)
    assert math.isnan(report.classes[1].coco_ap)


def test_split_names(tmp_path):
    from tests.training_fixtures import tiny_config
    from utils.config import load_config

    cfg = load_config(tiny_config(tmp_path), ["data.test_split=[A/test, B/test, A/extra]"])
    assert split_names(cfg, "test") == ["A/test", "B/test", "A/extra"]
    assert split_names(cfg, "val") == ["TINY/train"]
    assert split_names(cfg, "C/holdout") == ["C/holdout"]
    assert split_names(cfg, "trainval") == ["A/trainval", "B/trainval"]
