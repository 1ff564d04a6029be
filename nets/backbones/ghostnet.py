"""GhostNet backbone, written layer for layer after timm's ``ghostnet_100``.

Paper: Han et al., "GhostNet: More Features from Cheap Operations", CVPR 2020. A 3x3 stride-2
stem conv is followed by 16 Ghost bottlenecks in nine stages (``blocks.0`` ... ``blocks.8``)
and, for ImageNet, a 1x1 conv to 960 channels (``blocks.9``), global pooling, a 1x1 conv with
bias to 1280 and the linear classifier. A Ghost bottleneck is a Ghost module with ReLU
(:class:`nets.layers.GhostConv`: 1x1 primary conv, 3x3 depthwise "cheap" conv, concat), a
depthwise conv when it downsamples, an optional squeeze-excite with a hard-sigmoid gate, a
linear Ghost module, and a residual: identity, or depthwise conv + 1x1 conv when the shape
changes. Channel counts are ``make_divisible(c * alpha, 4)`` for the width multiplier alpha
(timm's ``width``).

Layer names are timm's module paths (see :mod:`nets.backbones.torch_ported`); a Ghost module is
one GhostConv layer (``blocks_3_0_ghost1``) whose sublayers ``primary_conv``, ``primary_bn``,
``cheap_conv``, ``cheap_bn`` are timm's ``primary_conv.0/.1`` and ``cheap_operation.0/.1``.

Taps: C3, C4, C5 are the ends of ``blocks.4``, ``blocks.6`` and ``blocks.8`` (strides 8, 16,
32; 40, 112, 160 channels at alpha 1.0), the three feature maps of the GhostNet-YOLOv4 design.
"""

from __future__ import annotations

import keras

from nets.backbones.torch_ported import (
    TORCH_BN_EPSILON,
    batch_norm,
    build_backbone,
    build_classifier,
    conv,
)
from nets.layers import GhostConv
from nets.registry import BACKBONES

__all__ = ["TIMM_ARCHS", "ghostnet", "ghostnet_classifier", "make_divisible"]

KerasTensor = keras.KerasTensor

# timm's name of the network with published ImageNet weights (the converter's --arch) -> its
# alpha; timm's other widths (ghostnet_050, ghostnet_130) have none.
TIMM_ARCHS: dict[str, float] = {"ghostnet_100": 1.0}

# Ghost bottlenecks per stage (timm's blocks.0 .. blocks.8):
# (depthwise kernel, expansion channels, output channels, squeeze-excite, stride).
_STAGES: tuple[tuple[tuple[int, int, int, bool, int], ...], ...] = (
    ((3, 16, 16, False, 1),),
    ((3, 48, 24, False, 2),),
    ((3, 72, 24, False, 1),),
    ((5, 72, 40, True, 2),),
    ((5, 120, 40, True, 1),),
    ((3, 240, 80, False, 2),),
    (
        (3, 200, 80, False, 1),
        (3, 184, 80, False, 1),
        (3, 184, 80, False, 1),
        (3, 480, 112, True, 1),
        (3, 672, 112, True, 1),
    ),
    ((5, 672, 160, True, 2),),
    (
        (5, 960, 160, False, 1),
        (5, 960, 160, True, 1),
        (5, 960, 160, False, 1),
        (5, 960, 160, True, 1),
    ),
)
# Stages whose outputs are C3, C4, C5.
_TAP_STAGES = (4, 6, 8)
_STEM_CHANNELS = 16
_LAST_CONV_CHANNELS = 960
_HEAD_CHANNELS = 1280
_SE_RATIO = 0.25
_DROPOUT = 0.2


def make_divisible(value: float, divisor: int = 4) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never more than 10% down (timm)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def ghostnet_classifier(
    input_shape: tuple[int | None, ...] = (224, 224, 3),
    alpha: float = 1.0,
    num_classes: int = 1000,
) -> keras.Model:
    """timm's GhostNet ImageNet classifier at ``alpha`` (``ghostnet_100`` at 1.0), logits out;
    see :func:`nets.backbones.torch_ported.build_classifier`."""

    def pooled(images: KerasTensor) -> KerasTensor:
        x = _features(images, alpha)[-1]
        x = conv(x, make_divisible(_LAST_CONV_CHANNELS * alpha), 1, "blocks_9_0_conv")
        x = batch_norm(x, "blocks_9_0_bn1")
        x = keras.layers.ReLU(name="blocks_9_0_act")(x)
        x = keras.layers.GlobalAveragePooling2D(keepdims=True, name="global_pool")(x)
        x = keras.layers.Conv2D(_HEAD_CHANNELS, 1, name="conv_head")(x)
        x = keras.layers.ReLU(name="act2")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        return keras.layers.Dropout(_DROPOUT, name="dropout")(x)

    name = f"ghostnet_{round(alpha * 100):03d}"
    return build_classifier(input_shape, pooled, num_classes, logits_name="classifier", name=name)


@BACKBONES.register("ghostnet")
def ghostnet(
    inputs: keras.KerasTensor,
    *,
    alpha: float = 1.0,
    pretrained: str | None = None,
) -> tuple[KerasTensor, KerasTensor, KerasTensor]:
    """GhostNet feature taps C3, C4, C5 (strides 8, 16, 32; 40, 112, 160 channels at alpha 1).

    The backbone is a nested ``keras.Model`` named ``"backbone"``; its first layer normalizes
    the 0..1 images with the ImageNet mean and std, as the reference weights expect.

    Args:
        inputs: RGB images in 0..1, shape [B, H, W, 3]; H and W multiples of 32.
        alpha: width multiplier (timm's ``width``); channels are ``make_divisible(c * alpha, 4)``.
        pretrained: None, or a ``.weights.h5`` file written by ``tools/convert_torch_weights.py
            --arch ghostnet_100`` from timm's weights (alpha 1.0).
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
        raise ValueError(f"GhostNet alpha must be a positive number; received {alpha!r}")
    if pretrained and alpha != TIMM_ARCHS["ghostnet_100"]:
        raise ValueError(
            f"GhostNet reference weights exist for alpha 1.0 only (timm ghostnet_100); "
            f"received alpha={alpha} with pretrained={pretrained!r} (or set pretrained: null)"
        )

    def taps(x: KerasTensor) -> list[KerasTensor]:
        stages = _features(x, alpha)
        return [stages[index] for index in _TAP_STAGES]

    return build_backbone(
        inputs,
        taps,
        lambda input_shape: ghostnet_classifier(input_shape, alpha),
        pretrained=pretrained,
        title="GhostNet",
        arch="ghostnet_100",
    )


def _features(x: KerasTensor, alpha: float) -> list[KerasTensor]:
    """Stem and blocks.0 .. blocks.8; returns the output of every stage."""
    x = conv(x, make_divisible(_STEM_CHANNELS * alpha), 3, "conv_stem", strides=2)
    x = batch_norm(x, "bn1")
    x = keras.layers.ReLU(name="act1")(x)
    outputs = []
    for stage, bottlenecks in enumerate(_STAGES):
        for index, (kernel, expansion, channels, squeeze, strides) in enumerate(bottlenecks):
            x = _bottleneck(
                x,
                make_divisible(expansion * alpha),
                make_divisible(channels * alpha),
                kernel_size=kernel,
                strides=strides,
                squeeze=squeeze,
                name=f"blocks_{stage}_{index}",
            )
        outputs.append(x)
    return outputs


def _bottleneck(
    x: KerasTensor,
    mid_channels: int,
    out_channels: int,
    *,
    kernel_size: int,
    strides: int,
    squeeze: bool,
    name: str,
) -> KerasTensor:
    """timm's GhostBottleneck."""
    y = _ghost_module(x, mid_channels, "relu", f"{name}_ghost1")
    if strides > 1:
        y = conv(y, None, kernel_size, f"{name}_conv_dw", strides=strides)
        y = batch_norm(y, f"{name}_bn_dw")
    if squeeze:
        y = _squeeze_excite(y, f"{name}_se")
    y = _ghost_module(y, out_channels, None, f"{name}_ghost2")

    shortcut = x
    if strides > 1 or x.shape[-1] != out_channels:
        shortcut = conv(x, None, kernel_size, f"{name}_shortcut_0", strides=strides)
        shortcut = batch_norm(shortcut, f"{name}_shortcut_1")
        shortcut = conv(shortcut, out_channels, 1, f"{name}_shortcut_2")
        shortcut = batch_norm(shortcut, f"{name}_shortcut_3")
    return keras.layers.Add(name=f"{name}_add")([y, shortcut])


def _ghost_module(x: KerasTensor, filters: int, activation: str | None, name: str) -> KerasTensor:
    # The reference's BatchNorms use PyTorch's epsilon, not Keras' default.
    layer = GhostConv(filters, activation=activation, bn_epsilon=TORCH_BN_EPSILON, name=name)
    return layer(x)


def _squeeze_excite(x: KerasTensor, name: str) -> KerasTensor:
    """timm's SqueezeExcite as GhostNet configures it: ReLU, hard-sigmoid gate."""
    channels = x.shape[-1]
    s = keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_pool")(x)
    s = keras.layers.Conv2D(make_divisible(channels * _SE_RATIO), 1, name=f"{name}_conv_reduce")(s)
    s = keras.layers.ReLU(name=f"{name}_act1")(s)
    s = keras.layers.Conv2D(channels, 1, name=f"{name}_conv_expand")(s)
    # Keras 3's hard_sigmoid is relu6(x + 3) / 6, the same as PyTorch's.
    s = keras.layers.Activation("hard_sigmoid", name=f"{name}_gate")(s)
    return keras.layers.Multiply(name=f"{name}_scale")([x, s])
