"""A run scored on a split, the work behind ``get_map.py``: detection files, then the report.

:class:`SplitEvaluation` loads the split's samples once; :meth:`~SplitEvaluation.predict` runs
the run's detector, or an exported file, over them (down to ``eval.map_score_threshold``, at most
``eval.max_detections`` per image) and writes the detection and ground-truth files;
:meth:`~SplitEvaluation.score` reads the detection files back, needs no model, and writes
``results.json`` and the plots (see ``utils.eval.scoring`` for the files). Nothing here writes
to the console itself: lines go through ``echo``, the progress bar through ``progress`` (called
like ``tqdm``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from utils.config import Config, class_names
from utils.data.formats import load_config_split
from utils.deploy.runs import display_threshold
from utils.eval.metrics import ImageDetections
from utils.eval.scoring import (
    DETECTIONS_DIR,
    GROUND_TRUTH_DIR,
    EvaluationReport,
    format_table,
    read_detections,
    score_detections,
    split_names,
    truths_of,
    write_detections,
    write_ground_truth,
    write_report,
)

Echo = Callable[[str], None]


def exported_detections(model: Path, paths: Sequence[Path]) -> Iterator[ImageDetections]:
    """Detections of image files by an exported detector, in order. Images are decoded as the
    run's own detector decodes them (``utils.data.pipeline.decode_image``)."""
    from utils.data.pipeline import decode_image
    from utils.deploy.export import load_exported

    if not model.exists():
        raise FileNotFoundError(f"--model {model}: not found")
    detect = load_exported(model)  # loaded now, detecting as the caller iterates
    return (detect(decode_image(str(path)).numpy()) for path in paths)


class SplitEvaluation:
    """The samples of one ``--split`` of a run's dataset, and where their results go.

    Args:
        run_dir: the run folder (its weights, unless :meth:`predict` is given others).
        cfg: the run's config, overrides applied.
        split: ``train``, ``val``, ``test`` or a split name (see ``scoring.split_names``).
        out: output folder.
        echo: prints one line for the user.

    ``timings`` collects seconds per step (``load model``, ``predict``, ``score``, ``plots``).
    """

    def __init__(self, run_dir: Path, cfg: Config, split: str, out: Path, echo: Echo) -> None:
        self.run_dir = run_dir
        self.cfg = cfg
        self.splits = split_names(cfg, split)
        self.samples = load_config_split(cfg, self.splits, key=f"--split {split}")
        self.ids = [s.image_id for s in self.samples]
        self.names = class_names(cfg)
        self.out = out
        self.echo = echo
        self.timings: dict[str, float] = {}

    def predict(
        self,
        weights: Path | None,
        batch: int,
        progress: Callable[..., Any],
        model: Path | None = None,
    ) -> list[ImageDetections]:
        """Detects on every image, ``batch`` per call, and writes detection and truth files.

        ``model``: an exported file (see ``utils.deploy.export.load_exported``) run one image
        at a time instead of the run's weights; its score threshold is the one baked in.
        """
        start = time.perf_counter()
        paths = [s.image_path for s in self.samples]
        if model is None:
            from utils.deploy.runs import load_run  # TensorFlow: only when predicting

            run = load_run(self.run_dir, weights=weights, config=self.cfg)
            found = run.detector(for_map=True).detect_files(paths, batch)
        else:
            found = exported_detections(model, paths)
        self.timings["load model"] = time.perf_counter() - start

        start = time.perf_counter()
        detections = list(progress(found, total=len(paths), unit="img", desc="predict"))
        self.timings["predict"] = time.perf_counter() - start

        write_detections(self.out / DETECTIONS_DIR, self.ids, detections, self.names)
        write_ground_truth(self.out / GROUND_TRUTH_DIR, self.ids, truths_of(self.samples),
                           self.names)
        count = sum(len(d.scores) for d in detections)
        self.echo(f"{count} detections of {len(self.ids)} images written to "
                  f"{self.out / DETECTIONS_DIR}")
        return detections

    def score(self) -> EvaluationReport:
        """Scores the detection files: VOC AP at ``eval.map_iou``, COCO mAP, P/R/F1 at
        ``eval.score_threshold``; writes the report and the plots, and, for COCO data, the
        detections with the annotation file's own ids."""
        ev = self.cfg.eval
        start = time.perf_counter()
        detections = read_detections(self.out / DETECTIONS_DIR, self.ids, self.names)
        report, curves = score_detections(
            truths_of(self.samples),
            detections,
            [(s.height, s.width) for s in self.samples],
            self.names,
            iou_threshold=ev.map_iou,
            score_threshold=display_threshold(self.cfg, self.run_dir).value,
        )
        self.timings["score"] = time.perf_counter() - start

        start = time.perf_counter()
        settings = {
            "run": str(self.run_dir),
            "split": self.splits,
            "map_score_threshold": ev.map_score_threshold,
            "nms_iou": ev.nms_iou,
            "max_detections": ev.max_detections,
        }
        write_report(self.out, report, curves, settings)
        self.timings["plots"] = time.perf_counter() - start
        self.echo(format_table(report))
        self.echo(f"results and plots written to {self.out}")
        if self.cfg.data.format == "coco":
            self._write_coco_results(detections)
        return report

    def _write_coco_results(self, detections: Sequence) -> None:
        from utils.data.coco import write_detection_results

        data = self.cfg.data
        for path in write_detection_results(
            self.out, data.root, self.splits, data.coco_images, self.samples, detections,
            self.names,
        ):  # fmt: skip
            self.echo(f"detections with the annotation file's own ids written to {path}")
