"""Every export format of a run against its Keras detector: one table and a release gate.

:func:`benchmark_formats` exports the run's detector in each format with the mAP thresholds
(``eval.map_score_threshold``, so each file is scored as ``get_map.py`` scores the run), then per
format measures the file size, the median milliseconds per image at batch 1 (the same images,
one call each, round-robin) and the mAP@0.5 of a split (``get_map.py --model``'s path). A
format whose mAP falls more than ``max_map_drop`` below the Keras detector's fails.
``predict.py --mode benchmark`` is the front door; nothing here prints.
"""

from __future__ import annotations

import importlib.util
import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utils.data.pipeline import decode_image
from utils.deploy.export import FORMATS, export, load_exported, size_mib
from utils.deploy.runs import LoadedRun
from utils.eval.evaluate import SplitEvaluation

logger = logging.getLogger(__name__)

Echo = Callable[[str], None]
KERAS = "keras"
# Images of the split the speed is measured on (each timed call detects one of them).
TIMED_IMAGES = 4
WARMUP_CALLS = 2  # per image, untimed: graph tracing, allocation, delegate set-up


@dataclass(frozen=True)
class FormatResult:
    """One row of the table; ``size_mib`` of the Keras row is its weights file."""

    name: str
    size_mib: float
    ms_per_image: float
    voc_map: float
    map_drop: float  # the Keras detector's mAP minus this one's
    passed: bool


def default_formats() -> list[str]:
    """Every format this installation can write and run (ONNX needs tf2onnx and onnxruntime)."""
    onnx = all(importlib.util.find_spec(m) for m in ("tf2onnx", "onnxruntime"))
    return [fmt for fmt in FORMATS if fmt != "onnx" or onnx]


def median_ms(detect: Callable[[np.ndarray], Any], images: Sequence[np.ndarray], repeats: int
              ) -> float:  # fmt: skip
    """Median milliseconds of ``detect(image)`` over ``repeats`` calls cycling through
    ``images``, after ``WARMUP_CALLS`` untimed calls per image."""
    for image in images:
        for _ in range(WARMUP_CALLS):
            detect(image)
    times = []
    for i in range(repeats):
        image = images[i % len(images)]
        start = time.perf_counter()
        detect(image)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def benchmark_formats(
    run: LoadedRun,
    run_dir: Path,
    formats: Sequence[str],
    out: Path,
    *,
    split: str,
    calibration: Sequence[np.ndarray],
    repeats: int,
    max_map_drop: float,
    echo: Echo,
    progress: Callable[..., Any],
) -> list[FormatResult]:
    """The Keras detector's row, then one per format, exported under ``out/export`` with the
    mAP score threshold and scored into ``out/map_out/<name>/`` (see the module docstring)."""
    detector = run.detector(for_map=True)
    echo(f"exporting {', '.join(formats)} to {out / 'export'} (score threshold "
         f"{detector.score_threshold}: the mAP one)")
    paths = export(detector, formats, out / "export", calibration=calibration)

    def evaluate(name: str, model: Path | None) -> tuple[float, list]:
        """mAP@0.5 of the run's weights (``model`` None) or an export, and the split's samples."""
        evaluation = SplitEvaluation(run_dir, run.config, split, out / "map_out" / name,
                                     echo=logger.debug)
        evaluation.predict(run.weights, 1, progress=progress, model=model)
        return evaluation.score().voc_map, evaluation.samples

    reference, samples = evaluate(KERAS, None)
    timed = [decode_image(str(s.image_path)).numpy() for s in samples[:TIMED_IMAGES]]
    keras_ms = median_ms(lambda image: detector.detect([image]), timed, repeats)
    rows = [FormatResult(KERAS, run.weights.stat().st_size / 2**20, keras_ms, reference, 0.0,
                         True)]  # fmt: skip
    for fmt, path in paths.items():
        echo(f"{fmt}: scoring {path.name} on the {split} split")
        voc_map, _ = evaluate(fmt, path)
        ms = median_ms(load_exported(path), timed, repeats)
        drop = reference - voc_map
        rows.append(FormatResult(fmt, size_mib(path), ms, voc_map, drop, drop <= max_map_drop))
    return rows


def format_table(rows: Sequence[FormatResult], max_map_drop: float, split: str) -> str:
    """The rows as a console table, with the gate's verdict per format."""
    keras_ms = rows[0].ms_per_image
    lines = [
        f"{'format':<15} {'size MiB':>8} {'ms/image':>9} {'speed-up':>8} "
        f"{split + ' mAP@0.5':>13} {'drop':>8}  gate (drop <= {max_map_drop:g})"
    ]
    for row in rows:
        keras = row.name == KERAS
        drop = "" if keras else f"{row.map_drop:+.4f}"
        gate = "reference" if keras else ("pass" if row.passed else "FAIL")
        lines.append(
            f"{row.name:<15} {row.size_mib:>8.2f} {row.ms_per_image:>9.1f} "
            f"{keras_ms / row.ms_per_image:>7.2f}x {row.voc_map:>13.4f} {drop:>8}  {gate}"
        )
    return "\n".join(lines)
