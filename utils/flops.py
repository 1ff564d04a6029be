"""Analytic multiply-accumulate (MAC) counts for Keras models.

Counted layers: convolutions (Conv1D/2D/3D incl. grouped), DepthwiseConv, SeparableConv,
ConvTranspose and Dense, biases not counted. Every other layer (activations, pooling, resize,
concat) is free. Normalisation layers are free by default, the usual convention for detector
GFLOPs (BN folds into the conv at inference); ``norm_layers="thop"`` counts them the way the
PyTorch profiler thop (0.1.x) does, to compare with figures published from it: 2 ops per input
element, doubled when the layer is affine (has gamma or beta). Nested models are walked, and so
are layers that own sublayers and describe their calls with ``sublayer_calls(input_shape)`` (see
``nets/layers.py``, e.g. GhostConv). A layer or model called several times counts once per call.
FLOPs are reported as 2 x MACs.
"""

from __future__ import annotations

import math
from typing import Literal

import keras

__all__ = ["NORM_CONVENTIONS", "count_flops", "count_macs", "macs_by_layer"]

_Shape = tuple[int | None, ...]
NormConvention = Literal["free", "thop"]
NORM_CONVENTIONS: tuple[str, ...] = ("free", "thop")

_WEIGHTED = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    keras.layers.Dense,
)
# The normalisation layers thop counts (its BatchNorm*/LayerNorm hooks).
_NORMS = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)


def count_macs(model: keras.Model, norm_layers: NormConvention = "free") -> int:
    """Total multiply-accumulates of one forward pass for a batch of one.

    ``norm_layers``: ``"free"`` (default) or ``"thop"``, see the module docstring.
    """
    return sum(macs_by_layer(model, norm_layers).values())


def count_flops(model: keras.Model, norm_layers: NormConvention = "free") -> int:
    """Floating-point operations of one forward pass for a batch of one (2 x MACs)."""
    return 2 * count_macs(model, norm_layers)


def macs_by_layer(model: keras.Model, norm_layers: NormConvention = "free") -> dict[str, int]:
    """MACs per counted layer, keyed by its path (``"backbone/conv1"``), in layer order.

    Sublayers of a composite layer are keyed below it (``"neck_p5_2_ghost/primary_conv"``).

    Raises:
        ValueError: a counted layer has an unknown (None) spatial size (build the model with a
            fixed input size), ``norm_layers`` is not a known convention, or a layer owns
            counted sublayers without describing them by ``sublayer_calls``.
    """
    if norm_layers not in NORM_CONVENTIONS:
        raise ValueError(
            f"norm_layers must be one of {', '.join(NORM_CONVENTIONS)}; received {norm_layers!r}"
        )
    result: dict[str, int] = {}
    _walk(model, prefix="", calls=1, norm_layers=norm_layers, result=result)
    return result


def _walk(
    model: keras.Model, prefix: str, calls: int, norm_layers: str, result: dict[str, int]
) -> None:
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        # Keras has no public accessor for every call of a layer; each inbound node is one call.
        nodes = layer._inbound_nodes
        if isinstance(layer, keras.Model):
            _walk(layer, f"{path}/", calls * max(1, len(nodes)), norm_layers, result)
            continue
        for node in nodes:
            if node.input_tensors:  # an InputLayer's node has none
                shapes = (node.input_tensors[0].shape, node.output_tensors[0].shape)
                _add_call(layer, path, *shapes, calls, norm_layers, result)


def _add_call(
    layer: keras.layers.Layer,
    path: str,
    input_shape: _Shape,
    output_shape: _Shape,
    calls: int,
    norm_layers: str,
    result: dict[str, int],
) -> None:
    """Add one call of ``layer`` (made ``calls`` times), descending into composite layers."""
    # Calls made inside Layer.call leave no graph nodes, so a composite layer lists them itself.
    describe = getattr(layer, "sublayer_calls", None)
    if describe is not None:
        for sub, sub_input, sub_output in describe(input_shape):
            _add_call(sub, f"{path}/{sub.name}", sub_input, sub_output, calls, norm_layers, result)
        return
    owned = layer._flatten_layers(include_self=False, recursive=True)
    if any(isinstance(sub, _WEIGHTED) for sub in owned):
        raise ValueError(
            f"cannot count MACs of layer {path!r}: it owns conv/dense sublayers but has no "
            "sublayer_calls(input_shape) describing them"
        )
    macs = _layer_macs(layer, input_shape, output_shape, norm_layers)
    if macs:
        result[path] = result.get(path, 0) + calls * macs


def _layer_macs(
    layer: keras.layers.Layer, input_shape: _Shape, output_shape: _Shape, norm_layers: str
) -> int:
    """MACs of one call: positions the kernel is applied at x weights used per position."""
    layers = keras.layers
    if isinstance(layer, _NORMS):
        return _thop_norm_ops(layer, input_shape) if norm_layers == "thop" else 0
    if isinstance(layer, layers.SeparableConv2D | layers.SeparableConv1D):
        kernel_size = math.prod(layer.depthwise_kernel.shape) + math.prod(
            layer.pointwise_kernel.shape
        )
        return _positions(layer, output_shape) * kernel_size
    if isinstance(layer, layers.DepthwiseConv2D | layers.DepthwiseConv1D):
        return _positions(layer, output_shape) * math.prod(layer.kernel.shape)
    if isinstance(layer, layers.Conv2DTranspose | layers.Conv1DTranspose | layers.Conv3DTranspose):
        # Each input position scatters the full kernel, so count input positions.
        return _positions(layer, input_shape) * math.prod(layer.kernel.shape)
    if isinstance(layer, layers.Conv1D | layers.Conv2D | layers.Conv3D):
        # Kernel (k..., C_in / groups, C_out) already accounts for grouped convolutions.
        return _positions(layer, output_shape) * math.prod(layer.kernel.shape)
    if isinstance(layer, layers.Dense):
        return _positions(layer, output_shape) * math.prod(layer.kernel.shape)
    return 0


def _thop_norm_ops(layer: keras.layers.Layer, input_shape: _Shape) -> int:
    """thop's count for a normalisation layer: 2 per input element, x2 if it is affine."""
    if any(dim is None for dim in input_shape[1:]):
        raise ValueError(
            f"cannot count ops of layer {layer.name!r}: unknown size in shape {input_shape}; "
            "build the model with a fixed input size"
        )
    elements = math.prod(input_shape[1:])
    affine = layer.scale or layer.center
    return 2 * elements * (2 if affine else 1)


def _positions(layer: keras.layers.Layer, shape: _Shape) -> int:
    """Number of spatial (or sequence) positions in ``shape``, batch and channels excluded."""
    channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
    dims = shape[2:] if channels_first else shape[1:-1]
    if any(dim is None for dim in dims):
        raise ValueError(
            f"cannot count MACs of layer {layer.name!r}: unknown spatial size in shape {shape}; "
            "build the model with a fixed input size"
        )
    return math.prod(dims)
