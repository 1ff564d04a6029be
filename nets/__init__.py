"""Model code: backbones, necks and the YOLO builder."""

from nets.registry import BACKBONES, NECKS
from nets.yolo import build_model, build_yolo, set_backbone_trainable

__all__ = ["BACKBONES", "NECKS", "build_model", "build_yolo", "set_backbone_trainable"]
