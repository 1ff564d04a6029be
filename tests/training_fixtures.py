"""A tiny, easy VOC dataset and a matching config, for tests that really train."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("red_box", "blue_disc")
COLOURS_BGR = {"red_box": (40, 40, 220), "blue_disc": (220, 80, 30)}


def _xml(stem: str, width: int, height: int, objects: list[tuple[str, int, int, int, int]]) -> str:
    parts = [
        f"<annotation><folder>TINY</folder><filename>{stem}.jpg</filename>",
        f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for name, x1, y1, x2, y2 in objects:
        parts.append(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin>"
            f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "".join(parts)


def make_tiny_voc(root: Path, num_images: int = 8, size: int = 128, seed: int = 0) -> Path:
    """``root/TINY`` with 1-2 large, well separated objects per image; split ``TINY/train``."""
    rng = np.random.default_rng(seed)
    dataset = root / "TINY"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dataset / sub).mkdir(parents=True, exist_ok=True)
    ids = []
    for i in range(num_images):
        stem = f"img{i:03d}"
        image = np.full((size, size, 3), 128, np.uint8)
        image += rng.integers(0, 20, image.shape, dtype=np.uint8)
        objects = []
        count = 1 + i % 2
        for k in range(count):
            name = CLASSES[(i + k) % 2]
            side = int(rng.integers(size // 4, size // 2))
            x1 = int(rng.integers(0, size // 2 - side // 2)) + (k * size // 2)
            x1 = min(x1, size - side - 1)
            y1 = int(rng.integers(0, size - side - 1))
            x2, y2 = x1 + side, y1 + side
            if name == "red_box":
                cv2.rectangle(image, (x1, y1), (x2 - 1, y2 - 1), COLOURS_BGR[name], -1)
            else:
                centre = ((x1 + x2) // 2, (y1 + y2) // 2)
                cv2.circle(image, centre, side // 2, COLOURS_BGR[name], -1)
            objects.append((name, x1, y1, x2, y2))
        cv2.imwrite(str(dataset / "JPEGImages" / f"{stem}.jpg"), image)
        (dataset / "Annotations" / f"{stem}.xml").write_text(_xml(stem, size, size, objects))
        ids.append(stem)
    (dataset / "ImageSets/Main/train.txt").write_text("\n".join(ids) + "\n")
    return dataset


def tiny_config(tmp_path: Path, num_images: int = 8) -> Path:
    """A config over :func:`make_tiny_voc` data: small model, no augmentation, quick schedule."""
    root = tmp_path / "VOCdevkit"
    make_tiny_voc(root, num_images)
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"""_base_: {REPO / "configs" / "base.yaml"}
model:
  backbone_options: {{alpha: 0.25}}
  neck_options: {{alpha: 0.25}}
  neck_conv: standard  # a third fewer layers than depthwise: each Trainer test traces ~30% faster
  input_size: [128, 128]
  anchors: {REPO / "model_data" / "yolo_anchors.txt"}
data:
  root: {root}
  classes: {classes}
  train_split: [TINY/train]
  val_split: [TINY/train]
  test_split: [TINY/train]
augment: {{mosaic: 0.0, mixup: 0.0, jitter: 0.0, scale: [1.0, 1.0], flip: 0.0,
          hue: 0.0, sat: 0.0, val: 0.0}}
train:
  epochs: 3
  freeze_epochs: 0
  batch_size: 4
  optimizer: adam
  init_lr: 1.0e-3
  nominal_batch_size: 4
  lr_limits_adam: [3.0e-4, 1.0e-2]
  eval_period: 0
  save_period: 0
  save_dir: {tmp_path / "logs"}
"""
    )
    return path
