"""The dead-letter file: where bad input and rejected records go, with their reason.

One NDJSON file per component under ``<data_dir>/dead-letter/<component>.ndjson``.  Each line:

    {"@timestamp": ..., "component": ..., "reason": ..., "origin": {...}, "record": {...} | "raw": "..."}

``origin`` says where the data came from (file path and offset, peer address, ...); ``raw``
keeps the input as text (``raw_base64`` as well when the bytes were not UTF-8), so nothing is
lost and a line can be replayed by hand once fixed.  Every entry is also counted
(``collector_events_rejected_total`` for records, ``collector_errors_total`` for raw input).
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

    def path(self, component: str) -> Path:
        return self.dir / f"{component}.ndjson"

    def _file(self, component: str) -> IO[bytes]:
        f = self._files.get(component)
        if f is None:
            self.dir.mkdir(parents=True, exist_ok=True)
            f = self._files[component] = open(self.path(component), "ab")  # noqa: SIM115
        return f

    def _write(self, component: str, entries: list[dict[str, Any]]) -> None:
        data = b"".join(orjson.dumps(e, default=str) + b"\n" for e in entries)
        with self._lock:
            f = self._file(component)
            f.write(data)
            f.flush()

    def _note(self, component: str, reason: str, where: str) -> None:
        key = (component, reason)
        if key not in self._warned:  # say it once per reason, count always
            self._warned.add(key)
            log.warning(
                "%s: %s (%s); set aside in %s, further ones are only counted",
                component,
                reason,
                where,
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
        self._write(component, [entry])
        self.telemetry.errors.labels(component, reason.split(":", maxsplit=1)[0]).inc()
        self._note(component, reason, ", ".join(f"{k}={v}" for k, v in origin.items()))

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
        self._write(component, entries)
        self._note(component, _short(reason), f"{len(items)} record(s)")

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


def _short(reason: str) -> str:
    return reason.split(":", maxsplit=1)[0][:60]


def _now() -> str:
    return datetime.fromtimestamp(time.time(), UTC).isoformat().replace("+00:00", "Z")
