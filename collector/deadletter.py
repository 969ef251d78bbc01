"""The dead-letter file: where bad input and rejected records go, with their reason.

One NDJSON file per component under ``<data_dir>/dead-letter/<component>.ndjson``.  Each line:

    {"@timestamp": ..., "component": ..., "reason": ..., "origin": {...}, "record": {...} | "raw": "..."}

``origin`` says where the data came from (file path and offset, peer address, ...); ``raw``
keeps the input as text (``raw_base64`` as well when the bytes were not UTF-8), so nothing is
lost and a line can be replayed by hand once fixed.  Every entry is counted
(``collector_dead_letters_total``), and also as ``collector_events_rejected_total`` (records) or
``collector_errors_total`` (raw input).

Bad input is what an attacker sends most cheaply, so the disk it may take is bounded
(``dead_letter:`` in the pipeline config, :class:`DeadLetterConfig`), per component:

* ``max_bytes`` on disk, across ``files`` files: the current one and rotated ones
  (``<component>.ndjson.1`` is the newest); when the current file is full it is rotated and the
  oldest file deleted, its entries counted (``collector_dead_letter_dropped_total{reason=
  "rotated_out"}``).  Never more than ``max_bytes`` is on disk (files left by an older
  version are trimmed at the first write);
* ``max_bytes_per_second`` written (a token bucket holding ``BURST_SECONDS`` of it); what
  comes faster is counted (``reason="rate_limited"``), not written.

Warnings say one line per component and reason per minute (ratelog.py).

A full disk never stops good records: while the data directory is full, entries are dropped
and counted (``reason="disk_full"``), a partly written line is cut off again, a warning says so
(at once, then every 30 s: diskfull.py), and writing resumes by itself.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from collector.diskfull import DiskFull, is_disk_full
from collector.ratelog import RateLimitedLog
from collector.telemetry import Telemetry

log = logging.getLogger("collector.deadletter")

MAX_RAW = 1 << 20  # keep at most 1 MiB of one bad input
BURST_SECONDS = 4.0  # the byte-rate limit lets this many seconds of writing through at once


class DeadLetterConfig(BaseModel):
    """``dead_letter:`` in the pipeline config: the disk dead letters may take, per component."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_bytes: int = Field(
        64 << 20,
        ge=1 << 20,
        description="Bytes of dead letters kept on disk per component, across its files; past it the oldest "
        "file is deleted (its entries counted in collector_dead_letter_dropped_total).",
    )
    max_bytes_per_second: int = Field(
        1 << 20,
        ge=1024,
        description="Bytes written per second per component (bursts of 4 s of it pass); entries coming faster "
        "are counted, not written.",
    )
    files: int = Field(
        4, ge=2, le=100, description="Files per component: the current one and the rotated ones (<name>.ndjson.N)."
    )


class _Bucket:
    """A token bucket of bytes per second; a write may take it below zero (one large entry
    passes), the next ones wait for it to refill."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self, n: int) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens <= 0:
            return False
        self.tokens -= n
        return True


class _Files:
    """The files of one component: the current one (open) and the sizes of the rotated ones."""

    __slots__ = ("current", "f", "rotated")

    def __init__(self) -> None:
        self.f: IO[bytes] | None = None
        self.current = 0
        self.rotated: list[int] = []  # sizes of <name>.ndjson.1, .2, ... (newest first)


class DeadLetter:
    def __init__(self, data_dir: Path | str, telemetry: Telemetry, config: DeadLetterConfig | None = None) -> None:
        self.dir = Path(data_dir) / "dead-letter"
        self.telemetry = telemetry
        self.config = config or DeadLetterConfig()
        self._files: dict[str, _Files] = {}
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        self._say = RateLimitedLog(log)
        self._full = DiskFull("dead letters", "bad input and rejected records are dropped (counted)")
        self.file_bytes = self.config.max_bytes // self.config.files  # one file at most
        self.max_raw = min(MAX_RAW, self.file_bytes // 5)  # an entry (text, base64, JSON escapes) fits a file

    def path(self, component: str, n: int = 0) -> Path:
        """The current file of ``component`` (``n`` = 0) or its ``n``-th rotated one."""
        return self.dir / (f"{component}.ndjson" if n == 0 else f"{component}.ndjson.{n}")

    def _write(self, component: str, entries: list[dict[str, Any]]) -> bool:
        """True when written; False when dropped (rate, size, full disk: each counted)."""
        data = b"".join(orjson.dumps(e, default=str) + b"\n" for e in entries)
        with self._lock:
            if not self._within_rate(component, len(data), len(entries)):
                return False
            f = self._room_for(component, len(data), len(entries))
            if f is None:
                return False
            try:
                f.write(data)
                f.flush()
            except OSError as e:
                if not is_disk_full(e):
                    raise
                self._disk_full(component, len(entries), e)
                return False
            self._files[component].current += len(data)
            self._full.ok()
        return True

    def _disk_full(self, component: str, entries: int, error: OSError) -> None:
        """No room for dead letters: drop them (counted), cut off what was half written, say it."""
        st = self._files[component]
        if st.f is not None:
            with contextlib.suppress(OSError):
                st.f.close()  # what its buffer still held is dropped with the rest
            st.f = None
        with contextlib.suppress(OSError):
            os.truncate(self.path(component), st.current)
        self._dropped(component, "disk_full", entries)
        self._full.failed(self.path(component), error, entries)

    # -- limits (bytes per second, bytes on disk) -------------------------------------------------
    def _dropped(self, component: str, reason: str, n: int) -> None:
        self.telemetry.dead_letter_dropped.labels(component, reason).inc(n)

    def _within_rate(self, component: str, nbytes: int, entries: int) -> bool:
        b = self._buckets.get(component)
        if b is None:
            rate = self.config.max_bytes_per_second
            b = self._buckets[component] = _Bucket(rate, rate * BURST_SECONDS)
        if b.take(nbytes):
            return True
        self._dropped(component, "rate_limited", entries)
        self._say.warning(
            f"{component}:rate",
            "%s: dead letters come faster than max_bytes_per_second (%d): entries are counted, not written",
            component,
            self.config.max_bytes_per_second,
        )
        return False

    def _state(self, component: str) -> _Files:
        st = self._files.get(component)
        if st is None:
            st = self._files[component] = _Files()
            self.dir.mkdir(parents=True, exist_ok=True)
            try:
                st.current = self.path(component).stat().st_size
            except FileNotFoundError:
                st.current = 0
            n = 1
            while self.path(component, n).exists():
                st.rotated.append(self.path(component, n).stat().st_size)
                n += 1
        return st

    def _room_for(self, component: str, nbytes: int, entries: int) -> IO[bytes] | None:
        """The file to append ``nbytes`` to, rotating and deleting so that the component's files
        stay within ``max_bytes``; None when one write is larger than a file may be."""
        if nbytes > self.file_bytes:
            self._dropped(component, "too_large", entries)
            return None
        st = self._state(component)
        if st.current + nbytes > self.file_bytes:
            self._rotate(component, st)
        while st.rotated and (
            len(st.rotated) >= self.config.files or sum(st.rotated) + st.current + nbytes > self.config.max_bytes
        ):
            self._delete_oldest(component, st)
        if st.f is None:
            st.f = open(self.path(component), "ab")  # noqa: SIM115
        return st.f

    def _rotate(self, component: str, st: _Files) -> None:
        if st.f is not None:
            st.f.close()
            st.f = None
        while len(st.rotated) >= self.config.files - 1:
            self._delete_oldest(component, st)
        for n in range(len(st.rotated), 0, -1):
            os.replace(self.path(component, n), self.path(component, n + 1))
        if st.current or self.path(component).exists():
            os.replace(self.path(component), self.path(component, 1))
            st.rotated.insert(0, st.current)
        st.current = 0

    def _delete_oldest(self, component: str, st: _Files) -> None:
        n = len(st.rotated)
        path = self.path(component, n)
        entries = _count_lines(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        st.rotated.pop()
        self._dropped(component, "rotated_out", entries)
        self._say.warning(
            f"{component}:rotated",
            "%s: dead letters past max_bytes (%d): deleted the oldest file (%d entries)",
            component,
            self.config.max_bytes,
            entries,
        )

    def _note(self, component: str, reason: str, where: str, written: bool = True) -> None:
        self._say.warning(
            f"{component}:{_short(reason)}",
            "%s: %s (%s); %s %s",
            component,
            reason[:300],
            where[:300],
            "set aside in" if written else "not set aside (see the count of dropped dead letters) in",
            self.path(component),
        )

    def raw(self, component: str, reason: str, data: bytes, **origin: Any) -> None:
        """Bad input that never became a record (a malformed line, packet, frame)."""
        clipped = data[: self.max_raw]
        entry: dict[str, Any] = {
            "@timestamp": _now(),
            "component": component,
            "reason": reason,
            "origin": origin,
            "raw": clipped.decode("utf-8", "replace"),
        }
        if len(data) > self.max_raw:
            entry["raw_truncated_from"] = len(data)
        try:
            clipped.decode("utf-8")
        except UnicodeDecodeError:
            entry["raw_base64"] = base64.b64encode(clipped).decode()
        written = self._write(component, [entry])
        self.telemetry.errors.labels(component, reason.split(":", maxsplit=1)[0]).inc()
        self.telemetry.dead_letters.labels(component, _short(reason)).inc()
        self._note(component, reason, ", ".join(f"{k}={v}" for k, v in origin.items()), written)

    def records(self, component: str, items: list[tuple[str, dict[str, Any] | bytes, dict[str, Any]]]) -> None:
        """Records a sink could not deliver: (reason, record or its JSON bytes, origin)."""
        if not items:
            return
        entries = []
        for reason, rec, origin in items:
            e: dict[str, Any] = {"@timestamp": _now(), "component": component, "reason": reason}
            if origin:
                e["origin"] = origin
            e["record"] = orjson.Fragment(rec) if isinstance(rec, bytes) else rec
            entries.append(e)
            self.telemetry.rejected.labels(component, _short(reason)).inc()
            self.telemetry.dead_letters.labels(component, _short(reason)).inc()
        written = self._write(component, entries)
        self._note(component, _short(reason), f"{len(items)} record(s)", written)

    def close(self) -> None:
        with self._lock:
            for st in self._files.values():
                f = st.f
                if f is None:
                    continue
                try:
                    f.flush()
                    os.fsync(f.fileno())
                except OSError:
                    pass
                f.close()
            self._files.clear()


def _count_lines(path: Path) -> int:
    n = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                n += chunk.count(b"\n")
    except OSError:
        pass
    return n


def _short(reason: str) -> str:
    return reason.split(":", maxsplit=1)[0][:60]


def _now() -> str:
    return datetime.fromtimestamp(time.time(), UTC).isoformat().replace("+00:00", "Z")
