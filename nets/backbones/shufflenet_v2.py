"""ShuffleNetV2 backbone, written layer for layer after torchvision's ``shufflenet_v2_x*``.

Paper: Ma et al., "ShuffleNet V2: Practical Guidelines for Efficient CNN Architecture Design",
ECCV 2018. A stem (3x3 stride-2 conv to 24 channels + 3x3 stride-2 max-pool) is followed by
stages 2, 3, 4 of 4, 8, 4 units and a 1x1 ``conv5``. A stride-1 unit splits the channels in
half, passes one half through and runs the other through 1x1 conv -> 3x3 depthwise -> 1x1 conv;
a stride-2 unit runs two branches on all channels (3x3 depthwise stride 2 -> 1x1 conv, and the
three-conv branch with a stride-2 depthwise). Both concatenate their halves and shuffle the
channels of the two groups. No conv has a bias; every conv is followed by BatchNorm.

Layer names are torchvision's module paths (see :mod:`nets.backbones.torch_ported`).

Taps: C3, C4, C5 are the outputs of stages 2, 3, 4 (strides 8, 16, 32). ``conv5`` (1024 or 2048
channels) exists for ImageNet classification; with ``conv5: true`` C5 is its output instead,
which adds a pretrained layer but also its parameters and a wider C5 for the neck (at 1.0x:
+0.48M backbone params and 1024 instead of 464 channels into the neck's first 1x1 conv).
Stage outputs are the usual choice for detection, so the default leaves conv5 out.
"""

from __future__ import annotations

from typing import Any

import keras

from nets.backbones.torch_ported import batch_norm, build_backbone, build_classifier, conv
from nets.registry import BACKBONES

__all__ = [
    "STAGE_CHANNELS",
    "TORCHVISION_ARCHS",
    "ChannelShuffle",
    "ChannelSplit",
    "shufflenet_v2_classifier",
    "shufflenetv2",
]

KerasTensor = keras.KerasTensor

# Width multiplier alpha -> output channels of stages 2, 3, 4 and conv5 (torchvision's
# stages_out_channels).
STAGE_CHANNELS: dict[float, tuple[int, int, int, int]] = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}
# torchvision's name of each width's network (the converter's --arch) -> its alpha.
TORCHVISION_ARCHS: dict[str, float] = {
    "shufflenet_v2_x0_5": 0.5,
    "shufflenet_v2_x1_0": 1.0,
    "shufflenet_v2_x1_5": 1.5,
    "shufflenet_v2_x2_0": 2.0,
}
_STAGE_UNITS = (4, 8, 4)
_STEM_CHANNELS = 24


@keras.saving.register_keras_serializable(package="yolo")
class ChannelSplit(keras.layers.Layer):
    """Split the channels into two equal halves ``[first, second]`` (torch ``chunk(2, dim=1)``)."""

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[-1] % 2:
            raise ValueError(f"ChannelSplit needs an even channel count; received {input_shape}")

    def call(self, inputs: Any) -> list[Any]:
        half = inputs.shape[-1] // 2
        return [inputs[..., :half], inputs[..., half:]]

    def compute_output_shape(
        self, input_shape: tuple[int | None, ...]
    ) -> list[tuple[int | None, ...]]:
        half = (*input_shape[:-1], input_shape[-1] // 2)
        return [half, half]


@keras.saving.register_keras_serializable(package="yolo")
class ChannelShuffle(keras.layers.Layer):
    """Interleave the channels of ``groups`` equal groups, as torchvision's ``channel_shuffle``.

    Channel ``g * (C / groups) + i`` moves to ``i * groups + g``: a reshape to
    ``[..., groups, C / groups]``, a transpose of the last two axes and a reshape back.
    """

    def __init__(self, groups: int = 2, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.groups = groups

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        if input_shape[-1] % self.groups:
            raise ValueError(
                f"ChannelShuffle needs channels divisible by groups={self.groups}; "
                f"received {input_shape}"
            )

    def call(self, inputs: Any) -> Any:
        channels = inputs.shape[-1]
        grouped = keras.ops.reshape(inputs, (-1, self.groups, channels // self.groups))
        shuffled = keras.ops.swapaxes(grouped, 1, 2)
        return keras.ops.reshape(shuffled, keras.ops.shape(inputs))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "groups": self.groups}


def shufflenet_v2_classifier(
    input_shape: tuple[int | None, ...] = (224, 224, 3),
    alpha: float = 1.0,
    num_classes: int = 1000,
) -> keras.Model:
    """torchvision's ShuffleNetV2 ImageNet classifier of width ``alpha``, logits out; see
    :func:`nets.backbones.torch_ported.build_classifier`."""
    channels = _stage_channels(alpha)

    def pooled(images: KerasTensor) -> KerasTensor:
        x = _features(images, channels, with_conv5=True)[-1]
        return keras.layers.GlobalAveragePooling2D(name="pool")(x)

    return build_classifier(input_shape, pooled, num_classes, logits_name="fc", name=_arch(alpha))


@BACKBONES.register("shufflenetv2")
def shufflenetv2(
    inputs: keras.KerasTensor,
    *,
    alpha: float = 1.0,
    conv5: bool = False,
    pretrained: str | None = None,
) -> tuple[KerasTensor, KerasTensor, KerasTensor]:
    """ShuffleNetV2 feature taps C3, C4, C5 (strides 8, 16, 32).

    Channels are those of stages 2, 3, 4 (at alpha 1.0: 116, 232, 464); with ``conv5`` C5 is
    the 1x1 conv after stage 4 (1024 channels, 2048 at alpha 2.0). The backbone is a nested
    ``keras.Model`` named ``"backbone"``; its first layer normalizes the 0..1 images with the
    ImageNet mean and std, as the reference weights expect.

    Args:
        inputs: RGB images in 0..1, shape [B, H, W, 3]; H and W multiples of 32.
        alpha: width multiplier: 0.5, 1.0, 1.5 or 2.0 (torchvision's x0_5 ... x2_0).
        conv5: tap C5 after conv5 instead of after stage 4.
        pretrained: None, or a ``.weights.h5`` file written by ``tools/convert_torch_weights.py
            --arch shufflenet_v2_x<alpha>`` (e.g. x0_5) from torchvision's weights.
    """
    channels = _stage_channels(alpha)

    def taps(x: KerasTensor) -> list[KerasTensor]:
        stage2, stage3, stage4, *last = _features(x, channels, with_conv5=conv5)
        return [stage2, stage3, last[0] if conv5 else stage4]

    return build_backbone(
        inputs,
        taps,
        lambda input_shape: shufflenet_v2_classifier(input_shape, alpha),
        pretrained=pretrained,
        title="ShuffleNetV2",
        arch=_arch(alpha),
    )


def _stage_channels(alpha: Any) -> tuple[int, int, int, int]:
    if isinstance(alpha, bool) or alpha not in STAGE_CHANNELS:
        valid = ", ".join(str(s) for s in STAGE_CHANNELS)
        raise ValueError(f"ShuffleNetV2 alpha must be one of {valid}; received {alpha!r}")
    return STAGE_CHANNELS[alpha]


def _arch(alpha: float) -> str:
    return next(arch for arch, arch_alpha in TORCHVISION_ARCHS.items() if arch_alpha == alpha)


def _features(
    x: KerasTensor, channels: tuple[int, int, int, int], *, with_conv5: bool
) -> list[KerasTensor]:
    """Stem and stages 2-4 (and conv5); returns the outputs of stages 2, 3, 4 (and conv5)."""
    x = conv(x, _STEM_CHANNELS, 3, "conv1_0", strides=2)
    x = batch_norm(x, "conv1_1")
    x = keras.layers.ReLU(name="conv1_2")(x)
    # Zero padding equals PyTorch's -inf padding here: the inputs are ReLU outputs (>= 0).
    x = keras.layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="maxpool")(x)

    outputs = []
    for stage, (units, width) in enumerate(zip(_STAGE_UNITS, channels[:3], strict=True), start=2):
        for unit in range(units):
            x = _unit(x, width, strides=2 if unit == 0 else 1, name=f"stage{stage}_{unit}")
        outputs.append(x)
    if with_conv5:
        x = conv(x, channels[-1], 1, "conv5_0")
        x = batch_norm(x, "conv5_1")
        outputs.append(keras.layers.ReLU(name="conv5_2")(x))
    return outputs


def _unit(x: KerasTensor, out_channels: int, *, strides: int, name: str) -> KerasTensor:
    """torchvision's InvertedResidual: split (stride 1) or two branches (stride 2), shuffle."""
    half = out_channels // 2
    if strides == 1:
        kept, x = ChannelSplit(name=f"{name}_split")(x)
    else:
        kept = conv(x, None, 3, f"{name}_branch1_0", strides=strides)
        kept = batch_norm(kept, f"{name}_branch1_1")
        kept = conv(kept, half, 1, f"{name}_branch1_2")
        kept = batch_norm(kept, f"{name}_branch1_3")
        kept = keras.layers.ReLU(name=f"{name}_branch1_4")(kept)
    y = conv(x, half, 1, f"{name}_branch2_0")
    y = batch_norm(y, f"{name}_branch2_1")
    y = keras.layers.ReLU(name=f"{name}_branch2_2")(y)
    y = conv(y, None, 3, f"{name}_branch2_3", strides=strides)
    y = batch_norm(y, f"{name}_branch2_4")
    y = conv(y, half, 1, f"{name}_branch2_5")
    y = batch_norm(y, f"{name}_branch2_6")
    y = keras.layers.ReLU(name=f"{name}_branch2_7")(y)
    x = keras.layers.Concatenate(name=f"{name}_concat")([kept, y])
    return ChannelShuffle(2, name=f"{name}_shuffle")(x)
