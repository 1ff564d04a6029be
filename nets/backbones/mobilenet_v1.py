"""MobileNetV1 backbone.

Paper: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", arXiv:1704.04861. Built from ``keras.applications.MobileNet`` (include_top=False)
by :mod:`nets.backbones.keras_applications`, so ImageNet weights are the official Keras ones and
layer names are Keras' own (``conv1``, ``conv_dw_1`` ... ``conv_pw_13_relu``).
"""

from __future__ import annotations

import keras

from nets.backbones.keras_applications import KerasFamily, register_backbone

__all__ = ["IMAGENET_ALPHAS", "mobilenetv1"]

# Width multipliers for which Keras publishes ImageNet weights.
IMAGENET_ALPHAS = (0.25, 0.5, 0.75, 1.0)


def _imagenet_url(alpha: float | None, rows: int) -> str:
    alpha_text = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}[alpha]
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
    imagenet_rows=(128, 160, 192, 224),
)


mobilenetv1 = register_backbone(
    "mobilenetv1", MOBILENET_V1, taps="int(c * alpha) channels for c = 256, 512, 1024"
)
