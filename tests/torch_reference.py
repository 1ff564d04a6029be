"""Reference outputs of the PyTorch networks that GhostNet and ShuffleNetV2 are ported from.

Run as a separate process by tests/test_convert_torch_weights.py, never imported by a test:
PyPI's Linux torch build ships triton, whose bundled LLVM clashes with TensorFlow's, and
importing torchvision (which imports triton) into a process that has loaded TensorFlow
segfaults. This module imports no TensorFlow.

    python -m tests.torch_reference --size 64 --out DIR shufflenet_v2_x0_5 ghostnet_100

builds each reference network with random weights and random BatchNorm statistics (so that a
mix-up of statistics, epsilon or layout changes the outputs), and writes

- ``DIR/<arch>/state_dict.pth``: its state_dict, the converter's input;
- ``DIR/<arch>/reference.npz``: ``images`` (2 RGB images in 0..1, NHWC), ``normalized`` (the same
  normalized with the ImageNet mean and std, NHWC), ``logits``, and ``tap_<module>`` (NHWC
  outputs of the modules the detection backbone taps, e.g. ``tap_stage2``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

# torchvision's and timm's ImageNet normalization.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Reference modules whose outputs the tests compare with the backbone taps.
TAPPED_MODULES = {
    "ghostnet": ("blocks.4", "blocks.6", "blocks.8"),
    "shufflenet": ("stage2", "stage3", "stage4", "conv5"),
}


def reference_model(arch: str) -> torch.nn.Module:
    if arch.startswith("ghostnet"):
        import timm

        return timm.create_model(arch, pretrained=False)
    import torchvision

    return getattr(torchvision.models, arch)(weights=None)


def randomize_batch_norms(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.rand(channels, generator=generator) - 0.5)
            # Some small variances, where BatchNorm's epsilon shows.
            module.running_var.copy_(torch.rand(channels, generator=generator) * 1.5 + 0.02)
            module.weight.data.copy_(torch.rand(channels, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(channels, generator=generator) * 0.4 - 0.2)


def run(arch: str, size: int, out: Path, seed: int = 0) -> None:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = reference_model(arch)
    with torch.no_grad():
        randomize_batch_norms(model, generator)
    model.eval()

    taps: dict[str, torch.Tensor] = {}
    family = "ghostnet" if arch.startswith("ghostnet") else "shufflenet"
    for name in TAPPED_MODULES[family]:
        model.get_submodule(name).register_forward_hook(
            lambda _module, _inputs, output, name=name: taps.__setitem__(name, output)
        )
    images = torch.rand(2, 3, size, size, generator=generator)
    normalized = (images - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        logits = model(normalized)

    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "state_dict.pth")
    nhwc = {"images": images, "normalized": normalized}
    nhwc.update({f"tap_{name}": value for name, value in taps.items()})
    np.savez(
        out / "reference.npz",
        logits=logits.numpy(),
        **{key: value.permute(0, 2, 3, 1).numpy() for key, value in nhwc.items()},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archs", nargs="+", help="timm or torchvision architecture names")
    parser.add_argument("--size", type=int, required=True, help="input height and width")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    args = parser.parse_args()
    for arch in args.archs:
        run(arch, args.size, args.out / arch)


if __name__ == "__main__":
    main()
