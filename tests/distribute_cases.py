"""Child-process cases for tests/test_distribute.py.

Two replicas on a CPU need the CPU split into two logical devices before TensorFlow starts, which
a pytest process (TF long started) cannot do; each case runs in its own interpreter:

    python -m tests.distribute_cases CASE TMP_DIR

and writes its measurements to ``TMP_DIR/result.json`` for the test to check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

NUM_CLASSES = 2
# Anchors for a 64x64 input (the base anchors are sized for 416).
ANCHORS = [[8, 8], [12, 12], [16, 16], [20, 20], [24, 24], [32, 32], [40, 40], [48, 48], [56, 56]]
ANCHORS_MASK = [[6, 7, 8], [3, 4, 5], [0, 1, 2]]


def split_cpu(count: int = 2) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def shallow_detector():
    """Stem conv + BN, then one 1x1 head per stride (32, 16, 8) at 64x64: three YOLO heads.

    Shallow on purpose: the tiny MobileNet YOLO amplifies float rounding about 1e4-fold from a
    random init, which would hide a wrong reduction; this model keeps it near 1e-6.
    """
    import keras

    images = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(16, 8, strides=8, name="stem")(images)  # 8x8 grid
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU()(x)
    outputs = []
    for name, pool in (("p5", 4), ("p4", 2), ("p3", 1)):
        y = keras.layers.AveragePooling2D(pool)(x) if pool > 1 else x
        outputs.append(keras.layers.Conv2D(3 * (5 + NUM_CLASSES), 1, name=name)(y))
    return keras.Model(images, outputs)


def step_batches() -> tf.data.Dataset:
    """Two global batches of 8 images; the first half of each (replica 0's share) holds 1 box
    per image, the second half 3, so a per-replica positive count would normalise unevenly;
    the halves also differ in brightness, so per-replica BatchNorm statistics differ."""
    rng = np.random.default_rng(0)
    images = rng.random((16, 64, 64, 3), dtype=np.float32) * 0.5
    boxes = np.zeros((16, 4, 5), np.float32)
    for i in range(16):
        second_half = (i % 8) >= 4
        images[i] += 0.5 * second_half
        for k in range(3 if second_half else 1):
            x1, y1 = rng.uniform(0, 30, 2)
            side = rng.uniform(10, 30)
            boxes[i, k] = [x1, y1, x1 + side, y1 + side, (i + k) % NUM_CLASSES]
    return tf.data.Dataset.from_tensor_slices((images, boxes)).batch(8)


def train_steps(cfg, mode: str, sync_bn: bool) -> dict:
    """Two YoloTrainer steps (SGD, EMA) under ``mode``; weights, EMA shadows and logged loss."""
    import keras

    from nets.losses import YoloLoss
    from utils.engine.distribute import make_strategy, synchronize_batchnorm
    from utils.engine.ema import ModelEMA
    from utils.engine.trainer import YoloTrainer, build_optimizer

    strategy = make_strategy(mode)
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = shallow_detector()
        synchronize_batchnorm(model, sync_bn)
        ema = ModelEMA(model, decay=0.9, tau=1.0)
        loss_fn = YoloLoss.from_config(
            cfg.loss,
            anchors=ANCHORS,
            anchors_mask=ANCHORS_MASK,
            num_classes=NUM_CLASSES,
            input_hw=(64, 64),
        )
        trainer = YoloTrainer(model, loss_fn, ema)
        trainer.compile(optimizer=build_optimizer(cfg, model.trainable_variables))
    initial = [w.numpy() for w in model.weights]
    history = trainer.fit(step_batches(), epochs=1, verbose=0).history
    return {
        "replicas": strategy.num_replicas_in_sync,
        "loss": history["loss"][0],
        "change": max(
            float(np.abs(w.numpy() - i).max()) for w, i in zip(model.weights, initial, strict=True)
        ),
        "weights": [w.numpy() for w in model.weights],
        "ema": [s.numpy() for s in ema.shadow],
    }


def case_step(tmp: Path) -> dict:
    """The same two steps on one device and on two replicas (BatchNorm synchronised or not)."""
    from tests.training_fixtures import tiny_config
    from utils.config import load_config

    cfg = load_config(
        tiny_config(tmp), ["train.optimizer=sgd", "train.init_lr=0.05", "train.momentum=0.9"]
    )
    single = train_steps(cfg, "none", sync_bn=False)
    result = {"loss_single": single["loss"], "change_single": single["change"]}
    for sync in (True, False):
        run = train_steps(cfg, "mirrored", sync_bn=sync)
        tag = "sync" if sync else "local"
        result[f"replicas_{tag}"] = run["replicas"]
        result[f"loss_{tag}"] = run["loss"]
        for key in ("weights", "ema"):
            result[f"{key}_diff_{tag}"] = max(
                float(np.abs(a - b).max()) for a, b in zip(single[key], run[key], strict=True)
            )
    return result


def case_train(tmp: Path) -> dict:
    """A single-device run folder resumed under ``mirrored`` in mixed_bfloat16 with multi-scale
    batches and evaluated; weights files loaded across the two."""
    import keras

    from nets.yolo import build_model, set_backbone_trainable
    from tests.training_fixtures import tiny_config
    from utils.config import load_config, load_run_config, save_config
    from utils.engine.checkpoint import ResumeInfo, load_resume_state, save_resume_state
    from utils.engine.distribute import make_strategy
    from utils.engine.ema import ModelEMA
    from utils.engine.run_dir import RunDir
    from utils.engine.trainer import Trainer, build_optimizer

    overrides = ["model.input_size=[64,64]", "train.batch_size=8", "train.ema_tau=2"]
    cfg = load_config(tiny_config(tmp), [*overrides, "train.epochs=1"])
    # The run folder a single-device Trainer leaves after its one epoch of one step, written
    # here (a Trainer run would cost a minute of graph tracing for nothing this case checks):
    # moved weights, their EMA, and the optimizer and EMA counters after one step.
    run = RunDir.create(cfg.train.save_dir, cfg.name)
    run.weights_dir.mkdir()
    save_config(cfg, run.config)
    keras.utils.set_random_seed(0)
    model = build_model(cfg.model, NUM_CLASSES)
    set_backbone_trainable(model, True)
    for weight in model.trainable_weights:
        weight.assign(weight + keras.random.normal(weight.shape, stddev=0.01))
    optimizer = build_optimizer(cfg, model.trainable_variables)
    optimizer.build(model.trainable_variables)
    optimizer.iterations.assign(1)
    ema = ModelEMA(model, decay=cfg.train.ema_decay, tau=cfg.train.ema_tau)
    ema.updates.assign(1.0)
    info = ResumeInfo(epochs_done=1, best_value=None, phase="unfreeze")
    save_resume_state(run.resume_state, info, model, optimizer, ema.state())
    model.save_weights(run.last_weights)
    single_ema = load_resume_state(run.resume_state).ema[:-1]

    # A single-device weights file loads into every replica's copy.
    strategy = make_strategy("mirrored")
    with strategy.scope():
        mirrored_model = build_model(cfg.model, NUM_CLASSES)
    mirrored_model.load_weights(run.last_weights)
    saved_weights = [w.numpy() for w in model.weights]
    copies_diff = max(
        float(np.abs(copy.numpy() - saved).max())
        for weight, saved in zip(mirrored_model.weights, saved_weights, strict=True)
        for copy in strategy.experimental_local_results(weight.value)
    )

    # Resumed in mixed_bfloat16: the body computes in bfloat16 under the strategy, the heads,
    # loss and weights stay float32, so the float32 state and files carry over. Multi-scale
    # batches are split over the replicas like any other (the any-size model, same weights).
    resumed_overrides = ["train.epochs=2", "train.distribute=mirrored", "train.eval_period=1",
                         "train.precision=mixed_bfloat16", "augment.multi_scale=0.5"]  # fmt: skip
    trainer = Trainer(load_run_config(run.config, resumed_overrides), resume=run, verbose=0)
    resumed = trainer.run()
    state = load_resume_state(run.resume_state)
    yolo = trainer.yolo
    precision = {
        "policy": keras.mixed_precision.global_policy().name,
        "body_dtype": yolo.get_layer("backbone").get_layer("conv_pw_1").compute_dtype,
        "output_dtypes": [o.dtype.name for o in yolo(np.zeros((1, 64, 64, 3), np.float32))],
        "weight_dtypes": sorted({w.dtype for w in yolo.weights}),
        "input_shape": list(yolo.input_shape),
        "distributed_weights": all(
            isinstance(w.value, tf.distribute.DistributedValues) for w in yolo.weights
        ),
    }
    keras.mixed_precision.set_global_policy("float32")

    # A weights file written under the strategy loads into a plain model.
    keras.utils.set_random_seed(1)
    plain = build_model(cfg.model, NUM_CLASSES)
    plain.load_weights(run.last_weights)
    plain_diff = max(
        float(np.abs(w.numpy() - saved).max())
        for w, saved in zip(plain.weights, state.ema[:-1], strict=True)
    )
    return {
        "replicas": strategy.num_replicas_in_sync,
        "copies_diff": copies_diff,
        "plain_diff": plain_diff,
        "epochs_done": resumed.epochs_done,
        "state_epochs": state.info.epochs_done,
        "optimizer_steps": int(state.optimizer[0]),
        "ema_updates": float(state.ema[-1]),
        "resumed_logs": {key: resumed.history[key] for key in ("loss", "val_loss", "val_map")},
        **precision,
        "ema_moved": max(
            float(np.abs(a - b).max()) for a, b in zip(single_ema, state.ema[:-1], strict=True)
        ),
    }


CASES = {"step": case_step, "train": case_train}


def main(argv: list[str]) -> None:
    case, tmp = argv
    split_cpu()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    result = CASES[case](Path(tmp))
    (Path(tmp) / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
