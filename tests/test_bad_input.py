"""Every front door and tool answers a user mistake the same way: exit code 2 and exactly one
line on stderr that names the file or key, no traceback, no TensorFlow start-up noise before it.

Each case runs the script as a user would (a subprocess) with the network unreachable: downloads
go to a dead proxy and Keras' cache is an empty folder, so ``pretrained: imagenet`` fails at once
and the same way on every machine. Cases that get past the argument checks import TensorFlow
(about 20 s on 2 cores) and are marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.run_fixtures import make_run
from tests.training_fixtures import tiny_config

REPO = Path(__file__).resolve().parents[1]
DEAD_PROXY = "http://127.0.0.1:9"  # the discard port: connections are refused at once


def offline_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine without internet and without cached Keras weights."""
    env = dict(os.environ)
    for name in ("no_proxy", "NO_PROXY"):
        env.pop(name, None)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = DEAD_PROXY
    env["KERAS_HOME"] = str(tmp_path / "keras_home")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the scripts themselves must quiet TensorFlow
    return env


def _latin1(path: Path, text: str) -> Path:
    """``text`` saved as Latin-1, as an old Windows editor would: not UTF-8."""
    path.write_bytes(text.encode("latin-1"))
    return path


# --- the files each case needs (made in the test's tmp_path); each returns the arguments -----


def _missing_config(tmp: Path) -> list[str]:
    return ["--config", str(tmp / "nope.yaml")]


def _latin1_config(tmp: Path) -> list[str]:
    return ["--config", str(_latin1(tmp / "café.yaml", "name: café\n"))]


def _unknown_key(tmp: Path) -> list[str]:
    return ["--config", str(REPO / "configs" / "demo.yaml"), "train.epochz=3"]


def _resume_without_state(tmp: Path) -> list[str]:
    return ["--resume", str(tmp)]


def _imagenet_offline(tmp: Path) -> list[str]:
    return ["--config", str(tiny_config(tmp)), "model.pretrained=imagenet"]


def _damaged_resume_state(tmp: Path) -> list[str]:
    run = make_run(tmp, weights=False)
    (run / "resume_state.npz").write_bytes(b"PK\x03\x04 the rest was never written")
    return ["--resume", str(run)]


def _empty_val_split(tmp: Path) -> list[str]:
    config = tiny_config(tmp)
    (tmp / "VOCdevkit" / "TINY" / "ImageSets" / "Main" / "broken.txt").write_text("gone\n")
    return ["--config", str(config), "data.val_split=[TINY/broken]"]


def _corrupt_weights(tmp: Path) -> list[str]:
    run = make_run(tmp, weights=False)
    weights = tmp / "corrupt.weights.h5"
    weights.write_bytes(b"this is not HDF5")
    return ["--run", str(run), "--weights", str(weights)]


def _corrupt_weights_fps(tmp: Path) -> list[str]:
    return [*_corrupt_weights(tmp), "--mode", "fps"]


def _latin1_run_config(tmp: Path) -> list[str]:
    run = tmp / "run"
    run.mkdir()
    _latin1(run / "config.yaml", "name: café\n")
    return ["--run", str(run)]


def _augment_n(n: int) -> Callable[[Path], list[str]]:
    return lambda tmp: ["--n", str(n), "--out", str(tmp / "grid.png")]


def _preview_without_train(tmp: Path) -> list[str]:
    return ["--train", "0", "--preview", str(tmp / "preview.png"), "--out", str(tmp / "demo")]


def _missing_dataset_folder(tmp: Path) -> list[str]:
    return [str(tmp / "VOCmissing")]


def _latin1_class_list(tmp: Path) -> list[str]:
    (tmp / "VOCmine").mkdir()
    return [str(tmp / "VOCmine"), "--classes", str(_latin1(tmp / "classes.txt", "café\n"))]


def _convert_missing_root(tmp: Path) -> list[str]:
    classes = tmp / "classes.txt"
    classes.write_text("cat\n")
    root, out = str(tmp / "nowhere"), str(tmp / "out")
    return ["--from", "voc", "--to", "coco", "--root", root, "--split", "MINE/train",
            "--classes", str(classes), "--out", out]  # fmt: skip


def _missing_state_dict(tmp: Path) -> list[str]:
    return ["--arch", "ghostnet_100", "--state-dict", str(tmp / "ghostnet.pth"),
            "--out", str(tmp / "ghostnet.weights.h5")]  # fmt: skip


@dataclass(frozen=True)
class Case:
    script: str
    arguments: Callable[[Path], list[str]]
    names: tuple[str, ...]  # what the one line must name: the file or key, the fix
    imports_tensorflow: bool = False
    # WARNING lines before the error that name the bad samples the error refers to
    sample_warnings: int = 0


CASES = {
    "train: config not found": Case("train.py", _missing_config, ("nope.yaml",)),
    "train: config not UTF-8": Case("train.py", _latin1_config, ("café.yaml", "UTF-8")),
    "train: unknown key": Case("train.py", _unknown_key, ("train.epochz",)),
    "train: resume without state": Case(
        "train.py", _resume_without_state, ("resume_state.npz",)
    ),
    "train: imagenet offline": Case(
        "train.py", _imagenet_offline, ("model.pretrained", "null"), imports_tensorflow=True
    ),
    "train: damaged resume state": Case(
        "train.py", _damaged_resume_state, ("resume_state.npz", "damaged"), imports_tensorflow=True
    ),
    "train: empty val split": Case(
        "train.py",
        _empty_val_split,
        ("data.val_split",),
        imports_tensorflow=True,
        sample_warnings=1,
    ),
    "predict: corrupt weights": Case(
        "predict.py", _corrupt_weights_fps, ("corrupt.weights.h5",), imports_tensorflow=True
    ),
    "get_map: corrupt weights": Case(
        "get_map.py", _corrupt_weights, ("corrupt.weights.h5",), imports_tensorflow=True
    ),
    "get_map: run config not UTF-8": Case(
        "get_map.py", _latin1_run_config, ("config.yaml", "UTF-8")
    ),
    "show_augmentations: --n 0": Case("tools/show_augmentations.py", _augment_n(0), ("--n",)),
    "show_augmentations: --n -1": Case("tools/show_augmentations.py", _augment_n(-1), ("--n",)),
    "make_demo_dataset: preview of no images": Case(
        "tools/make_demo_dataset.py", _preview_without_train, ("--preview", "--train")
    ),
    "voc_annotation: no such folder": Case(
        "tools/voc_annotation.py", _missing_dataset_folder, ("VOCmissing",)
    ),
    "voc_annotation: class list not UTF-8": Case(
        "tools/voc_annotation.py", _latin1_class_list, ("classes.txt", "UTF-8")
    ),
    "convert_dataset: no such root": Case(
        "tools/convert_dataset.py", _convert_missing_root, ("nowhere",)
    ),
    "kmeans_anchors: config not UTF-8": Case(
        "tools/kmeans_anchors.py", _latin1_config, ("café.yaml", "UTF-8")
    ),
    "summary: config not UTF-8": Case(
        "tools/summary.py", _latin1_config, ("café.yaml", "UTF-8"), imports_tensorflow=True
    ),
    "convert_torch_weights: no such state dict": Case(
        "tools/convert_torch_weights.py",
        _missing_state_dict,
        ("ghostnet.pth",),
        imports_tensorflow=True,
    ),
}


def _params() -> list:
    return [
        pytest.param(case, id=name, marks=[pytest.mark.slow] if case.imports_tensorflow else [])
        for name, case in CASES.items()
    ]


def run_script(script: str, arguments: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *arguments],
        cwd=REPO,
        env=offline_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("case", _params())
def test_a_user_mistake_is_one_line_naming_it(tmp_path: Path, case: Case) -> None:
    result = run_script(case.script, case.arguments(tmp_path), tmp_path)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, output
    # nothing else: no TensorFlow start-up noise, progress logs go to stdout
    assert len(lines) == case.sample_warnings + 1, result.stderr
    assert all(" WARNING " in line for line in lines[:-1]), result.stderr
    assert lines[-1].startswith("error: "), result.stderr
    for name in case.names:
        assert name in lines[-1], lines[-1]


@pytest.mark.slow
def test_verbose_keeps_tensorflow_s_own_lines(tmp_path: Path) -> None:
    """``--verbose`` brings TensorFlow's start-up lines back (a CPU machine: "Could not find cuda
    drivers"; a GPU machine: its device lines); the error is still the last line."""
    result = run_script("predict.py", [*_corrupt_weights_fps(tmp_path), "--verbose"], tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2
    assert len(lines) > 1 and "corrupt.weights.h5" in lines[-1], result.stderr
