"""Reference outputs of the PyTorch networks that GhostNet and ShuffleNetV2 are ported from.

The fixture ``tests/fixtures/torch_reference/`` holds, for each arch of :data:`REFERENCE_ARCHS`,
what the reference network computes with weights that :func:`numpy_state_dict` makes from a
seeded NumPy generator (the weights themselves are not stored: CI, which has no torch, makes
them again and converts them with tools/convert_torch_weights.py):

- ``<arch>.json``: the :class:`Recipe` of the weights: the generator's seed and weight gain, the
  layout of the reference ``state_dict`` (``"name": "dtype[shape]"`` in its order, which is the
  generator's order) and a checksum of the weights made from it;
- ``<arch>.npz``: ``images`` (2 RGB images, uint8 NHWC, fed as ``images / 255``), ``logits``,
  and ``tap_<module>`` (float32 NHWC outputs of the modules the detection backbone taps, e.g.
  ``tap_stage2``).

It was written with torch 2.13 (CPU), torchvision 0.28 and timm 1.0 by

    python -m tests.torch_reference --out tests/fixtures/torch_reference

(``--state-dicts`` also writes the weights as ``<arch>.pth``, the converter's input format).
Writing needs torch, torchvision and timm, which requirements-dev.txt leaves out; torchvision
must be the build for the installed torch (PyPI's Linux torchvision is built against the CUDA
torch and fails to import next to a CPU-only torch). The torch side runs in a process of its
own, never imported into a test process that has TensorFlow: PyPI's Linux torch build ships
triton, whose bundled LLVM clashes with TensorFlow's, and importing torchvision (which imports
triton) next to TensorFlow segfaults. The tests import this module for the NumPy part only; it
imports torch inside the functions that need it.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "torch_reference"
REFERENCE_ARCHS = ("shufflenet_v2_x0_5", "ghostnet_100")
SEED = 0
IMAGE_SHAPE = (2, 64, 64, 3)
# torchvision's and timm's ImageNet normalization.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
# Reference modules whose outputs the tests compare with the backbone taps.
TAPPED_MODULES = {
    "ghostnet": ("blocks.4", "blocks.6", "blocks.8"),
    "shufflenet": ("stage2", "stage3", "stage4", "conv5"),
}
# Factor on PyTorch's default init of conv and linear weights, so that the signal of the image
# neither dies out against the BatchNorm offsets nor blows up on the way to the logits (without
# it ShuffleNetV2's logits hardly depend on the image).
WEIGHT_GAINS = {"shufflenet_v2_x0_5": 1.2, "ghostnet_100": 1.0}
# Uniform ranges of the BatchNorm parameters: non-trivial statistics and affine parameters, so
# that a mix-up of statistics, epsilon or channels changes the outputs; some variances are
# small, where BatchNorm's epsilon shows.
_BATCH_NORM_RANGES = {
    "weight": (0.5, 1.5),
    "bias": (-0.2, 0.2),
    "running_mean": (-0.5, 0.5),
    "running_var": (0.02, 1.52),
}

# One state_dict entry: name, shape, dtype name.
Layout = list[tuple[str, tuple[int, ...], str]]


def numpy_state_dict(layout: Layout, seed: int, gain: float) -> dict[str, np.ndarray]:
    """Weights for a state_dict of ``layout``, the same for the same arguments.

    BatchNorms get values from :data:`_BATCH_NORM_RANGES`; conv and linear weights and biases
    PyTorch's default init times ``gain``: uniform in +-gain/sqrt(fan_in).
    """
    rng = np.random.default_rng(seed)
    shapes = {name: shape for name, shape, _ in layout}
    state = {}
    for name, shape, dtype in layout:
        module, _, param = name.rpartition(".")
        if param == "num_batches_tracked":
            value = np.zeros(shape)
        elif f"{module}.running_var" in shapes:
            value = rng.uniform(*_BATCH_NORM_RANGES[param], size=shape)
        else:
            bound = gain / math.sqrt(math.prod(shapes[f"{module}.weight"][1:]))
            value = rng.uniform(-bound, bound, size=shape)
        state[name] = value.astype(dtype)
    return state


def checksum(state: dict[str, np.ndarray]) -> float:
    """A sum over all weights, which tells whether NumPy's generator still makes the same ones."""
    return float(sum(np.sum(value, dtype=np.float64) for value in state.values()))


def normalized(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC images as the reference classifiers take them: 0..1, ImageNet-normalized."""
    scaled = images.astype(np.float32) / np.float32(255)
    return (scaled - np.float32(MEAN)) / np.float32(STD)


@dataclass(frozen=True)
class Recipe:
    """How the weights of a fixture were made: :func:`numpy_state_dict`'s arguments."""

    layout: Layout
    seed: int
    gain: float
    checksum: float  # of the weights made, see :func:`checksum`

    @classmethod
    def read(cls, folder: Path, arch: str) -> Recipe:
        data = json.loads((folder / f"{arch}.json").read_text())
        layout = []
        for name, spec in data["state_dict"].items():
            dtype, _, dims = spec.rstrip("]").partition("[")
            layout.append((name, tuple(int(dim) for dim in dims.split(",") if dim), dtype))
        return cls(layout, data["seed"], data["gain"], data["checksum"])

    def write(self, folder: Path, arch: str) -> None:
        # "name": "dtype[shape]" entries, one a line: a change of the layout reads as a diff.
        state_dict = {
            name: f"{dtype}[{','.join(map(str, shape))}]" for name, shape, dtype in self.layout
        }
        data = {"seed": self.seed, "gain": self.gain, "checksum": self.checksum}
        text = json.dumps({**data, "state_dict": state_dict}, indent=1)
        (folder / f"{arch}.json").write_text(text + "\n")

    def state_dict(self) -> dict[str, np.ndarray]:
        return numpy_state_dict(self.layout, self.seed, self.gain)


def read_outputs(folder: Path, arch: str) -> dict[str, np.ndarray]:
    """``images``, ``logits`` and ``tap_<module>`` of ``folder/<arch>.npz``."""
    with np.load(folder / f"{arch}.npz") as outputs:
        return dict(outputs)


def random_images(rng: np.random.Generator) -> np.ndarray:
    """uint8 images of :data:`IMAGE_SHAPE`: random 8x8-pixel blocks plus fine noise.

    The blocks give each image its own layout and colors, which pooled i.i.d. noise would
    average away (all images would have about the same logits).
    """
    count, height, width, channels = IMAGE_SHAPE
    blocks = rng.integers(0, 256, (count, height // 8, width // 8, channels))
    noise = rng.integers(-24, 25, IMAGE_SHAPE)
    return np.clip(blocks.repeat(8, axis=1).repeat(8, axis=2) + noise, 0, 255).astype(np.uint8)


def reference_model(arch: str) -> torch.nn.Module:
    if arch.startswith("ghostnet"):
        import timm

        return timm.create_model(arch, pretrained=False)
    import torchvision

    return getattr(torchvision.models, arch)(weights=None)


def reference_outputs(
    model: torch.nn.Module, arch: str, images: np.ndarray
) -> dict[str, np.ndarray]:
    """``logits`` and ``tap_<module>`` (NHWC) of the reference ``model`` on uint8 ``images``."""
    import torch

    taps: dict[str, torch.Tensor] = {}
    family = "ghostnet" if arch.startswith("ghostnet") else "shufflenet"
    for name in TAPPED_MODULES[family]:
        model.get_submodule(name).register_forward_hook(
            lambda _module, _inputs, output, name=name: taps.__setitem__(name, output)
        )
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(normalized(images)).permute(0, 3, 1, 2))
    outputs = {"logits": logits.numpy()}
    outputs.update({f"tap_{name}": tap.permute(0, 2, 3, 1).numpy() for name, tap in taps.items()})
    return outputs


def write(arch: str, out: Path, *, state_dict_file: bool) -> None:
    """Write ``out/<arch>.json`` and ``out/<arch>.npz`` (and ``out/<arch>.pth``)."""
    import torch

    model = reference_model(arch)
    layout = [
        (name, tuple(value.shape), str(value.numpy().dtype))
        for name, value in model.state_dict().items()
    ]
    state = numpy_state_dict(layout, SEED, WEIGHT_GAINS[arch])
    tensors = {name: torch.from_numpy(value) for name, value in state.items()}
    model.load_state_dict(tensors, strict=True)
    images = random_images(np.random.default_rng(SEED))
    outputs = reference_outputs(model, arch, images)

    out.mkdir(parents=True, exist_ok=True)
    Recipe(layout, SEED, WEIGHT_GAINS[arch], checksum(state)).write(out, arch)
    np.savez(out / f"{arch}.npz", images=images, **outputs)
    if state_dict_file:
        torch.save(tensors, out / f"{arch}.pth")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "archs", nargs="*", default=REFERENCE_ARCHS, help="timm or torchvision architecture names"
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--state-dicts", action="store_true", help="also write the weights as <arch>.pth"
    )
    args = parser.parse_args()
    for arch in args.archs:
        write(arch, args.out, state_dict_file=args.state_dicts)


if __name__ == "__main__":
    main()
