"""A trained run folder (see ``utils.engine.run_dir.RunDir``) as a detector: its config, its
weights, its model.

Reading the config needs no TensorFlow, so scripts check a ``--run`` before loading it;
:func:`load_run` builds the model only when called.
"""

from __future__ import annotations

import dataclasses
import logging
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
    to the project after the run was made take their ``configs/base.yaml`` defaults."""
    path = _as_run_dir(run_dir).config
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {run_dir} a run folder made by train.py?")
    return load_run_config(path, list(overrides))


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

    def detector(
        self,
        *,
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        for_map: bool = False,
    ) -> Detector:
        """A :class:`~utils.deploy.detector.Detector` with the config's thresholds unless given:
        ``eval.score_threshold`` (display) or, with ``for_map``, ``eval.map_score_threshold``
        (scoring)."""
        from utils.deploy.detector import DecodeSpec, Detector

        ev = self.config.eval
        default = ev.map_score_threshold if for_map else ev.score_threshold
        return Detector(
            self.model,
            DecodeSpec.from_config(self.config, len(self.class_names)),
            score_threshold=default if score_threshold is None else score_threshold,
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
    return LoadedRun(cfg, names, model, path)
