"""Training settings seen through what they change in a run: the best-checkpoint metric,
steps per execution, the evaluation subset, periodic weights, TensorBoard events, multi-scale
batches, and mixed precision under a strategy. The runs train the tiny dataset at 64x64 for one
to three epochs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

import utils.engine.trainer as trainer_module
from nets.yolo import build_model
from tests.training_fixtures import tiny_config
from utils.config import Config, load_config
from utils.engine.checkpoint import load_resume_state
from utils.engine.trainer import TrainResult
from utils.plots import read_history


def _h5_arrays(path: Path) -> list[np.ndarray]:
    """Every dataset of a .weights.h5 file, in file order."""
    arrays: list[np.ndarray] = []

    def collect(_: str, item: h5py.Group | h5py.Dataset) -> None:
        if isinstance(item, h5py.Dataset):
            arrays.append(item[()])

    with h5py.File(path, "r") as handle:
        handle.visititems(collect)
    return arrays


def _same_weights(a: Path, b: Path) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(_h5_arrays(a), _h5_arrays(b), strict=True))


def _scalars(folder: Path) -> dict[str, dict[int, float]]:
    """The scalar summaries of every event file in ``folder``: tag -> {step: value}."""
    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, {})[event.step] = number
    return scalars


# --- one run with every setting on: best_metric, steps_per_execution, eval_max_images,
# save_period, multi_scale; TensorBoard --------------------------------------------------------


class ScriptedValLoss(keras.callbacks.Callback):
    """Replaces each epoch's real val_loss (kept in ``real``) by a scripted value before the
    checkpointer sees it, so that the lowest is neither the first nor the last epoch's."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = values
        self.real: list[float] = []

    def on_epoch_end(self, epoch, logs=None):
        self.real.append(float(logs["val_loss"]))
        logs["val_loss"] = self.values[epoch]


# The tests of that run share one xdist group, so that under `-n 2 --dist loadgroup` they run on
# one worker and the run trains once.
OBSERVED_RUN = pytest.mark.xdist_group("trainer_features_observed")


@dataclass
class Observed:
    result: TrainResult
    real_val_loss: list[float]
    # per fit(): steps per execution, optimizer steps after it, the dataset's cardinality and
    # steps_per_epoch
    fits: list[tuple[int, int, int, int | None]]
    evaluated: list[int]  # images in each detection pass of the mAP evaluator
    batch_sizes: set[tuple[int, int]]  # (h, w) of the first training batches fit() was fed
    cfg: Config


@pytest.fixture(scope="module")
def observed(tmp_path_factory) -> Observed:
    """Three epochs of 2 steps (8 images, batch 4), 4 steps per execution, val_loss scripted to
    3, 1, 2 and choosing the best, mAP on at most 3 of the 8 validation images after every epoch,
    weights kept every epoch, multi-scale batches. One run for all: a run costs about a minute of
    graph tracing."""
    script = ScriptedValLoss([3.0, 1.0, 2.0])
    fits: list[tuple[int, int, int, int | None]] = []
    evaluated: list[int] = []
    batch_sizes: set[tuple[int, int]] = set()
    real_fit = trainer_module.YoloTrainer.fit
    real_detect_dataset = trainer_module.detect_dataset

    def recording_fit(self, x, **kwargs):
        history = real_fit(self, x, **kwargs)
        fits.append(
            (
                self.steps_per_execution,
                int(self.optimizer.iterations),
                int(x.cardinality()),
                kwargs.get("steps_per_epoch"),
            )
        )
        batch_sizes.update(tuple(images.shape[1:3]) for images, _ in x.take(8))
        return history

    def counting_detect_dataset(*args, **kwargs):
        detections = real_detect_dataset(*args, **kwargs)
        evaluated.append(len(detections))
        return detections

    class ScriptedTrainer(trainer_module.Trainer):
        def callbacks(self, phase, steps, guard, evaluation, checkpointer):
            callbacks = super().callbacks(phase, steps, guard, evaluation, checkpointer)
            callbacks.insert(callbacks.index(checkpointer), script)
            return callbacks

    cfg = load_config(
        tiny_config(tmp_path_factory.mktemp("observed")),
        [
            "model.input_size=[64,64]",
            "train.epochs=3",
            "train.best_metric=val_loss",
            "train.steps_per_execution=4",
            "train.eval_period=1",
            "train.eval_max_images=3",
            "train.save_period=1",
            "train.time_budget=600",  # never reached: the plan stays at the cap, train.epochs
            "augment.multi_scale=0.5",
        ],
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer_module.YoloTrainer, "fit", recording_fit)
        patch.setattr(trainer_module, "detect_dataset", counting_detect_dataset)
        result = ScriptedTrainer(cfg, verbose=0).run()
    return Observed(result, script.real, fits, evaluated, batch_sizes, cfg)


@OBSERVED_RUN
@pytest.mark.slow
def test_best_metric_val_loss_keeps_the_epoch_with_the_lowest_val_loss(observed):
    run = observed.result.run_dir
    assert len(observed.real_val_loss) == 3 and all(map(math.isfinite, observed.real_val_loss))
    assert read_history(run.history)["val_loss"] == [3.0, 1.0, 2.0]
    assert observed.result.best_value == 1.0
    assert load_resume_state(run.resume_state).info.best_value == 1.0
    assert _same_weights(run.best_weights, run.epoch_weights(2))
    assert not _same_weights(run.best_weights, run.last_weights)


@OBSERVED_RUN
@pytest.mark.slow
def test_the_calibrated_threshold_belongs_to_the_best_weights(observed):
    """Evaluated every epoch, best (val_loss) at epoch 2: score_threshold.json is the one of that
    evaluation, not of the later, worse epoch 3."""
    record = json.loads(observed.result.run_dir.score_threshold.read_text())
    assert record["epoch"] == 2 and record["split"] == "val"
    assert 0.0 <= record["score_threshold"] <= 1.0 and 0.0 <= record["f1"] <= 1.0


@OBSERVED_RUN
@pytest.mark.slow
def test_a_budget_never_reached_keeps_train_epochs_and_saves_the_plan(observed):
    info = load_resume_state(observed.result.run_dir.resume_state).info
    assert observed.result.epochs_done == 3
    assert info.planned_epochs == 3 and info.elapsed_s > 0


@pytest.mark.parametrize(
    ("configured", "steps", "used"), [(1, 7, 1), (2, 4, 2), (2, 3, 1), (4, 6, 3), (32, 100, 25)]
)
def test_steps_per_execution_is_the_largest_divisor_of_the_epoch(configured, steps, used):
    assert trainer_module.fitting_steps_per_execution(configured, steps) == used


@OBSERVED_RUN
@pytest.mark.slow
def test_steps_per_execution_keeps_the_optimizer_steps_of_one_per_call(observed):
    """4 steps per call would run an epoch of 4 for the epoch's 2 batches; 2 per call run, and the
    optimizer steps once per batch, as with 1 per call: 3 epochs x 2.

    fit() is fed one repeated dataset for the whole phase, epochs cut by steps_per_epoch: a
    finite one makes Keras rebuild its iterator every epoch, and tearing down an autotuned
    tf.data iterator stalled each epoch for up to 40 s (see ``Trainer.fit_phase``)."""
    assert observed.fits == [(2, 3 * 2, int(tf.data.INFINITE_CARDINALITY), 2)]
    assert all(map(math.isfinite, observed.result.history["loss"]))


@OBSERVED_RUN
@pytest.mark.slow
def test_multi_scale_trains_on_batches_of_several_sizes_and_saves_fixed_size_weights(observed):
    """augment.multi_scale=0.5 at 64x64: batches of 32 to 96 px (the training graph takes any
    size, under 4 steps per execution too), and the saved weights load into the fixed-size model
    that predict, get_map and export build."""
    sizes = observed.batch_sizes
    assert len(sizes) >= 2 and all(h == w and h in (32, 64, 96) for h, w in sizes), sizes
    assert all(map(math.isfinite, observed.result.history["loss"]))
    model = build_model(observed.cfg.model, 2)
    model.load_weights(observed.result.run_dir.best_weights)
    assert model.input_shape == (None, 64, 64, 3)


@OBSERVED_RUN
@pytest.mark.slow
def test_eval_max_images_evaluates_only_that_many_images(observed):
    assert observed.evaluated == [3, 3, 3]  # of the 8 validation images, after each epoch
    assert all(map(math.isfinite, observed.result.history["val_map"]))


@OBSERVED_RUN
@pytest.mark.slow
def test_save_period_keeps_the_weights_of_every_epoch(observed):
    run = observed.result.run_dir
    epochs = [run.epoch_weights(epoch) for epoch in (1, 2, 3)]
    assert sorted(run.weights_dir.glob("epoch*")) == epochs
    assert not _same_weights(epochs[0], epochs[1])
    assert not _same_weights(epochs[1], epochs[2])
    assert _same_weights(run.last_weights, epochs[2])


@OBSERVED_RUN
@pytest.mark.slow
def test_tensorboard_holds_the_epoch_logs_and_the_eval_map(observed):
    result = observed.result
    run = result.run_dir
    train = _scalars(run.tensorboard / "train")
    for name in ("loss", "box", "obj", "cls"):
        logged = train[f"epoch_{name}"]
        assert list(logged) == [0, 1, 2], name
        assert list(logged.values()) == pytest.approx(result.history[name], rel=1e-6)
    validation = _scalars(run.tensorboard / "validation")["epoch_loss"]
    assert list(validation.values()) == [3.0, 1.0, 2.0]  # what the epoch's logs held
    val_map = _scalars(run.tensorboard_eval)["val_map"]
    assert list(val_map) == [0, 1, 2]
    assert list(val_map.values()) == pytest.approx(result.history["val_map"], rel=1e-6)
