"""Detection heads: (P3, P4, P5) -> one raw output per scale, in the order p5, p4, p3.

A head builder has the signature

    fn(features: dict[str, KerasTensor], *, num_classes, input_hw, conv, **options)
        -> list[KerasTensor]

where ``features`` maps the level names in ``HEAD_LEVELS`` to the neck's outputs. Each output is
a float32 layer named after its level (``head_p5``, ...), so weights, the INT8 head check and
the exports find them by name. The loss of a head family lives in ``nets.losses`` and its
decoding in ``utils.deploy.detector.DecodeSpec``, both chosen by ``model.head``.

- ``anchor_based`` (YOLOv3/v4/v5): one depthwise-separable block, then a 1x1 conv giving, per
  anchor, (tx, ty, tw, th, obj, classes).
- ``anchor_free`` (YOLOv8-style, decoupled): per scale a box branch (two 3x3 blocks, a 1x1 conv
  to 4 x ``reg_max`` logits: a distribution over distances from the cell centre to each side,
  in strides) and a class branch (two 3x3 blocks, a 1x1 conv to C logits, no objectness);
  output channels ``[4 * reg_max box logits | C class logits]``.
"""

from __future__ import annotations

import math

import keras
import numpy as np

from nets.necks import conv3x3_block, dw_separable_block
from nets.registry import HEADS

__all__ = ["HEAD_LEVELS", "anchor_based_bias", "anchor_based_head", "anchor_free_head"]

# Head levels, in the model's output order: (name, stride).
HEAD_LEVELS = (("head_p5", 32), ("head_p4", 16), ("head_p3", 8))

# YOLOv5's prior: about 8 objects per 640x640 image, so objectness starts near 8 / grid cells.
_OBJECTS_PER_IMAGE = 8.0
# YOLOv5's class prior: probability 0.6 spread over the classes.
_CLASS_PRIOR = 0.6
# YOLOv8's class prior for the anchor-free head: about 5 objects per class and image.
_OBJECTS_PER_CLASS = 5.0
# The anchor-free branches are at least this wide (YOLOv8's minimum of 16 is too thin for the
# class branch of a 0.25-width model).
_MIN_BRANCH_WIDTH = 32


def _output_conv(filters: int, name: str) -> keras.layers.Conv2D:
    # A small kernel keeps the initial logits close to the prior biases. float32 logits under
    # mixed precision: decoding exponentiates them, and the loss and NMS need the precision; a
    # 1x1 conv in float32 costs little.
    return keras.layers.Conv2D(
        filters,
        1,
        use_bias=True,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        dtype="float32",
        name=name,
    )


def anchor_based_bias(num_classes: int, num_anchors: int, grid_cells: int) -> np.ndarray:
    """Initial bias of the anchor-based head, YOLOv5 style, so training from scratch starts calm.

    Box terms start at 0, objectness at ``log(8 / grid_cells)`` (about 8 objects per image
    spread over the grid) and classes at ``log(0.6 / (C - 0.99))``. Returns shape [A*(5+C)].
    """
    per_anchor = np.zeros(5 + num_classes, dtype=np.float32)
    per_anchor[4] = math.log(_OBJECTS_PER_IMAGE / grid_cells)
    per_anchor[5:] = math.log(_CLASS_PRIOR / (num_classes - 0.99))
    return np.tile(per_anchor, num_anchors)


@HEADS.register("anchor_based")
def anchor_based_head(
    features: dict[str, keras.KerasTensor],
    *,
    num_classes: int,
    input_hw: tuple[int, int],
    conv: str,
    num_anchors: int = 3,
) -> list[keras.KerasTensor]:
    """Raw logits ``[B, H/s, W/s, A*(5+C)]`` per level: the A anchor blocks of
    ``(tx, ty, tw, th, obj, cls_0 .. cls_{C-1})`` concatenated. ``conv`` is unused: this head's
    block is depthwise-separable whatever the neck uses (its checkpoints depend on it)."""
    del conv
    outputs = []
    for name, stride in HEAD_LEVELS:
        feature = features[name]
        x = dw_separable_block(feature, 2 * feature.shape[-1], f"{name}_block")
        layer = _output_conv(num_anchors * (5 + num_classes), name)
        outputs.append(layer(x))
        grid_cells = (input_hw[0] // stride) * (input_hw[1] // stride)
        layer.bias.assign(anchor_based_bias(num_classes, num_anchors, grid_cells))
    return outputs


@HEADS.register("anchor_free")
def anchor_free_head(
    features: dict[str, keras.KerasTensor],
    *,
    num_classes: int,
    input_hw: tuple[int, int],
    conv: str,
    reg_max: int,
) -> list[keras.KerasTensor]:
    """Raw logits ``[B, H/s, W/s, 4 * reg_max + C]`` per level (see the module docstring).

    Branch widths follow YOLOv8 from the finest level's channels c: box ``max(32, c / 4,
    4 * reg_max)``, class ``max(32, c, min(C, 100))``; their 3x3 blocks are ``conv``
    (``model.neck_conv``). Biases start from priors: box logits at 1 (a flat distribution),
    class logits at ``log(5 / C / cells)`` (about five objects per class and image).
    """
    finest = features[HEAD_LEVELS[-1][0]].shape[-1]
    box_width = max(_MIN_BRANCH_WIDTH, finest // 4, 4 * reg_max)
    cls_width = max(_MIN_BRANCH_WIDTH, finest, min(num_classes, 100))
    outputs = []
    for name, stride in HEAD_LEVELS:
        feature = features[name]
        box = conv3x3_block(feature, box_width, f"{name}_box_1", conv)
        box = conv3x3_block(box, box_width, f"{name}_box_2", conv)
        box_layer = _output_conv(4 * reg_max, f"{name}_box")
        box = box_layer(box)
        cls = conv3x3_block(feature, cls_width, f"{name}_cls_1", conv)
        cls = conv3x3_block(cls, cls_width, f"{name}_cls_2", conv)
        cls_layer = _output_conv(num_classes, f"{name}_cls")
        cls = cls_layer(cls)
        box_layer.bias.assign(np.ones(4 * reg_max, np.float32))
        cells = (input_hw[0] // stride) * (input_hw[1] // stride)
        prior = math.log(_OBJECTS_PER_CLASS / num_classes / cells)
        cls_layer.bias.assign(np.full(num_classes, prior, np.float32))
        outputs.append(keras.layers.Concatenate(axis=-1, dtype="float32", name=name)([box, cls]))
    return outputs
