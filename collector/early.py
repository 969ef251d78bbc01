"""A SIGTERM that comes while the collector starts (its imports take a moment) is remembered and
acted on once the pipeline runs, as any other: it stops cleanly, exit 0, instead of dying by the
signal mid-start (``docker stop`` right after ``docker start``, a supervisor's restart).

Only the commands that run a pipeline keep it (:func:`keep`); the others get the default back."""

from __future__ import annotations

import signal
from types import FrameType

pending: list[int] = []


def _remember(sig: int, _frame: FrameType | None) -> None:
    pending.append(sig)


def install() -> None:
    signal.signal(signal.SIGTERM, _remember)


def release() -> None:
    """Not a pipeline command: SIGTERM ends the process as usual, also one that already came."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if pending:
        signal.raise_signal(signal.SIGTERM)
