"""Pieces of the trainer checked by hand: phases, weight-decay targets, EMA maths, checkpoints,
the data checks before a run starts."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace

import h5py
import keras
import numpy as np
import pytest

from nets.yolo import build_yolo, set_backbone_trainable
from tests.training_fixtures import tiny_config
from utils.config import load_config
from utils.engine import checkpoint
from utils.engine.checkpoint import (
    ResumeInfo,
    ResumeStateError,
    load_resume_state,
    save_resume_state,
    save_weights_atomic,
)
from utils.engine.ema import ModelEMA
from utils.engine.run_dir import RunDir
from utils.engine.trainer import Trainer, build_optimizer, plan_phases


def _cfg(tmp_path, *overrides):
    return load_config(tiny_config(tmp_path), list(overrides))


def test_phases_freeze_then_unfreeze(tmp_path):
    cfg = _cfg(tmp_path, "train.epochs=10", "train.freeze_epochs=4", "train.freeze_batch_size=6")
    frozen, unfrozen = plan_phases(cfg)
    assert (frozen.start, frozen.end, frozen.batch_size, frozen.backbone_trainable) == (
        0,
        4,
        6,
        False,
    )
    assert (unfrozen.start, unfrozen.end, unfrozen.batch_size, unfrozen.backbone_trainable) == (
        4,
        10,
        4,
        True,
    )
    assert [p.name for p in plan_phases(_cfg(tmp_path, "train.freeze_epochs=0"))] == ["unfreeze"]
    capped = plan_phases(_cfg(tmp_path, "train.epochs=3", "train.freeze_epochs=50"))
    assert [(p.name, p.end) for p in capped] == [("freeze", 3)]


def _small_model() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=True, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_weight_decay_only_on_conv_kernels(tmp_path, optimizer):
    cfg = _cfg(tmp_path, f"train.optimizer={optimizer}")
    model = _small_model()
    opt = build_optimizer(cfg, model.trainable_variables)
    decayed = {v.path for v in model.trainable_variables if opt._use_weight_decay(v)}
    assert decayed == {"conv/kernel", "dw/kernel"}


def test_ema_ramped_average_by_hand():
    model = _small_model()
    kernel = model.get_layer("conv").kernel
    ema = ModelEMA(model, decay=0.9, tau=1.0)
    start = kernel.numpy().copy()
    kernel.assign(start + 1.0)
    ema.update()  # decay = 0.9 * (1 - e^-1)
    d = 0.9 * (1 - math.exp(-1.0))
    index = next(i for i, w in enumerate(ema._weights) if w is kernel)
    np.testing.assert_allclose(ema.shadow[index].numpy(), d * start + (1 - d) * (start + 1.0), 1e-5)
    with ema.applied():
        np.testing.assert_allclose(kernel.numpy(), ema.shadow[index].numpy())
    np.testing.assert_allclose(kernel.numpy(), start + 1.0)  # live weights are back
    # the BatchNorm statistics are averaged too
    assert any("moving_variance" in w.path for w in ema._weights)


def test_resume_state_round_trip(tmp_path):
    model = _small_model()
    opt = keras.optimizers.Adam()
    opt.build(model.trainable_variables)
    info = ResumeInfo(epochs_done=3, best_value=0.5, phase="unfreeze")
    path = tmp_path / "state.npz"
    save_resume_state(path, info, model, opt, [np.ones(2)])
    state = load_resume_state(path)
    assert state.info == info
    assert len(state.model) == len(model.weights)
    assert len(state.optimizer) == len(opt.variables)
    np.testing.assert_array_equal(state.ema[0], np.ones(2))
    assert not list(tmp_path.glob(".tmp-*"))  # the temporary file was moved into place


def _h5_contents(path: Path) -> dict[str, tuple[dict, np.ndarray | None]]:
    """Every group and dataset of an HDF5 file in file order: attributes and values."""
    contents: dict[str, tuple[dict, np.ndarray | None]] = {}
    with h5py.File(path, "r") as handle:
        contents["/"] = (dict(handle.attrs), None)

        def visit(name: str, item) -> None:
            value = item[()] if isinstance(item, h5py.Dataset) else None
            contents[name] = (dict(item.attrs), value)

        handle.visititems(visit)
    return contents


def _assert_same_h5(ours: Path, keras_file: Path) -> None:
    expected = _h5_contents(keras_file)
    found = _h5_contents(ours)
    assert list(found) == list(expected)
    for name, (attrs, value) in expected.items():
        assert found[name][0] == attrs, name
        if value is not None:
            assert found[name][1].dtype == value.dtype, name
            np.testing.assert_array_equal(found[name][1], value, err_msg=name)


def _bfloat16_model() -> keras.Model:
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, dtype="bfloat16", name="bf16_dense")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(hidden))


@pytest.mark.parametrize(
    "build",
    [
        lambda: build_yolo((64, 64, 3), 2, backbone="shufflenetv2", neck="yolov3_fpn",
                           backbone_options={"alpha": 0.5}, neck_options={"alpha": 0.25},
                           head="anchor_free", head_options={"reg_max": 8}),
        lambda: build_yolo((64, 64, 3), 2, backbone="ghostnet", neck="yolov4_panet",
                           backbone_options={"alpha": 0.5}, neck_options={"alpha": 0.25},
                           neck_conv="ghost"),
        _bfloat16_model,
    ],
    ids=["shufflenetv2-anchor_free", "ghostnet-ghost_convs", "bfloat16_layer"],
)  # fmt: skip
def test_weights_written_from_the_recorded_layout_are_the_file_keras_writes(tmp_path, build):
    """save_weights_atomic records Keras' object walk once per model and writes the file from
    it: the same groups, attributes, datasets and dtypes as ``model.save_weights``, after the
    weights change and a layer is frozen too, and Keras loads it."""
    model = build()
    for _ in range(2):
        save_weights_atomic(model, tmp_path / "ours.weights.h5")
        saved = model.get_weights()
        model.save_weights(tmp_path / "keras.weights.h5")
        _assert_same_h5(tmp_path / "ours.weights.h5", tmp_path / "keras.weights.h5")
        for weight in model.weights:
            weight.assign(weight * 0.5 + 0.25)
        if "backbone" in [layer.name for layer in model.layers]:
            set_backbone_trainable(model, False)
    assert model in checkpoint._LAYOUTS  # recorded once, reused
    fresh = build()
    fresh.load_weights(tmp_path / "ours.weights.h5")
    for loaded, expected in zip(fresh.get_weights(), saved, strict=True):
        np.testing.assert_array_equal(loaded, expected)


def test_weights_fall_back_to_keras_when_its_walk_cannot_be_recorded(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint, "saving_lib", SimpleNamespace())  # a Keras without the walk
    model = _bfloat16_model()
    save_weights_atomic(model, tmp_path / "model.weights.h5")
    assert checkpoint._LAYOUTS[model] is None  # not tried again at the next save
    fresh = _bfloat16_model()
    fresh.load_weights(tmp_path / "model.weights.h5")
    for loaded, saved in zip(fresh.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(loaded, saved)


def _save_epochs(run: RunDir, epochs: int) -> None:
    """Resume states after epochs 1 .. ``epochs``, saved as the checkpointer saves them."""
    model = _small_model()
    opt = keras.optimizers.Adam()
    opt.build(model.trainable_variables)
    for epoch in range(1, epochs + 1):
        info = ResumeInfo(epochs_done=epoch, best_value=None, phase="unfreeze")
        save_resume_state(run.resume_state, info, model, opt, None,
                          previous=run.previous_resume_state)  # fmt: skip


def test_saving_a_resume_state_keeps_the_one_before(tmp_path):
    run = RunDir(tmp_path)
    _save_epochs(run, 3)
    assert load_resume_state(run.resume_state).info.epochs_done == 3
    assert load_resume_state(run.previous_resume_state).info.epochs_done == 2


@pytest.mark.parametrize("damage", ["empty", "first half", "a byte flipped", "not a zip"])
def test_a_damaged_resume_state_falls_back_to_the_one_before(tmp_path, caplog, damage):
    run = RunDir(tmp_path)
    _save_epochs(run, 2)
    data = run.resume_state.read_bytes()
    damaged = {
        "empty": b"",
        "first half": data[: len(data) // 2],
        "a byte flipped": data[:100] + bytes([data[100] ^ 0xFF]) + data[101:],
        "not a zip": b"not a zip at all",
    }
    run.resume_state.write_bytes(damaged[damage])
    with caplog.at_level(logging.WARNING, logger="utils.engine.checkpoint"):
        state = load_resume_state(run.resume_state, previous=run.previous_resume_state)
    assert state.info.epochs_done == 1
    (warning,) = caplog.messages
    assert str(run.resume_state) in warning and str(run.previous_resume_state) in warning
    # without a state before it, the error names the damaged file in one line
    run.previous_resume_state.unlink()
    with pytest.raises(ResumeStateError) as info:
        load_resume_state(run.resume_state, previous=run.previous_resume_state)
    message = str(info.value)
    assert message.startswith(f"{run.resume_state}: damaged") and "\n" not in message


def test_a_crash_between_the_two_moves_resumes_from_the_state_before(tmp_path):
    run = RunDir(tmp_path)
    _save_epochs(run, 2)
    run.resume_state.unlink()  # moved away, the new one not yet in place
    state = load_resume_state(run.resume_state, previous=run.previous_resume_state)
    assert state.info.epochs_done == 1


def test_both_resume_states_damaged_names_both(tmp_path):
    run = RunDir(tmp_path)
    _save_epochs(run, 2)
    run.resume_state.write_bytes(b"junk")
    run.previous_resume_state.write_bytes(b"junk")
    with pytest.raises(ResumeStateError) as info:
        load_resume_state(run.resume_state, previous=run.previous_resume_state)
    assert str(run.resume_state) in str(info.value)
    assert str(run.previous_resume_state) in str(info.value)


def _config_with_broken_split(tmp_path):
    """The tiny config plus split TINY/broken, whose only image has no annotation."""
    config = tiny_config(tmp_path)
    (tmp_path / "VOCdevkit" / "TINY" / "ImageSets" / "Main" / "broken.txt").write_text("gone\n")
    return config


def test_an_empty_validation_split_is_named_before_a_run_folder_exists(tmp_path):
    cfg = load_config(_config_with_broken_split(tmp_path), ["data.val_split=[TINY/broken]"])
    with pytest.raises(ValueError, match=r"data\.val_split \['TINY/broken'\]: no usable images"):
        Trainer(cfg)
    assert not (tmp_path / "logs").exists()


def test_train_script_reports_an_empty_split_in_one_line(tmp_path, capsys):
    import train

    config = _config_with_broken_split(tmp_path)
    assert train.main(["--config", str(config), "data.val_split=[TINY/broken]"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: data.val_split ['TINY/broken']: no usable images"), error
