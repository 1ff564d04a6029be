"""Tests for the backbones written after PyTorch references: GhostNet and ShuffleNetV2.

Agreement with the reference outputs is tested in test_convert_torch_weights.py (needs torch);
the tests here need only Keras: reference sizes and MACs, taps, layers, pretrained loading.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import keras
import numpy as np
import pytest

from nets.backbones.ghostnet import ghostnet, ghostnet_classifier
from nets.backbones.shufflenet_v2 import (
    ChannelShuffle,
    ChannelSplit,
    shufflenet_v2_classifier,
    shufflenetv2,
)
from nets.backbones.torch_ported import IMAGENET_MEAN, IMAGENET_STD, conv
from nets.layers import nested_layers
from utils.flops import count_macs

Builder = Callable[..., tuple[keras.KerasTensor, keras.KerasTensor, keras.KerasTensor]]


def _backbone(builder: Builder, size: int = 64, **options) -> keras.Model:
    inputs = keras.Input((size, size, 3))
    return keras.Model(inputs, builder(inputs, **options)).get_layer("backbone")


def _numpy(x) -> np.ndarray:
    return keras.ops.convert_to_numpy(x)


# --- fidelity: sizes and MACs of the reference classifiers ------------------------------------


@pytest.mark.parametrize(
    ("alpha", "params", "trainable", "gmacs"),
    [
        # torchvision shufflenet_v2_x*: state_dict sizes; its docs' GFLOPS (MACs): 0.04 .. 0.58.
        (0.5, 1_374_744, 1_366_792, 0.04),
        (1.0, 2_294_784, 2_278_604, 0.14),
        (1.5, 3_527_064, 3_503_624, 0.30),
        (2.0, 7_427_712, 7_393_996, 0.58),
    ],
)
def test_shufflenet_v2_classifier_matches_torchvision(
    alpha: float, params: int, trainable: int, gmacs: float
) -> None:
    model = shufflenet_v2_classifier(alpha=alpha)
    assert model.count_params() == params  # BN moving statistics included
    assert sum(math.prod(w.shape) for w in model.trainable_weights) == trainable
    assert round(count_macs(model) / 1e9, 2) == gmacs


@pytest.mark.parametrize(
    ("alpha", "params", "trainable"),
    [(1.0, 5_204_476, 5_182_508), (0.5, 2_598_276, 2_587_292)],  # timm ghostnet_100, _050
)
def test_ghostnet_classifier_matches_timm(alpha: float, params: int, trainable: int) -> None:
    model = ghostnet_classifier(alpha=alpha)
    assert model.count_params() == params
    assert sum(math.prod(w.shape) for w in model.trainable_weights) == trainable
    if alpha == 1.0:
        assert round(count_macs(model) / 1e6) == 141  # the paper's 141M FLOPs (MACs)


# --- taps -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "options", "channels"),
    [
        (shufflenetv2, {"alpha": 0.5}, (48, 96, 192)),
        (shufflenetv2, {"alpha": 0.5, "conv5": True}, (48, 96, 1024)),
        (ghostnet, {}, (40, 112, 160)),  # the seed's 52x52x40, 26x26x112, 13x13x160 at 416
        (ghostnet, {"alpha": 0.5}, (20, 56, 80)),
    ],
)
def test_taps_strides_and_channels(builder: Builder, options: dict, channels: tuple) -> None:
    c3, c4, c5 = builder(keras.Input((96, 64, 3)), **options)
    assert tuple(c3.shape) == (None, 12, 8, channels[0])
    assert tuple(c4.shape) == (None, 6, 4, channels[1])
    assert tuple(c5.shape) == (None, 3, 2, channels[2])


def test_backbone_is_nested_and_normalizes_with_imagenet_statistics() -> None:
    backbone = _backbone(shufflenetv2, alpha=0.5)
    assert isinstance(backbone, keras.Model) and backbone.name == "backbone"
    normalize = backbone.get_layer("imagenet_normalize")
    pixels = np.array([IMAGENET_MEAN, np.add(IMAGENET_MEAN, IMAGENET_STD)], dtype="float32")
    np.testing.assert_allclose(_numpy(normalize(pixels)), [[0, 0, 0], [1, 1, 1]], atol=1e-6)


def test_every_batch_norm_uses_the_torch_epsilon() -> None:
    layers = list(nested_layers(_backbone(ghostnet, alpha=0.5)))
    norms = [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]
    # GhostConv's own BatchNorms are among them.
    assert any(layer.path.endswith("ghost1/primary_bn") for layer in norms)
    assert norms and all(layer.epsilon == 1e-5 for layer in norms)


# --- layers -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("groups", "order"), [(2, [0, 4, 1, 5, 2, 6, 3, 7]), (4, [0, 2, 4, 6, 1, 3, 5, 7])]
)
def test_channel_shuffle_interleaves_groups_like_torchvision(groups: int, order: list) -> None:
    # torchvision: view(groups, C / groups) -> transpose -> flatten.
    x = np.broadcast_to(np.arange(8, dtype="float32"), (2, 3, 2, 8))
    shuffled = _numpy(ChannelShuffle(groups)(x))
    np.testing.assert_array_equal(shuffled, np.broadcast_to(np.float32(order), (2, 3, 2, 8)))


def test_channel_split_halves_and_rejects_odd_channels() -> None:
    first, second = ChannelSplit()(np.arange(6, dtype="float32").reshape(1, 1, 1, 6))
    np.testing.assert_array_equal(_numpy(first).ravel(), [0, 1, 2])
    np.testing.assert_array_equal(_numpy(second).ravel(), [3, 4, 5])
    with pytest.raises(ValueError, match="even channel count"):
        ChannelSplit()(keras.Input((4, 4, 5)))


@pytest.mark.parametrize("depthwise", [False, True])
def test_strided_conv_pads_on_every_side_like_torch(depthwise: bool) -> None:
    inputs = keras.Input((4, 4, 1))
    model = keras.Model(inputs, conv(inputs, None if depthwise else 1, 3, "c", strides=2))
    model.get_layer("c").set_weights([np.ones((3, 3, 1, 1), "float32")])
    out = _numpy(model(np.ones((1, 4, 4, 1), "float32")))[0, :, :, 0]
    # Windows start one pixel before the image (padding 1); Keras "same" would give [[9, 6],
    # [6, 4]].
    np.testing.assert_array_equal(out, [[4, 6], [6, 9]])


# --- pretrained -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "classifier", "options"),
    [
        (shufflenetv2, shufflenet_v2_classifier, {"alpha": 0.5, "conv5": True}),
        (ghostnet, ghostnet_classifier, {}),
    ],
)
def test_converted_weights_file_loads_into_the_backbone_by_name(
    tmp_path, builder: Builder, classifier: Callable[..., keras.Model], options: dict
) -> None:
    # The layout tools/convert_torch_weights.py writes: the classifier's weights.
    source = classifier(
        (64, 64, 3), **{key: value for key, value in options.items() if key != "conv5"}
    )
    rng = np.random.default_rng(0)
    source.set_weights([rng.random(w.shape, dtype="float32") for w in source.get_weights()])
    path = tmp_path / "converted.weights.h5"
    source.save_weights(path)

    backbone = _backbone(builder, pretrained=str(path), **options)
    compared = 0
    for layer in backbone.layers:
        if not layer.weights:
            continue
        for loaded, saved in zip(layer.weights, source.get_layer(layer.name).weights, strict=True):
            np.testing.assert_array_equal(_numpy(loaded), _numpy(saved))
            compared += 1
    # Everything but the classifier head (and, for GhostNet, blocks.9) is in the backbone.
    head = (
        {"fc"}
        if builder is shufflenetv2
        else {"blocks_9_0_conv", "blocks_9_0_bn1", "conv_head", "classifier"}
    )
    assert compared == len(source.weights) - sum(
        len(source.get_layer(name).weights) for name in head
    )


@pytest.mark.parametrize(
    ("builder", "options", "arch"),
    [(shufflenetv2, {"alpha": 0.5}, "shufflenet_v2_x0_5"), (ghostnet, {}, "ghostnet_100")],
)
def test_imagenet_is_an_error_that_says_how_to_convert(
    builder: Builder, options: dict, arch: str
) -> None:
    with pytest.raises(ValueError, match=f"tools/convert_torch_weights.py --arch {arch} "):
        builder(keras.Input((64, 64, 3)), pretrained="imagenet", **options)


def test_missing_weights_file(tmp_path) -> None:
    missing = tmp_path / "nope.weights.h5"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        shufflenetv2(keras.Input((64, 64, 3)), alpha=0.5, pretrained=str(missing))


def test_weights_file_of_another_width_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "x1_0.weights.h5"
    shufflenet_v2_classifier((64, 64, 3), alpha=1.0).save_weights(path)
    with pytest.raises(ValueError, match=r"does not fit shufflenet_v2_x0_5 .*could not be loaded"):
        shufflenetv2(keras.Input((64, 64, 3)), alpha=0.5, pretrained=str(path))


def test_ghostnet_pretrained_needs_alpha_1(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"alpha 1.0 only .*alpha=0.5"):
        ghostnet(keras.Input((64, 64, 3)), alpha=0.5, pretrained=str(tmp_path / "any.weights.h5"))


# --- options ----------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.75, True, "1.0"])
def test_shufflenetv2_rejects_unknown_alphas(alpha) -> None:
    with pytest.raises(ValueError, match=r"one of 0.5, 1.0, 1.5, 2.0; received"):
        shufflenetv2(keras.Input((64, 64, 3)), alpha=alpha)


@pytest.mark.parametrize("alpha", [0, -1.0, True, "1"])
def test_ghostnet_rejects_bad_alphas(alpha) -> None:
    with pytest.raises(ValueError, match="alpha must be a positive number"):
        ghostnet(keras.Input((64, 64, 3)), alpha=alpha)
