"""LR scaling/clamping and schedule shapes, against hand-computed values."""

import math
from dataclasses import replace
from pathlib import Path

import pytest

from utils.config import load_config
from utils.engine.lr_schedule import LrSchedule, build_schedule, scaled_peak_and_final

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def train_cfg(monkeypatch):
    monkeypatch.chdir(REPO)
    return load_config(REPO / "configs" / "base.yaml").train


def test_scaling_and_clamping(train_cfg):
    sgd = replace(train_cfg, optimizer="sgd", init_lr=1e-2, min_lr_ratio=0.01)
    assert scaled_peak_and_final(sgd, 64) == pytest.approx((1e-2, 1e-4))
    assert scaled_peak_and_final(sgd, 16) == pytest.approx((2.5e-3, 2.5e-5))
    assert scaled_peak_and_final(sgd, 1) == pytest.approx((5e-4, 5e-6))  # clamped up to the minimum
    assert scaled_peak_and_final(sgd, 1024) == pytest.approx((5e-2, 5e-4))  # clamped down
    adam = replace(train_cfg, optimizer="adam", init_lr=1e-3)
    assert scaled_peak_and_final(adam, 16)[0] == pytest.approx(3e-4)  # 2.5e-4 clamped to 3e-4


def test_cosine_with_warmup():
    s = LrSchedule(
        peak=1.0, final=0.01, epochs=12, kind="cos", warmup_epochs=2, warmup_start=0.1, step_count=1
    )
    assert s(0) == pytest.approx(0.1)
    assert s(1) == pytest.approx(0.1 + 0.9 * 0.25)  # quadratic warm-up
    assert s(2) == pytest.approx(1.0)
    assert s(7) == pytest.approx(0.01 + 0.99 * 0.5)  # half-way through the cosine
    assert s(12) == pytest.approx(0.01)
    assert s(20) == pytest.approx(0.01)


def test_step_schedule():
    s = LrSchedule(
        peak=1.0,
        final=0.01,
        epochs=30,
        kind="step",
        warmup_epochs=0,
        warmup_start=0.1,
        step_count=3,
    )
    assert s(0) == pytest.approx(1.0)
    assert s(10.5) == pytest.approx(0.1)
    assert s(29.9) == pytest.approx(0.01)


def test_build_schedule_caps_warmup(train_cfg):
    cfg = replace(train_cfg, epochs=20, warmup_epochs=3.0, warmup_max_ratio=0.05)
    schedule = build_schedule(cfg, 64, cfg.epochs)
    assert schedule.warmup_epochs == pytest.approx(1.0)
    assert schedule.peak == pytest.approx(cfg.init_lr)
    assert not math.isnan(schedule(0.5))
