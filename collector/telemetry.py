"""Named internal counters, Prometheus exposition, and health.

Every component counts through this module, so one place names what is measured:

    collector_events_received_total{component}     records a source produced
    collector_events_sent_total{component}         records a sink finalized as delivered
    collector_events_dropped_total{component,reason}   records deliberately not delivered
    collector_events_rejected_total{component,reason}  records dead-lettered (see deadletter.py)
    collector_errors_total{component,reason}       malformed input, failed requests, lost bytes
    collector_dead_letter_dropped_total{component,reason}  dead-letter entries not kept (rate, rotation)
    collector_retries_total{component,reason}      delivery attempts that will be retried
    collector_buffer_events{component}             records waiting in a sink buffer
    collector_buffer_bytes{component}

Counters are incremented per batch, never per record on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("collector.telemetry")


class Telemetry:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.received = Counter("collector_events_received", "Records produced by a source", ["component"], registry=r)
        self.sent = Counter("collector_events_sent", "Records delivered by a sink", ["component"], registry=r)
        self.dropped = Counter(
            "collector_events_dropped",
            "Records deliberately not delivered (filters, drop_newest buffers, UDP overload)",
            ["component", "reason"],
            registry=r,
        )
        self.rejected = Counter(
            "collector_events_rejected",
            "Records set aside in the dead-letter file with their reason",
            ["component", "reason"],
            registry=r,
        )
        self.errors = Counter(
            "collector_errors",
            "Malformed input, failed requests, lost data",
            ["component", "reason"],
            registry=r,
        )
        self.dead_letter_dropped = Counter(
            "collector_dead_letter_dropped",
            "Dead-letter entries not kept: over the byte rate, deleted by rotation, too large",
            ["component", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "collector_retries", "Delivery attempts to be retried", ["component", "reason"], registry=r
        )
        self.buffer_events = Gauge(
            "collector_buffer_events", "Records waiting in a sink's buffer", ["component"], registry=r
        )
        self.buffer_bytes = Gauge(
            "collector_buffer_bytes", "Bytes waiting in a sink's buffer", ["component"], registry=r
        )
        self.started = time.time()
        self._health: dict[str, Callable[[], tuple[bool, str]]] = {}

    # -- convenience -----------------------------------------------------------------
    def value(self, metric: str, **labels: str) -> float:
        """Current value of a sample (summing over unspecified labels); 0 when absent."""
        total = 0.0
        for fam in self.registry.collect():
            for s in fam.samples:
                if s.name != metric:
                    continue
                if all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fam in self.registry.collect():
            for s in fam.samples:
                if s.name.endswith("_created"):
                    continue
                key = s.name + (
                    "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}" if s.labels else ""
                )
                out[key] = s.value
        return out

    def register_health(self, name: str, check: Callable[[], tuple[bool, str]]) -> None:
        self._health[name] = check

    def health(self) -> tuple[bool, dict[str, str]]:
        ok = True
        detail: dict[str, str] = {}
        for name, check in self._health.items():
            try:
                good, why = check()
            except Exception as e:  # a failing check is itself unhealthy
                good, why = False, f"health check failed: {e}"
            ok = ok and good
            detail[name] = ("ok: " if good else "failing: ") + why
        return ok, detail

    # -- HTTP endpoint -----------------------------------------------------------------
    async def serve(self, host: str, port: int) -> asyncio.Server:
        """GET /metrics (Prometheus text), GET /health (200 or 503, JSON detail)."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                path = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else "/"
                if path.startswith("/metrics"):
                    status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
                elif path.startswith("/health"):
                    ok, detail = self.health()
                    status, ctype = (200 if ok else 503), "application/json"
                    body = orjson.dumps({"status": "ok" if ok else "failing", "checks": detail})
                else:
                    status, ctype, body = 404, "text/plain", b"not found\n"
                reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

        return await asyncio.start_server(handle, host, port)
