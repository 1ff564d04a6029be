"""tf.distribute training (train.distribute) and mixed-precision training steps.

Two replicas on a CPU need the CPU split into two logical devices before TensorFlow starts, so
those checks run in a child interpreter (tests/distribute_cases.py); the multi-worker check runs
two train.py processes that talk over loopback ports.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.training_fixtures import REPO, tiny_config
from utils.config import ConfigError, load_config
from utils.engine.checkpoint import load_resume_state
from utils.engine.distribute import make_strategy, split_batch, synchronize_batchnorm
from utils.engine.run_dir import RunDir
from utils.plots import read_history

QUIET_ENV = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _run_case(case: str, tmp_path: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.distribute_cases", case, str(tmp_path)],
        cwd=REPO,
        env=QUIET_ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "result.json").read_text())


# --- configuration and small parts ----------------------------------------------------------


def test_multi_worker_without_tf_config_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG environment variable is not set"):
        make_strategy("multi_worker")


def test_global_batch_must_split_evenly_over_replicas():
    assert split_batch(16, 4, "train.batch_size") == 4
    with pytest.raises(ValueError, match=r"train.freeze_batch_size=6: .* multiple of 4"):
        split_batch(6, 4, "train.freeze_batch_size")


def test_gradient_clipping_is_refused_under_a_strategy(tmp_path):
    config = tiny_config(tmp_path)
    assert load_config(config, ["train.clip_grad_norm=10.0"]).train.clip_grad_norm == 10.0
    with pytest.raises(ConfigError, match=r"train\.clip_grad_norm: not supported"):
        load_config(config, ["train.clip_grad_norm=10.0", "train.distribute=mirrored"])


def test_synchronize_batchnorm_reaches_the_nested_backbone(tmp_path):
    from nets.yolo import build_model

    cfg = load_config(tiny_config(tmp_path), ["model.input_size=[64,64]"])
    model = build_model(cfg.model, 2)
    norms = [
        layer
        for layer in model.get_layer("backbone").layers + model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(norms) > 20 and not any(bn.synchronized for bn in norms)
    synchronize_batchnorm(model, True)
    assert all(bn.synchronized for bn in norms)
    synchronize_batchnorm(model, False)
    assert not any(bn.synchronized for bn in norms)


# --- mixed precision --------------------------------------------------------------------------


@pytest.fixture
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize(
    ("precision", "compute"),
    [("float32", "float32"), ("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")],
)
def test_one_training_step_per_precision(tmp_path, restore_policy, precision, compute):
    """The body computes in the policy's dtype; head logits, loss and weights stay float32."""
    from nets.losses import build_loss
    from nets.yolo import build_model
    from utils.data.formats import load_config_split
    from utils.data.pipeline import build_dataset
    from utils.engine.trainer import YoloTrainer, build_optimizer

    cfg = load_config(
        tiny_config(tmp_path), ["model.input_size=[64,64]", f"train.precision={precision}"]
    )
    keras.mixed_precision.set_global_policy(cfg.train.precision)
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, 2)
    assert model.get_layer("backbone").get_layer("conv_pw_1").compute_dtype == compute
    assert [model.get_layer(name).compute_dtype for name in ("head_p5", "head_p4", "head_p3")] == [
        "float32"
    ] * 3
    samples = load_config_split(cfg, cfg.data.train_split, key="data.train_split")
    images, boxes = next(
        iter(build_dataset(samples, input_size=(64, 64), batch_size=4, training=False))
    )
    outputs = model(images, training=True)
    assert all(output.dtype == tf.float32 for output in outputs)
    loss_fn = build_loss(cfg, 2)
    total, parts = loss_fn(boxes, outputs)
    assert total.dtype == tf.float32 and all(p.dtype == tf.float32 for p in parts.values())

    trainer = YoloTrainer(model, loss_fn, None)
    trainer.compile(optimizer=build_optimizer(cfg, model.trainable_variables))
    if precision == "mixed_float16":
        # Keras' dynamic loss scale starts at 2**15, and float16 gradients overflow until it has
        # halved a dozen times: those steps are skipped by design. Start where one step fits.
        trainer.optimizer.dynamic_scale.assign(1.0)
    before = [w.numpy() for w in model.trainable_weights]
    logs = trainer.train_step((images, boxes))
    assert logs["loss"].dtype == tf.float32 and np.isfinite(float(logs["loss"]))
    after = [w.numpy() for w in model.trainable_weights]
    assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in after)
    assert max(float(np.abs(a - b).max()) for a, b in zip(after, before, strict=True)) > 0


# --- two replicas (child process) -------------------------------------------------------------


def test_mirrored_steps_equal_the_single_device_steps(tmp_path):
    """Loss, weights and EMA after two SGD steps on 2 replicas match one device.

    The batch halves differ in brightness and in boxes per image, so summing instead of
    averaging, per-replica positive counts or per-replica BatchNorm statistics all show.
    """
    result = _run_case("step", tmp_path)
    assert result["replicas_sync"] == 2
    change = result["change_single"]
    assert change > 1e-2  # the steps moved the weights
    assert result["loss_sync"] == pytest.approx(result["loss_single"], rel=1e-5)
    assert result["weights_diff_sync"] < 1e-4 * change
    assert result["ema_diff_sync"] < 1e-4 * change
    # sync_bn: false really normalises each replica's half on its own
    assert result["weights_diff_local"] > 0.1 * change


@pytest.mark.slow
def test_mirrored_bfloat16_multi_scale_training_resumes_a_single_device_run_and_shares_weights(
    tmp_path,
):
    result = _run_case("train", tmp_path)
    assert result["replicas"] == 2
    assert result["distributed_weights"]
    # mixed_bfloat16: the body computes in bfloat16; heads, loss and weights stay float32
    assert (result["policy"], result["body_dtype"]) == ("mixed_bfloat16", "bfloat16")
    assert result["output_dtypes"] == ["float32"] * 3
    assert result["weight_dtypes"] == ["float32"]
    assert result["input_shape"] == [None, None, None, 3]  # augment.multi_scale's model
    for key, values in result["resumed_logs"].items():
        assert len(values) == 1 and np.isfinite(values[0]), key  # trained and evaluated
    assert result["copies_diff"] == 0.0  # single-device file -> every replica's copy
    assert result["plain_diff"] == 0.0  # file written under the strategy -> a plain model
    assert result["epochs_done"] == result["state_epochs"] == 2
    assert result["optimizer_steps"] == 2  # one step per epoch, the first restored
    assert result["ema_updates"] == 2.0
    assert result["ema_moved"] > 0


# --- two workers (two processes) --------------------------------------------------------------


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.slow
def test_two_local_workers_finish_an_epoch_with_identical_weights(tmp_path):
    config = tiny_config(tmp_path)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
    overrides = [
        "model.input_size=[64,64]",
        "train.batch_size=8",  # 4 images per worker
        "train.epochs=1",
        "train.distribute=multi_worker",
    ]
    workers, logs = [], []
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        # Output to files, not pipes: a worker blocked on a full pipe would stall the other
        # one inside a collective op.
        log = (tmp_path / f"worker{index}.log").open("w")
        logs.append(log)
        workers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "train.py"),
                    "--quiet",
                    "--config",
                    str(config),
                    *overrides,
                ],
                cwd=tmp_path,
                env={**QUIET_ENV, "TF_CONFIG": json.dumps(tf_config)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    try:
        for worker in workers:
            worker.wait(timeout=900)
    finally:
        for worker, log in zip(workers, logs, strict=True):
            worker.kill()
            log.close()
    for index, worker in enumerate(workers):
        output = (tmp_path / f"worker{index}.log").read_text()
        assert worker.returncode == 0, output[-3000:]

    runs = [RunDir(path) for path in sorted((tmp_path / "logs").iterdir())]
    assert [run.name.endswith("-worker1") for run in runs] == [False, True]
    chief, other = (load_resume_state(run.resume_state) for run in runs)
    # the same progress; each process measured its own training time
    same_clock = dataclasses.replace(other.info, elapsed_s=chief.info.elapsed_s)
    assert chief.info == same_clock and chief.info.epochs_done == 1
    for key in ("model", "optimizer", "ema"):
        for a, b in zip(getattr(chief, key), getattr(other, key), strict=True):
            np.testing.assert_array_equal(a, b, err_msg=key)
    assert read_history(runs[0].history)["loss"] == read_history(runs[1].history)["loss"]
