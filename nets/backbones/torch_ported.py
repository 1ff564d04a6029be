"""What the backbones ported from PyTorch reference implementations share.

GhostNet (after timm's ``ghostnet_100``) and ShuffleNetV2 (after torchvision's
``shufflenet_v2_x*``) are written layer for layer after their references, so that
``tools/convert_torch_weights.py`` maps a reference ``state_dict`` onto them one to one and the
converted network computes what the reference computes. Three PyTorch conventions differ from
Keras defaults and are reproduced here:

- a strided conv pads ``kernel_size // 2`` on every side; Keras ``"same"`` pads the bottom and
  right one more on even sizes, which shifts every sampling position of the layer;
- BatchNorm's epsilon is 1e-5 (Keras: 1e-3), which matters for channels of small variance;
- the networks take images normalized with the ImageNet mean and standard deviation.

Layer names are the reference's module paths with ``.`` replaced by ``_`` (``stage2_0_branch1_2``
is torchvision's ``stage2.0.branch1.2``), which is the whole name mapping the converter needs.

Each family has a classifier builder (the reference ImageNet network, for the converter and the
fidelity tests, assembled by :func:`build_classifier`) and a detection backbone that shares the
classifier's layers up to the taps; a converted classifier weights file loads into the backbone by
layer name (:func:`build_backbone`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import keras

from nets.layers import BatchNormalization

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TORCH_BN_EPSILON",
    "batch_norm",
    "build_backbone",
    "build_classifier",
    "conv",
]

logger = logging.getLogger(__name__)

KerasTensor = keras.KerasTensor

TORCH_BN_EPSILON = 1e-5
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv(
    x: KerasTensor,
    filters: int | None,
    kernel_size: int,
    name: str,
    *,
    strides: int = 1,
    use_bias: bool = False,
) -> KerasTensor:
    """Conv2D, or DepthwiseConv2D when ``filters`` is None, padded like PyTorch's ``k // 2``.

    At stride 1 Keras' ``"same"`` is that padding already; a strided conv gets an explicit
    ``{name}_pad`` ZeroPadding2D and ``"valid"``.
    """
    padding = "same"
    if strides > 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D(kernel_size // 2, name=f"{name}_pad")(x)
        padding = "valid"
    if filters is None:
        layer = keras.layers.DepthwiseConv2D(
            kernel_size, strides=strides, padding=padding, use_bias=use_bias, name=name
        )
    else:
        layer = keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias, name=name
        )
    return layer(x)


def batch_norm(x: KerasTensor, name: str) -> KerasTensor:
    """The project's (fused) BatchNormalization with PyTorch's epsilon."""
    return BatchNormalization(epsilon=TORCH_BN_EPSILON, name=name)(x)


def build_classifier(
    input_shape: tuple[int | None, ...],
    pooled: Callable[[KerasTensor], KerasTensor],
    num_classes: int,
    *,
    logits_name: str,
    name: str,
) -> keras.Model:
    """A reference ImageNet classifier: ``pooled`` (the network up to its pooled, flat features)
    then the linear layer ``logits_name`` to ``num_classes`` logits, as ``keras.Model`` ``name``.

    It takes images normalized with the ImageNet mean and std, as the reference does. Used to
    convert the reference weights and to check the port against the reference.
    """
    images = keras.Input(shape=tuple(input_shape), name="images")
    logits = keras.layers.Dense(num_classes, name=logits_name)(pooled(images))
    return keras.Model(images, logits, name=name)


def build_backbone(
    inputs: KerasTensor,
    features: Callable[[KerasTensor], Sequence[KerasTensor]],
    classifier: Callable[[tuple[int | None, ...]], keras.Model],
    *,
    pretrained: str | None,
    title: str,
    arch: str,
) -> tuple[KerasTensor, KerasTensor, KerasTensor]:
    """C3, C4, C5 of a ported network on ``inputs`` (RGB images in 0..1).

    Args:
        inputs: images [B, H, W, 3] in 0..1.
        features: builds the network's layers on ImageNet-normalized images and returns the
            three taps (strides 8, 16, 32); the same function the classifier is built with.
        classifier: ``input_shape -> the reference classifier``, the layout of converted
            weights files.
        pretrained: None (random init) or a ``.weights.h5`` file that
            ``tools/convert_torch_weights.py --arch {arch}`` wrote. ``"imagenet"`` is an error:
            there are no published Keras weights, only the reference PyTorch ones.
        title: the family's name in messages, e.g. "GhostNet".
        arch: the reference architecture these options correspond to, e.g. "ghostnet_100".

    Raises:
        ValueError: ``pretrained`` is ``"imagenet"`` or a file that does not fit ``arch``.
        FileNotFoundError: ``pretrained`` is a path that does not exist.
    """
    path = _pretrained_path(pretrained, title, arch) if pretrained else None
    input_shape = tuple(inputs.shape[1:])

    images = keras.Input(shape=input_shape, name="images")
    normalized = keras.layers.Rescaling(
        [1.0 / std for std in IMAGENET_STD],
        offset=[-mean / std for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)],
        name="imagenet_normalize",
    )(images)
    backbone = keras.Model(images, list(features(normalized)), name="backbone")
    if path is not None:
        _load_converted(backbone, classifier(input_shape), path, arch)
    c3, c4, c5 = backbone(inputs)
    return c3, c4, c5


def _pretrained_path(pretrained: str, title: str, arch: str) -> Path:
    if pretrained == "imagenet":
        raise ValueError(
            f"{title} has no Keras ImageNet weights to download: convert the reference PyTorch "
            f"weights with `python tools/convert_torch_weights.py --arch {arch} --state-dict "
            "<file.pth> --out <file.weights.h5>` and set `pretrained` to the .weights.h5 file"
        )
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{title} pretrained weights file not found: {path} (use null, or a file written by "
            f"tools/convert_torch_weights.py --arch {arch})"
        )
    return path


def _load_converted(backbone: keras.Model, classifier: keras.Model, path: Path, arch: str) -> None:
    """Load ``path`` into ``classifier``, then copy the layers the backbone has, by name."""
    # Keras warns once per layer on a mismatching file before it raises; keep the one clear
    # error below and pass on any warnings of a load that succeeds.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            classifier.load_weights(path)
        except (ValueError, OSError) as err:  # OSError: h5py on a file that is not HDF5
            # Keras' message goes on for lines (with variable values); its first line says it.
            raise ValueError(
                f"weights file {path} does not fit {arch} (expected a file written by "
                f"tools/convert_torch_weights.py --arch {arch}): {str(err).splitlines()[0]}"
            ) from err
    for warning in caught:
        logger.warning("loading %s: %s", path, warning.message)
    for layer in backbone.layers:
        if layer.weights:
            layer.set_weights(classifier.get_layer(layer.name).get_weights())
    logger.info("loaded %s weights from %s", arch, path)
