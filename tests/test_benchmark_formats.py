"""predict.py --mode benchmark: one table over every format, get_map.py --model agrees with it,
and the gate fails (exit 1) when an export is broken."""

import json

import pytest

import get_map
import predict
from tests.conftest import TRAINED_RUN_GROUP
from utils.deploy import export as export_module
from utils.deploy.benchmark import KERAS, default_formats
from utils.deploy.export import FORMATS

pytestmark = [pytest.mark.slow, TRAINED_RUN_GROUP]

pytest.importorskip("ai_edge_litert")


@pytest.fixture(scope="module")
def run_dir(trained_run_dir):
    return trained_run_dir


def _voc_map(folder) -> float:
    return json.loads((folder / "results.json").read_text())["voc_map"]


def test_benchmark_table_and_get_map_of_each_export(run_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--run", str(run_dir), "--mode", "benchmark", "--out", str(out), "--repeats", "3"]
    assert predict.main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("format"))
    rows = {line.split()[0]: line.split() for line in table[header + 1 :]}
    formats = default_formats()
    assert list(rows) == [KERAS, *formats]
    assert all(rows[fmt][-1] == "pass" for fmt in formats)
    keras_map = _voc_map(out / "map_out" / KERAS)
    assert keras_map > 0.3  # a trained model: the comparison means something
    # get_map.py --model agrees with the table; one TensorFlow and one LiteRT format stand for
    # the rest (both load through load_exported, as every format does).
    for fmt in ("saved_model", "tflite_int8"):
        model = out / "export" / FORMATS[fmt]
        scored = tmp_path / "get_map" / fmt
        argv = ["--run", str(run_dir), "--split", "val", "--model", str(model)]
        assert get_map.main([*argv, "--out", str(scored)]) == 0
        assert _voc_map(scored) == pytest.approx(_voc_map(out / "map_out" / fmt), abs=1e-9)
        assert abs(_voc_map(scored) - keras_map) <= 0.02, fmt
        assert float(rows[fmt][4]) == pytest.approx(_voc_map(scored), abs=1e-4)


def test_gate_fails_when_an_export_is_broken(run_dir, tmp_path, capsys, monkeypatch):
    real = export_module.export_tflite

    def broken(detector, path, **options):  # every head answers a constant: no objects found
        for name in detector.model.output_names:
            layer = detector.model.get_layer(name)
            layer.set_weights([w * 0 for w in layer.get_weights()])
        real(detector, path, **options)

    monkeypatch.setattr(export_module, "export_tflite", broken)
    argv = ["--run", str(run_dir), "--mode", "benchmark", "--out", str(tmp_path),
            "--format", "tflite", "--repeats", "2"]  # fmt: skip
    assert predict.main(argv) == 1
    lines = capsys.readouterr().out.splitlines()
    assert next(line for line in lines if line.startswith("tflite ")).endswith("FAIL")


def test_get_map_model_mistakes_are_one_line(run_dir, tmp_path, capsys):
    argv = ["--run", str(run_dir), "--split", "val", "--model", str(tmp_path / "none.tflite")]
    assert get_map.main(argv) == 2
    assert "none.tflite: not found" in capsys.readouterr().err
