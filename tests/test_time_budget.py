"""train.time_budget: the epochs that fit, re-planning on measured epochs, the callbacks that
follow the plan, and a real run that ends, evaluated and saved, when its budget is spent."""

from __future__ import annotations

import types

import keras
import pytest

import utils.engine.time_budget as time_budget
from tests.training_fixtures import tiny_config
from utils.config import load_config
from utils.engine.callbacks import LrScheduler
from utils.engine.checkpoint import load_resume_state
from utils.engine.lr_schedule import LrSchedule
from utils.engine.time_budget import EpochPlan, TimeBudget, epochs_that_fit, initial_plan
from utils.plots import read_history


@pytest.mark.parametrize(
    ("left", "epoch", "evaluation", "period", "expected"),
    [
        (95.0, 10.0, 0.0, 0, 9),  # no evaluations: whole epochs only
        (100.0, 10.0, 20.0, 5, 5),  # (100 - 20 for the last evaluation) / (10 + 20 / 5) = 5.7
        (100.0, 10.0, 20.0, 1, 2),  # evaluated every epoch: (100 - 20) / 30
        (15.0, 10.0, 20.0, 5, 0),  # not even the last evaluation fits: no more epochs
        (-5.0, 10.0, 0.0, 0, 0),
    ],
)
def test_epochs_that_fit(left, epoch, evaluation, period, expected):
    assert epochs_that_fit(left, epoch, evaluation, period) == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def simulate(budget_s, *, trace_s, epoch_s, eval_s, eval_period, cap, monkeypatch):
    """Keras' epoch loop with a TimeBudget on a fake clock; returns (epochs run, evaluated
    epochs, end time, plan)."""
    clock = FakeClock()
    monkeypatch.setattr(time_budget.time, "monotonic", clock)
    plan = EpochPlan(total=cap)
    model = types.SimpleNamespace(stop_training=False)

    def due(epoch: int) -> bool:
        return (epoch + 1) % eval_period == 0 or epoch + 1 >= plan.total

    budget = TimeBudget(plan, budget_s=budget_s, cap=cap, eval_period=eval_period,
                        evaluated=due, eval_estimate=0.5)  # fmt: skip
    budget._model = model
    evaluated = []
    epoch = 0
    for epoch in range(cap):
        budget.on_epoch_begin(epoch)
        clock.now += epoch_s + (trace_s if epoch == 0 else 0.0)
        budget.on_epoch_end(epoch)
        if due(epoch):  # the evaluation callback runs after the budget's
            evaluated.append(epoch)
            clock.now += eval_s
        if model.stop_training:
            break
    return epoch + 1, evaluated, clock.now, plan


def test_the_budget_plans_from_measured_epochs_and_ends_evaluated(monkeypatch):
    epochs, evaluated, end, plan = simulate(
        300.0, trace_s=30.0, epoch_s=5.0, eval_s=10.0, eval_period=10, cap=1000,
        monkeypatch=monkeypatch,
    )  # fmt: skip
    assert plan.total == epochs < 1000
    assert evaluated[-1] == epochs - 1  # the last epoch is evaluated
    assert 300.0 - 15.0 <= end <= 300.0  # within one epoch and evaluation of the budget
    # by hand: 35 s + 42 x 5 s + 4 periodic evaluations + the last = 295 s for 43 epochs; the
    # traced first epoch did not shrink the plan
    assert epochs >= 42


def test_train_epochs_caps_the_plan(monkeypatch):
    epochs, evaluated, _, plan = simulate(
        1000.0, trace_s=0.0, epoch_s=1.0, eval_s=1.0, eval_period=5, cap=20,
        monkeypatch=monkeypatch,
    )  # fmt: skip
    assert epochs == plan.total == 20 and evaluated == [4, 9, 14, 19]


def test_a_budget_shorter_than_the_first_epoch_ends_after_it(monkeypatch):
    epochs, evaluated, _, plan = simulate(
        20.0, trace_s=30.0, epoch_s=5.0, eval_s=10.0, eval_period=10, cap=100,
        monkeypatch=monkeypatch,
    )  # fmt: skip
    assert epochs == plan.total == 1 and evaluated == [0]


def test_a_resumed_budgeted_run_keeps_its_plan_and_spent_time():
    plan = initial_plan(1000, planned=120, elapsed_s=300.0)
    assert plan.total == 120 and plan.elapsed() >= 300.0
    assert initial_plan(50, planned=None, elapsed_s=None).total == 50


def test_the_lr_schedule_follows_the_plan():
    def schedule_for(total: int) -> LrSchedule:
        return LrSchedule(peak=1.0, final=0.0, epochs=total, kind="cos", warmup_epochs=0.0,
                          warmup_start=0.0, step_count=1)  # fmt: skip

    plan = EpochPlan(total=10)
    scheduler = LrScheduler(schedule_for, steps_per_epoch=1, plan=plan)
    optimizer = keras.optimizers.SGD(learning_rate=1.0)
    scheduler._model = types.SimpleNamespace(optimizer=optimizer)
    scheduler.on_epoch_begin(5)
    scheduler.on_train_batch_begin(0)
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.5)  # half of 10 epochs
    plan.total = 20
    scheduler.on_epoch_begin(5)
    scheduler.on_train_batch_begin(0)
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(0.5 * (1 + 0.7071), abs=1e-3)


@pytest.mark.slow
def test_a_run_out_of_budget_stops_with_its_last_epoch_evaluated_and_saved(tmp_path):
    """A budget of 1 s is spent by the first epoch (graph tracing alone takes longer): the run
    stops after it, evaluated and saved, although train.epochs allows 5."""
    from utils.engine.trainer import Trainer

    overrides = ["model.input_size=[64,64]", "train.epochs=5", "train.time_budget=0.0167",
                 "train.eval_period=3"]  # fmt: skip
    result = Trainer(load_config(tiny_config(tmp_path), overrides), verbose=0).run()
    run = result.run_dir
    assert result.epochs_done == 1
    history = read_history(run.history)
    assert len(history["val_map"]) == 1 and history["val_map"][0] >= 0.0  # evaluated
    assert run.best_weights.is_file() and run.last_weights.is_file()
    assert run.score_threshold.is_file()
    assert load_resume_state(run.resume_state).info.planned_epochs == 1
