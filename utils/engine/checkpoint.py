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
import weakref
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import keras
import numpy as np
from keras.src.saving import saving_lib

logger = logging.getLogger(__name__)

# What np.load and the reading of the arrays raise for a truncated, overwritten or foreign file.
_UNREADABLE = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile)


class ResumeStateError(ValueError):
    """A resume state that cannot be read; the message names the file."""


@dataclass(frozen=True)
class _WeightsGroup:
    """One group of a ``.weights.h5`` file: its path, attributes and variables by key."""

    path: str
    metadata: dict | None
    variables: list[tuple[str, keras.Variable]]


class _RecordingStore(saving_lib.H5IOStore):
    """Stands in for Keras' H5IOStore during its object walk and records what it would write:
    a group per saveable with metadata (created even when empty, as Keras does) and its
    variables."""

    def __init__(self) -> None:  # no file: nothing is written
        self.groups: list[_WeightsGroup] = []

    def __bool__(self) -> bool:
        return True

    def make(self, path: str, metadata: dict | None = None) -> _RecordingStore:
        self.groups.append(_WeightsGroup(path, metadata, []))
        return self

    def __setitem__(self, key: str, value) -> None:
        if not isinstance(value, keras.Variable):
            raise TypeError(f"a layer saves a computed value under {key!r}, not a variable")
        self.groups[-1].variables.append((key, value))


# Per model, the file layout Keras' walk found (see save_weights_atomic); None: not recordable.
_LAYOUTS: weakref.WeakKeyDictionary[keras.Model, list[_WeightsGroup] | None] = (
    weakref.WeakKeyDictionary()
)


def _weights_layout(model: keras.Model) -> list[_WeightsGroup] | None:
    """What ``model.save_weights`` writes, as groups of variables; None where Keras' walk cannot
    be recorded (a private API: another Keras version may differ, and then the plain call runs)."""
    if model not in _LAYOUTS:
        store = _RecordingStore()
        try:
            saving_lib._save_state(
                model, weights_store=store, assets_store=None, inner_path="",
                visited_saveables=set(),
            )  # fmt: skip
            recorded = {id(var) for group in store.groups for _, var in group.variables}
            if recorded != {id(var) for var in model.weights}:
                raise TypeError("the recorded layout differs from the model's weights")
        except (AttributeError, TypeError) as error:
            logger.debug("weights layout not recorded (%s): using model.save_weights", error)
            _LAYOUTS[model] = None
        else:
            _LAYOUTS[model] = [group for group in store.groups if group.variables or group.metadata]
    return _LAYOUTS[model]


def _write_weights(layout: list[_WeightsGroup], path: Path) -> None:
    """The ``.weights.h5`` file of ``layout``'s variables as they are now, as Keras writes it."""
    with h5py.File(path, "w") as handle:
        for group in layout:
            vars_group = handle.create_group(f"{group.path}/vars" if group.path else "vars")
            for key, value in (group.metadata or {}).items():
                vars_group.attrs[key] = value
            for key, variable in group.variables:
                value = keras.ops.convert_to_numpy(variable)
                dataset = vars_group.create_dataset(key, data=value)
                if keras.backend.standardize_dtype(value.dtype) == "bfloat16":
                    dataset.attrs["dtype"] = "bfloat16"


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    """``model.save_weights(path)`` through a temporary file (``path`` ends in .weights.h5).

    Keras walks the model's object graph on every save (1.3 s for the small-data model on a
    2-core CPU, as long as an epoch of 6 steps); the walk is recorded once per model and the
    same file is written from it directly (``tests/test_trainer_parts.py`` holds the two equal).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    layout = _weights_layout(model)
    if layout is None:
        model.save_weights(tmp)
    else:
        _write_weights(layout, tmp)
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
