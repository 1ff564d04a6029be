"""Tests for tools/convert_torch_weights.py (reference PyTorch weights -> Keras weights file).

The agreement tests need torch, torchvision and timm, which requirements-dev.txt leaves out
(PyPI has only the ~3 GB CUDA build of torch for Linux); without them they are skipped, and the
error-path tests below still run. The reference networks run in a subprocess
(tests/torch_reference.py) because torchvision and TensorFlow crash when loaded into one process.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from nets import build_yolo
from tools.convert_torch_weights import (
    ARCHS,
    ConversionError,
    convert,
    load_state_dict,
    main,
)

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
REFERENCE_ARCHS = ("shufflenet_v2_x0_5", "ghostnet_100")

_MISSING = [name for name in ("torch", "torchvision", "timm") if not importlib.util.find_spec(name)]
needs_reference = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"the PyTorch reference networks need {', '.join(_MISSING)} "
    "(pip install torch torchvision timm; left out of requirements-dev.txt)",
)


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory) -> Path:
    """Reference state_dicts and outputs of REFERENCE_ARCHS, made in a torch-only process."""
    out = tmp_path_factory.mktemp("torch_reference")
    command = [sys.executable, "-m", "tests.torch_reference", "--size", str(SIZE)]
    result = subprocess.run(
        [*command, "--out", str(out), *REFERENCE_ARCHS],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def converted(reference_dir: Path) -> dict[str, Path]:
    """Each reference state_dict converted by the command-line tool."""
    paths = {}
    for arch in REFERENCE_ARCHS:
        paths[arch] = reference_dir / f"{arch}.weights.h5"
        argv = ["--arch", arch, "--state-dict", str(reference_dir / arch / "state_dict.pth")]
        assert main([*argv, "--out", str(paths[arch])]) == 0
    return paths


def _reference(reference_dir: Path, arch: str) -> dict[str, np.ndarray]:
    return dict(np.load(reference_dir / arch / "reference.npz"))


# --- agreement with the PyTorch references --------------------------------------------------


@needs_reference
@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_converted_classifier_gives_the_reference_logits(
    reference_dir: Path, converted: dict[str, Path], arch: str
) -> None:
    reference = _reference(reference_dir, arch)
    model = ARCHS[arch]()
    model.load_weights(converted[arch])
    logits = keras.ops.convert_to_numpy(model(reference["normalized"]))
    np.testing.assert_allclose(logits, reference["logits"], rtol=0, atol=1e-4)


@needs_reference
@pytest.mark.parametrize(
    ("arch", "backbone", "options", "modules"),
    [
        ("shufflenet_v2_x0_5", "shufflenetv2", {"alpha": 0.5}, ("stage2", "stage3", "stage4")),
        (
            "shufflenet_v2_x0_5",
            "shufflenetv2",
            {"alpha": 0.5, "conv5": True},
            ("stage2", "stage3", "conv5"),
        ),
        ("ghostnet_100", "ghostnet", {}, ("blocks.4", "blocks.6", "blocks.8")),
    ],
)
def test_detector_with_converted_weights_taps_the_reference_features(
    reference_dir: Path,
    converted: dict[str, Path],
    arch: str,
    backbone: str,
    options: dict,
    modules: tuple[str, str, str],
) -> None:
    reference = _reference(reference_dir, arch)
    # The route of `model.pretrained: <file>` in a config.
    model = build_yolo(
        (SIZE, SIZE, 3),
        1,
        backbone=backbone,
        backbone_options=options,
        neck="yolov4_panet",
        neck_options={"alpha": 0.25},
        pretrained=str(converted[arch]),
    )
    # The backbone takes 0..1 images and normalizes them itself.
    taps = model.get_layer("backbone")(reference["images"])
    for module, tap in zip(modules, taps, strict=True):
        expected = reference[f"tap_{module}"]
        np.testing.assert_allclose(keras.ops.convert_to_numpy(tap), expected, rtol=0, atol=1e-4)


@needs_reference
def test_state_dict_of_another_network_is_rejected(reference_dir: Path) -> None:
    half = load_state_dict(reference_dir / "shufflenet_v2_x0_5" / "state_dict.pth")
    with pytest.raises(
        ConversionError, match=r"entry stage2\.0\.branch1\.2\.weight has shape .* another width"
    ):
        convert("shufflenet_v2_x1_0", half)
    ghost = load_state_dict(reference_dir / "ghostnet_100" / "state_dict.pth")
    with pytest.raises(ConversionError, match="module 'conv_stem' has no layer"):
        convert("shufflenet_v2_x0_5", ghost)


# --- errors (no torch needed) ---------------------------------------------------------------


def test_unknown_module_is_named() -> None:
    with pytest.raises(ConversionError, match=r"module 'features\.0' has no layer in ghostnet_100"):
        convert("ghostnet_100", {"features.0.weight": np.zeros((16, 3, 3, 3), "float32")})


def test_layers_left_without_weights_are_reported() -> None:
    stem = {"conv1.0.weight": np.zeros((24, 3, 3, 3), "float32")}
    with pytest.raises(ConversionError, match=r"no weights for \d+ layer\(s\) .* conv1_1"):
        convert("shufflenet_v2_x0_5", stem)


def test_parameters_must_be_the_layer_kind() -> None:
    # A BatchNorm without its running statistics.
    partial_norm = {
        "conv1.1.weight": np.ones(24, "float32"),
        "conv1.1.bias": np.zeros(24, "float32"),
    }
    with pytest.raises(ConversionError, match=r"'conv1.1' has parameters \['bias', 'weight'\]"):
        convert("shufflenet_v2_x0_5", partial_norm)


def test_reading_a_file_without_torch_says_what_to_install(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(ConversionError, match="pip install torch"):
        load_state_dict(tmp_path / "weights.pth")


def test_command_line_errors(tmp_path, capsys) -> None:
    missing = tmp_path / "missing.pth"
    out = tmp_path / "out.weights.h5"
    assert main(["--arch", "ghostnet_100", "--state-dict", str(missing), "--out", str(out)]) == 2
    assert f"--state-dict: file not found: {missing}" in capsys.readouterr().err
    bad_out = ["--arch", "ghostnet_100", "--state-dict", str(missing), "--out", "model.h5"]
    assert main(bad_out) == 2
    assert "must end in .weights.h5" in capsys.readouterr().err
    assert not out.exists()
