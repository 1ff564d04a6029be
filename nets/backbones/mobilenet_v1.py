"""MobileNetV1 backbone.

Paper: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", arXiv:1704.04861. Built from ``keras.applications.MobileNet`` (include_top=False)
by :mod:`nets.backbones.keras_applications`, so ImageNet weights are the official Keras ones and
layer names are Keras' own (``conv1``, ``conv_dw_1`` ... ``conv_pw_13_relu``).
"""

from __future__ import annotations

import keras

from nets.backbones.keras_applications import KerasFamily, build_backbone
from nets.registry import BACKBONES

__all__ = ["IMAGENET_ALPHAS", "mobilenetv1"]

# Width multipliers for which Keras publishes ImageNet weights.
IMAGENET_ALPHAS = (0.25, 0.5, 0.75, 1.0)

# Keras picks the weights file by input rows (one of these, else 224).
_IMAGENET_ROWS = (128, 160, 192, 224)


def _imagenet_url(alpha: float | None, rows: int | None) -> str:
    alpha_text = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}[alpha]
    rows = rows if rows in _IMAGENET_ROWS else 224
    return (
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
        f"mobilenet_{alpha_text}_{rows}_tf_no_top.h5"
    )


MOBILENET_V1 = KerasFamily(
    title="MobileNetV1",
    application=keras.applications.MobileNet,
    # conv_pw_13_relu is the last layer of the include_top=False network, so every backbone
    # layer feeds a tap.
    taps=("conv_pw_5_relu", "conv_pw_11_relu", "conv_pw_13_relu"),
    input_range="signed_unit",
    imagenet_url=_imagenet_url,
    imagenet_alphas=IMAGENET_ALPHAS,
)


@BACKBONES.register("mobilenetv1")
def mobilenetv1(
    inputs: keras.KerasTensor,
    *,
    alpha: float = 1.0,
    pretrained: str | None = None,
) -> tuple[keras.KerasTensor, keras.KerasTensor, keras.KerasTensor]:
    """MobileNetV1 feature taps C3, C4, C5 (strides 8, 16, 32; 256a, 512a, 1024a channels).

    The backbone is a nested ``keras.Model`` named ``"backbone"``. Its first layer
    (``to_signed_unit``) rescales the 0..1 input images to the -1..1 range the Keras ImageNet
    weights were trained on.

    Args:
        inputs: RGB images in 0..1, shape [B, H, W, 3]; H and W multiples of 32.
        alpha: width multiplier; channel counts are ``int(c * alpha)`` as in Keras.
        pretrained: None, ``"imagenet"`` or a weights file of
            ``keras.applications.MobileNet(include_top=False, alpha=alpha)``; see
            :func:`nets.backbones.keras_applications.build_backbone`.
    """
    return build_backbone(MOBILENET_V1, inputs, pretrained=pretrained, alpha=alpha)
