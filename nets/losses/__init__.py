"""The loss of each head family (``model.head``), built from ``cfg.loss``.

- ``anchor_based.py``: :class:`YoloLoss` (YOLOv3/v4/v5 anchor assignment, objectness);
- ``task_aligned.py``: :class:`TaskAlignedLoss` (YOLOv8-style, for the anchor-free head);
- ``common.py``: what both share (their ``cfg.loss`` keys, the replica-aware normaliser).
"""

from __future__ import annotations

from nets.losses.anchor_based import YoloLoss
from nets.losses.task_aligned import TaskAlignedLoss
from utils.config import Config
from utils.config import anchors as config_anchors

__all__ = ["TaskAlignedLoss", "YoloLoss", "build_loss"]


def build_loss(cfg: Config, num_classes: int) -> YoloLoss | TaskAlignedLoss:
    """The loss of ``cfg.model.head`` for ``num_classes`` classes at the config's input size."""
    if cfg.model.head == "anchor_free":
        # Sizes come from the outputs: a multi-scale batch needs nothing else.
        return TaskAlignedLoss.from_config(
            cfg.loss, num_classes=num_classes, reg_max=cfg.model.reg_max
        )
    return YoloLoss.from_config(
        cfg.loss,
        anchors=config_anchors(cfg),
        anchors_mask=cfg.model.anchors_mask,
        num_classes=num_classes,
        input_hw=tuple(cfg.model.input_size),
    )
