"""Backbone families. Importing this package registers every family in ``BACKBONES``.

Adding a family: write ``nets/backbones/<family>.py`` with a builder decorated by
``@BACKBONES.register("<name>")`` (contract in ``nets/registry.py``) and import it below.
"""

from nets.backbones import mobilenet_v1  # noqa: F401  (registers "mobilenetv1")
from nets.registry import BACKBONES

__all__ = ["BACKBONES"]
