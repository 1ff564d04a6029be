"""INT8 and dynamic-range TFLite exports of a trained model detect what the float export does."""

import logging

import numpy as np
import pytest

from tests.conftest import TRAINED_RUN_GROUP
from utils.boxes import box_iou
from utils.deploy import export as export_module
from utils.deploy.export import calibration_images, export, load_exported
from utils.deploy.runs import load_run

pytestmark = [pytest.mark.slow, TRAINED_RUN_GROUP]

interpreter_module = pytest.importorskip("ai_edge_litert.interpreter")


@pytest.fixture(scope="module")
def trained(trained_run_dir):
    run = load_run(trained_run_dir)
    return run, calibration_images(run.config, 300)


def _matched(want, got) -> list[str]:
    """Detections of ``want`` (scores >= 0.6, clear of the 0.5 threshold) with no partner in
    ``got``: same class, IoU >= 0.8, score within 0.1."""
    missing = []
    for box, score, cls in zip(want.boxes, want.scores, want.classes, strict=True):
        if score < 0.6:
            continue
        iou = np.asarray(box_iou(box[None], got.boxes))[0] if len(got.scores) else np.zeros(0)
        ok = (got.classes == cls) & (iou >= 0.8) & (np.abs(got.scores - score) <= 0.1)
        if not ok.any():
            missing.append(f"class {cls} box {box.round(1)} score {score:.3f}")
    return missing


def test_int8_and_dynamic_exports_detect_like_float(trained, tmp_path, caplog):
    run, calibration = trained
    assert len(calibration) == 16  # all of the training split: it has fewer than asked
    detector = run.detector()
    with caplog.at_level(logging.INFO, logger="utils.deploy.export"):
        paths = export(detector, ["tflite", "tflite_dynamic", "tflite_int8"], tmp_path,
                       calibration=calibration)  # fmt: skip
    assert "network in int8, calibrated on 16 training images" in caplog.text
    assert "head convs kept float" in caplog.text  # the export log says what stayed float

    interpreter = interpreter_module.Interpreter(model_path=str(paths["tflite_int8"]))
    ops = interpreter._get_ops_details()
    kinds = {d["index"]: d["dtype"] for d in interpreter.get_tensor_details()}
    convs = [kinds[op["outputs"][0]] for op in ops if op["op_name"] == "CONV_2D"]
    assert convs.count(np.int8) >= len(convs) - 3  # the network computes in int8 (heads aside)
    assert [d["dtype"] for d in interpreter.get_input_details()] == [np.uint8]
    boxes, scores = interpreter.get_output_details()[:2]
    assert boxes["dtype"] == scores["dtype"] == np.float32  # decode and NMS stayed float
    size = paths["tflite"].stat().st_size
    assert paths["tflite_int8"].stat().st_size < 0.4 * size
    assert paths["tflite_dynamic"].stat().st_size < 0.4 * size

    float_detect = load_exported(paths["tflite"])
    wanted = [float_detect(image) for image in calibration]
    assert sum((d.scores >= 0.6).sum() for d in wanted) >= 6, "the model should detect"
    for fmt in ("tflite_dynamic", "tflite_int8"):
        detect = load_exported(paths[fmt])
        for image, want in zip(calibration, wanted, strict=True):
            assert _matched(want, detect(image)) == [], fmt


def test_heads_beyond_the_error_limit_are_tried_in_float(trained, tmp_path, monkeypatch):
    run, calibration = trained
    monkeypatch.setattr(export_module, "HEAD_ERROR_LIMIT", 0.0)  # every head errs more than 0
    monkeypatch.setattr(export_module, "HEAD_KEEP_FLOAT_GAIN", 10.0)  # any result is kept
    path = tmp_path / "model_int8.tflite"
    choice = export_module.export_tflite_int8(run.detector(), path, calibration)
    heads = list(run.model.output_names)
    assert choice.tried == choice.float_heads == heads and choice.check_images == 8
    assert "head convs kept float (error cut below 10x): head_p5, head_p4, head_p3" in (
        choice.describe()
    )
    interpreter = interpreter_module.Interpreter(model_path=str(path))
    kinds = {d["index"]: d["dtype"] for d in interpreter.get_tensor_details()}
    convs = [kinds[op["outputs"][0]] for op in interpreter._get_ops_details()
             if op["op_name"] == "CONV_2D"]  # fmt: skip
    assert convs.count(np.float32) == len(heads)

    monkeypatch.setattr(export_module, "HEAD_KEEP_FLOAT_GAIN", 0.0)  # no result is good enough
    choice = export_module.export_tflite_int8(run.detector(), path, calibration)
    assert choice.tried == heads and choice.float_heads == []
    assert choice.final_errors == choice.errors


def test_int8_needs_calibration_images(trained, tmp_path):
    run, _ = trained
    with pytest.raises(ValueError, match="tflite_int8 needs calibration images"):
        export(run.detector(), ["tflite_int8"], tmp_path)


def test_anchor_free_heads_are_found_and_tried_in_float(tmp_path, monkeypatch):
    """The anchor-free head's output is a concatenation of a box and a class conv: the error
    check reads the concatenation, and keeping a head float keeps both its convs float."""
    from tests.run_fixtures import make_run
    from utils.data.pipeline import decode_image

    run = load_run(make_run(tmp_path, overrides=["model.head=anchor_free"]))
    images = sorted((tmp_path / "VOCdevkit" / "TINY" / "JPEGImages").glob("*.jpg"))
    calibration = [decode_image(str(path)).numpy() for path in images]
    monkeypatch.setattr(export_module, "HEAD_ERROR_LIMIT", 0.0)
    monkeypatch.setattr(export_module, "HEAD_KEEP_FLOAT_GAIN", 10.0)
    path = tmp_path / "anchor_free_int8.tflite"
    choice = export_module.export_tflite_int8(run.detector(), path, calibration)
    heads = ["head_p5", "head_p4", "head_p3"]
    assert list(choice.errors) == choice.tried == choice.float_heads == heads
    interpreter = interpreter_module.Interpreter(model_path=str(path))
    kinds = {d["index"]: d["dtype"] for d in interpreter.get_tensor_details()}
    convs = [kinds[op["outputs"][0]] for op in interpreter._get_ops_details()
             if op["op_name"] == "CONV_2D"]  # fmt: skip
    assert convs.count(np.float32) == 2 * len(heads)  # box and class conv of each head
    assert convs.count(np.int8) >= len(convs) - 2 * len(heads) - 3
    detections = load_exported(path)(calibration[0])
    assert detections.boxes.shape[1:] == (4,) and np.isfinite(detections.boxes).all()
