"""Necks: feature fusion from backbone taps (C3, C4, C5) to detector inputs (P3, P4, P5).

Also holds the conv blocks the necks and the YOLO head share. Every 3x3 conv of a neck goes
through :func:`conv3x3_block`, so ``model.neck_conv`` (the neck keyword ``conv``) swaps it for a
plain conv, a depthwise-separable block or a GhostConv in every neck at once.
"""

from __future__ import annotations

import typing

import keras

from nets.layers import BatchNormalization, GhostConv
from nets.registry import NECKS
from utils.config import NeckConv

__all__ = [
    "NECK_CONVS",
    "conv3x3_block",
    "conv_bn_relu6",
    "dw_separable_block",
    "yolov3_fpn",
    "yolov4_panet",
]

# Values of the necks' ``conv`` keyword (model.neck_conv).
NECK_CONVS: tuple[str, ...] = typing.get_args(NeckConv)

KerasTensor = keras.KerasTensor


def conv_bn_relu6(
    x: KerasTensor, filters: int, name: str, kernel_size: int = 1, strides: int = 1
) -> KerasTensor:
    """Conv2D (no bias) + BatchNorm + ReLU6; layers named ``{name}_conv/_bn/_relu``."""
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x)


def dw_separable_block(x: KerasTensor, filters: int, name: str, strides: int = 1) -> KerasTensor:
    """Depthwise 3x3 + BN + ReLU6, then pointwise 1x1 to ``filters`` + BN + ReLU6 (no biases).

    Layers are named ``{name}_dw``, ``{name}_dw_bn``, ``{name}_dw_relu``, ``{name}_pw``,
    ``{name}_pw_bn``, ``{name}_pw_relu``. With ``strides=2`` the depthwise conv downsamples.
    """
    x = keras.layers.DepthwiseConv2D(
        3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw"
    )(x)
    x = BatchNormalization(name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{name}_pw")(x)
    x = BatchNormalization(name=f"{name}_pw_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_pw_relu")(x)


def conv3x3_block(
    x: KerasTensor, filters: int, name: str, conv: str, strides: int = 1
) -> KerasTensor:
    """A neck's 3x3 conv block, all with BN + ReLU6; ``conv`` picks which (``NECK_CONVS``).

    ``"standard"``: Conv 3x3 (layers ``{name}_conv/_bn/_relu``); ``"depthwise"``:
    :func:`dw_separable_block` (``{name}_dw..``, ``{name}_pw..``); ``"ghost"``: one
    :class:`GhostConv` with kernel 3 (layer ``{name}_ghost``, its BNs and ReLU6 inside).
    ``strides=2`` downsamples in every variant.
    """
    if conv == "standard":
        return conv_bn_relu6(x, filters, name, kernel_size=3, strides=strides)
    if conv == "depthwise":
        return dw_separable_block(x, filters, name, strides=strides)
    if conv == "ghost":
        ghost = GhostConv(
            filters, kernel_size=3, strides=strides, activation="relu6", name=f"{name}_ghost"
        )
        return ghost(x)
    raise ValueError(f"unknown neck conv {conv!r}; valid values: {', '.join(NECK_CONVS)}")


def _five_convs(x: KerasTensor, filters: int, name: str, conv: str) -> KerasTensor:
    """1x1 -> 3x3(2f) -> 1x1 -> 3x3(2f) -> 1x1, the YOLOv3/v4 "five convs"."""
    x = conv_bn_relu6(x, filters, f"{name}_1")
    x = conv3x3_block(x, filters * 2, f"{name}_2", conv)
    x = conv_bn_relu6(x, filters, f"{name}_3")
    x = conv3x3_block(x, filters * 2, f"{name}_4", conv)
    return conv_bn_relu6(x, filters, f"{name}_5")


def _scaled(channels: int, alpha: float) -> int:
    """``int(channels * alpha)``; a width that rounds to no channels is a clear error."""
    scaled = int(channels * alpha)
    if scaled < 1:
        raise ValueError(
            f"neck alpha={alpha} scales {channels} channels to none; use a larger alpha"
        )
    return scaled


def _upsample(x: KerasTensor, filters: int, prefix: str) -> KerasTensor:
    """1x1 conv to ``filters`` (``{prefix}_up``) then 2x upsampling (``{prefix}_upsample``)."""
    x = conv_bn_relu6(x, filters, f"{prefix}_up")
    return keras.layers.UpSampling2D(2, name=f"{prefix}_upsample")(x)


def _spp(x: KerasTensor, name: str) -> KerasTensor:
    """Spatial pyramid pooling: concat of stride-1 max-pools 13, 9, 5 with the input."""
    pools = [
        keras.layers.MaxPooling2D(size, strides=1, padding="same", name=f"{name}_pool{size}")(x)
        for size in (13, 9, 5)
    ]
    return keras.layers.Concatenate(name=f"{name}_concat")([*pools, x])


@NECKS.register("yolov4_panet")
def yolov4_panet(
    c3: KerasTensor,
    c4: KerasTensor,
    c5: KerasTensor,
    *,
    alpha: float = 1.0,
    conv: str = "depthwise",
) -> tuple[KerasTensor, KerasTensor, KerasTensor]:
    """YOLOv4 SPP + PANet neck; with ``conv="depthwise"`` the "mobilenet-yolov4" neck.

    Layer for layer the neck of bubbliiiing's mobilenet-yolov4 (keras / tf2): Conv+BN+ReLU6
    blocks, depthwise-separable blocks in place of 3x3 convs, SPP on C5, a top-down path to P3
    and a bottom-up path back to P5. Output channels are 128a, 256a, 512a for P3, P4, P5, where
    every channel count c becomes ``int(c * alpha)``.

    Args:
        c3, c4, c5: backbone features at strides 8, 16, 32.
        alpha: width multiplier of the neck.
        conv: the 3x3 conv block (the stride-2 downsamples included), see :func:`conv3x3_block`.

    Returns:
        (P3, P4, P5) at strides 8, 16, 32.
    """

    def ch(c: int) -> int:
        return _scaled(c, alpha)

    # === SPP block on C5 ===
    p5 = conv_bn_relu6(c5, ch(512), "neck_p5_1")
    p5 = conv3x3_block(p5, ch(1024), "neck_p5_2", conv)
    p5 = conv_bn_relu6(p5, ch(512), "neck_p5_3")
    p5 = _spp(p5, "neck_spp")
    p5 = conv_bn_relu6(p5, ch(512), "neck_p5_4")
    p5 = conv3x3_block(p5, ch(1024), "neck_p5_5", conv)
    p5 = conv_bn_relu6(p5, ch(512), "neck_p5_6")

    # === Top-down path ===
    up = _upsample(p5, ch(256), "neck_p5")
    p4 = conv_bn_relu6(c4, ch(256), "neck_c4_lateral")
    p4 = keras.layers.Concatenate(name="neck_td_p4_concat")([p4, up])
    p4 = _five_convs(p4, ch(256), "neck_td_p4", conv)

    up = _upsample(p4, ch(128), "neck_p4")
    p3 = conv_bn_relu6(c3, ch(128), "neck_c3_lateral")
    p3 = keras.layers.Concatenate(name="neck_td_p3_concat")([p3, up])
    p3 = _five_convs(p3, ch(128), "neck_td_p3", conv)

    # === Bottom-up path ===
    down = conv3x3_block(p3, ch(256), "neck_p3_down", conv, strides=2)
    p4 = keras.layers.Concatenate(name="neck_bu_p4_concat")([down, p4])
    p4 = _five_convs(p4, ch(256), "neck_bu_p4", conv)

    down = conv3x3_block(p4, ch(512), "neck_p4_down", conv, strides=2)
    p5 = keras.layers.Concatenate(name="neck_bu_p5_concat")([down, p5])
    p5 = _five_convs(p5, ch(512), "neck_bu_p5", conv)

    return p3, p4, p5


@NECKS.register("yolov3_fpn")
def yolov3_fpn(
    c3: KerasTensor,
    c4: KerasTensor,
    c5: KerasTensor,
    *,
    alpha: float | None = None,
    conv: str = "depthwise",
) -> tuple[KerasTensor, KerasTensor, KerasTensor]:
    """YOLOv3 FPN neck: "five convs" per scale, joined top-down by 1x1 + upsample + concat.

    The structure of YOLOv3 (and of bubbliiiing's efficientnet-yolov3, which sizes it from the
    backbone): five convs on C5 give P5; a 1x1 conv + 2x upsample of P5 is concatenated with C4
    and five convs give P4; the same again with C3 gives P3. YOLOv3's per-scale 3x3 + 1x1 head is
    not here: ``nets/yolo.py`` adds a 3x3 (depthwise-separable, 2x channels) + 1x1 head to every
    neck's outputs, so this neck returns the five-convs outputs. Conv + BN + ReLU6 throughout.

    Args:
        c3, c4, c5: backbone features at strides 8, 16, 32.
        alpha: None sizes each scale by its backbone tap (P3, P4, P5 get C3's, C4's, C5's
            channels, as efficientnet-yolov3 does); a number gives YOLOv3's own widths 128, 256,
            512 times ``alpha``, with the same meaning as ``yolov4_panet``'s ``alpha``.
        conv: the 3x3 conv block of the five convs, see :func:`conv3x3_block`.

    Returns:
        (P3, P4, P5) at strides 8, 16, 32.
    """
    if alpha is None:
        w3, w4, w5 = (int(tap.shape[-1]) for tap in (c3, c4, c5))
    else:
        w3, w4, w5 = (_scaled(c, alpha) for c in (128, 256, 512))

    p5 = _five_convs(c5, w5, "neck_p5", conv)

    up = _upsample(p5, w4, "neck_p5")
    p4 = keras.layers.Concatenate(name="neck_p4_concat")([up, c4])
    p4 = _five_convs(p4, w4, "neck_p4", conv)

    up = _upsample(p4, w3, "neck_p4")
    p3 = keras.layers.Concatenate(name="neck_p3_concat")([up, c3])
    p3 = _five_convs(p3, w3, "neck_p3", conv)

    return p3, p4, p5
