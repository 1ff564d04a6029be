"""Backbones meet necks: one training step and one inference for every backbone family with
every neck, but EfficientNet B1-B7 with one neck each; every backbone builds with every neck and
conv block; configs are valid.

The pairs come from the registries at import time, so a new backbone or neck is tested here
without editing this file. Two economies keep the file near two minutes of CI on two cores:

- EfficientNet-B1 ... B7 are B0 with other width/depth coefficients through the same builder
  and taps, so each meets one neck (in turn) while B0, like every other family, meets all;
- the neck conv blocks (``model.neck_conv``) cycle along the pairs, so every (neck, conv)
  combination is trained without multiplying the full builds; a build-only test then puts every
  neck with every conv block on each backbone's taps (the backbone built once).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from nets import BACKBONES, HEADS, NECKS, build_model, set_backbone_trainable
from nets.backbones.efficientnet import VARIANTS as EFFICIENTNET_VARIANTS
from nets.losses import build_loss
from nets.necks import NECK_CONVS
from tests.training_fixtures import REPO
from utils.config import Config, ModelConfig, base_section, load_config
from utils.deploy.detector import DecodeSpec, make_batch_detector
from utils.engine.lr_schedule import build_schedule
from utils.engine.trainer import YoloTrainer, build_optimizer

CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name != "base.yaml")

SIZE = 64  # the smallest input with a 2x2 stride-32 grid
NUM_CLASSES = 3
# A small width for every builder with an ``alpha`` (a family without one builds at its own
# size), except where a family allows only some widths.
TINY_ALPHA = 0.25
TINY_ALPHA_EXCEPTIONS = {"shufflenetv2": 0.5}
SCALED_VARIANTS = {f"efficientnet_b{v}" for v in EFFICIENTNET_VARIANTS if v > 0}
# B1-B7 are B0's builder with other width and depth coefficients: what can break for one of them
# alone is its taps (block indices move with depth, channels with width), which every variant's
# tap test checks; B1 stands for them all in the training and full-build tests (B2-B7 at 64x64
# would cost about five minutes of the suite for no path B0 and B1 do not take).
TRAINED_SCALED = "efficientnet_b1"


def _pairs() -> list[tuple[str, str, str, str]]:
    """(backbone, neck, neck_conv, head) combinations that train one step (see the test below
    for what they cover): the conv cycles over all pairs, the head alternates over a family's
    necks, starting one further for each family, so that both cover every combination."""
    necks, heads = NECKS.names(), HEADS.names()
    pairs = []
    for family, backbone in enumerate(
        b for b in BACKBONES.names() if b not in SCALED_VARIANTS or b == TRAINED_SCALED
    ):
        chosen = [necks[len(pairs) % len(necks)]] if backbone == TRAINED_SCALED else necks
        for j, neck in enumerate(chosen):
            conv = NECK_CONVS[len(pairs) % len(NECK_CONVS)]
            pairs.append((backbone, neck, conv, heads[(j + family) % len(heads)]))
    return pairs


PAIRS = _pairs()


def _tiny_options(name: str, builder: Callable) -> dict[str, float]:
    if "alpha" not in inspect.signature(builder).parameters:
        return {}
    return {"alpha": TINY_ALPHA_EXCEPTIONS.get(name, TINY_ALPHA)}


def _yaml(options: dict[str, float]) -> str:
    return "{" + ", ".join(f"{key}: {value}" for key, value in options.items()) + "}"


def _pair_config(backbone: str, neck: str, conv: str, head: str) -> Config:
    return load_config(
        REPO / "configs" / "base.yaml",
        [
            f"model.head={head}",
            f"model.backbone={backbone}",
            f"model.backbone_options={_yaml(_tiny_options(backbone, BACKBONES.get(backbone)))}",
            f"model.neck={neck}",
            f"model.neck_options={_yaml(_tiny_options(neck, NECKS.get(neck)))}",
            f"model.neck_conv={conv}",
            f"model.input_size=[{SIZE}, {SIZE}]",
            f"model.anchors={REPO / 'model_data' / 'yolo_anchors.txt'}",
            f"data.classes={REPO / 'model_data' / 'voc_classes.txt'}",
        ],
    )


def _batch() -> tuple[tf.Tensor, tf.Tensor]:
    rng = np.random.default_rng(0)
    images = rng.random((2, SIZE, SIZE, 3), dtype=np.float32)
    boxes = np.zeros((2, 4, 5), np.float32)  # padded rows are all zero
    boxes[0, 0] = [4, 6, 40, 50, 1]
    boxes[1, :2] = [[10, 10, 30, 26, 0], [30, 2, 62, 60, 2]]
    return tf.constant(images), tf.constant(boxes)


def _assert_freeze_boundary(yolo: keras.Model) -> None:
    """Freezing the backbone freezes its layers and nothing else, and no backbone layer is
    outside the nested model (everything at the top level is the input, the backbone, the neck
    or the heads)."""
    backbone = yolo.get_layer("backbone")
    outside = [
        layer.name
        for layer in yolo.layers
        if layer is not backbone
        and not isinstance(layer, keras.layers.InputLayer)
        and not layer.name.startswith(("neck_", "head_"))
    ]
    assert not outside, f"layers outside the backbone, neck and heads: {outside}"
    backbone_ids = {id(w) for w in backbone.weights}
    trainable_all = {id(w) for w in yolo.trainable_weights}
    assert backbone_ids & trainable_all
    set_backbone_trainable(yolo, False)
    assert {id(w) for w in yolo.trainable_weights} == trainable_all - backbone_ids
    set_backbone_trainable(yolo, True)
    assert {id(w) for w in yolo.trainable_weights} == trainable_all


def test_pairs_train_every_neck_on_each_family_and_efficientnet_b1() -> None:
    """Every family (EfficientNet as B0) trains with every neck and with both heads, B1 with one
    neck; every (neck, conv, head) combination trains. (Every family x neck x conv x head builds
    in the test after; every EfficientNet variant's taps in the one after that.)"""
    families = set(BACKBONES.names()) - SCALED_VARIANTS
    assert {backbone for backbone, *_ in PAIRS} == families | {TRAINED_SCALED}
    full = {(b, n) for b, n, _, _ in PAIRS if b in families}
    assert full == set(itertools.product(families, NECKS.names()))
    assert {(n, c, h) for _, n, c, h in PAIRS} == set(
        itertools.product(NECKS.names(), NECK_CONVS, HEADS.names())
    )
    for backbone in families:
        assert {h for b, _, _, h in PAIRS if b == backbone} == set(HEADS.names()), backbone


@pytest.mark.parametrize(
    ("backbone", "neck", "conv", "head"), PAIRS, ids=["-".join(p) for p in PAIRS]
)
def test_pair_builds_trains_one_step_and_detects(
    backbone: str, neck: str, conv: str, head: str
) -> None:
    keras.utils.set_random_seed(0)
    cfg = _pair_config(backbone, neck, conv, head)
    yolo = build_model(cfg.model, NUM_CLASSES)
    if head == "anchor_based":
        channels = 3 * (5 + NUM_CLASSES)
    else:
        channels = 4 * cfg.model.reg_max + NUM_CLASSES
    assert [tuple(out.shape) for out in yolo.outputs] == [
        (None, SIZE // stride, SIZE // stride, channels) for stride in (32, 16, 8)
    ]
    _assert_freeze_boundary(yolo)
    images, boxes = _batch()

    # One inference call: decoding and class-wise NMS of the detector used during training,
    # run eagerly (a graph trace per pair would cost more than the call). Before the training
    # step: one large first step leaves a random-init net's BN statistics unfit for inference.
    detect = make_batch_detector(
        yolo,
        DecodeSpec.from_config(cfg, NUM_CLASSES),
        score_threshold=0.0,
        nms_iou=cfg.eval.nms_iou,
        max_detections=5,
    )
    found, _, classes, valid = detect.python_function(images, tf.constant([[SIZE, SIZE]] * 2))
    assert tuple(found.shape) == (2, 5, 4)
    assert np.all(np.asarray(valid) == 5)  # score threshold 0: every image keeps 5 boxes
    assert np.all(np.isfinite(np.asarray(found))) and np.all(np.asarray(classes) < NUM_CLASSES)

    # One training step of the real trainer (its train_step, loss and optimizer), eagerly:
    # tracing a graph, or fit's set-up, would cost more than the step itself.
    loss_fn = build_loss(cfg, NUM_CLASSES)
    trainer = YoloTrainer(yolo, loss_fn, ema=None)
    trainer.compile(optimizer=build_optimizer(cfg, yolo.trainable_variables), run_eagerly=True)
    # The LR of a real run's first step (start of the warm-up), as the LrScheduler would set it.
    trainer.optimizer.learning_rate.assign(
        build_schedule(cfg.train, len(images), cfg.train.epochs)(0.0)
    )
    before = [keras.ops.convert_to_numpy(w) for w in yolo.trainable_weights]
    logs = trainer.train_step((images, boxes))
    assert np.isfinite(float(logs["loss"]))
    after = [keras.ops.convert_to_numpy(w) for w in yolo.trainable_weights]
    assert all(np.all(np.isfinite(w)) for w in after)
    moved = {
        w.path
        for w, old, new in zip(yolo.trainable_weights, before, after, strict=True)
        if not np.array_equal(old, new)
    }
    # Not every weight: updates far below a weight's float32 resolution leave it equal, and
    # EfficientNet's stochastic depth can drop a whole block for a batch of two.
    backbone = {w.path for w in yolo.get_layer("backbone").trainable_weights}
    assert moved & backbone, "the step did not reach the backbone"
    for part in ("neck_", "head_"):
        assert any(path.startswith(part) for path in moved), f"the step did not reach {part}*"


FULL_BUILDS = [b for b in BACKBONES.names() if b not in SCALED_VARIANTS or b == TRAINED_SCALED]


@pytest.mark.parametrize("backbone", FULL_BUILDS)
def test_every_neck_conv_and_head_builds_on_the_backbone(backbone: str) -> None:
    """Every backbone x neck x neck_conv x head combination builds: the backbone once, each
    neck with each conv block on its taps and each head on the neck, as one model per
    combination (cheaper than full builds)."""
    images = keras.Input((SIZE, SIZE, 3))
    taps = BACKBONES.get(backbone)(images, **_tiny_options(backbone, BACKBONES.get(backbone)))
    reg_max = base_section(ModelConfig).reg_max
    head_options = {"anchor_based": {"num_anchors": 3}, "anchor_free": {"reg_max": reg_max}}
    for neck, conv in itertools.product(NECKS.names(), NECK_CONVS):
        builder = NECKS.get(neck)
        p3, p4, p5 = builder(*taps, conv=conv, **_tiny_options(neck, builder))
        for head in HEADS.names():
            outputs = HEADS.get(head)(
                {"head_p5": p5, "head_p4": p4, "head_p3": p3},
                num_classes=NUM_CLASSES,
                input_hw=(SIZE, SIZE),
                conv=conv,
                **head_options[head],
            )
            model = keras.Model(images, outputs, name=f"{backbone}-{neck}-{conv}-{head}")
            grids = [tuple(output.shape[1:3]) for output in model.outputs]
            assert grids == [(SIZE // s, SIZE // s) for s in (32, 16, 8)], (neck, conv, head)
            assert model.get_layer("backbone") is not None


@pytest.mark.parametrize("backbone", sorted(SCALED_VARIANTS))
def test_every_efficientnet_variant_gives_taps_at_strides_8_16_32(backbone: str) -> None:
    images = keras.Input((SIZE, SIZE, 3))
    taps = BACKBONES.get(backbone)(images)
    assert [tuple(tap.shape[1:3]) for tap in taps] == [(SIZE // s, SIZE // s) for s in (8, 16, 32)]
    # channels grow with the variant's width coefficient from B0's 40, 112, 320
    assert all(t.shape[-1] >= c for t, c in zip(taps, (40, 112, 320), strict=True))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_file_is_valid_and_names_registered_parts(path: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)  # configs name files relative to the repository root
    cfg = load_config(path)
    assert cfg.model.backbone in BACKBONES, cfg.model.backbone
    assert cfg.model.neck in NECKS, cfg.model.neck
    # Every option must be one its builder takes (null means "builder default").
    for builder, options in (
        (BACKBONES.get(cfg.model.backbone), cfg.model.backbone_options),
        (NECKS.get(cfg.model.neck), cfg.model.neck_options),
    ):
        given = {key for key, value in options.items() if value is not None}
        assert given <= set(inspect.signature(builder).parameters), (path.name, given)
