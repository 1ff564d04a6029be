"""Training: the train-step model, optimizer, phases (frozen backbone, then all), resume.

``train.py`` only parses arguments and calls :func:`train`; everything a run does is here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from nets.loss import YoloLoss
from nets.yolo import build_model, set_backbone_trainable
from utils.config import Config, class_names, save_config
from utils.config import anchors as config_anchors
from utils.data.augment import AugmentOptions, SpecialAugSwitch
from utils.data.demo import ensure_demo_dataset
from utils.data.formats import load_dataset
from utils.data.index import Sample
from utils.data.pipeline import build_dataset
from utils.deploy.detector import DecodeSpec, detect_dataset, make_batch_detector
from utils.engine.callbacks import EvaluateMap, LrScheduler, NanGuard, PlotCurves, RunCheckpointer
from utils.engine.checkpoint import RESUME_FILE, assign_all, load_resume_state
from utils.engine.distribute import (
    make_strategy,
    shard_by_data,
    split_batch,
    synchronize_batchnorm,
    wait_for_all_workers,
    worker_suffix,
)
from utils.engine.ema import ModelEMA
from utils.engine.lr_schedule import build_schedule
from utils.eval.metrics import ImageTruth, evaluate_voc, mean_ap

logger = logging.getLogger(__name__)

CONV_KERNELS = ("kernel", "depthwise_kernel")


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or Inf."""


class YoloTrainer(keras.Model):
    """Wraps the detector for ``fit``: YOLO loss, EMA update, loss parts as metrics."""

    def __init__(self, yolo: keras.Model, loss_fn: YoloLoss, ema: ModelEMA | None, **kwargs):
        super().__init__(**kwargs)
        self.yolo = yolo
        self.loss_fn = loss_fn
        self.ema = ema
        self.trackers = {
            name: keras.metrics.Mean(name=name) for name in ("loss", "box", "obj", "cls")
        }

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, inputs, training=False):
        return self.yolo(inputs, training=training)

    def compile(self, optimizer: keras.optimizers.Optimizer, **kwargs) -> None:
        super().compile(optimizer=optimizer, **kwargs)
        # Build the optimizer now, under the caller's strategy scope: its slots then exist before
        # a resume assigns them, and fit() finds nothing left to build (see below).
        self.optimizer.build(self.yolo.trainable_variables)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Skip Keras' pre-fit build: the model is built and ``compile`` built the optimizer.

        Under a strategy Keras first reduces one input batch across replicas to learn its shapes,
        and MultiWorkerMirroredStrategy rejects that reduce for an (images, boxes) pair
        (keras-team/keras#20585), so fit() could not start on a multi-worker cluster.
        """

    def _track(self, total, parts) -> dict[str, tf.Tensor]:
        self.trackers["loss"].update_state(total)
        for name, value in parts.items():
            self.trackers[name].update_state(value)
        logs = {name: tracker.result() for name, tracker in self.trackers.items()}
        if isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            # Keras averages a multi-worker step's outputs over axis 0, which a scalar lacks
            # (keras-team/keras#20585); a length-1 axis comes back as the scalar mean.
            logs = {name: value[None] for name, value in logs.items()}
        return logs

    def train_step(self, data):
        images, boxes = data
        variables = self.yolo.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self.yolo(images, training=True)
            total, parts = self.loss_fn(boxes, outputs)
            # Step on the per-image SUM (YOLOv5's convention): with the LR scaled by
            # batch / nominal batch, SGD then behaves like the reference recipes at any batch size.
            # Under a strategy each replica sums over its share of the batch and the optimizer
            # adds the replicas' gradients: the same sum (the loss normalises across replicas).
            per_image_sum = total * tf.cast(tf.shape(images)[0], total.dtype)
            scaled = self.optimizer.scale_loss(per_image_sum)
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply(grads, variables)
        if self.ema is not None:
            self.ema.update()
        return self._track(total, parts)

    def test_step(self, data):
        images, boxes = data
        total, parts = self.loss_fn(boxes, self.yolo(images, training=False))
        return self._track(total, parts)


def build_loss(cfg: Config, num_classes: int) -> YoloLoss:
    loss = cfg.loss
    return YoloLoss(
        anchors=np.asarray(config_anchors(cfg), np.float32),
        anchors_mask=cfg.model.anchors_mask,
        num_classes=num_classes,
        input_hw=tuple(cfg.model.input_size),
        assign=loss.assign,
        anchor_thresh=loss.anchor_thresh,
        ignore_thresh=loss.ignore_thresh,
        obj_iou_ratio=loss.obj_iou_ratio,
        balance=loss.balance,
        box_ratio=loss.box_ratio,
        obj_ratio=loss.obj_ratio,
        cls_ratio=loss.cls_ratio,
        label_smoothing=loss.label_smoothing,
        focal_loss=loss.focal_loss,
        focal_alpha=loss.focal_alpha,
        focal_gamma=loss.focal_gamma,
    )


def build_optimizer(cfg: Config, trainable: Sequence) -> keras.optimizers.Optimizer:
    """SGD (nesterov) or Adam with decoupled weight decay on conv kernels only."""
    train = cfg.train
    if train.optimizer == "adam":
        optimizer = keras.optimizers.Adam(
            learning_rate=train.init_lr,
            beta_1=train.momentum,
            weight_decay=train.weight_decay,
            global_clipnorm=train.clip_grad_norm,
        )
    else:
        optimizer = keras.optimizers.SGD(
            learning_rate=train.init_lr,
            momentum=train.momentum,
            nesterov=train.nesterov,
            weight_decay=train.weight_decay,
            global_clipnorm=train.clip_grad_norm,
        )
    no_decay = [v for v in trainable if v.path.rsplit("/", 1)[-1] not in CONV_KERNELS]
    optimizer.exclude_from_weight_decay(var_list=no_decay)
    if train.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def augment_options(cfg: Config) -> AugmentOptions:
    a = cfg.augment
    return AugmentOptions(
        jitter=a.jitter,
        scale=(a.scale[0], a.scale[1]),
        flip=a.flip,
        hue=a.hue,
        sat=a.sat,
        val=a.val,
        mosaic=a.mosaic,
        mixup=a.mixup,
        min_box_size=a.min_box_size,
    )


@dataclass(frozen=True)
class Phase:
    name: str
    start: int  # first epoch (0-based)
    end: int  # one past the last epoch
    batch_size: int
    backbone_trainable: bool


def plan_phases(cfg: Config) -> list[Phase]:
    """Frozen-backbone phase (if any), then the phase that trains everything."""
    freeze = min(cfg.train.freeze_epochs, cfg.train.epochs)
    phases = [
        Phase("freeze", 0, freeze, cfg.train.freeze_batch_size, False),
        Phase("unfreeze", freeze, cfg.train.epochs, cfg.train.batch_size, True),
    ]
    return [p for p in phases if p.end > p.start]


@dataclass
class Datasets:
    class_names: list[str]
    train: list[Sample]
    val: list[Sample]


def prepare_data(cfg: Config) -> Datasets:
    """Generate the demo dataset if configured and missing, then load the splits."""
    root = Path(cfg.data.root)
    if cfg.data.demo_dataset:
        ensure_demo_dataset(root / cfg.data.demo_dataset)
    names = class_names(cfg)
    train = load_dataset(cfg.data, cfg.data.train_split, names)
    val = load_dataset(cfg.data, cfg.data.val_split, names)
    if not train.samples:
        raise ValueError(f"data.train_split {cfg.data.train_split}: no usable images")
    return Datasets(names, train.samples, val.samples)


def make_run_dir(cfg: Config, worker: str = "") -> Path:
    """A new ``<save_dir>/<name>-<timestamp><worker>`` folder (``worker``: see worker_suffix)."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.train.save_dir) / f"{cfg.name}-{stamp}{worker}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = Path(cfg.train.save_dir) / f"{cfg.name}-{stamp}{worker}-{suffix}"
    run_dir.mkdir(parents=True)
    return run_dir


def map_evaluator(cfg: Config, yolo: keras.Model, samples: list[Sample], num_classes: int):
    """A function returning the VOC mAP@0.5 of ``yolo``'s current weights on ``samples``."""
    if cfg.train.eval_max_images > 0:
        samples = samples[: cfg.train.eval_max_images]
    dataset = build_dataset(
        samples,
        input_size=tuple(cfg.model.input_size),
        batch_size=cfg.train.batch_size,
        training=False,
        max_boxes=cfg.data.max_boxes,
    )
    sizes = [(s.height, s.width) for s in samples]
    truths = [ImageTruth(s.boxes, s.classes, s.difficult) for s in samples]
    detect = make_batch_detector(
        yolo,
        DecodeSpec.from_config(cfg, num_classes),
        score_threshold=cfg.eval.map_score_threshold,
        nms_iou=cfg.eval.nms_iou,
        max_detections=cfg.eval.max_detections,
    )

    def evaluate() -> float:
        detections = detect_dataset(detect, dataset, sizes)
        results = evaluate_voc(truths, detections, num_classes, iou_threshold=cfg.eval.map_iou)
        return mean_ap(results)

    return evaluate


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_value: float | None
    history: dict[str, list[float]]


def train(
    cfg: Config, *, resume_dir: Path | None = None, verbose: int | str = "auto"
) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; returns the run folder and history."""
    strategy = make_strategy(cfg.train.distribute)  # first: multi-worker configures the runtime
    replicas = strategy.num_replicas_in_sync
    for phase in plan_phases(cfg):  # fail before any work
        key = "train.batch_size" if phase.backbone_trainable else "train.freeze_batch_size"
        split_batch(phase.batch_size, replicas, key)
    keras.utils.set_random_seed(cfg.train.seed)
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    data = prepare_data(cfg)
    num_classes = len(data.class_names)

    run_dir = Path(resume_dir) if resume_dir else make_run_dir(cfg, worker_suffix(strategy))
    save_config(cfg, run_dir / "config.yaml")
    resume = load_resume_state(run_dir / RESUME_FILE) if resume_dir else None
    start_epoch = resume.info.epochs_done if resume else 0
    best_value = resume.info.best_value if resume else None

    # Everything holding variables is created under the strategy's scope (mirrored copies).
    with strategy.scope():
        yolo = build_model(cfg.model, num_classes)
        if replicas > 1:
            synchronize_batchnorm(yolo, cfg.train.sync_bn)
        ema = (
            ModelEMA(yolo, decay=cfg.train.ema_decay, tau=cfg.train.ema_tau)
            if cfg.train.ema
            else None
        )
        if resume:
            assign_all(yolo.weights, resume.model, "model")
            if ema is not None:
                ema.load_state(resume.ema)
    loss_fn = build_loss(cfg, num_classes)
    evaluate = map_evaluator(cfg, yolo, data.val, num_classes)
    mosaic_switch = tf.Variable(True, trainable=False, name="mosaic_enabled")
    history: dict[str, list[float]] = {}

    for phase in plan_phases(cfg):
        if start_epoch >= phase.end:
            continue
        set_backbone_trainable(yolo, phase.backbone_trainable)
        with strategy.scope():
            trainer = YoloTrainer(yolo, loss_fn, ema, name="trainer")
            optimizer = build_optimizer(cfg, yolo.trainable_variables)
            trainer.compile(optimizer=optimizer, steps_per_execution=cfg.train.steps_per_execution)
            if resume and resume.info.phase == phase.name and start_epoch > phase.start:
                assign_all(optimizer.variables, resume.optimizer, "optimizer")

        train_ds = build_dataset(
            data.train,
            input_size=tuple(cfg.model.input_size),
            batch_size=phase.batch_size,
            training=True,
            augment=augment_options(cfg),
            max_boxes=cfg.data.max_boxes,
            use_difficult=cfg.data.use_difficult,
            shuffle_seed=cfg.train.seed,
            mosaic_enabled=mosaic_switch,
            cache_images=cfg.data.cache_images,
        )
        val_ds = build_dataset(
            data.val,
            input_size=tuple(cfg.model.input_size),
            batch_size=phase.batch_size,
            training=False,
            max_boxes=cfg.data.max_boxes,
            use_difficult=True,
            # a partial last batch could leave a replica without images (mAP still sees all)
            drop_remainder=replicas > 1,
        )
        steps = len(data.train) // phase.batch_size
        if steps == 0:
            raise ValueError(
                f"{len(data.train)} training images are fewer than a batch of {phase.batch_size}; "
                "lower train.batch_size / train.freeze_batch_size"
            )
        guard = NanGuard()
        checkpointer = RunCheckpointer(
            run_dir,
            phase=phase.name,
            ema=ema,
            guard=guard,
            save_period=cfg.train.save_period,
            best_metric=cfg.train.best_metric,
            best_value=best_value,
            yolo=yolo,
        )
        # Order matters: evaluation adds val_map to the logs before they are saved and written.
        callbacks = [
            guard,
            LrScheduler(build_schedule(cfg.train, phase.batch_size), steps),
            SpecialAugSwitch(mosaic_switch, cfg.train.epochs, cfg.augment.special_aug_ratio),
            EvaluateMap(
                evaluate,
                period=cfg.train.eval_period,
                last_epoch=cfg.train.epochs,
                ema=ema,
                guard=guard,
                tensorboard_dir=run_dir / "tensorboard" / "eval",
            ),
            checkpointer,
            keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
            PlotCurves(run_dir / "history.csv", run_dir),
            keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), write_graph=False),
        ]
        logger.info(
            "phase %s: epochs %d-%d, batch %d on %d replica(s), backbone %s",
            phase.name,
            max(start_epoch, phase.start) + 1,
            phase.end,
            phase.batch_size,
            replicas,
            "trainable" if phase.backbone_trainable else "frozen",
        )
        fit = trainer.fit(
            # One iterator for the whole phase: Keras would otherwise drop the epoch's iterator
            # and make a new one, and tearing down an autotuned tf.data iterator waits out its
            # optimisation period (it grows to tens of seconds over a long epoch), which left
            # the CPU idle for up to 40 s at the start of every other epoch. Every pass over the
            # repeated data yields exactly `steps` batches (drop_remainder), so epochs keep
            # their boundaries and each pass is reshuffled.
            shard_by_data(train_ds.repeat()),
            steps_per_epoch=steps,
            epochs=phase.end,
            initial_epoch=max(start_epoch, phase.start),
            validation_data=shard_by_data(val_ds),
            validation_freq=max(cfg.train.eval_period, 1),
            shuffle=False,  # the dataset shuffles itself
            callbacks=callbacks,
            verbose=verbose,
        )
        for key, values in fit.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
        best_value = checkpointer.best_value
        if guard.tripped:
            raise NonFiniteLossError(
                f"loss became NaN/Inf at {guard.where}; stopped. The checkpoints of the last good "
                f"epoch in {run_dir} are intact (try a lower train.init_lr)."
            )
        start_epoch = phase.end

    wait_for_all_workers(strategy)
    done = history.get("loss", [])
    epochs_done = (resume.info.epochs_done if resume else 0) + len(done)
    best = best_value if best_value is None or math.isfinite(best_value) else None
    return TrainResult(run_dir, epochs_done, best, history)
