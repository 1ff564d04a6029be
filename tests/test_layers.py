"""Tests for nets/layers.py (GhostConv) and how the MAC counter sees composite layers."""

from __future__ import annotations

import math

import h5py
import keras
import numpy as np
import pytest
from keras.src.legacy.saving import legacy_h5_format

from nets.layers import GhostConv, nested_layers
from utils.flops import count_macs, macs_by_layer

BN_EPSILON = 1e-3  # Keras' BatchNormalization default


def _model(layer: keras.layers.Layer, shape: tuple[int, ...]) -> keras.Model:
    inputs = keras.Input(shape)
    return keras.Model(inputs, layer(inputs))


def _trainable_params(model: keras.Model) -> int:
    return sum(math.prod(weight.shape) for weight in model.trainable_weights)


# --- fidelity with the published figures ----------------------------------------------------


def test_ghostconv_matches_published_params_and_thop_flops() -> None:
    # GhostModule(64, 128, kernel 3, ratio 2, dw 3) on a 64x32x32 input, profiled with thop:
    # 37,696 params and 38,862,848 "FLOPs"; a plain 3x3 conv: 73,856 and 75,497,472.
    ghost = _model(GhostConv(128, 3, ratio=2, dw_size=3, name="ghost"), (32, 32, 64))
    plain = _model(keras.layers.Conv2D(128, 3, padding="same"), (32, 32, 64))
    assert _trainable_params(ghost) == 37_696
    assert _trainable_params(plain) == 73_856
    assert count_macs(ghost, norm_layers="thop") == 38_862_848
    assert count_macs(plain, norm_layers="thop") == 75_497_472


def test_ghostconv_macs_per_sublayer_in_both_conventions() -> None:
    ghost = _model(GhostConv(128, 3, name="ghost"), (32, 32, 64))
    convs = {
        "ghost/primary_conv": 32 * 32 * 64 * (3 * 3 * 64),  # 64 intrinsic maps
        "ghost/cheap_conv": 32 * 32 * 64 * (3 * 3),  # one depthwise 3x3 map per intrinsic map
    }
    assert macs_by_layer(ghost) == convs  # BN free by default
    assert count_macs(ghost) == 38_338_560
    # thop: 2 ops per BN input element, x2 for the affine gamma/beta.
    bns = {"ghost/primary_bn": 4 * 32 * 32 * 64, "ghost/cheap_bn": 4 * 32 * 32 * 64}
    assert macs_by_layer(ghost, norm_layers="thop") == {**convs, **bns}


def test_thop_norm_convention_by_hand() -> None:
    affine = _model(keras.layers.BatchNormalization(), (4, 4, 8))
    plain = _model(keras.layers.BatchNormalization(center=False, scale=False), (4, 4, 8))
    layer_norm = _model(keras.layers.LayerNormalization(), (5, 6))
    assert count_macs(affine) == 0
    assert count_macs(affine, norm_layers="thop") == 4 * 128
    assert count_macs(plain, norm_layers="thop") == 2 * 128
    assert count_macs(layer_norm, norm_layers="thop") == 4 * 30
    with pytest.raises(ValueError, match="norm_layers must be one of free, thop"):
        count_macs(affine, norm_layers="torch")


class _Opaque(keras.layers.Layer):
    """Owns a conv but does not describe its calls: counting it must fail, not undercount."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 1)

    def call(self, inputs):
        return self.conv(inputs)


def test_counter_refuses_composite_layers_without_sublayer_calls() -> None:
    with pytest.raises(ValueError, match=r"'opaque'.*sublayer_calls"):
        count_macs(_model(_Opaque(name="opaque"), (4, 4, 2)))


def test_ghostconv_repeated_calls_count_once_per_call() -> None:
    inputs = keras.Input((8, 8, 4))
    ghost = GhostConv(4, name="ghost")  # 1x1 primary 4->2, depthwise 3x3 2->2
    model = keras.Model(inputs, ghost(ghost(inputs)))
    per_call = 64 * 2 * 4 + 64 * 2 * 9
    assert count_macs(model) == 2 * per_call


# --- structure ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "ratio", "strides", "primary", "shape"),
    [
        (8, 2, 1, 4, (None, 16, 16, 8)),
        (5, 2, 1, 3, (None, 16, 16, 5)),  # ceil(5/2)=3 + 3 ghost maps, cut to 5
        (8, 3, 2, 3, (None, 8, 8, 8)),  # ceil(8/3)=3 + 6 ghost maps, cut to 8; stride 2
    ],
)
def test_ghostconv_channels_and_strides(
    filters: int, ratio: int, strides: int, primary: int, shape: tuple
) -> None:
    layer = GhostConv(filters, 3, ratio=ratio, strides=strides, name="ghost")
    model = _model(layer, (16, 16, 6))
    assert tuple(model.output.shape) == shape
    assert layer.compute_output_shape((None, 16, 16, 6)) == shape
    assert layer.primary_conv.filters == primary
    assert layer.cheap_conv.depth_multiplier == ratio - 1
    out = model(np.random.rand(2, 16, 16, 6).astype("float32"))
    assert tuple(out.shape) == (2, *shape[1:])


@pytest.mark.parametrize("activation", ["relu", None])
def test_ghostconv_computes_primary_then_cheap_maps(activation: str | None) -> None:
    keras.utils.set_random_seed(3)
    layer = GhostConv(6, 3, ratio=3, activation=activation, name="ghost")
    x = np.random.randn(2, 8, 8, 4).astype("float32")
    out = keras.ops.convert_to_numpy(_model(layer, (8, 8, 4))(x, training=False))

    # Fresh BNs in inference are x / sqrt(1 + eps); compute the module from its kernels.
    def bn_act(t):
        t = t / np.sqrt(1.0 + BN_EPSILON)
        return keras.ops.relu(t) if activation else t

    primary = bn_act(keras.ops.conv(x, layer.primary_conv.kernel, padding="same"))
    cheap = bn_act(keras.ops.depthwise_conv(primary, layer.cheap_conv.kernel, padding="same"))
    expected = keras.ops.convert_to_numpy(keras.ops.concatenate([primary, cheap], -1))[..., :6]
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert (out < 0).any() == (activation is None)


def test_ghostconv_weight_paths_are_stable() -> None:
    model = _model(GhostConv(8, 3, name="ghost"), (8, 8, 4))
    assert [weight.path for weight in model.weights] == [
        "ghost/primary_conv/kernel",
        "ghost/primary_bn/gamma",
        "ghost/primary_bn/beta",
        "ghost/primary_bn/moving_mean",
        "ghost/primary_bn/moving_variance",
        "ghost/cheap_conv/kernel",
        "ghost/cheap_bn/gamma",
        "ghost/cheap_bn/beta",
        "ghost/cheap_bn/moving_mean",
        "ghost/cheap_bn/moving_variance",
    ]
    names = {layer.name for layer in nested_layers(model)}
    assert {"ghost", "primary_conv", "primary_bn", "cheap_conv", "cheap_bn"} <= names


def test_ghostconv_training_updates_bn_and_freezing_covers_sublayers() -> None:
    layer = GhostConv(4, name="ghost")
    model = _model(layer, (4, 4, 2))
    model(np.full((1, 4, 4, 2), 5.0, "float32"), training=True)
    assert np.any(keras.ops.convert_to_numpy(layer.primary_bn.moving_mean) != 0)
    layer.trainable = False
    assert not model.trainable_weights
    assert all(not sub.trainable for sub in nested_layers(layer))


def test_ghostconv_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ratio >= 2"):
        GhostConv(8, ratio=1)
    with pytest.raises(ValueError, match="filters >= 1"):
        GhostConv(0)
    with pytest.raises(ValueError, match="swishy"):
        GhostConv(8, activation="swishy")


def test_ghostconv_follows_mixed_precision_policy() -> None:
    layer = GhostConv(4, dtype="mixed_float16", name="ghost")
    model = _model(layer, (4, 4, 2))
    assert layer.cheap_bn.compute_dtype == "float16"
    assert layer.primary_conv.kernel.dtype == "float32"
    assert model.output.dtype == "float16"


# --- serialisation and weights --------------------------------------------------------------


def test_ghostconv_config_round_trip_and_keras_file(tmp_path) -> None:
    layer = GhostConv(
        7, 3, ratio=3, dw_size=5, strides=2, activation="relu6", bn_epsilon=1e-5, name="ghost"
    )
    config = layer.get_config()
    assert {key: config[key] for key in ("filters", "kernel_size", "ratio", "dw_size")} == {
        "filters": 7,
        "kernel_size": 3,
        "ratio": 3,
        "dw_size": 5,
    }
    assert (config["strides"], config["activation"], config["bn_epsilon"]) == (2, "relu6", 1e-5)
    rebuilt = GhostConv.from_config(config)
    assert rebuilt.get_config() == config
    assert rebuilt.primary_bn.epsilon == rebuilt.cheap_bn.epsilon == 1e-5
    assert keras.saving.get_registered_name(GhostConv) == "yolo>GhostConv"

    model = _model(layer, (8, 8, 3))
    x = np.random.rand(2, 8, 8, 3).astype("float32")
    model.save(tmp_path / "ghost.keras")
    loaded = keras.saving.load_model(tmp_path / "ghost.keras")
    assert isinstance(loaded.get_layer("ghost"), GhostConv)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def _stem_and_ghost(stem_name: str, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name=stem_name)(inputs)
    return keras.Model(inputs, GhostConv(8, 3, name="ghost")(x))


def test_ghostconv_weights_round_trip(tmp_path) -> None:
    saved = _stem_and_ghost("stem", seed=1)
    saved.save_weights(tmp_path / "m.weights.h5")
    fresh = _stem_and_ghost("stem", seed=2)
    fresh.load_weights(tmp_path / "m.weights.h5")
    for a, b in zip(fresh.weights, saved.weights, strict=True):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_ghostconv_weights_load_by_layer_name(tmp_path) -> None:
    saved = _stem_and_ghost("stem", seed=1)
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, saved)
    other = _stem_and_ghost("other_stem", seed=2)  # only "ghost" matches by name
    stem_before = keras.ops.convert_to_numpy(other.get_layer("other_stem").kernel)
    other.load_weights(path, by_name=True)
    for a, b in zip(
        other.get_layer("ghost").weights, saved.get_layer("ghost").weights, strict=True
    ):
        assert a.path == b.path
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    kernel = keras.ops.convert_to_numpy(other.get_layer("other_stem").kernel)
    np.testing.assert_array_equal(kernel, stem_before)
