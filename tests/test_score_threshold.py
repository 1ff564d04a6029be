"""eval.score_threshold: a number, or auto (the run's calibrated threshold of best F1 on val,
else eval.uncalibrated_score_threshold); predict.py says which it used."""

from __future__ import annotations

import json

import pytest

import predict
from tests.run_fixtures import make_run
from tests.training_fixtures import make_tiny_voc
from utils.config import EvalConfig, base_section, load_run_config
from utils.deploy.runs import display_threshold
from utils.engine.run_dir import RunDir

# one worker builds the module fixtures once (see tests/conftest.py)
pytestmark = pytest.mark.xdist_group("score_threshold")


def _calibrate(run: RunDir, threshold: float = 0.37) -> None:
    record = {"score_threshold": threshold, "f1": 0.81, "precision": 0.8, "recall": 0.82,
              "epoch": 7, "split": "val"}  # fmt: skip
    run.score_threshold.write_text(json.dumps(record))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDir:
    return RunDir(make_run(tmp_path_factory.mktemp("threshold")))


def test_auto_is_the_default_and_falls_back_without_a_calibration(run):
    assert base_section(EvalConfig).score_threshold == "auto"
    cfg = load_run_config(run.config)
    chosen = display_threshold(cfg, run)
    assert chosen.value == cfg.eval.uncalibrated_score_threshold
    assert "score_threshold.json" in chosen.source


def test_auto_reads_the_calibrated_threshold_and_a_number_overrides_it(tmp_path):
    run = RunDir(make_run(tmp_path, weights=False))
    _calibrate(run, 0.37)
    cfg = load_run_config(run.config)
    chosen = display_threshold(cfg, run)
    assert chosen.value == pytest.approx(0.37) and "F1 0.810" in chosen.source
    fixed = load_run_config(run.config, ["eval.score_threshold=0.6"])
    assert display_threshold(fixed, run).value == pytest.approx(0.6)


@pytest.mark.parametrize(
    "text", ["{not json", '{"score_threshold": 3.0, "f1": 1, "epoch": 1}', "{}"]
)
def test_a_damaged_calibration_is_an_error_naming_the_file(tmp_path, text):
    run = RunDir(make_run(tmp_path, weights=False))
    run.score_threshold.write_text(text)
    with pytest.raises(ValueError, match=r"score_threshold\.json"):
        display_threshold(load_run_config(run.config), run)


def test_predict_prints_the_threshold_it_used(tmp_path, capsys):
    run = RunDir(make_run(tmp_path))
    _calibrate(run, 0.42)
    root = make_tiny_voc(tmp_path / "data", 1)
    image = next((root / "JPEGImages").iterdir())
    args = ["--run", str(run.path), "--source", str(image), "--out", str(tmp_path / "out")]
    assert predict.main(args) == 0
    assert "score threshold 0.42 (auto: best F1 0.810 on val at epoch 7)" in capsys.readouterr().out
    assert predict.main([*args, "--conf", "0.2"]) == 0
    assert "score threshold 0.2 (--conf)" in capsys.readouterr().out
    run.score_threshold.write_text("{damaged")
    assert predict.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "score_threshold.json" in err and "\n" not in err
