"""Tests for nets/necks.py: both necks with every 3x3 conv block, and model.neck_conv plumbing."""

from __future__ import annotations

import typing
from pathlib import Path

import keras
import numpy as np
import pytest

from nets import NECKS, build_model, build_yolo
from nets.layers import GhostConv, nested_layers
from nets.necks import NECK_CONVS, conv3x3_block, yolov3_fpn, yolov4_panet
from tools import summary
from utils.config import ConfigError, ModelConfig, load_config
from utils.flops import count_macs, macs_by_layer

REPO = Path(__file__).resolve().parents[1]
TAP_SHAPES = ((16, 16, 24), (8, 8, 48), (4, 4, 96))  # C3, C4, C5 at strides 8, 16, 32
# Number of 3x3 conv blocks: PANet 2 (SPP block) + 4 five-convs x 2 + 2 downsamples; FPN 3 x 2.
THREE_BY_THREE_BLOCKS = {"yolov4_panet": 12, "yolov3_fpn": 6}


def _neck(name: str, **options) -> keras.Model:
    taps = [keras.Input(shape) for shape in TAP_SHAPES]
    return keras.Model(taps, NECKS.get(name)(*taps, **options), name=name)


def _layers_of(model: keras.Model, kind: type) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if type(layer) is kind]


@pytest.mark.parametrize("conv", NECK_CONVS)
@pytest.mark.parametrize("neck", ["yolov4_panet", "yolov3_fpn"])
def test_necks_shapes_strides_and_conv_blocks(neck: str, conv: str) -> None:
    model = _neck(neck, alpha=0.25, conv=conv)
    # alpha 0.25: 128, 256, 512 -> 32, 64, 128 channels at strides 8, 16, 32.
    assert [tuple(out.shape) for out in model.outputs] == [
        (None, 16, 16, 32),
        (None, 8, 8, 64),
        (None, 4, 4, 128),
    ]
    names = [layer.name for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    assert all(name.startswith("neck_") for name in names)

    blocks = THREE_BY_THREE_BLOCKS[neck]
    ghosts = _layers_of(model, GhostConv)
    depthwise = _layers_of(model, keras.layers.DepthwiseConv2D)
    kernels = [layer.kernel_size for layer in _layers_of(model, keras.layers.Conv2D)]
    assert len(ghosts) == (blocks if conv == "ghost" else 0)
    assert len(depthwise) == (blocks if conv == "depthwise" else 0)
    assert kernels.count((3, 3)) == (blocks if conv == "standard" else 0)
    assert all(layer.primary_conv.kernel_size == (3, 3) for layer in ghosts)
    assert count_macs(model) > 0

    x = [np.random.rand(1, *shape).astype("float32") for shape in TAP_SHAPES]
    outputs = model(x, training=False)
    assert all(np.isfinite(keras.ops.convert_to_numpy(out)).all() for out in outputs)


@pytest.mark.parametrize(
    ("conv", "layer", "strides"),
    [("standard", "neck_p3_down_conv", (2, 2)), ("depthwise", "neck_p3_down_dw", (2, 2))],
)
def test_panet_downsamples_follow_the_conv(conv: str, layer: str, strides: tuple) -> None:
    assert _neck("yolov4_panet", alpha=0.25, conv=conv).get_layer(layer).strides == strides


def test_panet_ghost_downsample_strides_in_the_primary_conv() -> None:
    model = _neck("yolov4_panet", alpha=0.25, conv="ghost")
    for name in ("neck_p3_down_ghost", "neck_p4_down_ghost"):
        ghost = model.get_layer(name)
        assert ghost.strides == 2 and ghost.primary_conv.strides == (2, 2)
        assert ghost.cheap_conv.strides == (1, 1)


def test_yolov4_panet_shapes_follow_alpha() -> None:
    c3, c4, c5 = keras.Input((16, 16, 64)), keras.Input((8, 8, 128)), keras.Input((4, 4, 256))
    p3, p4, p5 = yolov4_panet(c3, c4, c5, alpha=0.5)
    assert tuple(p3.shape) == (None, 16, 16, 64)  # int(128 * 0.5)
    assert tuple(p4.shape) == (None, 8, 8, 128)  # int(256 * 0.5)
    assert tuple(p5.shape) == (None, 4, 4, 256)  # int(512 * 0.5)


def test_yolov3_fpn_sizes_from_the_taps_without_alpha() -> None:
    model = _neck("yolov3_fpn")  # alpha None: every scale as wide as its backbone tap
    assert [out.shape[-1] for out in model.outputs] == [24, 48, 96]
    # Top-down: 1x1 to the next scale's width, 2x upsample, concat with the tap.
    assert model.get_layer("neck_p5_up_conv").filters == 48
    assert tuple(model.get_layer("neck_p5_upsample").output.shape) == (None, 8, 8, 48)
    assert model.get_layer("neck_p4_concat").output.shape[-1] == 48 + 48
    assert model.get_layer("neck_p3_concat").output.shape[-1] == 24 + 24
    # Five convs alternate 1x1 (width) and 3x3 (2 x width).
    filters = [model.get_layer(f"neck_p5_{i}_pw").filters for i in (2, 4)]
    assert filters == [192, 192]
    assert [model.get_layer(f"neck_p5_{i}_conv").filters for i in (1, 3, 5)] == [96, 96, 96]


def test_yolov3_fpn_param_count_by_hand() -> None:
    c3, c4, c5 = keras.Input((4, 4, 2)), keras.Input((2, 2, 4)), keras.Input((1, 1, 8))
    model = keras.Model([c3, c4, c5], yolov3_fpn(c3, c4, c5, conv="standard"))

    def conv(cin: int, cout: int, k: int = 1) -> int:
        return k * k * cin * cout + 4 * cout  # no bias; BN gamma, beta, mean, variance

    def five(cin: int, w: int) -> int:
        return (
            conv(cin, w) + conv(w, 2 * w, 3) + conv(2 * w, w) + conv(w, 2 * w, 3) + conv(2 * w, w)
        )

    expected = five(8, 8) + conv(8, 4) + five(4 + 4, 4) + conv(4, 2) + five(2 + 2, 2)
    assert model.count_params() == expected


@pytest.mark.parametrize(
    ("conv", "params"),
    [
        ("standard", 9 * 8 * 16 + 4 * 16),  # 3x3 conv + BN
        ("depthwise", 9 * 8 + 4 * 8 + 8 * 16 + 4 * 16),  # dw 3x3 + BN, pw 1x1 + BN
        ("ghost", 9 * 8 * 8 + 4 * 8 + 9 * 8 + 4 * 8),  # primary 3x3 8->8 + BN, dw 3x3 + BN
    ],
)
def test_conv3x3_block_param_counts(conv: str, params: int) -> None:
    inputs = keras.Input((8, 8, 8))
    model = keras.Model(inputs, conv3x3_block(inputs, 16, "block", conv))
    assert model.count_params() == params
    assert tuple(model.output.shape) == (None, 8, 8, 16)


def test_unknown_conv_and_empty_width_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown neck conv 'ghostnet'; valid values: standard"):
        _neck("yolov3_fpn", conv="ghostnet")
    with pytest.raises(ValueError, match=r"alpha=0\.001"):
        _neck("yolov4_panet", alpha=0.001)


# --- model.neck_conv plumbing ---------------------------------------------------------------


@pytest.fixture
def _at_repo_root(monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # config paths are relative to the repository root


def _small_config(*overrides: str):
    small = ["model.input_size=[64,64]", "model.backbone_options.alpha=0.25"]
    small += ["model.neck_options.alpha=0.25"]
    return load_config(REPO / "configs" / "base.yaml", [*small, *overrides])


def test_config_values_match_the_necks() -> None:
    hints = typing.get_type_hints(ModelConfig)
    assert typing.get_args(hints["neck_conv"]) == NECK_CONVS


@pytest.mark.usefixtures("_at_repo_root")
def test_neck_conv_from_config_reaches_the_neck() -> None:
    cfg = _small_config("model.neck_conv=ghost", "model.neck=yolov3_fpn", "model.bn_momentum=0.9")
    assert load_config(REPO / "configs" / "base.yaml").model.neck_conv == "depthwise"
    model = build_model(cfg.model, num_classes=3)
    ghosts = [layer for layer in model.layers if isinstance(layer, GhostConv)]
    assert len(ghosts) == THREE_BY_THREE_BLOCKS["yolov3_fpn"]
    assert ghosts[0].activation == "relu6"
    # bn_momentum reaches BatchNorms inside GhostConv too.
    batch_norms = [
        layer
        for layer in nested_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert ghosts[0].primary_bn in batch_norms
    assert {layer.momentum for layer in batch_norms} == {0.9}


@pytest.mark.usefixtures("_at_repo_root")
def test_bad_neck_conv_is_a_one_line_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        _small_config("model.neck_conv=ghostnet")
    message = str(info.value)
    assert "model.neck_conv" in message and "'ghost'" in message and "\n" not in message


def test_neck_conv_and_neck_options_conv_conflict() -> None:
    with pytest.raises(ValueError, match=r"neck_conv, not neck_options\.conv"):
        build_yolo(
            (64, 64, 3),
            3,
            backbone="mobilenetv1",
            backbone_options={"alpha": 0.25},
            neck="yolov3_fpn",
            neck_options={"conv": "ghost"},
            neck_conv="standard",
        )


def _ghost_yolo(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return build_yolo(
        (64, 64, 3),
        3,
        backbone="mobilenetv1",
        backbone_options={"alpha": 0.25},
        neck="yolov3_fpn",
        neck_options={"alpha": 0.25},
        neck_conv="ghost",
    )


def test_ghost_neck_weights_round_trip_into_a_fresh_build(tmp_path) -> None:
    trained = _ghost_yolo(seed=1)
    trained.save_weights(tmp_path / "yolo.weights.h5")
    fresh = _ghost_yolo(seed=2)
    fresh.load_weights(tmp_path / "yolo.weights.h5")
    for loaded, saved in zip(fresh.weights, trained.weights, strict=True):
        assert loaded.path == saved.path
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(loaded), keras.ops.convert_to_numpy(saved)
        )
    assert any(w.path == "neck_p3_4_ghost/primary_conv/kernel" for w in fresh.weights)


def test_summary_tool_counts_ghost_layers(capsys) -> None:
    model = _ghost_yolo(seed=1)
    rows = summary.layer_rows(model, macs_by_layer(model))
    ghost_rows = [row for row in rows if row[1] == "GhostConv"]
    assert len(ghost_rows) == THREE_BY_THREE_BLOCKS["yolov3_fpn"]
    assert all(row[4] > 0 for row in ghost_rows)  # sublayer MACs land on the GhostConv row
    assert sum(row[4] for row in rows) == count_macs(model)

    argv = ["--alpha", "0.25", "--size", "64", "--classes", "3", "--neck", "yolov3_fpn"]
    assert summary.main([*argv, "--neck-conv", "ghost"]) == 0
    out = capsys.readouterr().out
    assert "neck yolov3_fpn (ghost convs)" in out
    assert f"params total      {model.count_params():>13,}" in out
