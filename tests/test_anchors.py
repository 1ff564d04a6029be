"""Tests for utils/anchors.py (k-means anchors) and tools/kmeans_anchors.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.training_fixtures import tiny_config
from tools import kmeans_anchors as tool
from utils.anchors import (
    _lloyd,
    best_possible_recall,
    box_sizes,
    check_anchors,
    fit_quality,
    format_anchors,
    kmeans_anchors,
    order_for_mask,
    round_anchors,
    wh_iou,
)
from utils.config import load_config, read_anchors
from utils.data.index import Sample

# Well separated (w, h) centres, already in increasing area order.
CENTRES = np.array(
    [
        [10, 13],
        [16, 30],
        [33, 23],
        [30, 61],
        [62, 45],
        [59, 119],
        [116, 90],
        [156, 198],
        [373, 326],
    ],
    float,
)


def clustered_sizes(spread: float, per_cluster: int = 200, seed: int = 0) -> np.ndarray:
    """Boxes around ``CENTRES`` with a multiplicative jitter of ``spread`` (lognormal sigma)."""
    rng = np.random.default_rng(seed)
    sizes = np.repeat(CENTRES, per_cluster, axis=0)
    return sizes * np.exp(rng.normal(0.0, spread, sizes.shape))


# --- the IoU distance ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "anchor", "iou"),
    [
        ((10, 10), (10, 10), 1.0),  # identical: distance 0
        ((10, 10), (5, 5), 0.25),  # nested: 25 / 100
        ((10, 20), (20, 10), 1 / 3),  # crossed: 100 / (200 + 200 - 100)
        ((4, 2), (2, 8), 0.2),  # 2 * 2 / (8 + 16 - 4)
        ((3, 7), (3, 14), 0.5),  # same width, half the height
    ],
)
def test_wh_iou_hand_computed(box, anchor, iou):
    assert wh_iou(np.array([box]), np.array([anchor]))[0, 0] == pytest.approx(iou)
    assert wh_iou(np.array([anchor]), np.array([box]))[0, 0] == pytest.approx(iou)  # symmetric
    assert 1.0 - wh_iou(np.array([box]), np.array([anchor]))[0, 0] == pytest.approx(1.0 - iou)


def test_wh_iou_is_boxes_by_anchors_and_fit_quality_uses_the_best():
    sizes = np.array([[10, 10], [20, 20]], float)
    anchors = np.array([[10, 10], [5, 5], [20, 10]], float)
    iou = wh_iou(sizes, anchors)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou[1], [0.25, 0.0625, 0.5])
    fit = fit_quality(sizes, anchors)
    assert fit.mean_iou == pytest.approx((1.0 + 0.5) / 2)
    assert fit.recall == pytest.approx(0.5)  # 0.5 itself is not above the 0.5 threshold


# --- k-means ---------------------------------------------------------------------------------


def test_kmeans_recovers_nine_tight_clusters():
    sizes = clustered_sizes(spread=0.02)
    anchors = kmeans_anchors(sizes, 9, seed=0)
    np.testing.assert_allclose(anchors, CENTRES, rtol=0.02)
    assert fit_quality(sizes, anchors).mean_iou > 0.95
    np.testing.assert_array_equal(anchors, kmeans_anchors(sizes, 9, seed=0))  # seeded


def test_kmeans_restarts_keep_the_best_run():
    # Loose, overlapping sizes have many local optima, so single runs differ by seed.
    sizes = np.random.default_rng(1).uniform(5, 300, (600, 2))

    def best_iou(seed: int, restarts: int) -> float:
        return fit_quality(sizes, kmeans_anchors(sizes, 9, seed=seed, restarts=restarts)).mean_iou

    single = [best_iou(seed, 1) for seed in range(5)]
    several = [best_iou(seed, 6) for seed in range(5)]
    # The first restart repeats the single run, so the best of six is never worse ...
    assert all(m >= s - 1e-12 for m, s in zip(several, single, strict=True))
    # ... and on these data some of the later restarts find a better optimum.
    assert any(m > s + 1e-4 for m, s in zip(several, single, strict=True))


def test_an_emptied_cluster_moves_to_the_worst_covered_boxes():
    # A start centre far from every box gets no boxes; it must not be lost at its start point.
    sizes = clustered_sizes(spread=0.02, per_cluster=20)[: 20 * 3]  # the three smallest centres
    start = np.array([CENTRES[0], CENTRES[1], [5000.0, 5000.0]])
    centres = _lloyd(sizes, start)
    np.testing.assert_allclose(centres[np.argsort(centres.prod(axis=1))], CENTRES[:3], rtol=0.02)


def test_kmeans_result_is_sorted_by_area():
    anchors = kmeans_anchors(clustered_sizes(spread=0.3, per_cluster=30), 6, seed=2)
    areas = anchors.prod(axis=1)
    assert anchors.shape == (6, 2)
    assert np.all(np.diff(areas) >= 0)


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        (np.array([[10, 10], [20, 20], [30, 30]], float), "at least 9 distinct box sizes"),
        (np.tile([[10, 10], [20, 20], [30, 30]], (5, 1)).astype(float), "has 3 .15 boxes"),
        (np.vstack([CENTRES, [[0, 12]]]), "1 of 10 boxes have a zero"),
        (np.vstack([CENTRES, [[np.nan, 12]]]), "non-finite"),
        (np.zeros((0, 2)), "has 0 .0 boxes"),
        (np.ones((4, 3)), r"\[N, 2\]"),
    ],
)
def test_kmeans_degenerate_inputs_are_clear_errors(sizes, message):
    with pytest.raises(ValueError, match=message):
        kmeans_anchors(sizes, 9, seed=0)


# --- sizes, order and file format ------------------------------------------------------------


def make_sample(width: int, height: int, boxes: list[list[float]], difficult: list[bool]) -> Sample:
    return Sample(
        image_path=Path("x.jpg"),
        image_id="T/x",
        width=width,
        height=height,
        boxes=np.array(boxes, np.float32).reshape(-1, 4),
        classes=np.zeros(len(boxes), np.int32),
        difficult=np.array(difficult, bool),
    )


def test_box_sizes_are_letterboxed_to_the_input():
    # Input 256 high x 512 wide. A 400x100 image is limited by its width, scale 512/400 = 1.28
    # (not 256/100 = 2.56); a 100x160 image by its height, scale 256/160 = 1.6 (not 5.12).
    wide = make_sample(400, 100, [[0, 0, 100, 50], [10, 10, 20, 30]], [False, True])
    tall = make_sample(100, 160, [[5, 5, 45, 85]], [False])
    sizes = box_sizes([wide, tall], [256, 512], use_difficult=True)
    np.testing.assert_allclose(sizes, [[128, 64], [12.8, 25.6], [64, 128]])
    without = box_sizes([wide, tall], [256, 512], use_difficult=False)
    np.testing.assert_allclose(without, [[128, 64], [64, 128]])
    assert box_sizes([], [256, 512], use_difficult=True).shape == (0, 2)


def test_order_for_mask_gives_the_smallest_anchors_to_stride_8():
    by_area = np.arange(1, 10, dtype=float)[:, None].repeat(2, axis=1)
    shuffled = by_area[[4, 0, 8, 2, 6, 1, 7, 3, 5]]
    default = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
    np.testing.assert_array_equal(order_for_mask(shuffled, default), by_area)
    # A mask that lists the stride-8 anchors last gets the smallest there, in its own order.
    flipped = order_for_mask(shuffled, [[0, 1, 2], [3, 4, 5], [8, 7, 6]])
    np.testing.assert_array_equal(flipped[:, 0], [7, 8, 9, 4, 5, 6, 3, 2, 1])
    two = order_for_mask(by_area[:6], [[4, 5], [2, 3], [0, 1]])
    np.testing.assert_array_equal(two, by_area[:6])
    with pytest.raises(ValueError, match="does not index 6 anchors"):
        order_for_mask(by_area[:6], default)


def test_written_anchors_read_back_as_whole_pixels(tmp_path):
    anchors = round_anchors([[0.3, 12.6], [40.2, 39.5]])
    path = tmp_path / "a.txt"
    path.write_text(format_anchors(anchors))
    assert path.read_text() == "1,13, 40,40\n"
    assert read_anchors(path) == [[1.0, 13.0], [40.0, 40.0]]


# --- the tool --------------------------------------------------------------------------------


def test_tool_end_to_end_writes_loadable_anchors_and_plot(tmp_path, capsys):
    config = tiny_config(tmp_path, num_images=16)
    out = tmp_path / "fitted" / "tiny_anchors.txt"
    plot = tmp_path / "plots" / "scatter.png"
    assert tool.main(["--config", str(config), "--out", str(out), "--plot", str(plot)]) == 0
    printed = capsys.readouterr().out
    assert "24 training boxes" in printed and "at input 128x128" in printed

    anchors = np.array(read_anchors(out))
    assert anchors.shape == (9, 2)
    assert np.all(np.diff(anchors.prod(axis=1)) >= 0)  # the default mask: area order
    cfg = load_config(config, [f"model.anchors={out}"])
    assert cfg.model.anchors == str(out)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The printed fits are those of the boxes with the written and the config's anchors; the
    # 416-pixel defaults fit these 32-64 px boxes at 128 px worse than fitted ones.
    default = load_config(config)
    sizes = tool.load_box_sizes(default)
    new = fit_quality(sizes, anchors)
    old = fit_quality(sizes, np.array(read_anchors(default.model.anchors)))
    assert f"{new.mean_iou:.4f}" in printed and f"{old.mean_iou:.4f}" in printed
    assert new.mean_iou > old.mean_iou


def test_tool_anchor_count_follows_the_mask_and_defaults(tmp_path, capsys, monkeypatch):
    config = tiny_config(tmp_path, num_images=16)
    six = tmp_path / "six.txt"
    six.write_text("10,10, 20,20, 30,30, 40,40, 50,50, 60,60\n")
    monkeypatch.chdir(tmp_path)  # the default --out is model_data/<config name>_anchors.txt
    overrides = [f"model.anchors={six}", "model.anchors_mask=[[4,5],[2,3],[0,1]]"]
    assert tool.main(["--config", str(config), "--seed", "3", *overrides]) == 0
    out = tmp_path / "model_data" / "tiny_anchors.txt"
    assert len(read_anchors(out)) == 6
    assert out.with_suffix(".png").is_file()
    assert "seed 3" in capsys.readouterr().out
    first = out.read_text()
    assert tool.main(["--config", str(config), "--seed", "3", *overrides]) == 0
    assert out.read_text() == first


def test_tool_user_mistakes_are_one_line_errors(tmp_path, capsys):
    config = tiny_config(tmp_path, num_images=2)  # 3 boxes for 9 anchors
    assert tool.main(["--config", str(config), "--out", str(tmp_path / "a.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.train_split ['TINY/train']: 9 anchors need at least 9")
    assert "\n" not in err
    assert not (tmp_path / "a.txt").exists()

    assert tool.main(["--config", str(config), "data.train_split=[TINY/nope]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "split file not found" in err and "nope.txt" in err and "\n" not in err

    with pytest.raises(SystemExit):
        tool.main(["--config", str(config), "model.anchors_mask=[[0]]"])
    assert "model.anchors_mask" in capsys.readouterr().err

    assert tool.main(["--config", str(config), "model.head=anchor_free"]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.head anchor_free uses no anchors" in err and "\n" not in err


# --- autoanchor --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "reached"),
    [
        ((40, 40), True),  # ratio 4/3 to the 30x30 anchor
        ((10, 10), True),  # 30/10 = 3 < 4
        ((7, 30), False),  # width 30/7 = 4.3 off the 30x30 anchor, and 100/7 off the other
        ((400, 100), False),  # 400/100 = 4 exactly: outside (strict <, as YOLOv5)
        ((390, 100), True),
    ],
)
def test_best_possible_recall_by_hand(box, reached):
    anchors = np.array([[30, 30], [100, 100]], float)
    assert best_possible_recall(np.array([box], float), anchors, 4.0) == float(reached)


def test_autoanchor_keeps_anchors_that_reach_the_boxes():
    sizes = clustered_sizes(0.1)
    check = check_anchors(sizes, CENTRES, [[6, 7, 8], [3, 4, 5], [0, 1, 2]], min_recall=0.98,
                          anchor_thresh=4.0, seed=0)  # fmt: skip
    assert check.anchors is None and check.recall_before == 1.0 and "kept" in check.reason


def test_autoanchor_refits_anchors_that_miss_the_boxes():
    sizes = clustered_sizes(0.1)
    far_off = np.full((9, 2), 2000.0)  # no box is within a ratio of 4 of these
    mask = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
    check = check_anchors(sizes, far_off, mask, min_recall=0.98, anchor_thresh=4.0, seed=0)
    assert check.recall_before == 0.0 and check.recall_after == 1.0
    assert np.allclose(check.anchors, order_for_mask(CENTRES, mask), rtol=0.1)


def test_autoanchor_of_a_run_writes_the_anchors_that_the_run_then_uses(tmp_path):
    """A run whose configured anchors miss the data starts with fitted ones: anchors.txt and
    anchors.png in the run folder, config.yaml names them, and a moved run folder keeps them."""
    from utils.deploy.runs import run_config
    from utils.engine.trainer import Trainer

    bad = tmp_path / "bad_anchors.txt"
    bad.write_text(", ".join(["900,900"] * 9) + "\n")
    cfg = load_config(tiny_config(tmp_path), [f"model.anchors={bad}"])
    run = Trainer(cfg).run_dir
    fitted = read_anchors(run.anchors)
    assert len(fitted) == 9 and max(max(a) for a in fitted) <= 128
    assert run.anchors_plot.is_file()
    moved = tmp_path / "moved"
    run.path.rename(moved)
    assert read_anchors(run_config(moved).model.anchors) == fitted
    assert run_config(moved).model.anchors == str(moved / "anchors.txt")
