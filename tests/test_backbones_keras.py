"""The keras.applications backbones: taps, input scaling, pretrained weights and their errors.

MobileNetV1's own tests are in test_nets.py; the zoo (test_zoo.py) trains every family once.
"""

from __future__ import annotations

import inspect
import re

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from nets import BACKBONES, build_model
from nets.backbones.efficientnet import IMAGENET_MEAN, IMAGENET_STD
from nets.backbones.keras_applications import KerasFamily, build_backbone
from tests.training_fixtures import REPO
from utils.config import load_config

# name -> (Keras constructor, its fixed options, alpha option or None)
FAMILIES = {
    "mobilenetv2": (keras.applications.MobileNetV2, {}, 0.35),
    "mobilenetv3_large": (
        keras.applications.MobileNetV3Large,
        {"include_preprocessing": False},
        0.75,
    ),
    "mobilenetv3_small": (
        keras.applications.MobileNetV3Small,
        {"include_preprocessing": False},
        0.75,
    ),
    "efficientnet_b0": (keras.applications.EfficientNetB0, {}, None),
}


def _backbone(name: str, size: int = 64, **options) -> keras.Model:
    inputs = keras.Input((size, size, 3))
    return keras.Model(inputs, BACKBONES.get(name)(inputs, **options)).get_layer("backbone")


def _normalization(model: keras.Model) -> keras.layers.Normalization:
    (norm,) = [layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)]
    return norm


# --- registered builders --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "parameters", "application"),
    [
        ("mobilenetv3_small", ["inputs", "alpha", "pretrained"], "MobileNetV3Small"),
        ("efficientnet_b2", ["inputs", "pretrained"], "EfficientNetB2"),
    ],
)
def test_builders_take_alpha_where_the_family_has_widths(name, parameters, application) -> None:
    builder = BACKBONES.get(name)
    assert builder.__name__ == name
    assert list(inspect.signature(builder).parameters) == parameters
    alpha = ", alpha=alpha" if "alpha" in parameters else ""
    assert f"keras.applications.{application}(include_top=False{alpha})" in builder.__doc__


# --- taps -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        # The MobileNet-YOLOv4 / EfficientNet-YOLOv3 references' tap channels at width 1.
        ("mobilenetv2", (32, 96, 320)),
        ("mobilenetv3_large", (40, 112, 160)),
        ("mobilenetv3_small", (24, 48, 96)),
        ("efficientnet_b0", (40, 112, 320)),
    ],
)
def test_taps_have_the_reference_strides_and_channels(name: str, channels: tuple) -> None:
    backbone = _backbone(name, size=96)
    assert [tuple(t.shape) for t in backbone.outputs] == [
        (None, 96 // stride, 96 // stride, c)
        for stride, c in zip((8, 16, 32), channels, strict=True)
    ]


def test_efficientnet_taps_follow_the_variant_depth() -> None:
    # B1 is B0 deeper: 3 blocks in group 3, 4 in group 5, 2 in group 7 (B0: 2, 3, 1).
    assert _backbone("efficientnet_b1").output_names == [
        "block3c_add",
        "block5d_add",
        "block7b_add",
    ]
    assert _backbone("efficientnet_b0").output_names == [
        "block3b_add",
        "block5c_add",
        "block7a_project_bn",
    ]


def test_a_tap_that_matches_no_layer_is_a_clear_error() -> None:
    family = KerasFamily(
        title="Broken",
        application=keras.applications.MobileNet,
        taps=("conv_pw_5_relu", "conv_pw_11_relu", "conv_pw_99_*"),
        input_range="signed_unit",
        imagenet_url=lambda alpha, rows: "",
    )
    with pytest.raises(ValueError, match=r"Broken has no layer named like the tap 'conv_pw_99_\*'"):
        build_backbone(family, keras.Input((32, 32, 3)), pretrained=None, alpha=0.25)


# --- input scaling --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "layer", "expected"),
    [
        ("mobilenetv2", {"alpha": 0.35}, "to_signed_unit", [-1.0, 0.0, 1.0]),
        ("mobilenetv3_small", {"alpha": 0.75}, "to_signed_unit", [-1.0, 0.0, 1.0]),
        ("efficientnet_b0", {}, "to_byte_range", [0.0, 127.5, 255.0]),
    ],
)
def test_first_layer_maps_unit_images_to_the_network_range(name, options, layer, expected) -> None:
    backbone = _backbone(name, **options)
    assert backbone.layers[1].name == layer
    out = backbone.layers[1](np.array([[0.0, 0.5, 1.0]], np.float32))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out)[0], expected, rtol=1e-6)
    # No second rescaling (Keras' MobileNetV3 would add one for 0..255 inputs), except
    # EfficientNet's own 1/255 step, which our 0..255 output feeds.
    rescalings = [x for x in backbone.layers if isinstance(x, keras.layers.Rescaling)]
    assert len(rescalings) == (2 if name.startswith("efficientnet") else 1)


def _assert_imagenet_normalization(backbone: keras.Model) -> None:
    probe = keras.Model(backbone.input, _normalization(backbone).output)
    images = np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32)
    expected = (images - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(probe(images)), expected, atol=1e-5)


def test_efficientnet_normalizes_with_imagenet_mean_and_std() -> None:
    _assert_imagenet_normalization(_backbone("efficientnet_b0"))


# --- pretrained: local files ----------------------------------------------------------------


def _reference(name: str, alpha: float | None, seed: int = 3) -> keras.Model:
    """A randomly initialised plain application, with EfficientNet's input statistics stored
    the way the official files store them (the std where Keras' layer wants the variance)."""
    application, fixed, _ = FAMILIES[name]
    keras.utils.set_random_seed(seed)
    options = {} if alpha is None else {"alpha": alpha}
    model = application(
        input_shape=(64, 64, 3), include_top=False, weights=None, **fixed, **options
    )
    if name.startswith("efficientnet"):
        norm = _normalization(model)
        norm.adapt_mean.assign(np.array(IMAGENET_MEAN, np.float32))
        norm.adapt_variance.assign(np.array(IMAGENET_STD, np.float32))
    return model


def _assert_holds_weights_of(backbone: keras.Model, reference: keras.Model) -> None:
    """Every backbone weight equals the reference's, bar EfficientNet's input statistics, which
    must normalize with ImageNet's mean and std whatever the file held."""
    compared = 0
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Normalization):
            _assert_imagenet_normalization(backbone)
            continue
        if not layer.weights:
            continue
        for loaded, expected in zip(
            layer.weights, reference.get_layer(layer.name).weights, strict=True
        ):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(loaded), keras.ops.convert_to_numpy(expected)
            )
            compared += 1
    normalization = sum(
        len(layer.weights)
        for layer in backbone.layers
        if isinstance(layer, keras.layers.Normalization)
    )
    assert compared == len(backbone.weights) - normalization > 0


@pytest.mark.parametrize("name", list(FAMILIES))
def test_local_weights_file_loads_through_the_config(name: str, tmp_path) -> None:
    alpha = FAMILIES[name][2]
    reference = _reference(name, alpha)
    path = tmp_path / f"{name}.weights.h5"
    reference.save_weights(path)

    options = "{}" if alpha is None else f"{{alpha: {alpha}}}"
    cfg = load_config(
        REPO / "configs" / "base.yaml",
        [
            f"model.backbone={name}",
            f"model.backbone_options={options}",
            f"model.pretrained={path}",
            "model.input_size=[64, 64]",
            "model.neck_options={alpha: 0.25}",
            f"model.anchors={REPO / 'model_data' / 'yolo_anchors.txt'}",
            f"data.classes={REPO / 'model_data' / 'voc_classes.txt'}",
        ],
    )
    _assert_holds_weights_of(build_model(cfg.model, num_classes=2).get_layer("backbone"), reference)


@pytest.mark.parametrize("name", ["mobilenetv3_small", "efficientnet_b0"])
def test_imagenet_loads_the_file_keras_downloads(name: str, tmp_path, monkeypatch) -> None:
    from keras.src.utils import file_utils

    # Stand in for the official file (legacy HDF5, weights only) already in Keras' cache.
    alpha = FAMILIES[name][2]
    reference = _reference(name, alpha)
    path = tmp_path / "official_no_top.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, reference)
    monkeypatch.setattr(file_utils, "get_file", lambda *args, **kwargs: str(path))
    options = {} if alpha is None else {"alpha": alpha}
    _assert_holds_weights_of(_backbone(name, pretrained="imagenet", **options), reference)


def test_weights_file_of_another_alpha_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "wide.weights.h5"
    _reference("mobilenetv3_small", alpha=1.0).save_weights(path)
    with pytest.raises(ValueError, match=r"does not fit MobileNetV3Small .*alpha=0.75"):
        _backbone("mobilenetv3_small", alpha=0.75, pretrained=str(path))


def test_missing_weights_file_names_it(tmp_path) -> None:
    missing = tmp_path / "nope.h5"
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(f"EfficientNetB0 pretrained weights file not found: {missing}"),
    ):
        _backbone("efficientnet_b0", pretrained=str(missing))


# --- pretrained: ImageNet -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "alpha", "valid"),
    [
        ("mobilenetv2", 0.3, "0.35, 0.5, 0.75, 1.0, 1.3, 1.4"),
        ("mobilenetv3_large", 0.5, "0.75, 1.0"),
        ("mobilenetv3_small", 1.25, "0.75, 1.0"),
    ],
)
def test_imagenet_for_an_alpha_without_weights_lists_the_valid_ones(name, alpha, valid) -> None:
    with pytest.raises(
        ValueError, match=rf"alpha={alpha}; valid alphas: {valid} \(or set pretrained: null\)"
    ):
        _backbone(name, alpha=alpha, pretrained="imagenet")


@pytest.mark.parametrize("alpha", [0, -0.5, "wide", True])
def test_alpha_must_be_a_positive_number(alpha) -> None:
    with pytest.raises(ValueError, match="MobileNetV2 alpha must be a positive number"):
        _backbone("mobilenetv2", alpha=alpha)


@pytest.mark.parametrize(
    ("name", "size", "options", "file"),
    [
        ("mobilenetv1", 96, {"alpha": 0.5}, "mobilenet/mobilenet_5_0_224_tf_no_top.h5"),
        (
            "mobilenetv2",
            128,
            {"alpha": 0.35},
            "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_128_no_top.h5",
        ),
        # An integer alpha from YAML ("alpha: 1") must name the same file as 1.0.
        (
            "mobilenetv3_small",
            64,
            {"alpha": 1},
            "mobilenet_v3/weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        ),
        (
            "mobilenetv3_large",
            64,
            {"alpha": 0.75},
            "mobilenet_v3/weights_mobilenet_v3_large_224_0.75_float_no_top_v2.h5",
        ),
        ("efficientnet_b0", 64, {}, "efficientnetb0_notop.h5"),
    ],
)
def test_imagenet_offline_names_the_file_keras_downloads(monkeypatch, name, size, options, file):
    from keras.src.utils import file_utils

    asked = []

    def offline(fname, origin=None, *args, **kwargs):
        asked.append(origin)
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(RuntimeError, match="URL fetch failure") as info:
        _backbone(name, size=size, pretrained="imagenet", **options)
    message = str(info.value)
    (origin,) = asked
    assert origin.endswith(file) and origin in message
    assert "set model.pretrained to the file's path" in message
