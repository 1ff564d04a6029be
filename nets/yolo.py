"""YOLO model builder: backbone -> neck -> head, raw logits out (one output per scale)."""

from __future__ import annotations

import inspect
import logging
from typing import Any

import keras

import nets.backbones
import nets.heads  # noqa: F401  (registers every head family)
from nets.heads import HEAD_LEVELS
from nets.layers import nested_layers
from nets.registry import BACKBONES, HEADS, NECKS

__all__ = ["build_model", "build_yolo", "set_backbone_trainable"]

logger = logging.getLogger(__name__)


def build_yolo(
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    backbone: str,
    backbone_options: dict[str, Any] | None = None,
    neck: str,
    neck_options: dict[str, Any] | None = None,
    neck_conv: str | None = None,
    head: str = "anchor_based",
    head_options: dict[str, Any] | None = None,
    pretrained: str | None = None,
    bn_momentum: float | None = None,
    any_size: bool = False,
) -> keras.Model:
    """Build the detector ``images [B, H, W, 3] (0..1) -> [head_p5, head_p4, head_p3]``.

    The head (``nets.heads``) gives raw float32 logits per stride s = 32, 16, 8; their channels
    depend on the head family. Option values of None are dropped so the builder default applies.

    Args:
        input_shape: (H, W, channels); H and W must be multiples of 32.
        num_classes: number of object classes C (>= 1).
        backbone: a name in ``BACKBONES``.
        backbone_options: keyword options for the backbone builder (e.g. ``{"alpha": 1.0}``).
        neck: a name in ``NECKS``.
        neck_options: keyword options for the neck builder.
        neck_conv: the necks' 3x3 conv block (``nets.necks.NECK_CONVS``), passed to the neck
            as ``conv`` (and to the head); None keeps the neck's default.
        head: a name in ``HEADS``.
        head_options: the head's own keyword options (``num_anchors`` per scale for
            ``anchor_based``, ``reg_max`` for ``anchor_free``).
        pretrained: backbone weights: None, ``"imagenet"`` or a file path.
        bn_momentum: moving-average momentum of every BatchNormalization layer, backbone
            included (None keeps Keras' 0.99). Short runs from scratch need a faster one (0.97):
            with 0.99 the moving variance needs thousands of steps to leave its initial 1.0, and
            the model evaluates with statistics that do not match its weights.
        any_size: accept inputs of any height and width that are multiples of 32 (multi-scale
            training); ``input_shape`` then only sets the head's bias priors. False fixes the
            input to ``input_shape``, which lets TensorFlow plan every op for it.

    Returns:
        A functional ``keras.Model`` named ``"yolo"`` with a nested ``"backbone"`` model.
    """
    height, width = input_shape[0], input_shape[1]
    if not (isinstance(height, int) and isinstance(width, int)) or height % 32 or width % 32:
        raise ValueError(
            f"input height and width must be multiples of 32; received input_shape={input_shape}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; received {num_classes}")
    build_backbone = BACKBONES.get(backbone)
    build_neck = NECKS.get(neck)
    build_head = HEADS.get(head)

    backbone_kwargs, neck_kwargs = _given(backbone_options), _given(neck_options)
    _check_options("backbone", backbone, build_backbone, backbone_kwargs)
    _check_options("neck", neck, build_neck, neck_kwargs)

    shape = (None, None, input_shape[2]) if any_size else tuple(input_shape)
    images = keras.Input(shape=shape, name="images")
    c3, c4, c5 = build_backbone(images, pretrained=pretrained, **backbone_kwargs)
    if neck_conv is not None:
        if "conv" in neck_kwargs:
            raise ValueError("set the neck's conv block with neck_conv, not neck_options.conv")
        neck_kwargs["conv"] = neck_conv
    p3, p4, p5 = build_neck(c3, c4, c5, **neck_kwargs)
    outputs = build_head(
        {"head_p5": p5, "head_p4": p4, "head_p3": p3},
        num_classes=num_classes,
        input_hw=(height, width),
        # The head's 3x3 blocks follow the neck's, default included.
        conv=neck_kwargs.get("conv", inspect.signature(build_neck).parameters["conv"].default),
        **dict(head_options or {}),
    )
    model = keras.Model(images, outputs, name="yolo")
    if bn_momentum is not None:
        set_bn_momentum(model, bn_momentum)
    logger.info(
        "built yolo: backbone=%s neck=%s head=%s input=%s classes=%d params=%d",
        backbone,
        neck,
        head,
        tuple(input_shape),
        num_classes,
        model.count_params(),
    )
    return model


def build_model(model_cfg: Any, num_classes: int, *, any_size: bool = False) -> keras.Model:
    """Build the detector from a model config section (the one place config meets code).

    Reads ``input_size`` ([h, w]), ``backbone``, ``backbone_options``, ``neck``,
    ``neck_options``, ``neck_conv``, ``head``, ``pretrained``, ``bn_momentum`` and the head's
    own keys (``anchors_mask``: one list of anchor indices per level, all the same length, for
    ``anchor_based``; ``reg_max`` for ``anchor_free``) from ``model_cfg``. ``any_size``: see
    :func:`build_yolo` (the trainer sets it for ``augment.multi_scale``).
    """
    if model_cfg.head == "anchor_based":
        counts = {len(mask) for mask in model_cfg.anchors_mask}
        if len(model_cfg.anchors_mask) != len(HEAD_LEVELS) or len(counts) != 1:
            raise ValueError(
                f"model.anchors_mask needs {len(HEAD_LEVELS)} lists of equal length; "
                f"received {model_cfg.anchors_mask}"
            )
        head_options = {"num_anchors": counts.pop()}
    else:
        head_options = {"reg_max": model_cfg.reg_max}
    height, width = model_cfg.input_size
    return build_yolo(
        (int(height), int(width), 3),
        num_classes,
        backbone=model_cfg.backbone,
        backbone_options=dict(model_cfg.backbone_options or {}),
        neck=model_cfg.neck,
        neck_options=dict(model_cfg.neck_options or {}),
        neck_conv=model_cfg.neck_conv,
        head=model_cfg.head,
        head_options=head_options,
        pretrained=model_cfg.pretrained,
        bn_momentum=model_cfg.bn_momentum,
        any_size=any_size,
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
