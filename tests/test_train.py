"""Training end to end on a tiny dataset: overfit to a high mAP, kill and resume, resume an old
run folder, NaN guard."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import TRAINED_RUN_GROUP
from tests.training_fixtures import REPO, tiny_config
from utils.config import load_config, load_run_config
from utils.engine.checkpoint import load_resume_state
from utils.engine.run_dir import RunDir
from utils.plots import read_history

pytestmark = pytest.mark.slow


@TRAINED_RUN_GROUP
def test_overfit_few_images_reaches_high_map(trained_run_dir):
    """The session's trained run (tests/run_fixtures.py: 16 tiny images, 80 epochs) learned its
    data and left a complete, self-describing run folder."""
    run = RunDir(trained_run_dir)
    history = read_history(run.history)
    maps = [round(v, 3) for v in history["val_map"] if np.isfinite(v)]
    assert maps and max(maps) >= 0.9, maps
    assert history["epoch"] == list(range(80))
    for path in (
        run.config,
        run.history,
        run.plots_dir / "loss.png",
        run.plots_dir / "map.png",
        run.resume_state,
        run.best_weights,
        run.last_weights,
    ):
        assert path.is_file(), path
    state = load_resume_state(run.resume_state)
    assert state.info.epochs_done == 80 and state.info.best_value == pytest.approx(max(maps), 1e-3)
    assert load_run_config(run.config) == load_config(run.config)  # complete: nothing filled in
    # The calibrated display threshold of that learned model: a box count users can trust.
    calibrated = json.loads(run.score_threshold.read_text())
    assert calibrated["f1"] >= 0.8 and 0.0 < calibrated["score_threshold"] < 1.0


def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), "--quiet", *args]


def test_kill_and_resume_continues_at_the_right_epoch(tmp_path):
    config = tiny_config(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    epochs = 12
    overrides = [f"train.epochs={epochs}", "train.eval_period=0"]
    proc = subprocess.Popen(
        _train_cmd("--config", str(config), *overrides),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    logs = tmp_path / "logs"
    deadline = time.time() + 150
    state = None
    while time.time() < deadline and proc.poll() is None:
        states = [run.resume_state for run in map(RunDir, logs.glob("*"))]
        states = [path for path in states if path.is_file()]
        if states and load_resume_state(states[0]).info.epochs_done >= 2:
            state = states[0]
            break
        time.sleep(0.2)
    assert state is not None, proc.stderr.read() if proc.poll() is not None else "timed out"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = RunDir(state.parent)
    done_before = load_resume_state(state).info.epochs_done
    assert done_before < epochs, "the run finished before it could be killed"

    resumed = subprocess.run(
        _train_cmd("--resume", str(run), f"train.epochs={epochs}"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    final = load_resume_state(run.resume_state)
    assert final.info.epochs_done == epochs
    # optimizer state came back: its step counter covers all epochs (2 steps each), not only
    # the epochs after the resume
    assert int(final.optimizer[0]) == epochs * 2
    logged = read_history(run.history)["epoch"]
    assert logged[-1] == epochs - 1
    assert logged[0] == 0
    assert len(logged) >= epochs - done_before


def test_resume_continues_a_run_folder_written_by_an_older_version(tmp_path):
    """--resume on a run whose config.yaml predates settings added since (tests/fixtures/old_run:
    demo.yaml as saved at commit bcb70c3) takes those from base.yaml and trains on."""
    from nets.yolo import build_model, set_backbone_trainable
    from utils.engine.checkpoint import ResumeInfo, save_resume_state
    from utils.engine.ema import ModelEMA
    from utils.engine.trainer import build_optimizer

    tiny = load_config(tiny_config(tmp_path))  # the tiny data, in place of the demo set
    run = RunDir(tmp_path / "old-run")
    run.path.mkdir()
    shutil.copy(REPO / "tests" / "fixtures" / "old_run" / "config.yaml", run.config)
    overrides = [
        f"model.anchors={tiny.model.anchors}",
        "model.input_size=[64,64]",
        f"data.root={tiny.data.root}",
        f"data.classes={tiny.data.classes}",
        "data.train_split=[TINY/train]",
        "data.val_split=[TINY/train]",
        "data.demo_dataset=null",
        "train.epochs=2",
        "train.batch_size=4",
        "train.eval_period=0",
    ]
    # One finished epoch of the old run: its weights, EMA and optimizer state, built here.
    cfg = load_run_config(run.config, overrides)
    model = build_model(cfg.model, 2)
    set_backbone_trainable(model, True)  # the demo recipe has no frozen phase
    optimizer = build_optimizer(cfg, model.trainable_variables)
    optimizer.build(model.trainable_variables)
    ema = ModelEMA(model, decay=cfg.train.ema_decay, tau=cfg.train.ema_tau)
    info = ResumeInfo(epochs_done=1, best_value=None, phase="unfreeze")
    save_resume_state(run.resume_state, info, model, optimizer, ema.state())

    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    resumed = subprocess.run(
        _train_cmd("--resume", str(run), *overrides),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_resume_state(run.resume_state).info.epochs_done == 2
    assert read_history(run.history)["epoch"] == [1]  # only the second epoch was left
    # the run folder now holds the full, current config
    assert load_config(run.config).augment.mosaic_scale == cfg.augment.mosaic_scale


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    import utils.engine.trainer as trainer_module

    steps_per_epoch = 2  # 8 images, batch 4

    class NanFromSecondEpoch:
        def __init__(self, loss):
            self.loss = loss
            self.PARTS = loss.PARTS
            self.calls = tf.Variable(0, trainable=False)

        def __call__(self, y_true, outputs):
            total, parts = self.loss(y_true, outputs)
            self.calls.assign_add(1)
            poisoned = self.calls > steps_per_epoch
            return tf.where(poisoned, tf.constant(np.nan, total.dtype), total), parts

    class PoisonedTrainer(trainer_module.Trainer):
        def build(self):
            super().build()
            self.loss_fn = NanFromSecondEpoch(self.loss_fn)

    cfg = load_config(tiny_config(tmp_path), ["train.epochs=3", "train.eval_period=0"])
    with pytest.raises(trainer_module.NonFiniteLossError, match=r"epoch 2, step 1"):
        PoisonedTrainer(cfg, verbose=0).run()
    run = RunDir(next((tmp_path / "logs").iterdir()))
    state = load_resume_state(run.resume_state)
    assert state.info.epochs_done == 1
    assert all(np.isfinite(w).all() for w in state.model)
    from nets.yolo import build_model

    model = build_model(cfg.model, 2)
    model.load_weights(run.last_weights)
    assert all(np.isfinite(w.numpy()).all() for w in model.weights)
