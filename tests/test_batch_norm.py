"""The fused BatchNormalization (nets.layers): Keras' numbers, variables and files, fused kernel.

Every test holds our layer against ``keras.layers.BatchNormalization`` with the same arguments
and weights: outputs, gradients and moving statistics must agree to float32 rounding.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from nets import build_yolo, set_backbone_trainable
from nets.layers import BatchNormalization, nested_layers, with_fused_batchnorm

SHAPE = (4, 6, 5, 8)


def _numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


def _inputs(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    # Channels of different means and spreads, so that statistics per channel matter.
    rng = np.random.default_rng(seed)
    channels = shape[-1]
    spread = np.linspace(0.5, 4.0, channels)
    return (rng.normal(size=shape) * spread + np.arange(channels)).astype("float32")


def _pair(
    shape: tuple[int, ...] = SHAPE, **kwargs
) -> tuple[keras.layers.BatchNormalization, BatchNormalization]:
    """Keras' layer and ours, built, with the same (non-trivial) weights."""
    keras_bn, ours = keras.layers.BatchNormalization(**kwargs), BatchNormalization(**kwargs)
    keras_bn.build(shape)
    ours.build(shape)
    rng = np.random.default_rng(1)
    weights = [rng.uniform(0.5, 2.0, w.shape).astype("float32") for w in keras_bn.weights]
    keras_bn.set_weights(weights)
    ours.set_weights(weights)
    return keras_bn, ours


def _output_and_gradients(
    layer: keras.layers.BatchNormalization, x: np.ndarray, training: bool
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Output and d(loss)/d(input, trainable weights) for a loss weighting every output."""
    x = tf.constant(x)
    upstream = tf.cos(tf.reshape(tf.range(tf.size(x), dtype="float32"), x.shape))
    variables = [w.value for w in layer.trainable_weights]
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, "float32") * upstream)
    return _numpy(y), [_numpy(g) for g in tape.gradient(loss, [x, *variables])]


def _fused_ops(layer: keras.layers.Layer, x: np.ndarray, **call_kwargs) -> list[str]:
    """The fused batch-norm ops in the graph of ``layer``'s call on ``x``."""
    call = tf.function(lambda t: layer(t, **call_kwargs))
    graph = call.get_concrete_function(tf.TensorSpec(x.shape, "float32")).graph
    return [op.type for op in graph.get_operations() if op.type.startswith("FusedBatchNorm")]


def _stats(layer: keras.layers.BatchNormalization) -> list[np.ndarray]:
    return [_numpy(layer.moving_mean), _numpy(layer.moving_variance)]


# --- numbers --------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"epsilon": 1e-5, "momentum": 0.9}, {"center": False, "scale": False}],
    ids=["defaults", "torch_epsilon", "no_affine"],
)
def test_forward_and_gradients_match_keras(training: bool, kwargs: dict) -> None:
    keras_bn, ours = _pair(**kwargs)
    x = _inputs()
    expected, expected_grads = _output_and_gradients(keras_bn, x, training)
    got, got_grads = _output_and_gradients(ours, x, training)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert len(got_grads) == (3 if ours.scale else 1)
    for g, e in zip(got_grads, expected_grads, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_moving_statistics_update_like_keras() -> None:
    # Keras: moving = moving * momentum + batch * (1 - momentum), with the BIASED batch variance
    # (the fused kernel returns the Bessel-corrected one).
    keras_bn, ours = _pair(momentum=0.8)
    step = tf.function(lambda layer, x: layer(x, training=True))
    for seed in range(4):
        x = _inputs(seed)
        np.testing.assert_allclose(
            _numpy(step(ours, x)), _numpy(step(keras_bn, x)), rtol=1e-5, atol=1e-5
        )
        for got, expected in zip(_stats(ours), _stats(keras_bn), strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-6)
    # One step by hand: mean and biased variance over batch and space.
    before = _stats(ours)
    x = _inputs(9)
    ours(x, training=True)
    mean, variance = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(_stats(ours)[0], before[0] * 0.8 + mean * 0.2, rtol=1e-5)
    np.testing.assert_allclose(_stats(ours)[1], before[1] * 0.8 + variance * 0.2, rtol=1e-5)


def test_frozen_layer_normalises_with_moving_statistics_like_keras() -> None:
    keras_bn, ours = _pair()
    keras_bn.trainable = ours.trainable = False
    before = _stats(ours)
    x = _inputs()
    frozen_training = _numpy(ours(x, training=True))
    np.testing.assert_allclose(frozen_training, _numpy(keras_bn(x, training=True)), atol=1e-5)
    np.testing.assert_array_equal(frozen_training, _numpy(ours(x, training=False)))
    for got, expected in zip(_stats(ours), before, strict=True):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("training", [True, False])
def test_mixed_precision_is_close_to_float32_keras(policy: str, training: bool) -> None:
    keras_bn, _ = _pair()
    ours = BatchNormalization(dtype=policy)
    ours.build(SHAPE)
    ours.set_weights(keras_bn.get_weights())
    assert ours.gamma.dtype == ours.moving_mean.dtype == "float32"
    x = _inputs()
    # Compare on the half-precision input both see, so only the computation differs.
    x = _numpy(keras.ops.cast(keras.ops.cast(x, ours.compute_dtype), "float32"))
    expected, expected_grads = _output_and_gradients(keras_bn, x, training)
    got, got_grads = _output_and_gradients(ours, x, training)
    assert got.dtype == ours.compute_dtype
    # Outputs of a few units, rounded once to bfloat16 (8 bits) or float16 (11 bits).
    np.testing.assert_allclose(got.astype("float32"), expected, rtol=1e-2, atol=2e-2)
    for g, e in zip(got_grads[1:], expected_grads[1:], strict=True):  # gamma, beta: float32
        np.testing.assert_allclose(g, e, rtol=2e-2, atol=0.1)
    if training:
        for got_stat, expected_stat in zip(_stats(ours), _stats(keras_bn), strict=True):
            np.testing.assert_allclose(got_stat, expected_stat, rtol=1e-4)


# --- where the fused kernel runs ------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_four_d_channels_last_runs_the_fused_kernel(training: bool) -> None:
    _, ours = _pair()
    assert _fused_ops(ours, _inputs(), training=training) == ["FusedBatchNormV3"]


@pytest.mark.parametrize(
    ("shape", "kwargs"),
    [
        (SHAPE, {"synchronized": True}),  # the kernel cannot all-reduce across replicas
        (SHAPE, {"axis": 1}),
        ((4, 6, 8), {}),
        ((4, 2, 3, 5, 8), {}),
        (SHAPE, {"renorm": True}),
    ],
    ids=["synchronized", "axis_1", "rank_3", "rank_5", "renorm"],
)
@pytest.mark.parametrize("training", [True, False])
def test_other_cases_fall_back_to_keras(shape: tuple, kwargs: dict, training: bool) -> None:
    keras_bn, ours = _pair(shape, **kwargs)
    x = _inputs(shape=shape)
    assert _fused_ops(ours, x, training=training) == []
    np.testing.assert_allclose(
        _numpy(ours(x, training=training)), _numpy(keras_bn(x, training=training)), atol=1e-5
    )
    for got, expected in zip(_stats(ours), _stats(keras_bn), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_a_mask_falls_back_to_keras() -> None:
    keras_bn, ours = _pair()
    x = _inputs()
    mask = np.random.default_rng(2).random(SHAPE[:-1]) > 0.3
    np.testing.assert_allclose(
        _numpy(ours(x, training=True, mask=mask)),
        _numpy(keras_bn(x, training=True, mask=mask)),
        atol=1e-5,
    )
    for got, expected in zip(_stats(ours), _stats(keras_bn), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_setting_synchronized_after_build_leaves_the_kernel() -> None:
    # utils/engine/distribute.synchronize_batchnorm flips the flag on built layers.
    _, ours = _pair()
    ours.synchronized = True
    assert _fused_ops(ours, _inputs(), training=True) == []


# --- config, variables and files ------------------------------------------------------------


def test_is_keras_batchnorm_with_its_config_and_variables() -> None:
    keras_bn, ours = _pair(momentum=0.97, epsilon=1e-5, name="bn")
    assert isinstance(ours, keras.layers.BatchNormalization)
    assert keras.saving.get_registered_name(BatchNormalization) == "yolo>BatchNormalization"
    assert ours.get_config() == {**keras_bn.get_config(), "name": "bn"}
    assert [w.name for w in ours.weights] == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert BatchNormalization.from_config(ours.get_config()).get_config() == ours.get_config()


def _conv_bn(bn_class: type, seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 5, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    return keras.Model(inputs, bn_class(name="bn")(x))


def _assert_same_weights(a: keras.Model, b: keras.Model) -> None:
    for wa, wb in zip(a.weights, b.weights, strict=True):
        assert wa.path == wb.path
        np.testing.assert_array_equal(_numpy(wa), _numpy(wb))


def test_keras_file_round_trip(tmp_path) -> None:
    model = _conv_bn(BatchNormalization, seed=1)
    x = _inputs(shape=(2, 6, 5, 3))
    model(x, training=True)  # non-initial moving statistics
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert type(loaded.get_layer("bn")) is BatchNormalization
    _assert_same_weights(loaded, model)
    np.testing.assert_array_equal(_numpy(loaded(x)), _numpy(model(x)))


@pytest.mark.parametrize(
    ("saved_with", "loaded_into"),
    [
        (BatchNormalization, BatchNormalization),
        (keras.layers.BatchNormalization, BatchNormalization),  # checkpoints from before
        (BatchNormalization, keras.layers.BatchNormalization),
    ],
    ids=["ours_to_ours", "keras_to_ours", "ours_to_keras"],
)
def test_weights_files_load_across_both_classes(saved_with, loaded_into, tmp_path) -> None:
    saved = _conv_bn(saved_with, seed=1)
    saved(_inputs(shape=(2, 6, 5, 3)), training=True)
    saved.save_weights(tmp_path / "m.weights.h5")
    fresh = _conv_bn(loaded_into, seed=2)
    fresh.load_weights(tmp_path / "m.weights.h5")
    _assert_same_weights(fresh, saved)


def test_with_fused_batchnorm_keeps_names_config_and_weights() -> None:
    keras.utils.set_random_seed(3)
    original = keras.applications.MobileNet(
        input_shape=(64, 64, 3), include_top=False, weights=None, alpha=0.25
    )
    for layer in original.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.random.default_rng(0).normal(size=layer.moving_mean.shape))
    fused = with_fused_batchnorm(original)
    norms = [layer for layer in fused.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(type(layer) is BatchNormalization for layer in norms)
    assert [layer.name for layer in fused.layers] == [layer.name for layer in original.layers]
    for layer in norms:
        assert layer.get_config() == original.get_layer(layer.name).get_config()
    _assert_same_weights(fused, original)
    x = np.random.default_rng(4).random((2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(_numpy(fused(x)), _numpy(original(x)), rtol=1e-4, atol=1e-4)


# --- the models -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("backbone", "options", "neck", "neck_conv"),
    [
        ("mobilenetv1", {"alpha": 0.25}, "yolov4_panet", "ghost"),
        ("mobilenetv2", {"alpha": 0.35}, "yolov3_fpn", "depthwise"),
        ("mobilenetv3_large", {"alpha": 0.75}, "yolov4_panet", "standard"),
        ("mobilenetv3_small", {"alpha": 0.75}, "yolov4_panet", "depthwise"),
        ("efficientnet_b0", {}, "yolov4_panet", "depthwise"),
        ("ghostnet", {"alpha": 0.5}, "yolov4_panet", "depthwise"),
        ("shufflenetv2", {"alpha": 0.5}, "yolov4_panet", "depthwise"),
    ],
)
def test_every_model_builds_with_only_the_fused_batchnorm(backbone, options, neck, neck_conv):
    model = build_yolo(
        (64, 64, 3),
        2,
        backbone=backbone,
        backbone_options=options,
        neck=neck,
        neck_options={"alpha": 0.25},
        neck_conv=neck_conv,
    )
    norms = [
        layer
        for layer in nested_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    in_backbone = set(map(id, nested_layers(model.get_layer("backbone"))))
    assert any(id(layer) in in_backbone for layer in norms)
    assert any(id(layer) not in in_backbone for layer in norms)
    plain = [layer.name for layer in norms if type(layer) is not BatchNormalization]
    assert not plain


def test_frozen_backbone_keeps_its_batchnorm_statistics() -> None:
    model = build_yolo(
        (64, 64, 3),
        2,
        backbone="mobilenetv1",
        backbone_options={"alpha": 0.25},
        neck="yolov4_panet",
        neck_options={"alpha": 0.25},
        bn_momentum=0.5,
    )
    backbone = model.get_layer("backbone")

    def stats(owner: keras.Model) -> list[np.ndarray]:
        return [
            _numpy(w)
            for layer in nested_layers(owner)
            if isinstance(layer, BatchNormalization)
            for w in (layer.moving_mean, layer.moving_variance)
        ]

    images = np.random.default_rng(5).random((2, 64, 64, 3)).astype("float32")
    set_backbone_trainable(model, False)
    backbone_before, model_before = stats(backbone), stats(model)
    model(images, training=True)
    for got, expected in zip(stats(backbone), backbone_before, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert any(not np.array_equal(a, b) for a, b in zip(stats(model), model_before, strict=True))

    set_backbone_trainable(model, True)
    model(images, training=True)
    assert any(
        not np.array_equal(a, b) for a, b in zip(stats(backbone), backbone_before, strict=True)
    )
