"""BatchNorm speed: Keras 3's layer against the project's fused one (nets.layers), side by side.

On TensorFlow Keras 3 normalises with separate moment and arithmetic ops; ``nets.layers.
BatchNormalization`` runs the fused kernel. Both are timed on the activations of BN layers of
the two reference models, at three strides each:

- demo: configs/demo_mobilenetv1_yolov4.yaml (the former demo), MobileNetV1 x0.25 at 320x320,
  batch 8 (its ``train.batch_size``);
- full: configs/base.yaml's MobileNetV1 x1.0 at 416x416, batch 8.

Per shape and dtype policy (float32, mixed_bfloat16): the inference forward (``training=False``)
and the training step's share (``training=True`` forward, moving-statistics update and the
gradients of a scalar loss with respect to the input, gamma and beta), as compiled
``tf.function``s timed round-robin (benchmarks/timing.py), median ms per call and the ratio
Keras / ours.

Example:
    python benchmarks/bench_bn.py
    python benchmarks/bench_bn.py --policies float32 --repeats 40
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

from benchmarks.timing import median_ms
from nets.layers import BatchNormalization

# (model, stride, BN input shape): the stride-2 stem, stride 8 (C3) and stride 32 (C5) outputs
# of MobileNetV1, whose channels are 32, 256 and 1024 times alpha, plus the full model's first
# stride-4 block (the brief's 8x104x104x128 case).
SHAPES: tuple[tuple[str, int, tuple[int, int, int, int]], ...] = (
    ("demo", 2, (8, 160, 160, 8)),
    ("demo", 8, (8, 40, 40, 64)),
    ("demo", 32, (8, 10, 10, 256)),
    ("full", 4, (8, 104, 104, 128)),
    ("full", 8, (8, 52, 52, 256)),
    ("full", 32, (8, 13, 13, 1024)),
)
POLICIES = ("float32", "mixed_bfloat16")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--policies",
        nargs="+",
        choices=POLICIES,
        default=list(POLICIES),
        help="Keras dtype policies to time (default: both)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=20,
        help="timed calls of each variant per shape (default: %(default)s)",
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="untimed calls first (default: %(default)s)"
    )
    return parser.parse_args(argv)


def _calls(
    layer: keras.layers.BatchNormalization, shape: tuple[int, ...], policy: str
) -> tuple[Callable[[], object], Callable[[], object]]:
    """(inference forward, training forward + backward) of ``layer`` on one random batch."""
    layer.build(shape)
    inputs = tf.cast(tf.random.normal(shape), keras.mixed_precision.Policy(policy).compute_dtype)
    # A fixed upstream gradient; the loss is a scalar so that no call copies a whole tensor out.
    upstream = tf.cast(tf.random.normal(shape), tf.float32)
    variables = [layer.gamma.value, layer.beta.value]

    @tf.function
    def forward() -> tf.Tensor:
        return tf.reduce_sum(tf.cast(layer(inputs, training=False), tf.float32))

    @tf.function
    def train_step() -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(tf.cast(layer(inputs, training=True), tf.float32) * upstream)
        dx, dgamma, dbeta = tape.gradient(loss, [inputs, *variables])
        return [tf.reduce_sum(tf.cast(dx, tf.float32)), dgamma, dbeta]

    return (lambda: forward().numpy()), (lambda: [t.numpy() for t in train_step()])


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    # Each layer gets its own tf.functions, on purpose; TF warns about "retracing" them.
    tf.get_logger().setLevel("ERROR")
    print(
        f"{os.cpu_count()} CPU cores, TF {tf.__version__}, Keras {keras.__version__}, "
        f"median ms of {args.repeats} round-robin calls; ratio = Keras / ours"
    )
    print(
        f"{'model':<5} {'stride':>6} {'shape':<18} {'policy':<15} | {'fwd keras':>9} "
        f"{'ours':>7} {'ratio':>6} | {'fwd+bwd keras':>13} {'ours':>7} {'ratio':>6}"
    )
    for policy in args.policies:
        for model, stride, shape in SHAPES:
            calls: dict[tuple[str, str], Callable[[], object]] = {}
            for name, cls in (
                ("keras", keras.layers.BatchNormalization),
                ("ours", BatchNormalization),
            ):
                forward, train_step = _calls(cls(dtype=policy), shape, policy)
                calls["fwd", name] = forward
                calls["train", name] = train_step
            ms = median_ms(calls, args.repeats, args.warmup)
            fwd_k, fwd_o = ms["fwd", "keras"], ms["fwd", "ours"]
            train_k, train_o = ms["train", "keras"], ms["train", "ours"]
            print(
                f"{model:<5} {stride:>6} {'x'.join(map(str, shape)):<18} {policy:<15} | "
                f"{fwd_k:9.2f} {fwd_o:7.2f} {fwd_k / fwd_o:5.2f}x | "
                f"{train_k:13.2f} {train_o:7.2f} {train_k / train_o:5.2f}x"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
