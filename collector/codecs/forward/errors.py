"""The forward codec's error, and how it names a wrong wire type."""

from __future__ import annotations

from typing import Any

from collector.codecs import InputError


class ForwardError(InputError):
    """Input that breaks the forward protocol."""


def kind(v: Any) -> str:
    """The wire type of ``v`` as a person reads it (``list``, ``dict``, ``int``...)."""
    return type(v).__name__
