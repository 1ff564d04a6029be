"""Tests for tools/convert_torch_weights.py (reference PyTorch weights -> Keras weights file).

The agreement tests need no torch: tests/fixtures/torch_reference/ holds what the PyTorch
reference networks compute with weights from a seeded NumPy generator (tests/torch_reference.py
says how it was written). The tests make the same weights again, convert them with the tool's
own code, and the converted Keras classifiers and detection backbones must compute the stored
logits and taps.

The live tests run the references themselves, where a Python has torch, torchvision and timm
(left out of requirements-dev.txt): the test's own, or the one the environment variable
TORCH_REFERENCE_PYTHON names (e.g. a venv of those three without TensorFlow). They check that the
references still compute the fixture and that the tool reads their ``torch.save`` files (which
needs torch in the test's Python too). The references run in a subprocess because torchvision
and TensorFlow crash when loaded into one process.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from nets import build_yolo
from tests.torch_reference import (
    FIXTURE_DIR,
    REFERENCE_ARCHS,
    Recipe,
    checksum,
    normalized,
    read_outputs,
)
from tools.convert_torch_weights import (
    ARCHS,
    ConversionError,
    convert,
    load_state_dict,
    main,
)

# one worker builds the module fixtures once (see tests/conftest.py)
pytestmark = pytest.mark.xdist_group("convert_torch_weights")

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_PYTHON = os.environ.get("TORCH_REFERENCE_PYTHON", sys.executable)
# Allowed difference as a fraction of the largest reference value: float32 rounding. Measured
# against the fixture: at most 1.3e-6 (logits, ShuffleNetV2 taps <= 4.4e-7, GhostNet taps
# <= 7.6e-7 relative; 2.9e-5 absolute on GhostNet taps of magnitude 40).
TOLERANCE = 1e-5


def assert_matches(actual: object, expected: np.ndarray, what: str) -> None:
    """``actual`` (an array or tensor) is ``expected`` up to float32 rounding."""
    atol = TOLERANCE * float(np.abs(expected).max())
    actual = keras.ops.convert_to_numpy(actual)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=atol, err_msg=what)


@pytest.fixture(scope="module")
def state_dicts() -> dict[str, dict[str, np.ndarray]]:
    """The fixture's weights, made again by NumPy."""
    return {arch: Recipe.read(FIXTURE_DIR, arch).state_dict() for arch in REFERENCE_ARCHS}


@pytest.fixture(scope="module")
def converted(state_dicts: dict[str, dict[str, np.ndarray]], tmp_path_factory) -> dict[str, Path]:
    """Each fixture's weights converted as the command-line tool does, as the file it writes."""
    out = tmp_path_factory.mktemp("converted")
    paths = {}
    for arch, state_dict in state_dicts.items():
        paths[arch] = out / f"{arch}.weights.h5"
        convert(arch, state_dict).save_weights(paths[arch])
    return paths


# --- agreement with the stored outputs of the PyTorch references ----------------------------


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_numpy_makes_the_fixture_weights_again(
    state_dicts: dict[str, dict[str, np.ndarray]], arch: str
) -> None:
    assert checksum(state_dicts[arch]) == pytest.approx(Recipe.read(FIXTURE_DIR, arch).checksum), (
        "NumPy's seeded generator no longer makes the weights the fixture was computed with; "
        "write the fixture again (see tests/torch_reference.py)"
    )


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_converted_classifier_gives_the_reference_logits(
    converted: dict[str, Path], arch: str
) -> None:
    reference = read_outputs(FIXTURE_DIR, arch)
    model = ARCHS[arch]()
    model.load_weights(converted[arch])
    assert_matches(model(normalized(reference["images"])), reference["logits"], "logits")


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
    converted: dict[str, Path],
    arch: str,
    backbone: str,
    options: dict,
    modules: tuple[str, str, str],
) -> None:
    reference = read_outputs(FIXTURE_DIR, arch)
    images = reference["images"]
    # The route of `model.pretrained: <file>` in a config.
    model = build_yolo(
        images.shape[1:],
        1,
        backbone=backbone,
        backbone_options=options,
        neck="yolov4_panet",
        neck_options={"alpha": 0.25},
        pretrained=str(converted[arch]),
    )
    # The backbone takes 0..1 images and normalizes them itself.
    taps = model.get_layer("backbone")(images.astype(np.float32) / 255)
    for module, tap in zip(modules, taps, strict=True):
        assert_matches(tap, reference[f"tap_{module}"], f"tap of {module}")


# Mix-ups that keep every shape, so only the outputs can tell (ShuffleNetV2 0.5x: stage3 has 48
# channels a branch; the `.3` conv is depthwise 3x3).
_MISTAKES = {
    "1x1 kernel with in and out channels swapped": (
        "stage3.1.branch2.0.weight",
        lambda kernel: kernel.transpose(1, 0, 2, 3),
    ),
    "depthwise kernel transposed": (
        "stage3.1.branch2.3.weight",
        lambda kernel: kernel.transpose(0, 1, 3, 2),
    ),
    "running variances of other channels": (
        "stage3.1.branch2.1.running_var",
        lambda variances: variances[::-1],
    ),
}


@pytest.mark.parametrize("mistake", sorted(_MISTAKES))
def test_fixture_tells_a_wrongly_mapped_weight(
    state_dicts: dict[str, dict[str, np.ndarray]], mistake: str
) -> None:
    arch = "shufflenet_v2_x0_5"
    reference = read_outputs(FIXTURE_DIR, arch)
    name, change = _MISTAKES[mistake]
    state_dict = {**state_dicts[arch], name: change(state_dicts[arch][name])}
    logits = keras.ops.convert_to_numpy(convert(arch, state_dict)(normalized(reference["images"])))
    # Far outside the tolerance, not a borderline miss.
    deviation = np.abs(logits - reference["logits"]).max() / np.abs(reference["logits"]).max()
    assert deviation > 100 * TOLERANCE


def test_state_dict_of_another_network_is_rejected(
    state_dicts: dict[str, dict[str, np.ndarray]],
) -> None:
    with pytest.raises(
        ConversionError, match=r"entry stage2\.0\.branch1\.2\.weight has shape .* another width"
    ):
        convert("shufflenet_v2_x1_0", state_dicts["shufflenet_v2_x0_5"])
    with pytest.raises(ConversionError, match="module 'conv_stem' has no layer"):
        convert("shufflenet_v2_x0_5", state_dicts["ghostnet_100"])


# --- the live PyTorch references --------------------------------------------------------------


@pytest.fixture(scope="module")
def live_reference(tmp_path_factory) -> Path:
    """The fixture written again by the PyTorch references, with the weights as .pth files."""
    probe = subprocess.run(
        [REFERENCE_PYTHON, "-c", "import torch, torchvision, timm"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(
            f"the PyTorch references need torch, torchvision and timm, which {REFERENCE_PYTHON} "
            "lacks (pip install them, or set TORCH_REFERENCE_PYTHON to a Python that has them)"
        )
    out = tmp_path_factory.mktemp("torch_reference")
    result = subprocess.run(
        [REFERENCE_PYTHON, "-m", "tests.torch_reference", "--state-dicts", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_torch_references_still_compute_the_fixture(live_reference: Path, arch: str) -> None:
    live, stored = Recipe.read(live_reference, arch), Recipe.read(FIXTURE_DIR, arch)
    assert (live.layout, live.seed, live.gain) == (stored.layout, stored.seed, stored.gain)
    assert live.checksum == pytest.approx(stored.checksum)
    outputs, reference = read_outputs(live_reference, arch), read_outputs(FIXTURE_DIR, arch)
    assert outputs.keys() == reference.keys()
    np.testing.assert_array_equal(outputs.pop("images"), reference["images"])
    for key, value in outputs.items():
        assert_matches(value, reference[key], key)


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="reading a .pth file needs torch"
)
@pytest.mark.parametrize("arch", REFERENCE_ARCHS)
def test_command_line_converts_a_torch_file(
    live_reference: Path, converted: dict[str, Path], arch: str, tmp_path: Path
) -> None:
    out = tmp_path / f"{arch}.weights.h5"
    argv = ["--arch", arch, "--state-dict", str(live_reference / f"{arch}.pth")]
    assert main([*argv, "--out", str(out)]) == 0
    from_file, from_numpy = ARCHS[arch](), ARCHS[arch]()
    from_file.load_weights(out)
    from_numpy.load_weights(converted[arch])
    weights = zip(from_file.weights, from_file.get_weights(), from_numpy.get_weights(), strict=True)
    for variable, read, made in weights:
        np.testing.assert_array_equal(read, made, err_msg=variable.path)


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
