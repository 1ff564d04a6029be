"""Exponential moving average of a model's weights (YOLOv5-style ramped decay).

Keras' built-in optimizer EMA uses a constant momentum and only covers trainable variables; a
short run from scratch needs the decay to ramp up (``decay * (1 - exp(-updates / tau))``) and the
BatchNorm statistics must be averaged too, or the averaged model evaluates with mismatched stats.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import numpy as np
import tensorflow as tf


class ModelEMA:
    """Shadow copies of every float weight of ``model``; ``update()`` runs inside the train step."""

    def __init__(self, model: keras.Model, *, decay: float, tau: float) -> None:
        self.model = model
        self.decay = float(decay)
        self.tau = float(tau)
        self._weights = [w for w in model.weights if "float" in str(w.dtype)]
        self.shadow = [
            tf.Variable(np.asarray(w.numpy()), trainable=False, name=f"ema_{i}")
            for i, w in enumerate(self._weights)
        ]
        self.updates = tf.Variable(0.0, trainable=False, dtype=tf.float32, name="ema_updates")

    def update(self) -> None:
        """Blend the current weights into the shadow weights (graph-safe)."""
        self.updates.assign_add(1.0)
        decay = self.decay * (1.0 - tf.exp(-self.updates / self.tau))
        for shadow, weight in zip(self.shadow, self._weights, strict=True):
            shadow.assign(decay * shadow + (1.0 - decay) * tf.convert_to_tensor(weight))

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Run the block with the averaged weights in the model, then put the live ones back."""
        live = [w.numpy() for w in self._weights]
        for weight, shadow in zip(self._weights, self.shadow, strict=True):
            weight.assign(shadow.numpy())
        try:
            yield
        finally:
            for weight, value in zip(self._weights, live, strict=True):
                weight.assign(value)

    def state(self) -> list[np.ndarray]:
        return [s.numpy() for s in self.shadow] + [np.asarray(self.updates.numpy())]

    def load_state(self, values: list[np.ndarray]) -> None:
        if len(values) != len(self.shadow) + 1:
            raise ValueError(f"EMA state has {len(values)} arrays, expected {len(self.shadow) + 1}")
        for shadow, value in zip(self.shadow, values[:-1], strict=True):
            shadow.assign(value)
        self.updates.assign(float(values[-1]))
