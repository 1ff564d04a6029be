"""A run's length in epochs, and ``train.time_budget``: re-planning it to end within minutes.

Without a budget the plan is ``train.epochs`` throughout. With one, :class:`TimeBudget` measures
the epochs and evaluations done so far and, after every epoch, sets the planned total so that the
remaining epochs plus their evaluations (the last epoch is always evaluated and saved) end within
the budget; ``train.epochs`` caps it. The LR schedule, warm-up, mosaic cut-off and the last
evaluation all read :class:`EpochPlan`, so they follow the new length.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras

logger = logging.getLogger(__name__)

RECENT_EPOCHS = 5  # epoch times are the median of the last few: robust to one slow epoch
REPLAN_LOG_CHANGE = 0.1  # log a new plan when it moves by more than this fraction


@dataclass
class EpochPlan:
    """The planned number of epochs of a run and the training time spent so far."""

    total: int
    elapsed_before: float = 0.0  # seconds spent by earlier processes of a resumed run
    started: float = field(default_factory=lambda: time.monotonic())

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started


def epochs_that_fit(left_s: float, epoch_s: float, eval_s: float, eval_period: int) -> int:
    """How many more epochs fit in ``left_s`` seconds when each takes ``epoch_s``, every
    ``eval_period``-th adds an evaluation of ``eval_s`` and the last is always evaluated
    (``eval_period`` 0: no evaluations at all)."""
    if eval_period <= 0:
        return max(int(left_s // max(epoch_s, 1e-9)), 0)
    per_epoch = epoch_s + eval_s / eval_period
    return max(int((left_s - eval_s) // max(per_epoch, 1e-9)), 0)


class TimeBudget(keras.callbacks.Callback):
    """Re-plans :class:`EpochPlan` after every epoch to end within ``budget_s`` and stops the
    run at the planned epoch. Must come before the evaluation callback in the list: the plan is
    decided at the end of each epoch before anything reads it, so when it makes this epoch the
    last, that epoch is evaluated and saved.

    An epoch's time is from its start to here (training and the validation loss); the gap to the
    next epoch's start holds the evaluation and checkpoint writing. Evaluations not measured yet
    are estimated as ``eval_estimate`` times an epoch.
    """

    def __init__(
        self,
        plan: EpochPlan,
        *,
        budget_s: float,
        cap: int,
        eval_period: int,
        evaluated: Callable[[int], bool],
        eval_estimate: float,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.budget_s = budget_s
        self.cap = cap
        self.eval_period = eval_period
        self.evaluated = evaluated  # epoch (0-based) -> whether the run evaluates it
        self.eval_estimate = eval_estimate
        self.epoch_times: list[float] = []
        self.plain_gaps: list[float] = []  # after epochs without an evaluation
        self.eval_gaps: list[float] = []
        self._begin = self._end = None
        self._end_epoch = -1
        self._logged_total = None

    def on_epoch_begin(self, epoch, logs=None):
        now = time.monotonic()
        if self._end is not None:
            gaps = self.eval_gaps if self.evaluated(self._end_epoch) else self.plain_gaps
            gaps.append(now - self._end)
        self._begin = now

    def _estimates(self) -> tuple[float, float]:
        """Seconds per epoch (with its checkpoint writing) and per evaluation."""
        # The first epoch of a process includes tracing: it counts only while it is the only one.
        measured = self.epoch_times[1:] or self.epoch_times
        epoch_s = statistics.median(measured[-RECENT_EPOCHS:])
        plain = statistics.median(self.plain_gaps[-RECENT_EPOCHS:]) if self.plain_gaps else 0.0
        eval_s = (
            max(statistics.median(self.eval_gaps[-RECENT_EPOCHS:]) - plain, 0.0)
            if self.eval_gaps
            else self.eval_estimate * epoch_s
        )
        return epoch_s + plain, eval_s

    def on_epoch_end(self, epoch, logs=None):
        self._end, self._end_epoch = time.monotonic(), epoch
        self.epoch_times.append(self._end - self._begin)
        epoch_s, eval_s = self._estimates()
        left = self.budget_s - self.plan.elapsed()
        if len(self.epoch_times) == 1 and left >= epoch_s + eval_s:
            # The first epoch of a process includes tracing; it would plan far too short a run
            # (and decay the LR early), so the plan waits for a second, representative epoch.
            return
        more = epochs_that_fit(left, epoch_s, eval_s, self.eval_period)
        total = min(epoch + 1 + more, self.cap)
        last = self._logged_total
        if last is None or abs(total - last) > REPLAN_LOG_CHANGE * last:
            logger.info(
                "time budget %.1f min: %.1f s per epoch, %.1f s per evaluation, %.1f min left: "
                "planning %d epochs%s",
                self.budget_s / 60, epoch_s, eval_s, left / 60, total,
                " (train.epochs caps it)" if total == self.cap else "",
            )  # fmt: skip
            self._logged_total = total
        self.plan.total = total
        if epoch + 1 >= total:
            self._finish(epoch)

    def _finish(self, epoch: int) -> None:
        if epoch + 1 < self.cap:
            logger.info(
                "time budget: epoch %d is the last (%.1f of %.1f min used)",
                epoch + 1, self.plan.elapsed() / 60, self.budget_s / 60,
            )  # fmt: skip
        self.model.stop_training = True


def initial_plan(epochs: int, *, planned: int | None, elapsed_s: float | None) -> EpochPlan:
    """The plan of a new run (``epochs``) or of a resumed one (its saved plan and time)."""
    total = planned if planned is not None else epochs
    return EpochPlan(total=min(total, epochs), elapsed_before=elapsed_s or 0.0)
