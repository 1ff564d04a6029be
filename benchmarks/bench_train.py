"""Training throughput: the bare model compute against the real training step, side by side.

(a) bare:  forward + backward + optimizer update of the model with a trivial loss on one fixed
           in-memory batch (the least any training step can cost);
(l) loss:  the compiled step ``YoloTrainer.fit`` runs, on one cached batch: YOLO loss with
           in-graph target assignment and the EMA update, but no input pipeline;
(b) real:  the same step fed by the tf.data pipeline with mosaic + mixup over the demo images
           (decoded once and kept in RAM, as configs/demo.yaml sets data.cache_images).

The three share one model and are timed round-robin, one step of each per round, reporting the
median step (``benchmarks/timing.py``), so a machine that gets busier slows them alike.

The ratio b/a says what the loss and the input pipeline cost on top of the compute (1.0 = free);
l/a isolates the loss's share, so the gap between l/a and b/a is the pipeline's.

``--multi-scale 0 0.25`` times each case once per ``augment.multi_scale``: with m > 0 the model
takes any input size (as the trainer builds it), (a) shows what that costs at the fixed size,
(b) is fed batches of every size the setting draws (its median is a typical multi-scale step),
and (l) repeats the pipeline's first batch, at whatever size that one drew.

``--bn keras fused`` times the same steps once more with Keras' own (unfused) BatchNorm
computation traced into a second copy of the model, round-robin with ours in the same rounds, and
prints the speed-up of the fused layer (nets/layers.py) per step kind.
Reads the demo dataset (VOCdevkit/VOCdemo, generated if missing).

Example:
    python benchmarks/bench_train.py                       # both default cases, float32
    python benchmarks/bench_train.py --precision float32 mixed_bfloat16
    python benchmarks/bench_train.py --cases mbv1-a1.00-416-b8 --bn keras fused
    python benchmarks/bench_train.py --cases mbv1-a0.25-320-b16 --heads anchor_based anchor_free
    python benchmarks/bench_train.py --cases mbv1-a0.25-320-b16 --multi-scale 0 0.25 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import os
import typing
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import tensorflow as tf

from benchmarks.timing import median_ms
from nets import HEADS
from nets.layers import BatchNormalization
from nets.losses import build_loss
from nets.yolo import build_model
from utils.config import Config, Precision, class_names, load_config
from utils.data.formats import load_config_split
from utils.data.pipeline import build_dataset
from utils.engine.ema import ModelEMA
from utils.engine.precision import resolve_precision
from utils.engine.trainer import YoloTrainer, build_optimizer

CASES = {  # name: (alpha, input size, batch)
    "mbv1-a1.00-416-b8": (1.0, 416, 8),
    "mbv1-a0.25-320-b16": (0.25, 320, 16),
}


def _config(
    alpha: float,
    size: int,
    batch: int,
    precision: str,
    head: str = "anchor_based",
    multi_scale: float = 0.0,
) -> Config:
    return load_config(
        Path("configs/demo_mobilenetv1_yolov4.yaml"),  # MobileNetV1 + PANet, the cases' model
        [
            f"model.head={head}",
            f"model.backbone_options.alpha={alpha}",
            f"model.neck_options.alpha={alpha}",
            f"model.input_size=[{size},{size}]",
            f"train.batch_size={batch}",
            f"train.precision={precision}",
            "augment.mosaic=1.0",
            "augment.mixup=1.0",
            f"augment.multi_scale={multi_scale}",
            "model.pretrained=null",  # speed does not depend on the weights: never download
        ],
    )


BN_KINDS = ("fused", "keras")
STEP_KINDS = ("bare", "loss", "real")


@contextlib.contextmanager
def batchnorm_computation(kind: str):
    """While open, the project's BatchNorm layers compute as ``kind`` says when traced.

    ``keras`` runs Keras' unfused ``call`` (what the project ran before its fused layer): same
    model, same variables, only the traced BatchNorm ops differ.
    """
    if kind == "fused":
        yield
        return
    fused_call = BatchNormalization.call
    BatchNormalization.call = keras.layers.BatchNormalization.call
    try:
        yield
    finally:
        BatchNormalization.call = fused_call


def step_calls(
    cfg: Config, samples, num_classes: int, bn: str = "fused"
) -> dict[str, Callable[[], object]]:
    """One training step of each kind, as a callable that waits for its result.

    All three train the same model, so they differ only in what surrounds its compute. Each is
    run (and so traced) once here, under ``batchnorm_computation(bn)``.
    """
    model = build_model(cfg.model, num_classes, any_size=cfg.augment.multi_scale > 0)
    batch, (height, width) = cfg.train.batch_size, cfg.model.input_size

    bare_optimizer = build_optimizer(cfg, model.trainable_variables)
    images = tf.random.uniform((batch, height, width, 3))

    @tf.function
    def bare_step():
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            loss = tf.add_n([tf.reduce_mean(tf.square(tf.cast(o, tf.float32))) for o in outputs])
            scaled = bare_optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        bare_optimizer.apply(grads, model.trainable_variables)
        return loss

    ema = ModelEMA(model, decay=cfg.train.ema_decay, tau=cfg.train.ema_tau)
    loss_fn = build_loss(cfg, num_classes)
    trainer = YoloTrainer(model, loss_fn, ema)
    trainer.compile(optimizer=build_optimizer(cfg, model.trainable_variables))
    trainer.make_train_function()
    fit_step = trainer.train_function  # the compiled step fit() runs on its iterator
    dataset = build_dataset(
        samples,
        input_size=tuple(cfg.model.input_size),
        batch_size=batch,
        training=True,
        augment=cfg.augment,
        max_boxes=cfg.data.max_boxes,
        shuffle_seed=0,
        cache_images=cfg.data.cache_images,
    )
    cached = iter(dataset.take(1).cache().repeat())
    pipeline = iter(dataset.repeat())
    calls = {
        "bare": lambda: bare_step().numpy(),
        "loss": lambda: fit_step(cached)["loss"].numpy(),
        "real": lambda: fit_step(pipeline)["loss"].numpy(),
    }
    with batchnorm_computation(bn):
        for call in calls.values():
            call()
    return calls


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument(
        "--precision",
        nargs="+",
        default=["float32"],
        choices=typing.get_args(Precision),
    )
    parser.add_argument(
        "--bn",
        nargs="+",
        default=["fused"],
        choices=BN_KINDS,
        help="BatchNorm computations to time side by side (default: %(default)s)",
    )
    parser.add_argument(
        "--heads",
        nargs="+",
        default=["anchor_based"],
        choices=HEADS.names(),
        help="head families to time, each with its own loss (default: %(default)s)",
    )
    parser.add_argument(
        "--multi-scale",
        nargs="+",
        type=float,
        default=[0.0],
        help="augment.multi_scale values to time, each a row (default: %(default)s)",
    )
    parser.add_argument(
        "--steps", type=int, default=15, help="timed rounds of one step each (default: %(default)s)"
    )
    parser.add_argument(
        "--warmup", type=int, default=4, help="untimed rounds (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    data_cfg = _config(*CASES[args.cases[0]], "float32")
    samples = load_config_split(data_cfg, data_cfg.data.train_split, key="data.train_split")
    num_classes = len(class_names(data_cfg))
    rows = []
    for setting in args.precision:
        precision = resolve_precision(setting)
        keras.mixed_precision.set_global_policy(precision)
        label = precision if setting == precision else f"{setting}={precision}"
        for name, head, multi_scale in itertools.product(
            args.cases, args.heads, args.multi_scale
        ):
            cfg = _config(*CASES[name], precision, head, multi_scale)
            calls = {
                (bn, kind): call
                for bn in args.bn
                for kind, call in step_calls(cfg, samples, num_classes, bn).items()
            }
            ms = median_ms(calls, repeats=args.steps, warmup=args.warmup)
            shown = "" if args.heads == ["anchor_based"] else f" {head}"
            shown += "" if args.multi_scale == [0.0] else f" ms={multi_scale:g}"
            for bn in args.bn:
                bare, loss, real = (cfg.train.batch_size * 1000.0 / ms[bn, k] for k in STEP_KINDS)
                rows.append((name, f"{label} {bn}-bn{shown}", bare, loss, real))
                print(f"  {rows[-1][1]}: bare {bare:.1f}, loss {loss:.1f}, real {real:.1f} img/s")
            if len(args.bn) == 2:
                speedups = ", ".join(
                    f"{k} {ms['keras', k] / ms['fused', k]:.2f}x" for k in STEP_KINDS
                )
                print(f"  {name} {label}: fused BN vs Keras BN: {speedups}", flush=True)
    print()
    print(
        f"{'case':<22}{'precision, BN':<32}{'(a) bare':>10}{'(l) loss':>10}{'(b) real':>10}"
        f"{'l/a':>7}{'b/a':>7}   (images/s)"
    )
    for name, precision, bare, loss, real in rows:
        print(
            f"{name:<22}{precision:<32}{bare:>10.1f}{loss:>10.1f}{real:>10.1f}"
            f"{loss / bare:>7.2f}{real / bare:>7.2f}"
        )


if __name__ == "__main__":
    main()
