"""Print a YOLO model's parameter counts (total, trainable, backbone/neck/head) and GFLOPs.

The model is built with random weights: counts do not depend on them, so a config with
`pretrained: imagenet` needs no download (works offline).

Examples (from the repo root):

    python tools/summary.py --config configs/mobilenetv1_yolov4.yaml
    python tools/summary.py --config configs/mobilenetv1_yolov4.yaml model.input_size=[320,320]
    python tools/summary.py --backbone mobilenetv1 --alpha 0.5 --size 416 --classes 20 --layers
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from utils.cli import fail, quiet_tensorflow

quiet_tensorflow()  # before Keras imports TensorFlow

import keras  # noqa: E402

from nets import HEADS, build_model, build_yolo  # noqa: E402
from nets.necks import NECK_CONVS  # noqa: E402
from utils.flops import count_macs, macs_by_layer  # noqa: E402

# Flags that describe the model without a config; with --config they come from the file.
_MODEL_FLAGS = (
    "backbone",
    "alpha",
    "neck",
    "neck_conv",
    "size",
    "classes",
    "head",
    "anchors",
)


@dataclass(frozen=True)
class ParamBreakdown:
    """Parameter counts of a built YOLO model."""

    total: int
    trainable: int
    backbone: int
    neck: int
    head: int


def param_breakdown(model: keras.Model) -> ParamBreakdown:
    """Split parameters into the nested ``backbone``, the ``head_*`` layers and the neck (rest)."""
    total = model.count_params()
    backbone = model.get_layer("backbone").count_params()
    head = sum(layer.count_params() for layer in model.layers if layer.name.startswith("head_"))
    trainable = sum(math.prod(weight.shape) for weight in model.trainable_weights)
    return ParamBreakdown(total, trainable, backbone, total - backbone - head, head)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config", type=Path, help="experiment YAML; the model is built from its `model` section"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="config overrides (only with --config), e.g. model.backbone_options.alpha=0.5",
    )
    group = parser.add_argument_group(
        "model without a config", "with --config, use key=value overrides instead"
    )
    group.add_argument("--backbone", help="backbone name (default: mobilenetv1)")
    group.add_argument(
        "--alpha", type=float, help="width multiplier for backbone and neck (default: 1.0)"
    )
    group.add_argument("--neck", help="neck name (default: yolov4_panet)")
    group.add_argument(
        "--neck-conv",
        choices=NECK_CONVS,
        help="the necks' 3x3 conv block (default: the neck's own, depthwise)",
    )
    group.add_argument(
        "--size", type=int, nargs="+", metavar="N", help="input size: N or H W (default: 416)"
    )
    group.add_argument("--classes", type=int, help="number of classes (default: 20)")
    group.add_argument(
        "--head", choices=HEADS.names(), help="head family (default: anchor_based)"
    )
    group.add_argument(
        "--anchors", type=int, help="anchor_based head: anchors per scale (default: 3)"
    )
    parser.add_argument(
        "--layers", action="store_true", help="also print the per-layer table (params, MACs)"
    )
    args = parser.parse_args(argv)
    given = [
        f"--{flag.replace('_', '-')}" for flag in _MODEL_FLAGS if getattr(args, flag) is not None
    ]
    if args.config is not None and given:
        parser.error(
            f"{', '.join(given)} cannot be combined with --config; use key=value overrides"
        )
    if args.config is None and args.overrides:
        parser.error(f"overrides {args.overrides} need --config")
    if args.head == "anchor_free" and args.anchors is not None:
        parser.error("--anchors: the anchor_free head uses no anchors")
    if args.size is not None and len(args.size) > 2:
        parser.error(f"--size takes N or H W; received {args.size}")
    return args


def build_from_args(args: argparse.Namespace) -> tuple[keras.Model, str]:
    """Build the model described by the arguments; also return a one-line description."""
    if args.config is not None:
        from utils.config import load_config, num_classes

        cfg = load_config(args.config, args.overrides)
        classes = num_classes(cfg)
        model = build_model(dataclasses.replace(cfg.model, pretrained=None), classes)
        options = f"{cfg.model.backbone_options}, neck {cfg.model.neck} {cfg.model.neck_options}"
        options += f" ({cfg.model.neck_conv} convs), head {cfg.model.head}"
        return model, f"backbone {cfg.model.backbone} {options}, classes {classes}"

    backbone = args.backbone or "mobilenetv1"
    neck = args.neck or "yolov4_panet"
    alpha = 1.0 if args.alpha is None else args.alpha
    size = args.size or [416]
    height, width = size[0], size[-1]
    classes = 20 if args.classes is None else args.classes
    head = args.head or "anchor_based"
    if head == "anchor_based":
        head_options = {"num_anchors": 3 if args.anchors is None else args.anchors}
    else:
        from utils.config import ModelConfig, base_section

        head_options = {"reg_max": base_section(ModelConfig).reg_max}
    model = build_yolo(
        (height, width, 3),
        classes,
        backbone=backbone,
        backbone_options={"alpha": alpha},
        neck=neck,
        neck_options={"alpha": alpha},
        neck_conv=args.neck_conv,
        head=head,
        head_options=head_options,
    )
    conv = f" ({args.neck_conv} convs)" if args.neck_conv else ""
    description = f"backbone {backbone}, neck {neck}{conv}, head {head}"
    return model, f"{description}, alpha {alpha}, classes {classes}"


def layer_rows(model: keras.Model, macs: dict[str, int], prefix: str = "") -> list[tuple]:
    """(path, type, output shape, params, MACs) for every layer, nested models expanded.

    A composite layer (GhostConv) is one row holding the MACs of its sublayers.
    """
    rows = []
    for layer in model.layers:
        path = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            rows.extend(layer_rows(layer, macs, f"{path}/"))
            continue
        shape = tuple(layer.output.shape[1:])
        layer_macs = sum(n for key, n in macs.items() if key == path or key.startswith(f"{path}/"))
        rows.append((path, type(layer).__name__, shape, layer.count_params(), layer_macs))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        model, description = build_from_args(args)
    except (FileNotFoundError, KeyError, ValueError) as err:
        return fail(str(err))

    height, width = model.input_shape[1:3]
    counts = param_breakdown(model)
    macs = macs_by_layer(model)

    if args.layers:
        print(f"{'layer':<40} {'type':<20} {'output':<18} {'params':>11} {'MMACs':>9}")
        for path, kind, shape, params, layer_macs in layer_rows(model, macs):
            shape_text = "x".join(str(dim) for dim in shape)
            print(f"{path:<40} {kind:<20} {shape_text:<18} {params:>11,} {layer_macs / 1e6:>9.2f}")
        print()

    total_macs = count_macs(model)
    print(f"model {model.name}: {description}, input {height}x{width}")
    print(f"  params total      {counts.total:>13,}")
    print(f"  params trainable  {counts.trainable:>13,}")
    print(f"  params backbone   {counts.backbone:>13,}")
    print(f"  params neck       {counts.neck:>13,}")
    print(f"  params head       {counts.head:>13,}")
    print(f"  GFLOPs            {2 * total_macs / 1e9:>13.3f}  ({total_macs / 1e9:.3f} GMACs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
