"""What the front-door scripts share: logging set-up and one-line errors for user mistakes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from utils.config import Config, ConfigError, load_config
from utils.engine.run_dir import RunDir


def configure_logging(level: int = logging.INFO) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ banner quiet
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )


def fail(message: str) -> int:
    """Print a one-line error for the user and return the exit status."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def load_config_or_exit(path: Path, overrides: list[str]) -> Config:
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        sys.exit(fail(str(exc)))


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """``--run`` and ``--weights``, shared by the scripts that use a trained run."""
    run = RunDir(Path("<run>"))
    parser.add_argument("--run", type=Path, required=True, metavar="RUN_DIR",
                        help=f"run folder made by train.py (its {run.config.name} and best "
                             "weights)")
    parser.add_argument("--weights", type=Path,
                        help=f"weights file to use instead of {run.best_weights} (or "
                             f"{run.last_weights.name} when there is no best)")
