"""What the front-door scripts share: a quiet console, logging set-up and one-line errors for
user mistakes."""

from __future__ import annotations

import argparse
import contextlib
import importlib.abc
import importlib.util
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

from utils.config import Config, ConfigError, load_config
from utils.engine.run_dir import RunDir


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[None]:
    """Sends file descriptor 2 (what C++ libraries write to) to a temporary file; the text is
    written to stderr after all if the block raises, since it may explain the failure."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                capture.seek(0)
                sys.stderr.write(capture.read().decode(errors="replace"))


class _MutedLoader(importlib.abc.Loader):
    """Runs a module's import with its native stderr output captured."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # the module keeps its own
        with _native_stderr_captured():
            self.loader.exec_module(module)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` once, whoever imports it first (Keras, tf.data code, ...), and hands
    out a loader that mutes it: its native libraries log at load time, before they read
    TF_CPP_MIN_LOG_LEVEL ("All log messages before absl::InitializeLog() ...", "cudart_stub.cc:
    Could not find cuda drivers ..." on a CPU machine)."""

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and find_spec below must not come back here
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _MutedLoader(spec.loader)
        return spec


def quiet_tensorflow() -> None:
    """Keeps TensorFlow's start-up and C++ log lines off the console; call it before TensorFlow
    is imported (later calls change nothing). Its errors still reach the user as Python
    exceptions; a failing import shows what it wrote."""
    if "tensorflow" in sys.modules:
        return
    # 3: also the "failed call to cuInit: ... CUDA error" line a CPU machine gets at first use.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())


def configure_logging(level: int = logging.INFO, *, verbose: bool = False) -> None:
    """Logging for the front doors: progress (INFO) on stdout, warnings and errors on stderr, so
    stderr holds only what went wrong; TensorFlow's own lines only when ``verbose``."""
    if not verbose:
        quiet_tensorflow()
    progress = logging.StreamHandler(sys.stdout)
    progress.addFilter(lambda record: record.levelno < logging.WARNING)
    problems = logging.StreamHandler(sys.stderr)
    problems.setLevel(logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    for handler in (progress, problems):
        handler.setFormatter(formatter)
    logging.basicConfig(level=level, handlers=[progress, problems])


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="keep TensorFlow's start-up and C++ log lines (hidden by default)",
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
    parser.add_argument(
        "--run",
        type=Path,
        required=True,
        metavar="RUN_DIR",
        help=f"run folder made by train.py (its {run.config.name} and best weights)",
    )
    parser.add_argument(
        "--weights",
        type=Path,
        help=f"weights file to use instead of {run.best_weights} (or "
        f"{run.last_weights.name} when there is no best)",
    )
