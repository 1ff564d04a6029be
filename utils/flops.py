"""Analytic multiply-accumulate (MAC) counts for Keras models.

Counted layers: convolutions (Conv1D/2D/3D incl. grouped), DepthwiseConv, SeparableConv,
ConvTranspose and Dense. Every other layer (BN, activations, pooling, resize, concat) is treated
as free, the usual convention for reporting detector GFLOPs. Nested models are walked; a layer or
model called several times counts once per call. FLOPs are reported as 2 x MACs.
"""

from __future__ import annotations

import math

import keras

__all__ = ["count_flops", "count_macs", "macs_by_layer"]

_Shape = tuple[int | None, ...]


def count_macs(model: keras.Model) -> int:
    """Total multiply-accumulates of one forward pass for a batch of one."""
    return sum(macs_by_layer(model).values())


def count_flops(model: keras.Model) -> int:
    """Floating-point operations of one forward pass for a batch of one (2 x MACs)."""
    return 2 * count_macs(model)


def macs_by_layer(model: keras.Model) -> dict[str, int]:
    """MACs per counted layer, keyed by its path (``"backbone/conv1"``), in layer order.

    Raises:
        ValueError: a counted layer has an unknown (None) spatial size; build the model with a
            fixed input size.
    """
    result: dict[str, int] = {}
    _walk(model, prefix="", calls=1, result=result)
    return result


def _walk(model: keras.Model, prefix: str, calls: int, result: dict[str, int]) -> None:
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        # Keras has no public accessor for every call of a layer; each inbound node is one call.
        nodes = layer._inbound_nodes
        if isinstance(layer, keras.Model):
            _walk(layer, f"{path}/", calls * max(1, len(nodes)), result)
            continue
        macs = sum(
            _layer_macs(layer, node.input_tensors[0].shape, node.output_tensors[0].shape)
            for node in nodes
            if node.input_tensors  # an InputLayer's node has none
        )
        if macs:
            result[path] = result.get(path, 0) + calls * macs


def _layer_macs(layer: keras.layers.Layer, input_shape: _Shape, output_shape: _Shape) -> int:
    """MACs of one call: positions the kernel is applied at x weights used per position."""
    layers = keras.layers
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
