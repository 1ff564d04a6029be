"""MobileNetV1 backbone.

Paper: Howard et al., "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
Applications", arXiv:1704.04861. Built from ``keras.applications.MobileNet`` (include_top=False),
so ImageNet weights are the official Keras ones and layer names are Keras' own (``conv1``,
``conv_dw_1`` ... ``conv_pw_13_relu``).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import keras

from nets.registry import BACKBONES

__all__ = ["IMAGENET_ALPHAS", "mobilenetv1"]

logger = logging.getLogger(__name__)

# Tapped layers: (layer name, stride). conv_pw_13_relu is the last layer of the include_top=False
# network, so every backbone layer feeds a tap.
_TAPS = (
    ("conv_pw_5_relu", 8),
    ("conv_pw_11_relu", 16),
    ("conv_pw_13_relu", 32),
)

# Width multipliers for which Keras publishes ImageNet weights.
IMAGENET_ALPHAS = (0.25, 0.5, 0.75, 1.0)

# Keras picks the weights file by input rows (one of these, else 224); the no-top weights have the
# same shapes for every resolution, so any of them loads into any input size.
_IMAGENET_ROWS = (128, 160, 192, 224)
_IMAGENET_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
    "mobilenet_{alpha}_{rows}_tf_no_top.h5"
)


@BACKBONES.register("mobilenetv1")
def mobilenetv1(
    inputs: keras.KerasTensor,
    *,
    alpha: float = 1.0,
    pretrained: str | None = None,
) -> tuple[keras.KerasTensor, keras.KerasTensor, keras.KerasTensor]:
    """MobileNetV1 feature taps C3, C4, C5 (strides 8, 16, 32; 256a, 512a, 1024a channels).

    The backbone is a nested ``keras.Model`` named ``"backbone"``. Its first layer rescales the
    0..1 input images to the -1..1 range the Keras ImageNet weights were trained on.

    Args:
        inputs: RGB images in 0..1, shape [B, H, W, 3]; H and W multiples of 32.
        alpha: width multiplier; channel counts are ``int(c * alpha)`` as in Keras.
        pretrained: None for random init, ``"imagenet"`` for the official Keras weights (needs
            internet or a copy in ``~/.keras/models``), or the path of a weights file saved from
            ``keras.applications.MobileNet(include_top=False, alpha=alpha)``: ``.weights.h5``,
            legacy ``.h5`` (weights-only or full model) or ``.keras``.

    Raises:
        ValueError: ImageNet weights requested for an alpha without them, or a weights file that
            does not fit this alpha.
        FileNotFoundError: ``pretrained`` is a path that does not exist.
        RuntimeError: the ImageNet weights could not be downloaded.
    """
    input_shape = tuple(inputs.shape[1:])
    weights = _pretrained_weights(input_shape, alpha, pretrained) if pretrained else None

    images = keras.Input(shape=input_shape, name="images")
    scaled = keras.layers.Rescaling(2.0, offset=-1.0, name="to_signed_unit")(images)
    net = keras.applications.MobileNet(
        input_tensor=scaled, include_top=False, weights=None, alpha=alpha
    )
    if weights is not None:
        net.set_weights(weights)
    taps = [net.get_layer(name).output for name, _ in _TAPS]
    backbone = keras.Model(images, taps, name="backbone")
    c3, c4, c5 = backbone(inputs)
    return c3, c4, c5


def _pretrained_weights(input_shape: tuple[int | None, ...], alpha: float, pretrained: str) -> list:
    """Load ``pretrained`` into a plain Keras MobileNet and return its weights in layer order.

    The plain model has the same weighted layers, in the same order, as the tapped backbone (the
    rescaling layer has no weights), so ``set_weights`` transfers them one to one.
    """
    if pretrained == "imagenet":
        return _imagenet_weights(input_shape, alpha)

    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"MobileNetV1 pretrained weights file not found: {path} "
            "(use pretrained: imagenet, null, or the path of an existing weights file)"
        )
    reference = keras.applications.MobileNet(
        input_shape=input_shape, include_top=False, weights=None, alpha=alpha
    )
    # Keras warns once per layer on a mismatching file before it raises; keep the one clear
    # error below and pass on any warnings of a load that succeeds.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            reference.load_weights(path)
        except ValueError as err:
            raise ValueError(
                f"weights file {path} does not fit MobileNetV1 (include_top=False, "
                f"alpha={alpha}): {err}"
            ) from err
    for warning in caught:
        logger.warning("loading %s: %s", path, warning.message)
    logger.info("loaded MobileNetV1 weights from %s", path)
    return reference.get_weights()


def _imagenet_weights(input_shape: tuple[int | None, ...], alpha: float) -> list:
    if alpha not in IMAGENET_ALPHAS:
        raise ValueError(
            f"no ImageNet weights exist for MobileNetV1 alpha={alpha}; valid alphas: "
            f"{', '.join(str(a) for a in IMAGENET_ALPHAS)} (or set pretrained: null)"
        )
    if input_shape[-1] != 3:
        raise ValueError(
            f"ImageNet weights need 3-channel input; received input shape {input_shape}"
        )
    rows, cols = input_shape[0], input_shape[1]
    rows = rows if rows == cols and rows in _IMAGENET_ROWS else 224
    alpha_text = {0.25: "2_5", 0.5: "5_0", 0.75: "7_5", 1.0: "1_0"}[alpha]
    url = _IMAGENET_URL.format(alpha=alpha_text, rows=rows)
    try:
        with warnings.catch_warnings():
            # Keras warns that it loads the 224 file for other sizes; every file has the same
            # shapes, so for the no-top network that is fine.
            warnings.filterwarnings("ignore", message=".*will be loaded as the default")
            reference = keras.applications.MobileNet(
                input_shape=input_shape, include_top=False, weights="imagenet", alpha=alpha
            )
    # Keras' downloader raises a bare Exception on network failures.
    except Exception as err:
        raise RuntimeError(
            f"could not get the ImageNet weights for MobileNetV1 alpha={alpha} ({err}). "
            f"On a machine with internet, download {url} and set `pretrained` to the file's "
            "path (or copy it into ~/.keras/models/)."
        ) from err
    return reference.get_weights()
