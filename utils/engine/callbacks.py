"""Keras callbacks of a training run: LR schedule, mosaic cut-off, NaN guard, mAP evaluation,
checkpoints, plots. Those that depend on the run's length read its :class:`EpochPlan`."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from utils.engine.checkpoint import ResumeInfo, save_resume_state, save_weights_atomic
from utils.engine.ema import ModelEMA
from utils.engine.lr_schedule import LrSchedule
from utils.engine.run_dir import RunDir
from utils.engine.time_budget import EpochPlan
from utils.eval.metrics import F1Point
from utils.plots import plot_training_curves

logger = logging.getLogger(__name__)


class LrScheduler(keras.callbacks.Callback):
    """Sets the optimizer's LR before every step from the schedule of the run's planned length
    (``schedule_for(plan.total)``) at the (fractional) epoch."""

    def __init__(
        self, schedule_for: Callable[[int], LrSchedule], steps_per_epoch: int, plan: EpochPlan
    ) -> None:
        super().__init__()
        self.schedule_for = schedule_for
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.plan = plan
        self._epoch = 0
        self._schedule = schedule_for(plan.total)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._schedule.epochs != self.plan.total:
            self._schedule = self.schedule_for(self.plan.total)

    def on_train_batch_begin(self, batch, logs=None):
        position = self._epoch + batch / self.steps_per_epoch
        self.model.optimizer.learning_rate.assign(self._schedule(position))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = float(self.model.optimizer.learning_rate.numpy())


class SpecialAugSwitch(keras.callbacks.Callback):
    """Turns mosaic and mixup off for the last ``1 - special_aug_ratio`` of the planned epochs.

    ``variable`` is the ``tf.Variable(bool)`` passed to ``build_dataset(mosaic_enabled=...)``; the
    input pipeline reads it for every element, so the switch needs no dataset rebuild. The change
    is logged, naming those of mosaic and mixup that are on at all (nothing when neither is);
    ``mosaic`` and ``mixup`` are the run's probabilities, read only for that.
    """

    def __init__(
        self,
        variable: tf.Variable,
        plan: EpochPlan,
        special_aug_ratio: float,
        *,
        mosaic: float,
        mixup: float,
    ) -> None:
        super().__init__()
        self.variable = variable
        self.plan = plan
        self.special_aug_ratio = special_aug_ratio
        self.switched = "/".join(name for name, p in (("mosaic", mosaic), ("mixup", mixup)) if p)

    def enabled_for(self, epoch: int) -> bool:
        """Whether mosaic/mixup are on for the 0-based ``epoch``."""
        return epoch < self.plan.total * self.special_aug_ratio

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        enabled = self.enabled_for(epoch)
        if self.switched and bool(self.variable.numpy()) != enabled:
            logger.info("Epoch %d: %s %s", epoch + 1, self.switched, "on" if enabled else "off")
        self.variable.assign(enabled)


class NanGuard(keras.callbacks.Callback):
    """Stops training at the first non-finite loss; ``tripped`` tells the savers to stand down."""

    def __init__(self) -> None:
        super().__init__()
        self.tripped = False
        self.where = ""

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.tripped = True
            self.where = f"epoch {self._epoch + 1}, step {batch + 1}"
            self.model.stop_training = True


@dataclass(frozen=True)
class MapResult:
    """One evaluation: the mAP@0.5 and the score threshold of best F1 (None without any)."""

    value: float
    best_f1: F1Point | None


class EvaluateMap(keras.callbacks.Callback):
    """Every ``period`` epochs (and at the planned last), mAP@0.5 on the validation set as
    ``val_map``; ``latest`` keeps the result of this epoch (None on epochs without one).

    ``evaluate`` is a function scoring the current model weights; it runs with the
    EMA weights applied when an EMA is given. Epochs without evaluation log NaN so that the CSV
    keeps one column.
    """

    def __init__(
        self,
        evaluate: Callable[[], MapResult],
        *,
        period: int,
        plan: EpochPlan,
        ema: ModelEMA | None,
        guard: NanGuard,
        loss_parts: Sequence[str],
        tensorboard_dir: Path | None = None,
    ) -> None:
        super().__init__()
        self.evaluate = evaluate
        self.period = period
        self.plan = plan
        self.latest: MapResult | None = None
        self.ema = ema
        self.guard = guard
        self.writer = (
            tf.summary.create_file_writer(str(tensorboard_dir)) if tensorboard_dir else None
        )
        self.val_loss_keys = tuple(f"val_{key}" for key in ("loss", *loss_parts))

    def due(self, epoch: int) -> bool:
        return self.period > 0 and ((epoch + 1) % self.period == 0 or epoch + 1 >= self.plan.total)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["val_map"] = math.nan
        self.latest = None
        for key in self.val_loss_keys:  # epochs without validation keep the CSV columns
            logs.setdefault(key, math.nan)
        if self.guard.tripped or not self.due(epoch):
            return
        if self.ema is not None:
            with self.ema.applied():
                self.latest = self.evaluate()
        else:
            self.latest = self.evaluate()
        value = logs["val_map"] = self.latest.value
        logger.info("epoch %d: val mAP@0.5 = %.4f", epoch + 1, value)
        if self.writer is not None:
            with self.writer.as_default():
                tf.summary.scalar("val_map", value, step=epoch)
            self.writer.flush()


class RunCheckpointer(keras.callbacks.Callback):
    """Writes ``last``/``best``/periodic weights (EMA when on) and the resume state, atomically,
    and the calibrated display threshold of the evaluation that goes with the best weights.

    ``best`` follows ``best_metric``: ``map`` (higher is better, only epochs with an evaluation)
    or ``val_loss`` (lower is better). Nothing is written once the NaN guard has tripped, so the
    files of the last good epoch stay intact.
    """

    def __init__(
        self,
        run: RunDir,
        *,
        phase: str,
        ema: ModelEMA | None,
        guard: NanGuard,
        save_period: int,
        best_metric: str,
        best_value: float | None,
        yolo: keras.Model,
        evaluation: EvaluateMap,
        plan: EpochPlan,
    ) -> None:
        super().__init__()
        self.run = run
        self.evaluation = evaluation
        self.plan = plan
        self.phase = phase
        self.ema = ema
        self.guard = guard
        self.save_period = save_period
        self.key = "val_map" if best_metric == "map" else "val_loss"
        self.higher_is_better = best_metric == "map"
        self.best_value = best_value
        self.yolo = yolo

    def _improved(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.higher_is_better else value < self.best_value

    def _save_user_weights(self, epoch: int, logs: dict) -> None:
        value = logs.get(self.key)
        value = None if value is None else float(value)
        save_weights_atomic(self.yolo, self.run.last_weights)
        improved = self._improved(value)
        if improved:
            self.best_value = value
            save_weights_atomic(self.yolo, self.run.best_weights)
            logger.info("epoch %d: new best %s = %.4f", epoch + 1, self.key, value)
        result = self.evaluation.latest
        if (
            result is not None
            and result.best_f1 is not None
            and (improved or not self.run.score_threshold.is_file())
        ):
            self._save_threshold(epoch, result.best_f1)
        if self.save_period > 0 and (epoch + 1) % self.save_period == 0:
            save_weights_atomic(self.yolo, self.run.epoch_weights(epoch + 1))

    def _save_threshold(self, epoch: int, point: F1Point) -> None:
        """The display threshold for ``eval.score_threshold: auto`` (see utils/deploy/runs.py)."""
        record = {"score_threshold": point.threshold, "f1": point.f1,
                  "precision": point.precision, "recall": point.recall,
                  "epoch": epoch + 1, "split": "val"}  # fmt: skip
        path = self.run.score_threshold
        tmp = path.with_name(f".tmp-{path.name}")
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        tmp.replace(path)
        logger.info(
            "epoch %d: score threshold of best F1 on val %.3f (F1 %.3f, P %.3f, R %.3f)",
            epoch + 1, point.threshold, point.f1, point.precision, point.recall,
        )  # fmt: skip

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.tripped:
            return
        logs = logs or {}
        if self.ema is not None:
            with self.ema.applied():
                self._save_user_weights(epoch, logs)
        else:
            self._save_user_weights(epoch, logs)
        info = ResumeInfo(
            epochs_done=epoch + 1,
            best_value=self.best_value,
            phase=self.phase,
            planned_epochs=self.plan.total,
            elapsed_s=self.plan.elapsed(),
        )
        save_resume_state(
            self.run.resume_state,
            info,
            self.yolo,
            self.model.optimizer,
            self.ema.state() if self.ema is not None else None,
            previous=self.run.previous_resume_state,
        )


class PlotCurves(keras.callbacks.Callback):
    """Redraws the run's training curves from its history: at most every ``min_interval_s``
    seconds (matplotlib costs ~0.3 s, too much after every epoch of a fast run) and at the end.

    Must come after the CSVLogger in the callback list so the file holds this epoch.
    """

    def __init__(self, run: RunDir, *, min_interval_s: float = 30.0) -> None:
        super().__init__()
        self.csv_path = run.history
        self.out_dir = run.plots_dir
        self.min_interval_s = min_interval_s
        self._last_draw = -math.inf

    def _draw(self) -> None:
        if self.csv_path.is_file():
            plot_training_curves(self.csv_path, self.out_dir)
        self._last_draw = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        if time.monotonic() - self._last_draw >= self.min_interval_s:
            self._draw()

    def on_train_end(self, logs=None):
        self._draw()
