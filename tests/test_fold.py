"""BatchNorm folding: each layer kind folds exactly, nothing of BN is left, and the folded
detector of every backbone family finds what the unfolded one finds."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from nets import BACKBONES, build_yolo
from nets.fold import BatchNormFolding, fold_batch_norms
from nets.layers import BatchNormalization, GhostConv, nested_layers
from nets.yolo import set_bn_momentum
from tests.test_zoo import _tiny_options
from utils.data.demo import generate_demo_dataset
from utils.deploy.detector import DecodeSpec, Detector
from utils.deploy.sources import read_rgb

# one worker builds the module fixtures once (see tests/conftest.py)
pytestmark = pytest.mark.xdist_group("fold")

FAMILIES = [
    "mobilenetv1",
    "mobilenetv2",
    "mobilenetv3_large",
    "mobilenetv3_small",
    "efficientnet_b0",
    "ghostnet",
    "shufflenetv2",
]
SIZE = 64
NUM_CLASSES = 3


def batch_norms(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in nested_layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)]


def randomize_batch_norms(model: keras.Model, seed: int = 0) -> None:
    """gamma, beta, moving mean and variance far from their initial 1, 0, 0, 1."""
    rng = np.random.default_rng(seed)
    for bn in batch_norms(model):
        c = bn.moving_mean.shape[0]
        bn.gamma.assign(rng.uniform(0.5, 1.5, c))
        bn.beta.assign(rng.normal(0.0, 0.3, c))
        bn.moving_mean.assign(rng.normal(0.0, 0.5, c))
        bn.moving_variance.assign(rng.uniform(0.3, 3.0, c))


def assert_same_outputs(a: keras.Model, b: keras.Model, x: np.ndarray, atol: float) -> None:
    for out_a, out_b in zip(keras.tree.flatten(a(x, training=False)),
                            keras.tree.flatten(b(x, training=False)), strict=True):
        np.testing.assert_allclose(np.asarray(out_b), np.asarray(out_a), rtol=0, atol=atol)


# --- each layer kind, random weights and statistics ------------------------------------------


def layer_kinds_model() -> keras.Model:
    """Conv2D with and without bias, a depthwise conv with depth multiplier 3, a strided
    GhostConv with odd filters, and a nested model with its own conv + BN, each with a BN."""
    images = keras.Input((12, 12, 4))
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False)(images)
    x = keras.layers.ReLU()(BatchNormalization()(x))
    x = keras.layers.Conv2D(6, 1, use_bias=True)(x)
    x = BatchNormalization(epsilon=1e-5)(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=3, padding="same", use_bias=False)(x)
    x = BatchNormalization()(x)
    x = GhostConv(7, kernel_size=3, ratio=3, strides=2, activation="relu")(x)
    inner_in = keras.Input((6, 6, 7))
    inner = keras.layers.Conv2D(5, 3, padding="same", use_bias=False)(inner_in)
    inner = keras.layers.BatchNormalization(name="keras_bn")(inner)  # Keras' own class too
    x = keras.Model(inner_in, inner, name="nested")(x)
    return keras.Model(images, x)


def test_each_layer_kind_folds_to_the_same_outputs():
    keras.utils.set_random_seed(0)
    model = layer_kinds_model()
    randomize_batch_norms(model)
    folding = BatchNormFolding(model)
    assert batch_norms(model) and not batch_norms(folding.model) and not folding.unfolded
    x = np.random.default_rng(1).normal(size=(2, 12, 12, 4)).astype(np.float32)
    assert_same_outputs(model, folding.model, x, atol=1e-5)

    # refresh follows the source's weights (what the training-time mAP relies on)
    randomize_batch_norms(model, seed=2)
    for conv in [layer for layer in nested_layers(model) if hasattr(layer, "kernel")]:
        conv.kernel.assign(conv.kernel * 1.5)
    with pytest.raises(AssertionError):
        assert_same_outputs(model, folding.model, x, atol=1e-5)
    folding.refresh()
    assert_same_outputs(model, folding.model, x, atol=1e-5)


def test_a_bn_that_cannot_fold_stays():
    """A BN after the input, after a conv with an activation, or after a conv whose output is
    also used elsewhere is kept (and named); the model still computes the same."""
    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 3))
    first = BatchNormalization(name="after_input")(images)
    relu_conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(first)
    y = BatchNormalization(name="after_activation")(relu_conv)
    shared = keras.layers.Conv2D(4, 1)(y)
    y = keras.layers.Add()([BatchNormalization(name="after_shared")(shared), shared])
    model = keras.Model(images, y)
    randomize_batch_norms(model)
    folding = BatchNormFolding(model)
    assert sorted(folding.unfolded) == ["after_activation", "after_input", "after_shared"]
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype(np.float32)
    assert_same_outputs(model, folding.model, x, atol=1e-5)


# --- the detector of every backbone family, on demo images ----------------------------------


@pytest.fixture(scope="module")
def demo_images(tmp_path_factory) -> list[np.ndarray]:
    root = generate_demo_dataset(tmp_path_factory.mktemp("fold") / "VOCdemo", num_train=4,
                                 num_val=0, num_test=0)
    return [read_rgb(p) for p in sorted((root / "JPEGImages").glob("*.jpg"))]


def calibrated_model(backbone: str, images: list[np.ndarray]) -> keras.Model:
    """A random-init detector whose BN statistics are those of the demo images under random
    gamma and beta: far from the initial ones, yet the activations stay normalised."""
    keras.utils.set_random_seed(0)
    model = build_yolo(
        (SIZE, SIZE, 3), NUM_CLASSES,
        backbone=backbone, backbone_options=_tiny_options(backbone, BACKBONES.get(backbone)),
        neck="yolov4_panet", neck_options={"alpha": 0.25}, neck_conv="ghost",
    )  # fmt: skip
    randomize_batch_norms(model)
    set_bn_momentum(model, 0.0)  # one training-mode pass sets the moving statistics
    batch = np.stack([tf.image.resize(image, (SIZE, SIZE)).numpy() / 255.0 for image in images])
    model(batch.astype(np.float32), training=True)
    # A channel the images hardly vary (random weights make many) would amplify float noise
    # like a chaotic system; a floor at the layer's median variance keeps the net calm.
    for bn in batch_norms(model):
        variance = bn.moving_variance.numpy()
        bn.moving_variance.assign(variance + np.median(variance))
    # The heads start near their prior bias (kernel stddev 0.01); scaled up, the boxes and
    # scores depend on the features, so a wrong fold shows.
    for name in ("head_p3", "head_p4", "head_p5"):
        head = model.get_layer(name)
        head.kernel.assign(head.kernel * 100.0)
    return model


@pytest.fixture
def eager():
    """Detector calls run eagerly: two graph traces per family would cost 20x the calls."""
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", FAMILIES)
def test_folded_detector_finds_the_same_boxes(backbone: str, demo_images, eager):
    model = calibrated_model(backbone, demo_images)
    spec = DecodeSpec(
        head="anchor_based",
        anchors=np.loadtxt(Path(__file__).parents[1] / "model_data" / "yolo_anchors.txt",
                           delimiter=",").reshape(-1, 2).astype(np.float32) * SIZE / 416,
        anchors_mask=[[6, 7, 8], [3, 4, 5], [0, 1, 2]],
        num_classes=NUM_CLASSES,
        input_hw=(SIZE, SIZE),
        assign="best",
        reg_max=16,
    )
    options = dict(score_threshold=0.01, nms_iou=0.45, max_detections=50)
    plain = Detector(model, spec, fold=False, **options)
    folded = Detector(model, spec, **options)
    assert batch_norms(plain.model) and not batch_norms(folded.model)
    found = 0
    pairs = zip(folded.detect(demo_images), plain.detect(demo_images), strict=True)
    for image, (ours, theirs) in zip(demo_images, pairs, strict=True):
        found += len(theirs.scores)
        np.testing.assert_array_equal(ours.classes, theirs.classes)
        np.testing.assert_allclose(ours.scores, theirs.scores, rtol=0, atol=1e-4)
        # in units of the image's sides: float32 boxes of a few hundred pixels differ in the
        # 1e-4 px digit
        h, w = image.shape[:2]
        side = np.array([w, h, w, h], np.float32)
        np.testing.assert_allclose(ours.boxes / side, theirs.boxes / side, rtol=0, atol=1e-4)
    assert found > 0


def test_fold_batch_norms_copies_the_weights_of_now():
    keras.utils.set_random_seed(0)
    model = layer_kinds_model()
    folded = fold_batch_norms(model)
    randomize_batch_norms(model)
    x = np.random.default_rng(1).normal(size=(1, 12, 12, 4)).astype(np.float32)
    with pytest.raises(AssertionError):
        assert_same_outputs(model, folded, x, atol=1e-5)
