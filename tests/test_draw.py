"""Drawing detections: label placement, colours, fonts, crops, heat-map overlay."""

import numpy as np
import pytest

from utils.deploy.draw import (
    FONT_PATH,
    class_colour,
    count_classes,
    crop_detections,
    draw_detections,
    heatmap_overlay,
    label_font,
    place_label,
    style_for,
)
from utils.eval.metrics import ImageDetections


def dets(boxes, scores, classes):
    return ImageDetections(np.array(boxes, float).reshape(-1, 4), np.array(scores, float),
                           np.array(classes, int))


def test_font_is_matplotlibs_dejavu():
    assert FONT_PATH.is_file()
    assert label_font(12).getname()[0] == "DejaVu Sans"


def test_colours_are_stable_and_distinct():
    colours = [class_colour(i) for i in range(20)]
    assert colours == [class_colour(i) for i in range(20)]  # no state, no dependence on count
    assert len(set(colours)) == 20
    assert all(0 <= v <= 255 for c in colours for v in c)


def test_text_and_lines_grow_with_the_image():
    small, big = style_for(160, 120), style_for(1920, 1080)
    assert small[0] >= 8 and big[0] > 3 * small[0]
    assert big[1] > small[1] >= 1


@pytest.mark.parametrize("box", [[0, 0, 10, 10], [95, 0, 100, 5], [90, 70, 100, 80],
                                 [-5, -5, 120, 90], [40, 30, 60, 50]])
def test_label_never_leaves_the_canvas(box):
    x1, y1, x2, y2 = place_label(box, (30, 12), (100, 80))
    assert x1 >= 0 and y1 >= 0 and x2 <= 100 and y2 <= 80
    assert (x2 - x1, y2 - y1) == (30, 12)


def test_label_goes_above_the_box_when_there_is_room():
    assert place_label([40, 30, 60, 50], (30, 12), (100, 80)) == (40, 18, 70, 30)
    assert place_label([40, 5, 60, 50], (30, 12), (100, 80)) == (40, 5, 70, 17)  # inside


def test_drawn_labels_stay_on_canvas_and_boxes_are_drawn():
    image = np.full((60, 80, 3), 255, np.uint8)
    corners = dets([[70, 50, 80, 60], [0, 0, 8, 8], [30, 20, 50, 40]], [0.9, 0.8, 0.7], [0, 1, 2])
    out = draw_detections(image, corners, ["a_rather_long_class_name", "b", "c"])
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(image, np.full((60, 80, 3), 255, np.uint8))  # input untouched
    # the 30..50 x 20..40 box's left edge carries class 2's colour
    assert tuple(out[35, 30]) == class_colour(2)
    # a long label on the bottom-right box is shrunk and shifted, not cut: its colour band
    # reaches the left part of the image on the rows just above the box
    assert any(tuple(out[y, 2]) == class_colour(0) for y in range(60))


def test_counts_and_crops():
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    found = dets([[2.5, 3.2, 10.1, 12.0], [25, 15, 40, 30], [5, 5, 5, 9]], [0.9, 0.8, 0.7],
                 [1, 0, 1])
    assert count_classes(found, ["cat", "dog"]) == {"dog": 2, "cat": 1}
    crops = crop_detections(image, found)
    assert [c.shape for _, c in crops] == [(9, 9, 3), (5, 5, 3)]  # the empty box gives no crop
    np.testing.assert_array_equal(crops[0][1], image[3:12, 2:11])
    assert [i for i, _ in crops] == [0, 1]  # each crop names its detection


def test_crops_after_an_empty_box_keep_their_detection_index():
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    found = dets([[5, 5, 5, 9], [2, 3, 10, 12]], [0.9, 0.8], [0, 1])
    ((index, crop),) = crop_detections(image, found)
    assert index == 1 and int(found.classes[index]) == 1
    np.testing.assert_array_equal(crop, image[3:12, 2:10])


def test_heatmap_overlay_lines_up_with_the_image():
    # a 100x200 (h x w) image letterboxed to 64x64: scale 0.32, content rows 16..48
    image = np.zeros((100, 200, 3), np.uint8)
    heat = np.zeros((64, 64), np.float32)
    heat[16:48, 32:64] = 1.0  # hot over the right half of the content
    out = heatmap_overlay(image, heat, (64, 64))
    assert out.shape == image.shape
    hot, cold = out[50, 150].astype(int), out[50, 50].astype(int)
    assert hot[0] > 60 and hot[2] < 10  # jet red on the right half
    assert cold[2] > 60 and cold[0] < 10  # jet blue on the left half
    # the padding rows are cut away: image row 5 is content row 17, hot, not padding (cold)
    assert out[5, 150, 0] > 60 and out[95, 150, 0] > 60
