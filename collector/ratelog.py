"""Warnings that cannot flood the log: one line per reason per interval, with a count.

    warn = RateLimitedLog(log, interval=60)
    warn("config_v2", "%s: unusable config.v2.json (%s)", path, why)

The first occurrence of a reason is logged at once; later ones within ``interval`` seconds are
only counted, and the next line said for that reason carries how many were not shown. Reasons
are names chosen by the code (never data from a peer or a file), so the table stays small; it
is capped anyway.

(A minimal local helper for the metadata and file warnings; the process-wide rate-limited
logging of issue 13 replaces it when it lands.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

MAX_REASONS = 256


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 60.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.level = level
        self.clock = clock
        self._state: dict[str, list[float]] = {}  # reason -> [last said, not said since]

    def __call__(self, reason: str, msg: str, *args: Any, level: int | None = None) -> bool:
        """Log ``msg % args`` unless ``reason`` was said less than ``interval`` ago; True if said."""
        now = self.clock()
        st = self._state.get(reason)
        if st is not None and now - st[0] < self.interval:
            st[1] += 1
            return False
        if st is None and len(self._state) >= MAX_REASONS:
            self._state.clear()
        suppressed = int(st[1]) if st is not None else 0
        self._state[reason] = [now, 0]
        if suppressed:
            msg += f" ({suppressed} more like it in the last {_seconds(now - st[0])})"  # type: ignore[index]
        self.logger.log(self.level if level is None else level, msg, *args)
        return True

    def reset(self, reason: str) -> None:
        """The trouble is over: the next occurrence is said at once."""
        self._state.pop(reason, None)


def _seconds(s: float) -> str:
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f} min"
