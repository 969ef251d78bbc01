"""Epoch time -> RFC 3339 UTC text, the form every record's ``@timestamp`` takes.

One formatter for the codecs (forward: seconds and nanoseconds; GELF: float seconds, to the
microsecond). The date part of the last second seen is cached: a stream's records mostly share it.
"""

from __future__ import annotations

import math
import time


class TimeFormatter:
    """``fmt(sec, ns)`` -> ``2024-05-01T12:00:00.123456789Z``; ``fmt.micros(ts)`` ->
    ``2024-05-01T12:00:00.123456Z``."""

    __slots__ = ("_prefix", "_sec")

    def __init__(self) -> None:
        self._sec: int | None = None
        self._prefix = ""

    def _date(self, sec: int) -> None:
        self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        self._sec = sec

    def __call__(self, sec: int, ns: int = 0) -> str:
        if sec != self._sec:
            self._date(sec)
        return f"{self._prefix}.{ns:09d}Z"

    def micros(self, ts: float) -> str:
        """Float epoch seconds, rounded to the microsecond."""
        sec = math.floor(ts)
        us = round((ts - sec) * 1e6)
        if us >= 1_000_000:
            sec += 1
            us -= 1_000_000
        if sec != self._sec:
            self._date(sec)
        return f"{self._prefix}.{us:06d}Z"
