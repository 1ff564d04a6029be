"""Training: the train-step model, optimizer, phases (frozen backbone, then all), resume.

``train.py`` only parses arguments and runs a :class:`Trainer`; everything a run does is here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from nets.fold import BatchNormFolding
from nets.losses import build_loss
from nets.yolo import build_model, set_backbone_trainable
from utils.anchors import box_sizes, check_anchors, format_anchors
from utils.config import Config, anchors, class_names, save_config
from utils.data.formats import load_config_split
from utils.data.index import Sample
from utils.data.pipeline import build_dataset
from utils.deploy.detector import DecodeSpec, detect_dataset, make_batch_detector
from utils.engine.callbacks import (
    EvaluateMap,
    LrScheduler,
    MapResult,
    NanGuard,
    PlotCurves,
    RunCheckpointer,
    SpecialAugSwitch,
)
from utils.engine.checkpoint import assign_all, load_resume_state
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
from utils.engine.precision import resolve_precision
from utils.engine.run_dir import RunDir
from utils.engine.time_budget import TimeBudget, initial_plan
from utils.eval.metrics import ImageTruth, best_f1_threshold, evaluate_voc, mean_ap
from utils.plots import plot_anchors

logger = logging.getLogger(__name__)

CONV_KERNELS = ("kernel", "depthwise_kernel")


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss became NaN or Inf."""


class YoloTrainer(keras.Model):
    """Wraps the detector for ``fit``: YOLO loss, EMA update, loss parts as metrics."""

    def __init__(self, yolo: keras.Model, loss_fn: Callable, ema: ModelEMA | None, **kwargs):
        super().__init__(**kwargs)
        self.yolo = yolo
        self.loss_fn = loss_fn
        self.ema = ema
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", *loss_fn.PARTS)}

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


@dataclass(frozen=True)
class Phase:
    name: str
    start: int  # first epoch (0-based)
    end: int  # one past the last epoch
    batch_size: int
    backbone_trainable: bool

    @property
    def batch_key(self) -> str:
        """The setting that gives this phase its batch size."""
        return "train.batch_size" if self.backbone_trainable else "train.freeze_batch_size"


def plan_phases(cfg: Config) -> list[Phase]:
    """Frozen-backbone phase (if any), then the phase that trains everything."""
    freeze = min(cfg.train.freeze_epochs, cfg.train.epochs)
    phases = [
        Phase("freeze", 0, freeze, cfg.train.freeze_batch_size, False),
        Phase("unfreeze", freeze, cfg.train.epochs, cfg.train.batch_size, True),
    ]
    return [p for p in phases if p.end > p.start]


def fitting_steps_per_execution(configured: int, steps: int) -> int:
    """The largest count up to ``configured`` that divides an epoch's ``steps``.

    Keras runs whole executions only: with a count that does not divide the epoch it runs extra
    steps each epoch (4 for an epoch of 3 at 2 per call), which shifts the epochs off the passes
    over the repeated data and stretches the LR schedule.
    """
    return max(n for n in range(1, min(configured, steps) + 1) if steps % n == 0)


def map_evaluator(cfg: Config, yolo: keras.Model, samples: list[Sample], num_classes: int):
    """A function scoring ``yolo``'s current weights on ``samples`` (VOC mAP@0.5 and the score
    threshold of best F1), run as inference does: BatchNorms folded into the convs (a copy
    refreshed per call)."""
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
    folding = BatchNormFolding(yolo)
    detect = make_batch_detector(
        folding.model,
        DecodeSpec.from_config(cfg, num_classes),
        score_threshold=cfg.eval.map_score_threshold,
        nms_iou=cfg.eval.nms_iou,
        max_detections=cfg.eval.max_detections,
    )

    def evaluate() -> MapResult:
        folding.refresh()  # the weights of now: the EMA ones while EvaluateMap applies them
        detections = detect_dataset(detect, dataset, sizes)
        results = evaluate_voc(truths, detections, num_classes, iou_threshold=cfg.eval.map_iou)
        return MapResult(mean_ap(results), best_f1_threshold(results))

    return evaluate


@dataclass(frozen=True)
class TrainResult:
    run_dir: RunDir
    epochs_done: int
    best_value: float | None
    history: dict[str, list[float]]


class Trainer:
    """One training run of ``cfg``, new or resumed from its run folder (``resume``).

    The constructor checks the batch sizes, loads the data and opens the run folder, so a user
    mistake stops the run before anything is built. :meth:`run` then takes the named steps in
    order: :meth:`build` once, then :meth:`fit_phase` for each phase not yet done, which
    makes the phase's pipelines (:meth:`phase_datasets`), compiles the train step
    (:meth:`compile`) and makes its callbacks (:meth:`callbacks`), and fits.
    """

    def __init__(
        self, cfg: Config, *, resume: RunDir | None = None, verbose: int | str = "auto"
    ) -> None:
        self.cfg = cfg
        self.verbose = verbose
        self.strategy = make_strategy(cfg.train.distribute)  # first: multi-worker sets up TF
        self.replicas = self.strategy.num_replicas_in_sync
        self.phases = plan_phases(cfg)
        for phase in self.phases:  # fail before any work
            split_batch(phase.batch_size, self.replicas, phase.batch_key)
        keras.utils.set_random_seed(cfg.train.seed)
        # `auto` is decided once here; the run folder's config records what the run used.
        precision = resolve_precision(cfg.train.precision)
        cfg = self.cfg = dataclasses.replace(
            cfg, train=dataclasses.replace(cfg.train, precision=precision)
        )
        keras.mixed_precision.set_global_policy(precision)
        self.num_classes = len(class_names(cfg))
        self.train_samples = load_config_split(cfg, cfg.data.train_split, key="data.train_split")
        self.val_samples = load_config_split(cfg, cfg.data.val_split, key="data.val_split")

        worker = worker_suffix(self.strategy)
        self.run_dir = resume or RunDir.create(cfg.train.save_dir, cfg.name, worker)
        if not resume:  # a resumed run's config already names the anchors it started with
            self.cfg = cfg = self.fit_anchors(cfg)
        save_config(cfg, self.run_dir.config)
        self.resume = (
            load_resume_state(resume.resume_state, previous=resume.previous_resume_state)
            if resume
            else None
        )
        info = self.resume.info if self.resume else None
        self.start_epoch = info.epochs_done if info else 0
        self.best_value = info.best_value if info else None
        self.plan = initial_plan(  # a budgeted run resumes on its plan, others on train.epochs
            cfg.train.epochs,
            planned=info.planned_epochs if info and cfg.train.time_budget else None,
            elapsed_s=info.elapsed_s if info else None,
        )
        self.history: dict[str, list[float]] = {}

    def fit_anchors(self, cfg: Config) -> Config:
        """Autoanchor (``model.autoanchor``): ``cfg`` with k-means anchors fitted to the training
        boxes, written to the run folder, when too few boxes are within reach of the configured
        ones; else ``cfg`` unchanged."""
        if cfg.model.head != "anchor_based" or cfg.model.autoanchor <= 0:
            return cfg
        sizes = box_sizes(self.train_samples, cfg.model.input_size,
                          use_difficult=cfg.data.use_difficult)  # fmt: skip
        configured = np.asarray(anchors(cfg))
        check = check_anchors(
            sizes,
            configured,
            cfg.model.anchors_mask,
            min_recall=cfg.model.autoanchor,
            anchor_thresh=cfg.loss.anchor_thresh,
            seed=cfg.train.seed,
        )
        logger.info("autoanchor: %d training boxes, %s: %s", len(sizes), cfg.model.anchors,
                    check.reason)  # fmt: skip
        if check.anchors is None:
            return cfg
        run = self.run_dir
        run.anchors.write_text(format_anchors(check.anchors), encoding="utf-8")
        height, width = cfg.model.input_size
        title = f"autoanchor: {len(sizes)} training boxes at {height}x{width}"
        plot_anchors(sizes, check.anchors, configured, run.anchors_plot, title=title)
        logger.info("autoanchor: %s -> %s (plot: %s)", format_anchors(check.anchors).strip(),
                    run.anchors, run.anchors_plot)  # fmt: skip
        return dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, anchors=str(run.anchors))
        )

    def build(self) -> None:
        """The detector, its EMA (with a resumed run's weights), the loss and the mAP evaluator."""
        cfg = self.cfg
        # Everything holding variables is created under the strategy's scope (mirrored copies).
        with self.strategy.scope():
            # A resumed run's saved weights replace the backbone's: no ImageNet download then.
            model_cfg = cfg.model
            if self.resume:
                model_cfg = dataclasses.replace(cfg.model, pretrained=None)
            # Multi-scale batches need a model that takes any size; its weights are the same.
            any_size = cfg.augment.multi_scale > 0
            self.yolo = build_model(model_cfg, self.num_classes, any_size=any_size)
            if self.replicas > 1:
                synchronize_batchnorm(self.yolo, cfg.train.sync_bn)
            self.ema = (
                ModelEMA(self.yolo, decay=cfg.train.ema_decay, tau=cfg.train.ema_tau)
                if cfg.train.ema
                else None
            )
            if self.resume:
                assign_all(self.yolo.weights, self.resume.model, "model")
                if self.ema is not None:
                    self.ema.load_state(self.resume.ema)
        self.loss_fn = build_loss(cfg, self.num_classes)
        self.evaluate = map_evaluator(cfg, self.yolo, self.val_samples, self.num_classes)
        self.mosaic_switch = tf.Variable(True, trainable=False, name="mosaic_enabled")

    def compile(self, phase: Phase, steps: int) -> YoloTrainer:
        """The train-step model of ``phase`` (``steps`` per epoch): its trainable layers and a
        new optimizer (with the saved state when the run resumes inside this phase)."""
        set_backbone_trainable(self.yolo, phase.backbone_trainable)
        per_call = fitting_steps_per_execution(self.cfg.train.steps_per_execution, steps)
        if per_call != self.cfg.train.steps_per_execution:
            logger.warning(
                "phase %s: train.steps_per_execution=%d does not divide its %d steps per epoch; "
                "using %d",
                phase.name,
                self.cfg.train.steps_per_execution,
                steps,
                per_call,
            )
        with self.strategy.scope():
            trainer = YoloTrainer(self.yolo, self.loss_fn, self.ema, name="trainer")
            optimizer = build_optimizer(self.cfg, self.yolo.trainable_variables)
            trainer.compile(optimizer=optimizer, steps_per_execution=per_call)
            state = self.resume
            if state and state.info.phase == phase.name and self.start_epoch > phase.start:
                assign_all(optimizer.variables, state.optimizer, "optimizer")
        return trainer

    def phase_datasets(self, phase: Phase) -> tuple[tf.data.Dataset, tf.data.Dataset, int]:
        """The phase's training and validation pipelines, and its steps per epoch."""
        cfg = self.cfg
        steps = len(self.train_samples) // phase.batch_size
        if steps == 0:
            raise ValueError(
                f"{len(self.train_samples)} training images are fewer than a batch of "
                f"{phase.batch_size}; lower {phase.batch_key}"
            )
        train_ds = build_dataset(
            self.train_samples,
            input_size=tuple(cfg.model.input_size),
            batch_size=phase.batch_size,
            training=True,
            augment=cfg.augment,
            max_boxes=cfg.data.max_boxes,
            use_difficult=cfg.data.use_difficult,
            shuffle_seed=cfg.train.seed,
            mosaic_enabled=self.mosaic_switch,
            cache_images=cfg.data.cache_images,
        )
        val_ds = build_dataset(
            self.val_samples,
            input_size=tuple(cfg.model.input_size),
            batch_size=phase.batch_size,
            training=False,
            max_boxes=cfg.data.max_boxes,
            use_difficult=True,
            # a partial last batch could leave a replica without images (mAP still sees all)
            drop_remainder=self.replicas > 1,
        )
        return train_ds, val_ds, steps

    def callbacks(
        self,
        phase: Phase,
        steps: int,
        guard: NanGuard,
        evaluation: EvaluateMap,
        checkpointer: RunCheckpointer,
    ) -> list[keras.callbacks.Callback]:
        """The phase's callbacks, in the order they must run."""
        cfg, run = self.cfg, self.run_dir
        budget = []
        if cfg.train.time_budget is not None:
            evaluated = min(len(self.val_samples), cfg.train.eval_max_images or math.inf)
            budget = [
                TimeBudget(
                    self.plan,
                    budget_s=cfg.train.time_budget * 60.0,
                    cap=cfg.train.epochs,
                    eval_period=cfg.train.eval_period,
                    evaluated=evaluation.due,
                    # until measured: inference on the val images at ~1/3 of a training step's cost
                    eval_estimate=evaluated / max(len(self.train_samples), 1) / 3,
                )
            ]
        # Order matters: the time budget fixes the last epoch before evaluation looks for it;
        # evaluation adds val_map to the logs before they are saved and written.
        return [
            guard,
            LrScheduler(
                lambda total: build_schedule(cfg.train, phase.batch_size, total), steps, self.plan
            ),
            SpecialAugSwitch(
                self.mosaic_switch,
                self.plan,
                cfg.augment.special_aug_ratio,
                mosaic=cfg.augment.mosaic,
                mixup=cfg.augment.mixup,
            ),
            *budget,
            evaluation,
            checkpointer,
            keras.callbacks.CSVLogger(str(run.history), append=True),
            PlotCurves(run),
            keras.callbacks.TensorBoard(str(run.tensorboard), write_graph=False),
        ]

    def fit_phase(self, phase: Phase) -> None:
        """Train the epochs of ``phase`` that are not done yet (up to the planned last); raises
        on a NaN/Inf loss."""
        train_ds, val_ds, steps = self.phase_datasets(phase)
        trainer = self.compile(phase, steps)
        guard = NanGuard()
        evaluation = EvaluateMap(
            self.evaluate,
            period=self.cfg.train.eval_period,
            plan=self.plan,
            ema=self.ema,
            guard=guard,
            loss_parts=self.loss_fn.PARTS,
            tensorboard_dir=self.run_dir.tensorboard_eval,
        )
        checkpointer = RunCheckpointer(
            self.run_dir,
            phase=phase.name,
            ema=self.ema,
            guard=guard,
            save_period=self.cfg.train.save_period,
            best_metric=self.cfg.train.best_metric,
            best_value=self.best_value,
            yolo=self.yolo,
            evaluation=evaluation,
            plan=self.plan,
        )
        first = max(self.start_epoch, phase.start)
        logger.info(
            "phase %s: epochs %d-%d, batch %d on %d replica(s), backbone %s",
            phase.name,
            first + 1,
            phase.end,
            phase.batch_size,
            self.replicas,
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
            epochs=phase.end,  # a time budget stops the fit at its planned epoch
            initial_epoch=first,
            validation_data=shard_by_data(val_ds),
            validation_freq=max(self.cfg.train.eval_period, 1),
            shuffle=False,  # the dataset shuffles itself
            callbacks=self.callbacks(phase, steps, guard, evaluation, checkpointer),
            verbose=self.verbose,
        )
        for key, values in fit.history.items():
            self.history.setdefault(key, []).extend(float(v) for v in values)
        self.best_value = checkpointer.best_value
        if guard.tripped:
            raise NonFiniteLossError(
                f"loss became NaN/Inf at {guard.where}; stopped. The checkpoints of the last good "
                f"epoch in {self.run_dir} are intact (try a lower train.init_lr)."
            )
        self.start_epoch = first + len(fit.history.get("loss", []))

    def run(self) -> TrainResult:
        """Build, train every phase that is not done, and return the run folder and history."""
        self.plan.started = time.monotonic()  # a time budget counts from here
        self.build()
        for phase in self.phases:
            if self.start_epoch < min(phase.end, self.plan.total):
                self.fit_phase(phase)
        wait_for_all_workers(self.strategy)
        resumed_epochs = self.resume.info.epochs_done if self.resume else 0
        epochs_done = resumed_epochs + len(self.history.get("loss", []))
        best = self.best_value
        best = best if best is None or math.isfinite(best) else None
        return TrainResult(self.run_dir, epochs_done, best, self.history)
