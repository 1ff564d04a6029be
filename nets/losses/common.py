"""What every head's loss shares: its settings from ``cfg.loss`` and the normaliser it divides
by, made the same on one device and under tf.distribute."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import tensorflow as tf

from utils.config import LossConfig


def loss_settings(loss_class: type, loss: LossConfig) -> dict[str, Any]:
    """The ``cfg.loss`` keys that ``loss_class``'s constructor takes (``cfg.loss`` holds the
    settings of every head family; each loss reads its own)."""
    parameters = inspect.signature(loss_class).parameters
    return {key: value for key, value in dataclasses.asdict(loss).items() if key in parameters}


def mean_over_replicas(count: tf.Tensor) -> tf.Tensor:
    """``count`` (a replica's positive count or target sum) as the loss's divisor: at least 1
    per batch, and under a tf.distribute strategy with N replicas the mean over the replicas.

    With the mean, the mean of the replicas' losses (what their summed per-image gradients
    amount to) equals the loss of the whole global batch on one device; each replica's own count
    would weight its positives differently from the single-device step.
    """
    context = tf.distribute.get_replica_context()  # None in a cross-replica context
    replicas = context.num_replicas_in_sync if context is not None else 1
    if replicas > 1:
        count = context.all_reduce(tf.distribute.ReduceOp.MEAN, count)
    return tf.maximum(count, 1.0 / replicas)
