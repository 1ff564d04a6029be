"""The run folder: every file name a training run writes, and nothing spelled anywhere else.

A run folder describes itself, so ``predict.py``, ``get_map.py`` and ``train.py --resume`` need
only its path::

    <save_dir>/<name>-<YYYYmmdd-HHMMSS>[-worker][-n]/
        config.yaml              the resolved config (no _base_), loads on its own
        weights/best.weights.h5  best by train.best_metric (EMA weights when EMA is on)
        weights/last.weights.h5  the last finished epoch
        weights/epochNNN.weights.h5   every train.save_period epochs
        resume_state.npz         model + EMA + optimizer state and progress, for --resume
        resume_state.prev.npz    the state before it, the fallback when the newest is damaged
        history.csv              one row per epoch (Keras CSVLogger)
        anchors.txt  anchors.png the anchors autoanchor fitted (when it refitted them)
        score_threshold.json     the display threshold of best F1 on the validation split
        loss.png  map.png        training curves
        tensorboard/             TensorBoard events (eval/ holds the mAP scalars)
        map_out/                 get_map.py's default output
        predictions/             predict.py's default output
        export/                  predict.py --mode export's default output
        benchmark/               predict.py --mode benchmark's exports and their mAP outputs
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

CONFIG_FILE = "config.yaml"
RESUME_FILE = "resume_state.npz"
PREVIOUS_RESUME_FILE = "resume_state.prev.npz"
HISTORY_FILE = "history.csv"
WEIGHTS_DIR = "weights"
WEIGHTS_SUFFIX = ".weights.h5"


@dataclass(frozen=True)
class RunDir:
    """One run folder; its properties are the paths of the files in it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def create(cls, save_dir: Path | str, name: str, worker: str = "") -> RunDir:
        """A new ``<save_dir>/<name>-<timestamp><worker>`` folder (``-2``, ``-3`` on a clash)."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = f"{name}-{stamp}{worker}"
        path, n = Path(save_dir) / base, 1
        while path.exists():
            n += 1
            path = Path(save_dir) / f"{base}-{n}"
        path.mkdir(parents=True)
        return cls(path)

    @classmethod
    def find(cls, folder: Path | str) -> list[RunDir]:
        """The run folders at any depth under ``folder`` that logged at least one epoch."""
        return [cls(history.parent) for history in sorted(Path(folder).rglob(HISTORY_FILE))]

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def weights_dir(self) -> Path:
        return self.path / WEIGHTS_DIR

    @property
    def best_weights(self) -> Path:
        return self.weights_dir / f"best{WEIGHTS_SUFFIX}"

    @property
    def last_weights(self) -> Path:
        return self.weights_dir / f"last{WEIGHTS_SUFFIX}"

    def epoch_weights(self, epoch: int) -> Path:
        """The periodic checkpoint after ``epoch`` (1-based)."""
        return self.weights_dir / f"epoch{epoch:03d}{WEIGHTS_SUFFIX}"

    def inference_weights(self) -> Iterator[Path]:
        """The weights a detector should load, in order of preference (best, then last)."""
        yield self.best_weights
        yield self.last_weights

    @property
    def resume_state(self) -> Path:
        return self.path / RESUME_FILE

    @property
    def previous_resume_state(self) -> Path:
        """The resume state of the epoch before, what ``--resume`` falls back to when
        :attr:`resume_state` is damaged or missing."""
        return self.path / PREVIOUS_RESUME_FILE

    @property
    def anchors(self) -> Path:
        """Anchors fitted by autoanchor at the start of the run; they replace model.anchors."""
        return self.path / "anchors.txt"

    @property
    def anchors_plot(self) -> Path:
        return self.path / "anchors.png"

    @property
    def score_threshold(self) -> Path:
        """The calibrated display threshold (``eval.score_threshold: auto`` reads it)."""
        return self.path / "score_threshold.json"

    @property
    def history(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def plots_dir(self) -> Path:
        """Where the training curves (loss.png, map.png) go."""
        return self.path

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def tensorboard_eval(self) -> Path:
        return self.tensorboard / "eval"

    @property
    def map_out(self) -> Path:
        return self.path / "map_out"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions"

    @property
    def export_dir(self) -> Path:
        return self.path / "export"

    @property
    def benchmark_dir(self) -> Path:
        return self.path / "benchmark"
