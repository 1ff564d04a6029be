"""Custom Keras layers shared by backbones and necks.

GhostConv is a real ``keras.layers.Layer`` (not a functional block) so that one object is "the
ghost module": the necks, the GhostNet backbone and the FLOPs counter all see the same thing, and
its weights live under ``<layer name>/primary_conv/kernel`` etc. Layers that own sublayers
describe each sublayer call with ``sublayer_calls(input_shape)``; ``utils/flops.py`` reads that
to count them (Keras records no graph nodes for calls made inside ``Layer.call``). Set the BN
epsilon with ``bn_epsilon`` (not by editing ``primary_bn``/``cheap_bn`` afterwards) so that it
survives ``get_config``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import keras

__all__ = ["GhostConv", "nested_layers"]

Shape = tuple[int | None, ...]


@keras.saving.register_keras_serializable(package="yolo")
class GhostConv(keras.layers.Layer):
    """Ghost module (Han et al., GhostNet, CVPR 2020): a conv made mostly of cheap depthwise maps.

    A primary Conv2D (no bias) + BN + activation makes ``ceil(filters / ratio)`` intrinsic maps; a
    depthwise conv (``depth_multiplier = ratio - 1``, no bias) + BN + activation makes the
    "ghost" maps from them; the two are concatenated on channels and cut to ``filters``. This is
    the reference implementation's order, so ``ratio=2`` roughly halves a conv's params and MACs.

    Args:
        filters: output channels.
        kernel_size: kernel of the primary conv.
        ratio: output channels per primary channel (>= 2).
        dw_size: kernel of the cheap depthwise conv.
        strides: strides of the primary conv (the cheap conv always has stride 1).
        activation: a Keras activation name applied after both BNs, or None for none (GhostNet's
            second ghost module in a bottleneck is linear).
        bn_epsilon: epsilon of both BatchNorms (Keras' 1e-3; ports of PyTorch weights need 1e-5).
        **kwargs: base ``Layer`` arguments (``name``, ``dtype``, ...).
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int = 1,
        ratio: int = 2,
        dw_size: int = 3,
        strides: int = 1,
        activation: str | None = "relu",
        bn_epsilon: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if filters < 1 or ratio < 2:
            raise ValueError(
                f"GhostConv needs filters >= 1 and ratio >= 2; received filters={filters}, "
                f"ratio={ratio}"
            )
        self.filters = filters
        self.kernel_size = kernel_size
        self.ratio = ratio
        self.dw_size = dw_size
        self.strides = strides
        self.activation = activation
        self.bn_epsilon = bn_epsilon
        # Resolve now so an unknown activation name fails at construction, not at first call.
        self._activation_fn = keras.activations.get(activation) if activation else None

        # Sublayers share the outer dtype policy so mixed precision applies inside too.
        common = {"dtype": self.dtype_policy}
        bn = {"epsilon": bn_epsilon, **common}
        self.primary_conv = keras.layers.Conv2D(
            math.ceil(filters / ratio),
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            name="primary_conv",
            **common,
        )
        self.primary_bn = keras.layers.BatchNormalization(name="primary_bn", **bn)
        self.cheap_conv = keras.layers.DepthwiseConv2D(
            dw_size,
            depth_multiplier=ratio - 1,
            padding="same",
            use_bias=False,
            name="cheap_conv",
            **common,
        )
        self.cheap_bn = keras.layers.BatchNormalization(name="cheap_bn", **bn)

    def sublayer_calls(self, input_shape: Shape) -> list[tuple[keras.layers.Layer, Shape, Shape]]:
        """(sublayer, input shape, output shape) of every sublayer call, in call order."""
        input_shape = tuple(input_shape)
        primary = tuple(self.primary_conv.compute_output_shape(input_shape))
        cheap = tuple(self.cheap_conv.compute_output_shape(primary))
        return [
            (self.primary_conv, input_shape, primary),
            (self.primary_bn, primary, primary),
            (self.cheap_conv, primary, cheap),
            (self.cheap_bn, cheap, cheap),
        ]

    def build(self, input_shape: Shape) -> None:
        # Built here, inside this layer's name scope, so weight paths read "<name>/primary_conv/..".
        for layer, layer_input_shape, _ in self.sublayer_calls(input_shape):
            layer.build(layer_input_shape)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        primary = self._activate(self.primary_bn(self.primary_conv(inputs), training=training))
        cheap = self._activate(self.cheap_bn(self.cheap_conv(primary), training=training))
        out = keras.ops.concatenate([primary, cheap], axis=-1)
        # ceil() may leave one primary channel too many (odd filters); the reference cuts it off.
        if out.shape[-1] != self.filters:
            out = out[..., : self.filters]
        return out

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        primary = self.primary_conv.compute_output_shape(tuple(input_shape))
        return (*primary[:-1], self.filters)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            ratio=self.ratio,
            dw_size=self.dw_size,
            strides=self.strides,
            activation=self.activation,
            bn_epsilon=self.bn_epsilon,
        )
        return config

    def _activate(self, x: Any) -> Any:
        return self._activation_fn(x) if self._activation_fn is not None else x


def nested_layers(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Every layer inside ``layer``, recursively: nested models and GhostConv's sublayers too.

    Keras has no public recursive accessor; ``_flatten_layers`` is what Keras itself uses to
    track weights, and unlike ``Model.layers`` it also sees sublayers of plain Layer subclasses.
    """
    yield from layer._flatten_layers(include_self=False, recursive=True)
