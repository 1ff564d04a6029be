"""Necks: feature fusion from backbone taps (C3, C4, C5) to detector inputs (P3, P4, P5).

Also holds the two conv blocks the necks and the YOLO head share.
"""

from __future__ import annotations

import keras

from nets.registry import NECKS

__all__ = ["conv_bn_relu6", "dw_separable_block", "yolov4_panet"]

KerasTensor = keras.KerasTensor


def conv_bn_relu6(
    x: KerasTensor, filters: int, name: str, kernel_size: int = 1, strides: int = 1
) -> KerasTensor:
    """Conv2D (no bias) + BatchNorm + ReLU6; layers named ``{name}_conv/_bn/_relu``."""
    x = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_relu")(x)


def dw_separable_block(x: KerasTensor, filters: int, name: str, strides: int = 1) -> KerasTensor:
    """Depthwise 3x3 + BN + ReLU6, then pointwise 1x1 to ``filters`` + BN + ReLU6 (no biases).

    Layers are named ``{name}_dw``, ``{name}_dw_bn``, ``{name}_dw_relu``, ``{name}_pw``,
    ``{name}_pw_bn``, ``{name}_pw_relu``. With ``strides=2`` the depthwise conv downsamples.
    """
    x = keras.layers.DepthwiseConv2D(
        3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw"
    )(x)
    x = keras.layers.BatchNormalization(name=f"{name}_dw_bn")(x)
    x = keras.layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = keras.layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{name}_pw")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_pw_bn")(x)
    return keras.layers.ReLU(6.0, name=f"{name}_pw_relu")(x)


def _five_convs(x: KerasTensor, filters: int, name: str) -> KerasTensor:
    """1x1 -> dw-block(2f) -> 1x1 -> dw-block(2f) -> 1x1, the YOLOv4 "five convs" (light)."""
    x = conv_bn_relu6(x, filters, f"{name}_1")
    x = dw_separable_block(x, filters * 2, f"{name}_2")
    x = conv_bn_relu6(x, filters, f"{name}_3")
    x = dw_separable_block(x, filters * 2, f"{name}_4")
    return conv_bn_relu6(x, filters, f"{name}_5")


def _spp(x: KerasTensor, name: str) -> KerasTensor:
    """Spatial pyramid pooling: concat of stride-1 max-pools 13, 9, 5 with the input."""
    pools = [
        keras.layers.MaxPooling2D(size, strides=1, padding="same", name=f"{name}_pool{size}")(x)
        for size in (13, 9, 5)
    ]
    return keras.layers.Concatenate(name=f"{name}_concat")([*pools, x])


@NECKS.register("yolov4_panet")
def yolov4_panet(
    c3: KerasTensor, c4: KerasTensor, c5: KerasTensor, *, alpha: float = 1.0
) -> tuple[KerasTensor, KerasTensor, KerasTensor]:
    """YOLOv4 SPP + PANet neck with depthwise-separable convs (the "mobilenet-yolov4" neck).

    Layer for layer the neck of bubbliiiing's mobilenet-yolov4 (keras / tf2): Conv+BN+ReLU6
    blocks, depthwise-separable blocks in place of 3x3 convs, SPP on C5, a top-down path to P3
    and a bottom-up path back to P5. Output channels are 128a, 256a, 512a for P3, P4, P5, where
    every channel count c becomes ``int(c * alpha)``.

    Args:
        c3, c4, c5: backbone features at strides 8, 16, 32.
        alpha: width multiplier of the neck.

    Returns:
        (P3, P4, P5) at strides 8, 16, 32.
    """

    def ch(c: int) -> int:
        return int(c * alpha)

    # === SPP block on C5 ===
    p5 = conv_bn_relu6(c5, ch(512), "neck_p5_1")
    p5 = dw_separable_block(p5, ch(1024), "neck_p5_2")
    p5 = conv_bn_relu6(p5, ch(512), "neck_p5_3")
    p5 = _spp(p5, "neck_spp")
    p5 = conv_bn_relu6(p5, ch(512), "neck_p5_4")
    p5 = dw_separable_block(p5, ch(1024), "neck_p5_5")
    p5 = conv_bn_relu6(p5, ch(512), "neck_p5_6")

    # === Top-down path ===
    up = conv_bn_relu6(p5, ch(256), "neck_p5_up")
    up = keras.layers.UpSampling2D(2, name="neck_p5_upsample")(up)
    p4 = conv_bn_relu6(c4, ch(256), "neck_c4_lateral")
    p4 = keras.layers.Concatenate(name="neck_td_p4_concat")([p4, up])
    p4 = _five_convs(p4, ch(256), "neck_td_p4")

    up = conv_bn_relu6(p4, ch(128), "neck_p4_up")
    up = keras.layers.UpSampling2D(2, name="neck_p4_upsample")(up)
    p3 = conv_bn_relu6(c3, ch(128), "neck_c3_lateral")
    p3 = keras.layers.Concatenate(name="neck_td_p3_concat")([p3, up])
    p3 = _five_convs(p3, ch(128), "neck_td_p3")

    # === Bottom-up path ===
    down = dw_separable_block(p3, ch(256), "neck_p3_down", strides=2)
    p4 = keras.layers.Concatenate(name="neck_bu_p4_concat")([down, p4])
    p4 = _five_convs(p4, ch(256), "neck_bu_p4")

    down = dw_separable_block(p4, ch(512), "neck_p4_down", strides=2)
    p5 = keras.layers.Concatenate(name="neck_bu_p5_concat")([down, p5])
    p5 = _five_convs(p5, ch(512), "neck_bu_p5")

    return p3, p4, p5
