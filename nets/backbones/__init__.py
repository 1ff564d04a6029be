"""Backbone families. Importing this package registers every family in ``BACKBONES``.

Adding a family: write ``nets/backbones/<family>.py`` with a builder decorated by
``@BACKBONES.register("<name>")`` (contract in ``nets/registry.py``) and import it below.
"""

from nets.backbones import (
    efficientnet,  # noqa: F401  ("efficientnet_b0" ... "efficientnet_b7")
    ghostnet,  # noqa: F401  (registers "ghostnet")
    mobilenet_v1,  # noqa: F401  (registers "mobilenetv1")
    mobilenet_v2,  # noqa: F401  (registers "mobilenetv2")
    mobilenet_v3,  # noqa: F401  ("mobilenetv3_large", "mobilenetv3_small")
    shufflenet_v2,  # noqa: F401  (registers "shufflenetv2")
)
from nets.registry import BACKBONES

__all__ = ["BACKBONES"]
