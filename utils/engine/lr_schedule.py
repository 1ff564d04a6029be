"""Learning-rate schedule: batch-size scaling with clamping, warm-up, then cosine or step decay.

The LR is a pure function of the position in the run measured in epochs (a float, so it moves
every step), which makes a resumed run continue on exactly the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from utils.config import TrainConfig


@dataclass(frozen=True)
class LrSchedule:
    peak: float  # LR after warm-up
    final: float  # LR at the end of the run
    epochs: int
    kind: str  # "cos" | "step"
    warmup_epochs: float
    warmup_start: float
    step_count: int

    def __call__(self, epoch: float) -> float:
        """LR at ``epoch`` (float: epoch index + fraction of the epoch done)."""
        if self.warmup_epochs > 0 and epoch < self.warmup_epochs:
            ramp = (epoch / self.warmup_epochs) ** 2  # quadratic, as YOLOX / the reference repos
            return self.warmup_start + (self.peak - self.warmup_start) * ramp
        span = max(self.epochs - self.warmup_epochs, 1e-9)
        progress = min(max((epoch - self.warmup_epochs) / span, 0.0), 1.0)
        if self.kind == "cos":
            return self.final + 0.5 * (self.peak - self.final) * (1 + math.cos(math.pi * progress))
        # step: fall geometrically from peak to final in step_count equal steps
        steps = max(self.step_count, 1)
        if steps == 1:
            return self.peak
        index = min(int(progress * steps), steps - 1)
        return self.peak * (self.final / self.peak) ** (index / (steps - 1))


def scaled_peak_and_final(train: TrainConfig, batch_size: int) -> tuple[float, float]:
    """Scale init LR by ``batch_size / nominal_batch_size`` and clamp, as the reference repos do."""
    low, high = train.lr_limits_adam if train.optimizer == "adam" else train.lr_limits_sgd
    ratio = batch_size / train.nominal_batch_size
    peak = min(max(ratio * train.init_lr, low), high)
    final = min(max(ratio * train.init_lr * train.min_lr_ratio, low * 1e-2), high * 1e-2)
    return peak, final


def build_schedule(train: TrainConfig, batch_size: int, epochs: int) -> LrSchedule:
    """The schedule of a whole run of ``epochs`` (``train.epochs``, or what the time budget
    plans) for a phase trained at ``batch_size``."""
    peak, final = scaled_peak_and_final(train, batch_size)
    return LrSchedule(
        peak=peak,
        final=final,
        epochs=epochs,
        kind=train.lr_schedule,
        warmup_epochs=min(train.warmup_epochs, train.warmup_max_ratio * epochs),
        warmup_start=max(train.warmup_lr_ratio * peak, 1e-6),
        step_count=train.step_count,
    )
