"""MobileNetV3 backbones, Large and Small.

Paper: Howard et al., "Searching for MobileNetV3", ICCV 2019. Built from
``keras.applications.MobileNetV3Large`` / ``MobileNetV3Small`` (include_top=False) by
:mod:`nets.backbones.keras_applications`. Each tap is the end of the last inverted-residual block
at its stride; for Large these are the MobileNetV3-YOLOv4 reference's 40, 112 and 160 channels
(52x52, 26x26, 13x13 at a 416 input). The final 1x1 conv (960 / 576 channels) is left out.

Keras' MobileNetV3 can rescale 0..255 images itself (``include_preprocessing``); we build it
without that and rescale our 0..1 images to the -1..1 its weights expect (``to_signed_unit``).
"""

from __future__ import annotations

import keras

from nets.backbones.keras_applications import KerasFamily, register_backbone

__all__ = ["IMAGENET_ALPHAS", "mobilenetv3_large", "mobilenetv3_small"]

# Width multipliers for which Keras publishes ImageNet weights (both sizes; 224 input only,
# but no-top weights fit any input size).
IMAGENET_ALPHAS = (0.75, 1.0)


def _family(size: str, application, taps: tuple[str, str, str]) -> KerasFamily:
    def imagenet_url(alpha: float | None, rows: int) -> str:
        return (
            "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v3/"
            f"weights_mobilenet_v3_{size}_224_{alpha}_float_no_top_v2.h5"
        )

    return KerasFamily(
        title=f"MobileNetV3{size.capitalize()}",
        application=application,
        taps=taps,
        input_range="signed_unit",
        imagenet_url=imagenet_url,
        imagenet_alphas=IMAGENET_ALPHAS,
        fixed_options={"include_preprocessing": False},
    )


MOBILENET_V3_LARGE = _family(
    "large",
    keras.applications.MobileNetV3Large,
    ("expanded_conv_5_add", "expanded_conv_11_add", "expanded_conv_14_add"),
)
MOBILENET_V3_SMALL = _family(
    "small",
    keras.applications.MobileNetV3Small,
    ("expanded_conv_2_add", "expanded_conv_7_add", "expanded_conv_10_add"),
)


mobilenetv3_large = register_backbone(
    "mobilenetv3_large", MOBILENET_V3_LARGE, taps="40, 112, 160 channels at alpha 1"
)
mobilenetv3_small = register_backbone(
    "mobilenetv3_small", MOBILENET_V3_SMALL, taps="24, 48, 96 channels at alpha 1"
)
