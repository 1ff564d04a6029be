"""A tiny run folder as train.py leaves it (config.yaml + untrained weights), for plumbing tests."""

from __future__ import annotations

from pathlib import Path

from tests.training_fixtures import tiny_config
from utils.config import load_config, save_config


def make_run(tmp_path: Path, *, weights: bool = True) -> Path:
    """``tmp_path/run`` over :func:`tests.training_fixtures.make_tiny_voc` data (128 px, alpha
    0.25); ``weights/best.weights.h5`` holds freshly initialised weights unless ``weights`` is
    False."""
    from nets.yolo import build_model

    cfg = load_config(tiny_config(tmp_path))
    run = tmp_path / "run"
    (run / "weights").mkdir(parents=True)
    save_config(cfg, run / "config.yaml")
    if weights:
        build_model(cfg.model, 2).save_weights(run / "weights" / "best.weights.h5")
    return run
