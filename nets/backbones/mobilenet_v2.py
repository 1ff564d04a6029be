"""MobileNetV2 backbone.

Paper: Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018.
Built from ``keras.applications.MobileNetV2`` (include_top=False) by
:mod:`nets.backbones.keras_applications`. The taps are those of the MobileNetV2-YOLOv4
reference: the ends of the last 32-, 96- and 320-channel inverted-residual blocks (52x52x32,
26x26x96, 13x13x320 at a 416 input and alpha 1). The final 1x1 conv to 1280 channels is left out.
"""

from __future__ import annotations

import keras

from nets.backbones.keras_applications import KerasFamily, build_backbone
from nets.registry import BACKBONES

__all__ = ["IMAGENET_ALPHAS", "mobilenetv2"]

# Width multipliers for which Keras publishes ImageNet weights.
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)

# Keras picks the weights file by input rows (one of these, else 224).
_IMAGENET_ROWS = (96, 128, 160, 192, 224)


def _imagenet_url(alpha: float | None, rows: int | None) -> str:
    rows = rows if rows in _IMAGENET_ROWS else 224
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
)


@BACKBONES.register("mobilenetv2")
def mobilenetv2(
    inputs: keras.KerasTensor,
    *,
    alpha: float = 1.0,
    pretrained: str | None = None,
) -> tuple[keras.KerasTensor, keras.KerasTensor, keras.KerasTensor]:
    """MobileNetV2 feature taps C3, C4, C5 (strides 8, 16, 32; 32, 96, 320 channels at alpha 1).

    The network takes -1..1 images (``to_signed_unit`` rescales the 0..1 inputs). Channel counts
    scale with alpha as in Keras: ``c * alpha`` rounded to a multiple of 8.

    Args:
        inputs: RGB images in 0..1, shape [B, H, W, 3]; H and W multiples of 32.
        alpha: width multiplier.
        pretrained: None, ``"imagenet"`` or a weights file of
            ``keras.applications.MobileNetV2(include_top=False, alpha=alpha)``; see
            :func:`nets.backbones.keras_applications.build_backbone`.
    """
    return build_backbone(MOBILENET_V2, inputs, pretrained=pretrained, alpha=alpha)
