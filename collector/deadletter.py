"""The dead-letter file: where bad input and rejected records go, with their reason.

One NDJSON file per component under ``<data_dir>/dead-letter/<component>.ndjson``.  Each line:

    {"@timestamp": ..., "component": ..., "reason": ..., "origin": {...}, "record": {...} | "raw": "..."}

``origin`` says where the data came from (file path and offset, peer address, ...); ``raw``
keeps the input as text (``raw_base64`` as well when the bytes were not UTF-8), so nothing is
lost and a line can be replayed by hand once fixed.  Every entry is also counted
(``collector_events_rejected_total`` for records, ``collector_errors_total`` for raw input).

A full disk never stops good records: while the data directory is full, entries are dropped
and counted (``collector_errors_total{reason="dead_letter_disk_full"}``), a warning says so (at
once, then every 30 s), a partly written line is cut off, and writing resumes by itself.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import orjson

from collector.diskfull import DiskFull, is_disk_full
from collector.telemetry import Telemetry

log = logging.getLogger("collector.deadletter")

MAX_RAW = 1 << 20  # keep at most 1 MiB of one bad input


class DeadLetter:
    def __init__(self, data_dir: Path | str, telemetry: Telemetry) -> None:
        self.dir = Path(data_dir) / "dead-letter"
        self.telemetry = telemetry
        self._files: dict[str, IO[bytes]] = {}
        self._lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()
        self._full = DiskFull("dead letters", "bad input and rejected records are dropped (counted)")

    def path(self, component: str) -> Path:
        return self.dir / f"{component}.ndjson"

    def _file(self, component: str) -> IO[bytes]:
        f = self._files.get(component)
        if f is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            # unbuffered: a write reaches the file or fails now, never later at close
            f = self._files[component] = open(self.path(component), "ab", buffering=0)  # noqa: SIM115
        return f

    def _write(self, component: str, entries: list[dict[str, Any]]) -> bool:
        data = b"".join(orjson.dumps(e, default=str) + b"\n" for e in entries)
        with self._lock:
            try:
                _append(self._file(component), data)
            except OSError as e:
                if not is_disk_full(e):
                    raise
                self._disk_full(component, len(entries), e)
                return False
            self._full.ok()
        return True

    def _disk_full(self, component: str, n: int, error: OSError) -> None:
        """No room for dead letters: drop them, count them, say it (rate-limited)."""
        self.telemetry.errors.labels(component, "dead_letter_disk_full").inc(n)
        self._full.failed(self.path(component), error, n)

    def _note(self, component: str, reason: str, where: str, written: bool = True) -> None:
        key = (component, reason)
        if key not in self._warned:  # say it once per reason, count always
            self._warned.add(key)
            log.warning(
                "%s: %s (%s); %s %s, further ones are only counted",
                component,
                reason,
                where,
                "set aside in" if written else "dropped (disk full), not set aside in",
                self.path(component),
            )

    def raw(self, component: str, reason: str, data: bytes, **origin: Any) -> None:
        """Bad input that never became a record (a malformed line, packet, frame)."""
        clipped = data[:MAX_RAW]
        entry: dict[str, Any] = {
            "@timestamp": _now(),
            "component": component,
            "reason": reason,
            "origin": origin,
            "raw": clipped.decode("utf-8", "replace"),
        }
        if len(data) > MAX_RAW:
            entry["raw_truncated_from"] = len(data)
        try:
            clipped.decode("utf-8")
        except UnicodeDecodeError:
            entry["raw_base64"] = base64.b64encode(clipped).decode()
        written = self._write(component, [entry])
        self.telemetry.errors.labels(component, reason.split(":", maxsplit=1)[0]).inc()
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
        written = self._write(component, entries)
        self._note(component, _short(reason), f"{len(items)} record(s)", written)

    def close(self) -> None:
        with self._lock:
            for f in self._files.values():
                try:
                    f.flush()
                    os.fsync(f.fileno())
                except OSError:
                    pass
                f.close()
            self._files.clear()


def _append(f: IO[bytes], data: bytes) -> None:
    """Write all of ``data`` at the end of ``f``, or nothing: a partial line is cut off again."""
    start = f.seek(0, os.SEEK_END)
    view = memoryview(data)
    try:
        while view:
            n = f.write(view)
            view = view[n or 0 :]
    except OSError:
        os.ftruncate(f.fileno(), start)
        raise


def _short(reason: str) -> str:
    return reason.split(":", maxsplit=1)[0][:60]


def _now() -> str:
    return datetime.fromtimestamp(time.time(), UTC).isoformat().replace("+00:00", "Z")
