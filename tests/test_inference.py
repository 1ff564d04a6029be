"""The inference graph: raw images of any sizes -> detections in original pixels."""

import numpy as np
import pytest
import tensorflow as tf

from nets.fold import BatchNormFolding
from tests.run_fixtures import make_run
from utils.data.pipeline import build_dataset
from utils.data.voc import load_split
from utils.deploy.detector import (
    DecodeSpec,
    Detector,
    detect_dataset,
    make_batch_detector,
    score_heatmap,
)
from utils.deploy.runs import MissingWeightsError, load_run

# one worker builds the module fixtures once (see tests/conftest.py)
pytestmark = pytest.mark.xdist_group("inference")

# --- a fake model with one known prediction, decoded by hand -------------------------------

SPEC = DecodeSpec(
    head="anchor_based",
    anchors=np.tile(np.float32([[32, 64]]), (9, 1)),  # every anchor 32 wide, 64 tall
    anchors_mask=[[6, 7, 8], [3, 4, 5], [0, 1, 2]],
    num_classes=2,
    input_hw=(128, 128),
    assign="best",
    reg_max=16,
)


def fake_heads():
    """Heads of a 128x128 input with every prediction off except p5, row 1, column 2, anchor 0:
    t = 0 puts its centre mid-cell, (2.5/4, 1.5/4) of the input = (80, 48) px, and its size at
    the anchor, 32x64 px -> input box (64, 16, 96, 80); objectness and class 1 are certain."""
    heads = []
    for grid in (4, 8, 16):
        head = np.zeros((grid, grid, 3, 7), np.float32)
        head[..., 4:] = -20.0
        heads.append(head)
    heads[0][1, 2, 0, 4] = 20.0
    heads[0][1, 2, 0, 6] = 20.0
    return [tf.constant(h.reshape(h.shape[0], h.shape[1], 21)) for h in heads]


def fake_model(images, training=False):
    batch = tf.shape(images)[0]
    return [tf.tile(h[None], [batch, 1, 1, 1]) for h in fake_heads()]


def test_detector_decodes_and_maps_back_per_image_by_hand():
    detector = Detector(fake_model, SPEC, score_threshold=0.5, nms_iou=0.5, max_detections=5,
                        fold=False)  # a plain function: nothing to fold
    tall = np.zeros((200, 100, 3), np.uint8)  # scale 0.64, x offset 32: (50, 25, 100, 125)
    wide = np.zeros((64, 256, 3), np.uint8)  # scale 0.5, y offset 48: (128, -64, 192, 64) clipped
    tall_dets, wide_dets = detector.detect([tall, wide])
    np.testing.assert_allclose(tall_dets.boxes, [[50, 25, 100, 125]], atol=1e-3)
    np.testing.assert_allclose(wide_dets.boxes, [[128, 0, 192, 64]], atol=1e-3)
    assert tall_dets.classes.tolist() == wide_dets.classes.tolist() == [1]
    assert tall_dets.scores[0] == pytest.approx(1.0, abs=1e-6)


def test_objectness_heatmap_peaks_at_the_prediction():
    heat = score_heatmap(fake_model(tf.zeros([1, 128, 128, 3])), SPEC).numpy()
    assert heat.shape == (1, 128, 128)
    # bilinear from the 4x4 grid: the peak is the p5 cell's centre (80, 48), where pixels next
    # to it are within 2% of 1, and it fades to 0 two cells away
    y, x = np.unravel_index(np.argmax(heat[0]), heat[0].shape)
    assert abs(x - 80) <= 1 and abs(y - 48) <= 1
    assert heat[0, 47:49, 79:81].min() > 0.96
    assert heat[0, 120, 8] < 1e-6


# --- a real (untrained) run folder ---------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return load_run(make_run(tmp_path_factory.mktemp("infer")))


def test_detector_equals_the_training_evaluation_path(run):
    """Raw files through the Detector give the mAP callback's detections (tf.data letterbox),
    both with the BatchNorms folded as ``map_evaluator`` folds them."""
    cfg = run.config
    samples = load_split(cfg.data.root, cfg.data.train_split, run.class_names).samples
    detector = run.detector(for_map=True)
    ours = list(detector.detect_files([s.image_path for s in samples], batch_size=3))
    dataset = build_dataset(samples, input_size=(128, 128), batch_size=3, training=False)
    detect = make_batch_detector(BatchNormFolding(run.model).model, detector.spec,
                                 score_threshold=0.001, nms_iou=0.5, max_detections=100)
    theirs = detect_dataset(detect, dataset, [(s.height, s.width) for s in samples])
    assert sum(len(d.scores) for d in ours) > 0
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        np.testing.assert_array_equal(a.classes, b.classes)


def test_mixed_size_batch_equals_one_by_one_and_traces_once(run):
    detector = run.detector(score_threshold=0.001)
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((90, 150, 3), (40, 70, 3))]
    together = detector.detect(images)
    for image, dets in zip(images, together, strict=True):
        alone = detector.detect([image])[0]
        np.testing.assert_allclose(dets.boxes, alone.boxes, atol=1e-3)
        np.testing.assert_allclose(dets.scores, alone.scores, atol=1e-5)
        h, w = image.shape[:2]
        assert np.all(dets.boxes >= 0) and np.all(dets.boxes[:, [0, 2]] <= w)
        assert np.all(dets.boxes[:, [1, 3]] <= h)
    assert detector.__call__.experimental_get_tracing_count() == 1


def test_load_run_without_weights_says_how_to_train(tmp_path):
    run = make_run(tmp_path, weights=False)
    with pytest.raises(MissingWeightsError, match=r"python train\.py --config"):
        load_run(run)
    with pytest.raises(FileNotFoundError, match=r"is .* a run folder made by train\.py"):
        load_run(tmp_path / "nowhere")
