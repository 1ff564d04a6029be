"""Data-parallel training with tf.distribute: the strategy, the chief, BatchNorm, the input split.

``train.distribute`` picks the strategy:

- ``none``: TensorFlow's default strategy (one device; its scope changes nothing);
- ``mirrored``: ``MirroredStrategy`` over this machine's GPUs, or over its logical CPU devices
  when it has no GPU (one, unless the CPU was split with ``tf.config``);
- ``multi_worker``: ``MultiWorkerMirroredStrategy`` over the cluster in the ``TF_CONFIG``
  environment variable, every worker running the same command.

The configured batch size is the GLOBAL batch: each step splits it evenly over the replicas.
Gradients are summed over the replicas (Keras' optimizer does that) and the loss normalises with
counts taken over all replicas (``nets/losses``), so a step equals the single-device step on the
whole batch; with ``train.sync_bn`` BatchNorm also normalises with the whole batch's statistics.
"""

from __future__ import annotations

import functools
import os
import typing

import keras
import tensorflow as tf

from nets.layers import nested_layers
from utils.config import DistributeMode

DISTRIBUTE_MODES: tuple[str, ...] = typing.get_args(DistributeMode)  # train.distribute


@functools.cache
def make_strategy(mode: str) -> tf.distribute.Strategy:
    """The strategy for ``train.distribute``, one per process and mode.

    Call it before anything else touches TensorFlow: ``MultiWorkerMirroredStrategy`` has to
    configure the runtime's collective ops before the runtime starts. It is cached because a
    second strategy object numbers its collective ops from the start again, and the runtime
    mixes them up with the first one's (shape-mismatch aborts on a second run in one process).
    """
    if mode == "none":
        return tf.distribute.get_strategy()
    if mode == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if mode == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "train.distribute=multi_worker: the TF_CONFIG environment variable is not set "
                "(it lists the cluster's workers and this one's index; see README 'Scaling out')"
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"train.distribute: expected one of {DISTRIBUTE_MODES}, got {mode!r}")


def worker_suffix(strategy: tf.distribute.Strategy) -> str:
    """Run-folder suffix: '' for the chief (or a single process), '-worker<id>' for the others.

    Every worker writes the same files (checkpoint writing is symmetric, so no worker waits on a
    collective the others skip); their own folder name keeps them apart on a shared filesystem.
    """
    if strategy.extended.should_checkpoint:
        return ""
    resolver = strategy.cluster_resolver
    return f"-{resolver.task_type}{resolver.task_id}"


def split_batch(batch_size: int, replicas: int, key: str) -> int:
    """Images per replica of a global batch; the split must be even.

    Uneven per-replica batches would break the loss normalisation (its objectness term averages
    over each replica's images), and a batch smaller than the replica count leaves one empty.
    """
    if batch_size % replicas:
        raise ValueError(
            f"{key}={batch_size}: the batch is global and must split evenly over the "
            f"{replicas} replicas of train.distribute; use a multiple of {replicas}"
        )
    return batch_size // replicas


def synchronize_batchnorm(model: keras.Model, enabled: bool) -> None:
    """Make every BatchNormalization layer use the statistics of the global batch (or not).

    Keras reads the flag at call time and all-reduces the moments across replicas (the fused
    ``nets.layers.BatchNormalization`` then leaves its single-replica kernel for Keras' path,
    which is also what ``isinstance`` finds here: it subclasses Keras' layer). Without it
    each replica normalises with its own slice of the batch and keeps its own moving statistics
    (the checkpoint then holds the first replica's).
    """
    for layer in nested_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = enabled


def wait_for_all_workers(strategy: tf.distribute.Strategy) -> None:
    """Return once every worker of the cluster got here (at once without a cluster).

    Workers that leave one by one make TensorFlow's coordination service report the first to
    go as crashed, and a worker's exit can then hang; a last collective lets them end together.
    """
    strategy.reduce(tf.distribute.ReduceOp.MEAN, tf.constant(0.0), axis=None)


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Let multi-worker training split each global batch by elements.

    The pipeline reads its images from a table of paths, not from files tf.data could hand out
    per worker, so every worker runs it whole (same seed, same order) and keeps its share of
    each batch. Without a cluster the option has no effect.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)
