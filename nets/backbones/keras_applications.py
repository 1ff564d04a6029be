"""One code path for every backbone built from ``keras.applications``.

A family module describes each of its variants in a :class:`KerasFamily` (the Keras
constructor, the tapped layers, the input range its weights expect, where its ImageNet file lives)
and registers it with :func:`register_backbone`, whose builder calls :func:`build_backbone`, which

1. rescales the 0..1 input images to the range the family's network takes,
2. builds the application on them (``include_top=False``, random init) with the project's fused
   BatchNormalization in place of Keras' (:func:`nets.layers.with_fused_batchnorm`),
3. loads ``pretrained`` (``"imagenet"`` or a local weights file) through a plain copy of the
   application and transfers the weights,
4. wraps the input -> three taps graph as the nested ``keras.Model`` named ``"backbone"`` (the
   freeze boundary; layers after the last tap are left out).
"""

from __future__ import annotations

import fnmatch
import logging
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import keras

from nets.layers import with_fused_batchnorm
from nets.registry import BACKBONES

__all__ = [
    "INPUT_RANGES",
    "ImageNetWeightsError",
    "KerasFamily",
    "build_backbone",
    "register_backbone",
]

logger = logging.getLogger(__name__)

KerasTensor = keras.KerasTensor
Taps = tuple[KerasTensor, KerasTensor, KerasTensor]

# What a family's network takes -> (layer name, scale, offset) of the Rescaling that maps 0..1
# images to it. "signed_unit": -1..1 (the MobileNets). "byte": 0..255; the network normalizes
# with ImageNet statistics inside (EfficientNet).
INPUT_RANGES: dict[str, tuple[str, float, float]] = {
    "signed_unit": ("to_signed_unit", 2.0, -1.0),
    "byte": ("to_byte_range", 255.0, 0.0),
}


class ImageNetWeightsError(RuntimeError):
    """``pretrained: imagenet`` could not be downloaded (offline); the message says what to do."""


@dataclass(frozen=True)
class KerasFamily:
    """What :func:`build_backbone` needs to know about one keras.applications network."""

    # Name in messages, e.g. "MobileNetV2".
    title: str
    # The keras.applications constructor, e.g. keras.applications.MobileNetV2.
    application: Callable[..., keras.Model]
    # Layers tapped at strides 8, 16, 32: names or fnmatch patterns; the last layer (in build
    # order) that matches is tapped, so "block3?_*" is the end of EfficientNet's block group 3
    # whatever the variant's depth.
    taps: tuple[str, str, str]
    # Key of INPUT_RANGES: the range of the inputs the network (and its ImageNet weights) expect.
    input_range: Literal["signed_unit", "byte"]
    # (alpha or None, rows of the weights file) -> URL of the official no-top weights file that
    # Keras downloads for these settings; named in the offline error message.
    imagenet_url: Callable[[float | None, int], str]
    # Width multipliers that have ImageNet weights; empty for a family without ``alpha``.
    imagenet_alphas: tuple[float, ...] = ()
    # Square input sizes with a weights file of their own; Keras loads the 224 file for others.
    imagenet_rows: tuple[int, ...] = ()
    # Constructor arguments this project always passes (e.g. include_preprocessing=False).
    fixed_options: dict[str, Any] = field(default_factory=dict)
    # Called on the built application once its weights are set (e.g. to fix input statistics).
    after_weights: Callable[[keras.Model], None] | None = None


def register_backbone(name: str, family: KerasFamily, *, taps: str) -> Callable[..., Taps]:
    """Register the builder of ``family``'s C3, C4, C5 as backbone ``name`` and return it.

    The builder takes ``pretrained``, and ``alpha`` where the family has width multipliers
    (``imagenet_alphas``); ``taps`` describes the taps in its docstring (e.g. their channels).
    """
    if family.imagenet_alphas:

        def backbone(
            inputs: KerasTensor, *, alpha: float = 1.0, pretrained: str | None = None
        ) -> Taps:
            return build_backbone(family, inputs, pretrained=pretrained, alpha=alpha)

    else:

        def backbone(inputs: KerasTensor, *, pretrained: str | None = None) -> Taps:
            return build_backbone(family, inputs, pretrained=pretrained)

    backbone.__name__ = backbone.__qualname__ = name
    backbone.__doc__ = _docstring(family, taps)
    return BACKBONES.register(name)(backbone)


def _docstring(family: KerasFamily, taps: str) -> str:
    """The registered builder's docstring, from the family's data."""
    layer = INPUT_RANGES[family.input_range][0]
    alpha_doc, alpha_arg = "", ""
    if family.imagenet_alphas:
        alpha_doc = "\n    alpha: width multiplier; channel counts scale with it as in Keras."
        alpha_arg = ", alpha=alpha"
    return (
        f"{family.title} feature taps C3, C4, C5 (strides 8, 16, 32): {taps}.\n\n"
        'The backbone is a nested ``keras.Model`` named ``"backbone"``; its first layer\n'
        f"(``{layer}``) rescales the 0..1 images to the range the network's weights expect.\n\n"
        "Args:\n"
        f"    inputs: RGB images in 0..1, shape [B, H, W, 3]; H and W multiples of 32.{alpha_doc}\n"
        '    pretrained: None, ``"imagenet"`` or a weights file of\n'
        f"        ``keras.applications.{family.application.__name__}"
        f"(include_top=False{alpha_arg})``;\n"
        "        see :func:`nets.backbones.keras_applications.build_backbone`.\n"
    )


def build_backbone(
    family: KerasFamily,
    inputs: KerasTensor,
    *,
    pretrained: str | None,
    alpha: float | None = None,
) -> Taps:
    """C3, C4, C5 of ``family``'s network on ``inputs`` (RGB images in 0..1).

    Args:
        family: the network to build.
        inputs: images [B, H, W, 3] in 0..1; H and W multiples of 32.
        pretrained: None (random init), ``"imagenet"`` (the official Keras weights: needs
            internet or a copy in ``~/.keras/models``), or the path of a weights file saved from
            the same keras.applications network with ``include_top=False`` and the same alpha
            (``.weights.h5``, legacy ``.h5`` weights-only or full model, or ``.keras``).
        alpha: width multiplier, for families that have one (None: the family has none).

    Raises:
        ValueError: a bad alpha, ImageNet weights asked for an alpha without them, or a weights
            file that does not fit the network.
        FileNotFoundError: ``pretrained`` is a path that does not exist.
        ImageNetWeightsError: the ImageNet weights could not be downloaded.
    """
    options = dict(family.fixed_options)
    if alpha is not None:
        options["alpha"] = _checked_alpha(family, alpha)
    input_shape = tuple(inputs.shape[1:])
    weights = _pretrained_weights(family, input_shape, options, pretrained) if pretrained else None

    images = keras.Input(shape=input_shape, name="images")
    name, scale, offset = INPUT_RANGES[family.input_range]
    scaled = keras.layers.Rescaling(scale, offset=offset, name=name)(images)
    # keras.applications builds Keras' (unfused) BatchNormalization; rebuild it with ours.
    net = with_fused_batchnorm(
        family.application(input_tensor=scaled, include_top=False, weights=None, **options)
    )
    if weights is not None:
        # The plain application has the same weighted layers in the same order (the rescaling
        # layers have no weights), so the transfer is one to one.
        net.set_weights(weights)
    if family.after_weights is not None:
        family.after_weights(net)
    taps = [_tap(net, family, pattern).output for pattern in family.taps]
    backbone = keras.Model(net.input, taps, name="backbone")
    c3, c4, c5 = backbone(inputs)
    return c3, c4, c5


def _checked_alpha(family: KerasFamily, alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha <= 0:
        raise ValueError(f"{family.title} alpha must be a positive number; received {alpha!r}")
    # Keras names ImageNet files after str(alpha): 1 and 1.0 must give the same file.
    return float(alpha)


def _tap(net: keras.Model, family: KerasFamily, pattern: str) -> keras.layers.Layer:
    matches = [layer for layer in net.layers if fnmatch.fnmatchcase(layer.name, pattern)]
    if not matches:
        raise ValueError(f"{family.title} has no layer named like the tap {pattern!r}")
    return matches[-1]


def _describe(family: KerasFamily, options: dict[str, Any]) -> str:
    alpha = options.get("alpha")
    return family.title if alpha is None else f"{family.title} alpha={alpha}"


def _pretrained_weights(
    family: KerasFamily,
    input_shape: tuple[int | None, ...],
    options: dict[str, Any],
    pretrained: str,
) -> list:
    """Load ``pretrained`` into a plain copy of the application; its weights in layer order."""
    if pretrained == "imagenet":
        return _imagenet_weights(family, input_shape, options)

    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{family.title} pretrained weights file not found: {path} "
            "(use pretrained: imagenet, null, or the path of an existing weights file)"
        )
    reference = family.application(
        input_shape=input_shape, include_top=False, weights=None, **options
    )
    # Keras warns once per layer on a mismatching file before it raises; keep the one clear
    # error below and pass on any warnings of a load that succeeds.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            reference.load_weights(path)
        # OSError: h5py on a file that is not HDF5; BadZipFile: the same for a .keras file
        except (ValueError, OSError, zipfile.BadZipFile) as err:
            alpha = f", alpha={options['alpha']}" if "alpha" in options else ""
            raise ValueError(
                f"weights file {path} does not fit {family.title} (include_top=False{alpha}): {err}"
            ) from err
    for warning in caught:
        logger.warning("loading %s: %s", path, warning.message)
    logger.info("loaded %s weights from %s", family.title, path)
    return reference.get_weights()


def _imagenet_weights(
    family: KerasFamily, input_shape: tuple[int | None, ...], options: dict[str, Any]
) -> list:
    alpha = options.get("alpha")
    if alpha is not None and alpha not in family.imagenet_alphas:
        raise ValueError(
            f"no ImageNet weights exist for {family.title} alpha={alpha}; valid alphas: "
            f"{', '.join(str(a) for a in family.imagenet_alphas)} (or set pretrained: null)"
        )
    if input_shape[-1] != 3:
        raise ValueError(
            f"ImageNet weights need 3-channel input; received input shape {input_shape}"
        )
    square = input_shape[0] == input_shape[1]
    rows = input_shape[0] if square and input_shape[0] in family.imagenet_rows else 224
    try:
        with warnings.catch_warnings():
            # Keras warns that it loads the 224 file for other input sizes; no-top weights
            # have the same shapes at every size, so that is what we want.
            warnings.filterwarnings("ignore", message=".*will be loaded as the default")
            reference = family.application(
                input_shape=input_shape, include_top=False, weights="imagenet", **options
            )
    # Keras' downloader raises a bare Exception on network failures.
    except Exception as err:
        raise ImageNetWeightsError(
            f"model.pretrained: imagenet: could not get the ImageNet weights for "
            f"{_describe(family, options)} ({err}); on a machine with internet, download "
            f"{family.imagenet_url(alpha, rows)} and set model.pretrained to the file's path (or "
            "copy it into ~/.keras/models/), or set model.pretrained: null for random weights"
        ) from err
    return reference.get_weights()
