"""Convert reference PyTorch ImageNet weights into a Keras weights file for a ported backbone.

GhostNet and ShuffleNetV2 are written layer for layer after timm's ``ghostnet_100`` and
torchvision's ``shufflenet_v2_x0_5`` ... ``shufflenet_v2_x2_0``. This tool maps such a
``state_dict`` onto our build of the ImageNet classifier and saves its weights; set
``model.pretrained`` to the written file and the detection backbone loads the layers it uses.

Get the reference weights where there is internet (this project downloads nothing), e.g. the
file torchvision downloads for ``shufflenet_v2_x1_0(weights="DEFAULT")``
(``shufflenetv2_x1-5666bf0f80.pth``, a state_dict), or save one:

    python -c "import timm, torch; torch.save(timm.create_model('ghostnet_100', \\
        pretrained=True).state_dict(), 'ghostnet_100.pth')"

then convert it (reading the file needs ``pip install torch``):

    python tools/convert_torch_weights.py --arch ghostnet_100 --state-dict ghostnet_100.pth \\
        --out model_data/ghostnet_100.weights.h5
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path

from utils.cli import fail, quiet_tensorflow

quiet_tensorflow()  # before Keras imports TensorFlow

import keras  # noqa: E402
import numpy as np  # noqa: E402

from nets.backbones.ghostnet import TIMM_ARCHS, ghostnet_classifier  # noqa: E402
from nets.backbones.shufflenet_v2 import (  # noqa: E402
    TORCHVISION_ARCHS,
    shufflenet_v2_classifier,
)
from nets.layers import nested_layers  # noqa: E402

__all__ = ["ARCHS", "ConversionError", "convert", "load_state_dict", "main"]

# Reference architecture name -> builder of our classifier with the same layers (any input
# size: the weights do not depend on it).
_ANY_SIZE = (None, None, 3)
ARCHS: dict[str, Callable[[], keras.Model]] = {
    **{
        arch: partial(ghostnet_classifier, _ANY_SIZE, alpha=alpha)
        for arch, alpha in TIMM_ARCHS.items()
    },
    **{
        arch: partial(shufflenet_v2_classifier, _ANY_SIZE, alpha=alpha)
        for arch, alpha in TORCHVISION_ARCHS.items()
    },
}

# timm's Ghost module submodules -> the GhostConv sublayers that hold their weights.
_GHOST_SUBLAYERS = {
    "primary_conv.0": "primary_conv",
    "primary_conv.1": "primary_bn",
    "cheap_operation.0": "cheap_conv",
    "cheap_operation.1": "cheap_bn",
}
# PyTorch parameter names in the order of the Keras layer's weights.
_BATCH_NORM_PARAMS = ("weight", "bias", "running_mean", "running_var")
_KERNEL_PARAMS = ("weight", "bias")
# A BatchNorm buffer without a Keras counterpart (only used for momentum=None).
_IGNORED_PARAMS = ("num_batches_tracked",)


class ConversionError(ValueError):
    """The state_dict does not fit the architecture, or the file cannot be read."""


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read a PyTorch ``state_dict`` file (``torch.save`` format) as NumPy arrays."""
    try:
        import torch
    except ImportError:
        raise ConversionError(
            "reading a PyTorch weights file needs PyTorch: pip install torch"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds (pickle, zip, runtime) for a bad file
        raise ConversionError(f"not a PyTorch weights file ({err})") from None
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConversionError(
            f"expected a state_dict (parameter names -> tensors), got {type(state).__name__}"
        )
    return {key: value.detach().numpy() for key, value in state.items()}


def convert(arch: str, state_dict: Mapping[str, np.ndarray]) -> keras.Model:
    """Our classifier for ``arch`` (a key of :data:`ARCHS`) with the weights of ``state_dict``.

    Every parameter of the state_dict goes to exactly one Keras weight and every Keras weight
    gets one, so a file of another architecture or width fails here instead of loading partly.

    Raises:
        ConversionError: an unknown arch, a parameter without a layer, a shape that does not
            fit, or a layer left without weights.
    """
    if arch not in ARCHS:
        raise ConversionError(f"unknown arch {arch!r}; valid: {', '.join(sorted(ARCHS))}")
    model = ARCHS[arch]()
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state_dict.items():
        module, _, param = key.rpartition(".")
        if param not in _IGNORED_PARAMS:
            modules.setdefault(module, {})[param] = np.asarray(value)

    converted = set()
    for module, params in modules.items():
        layer = _layer_of(model, module, arch)
        layer.set_weights(_keras_weights(layer, module, params, arch))
        converted.add(layer.path)
    missing = [layer.path for layer in _weighted_leaves(model) if layer.path not in converted]
    if missing:
        raise ConversionError(
            f"the state_dict has no weights for {len(missing)} layer(s) of {arch}, e.g. "
            f"{', '.join(missing[:3])} (is it a file of another architecture?)"
        )
    return model


def _layer_of(model: keras.Model, module: str, arch: str) -> keras.layers.Layer:
    """The Keras layer holding the reference module's weights (names: ``.`` -> ``_``)."""
    parent, sublayer = module, None
    for suffix, attribute in _GHOST_SUBLAYERS.items():
        if module.endswith(f".{suffix}"):
            parent, sublayer = module[: -len(suffix) - 1], attribute
    try:
        layer = model.get_layer(parent.replace(".", "_"))
    except ValueError:
        raise ConversionError(
            f"state_dict module {module!r} has no layer in {arch} "
            "(is it a file of another architecture?)"
        ) from None
    return getattr(layer, sublayer) if sublayer else layer


def _weighted_leaves(model: keras.Model) -> list[keras.layers.Layer]:
    """Layers that own weights directly (GhostConv's sublayers, not GhostConv itself)."""
    return [
        layer for layer in nested_layers(model) if layer.weights and not list(nested_layers(layer))
    ]


def _keras_weights(
    layer: keras.layers.Layer, module: str, params: dict[str, np.ndarray], arch: str
) -> list[np.ndarray]:
    """The reference parameters of ``module`` in ``layer``'s weight order and layout."""
    if isinstance(layer, keras.layers.BatchNormalization):
        names = _BATCH_NORM_PARAMS
    else:
        names = _KERNEL_PARAMS[: len(layer.weights)]
    if set(params) != set(names):
        raise ConversionError(
            f"state_dict module {module!r} has parameters {sorted(params)}; {arch} layer "
            f"{layer.path} takes {list(names)}"
        )
    weights = []
    for name, variable in zip(names, layer.weights, strict=True):
        expected = _torch_shape(layer, tuple(variable.shape))
        value = params[name]
        if value.shape != expected:
            raise ConversionError(
                f"state_dict entry {module}.{name} has shape {value.shape}; {arch} layer "
                f"{layer.path} needs {expected} (is it a file of another width?)"
            )
        weights.append(_to_keras_layout(layer, value))
    return weights


def _torch_shape(layer: keras.layers.Layer, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of a Keras weight of ``shape``."""
    if len(shape) == 4 and isinstance(layer, keras.layers.DepthwiseConv2D):
        kh, kw, channels, multiplier = shape  # torch: [C * m, 1, kh, kw], groups = C
        return (channels * multiplier, 1, kh, kw)
    if len(shape) == 4:
        kh, kw, c_in, c_out = shape  # torch: [out, in, kh, kw]
        return (c_out, c_in, kh, kw)
    if len(shape) == 2:
        return shape[::-1]  # Dense: torch Linear is [out, in]
    return shape


def _to_keras_layout(layer: keras.layers.Layer, value: np.ndarray) -> np.ndarray:
    if value.ndim == 4 and isinstance(layer, keras.layers.DepthwiseConv2D):
        _, _, channels, multiplier = layer.kernel.shape
        kh, kw = value.shape[2:]
        # Output channel c * m + j of the grouped conv is Keras' kernel[..., c, j].
        return value.reshape(channels, multiplier, kh, kw).transpose(2, 3, 0, 1)
    if value.ndim == 4:
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return value.T
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arch",
        required=True,
        choices=sorted(ARCHS),
        help="reference architecture of the state_dict (timm or torchvision name)",
    )
    parser.add_argument(
        "--state-dict",
        type=Path,
        required=True,
        metavar="FILE",
        help="PyTorch state_dict file (torch.save format: .pth, .pt, .bin)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        metavar="FILE.weights.h5",
        help="Keras weights file to write; set model.pretrained to it",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.out.name.endswith(".weights.h5"):
        return fail(f"--out: Keras weights files must end in .weights.h5; got {args.out}")
    if not args.state_dict.is_file():
        return fail(f"--state-dict: file not found: {args.state_dict}")
    try:
        model = convert(args.arch, load_state_dict(args.state_dict))
    except ConversionError as err:
        return fail(f"{args.state_dict}: {err}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(args.out)
    print(f"wrote {args.out} ({args.arch}, {model.count_params():,} values)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
