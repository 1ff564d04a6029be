"""EfficientNet-B0 ... B7 backbones (``efficientnet_b0`` ... ``efficientnet_b7``).

Paper: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks",
ICML 2019. Built from ``keras.applications.EfficientNetB0`` ... ``B7`` (include_top=False) by
:mod:`nets.backbones.keras_applications`. The taps are the ends of block groups 3, 5 and 7 as in
the EfficientNet-YOLOv3 reference (40, 112, 320 channels for B0); the variant's width and depth
coefficients set the channels and the block count, so there is no ``alpha``. The final 1x1 conv
(``top_conv``) is left out.

Input: Keras' EfficientNet takes 0..255 images and normalizes them inside (Rescaling 1/255, then
a Normalization layer), so ``to_byte_range`` rescales our 0..1 images to 0..255 and
:func:`imagenet_normalization` fixes that Normalization layer to ImageNet's mean and std.
"""

from __future__ import annotations

import keras
import numpy as np

from nets.backbones.keras_applications import KerasFamily, register_backbone

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "VARIANTS", "imagenet_normalization"]

# Per-channel RGB statistics of 0..1 ImageNet images, as in the original implementation.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VARIANTS = tuple(range(8))


def imagenet_normalization(net: keras.Model) -> None:
    """Make the stem's Normalization layer compute ``(x - IMAGENET_MEAN) / IMAGENET_STD``.

    Keras' official files store the std where the layer expects the variance, and Keras divides
    by sqrt(std) once more only when it builds the network with ``weights="imagenet"``. Setting
    the variance to std**2 here gives the original normalization whichever way the weights
    arrived (random init, the official file, a local copy); any statistics a weights file holds
    for this layer are replaced.
    """
    (norm,) = [layer for layer in net.layers if isinstance(layer, keras.layers.Normalization)]
    norm.adapt_mean.assign(np.asarray(IMAGENET_MEAN, np.float32))
    norm.adapt_variance.assign(np.square(np.asarray(IMAGENET_STD, np.float32)))
    # The layer computes with copies made here, not with the variables.
    norm.finalize_state()


def _family(variant: int) -> KerasFamily:
    def imagenet_url(alpha: float | None, rows: int) -> str:
        return f"https://storage.googleapis.com/keras-applications/efficientnetb{variant}_notop.h5"

    return KerasFamily(
        title=f"EfficientNetB{variant}",
        application=getattr(keras.applications, f"EfficientNetB{variant}"),
        # Keras names blocks block<group><letter>_...; the variant sets how many letters.
        taps=("block3?_*", "block5?_*", "block7?_*"),
        input_range="byte",
        imagenet_url=imagenet_url,
        after_weights=imagenet_normalization,
    )


for _variant in VARIANTS:
    register_backbone(
        f"efficientnet_b{_variant}", _family(_variant), taps="the ends of block groups 3, 5, 7"
    )
