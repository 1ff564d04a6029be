"""BatchNorm folding: the inference form of a model, each BatchNorm merged into the conv before it.

At inference a BatchNorm is a per-channel affine map, ``y = x * s + (beta - mean * s)`` with
``s = gamma / sqrt(moving_variance + epsilon)``. After a linear conv it merges into the conv:
``kernel * s`` per output channel and ``bias = beta + (b - mean) * s``, so the folded model runs
no BatchNorm op and one conv fewer memory pass per block.

A BatchNorm is folded when it directly follows a ``Conv2D`` or ``DepthwiseConv2D`` without an
activation, is that conv's only consumer, and both are called once; GhostConv folds its two
inner BatchNorms itself (``GhostConv(batch_norm=False)``). Nested functional models (the
``keras.applications`` backbones) are folded inside. Any other BatchNorm stays and is logged.
"""

from __future__ import annotations

import logging
from collections import Counter

import keras
import numpy as np

from nets.layers import GhostConv, nested_layers

__all__ = ["BatchNormFolding", "fold_batch_norms", "folded_kernel"]

logger = logging.getLogger(__name__)

Layer = keras.layers.Layer
BatchNorm = keras.layers.BatchNormalization
# Exact types: subclasses such as SeparableConv2D keep their kernels in another layout.
FOLDABLE_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def folded_kernel(conv: Layer, bn: BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """``(kernel, bias)`` of ``conv`` followed by ``bn`` in inference mode, as one conv.

    A depthwise kernel ``[kh, kw, in, multiplier]`` makes output channel ``i * multiplier + m``
    from input channel ``i``, so the BN's per-channel scale is laid out as ``[in, multiplier]``.
    Computed in float64 and returned in the conv's variable dtype.
    """
    kernel = np.asarray(keras.ops.convert_to_numpy(conv.kernel), np.float64)
    channels = int(bn.moving_mean.shape[0])
    gamma = _numpy(bn.gamma) if bn.scale else np.ones(channels)
    beta = _numpy(bn.beta) if bn.center else np.zeros(channels)
    scale = gamma / np.sqrt(_numpy(bn.moving_variance) + bn.epsilon)
    bias = _numpy(conv.bias) if conv.use_bias else np.zeros(channels)
    dtype = conv.kernel.dtype
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    shift = beta + (bias - _numpy(bn.moving_mean)) * scale
    return kernel.astype(dtype), shift.astype(dtype)


class BatchNormFolding:
    """A folded inference copy (``.model``) of a functional ``source`` model.

    The copy has its own variables; :meth:`refresh` recomputes them from the source's current
    weights, so one copy (and one traced graph around it) can follow a model during training,
    EMA weights included.

    Args:
        source: a functional Keras model; nested functional models and GhostConv layers are
            folded too.
    """

    def __init__(self, source: keras.Model) -> None:
        self.source = source
        # id of a foldable conv -> the BatchNorm after it (over every nested graph)
        self._bn_after: dict[int, BatchNorm] = {}
        for graph in (source, *nested_layers(source)):
            if isinstance(graph, keras.Model):
                self._bn_after.update(_foldable_pairs(graph))
        folded_bns = {id(bn) for bn in self._bn_after.values()}
        self._pairs: list[tuple[Layer, Layer]] = []

        def clone(layer: Layer) -> Layer:
            config = layer.get_config()
            if id(layer) in self._bn_after:
                config["use_bias"] = True
            elif isinstance(layer, GhostConv):
                config["batch_norm"] = False
            copy = layer if id(layer) in folded_bns else type(layer).from_config(config)
            if copy is not layer and isinstance(layer, Layer) and layer.weights:
                self._pairs.append((layer, copy))
            return copy

        def call(layer: Layer, *args, **kwargs):
            # A folded BatchNorm is left out of the graph: its input goes straight on.
            return args[0] if id(layer) in folded_bns else layer(*args, **kwargs)

        self.model = keras.models.clone_model(
            source, clone_function=clone, call_function=call, recursive=True
        )
        self.unfolded = [
            layer.name for layer in nested_layers(self.model) if isinstance(layer, BatchNorm)
        ]
        ghost_bns = sum(2 for layer in nested_layers(source) if _has_bn(layer))
        logger.info(
            "folded %d BatchNorms into the conv before them; %d left%s",
            len(folded_bns) + ghost_bns,
            len(self.unfolded),
            f" ({', '.join(self.unfolded)})" if self.unfolded else "",
        )
        self.refresh()

    def refresh(self) -> None:
        """Recompute the copy's weights from the source model's current ones."""
        for layer, copy in self._pairs:
            bn = self._bn_after.get(id(layer))
            if bn is not None:
                copy.set_weights(folded_kernel(layer, bn))
            elif _has_bn(layer):
                copy.primary_conv.set_weights(folded_kernel(layer.primary_conv, layer.primary_bn))
                copy.cheap_conv.set_weights(folded_kernel(layer.cheap_conv, layer.cheap_bn))
            else:
                copy.set_weights(layer.get_weights())
                if hasattr(copy, "finalize_state"):  # as Keras' loaders do: Normalization
                    copy.finalize_state()  # computes with copies of its variables made here


def fold_batch_norms(model: keras.Model) -> keras.Model:
    """An inference copy of the functional ``model`` with each BatchNorm that follows a conv
    folded into it (see :class:`BatchNormFolding`); it holds a copy of the current weights."""
    return BatchNormFolding(model).model


def _foldable_pairs(graph: keras.Model) -> dict[int, BatchNorm]:
    """``{id(conv): bn}`` for each BatchNorm of ``graph``'s own nodes that can fold into the conv
    whose output is its input."""
    nodes = [
        node
        for depth_nodes in graph._nodes_by_depth.values()  # Keras' own graph walk uses it too
        for node in depth_nodes
        if node.operation is not None and not node.is_input
    ]
    calls = Counter(id(node.operation) for node in nodes)
    consumers = Counter(id(t) for node in nodes for t in node.input_tensors)
    producer = {id(t): node.operation for node in nodes for t in node.outputs}
    graph_outputs = {id(t) for t in graph.outputs}
    pairs: dict[int, BatchNorm] = {}
    for node in nodes:
        bn = node.operation
        if not isinstance(bn, BatchNorm) or len(node.input_tensors) != 1:
            continue
        x = node.input_tensors[0]
        conv = producer.get(id(x))
        if (
            type(conv) in FOLDABLE_CONVS
            and conv.activation is keras.activations.linear
            and conv.data_format == "channels_last"
            and bn.axis in (-1, len(x.shape) - 1)
            and consumers[id(x)] == 1
            and id(x) not in graph_outputs
            and calls[id(conv)] == calls[id(bn)] == 1
        ):
            pairs[id(conv)] = bn
    return pairs


def _has_bn(layer: Layer) -> bool:
    return isinstance(layer, GhostConv) and layer.batch_norm


def _numpy(variable: keras.Variable) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable), np.float64)
