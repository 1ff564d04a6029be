"""Atomic checkpoint files of a run folder: weights for users, and the full state to resume.

Everything is written to a temporary file in the same folder and moved into place with
``os.replace``, so a crash (or a NaN stop) mid-write never leaves a broken ``last`` behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np


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


def save_resume_state(
    path: Path,
    info: ResumeInfo,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    ema_state: list[np.ndarray] | None,
) -> None:
    """Everything a resumed run needs, in one .npz written atomically."""
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
    os.replace(tmp, path)


@dataclass(frozen=True, eq=False)
class ResumeState:
    info: ResumeInfo
    model: list[np.ndarray]
    optimizer: list[np.ndarray]
    ema: list[np.ndarray]


def load_resume_state(path: Path) -> ResumeState:
    with np.load(path, allow_pickle=False) as data:
        info = ResumeInfo(**json.loads(str(data["info"])))

        def group(prefix: str) -> list[np.ndarray]:
            count = sum(1 for key in data.files if key.startswith(prefix))
            return [data[f"{prefix}{i}"] for i in range(count)]

        return ResumeState(info, group("model_"), group("opt_"), group("ema_"))


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
