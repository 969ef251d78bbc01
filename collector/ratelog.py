"""Logging under attack: one line per reason per interval, with a count.

Bad input arrives by the thousand; the log must stay readable and small.  A
:class:`RateLimitedLog` logs the first occurrence of a *reason* at once, only counts the next
ones, and once ``interval`` seconds have passed logs the next occurrence with how many were not
logged in between:

    forward: refused 127.0.0.2:41000: too many connections from that address (1023 more like it in the last 60s)

    warn = RateLimitedLog(log)                      # one per component
    warn("config_v2", "%s: unusable config.v2.json (%s)", path, why)       # at the logger's level
    warn.warning("too_many_connections", "refused %s: ...", peer)          # or name the level

The key is the reason alone (a short, stable word chosen by the code, such as
``too_many_connections``): details such as byte counts, peers or batch sizes go in the message,
never in the key, so the number of keys stays as small as the number of reasons in the code
(bounded anyway by ``MAX_KEYS``).  What was only counted is in the metrics (and the summary
logged at exit); :meth:`RateLimitedLog.flush` says it when a caller wants it said.  A
traceback (``exc_info``, for bugs only, never for bad input) goes with the lines written.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

INTERVAL = 60.0
MAX_KEYS = 256  # reasons come from the code; more than this is a bug, folded into one key
OTHER = "(other reasons)"


class _Entry:
    __slots__ = ("example", "logged_at", "suppressed")

    def __init__(self, now: float) -> None:
        self.logged_at = now
        self.suppressed = 0
        self.example = ""


class RateLimitedLog:
    """``log(reason, msg, *args)``: at most one line per reason per ``interval``."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = INTERVAL,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
        prefix: str = "",
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.level = level
        self.clock = clock
        self.prefix = prefix
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()  # sinks may report from their own threads

    def __call__(self, reason: str, msg: str, *args: Any, level: int | None = None, exc_info: Any = None) -> bool:
        return self.log(self.level if level is None else level, reason, msg, *args, exc_info=exc_info)

    def warning(self, reason: str, msg: str, *args: Any, exc_info: Any = None) -> bool:
        return self.log(logging.WARNING, reason, msg, *args, exc_info=exc_info)

    def info(self, reason: str, msg: str, *args: Any) -> bool:
        return self.log(logging.INFO, reason, msg, *args)

    def error(self, reason: str, msg: str, *args: Any, exc_info: Any = None) -> bool:
        return self.log(logging.ERROR, reason, msg, *args, exc_info=exc_info)

    def log(self, level: int, reason: str, msg: str, *args: Any, exc_info: Any = None) -> bool:
        """Log now, or count; True when a line was written."""
        now = self.clock()
        with self._lock:
            e = self._entries.get(reason)
            if e is None and len(self._entries) >= MAX_KEYS:
                reason = OTHER
                e = self._entries.get(reason)
            if e is None:
                self._entries[reason] = _Entry(now)
                suppressed, elapsed = 0, 0.0
            elif now - e.logged_at < self.interval:
                e.suppressed += 1
                if e.suppressed == 1:  # an example for flush()
                    e.example = _format(msg, args)
                return False
            else:
                suppressed, elapsed = e.suppressed, now - e.logged_at
                e.logged_at = now
                e.suppressed = 0
        if not self.logger.isEnabledFor(level):
            return False
        text = self.prefix + msg
        if suppressed:
            text += f" ({suppressed} more like it in the last {_seconds(elapsed)})"
        self.logger.log(level, text, *args, exc_info=exc_info)
        return True

    def reset(self, reason: str) -> None:
        """The trouble is over: the next occurrence is said at once."""
        with self._lock:
            self._entries.pop(reason, None)

    def flush(self) -> None:
        """Say what was only counted so far (at shutdown)."""
        now = self.clock()
        with self._lock:
            pending = [(r, e.suppressed, now - e.logged_at, e.example) for r, e in self._entries.items()]
            for e in self._entries.values():
                e.suppressed = 0
                e.logged_at = now
        for reason, n, elapsed, example in pending:
            if n:
                self.logger.warning(
                    "%s%s: %d more in the last %s (%s)", self.prefix, reason, n, _seconds(elapsed), example
                )


def _format(msg: str, args: tuple[Any, ...]) -> str:
    try:
        text = msg % args if args else msg
    except (TypeError, ValueError):
        text = msg
    return text[:500]


def _seconds(s: float) -> str:
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f} min"


class RepeatFilter(logging.Filter):
    """On the collector's own log handler: a line identical to one written less than ``interval``
    seconds ago (same logger, level and text) is held back and counted; the next one written
    says how many were (``(N more like it in the last 60s)``). Lines that differ are never held."""

    def __init__(self, interval: float = INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.clock = clock
        self._entries: dict[tuple[str, int, str], _Entry] = {}
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a bad format string: let logging report it
            return True
        key = (record.name, record.levelno, text)
        now = self.clock()
        with self._lock:
            e = self._entries.get(key)
            if e is None:
                if len(self._entries) >= MAX_KEYS * 4:
                    self._entries = {k: v for k, v in self._entries.items() if now - v.logged_at < self.interval}
                if len(self._entries) < MAX_KEYS * 4:
                    self._entries[key] = _Entry(now)
                return True
            if now - e.logged_at < self.interval:
                e.suppressed += 1
                return False
            suppressed, elapsed = e.suppressed, now - e.logged_at
            e.logged_at, e.suppressed = now, 0
        if suppressed:
            record.msg = f"{text} ({suppressed} more like it in the last {_seconds(elapsed)})"
            record.args = ()
        return True
