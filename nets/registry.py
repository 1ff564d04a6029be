"""Name -> builder registries for backbones, necks and heads.

A backbone builder has the signature

    fn(inputs: keras.KerasTensor, *, pretrained: str | None = None, **options) -> (C3, C4, C5)

where ``inputs`` are RGB images scaled to 0..1 (each backbone maps them to the range its weights
expect) and C3, C4, C5 are feature maps at strides 8, 16 and 32. The backbone's layers form a
nested ``keras.Model`` named ``"backbone"`` so the freeze boundary has a name.

A neck builder has the signature ``fn(c3, c4, c5, **options) -> (P3, P4, P5)`` at the same strides.
A head builder turns (P3, P4, P5) into the raw outputs (see ``nets.heads``).

Adding a family is one file that decorates its builder with ``BACKBONES.register("name")`` plus one
import line in ``nets/backbones/__init__.py``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)


class UnknownNameError(KeyError, ValueError):
    """Raised by :meth:`Registry.get` for a name that is not registered.

    It is both a ``KeyError`` (a failed lookup) and a ``ValueError`` (a bad config value), so
    callers may catch either.
    """

    def __str__(self) -> str:
        # KeyError would otherwise print the message wrapped in quotes.
        return str(self.args[0])


class Registry:
    """A mapping from names to builder functions of one kind ("backbone", "neck", ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator that registers ``fn`` under ``name``; a duplicate name is an error."""

        def decorator(fn: F) -> F:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._builders[name] = fn
            return fn

        return decorator

    def get(self, name: str) -> Callable:
        """Return the builder registered as ``name``.

        Raises:
            UnknownNameError: ``name`` is not registered; the message lists the valid names,
                closest match first.
        """
        try:
            return self._builders[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name)) from None

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._builders)

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"

    def _unknown_message(self, name: str) -> str:
        if not self._builders:
            return f"unknown {self.kind} {name!r}: no {self.kind}s are registered"
        ranked = sorted(
            self._builders,
            key=lambda candidate: (
                -difflib.SequenceMatcher(None, str(name).lower(), candidate.lower()).ratio()
            ),
        )
        return f"unknown {self.kind} {name!r}; valid names (closest first): {', '.join(ranked)}"


BACKBONES = Registry("backbone")
NECKS = Registry("neck")
HEADS = Registry("head")
