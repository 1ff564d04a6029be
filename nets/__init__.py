"""Model code: backbones, necks, heads and the YOLO builder."""

from nets.registry import BACKBONES, HEADS, NECKS
from nets.yolo import build_model, build_yolo, set_backbone_trainable

__all__ = ["BACKBONES", "HEADS", "NECKS", "build_model", "build_yolo", "set_backbone_trainable"]
