"""Timing shared by the benchmarks: the bare compiled forward pass and round-robin medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable
from typing import TypeVar

import keras
import numpy as np
import tensorflow as tf

Key = TypeVar("Key", bound=Hashable)


def forward_call(model: keras.Model, batch: int) -> Callable[[], None]:
    """A callable running ``model``'s compiled inference forward on one fixed random batch.

    The outputs are copied back to numpy, as any caller of the model has to, so a call costs
    what a user of the raw heads pays.
    """
    forward = tf.function(lambda x: model(x, training=False))
    inputs = tf.random.uniform([batch, *model.input_shape[1:]])

    def call() -> None:
        for output in forward(inputs):
            np.asarray(output)

    return call


def median_ms(
    calls: dict[Key, Callable[[], object]], repeats: int, warmup: int
) -> dict[Key, float]:
    """Median milliseconds per call of each callable after ``warmup`` untimed rounds.

    The callables are timed round-robin (one call of each per round) so that a machine that gets
    busier halfway slows them alike and their ratios stay fair.
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    times: dict[Key, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(seconds) * 1000.0 for name, seconds in times.items()}
