"""Custom Keras layers shared by backbones and necks.

GhostConv is a real ``keras.layers.Layer`` (not a functional block) so that one object is "the
ghost module": the necks, the GhostNet backbone and the FLOPs counter all see the same thing, and
its weights live under ``<layer name>/primary_conv/kernel`` etc. Layers that own sublayers
describe each sublayer call with ``sublayer_calls(input_shape)``; ``utils/flops.py`` reads that
to count them (Keras records no graph nodes for calls made inside ``Layer.call``). Set the BN
epsilon with ``bn_epsilon`` (not by editing ``primary_bn``/``cheap_bn`` afterwards) so that it
survives ``get_config``.

:class:`BatchNormalization` is the project's BN: Keras' layer (variables, config, momentum
semantics) computed with TensorFlow's fused kernel; every BN the project builds is one, and
:func:`with_fused_batchnorm` swaps it into networks built by ``keras.applications``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import keras
import tensorflow as tf

__all__ = ["BatchNormalization", "GhostConv", "nested_layers", "with_fused_batchnorm"]

Shape = tuple[int | None, ...]

# Input dtypes FusedBatchNormV3 takes (it computes in float32 whatever the input).
_FUSED_DTYPES = ("float16", "bfloat16", "float32")


@keras.saving.register_keras_serializable(package="yolo")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization computed with TensorFlow's fused kernel (``FusedBatchNormV3``).

    Keras 3 normalises with separate moments and arithmetic ops on TensorFlow, about 2.5x slower
    than the fused kernel forward + backward (``benchmarks/bench_bn.py``). This subclass keeps
    everything else Keras': the arguments and ``get_config``, the variables (``gamma``, ``beta``,
    ``moving_mean``, ``moving_variance``, so weight files of either class load into the other),
    ``momentum`` (``moving = moving * momentum + batch * (1 - momentum)``) and the biased batch
    variance in the moving variance, a frozen layer (``trainable=False``) normalising with the
    moving statistics even when training, and float32 statistics under mixed precision.

    The kernel handles 4-D channels-last inputs of float16/bfloat16/float32. Anything else runs
    Keras' own code: other ranks or axes, masks, renorm, float64, and ``synchronized=True``
    (the fused kernel sees one replica's batch; Keras all-reduces the moments across replicas).
    For inference the layer is ``x * gamma / sqrt(moving_variance + epsilon) + (beta -
    moving_mean * gamma / sqrt(moving_variance + epsilon))``, which folds into the conv before.
    """

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        gamma = self.gamma if self.scale else tf.ones([channels], "float32")
        beta = self.beta if self.center else tf.zeros([channels], "float32")
        if training and self.trainable:
            empty = tf.zeros([0], "float32")
            outputs, mean, variance = self._fused(inputs, gamma, beta, empty, empty, True)
            # The kernel's variance is Bessel-corrected (n / (n - 1), n >= 2); Keras keeps the
            # biased one, also in the moving variance.
            count = tf.cast(tf.size(inputs, out_type=tf.int64) // channels, variance.dtype)
            variance = variance * (tf.maximum(count - 1.0, 1.0) / count)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum)
            )
        else:
            outputs = self._fused(
                inputs, gamma, beta, self.moving_mean, self.moving_variance, False
            )[0]
        return keras.ops.cast(outputs, self.compute_dtype)

    def _fused(
        self, inputs: Any, gamma: Any, beta: Any, mean: Any, variance: Any, training: bool
    ) -> tuple[Any, Any, Any]:
        """(outputs, batch mean, Bessel-corrected batch variance) of the fused kernel."""
        # The raw op, not tf.compat.v1.nn.fused_batch_norm: that wrapper raises epsilon to
        # 1.001e-5 (an old cuDNN limit), and the PyTorch ports need exactly 1e-5.
        outputs, batch_mean, batch_variance = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=gamma,
            offset=beta,
            mean=mean,
            variance=variance,
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=training,
        )[:3]
        return outputs, batch_mean, batch_variance

    def _fusable(self, inputs: Any, mask: Any) -> bool:
        return (
            mask is None
            and not self.synchronized
            and not self.renorm
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) in _FUSED_DTYPES
        )


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
        batch_norm: False for the inference form that ``nets.fold`` builds: each conv carries
            a bias in place of its BatchNorm.
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
        batch_norm: bool = True,
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
        self.batch_norm = batch_norm
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
            use_bias=not batch_norm,
            name="primary_conv",
            **common,
        )
        self.primary_bn = BatchNormalization(name="primary_bn", **bn) if batch_norm else None
        self.cheap_conv = keras.layers.DepthwiseConv2D(
            dw_size,
            depth_multiplier=ratio - 1,
            padding="same",
            use_bias=not batch_norm,
            name="cheap_conv",
            **common,
        )
        self.cheap_bn = BatchNormalization(name="cheap_bn", **bn) if batch_norm else None

    def sublayer_calls(self, input_shape: Shape) -> list[tuple[keras.layers.Layer, Shape, Shape]]:
        """(sublayer, input shape, output shape) of every sublayer call, in call order."""
        input_shape = tuple(input_shape)
        primary = tuple(self.primary_conv.compute_output_shape(input_shape))
        cheap = tuple(self.cheap_conv.compute_output_shape(primary))
        calls = [
            (self.primary_conv, input_shape, primary),
            (self.primary_bn, primary, primary),
            (self.cheap_conv, primary, cheap),
            (self.cheap_bn, cheap, cheap),
        ]
        return [call for call in calls if call[0] is not None]

    def build(self, input_shape: Shape) -> None:
        # Built here, inside this layer's name scope, so weight paths read "<name>/primary_conv/..".
        for layer, layer_input_shape, _ in self.sublayer_calls(input_shape):
            layer.build(layer_input_shape)

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        primary = self._activate(self._normalize(self.primary_bn, self.primary_conv(inputs),
                                                 training))
        cheap = self._activate(self._normalize(self.cheap_bn, self.cheap_conv(primary), training))
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
            batch_norm=self.batch_norm,
        )
        return config

    @staticmethod
    def _normalize(bn: BatchNormalization | None, x: Any, training: bool | None) -> Any:
        return bn(x, training=training) if bn is not None else x

    def _activate(self, x: Any) -> Any:
        return self._activation_fn(x) if self._activation_fn is not None else x


def nested_layers(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Every layer inside ``layer``, recursively: nested models and GhostConv's sublayers too.

    Keras has no public recursive accessor; ``_flatten_layers`` is what Keras itself uses to
    track weights, and unlike ``Model.layers`` it also sees sublayers of plain Layer subclasses.
    """
    yield from layer._flatten_layers(include_self=False, recursive=True)


def with_fused_batchnorm(model: keras.Model) -> keras.Model:
    """A copy of the functional ``model`` with every Keras BatchNormalization layer made ours.

    For networks whose code builds Keras' layer (``keras.applications``). Every layer is rebuilt
    from its config (``keras.models.clone_model``), keeping its name, and gets the original's
    weights, so the copy computes what ``model`` computes and loads the same weight files.
    """

    def rebuild(layer: keras.layers.Layer) -> keras.layers.Layer:
        fused = type(layer) is keras.layers.BatchNormalization
        return (BatchNormalization if fused else type(layer)).from_config(layer.get_config())

    # New inputs named after the input layers: clone_model would name them after the tensors,
    # which differ from the layers' names when Keras chose them ("input_layer" vs "keras_tensor").
    names = {
        id(layer.output): layer.name
        for layer in model.layers
        if isinstance(layer, keras.layers.InputLayer)
    }
    inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=names[id(t)]), model.input
    )
    copy = keras.models.clone_model(model, input_tensors=inputs, clone_function=rebuild)
    for layer in model.layers:
        copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy
