"""Tests for the registries, MobileNetV1 backbone, YOLO builder and FLOPs (necks: test_necks)."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from nets import BACKBONES, NECKS, build_model, build_yolo, set_backbone_trainable
from nets.backbones.mobilenet_v1 import mobilenetv1
from nets.registry import Registry, UnknownNameError
from tools import summary
from utils.flops import count_flops, count_macs, macs_by_layer


def _small_yolo(
    num_classes: int = 3, size: int = 128, anchors: int = 3, head: str = "anchor_based"
) -> keras.Model:
    """MobileNetV1 x0.25 + PANet x0.25 (tools/summary.py's defaults at --alpha 0.25); the
    anchor-free head with base.yaml's reg_max."""
    options = {"num_anchors": anchors} if head == "anchor_based" else {"reg_max": 16}
    return build_yolo(
        (size, size, 3),
        num_classes,
        backbone="mobilenetv1",
        backbone_options={"alpha": 0.25},
        neck="yolov4_panet",
        neck_options={"alpha": 0.25},
        head=head,
        head_options=options,
    )


def _tiny_mobilenet(alpha: float = 0.25) -> keras.Model:
    keras.utils.set_random_seed(7)
    return keras.applications.MobileNet(
        input_shape=(64, 64, 3), include_top=False, weights=None, alpha=alpha
    )


def _backbone_of(inputs: keras.KerasTensor, **kwargs) -> keras.Model:
    return keras.Model(inputs, mobilenetv1(inputs, **kwargs)).get_layer("backbone")


# --- registry -------------------------------------------------------------------------------


def test_registry_get_and_names() -> None:
    registry = Registry("widget")

    @registry.register("beta")
    def beta() -> str:
        return "b"

    registry.register("alpha")(lambda: "a")
    assert registry.names() == ["alpha", "beta"]
    assert registry.get("beta") is beta
    assert "alpha" in registry and "gamma" not in registry


def test_registry_unknown_name_lists_valid_names_closest_first() -> None:
    registry = Registry("widget")
    for name in ("shufflenetv2", "mobilenetv2", "ghostnet"):
        registry.register(name)(lambda: None)
    with pytest.raises(UnknownNameError) as info:
        registry.get("mobilenet_v2")
    message = str(info.value)
    assert message.startswith("unknown widget 'mobilenet_v2'")
    assert message.endswith("mobilenetv2, shufflenetv2, ghostnet")
    # Callers may catch either kind of error.
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_registry_rejects_duplicates() -> None:
    registry = Registry("widget")
    registry.register("x")(lambda: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("x")(lambda: None)


def test_importing_nets_registers_families() -> None:
    assert "mobilenetv1" in BACKBONES.names()
    assert "yolov4_panet" in NECKS.names()
    with pytest.raises(KeyError, match="mobilenetv1"):
        build_yolo((64, 64, 3), 1, backbone="mobilenet", neck="yolov4_panet")


# --- backbone -------------------------------------------------------------------------------


def test_mobilenetv1_taps_strides_and_channels() -> None:
    inputs = keras.Input((96, 96, 3))
    c3, c4, c5 = mobilenetv1(inputs, alpha=0.25)
    # Strides 8, 16, 32; channels int(256a), int(512a), int(1024a) at a = 0.25.
    assert tuple(c3.shape) == (None, 12, 12, 64)
    assert tuple(c4.shape) == (None, 6, 6, 128)
    assert tuple(c5.shape) == (None, 3, 3, 256)


def test_mobilenetv1_is_a_named_nested_model_that_rescales_inputs() -> None:
    backbone = _backbone_of(keras.Input((64, 64, 3)), alpha=0.25)
    assert isinstance(backbone, keras.Model) and backbone.name == "backbone"
    scale = backbone.get_layer("to_signed_unit")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(scale(np.array([0.0, 0.5, 1.0]))), [-1.0, 0.0, 1.0]
    )


@pytest.mark.parametrize("suffix", [".weights.h5", "_legacy.h5", "_full_model.h5", ".keras"])
def test_mobilenetv1_loads_local_weights_file(tmp_path, suffix: str) -> None:
    reference = _tiny_mobilenet()
    path = tmp_path / f"mobilenet{suffix}"
    if suffix in (".weights.h5", "_legacy.h5"):
        reference.save_weights(path) if suffix == ".weights.h5" else _save_legacy(reference, path)
    else:
        reference.save(path)

    backbone = _backbone_of(keras.Input((64, 64, 3)), alpha=0.25, pretrained=str(path))
    compared = 0
    for layer in reference.layers:
        if not layer.weights:
            continue
        for expected, loaded in zip(
            layer.weights, backbone.get_layer(layer.name).weights, strict=True
        ):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(loaded), keras.ops.convert_to_numpy(expected)
            )
            compared += 1
    assert compared == len(reference.weights) > 0
    # A fresh random init would not reproduce these values.
    fresh = _backbone_of(keras.Input((64, 64, 3)), alpha=0.25)
    assert not np.array_equal(
        keras.ops.convert_to_numpy(fresh.get_layer("conv1").kernel),
        keras.ops.convert_to_numpy(reference.get_layer("conv1").kernel),
    )


def _save_legacy(model: keras.Model, path) -> None:
    """Weights-only HDF5 in the layout of Keras' official *_no_top.h5 files."""
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def test_mobilenetv1_weights_for_other_alpha_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "half.weights.h5"
    _tiny_mobilenet(alpha=0.5).save_weights(path)
    with pytest.raises(ValueError, match=r"does not fit MobileNetV1 .*alpha=0.25"):
        mobilenetv1(keras.Input((64, 64, 3)), alpha=0.25, pretrained=str(path))


def test_mobilenetv1_missing_weights_file(tmp_path) -> None:
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        mobilenetv1(keras.Input((64, 64, 3)), alpha=0.25, pretrained=str(missing))


def test_mobilenetv1_imagenet_bad_alpha_lists_valid_alphas() -> None:
    with pytest.raises(ValueError, match=r"alpha=0.3; valid alphas: 0.25, 0.5, 0.75, 1.0"):
        mobilenetv1(keras.Input((64, 64, 3)), alpha=0.3, pretrained="imagenet")


def test_mobilenetv1_imagenet_offline_says_where_to_download(monkeypatch) -> None:
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)
    url = (
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/"
        "mobilenet_2_5_128_tf_no_top.h5"
    )
    with pytest.raises(RuntimeError, match="URL fetch failure") as info:
        mobilenetv1(keras.Input((128, 128, 3)), alpha=0.25, pretrained="imagenet")
    assert url in str(info.value) and "pretrained" in str(info.value)


# --- model ----------------------------------------------------------------------------------


def test_build_yolo_outputs_order_shapes_and_names() -> None:
    model = _small_yolo(num_classes=3)
    assert model.name == "yolo"
    # A * (5 + C) = 3 * 8 = 24 channels, largest stride first.
    assert [tuple(out.shape) for out in model.outputs] == [
        (None, 4, 4, 24),
        (None, 8, 8, 24),
        (None, 16, 16, 24),
    ]
    assert model.output_names == ["head_p5", "head_p4", "head_p3"]
    outputs = model.predict(np.random.rand(2, 128, 128, 3).astype("float32"), verbose=0)
    assert [out.shape for out in outputs] == [(2, 4, 4, 24), (2, 8, 8, 24), (2, 16, 16, 24)]
    assert all(np.isfinite(out).all() for out in outputs)


def test_anchor_based_bias_starts_at_yolov5_priors() -> None:
    model = _small_yolo(num_classes=3, anchors=2)
    bias = keras.ops.convert_to_numpy(model.get_layer("head_p3").bias)
    # 128 / 8 = 16 -> 256 cells: objectness log(8 / 256); classes log(0.6 / (3 - 0.99)).
    per_anchor = [0, 0, 0, 0, math.log(8 / 256)] + [math.log(0.6 / 2.01)] * 3
    np.testing.assert_allclose(bias, per_anchor * 2, rtol=1e-6)
    p5_bias = keras.ops.convert_to_numpy(model.get_layer("head_p5").bias)
    assert p5_bias[4] == pytest.approx(math.log(8 / 16))  # 4x4 grid


def test_set_backbone_trainable_freezes_exactly_the_backbone() -> None:
    model = _small_yolo()
    backbone_ids = {id(w) for w in model.get_layer("backbone").weights}
    trainable_all = {id(w) for w in model.trainable_weights}

    set_backbone_trainable(model, False)
    trainable = {id(w) for w in model.trainable_weights}
    assert trainable.isdisjoint(backbone_ids)
    assert trainable == trainable_all - backbone_ids
    assert any(w.name == "kernel" for w in model.get_layer("head_p3").trainable_weights)

    set_backbone_trainable(model, True)
    assert {id(w) for w in model.trainable_weights} == trainable_all


def test_build_yolo_rejects_sizes_not_multiple_of_32() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        build_yolo((100, 128, 3), 3, backbone="mobilenetv1", neck="yolov4_panet")


def test_build_model_from_config_section() -> None:
    model_cfg = SimpleNamespace(
        input_size=[64, 96],
        backbone="mobilenetv1",
        backbone_options={"alpha": 0.25},
        neck="yolov4_panet",
        neck_options={"alpha": None},  # null -> builder default alpha 1.0
        neck_conv="depthwise",
        head="anchor_based",
        reg_max=16,
        anchors_mask=[[6, 7, 8], [3, 4, 5], [0, 1, 2]],
        pretrained=None,
        bn_momentum=0.9,
    )
    model = build_model(model_cfg, num_classes=2)
    assert [tuple(out.shape) for out in model.outputs] == [
        (None, 2, 3, 21),
        (None, 4, 6, 21),
        (None, 8, 12, 21),
    ]
    assert model.get_layer("neck_bu_p5_5_conv").filters == 512
    batch_norms = [
        layer
        for owner in (model, model.get_layer("backbone"))
        for layer in owner.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert batch_norms and all(layer.momentum == 0.9 for layer in batch_norms)

    model_cfg.anchors_mask = [[0, 1], [2, 3, 4], [5, 6, 7]]
    with pytest.raises(ValueError, match="anchors_mask"):
        build_model(model_cfg, num_classes=2)


def test_weights_round_trip_into_a_fresh_build(tmp_path) -> None:
    keras.utils.set_random_seed(1)
    trained = _small_yolo(size=64)
    path = tmp_path / "yolo.weights.h5"
    trained.save_weights(path)
    keras.utils.set_random_seed(2)
    fresh = _small_yolo(size=64)
    pairs = zip(fresh.get_weights(), trained.get_weights(), strict=True)
    assert not all(np.array_equal(a, b) for a, b in pairs)
    fresh.load_weights(path)
    for loaded, saved in zip(fresh.weights, trained.weights, strict=True):
        assert loaded.path == saved.path
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(loaded), keras.ops.convert_to_numpy(saved)
        )


@pytest.mark.parametrize(
    ("backbone", "neck", "head", "options"),
    [
        ("shufflenetv2", "yolov3_fpn", "anchor_free", {"reg_max": 8}),  # demo.yaml's families
        ("mobilenetv3_small", "yolov4_panet", "anchor_based", {"num_anchors": 3}),
    ],
)
def test_any_size_model_takes_multi_scale_batches_with_the_fixed_size_weights(
    backbone, neck, head, options
) -> None:
    """any_size (augment.multi_scale): one model for every multiple of 32, holding exactly the
    weights of the fixed-size model, which alone refuses another size."""
    kwargs = dict(
        backbone=backbone, backbone_options={"alpha": 0.5}, neck=neck,
        neck_options={"alpha": 0.25}, head=head, head_options=options,
    )  # fmt: skip
    keras.utils.set_random_seed(3)
    fixed = build_yolo((64, 64, 3), 2, **kwargs)
    keras.utils.set_random_seed(3)
    flexible = build_yolo((64, 64, 3), 2, any_size=True, **kwargs)
    assert flexible.input_shape == (None, None, None, 3)
    assert [w.path for w in flexible.weights] == [w.path for w in fixed.weights]
    for ours, theirs in zip(flexible.get_weights(), fixed.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)  # the head's priors use the nominal size
    image = np.random.default_rng(0).uniform(size=(1, 64, 64, 3)).astype(np.float32)
    for ours, theirs in zip(flexible(image), fixed(image), strict=True):
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
    for height, width in ((96, 96), (32, 128)):
        outputs = flexible(np.zeros((2, height, width, 3), np.float32), training=True)
        grids = [tuple(output.shape[1:3]) for output in outputs]
        assert grids == [(height // s, width // s) for s in (32, 16, 8)]
    with pytest.raises(ValueError, match="incompatible"):
        fixed(np.zeros((1, 96, 96, 3), np.float32))


@pytest.mark.parametrize(("num_classes", "params"), [(20, 12_431_009), (80, 12_754_109)])
def test_fidelity_mobilenetv1_yolov4_param_count(num_classes: int, params: int) -> None:
    # Same count as bubbliiiing's mobilenet-yolov4 (alpha 1, 416x416, 3 anchors per scale).
    model = build_yolo(
        (416, 416, 3),
        num_classes,
        backbone="mobilenetv1",
        backbone_options={"alpha": 1.0},
        neck="yolov4_panet",
        neck_options={"alpha": 1.0},
    )
    assert model.count_params() == params
    assert model.get_layer("backbone").count_params() == 3_228_864  # Keras MobileNet, no top


# --- FLOPs ----------------------------------------------------------------------------------


def _one_layer(layer: keras.layers.Layer, shape: tuple[int, ...]) -> keras.Model:
    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


@pytest.mark.parametrize(
    ("layer", "shape", "macs"),
    [
        # 32*32 outputs x 128 filters x 3*3*64 weights each.
        (keras.layers.Conv2D(128, 3, padding="same"), (32, 32, 64), 75_497_472),
        # Stride 2: 16*16 outputs x 64 channels x 9.
        (keras.layers.DepthwiseConv2D(3, strides=2, padding="same"), (32, 32, 64), 147_456),
        # Depthwise 32*32*64*9 + pointwise 32*32*64*128.
        (keras.layers.SeparableConv2D(128, 3, padding="same"), (32, 32, 64), 8_978_432),
        # Each of 8*8 inputs scatters a 3*3*16->32 kernel.
        (keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same"), (8, 8, 16), 294_912),
        # 7 positions x 5 inputs x 10 units.
        (keras.layers.Dense(10), (7, 5), 350),
        # Grouped: 8*8 x 64 filters x 3*3*(32/4).
        (keras.layers.Conv2D(64, 3, groups=4, padding="same"), (8, 8, 32), 294_912),
        (keras.layers.MaxPooling2D(2), (8, 8, 4), 0),
    ],
)
def test_count_macs_by_hand(layer: keras.layers.Layer, shape: tuple[int, ...], macs: int) -> None:
    model = _one_layer(layer, shape)
    assert count_macs(model) == macs
    assert count_flops(model) == 2 * macs


def test_count_macs_walks_nested_models_and_repeated_calls() -> None:
    inner = _one_layer(keras.layers.Conv2D(8, 1, name="pw"), (4, 4, 2))  # 16*8*2 = 256 MACs
    inputs = keras.Input((4, 4, 2))
    shared = keras.layers.Conv2D(2, 1, name="shared")  # 16*2*2 = 64 MACs per call
    outputs = inner(shared(shared(inputs)))
    model = keras.Model(inputs, outputs)
    assert count_macs(model) == 256 + 2 * 64
    assert macs_by_layer(model) == {"shared": 128, f"{inner.name}/pw": 256}


def test_count_macs_needs_fixed_input_size() -> None:
    model = _one_layer(keras.layers.Conv2D(4, 3), (None, None, 3))
    with pytest.raises(ValueError, match="fixed input size"):
        count_macs(model)


# --- summary tool ---------------------------------------------------------------------------


def test_summary_param_breakdown_adds_up() -> None:
    model = _small_yolo(num_classes=3)
    counts = summary.param_breakdown(model)
    assert counts.total == model.count_params()
    assert counts.backbone == model.get_layer("backbone").count_params()
    # Each head: dw 3x3 + BN on c, pw c->2c + BN, 1x1 conv 2c->24 with bias; c = 32, 64, 128.
    head = sum(9 * c + 4 * c + c * 2 * c + 8 * c + 2 * c * 24 + 24 for c in (32, 64, 128))
    assert counts.head == head
    assert counts.backbone + counts.neck + counts.head == counts.total
    # BN moving statistics are the only non-trainable weights: 2 per BN channel.
    assert counts.total - counts.trainable == sum(
        2 * layer.moving_mean.shape[0]
        for layer in _all_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    )


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    result = []
    for layer in model.layers:
        result.extend(_all_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return result


def test_summary_tool_prints_counts(capsys) -> None:
    argv = ["--alpha", "0.25", "--size", "64", "--classes", "3", "--layers"]
    assert summary.main(argv) == 0
    out = capsys.readouterr().out
    model = _small_yolo(num_classes=3, size=64)
    assert f"params total      {model.count_params():>13,}" in out
    assert f"{2 * count_macs(model) / 1e9:>13.3f}" in out
    assert "backbone/conv_pw_13" in out and "head_p3 " in out


def test_summary_tool_reports_user_errors(capsys) -> None:
    assert summary.main(["--backbone", "mobilenet", "--size", "64"]) == 2
    assert "valid names (closest first): mobilenetv1" in capsys.readouterr().err


def test_summary_tool_counts_the_anchor_free_head(capsys) -> None:
    argv = ["--alpha", "0.25", "--size", "64", "--classes", "3", "--head", "anchor_free"]
    assert summary.main(argv) == 0
    out = capsys.readouterr().out
    model = _small_yolo(num_classes=3, size=64, head="anchor_free")
    assert f"params total      {model.count_params():>13,}" in out and "head anchor_free" in out
    with pytest.raises(SystemExit) as exited:
        summary.main([*argv, "--anchors", "2"])
    assert exited.value.code == 2
    assert "--anchors: the anchor_free head uses no anchors" in capsys.readouterr().err


def test_summary_tool_reads_a_config(capsys) -> None:
    argv = ["--config", "configs/base.yaml", "model.input_size=[64,96]"]
    argv += ["model.backbone_options.alpha=0.25", "model.neck_options.alpha=0.25"]
    assert summary.main(argv) == 0
    out = capsys.readouterr().out
    assert "input 64x96" in out and "classes 20" in out
    assert f"params backbone   {218_544:>13,}" in out  # Keras MobileNet alpha 0.25, no top


def test_summary_tool_needs_no_weights_offline(monkeypatch, capsys) -> None:
    """Counting parameters does not download the ImageNet weights a config asks for."""
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: Name or service not known")

    monkeypatch.setattr(file_utils, "get_file", offline)  # whatever is in ~/.keras/models
    argv = ["--config", "configs/mobilenetv2_yolov4.yaml", "model.input_size=[64,64]"]
    assert summary.main(argv) == 0
    out = capsys.readouterr().out
    assert "backbone mobilenetv2" in out and "params total" in out


@pytest.mark.parametrize(
    ("backbone", "options", "message"),
    [
        ("efficientnet_b0", {"alpha": 1.0}, r"backbone_options: .*takes no option alpha"),
        ("mobilenetv1", {"width": 2}, r"takes no option width; valid options: alpha"),
    ],
)
def test_unknown_builder_option_names_the_config_key(backbone, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        build_yolo(
            (64, 64, 3), 2, backbone=backbone, backbone_options=options, neck="yolov4_panet"
        )
