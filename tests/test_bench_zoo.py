"""benchmarks/bench_zoo.py: rows are counted like tools/summary.py, runs are matched to rows.

Timings are never asserted on: the machine running the tests may be busy.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from benchmarks import bench_zoo
from nets import build_model
from tests.training_fixtures import REPO
from utils.config import load_config, save_config
from utils.engine.checkpoint import ResumeInfo
from utils.engine.run_dir import RunDir
from utils.flops import count_flops

MBV1_YOLOV4 = REPO / "configs" / "mobilenetv1_yolov4.yaml"
TINY = ["model.backbone_options.alpha=0.25", "model.neck_options.alpha=0.25"]


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # config paths are relative to the repository root


def _fake_run(
    folder: Path,
    *,
    alpha: float,
    conv: str,
    val_map: list[str],
    epochs: int,
    age_s: float = 0,
    head: str = "anchor_based",
    planned: int | None = None,
) -> Path:
    """A run folder as train.py leaves it: resolved config.yaml and a CSVLogger history.csv;
    with ``planned``, a time-budgeted run that planned that many epochs (its resume state
    holds only the progress record, all bench_zoo reads)."""
    folder.mkdir(parents=True)
    cfg = load_config(
        REPO / "configs" / "demo_mobilenetv1_yolov4.yaml",  # MobileNetV1 + PANet, like MBV1_YOLOV4
        [
            f"model.backbone_options.alpha={alpha}",
            f"model.neck_conv={conv}",
            f"model.head={head}",
            f"train.epochs={epochs}",
            f"train.time_budget={'null' if planned is None else 5}",
        ],
    )
    save_config(cfg, folder / "config.yaml")
    if planned is not None:
        info = ResumeInfo(len(val_map), None, "unfreeze", planned_epochs=planned)
        np.savez(RunDir(folder).resume_state, info=np.array(json.dumps(dataclasses.asdict(info))))
    lines = ["epoch,loss,val_map", *(f"{i},1.0,{v}" for i, v in enumerate(val_map))]
    history = folder / "history.csv"
    history.write_text("\n".join(lines) + "\n", encoding="utf-8")
    stamp = history.stat().st_mtime - age_s
    os.utime(history, (stamp, stamp))
    return folder


def test_build_row_matches_the_summary_counts() -> None:
    cfgs = bench_zoo.load_zoo([MBV1_YOLOV4], TINY, ["standard", "ghost"], 64)
    assert [cfg.model.neck_conv for cfg in cfgs] == ["standard", "ghost"]
    cfg = cfgs[1]
    assert cfg.model.pretrained is None  # imagenet in the file: no download in the table
    assert cfg.model.input_size == [64, 64]

    row = bench_zoo.build_row(cfg, classes=3, batches=[1, 2], repeats=1, warmup=1)
    reference = build_model(cfg.model, 3)
    assert (row.config, row.model.neck_conv, row.demo_map) == ("mobilenetv1_yolov4", "ghost", None)
    assert row.params == reference.count_params()
    assert row.flops == count_flops(reference)
    assert list(row.ms_per_image) == [1, 2]
    assert all(math.isfinite(ms) for ms in row.ms_per_image.values())


def test_map_from_picks_the_latest_finished_run_of_the_same_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runs_dir = tmp_path / "logs"
    _fake_run(
        runs_dir / "dw",
        alpha=0.25,
        conv="depthwise",
        val_map=["nan", "0.2", "nan", "0.41"],
        epochs=4,
    )
    _fake_run(
        runs_dir / "dw-older", alpha=0.25, conv="depthwise", val_map=["0.1"], epochs=1, age_s=3600
    )
    _fake_run(runs_dir / "dw-unfinished", alpha=0.25, conv="depthwise", val_map=["0.9"], epochs=4)
    _fake_run(runs_dir / "deeper" / "ghost", alpha=0.25, conv="ghost", val_map=["0.55"], epochs=1)
    _fake_run(runs_dir / "wide", alpha=0.5, conv="standard", val_map=["0.77"], epochs=1)
    _fake_run(runs_dir / "no-map", alpha=0.25, conv="standard", val_map=["nan"], epochs=1)
    # time-budgeted (train.epochs only a cap): finished at the length it planned, or not
    _fake_run(runs_dir / "budget", alpha=0.5, conv="depthwise", val_map=["0.3", "0.6"],
              epochs=1000, planned=2)  # fmt: skip
    _fake_run(runs_dir / "budget-killed", alpha=0.5, conv="depthwise", val_map=["0.3"],
              epochs=1000, planned=2)  # fmt: skip
    _fake_run(runs_dir / "budget-no-state", alpha=0.5, conv="depthwise", val_map=["0.3"],
              epochs=1000, planned=1)  # fmt: skip
    RunDir(runs_dir / "budget-no-state").resume_state.unlink()
    (runs_dir / "no-config").mkdir()
    (runs_dir / "no-config" / "history.csv").write_text("epoch,val_map\n0,0.99\n")

    runs = bench_zoo.read_runs([runs_dir])
    names = ["budget", "dw", "dw-older", "ghost", "wide"]
    assert sorted(run.run_dir.name for run in runs) == names
    skipped = caplog.text
    assert "budget-killed: unfinished (1 of 2 epochs)" in skipped
    assert "budget-no-state" in skipped and "not found" in skipped
    assert "dw-unfinished: unfinished (1 of 4 epochs)" in skipped
    assert "no-map: no val_map" in skipped
    assert "no-config" in skipped and "config file not found" in skipped

    zoo = bench_zoo.load_zoo([MBV1_YOLOV4], TINY, ["depthwise", "ghost", "standard"], 64)
    found = [bench_zoo.match_run(cfg.model, runs) for cfg in zoo]
    assert [run and (run.run_dir.name, run.val_map) for run in found] == [
        ("dw", 0.41),
        ("ghost", 0.55),
        None,  # only the alpha 0.5 run and one without mAP have standard convs
    ]


def test_main_prints_the_markdown_table_with_demo_map(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _fake_run(tmp_path / "run", alpha=0.25, conv="depthwise", val_map=["0.41"], epochs=1)
    _fake_run(
        tmp_path / "af", alpha=0.25, conv="depthwise", val_map=["0.47"], epochs=1,
        head="anchor_free",
    )  # fmt: skip
    options = ["--size", "64", "--classes", "3", "--repeats", "1", "--warmup", "1", "--markdown"]
    argv = [*options, "--configs", str(MBV1_YOLOV4), "--neck-convs", "depthwise", "standard"]
    argv += ["--heads", "anchor_based", "anchor_free", "--map-from", str(tmp_path), "--", *TINY]
    assert bench_zoo.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    table = out[out.index("") + 1 :]
    assert table[0] == (
        "| config | backbone | neck | neck conv | head | params (M) | GFLOPs | ms/img b1 "
        "| demo mAP@0.5 |"
    )
    assert table[1] == "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: |"
    cells = [line.strip("| ").split(" | ") for line in table[2:]]
    names = ["mobilenetv1_yolov4", "mobilenetv1 (alpha=0.25)", "yolov4_panet (alpha=0.25)"]
    assert [row[:5] for row in cells] == [
        [*names, conv, head]
        for conv in ("depthwise", "standard")
        for head in ("anchor_based", "anchor_free")
    ]
    assert [row[-1] for row in cells] == ["0.410", "0.470", "-", "-"]
    # Rows also print as they finish, above the Markdown table.
    assert sum(line.startswith("mobilenetv1_yolov4 ") for line in out) == 4


def test_main_names_a_missing_runs_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--configs", str(MBV1_YOLOV4), "--map-from", str(tmp_path / "nope")]
    assert bench_zoo.main(argv) == 2
    assert f"--map-from {tmp_path / 'nope'}: not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench_zoo.main([*argv[:-1], str(tmp_path), *TINY])
    assert "--map-from took the overrides" in capsys.readouterr().err
