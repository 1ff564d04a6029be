"""A trained run folder (see ``utils.engine.run_dir.RunDir``) as a detector: its config, its
weights, its model.

Reading the config needs no TensorFlow, so scripts check a ``--run`` before loading it;
:func:`load_run` builds the model only when called.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from utils.config import Config, class_names, load_run_config
from utils.engine.run_dir import RunDir

if TYPE_CHECKING:
    import keras

    from utils.deploy.detector import Detector

logger = logging.getLogger(__name__)

TRAIN_HINT = "train one first: python train.py --config configs/demo.yaml"


class MissingWeightsError(FileNotFoundError):
    """A run folder without weights; the message says how to get some."""


def _as_run_dir(run_dir: RunDir | Path | str) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir(Path(run_dir))


def run_config(run_dir: RunDir | Path | str, overrides: Sequence[str] = ()) -> Config:
    """The resolved config of a run folder with ``key=value`` overrides applied; settings added
    to the project after the run was made take their ``configs/base.yaml`` defaults, and anchors
    that autoanchor fitted are read from the folder itself (so a moved run folder keeps them)."""
    run = _as_run_dir(run_dir)
    if not run.config.is_file():
        raise FileNotFoundError(
            f"{run.config}: not found; is {run_dir} a run folder made by train.py?"
        )
    fitted = [f"model.anchors={run.anchors}"] if run.anchors.is_file() else []
    return load_run_config(run.config, [*fitted, *overrides])


@dataclass(frozen=True)
class DisplayThreshold:
    """The score threshold of the boxes predict.py shows, and where it comes from."""

    value: float
    source: str


def display_threshold(cfg: Config, run_dir: RunDir | Path | str | None = None) -> DisplayThreshold:
    """``eval.score_threshold``: a number as given; ``auto`` the threshold of best F1 on the
    validation split that the run stored, else ``eval.uncalibrated_score_threshold``.

    Raises:
        ValueError: naming the file, when the stored threshold cannot be read.
    """
    ev = cfg.eval
    if ev.score_threshold != "auto":
        return DisplayThreshold(float(ev.score_threshold), "eval.score_threshold")
    path = _as_run_dir(run_dir).score_threshold if run_dir is not None else None
    if path is None or not path.is_file():
        why = f"no {path.name} in the run folder" if path else "no run folder"
        return DisplayThreshold(
            ev.uncalibrated_score_threshold, f"eval.uncalibrated_score_threshold: {why}"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        value = float(record["score_threshold"])
        f1, epoch = float(record["f1"]), int(record["epoch"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: damaged calibrated threshold ({exc}); delete it or pass "
                         "--conf / eval.score_threshold=<number>") from None  # fmt: skip
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{path}: score_threshold {value} is not within [0, 1]")
    return DisplayThreshold(value, f"auto: best F1 {f1:.3f} on val at epoch {epoch}")


def find_weights(run_dir: RunDir | Path | str) -> Path:
    """The weights a run's detector loads: its best, else its last."""
    run = _as_run_dir(run_dir)
    candidates = list(run.inference_weights())
    for path in candidates:
        if path.is_file():
            return path
    names = " or ".join(path.name for path in candidates)
    raise MissingWeightsError(
        f"no weights in {run.weights_dir} ({names}); {TRAIN_HINT}, or pass --weights FILE"
    )


@dataclass(frozen=True)
class LoadedRun:
    """A trained detector as a run folder describes it."""

    config: Config
    class_names: list[str]
    model: keras.Model
    weights: Path
    run_dir: RunDir

    def detector(
        self,
        *,
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        for_map: bool = False,
    ) -> Detector:
        """A :class:`~utils.deploy.detector.Detector` with the config's thresholds unless given:
        the display threshold (:func:`display_threshold`) or, with ``for_map``,
        ``eval.map_score_threshold`` (scoring)."""
        from utils.deploy.detector import DecodeSpec, Detector

        ev = self.config.eval
        if score_threshold is not None:
            default = score_threshold
        elif for_map:
            default = ev.map_score_threshold
        else:
            default = display_threshold(self.config, self.run_dir).value
        return Detector(
            self.model,
            DecodeSpec.from_config(self.config, len(self.class_names)),
            score_threshold=default,
            nms_iou=ev.nms_iou if nms_iou is None else nms_iou,
            max_detections=ev.max_detections,
        )


def load_run(
    run_dir: RunDir | Path | str,
    *,
    weights: Path | str | None = None,
    overrides: Sequence[str] = (),
    config: Config | None = None,
) -> LoadedRun:
    """Builds the model of a run folder and loads its best weights (or ``weights``).

    ``config`` skips reading the run's config again when the caller already has it.
    """
    cfg = config if config is not None else run_config(run_dir, overrides)
    if weights is None:
        path = find_weights(run_dir)
    else:
        path = Path(weights)
        if not path.is_file():
            raise MissingWeightsError(f"--weights {path}: file not found; {TRAIN_HINT}")
    from nets.yolo import build_model  # TensorFlow and every backbone family: only when needed

    names = class_names(cfg)
    # The trained weights replace the backbone's anyway: never download ImageNet ones for that.
    model = build_model(dataclasses.replace(cfg.model, pretrained=None), len(names))
    try:
        model.load_weights(path)
    except ValueError as exc:
        raise ValueError(f"{path}: weights do not fit the run's model ({exc})") from None
    except (OSError, zipfile.BadZipFile) as exc:  # h5py (or zipfile for .keras): not such a file
        raise ValueError(f"{path}: not a Keras weights file, or a damaged one ({exc})") from None
    logger.info("loaded %s", path)
    return LoadedRun(cfg, names, model, path, _as_run_dir(run_dir))
