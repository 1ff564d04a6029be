"""A tiny run folder as train.py leaves it (config.yaml + untrained weights), for plumbing tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tests.training_fixtures import tiny_config
from utils.config import load_config, save_config
from utils.engine.run_dir import RunDir


def make_run(
    tmp_path: Path, *, weights: bool = True, overrides: Sequence[str] = ()
) -> Path:
    """``tmp_path/run`` over :func:`tests.training_fixtures.make_tiny_voc` data (128 px, alpha
    0.25, config ``overrides``); ``weights/best.weights.h5`` holds freshly initialised weights
    unless ``weights`` is False."""
    from nets.yolo import build_model

    cfg = load_config(tiny_config(tmp_path), list(overrides))
    run = RunDir(tmp_path / "run")
    run.weights_dir.mkdir(parents=True)
    save_config(cfg, run.config)
    if weights:
        build_model(cfg.model, 2).save_weights(run.best_weights)
    return run.path


def make_trained_run(tmp_path: Path) -> Path:
    """A run folder whose model really learned its data: the recipe of test_train's overfit
    test (16 tiny images, 80 epochs, plain neck convs; mAP@0.5 above 0.9), for tests that
    compare a trained detector's numbers, such as quantized exports against float."""
    from utils.engine.trainer import Trainer

    overrides = ["train.epochs=80", "train.eval_period=40", "train.ema=false",
                 "train.init_lr=5e-3", "loss.obj_ratio=8.0", "loss.box_ratio=0.5"]  # fmt: skip
    cfg = load_config(tiny_config(tmp_path, num_images=16), overrides)
    return Trainer(cfg, verbose=0).run().run_dir.path
