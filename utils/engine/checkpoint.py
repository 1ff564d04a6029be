"""Atomic checkpoint files of a run folder: weights for users, and the full state to resume.

Everything is written to a temporary file in the same folder and moved into place with
``os.replace``, so a crash (or a NaN stop) mid-write never leaves a broken ``last`` behind.
The resume state replaced by a new one is kept as the run's previous state: when the current
one is damaged (a disk error) or missing (a crash between the two moves), ``--resume`` falls
back to it with a warning and redoes the last epoch.
"""

from __future__ import annotations

import json
import logging
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

logger = logging.getLogger(__name__)

# What np.load and the reading of the arrays raise for a truncated, overwritten or foreign file.
_UNREADABLE = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile)


class ResumeStateError(ValueError):
    """A resume state that cannot be read; the message names the file."""


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    """``model.save_weights(path)`` through a temporary file (``path`` ends in .weights.h5)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    model.save_weights(tmp)
    os.replace(tmp, path)


@dataclass(frozen=True)
class ResumeInfo:
    epochs_done: int  # epochs fully finished
    best_value: float | None  # best value of the selection metric so far
    phase: str  # phase the optimizer state belongs to
    # The run's planned length and its training time so far (both re-planned under
    # train.time_budget); states written before they existed load with the defaults.
    planned_epochs: int | None = None
    elapsed_s: float = 0.0


def save_resume_state(
    path: Path,
    info: ResumeInfo,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    ema_state: list[np.ndarray] | None,
    *,
    previous: Path | None = None,
) -> None:
    """Everything a resumed run needs, in one .npz written atomically; with ``previous``, the
    state it replaces is kept there (see :func:`load_resume_state`)."""
    arrays: dict[str, np.ndarray] = {"info": np.array(json.dumps(asdict(info)))}
    for i, w in enumerate(model.weights):
        arrays[f"model_{i}"] = np.asarray(w.numpy())
    for i, v in enumerate(optimizer.variables):
        arrays[f"opt_{i}"] = np.asarray(v.numpy())
    for i, v in enumerate(ema_state or []):
        arrays[f"ema_{i}"] = v
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    if previous is not None and path.is_file():
        # A hard link keeps the old state under `previous` while `path` never goes missing:
        # a reader (or a kill) between the two steps still finds a complete state at `path`.
        link = previous.with_name(f".tmp-{os.getpid()}-{previous.name}")
        link.unlink(missing_ok=True)
        os.link(path, link)
        os.replace(link, previous)
    os.replace(tmp, path)


@dataclass(frozen=True, eq=False)
class ResumeState:
    info: ResumeInfo
    model: list[np.ndarray]
    optimizer: list[np.ndarray]
    ema: list[np.ndarray]


def read_resume_info(path: Path) -> ResumeInfo:
    """Only the progress record of the resume state in ``path`` (the arrays stay unread).

    Raises:
        ResumeStateError: naming the file, when it is missing or damaged.
    """
    return _read_resume_state(Path(path), arrays=False).info


def _read_resume_state(path: Path, *, arrays: bool = True) -> ResumeState:
    if not path.is_file():
        raise ResumeStateError(f"{path}: not found (did an epoch finish?)")
    try:
        with np.load(path, allow_pickle=False) as data:
            info = ResumeInfo(**json.loads(str(data["info"])))
            if not arrays:
                return ResumeState(info, [], [], [])

            def group(prefix: str) -> list[np.ndarray]:
                count = sum(1 for key in data.files if key.startswith(prefix))
                return [data[f"{prefix}{i}"] for i in range(count)]

            return ResumeState(info, group("model_"), group("opt_"), group("ema_"))
    except _UNREADABLE as err:
        raise ResumeStateError(f"{path}: damaged, cannot resume from it ({err})") from None


def load_resume_state(path: Path, *, previous: Path | None = None) -> ResumeState:
    """The resume state in ``path``, or, when that is missing or damaged and ``previous`` can be
    read, the state before it (with a warning: the run redoes that epoch).

    Raises:
        ResumeStateError: naming the file(s), when no state can be read.
    """
    path = Path(path)
    try:
        return _read_resume_state(path)
    except ResumeStateError as err:
        if previous is None or not Path(previous).is_file():
            raise
        try:
            state = _read_resume_state(Path(previous))
        except ResumeStateError as older:
            raise ResumeStateError(f"{err}; the state before it is no better: {older}") from None
        logger.warning(
            "%s; resuming from the state before it, %s (after epoch %d)",
            err, previous, state.info.epochs_done,
        )  # fmt: skip
        return state


def assign_all(variables, values: list[np.ndarray], what: str) -> None:
    """Assign saved arrays to variables in order, checking count and shapes."""
    variables = list(variables)
    if len(variables) != len(values):
        raise ValueError(
            f"resume: {what} has {len(variables)} variables, the checkpoint {len(values)}: "
            "was the config changed since the run started?"
        )
    for var, value in zip(variables, values, strict=True):
        if tuple(var.shape) != tuple(value.shape):
            raise ValueError(
                f"resume: {what} variable {var.name} is {var.shape}, saved {value.shape}"
            )
        var.assign(value)
