"""MobileNetV2 backbone.

Paper: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
Built from ``keras.applications.MobileNetV2`` (include_top=False) by
:mod:`nets.backbones.keras_applications`. The taps are those of the MobileNetV2-YOLOv4
reference: the ends of the last 32-, 96- and 320-channel inverted-residual blocks (52x52x32,
26x26x96, 13x13x320 at a 416 input and alpha 1). The final 1x1 conv to 1280 channels is left out.
"""

from __future__ import annotations

import keras

from nets.backbones.keras_applications import KerasFamily, register_backbone

__all__ = ["IMAGENET_ALPHAS", "mobilenetv2"]

# Width multipliers for which Keras publishes ImageNet weights.
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


def _imagenet_url(alpha: float | None, rows: int) -> str:
    return (
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"
        f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5"
    )


MOBILENET_V2 = KerasFamily(
    title="MobileNetV2",
    application=keras.applications.MobileNetV2,
    taps=("block_5_add", "block_12_add", "block_16_project_BN"),
    input_range="signed_unit",
    imagenet_url=_imagenet_url,
    imagenet_alphas=IMAGENET_ALPHAS,
    imagenet_rows=(96, 128, 160, 192, 224),
)


mobilenetv2 = register_backbone("mobilenetv2", MOBILENET_V2, taps="32, 96, 320 channels at alpha 1")
