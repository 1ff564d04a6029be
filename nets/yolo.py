"""YOLO model builder: backbone -> neck -> one head per scale, raw logits out."""

from __future__ import annotations

import inspect
import logging
import math
from typing import Any

import keras
import numpy as np

import nets.backbones  # noqa: F401  (registers every backbone family)
from nets.layers import nested_layers
from nets.necks import dw_separable_block
from nets.registry import BACKBONES, NECKS

__all__ = ["build_model", "build_yolo", "head_bias", "set_backbone_trainable"]

logger = logging.getLogger(__name__)

# Head levels, in the model's output order: (name, stride).
HEAD_LEVELS = (("head_p5", 32), ("head_p4", 16), ("head_p3", 8))

# YOLOv5's prior: about 8 objects per 640x640 image, so objectness starts near 8 / grid cells.
_OBJECTS_PER_IMAGE = 8.0
# YOLOv5's class prior: probability 0.6 spread over the classes.
_CLASS_PRIOR = 0.6


def build_yolo(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    backbone: str,
    backbone_options: dict[str, Any] | None = None,
    neck: str,
    neck_options: dict[str, Any] | None = None,
    neck_conv: str | None = None,
    num_anchors_per_scale: int = 3,
    pretrained: str | None = None,
    bn_momentum: float | None = None,
) -> keras.Model:
    """Build the detector ``images [B, H, W, 3] (0..1) -> [head_p5, head_p4, head_p3]``.

    Each head is a depthwise-separable block expanding the neck's channels 2x followed by a 1x1
    conv with bias, giving raw logits of shape [B, H/s, W/s, A*(5+C)] for stride s = 32, 16, 8.
    Per anchor the channels are (tx, ty, tw, th, obj, cls_0 .. cls_{C-1}); the A anchor blocks
    are concatenated. Option values of None are dropped so the builder default applies.

    Args:
        input_shape: (H, W, channels); H and W must be multiples of 32.
        num_classes: number of object classes C (>= 1).
        backbone: a name in ``BACKBONES``.
        backbone_options: keyword options for the backbone builder (e.g. ``{"alpha": 1.0}``).
        neck: a name in ``NECKS``.
        neck_options: keyword options for the neck builder.
        neck_conv: the necks' 3x3 conv block (``nets.necks.NECK_CONVS``), passed to the neck
            as ``conv``; None keeps the neck's default.
        num_anchors_per_scale: anchors A per head.
        pretrained: backbone weights: None, ``"imagenet"`` or a file path.
        bn_momentum: moving-average momentum of every BatchNormalization layer, backbone
            included (None keeps Keras' 0.99). Short runs from scratch need a faster one (0.97):
            with 0.99 the moving variance needs thousands of steps to leave its initial 1.0, and
            the model evaluates with statistics that do not match its weights.

    Returns:
        A functional ``keras.Model`` named ``"yolo"`` with a nested ``"backbone"`` model.
    """
    height, width = input_shape[0], input_shape[1]
    if not (isinstance(height, int) and isinstance(width, int)) or height % 32 or width % 32:
        raise ValueError(
            f"input height and width must be multiples of 32; received input_shape={input_shape}"
        )
    if num_classes < 1 or num_anchors_per_scale < 1:
        raise ValueError(
            "num_classes and num_anchors_per_scale must be >= 1; received "
            f"num_classes={num_classes}, num_anchors_per_scale={num_anchors_per_scale}"
        )
    build_backbone = BACKBONES.get(backbone)
    build_neck = NECKS.get(neck)

    backbone_kwargs, neck_kwargs = _given(backbone_options), _given(neck_options)
    _check_options("backbone", backbone, build_backbone, backbone_kwargs)
    _check_options("neck", neck, build_neck, neck_kwargs)

    images = keras.Input(shape=tuple(input_shape), name="images")
    c3, c4, c5 = build_backbone(images, pretrained=pretrained, **backbone_kwargs)
    if neck_conv is not None:
        if "conv" in neck_kwargs:
            raise ValueError("set the neck's conv block with neck_conv, not neck_options.conv")
        neck_kwargs["conv"] = neck_conv
    p3, p4, p5 = build_neck(c3, c4, c5, **neck_kwargs)

    features = {"head_p5": p5, "head_p4": p4, "head_p3": p3}
    outputs = []
    for name, stride in HEAD_LEVELS:
        grid_cells = (height // stride) * (width // stride)
        outputs.append(_head(features[name], name, num_classes, num_anchors_per_scale, grid_cells))
    model = keras.Model(images, outputs, name="yolo")
    if bn_momentum is not None:
        set_bn_momentum(model, bn_momentum)
    logger.info(
        "built yolo: backbone=%s neck=%s input=%s classes=%d params=%d",
        backbone,
        neck,
        tuple(input_shape),
        num_classes,
        model.count_params(),
    )
    return model


def build_model(model_cfg: Any, num_classes: int) -> keras.Model:
    """Build the detector from a model config section (the one place config meets code).

    Reads ``input_size`` ([h, w]), ``backbone``, ``backbone_options``, ``neck``,
    ``neck_options``, ``neck_conv``, ``anchors_mask`` (one list of anchor indices per head, all
    the same length) and ``pretrained`` from ``model_cfg``.
    """
    counts = {len(mask) for mask in model_cfg.anchors_mask}
    if len(model_cfg.anchors_mask) != len(HEAD_LEVELS) or len(counts) != 1:
        raise ValueError(
            f"model.anchors_mask needs {len(HEAD_LEVELS)} lists of equal length; "
            f"received {model_cfg.anchors_mask}"
        )
    height, width = model_cfg.input_size
    return build_yolo(
        (int(height), int(width), 3),
        num_classes,
        backbone=model_cfg.backbone,
        backbone_options=dict(model_cfg.backbone_options or {}),
        neck=model_cfg.neck,
        neck_options=dict(model_cfg.neck_options or {}),
        neck_conv=model_cfg.neck_conv,
        num_anchors_per_scale=counts.pop(),
        pretrained=model_cfg.pretrained,
        bn_momentum=model_cfg.bn_momentum,
    )


def set_bn_momentum(model: keras.Model, momentum: float) -> None:
    """Set the moving-average momentum of every BatchNormalization layer, nested ones too.

    Nested means inside nested models and inside layers that own sublayers (GhostConv's BNs).
    """
    for layer in nested_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def set_backbone_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze (False) or unfreeze (True) exactly the nested ``"backbone"`` model.

    A frozen backbone's BatchNorm layers also run in inference mode. Recompile the model after
    calling this so the change takes effect in training.
    """
    model.get_layer("backbone").trainable = trainable


def head_bias(num_classes: int, num_anchors: int, grid_cells: int) -> np.ndarray:
    """Initial head bias, YOLOv5 style, so training from scratch starts calm.

    Box terms start at 0, objectness at ``log(8 / grid_cells)`` (about 8 objects per image
    spread over the grid) and classes at ``log(0.6 / (C - 0.99))``. Returns shape [A*(5+C)].
    """
    per_anchor = np.zeros(5 + num_classes, dtype=np.float32)
    per_anchor[4] = math.log(_OBJECTS_PER_IMAGE / grid_cells)
    per_anchor[5:] = math.log(_CLASS_PRIOR / (num_classes - 0.99))
    return np.tile(per_anchor, num_anchors)


def _head(
    feature: keras.KerasTensor,
    name: str,
    num_classes: int,
    num_anchors: int,
    grid_cells: int,
) -> keras.KerasTensor:
    x = dw_separable_block(feature, 2 * feature.shape[-1], f"{name}_block")
    # A small kernel keeps the initial logits close to the prior bias below.
    conv = keras.layers.Conv2D(
        num_anchors * (5 + num_classes),
        1,
        use_bias=True,
        kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
        # float32 logits under mixed precision: decoding exponentiates them, and the loss and
        # NMS need the precision; a 1x1 conv in float32 costs little.
        dtype="float32",
        name=name,
    )
    out = conv(x)
    conv.bias.assign(head_bias(num_classes, num_anchors, grid_cells))
    return out


def _check_options(kind: str, name: str, builder: Any, options: dict[str, Any]) -> None:
    """Reject options the builder does not take, naming the config key and the valid ones."""
    parameters = inspect.signature(builder).parameters
    valid = [
        key
        for key, parameter in parameters.items()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and key != "pretrained"
    ]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(
            f"model.{kind}_options: {kind} {name!r} takes no option {', '.join(unknown)}; "
            f"valid options: {', '.join(valid) or 'none (use {} or null values)'}"
        )


def _given(options: dict[str, Any] | None) -> dict[str, Any]:
    """Drop None-valued options so that a YAML ``null`` means "use the builder default"."""
    return {key: value for key, value in (options or {}).items() if value is not None}
