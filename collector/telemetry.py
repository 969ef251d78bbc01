"""Named internal counters, Prometheus exposition, and health.

Every component counts through this module, so one place names what is measured:

    collector_events_received_total{component}     records a source produced
    collector_events_sent_total{component}         records a sink finalized as delivered
    collector_events_dropped_total{component,reason}   records deliberately not delivered
    collector_events_rejected_total{component,reason}  records dead-lettered (see deadletter.py)
    collector_errors_total{component,reason}       malformed input, failed requests, lost bytes
    collector_dead_letters_total{component,reason}  entries set aside in the dead letter (bad input, rejected records)
    collector_dead_letter_dropped_total{component,reason}  dead-letter entries not kept (rate, rotation)
    collector_retries_total{component,reason}      delivery attempts that will be retried
    collector_acks_total{component,status}         acknowledgements a source sent on (forward chunks), by outcome
    collector_buffer_events{component}             records waiting in a sink buffer
    collector_buffer_bytes{component}
    collector_buffer_max_events{component}         a buffer's limits: fill = waiting / max
    collector_buffer_max_bytes{component}
    collector_events_in_total{component}           records that reached a transform or a sink
    collector_events_out_total{component}          records a source or transform passed on
    collector_component_info{component,kind,type}  1 per component (kind: source, transform, sink)
    collector_sink_request_duration_seconds{component}  histogram of one request to a destination
    collector_sink_requests_in_flight{component}
    collector_sink_last_delivery_timestamp_seconds{component}
    collector_checkpoint_lag_bytes{component,container,container_id}  bytes present, not yet acknowledged
    collector_docker_api_calls_total{call}         calls to the Docker API (list, inspect, events)
    collector_docker_cache_hits_total{cache}       metadata lookups answered by a cache (api, files)
    collector_docker_cache_misses_total{cache}

Counters are incremented per batch, never per record on the hot path.  ``GET /ready`` answers
200 once every source listens (or has made its first scan) and every sink has reached its
destination once, and 503 again while the pipeline drains at a stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

log = logging.getLogger("collector.telemetry")

# seconds: a bulk request of a few MB takes 10-500 ms; a GELF UDP round a few ms; past 10 s it is trouble
REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

Check = Callable[[], tuple[bool, str]]
# (container, container_id, bytes): a source's checkpoint lag per container, computed when scraped
LagReport = Callable[[], Iterable[tuple[str, str, int]]]
# (query string, reader, writer): answers on the connection itself, for as long as it needs
Stream = Callable[[str, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class DockerCounts(Protocol):
    """What a Docker metadata cache counts (docker_api.DockerMetadata)."""

    calls: dict[str, int]
    cache_hits: dict[str, int]
    cache_misses: dict[str, int]


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
        self.dead_letters = Counter(
            "collector_dead_letters",
            "Entries set aside in the dead letter: bad input (also in collector_errors_total) and rejected records "
            "(also in collector_events_rejected_total)",
            ["component", "reason"],
            registry=r,
        )
        self.dead_letter_dropped = Counter(
            "collector_dead_letter_dropped",
            "Dead-letter entries not kept: over the byte rate, deleted by rotation, too large",
            ["component", "reason"],
            registry=r,
        )
        self.acks = Counter(
            "collector_acks",
            "Acknowledgements a source passed on to its client (forward chunks), by the worst outcome of their "
            "records: delivered, rejected (dead-lettered downstream, kept), failed (dropped downstream, counted)",
            ["component", "status"],
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
        self.buffer_max_events = Gauge(
            "collector_buffer_max_events",
            "Records a sink's memory buffer holds before it is full",
            ["component"],
            registry=r,
        )
        self.buffer_max_bytes = Gauge(
            "collector_buffer_max_bytes", "Bytes a sink's buffer holds before it is full", ["component"], registry=r
        )
        self.events_in = Counter(
            "collector_events_in", "Records that reached a transform or a sink", ["component"], registry=r
        )
        self.events_out = Counter(
            "collector_events_out",
            "Records a source or a transform passed on (once, whatever the number of consumers)",
            ["component"],
            registry=r,
        )
        self.component_info = Gauge(
            "collector_component_info",
            "Each component of the pipeline (value 1)",
            ["component", "kind", "type"],
            registry=r,
        )
        self.request_duration = Histogram(
            "collector_sink_request_duration_seconds",
            "Time of one request to a sink's destination (a bulk request, a GELF write, a file write)",
            ["component"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "collector_sink_requests_in_flight",
            "Requests a sink has sent and not yet seen answered",
            ["component"],
            registry=r,
        )
        self.last_delivery = Gauge(
            "collector_sink_last_delivery_timestamp_seconds",
            "Unix time of a sink's last delivery (0: none yet)",
            ["component"],
            registry=r,
        )
        self.started = time.time()
        self._health: dict[str, Check] = {}
        self._ready: dict[str, Check] = {}
        self.draining = False  # a stop was requested: not ready any more
        self._lag: dict[str, LagReport] = {}
        self._docker: list[DockerCounts] = []
        # path -> handler that owns the connection (GET /tap streams; tap.TapHub.serve)
        self.streams: dict[str, Stream] = {}
        r.register(_Dynamic(self))

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

    def register_health(self, name: str, check: Check) -> None:
        self._health[name] = check

    def health(self) -> tuple[bool, dict[str, str]]:
        return _run_checks(self._health, "ok: ", "failing: ")

    def new_pipeline(self) -> None:
        """A reload replaced the pipeline: forget what described the old one's components (their
        checks, lag reports, buffer gauges); the counters go on."""
        self._health.clear()
        self._ready.clear()
        self._lag.clear()
        self._docker.clear()
        self.draining = False
        for gauge in (
            self.component_info,
            self.buffer_events,
            self.buffer_bytes,
            self.buffer_max_events,
            self.buffer_max_bytes,
        ):
            gauge.clear()

    def register_ready(self, name: str, check: Check) -> None:
        self._ready[name] = check

    def ready(self) -> tuple[bool, dict[str, str]]:
        ok, detail = _run_checks(self._ready, "ready: ", "not ready: ")
        if self.draining:
            detail["pipeline"] = "not ready: stopping (delivering what is in flight)"
            ok = False
        return ok, detail

    def register_lag(self, component: str, report: LagReport) -> None:
        """``report()`` gives a source's checkpoint lag per container when /metrics is scraped."""
        self._lag[component] = report

    def register_docker(self, counts: DockerCounts) -> None:
        self._docker.append(counts)

    def sink(self, component: str) -> SinkMeter:
        return SinkMeter(self, component)

    # -- HTTP endpoint -----------------------------------------------------------------
    async def serve(self, host: str, port: int) -> asyncio.Server:
        """GET /metrics (Prometheus text), GET /health and GET /ready (200 or 503, JSON detail), and
        the ``streams`` registered (GET /tap)."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                path = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else "/"
                route, _, query = path.partition("?")
                stream = self.streams.get(route)
                if stream is not None:
                    await stream(query, reader, writer)
                    return
                if path.startswith("/metrics"):
                    status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)
                elif path.startswith("/health"):
                    ok, detail = self.health()
                    status, ctype = (200 if ok else 503), "application/json"
                    body = orjson.dumps({"status": "ok" if ok else "failing", "checks": detail})
                elif path.startswith("/ready"):
                    ok, detail = self.ready()
                    status, ctype = (200 if ok else 503), "application/json"
                    body = orjson.dumps({"status": "ready" if ok else "not ready", "checks": detail})
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


def _run_checks(checks: dict[str, Check], good_prefix: str, bad_prefix: str) -> tuple[bool, dict[str, str]]:
    ok = True
    detail: dict[str, str] = {}
    for name, check in list(checks.items()):
        try:
            good, why = check()
        except Exception as e:  # a failing check is itself a failure
            good, why = False, f"check failed: {e}"
        ok = ok and good
        detail[name] = (good_prefix if good else bad_prefix) + why
    return ok, detail


class SinkMeter:
    """What a sink reports besides its outcomes: each request's time, the requests in flight,
    the last delivery.  ``delivered(n)`` counts ``collector_events_sent_total`` too."""

    def __init__(self, telemetry: Telemetry, component: str) -> None:
        self._sent = telemetry.sent.labels(component)
        self._latency = telemetry.request_duration.labels(component)
        self._in_flight = telemetry.requests_in_flight.labels(component)
        self._last = telemetry.last_delivery.labels(component)

    def delivered(self, n: int) -> None:
        if n:
            self._sent.inc(n)
            self._last.set(time.time())

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        """Around one request: in flight meanwhile, its time observed whatever the outcome."""
        self._in_flight.inc()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._latency.observe(time.perf_counter() - t0)
            self._in_flight.dec()


class _Dynamic:
    """Metrics computed when scraped: checkpoint lag per container, the Docker API's counts."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.t = telemetry

    def collect(self) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "collector_checkpoint_lag_bytes",
            "Bytes of a container's log present on disk and not yet acknowledged (delivered) by the pipeline",
            labels=["component", "container", "container_id"],
        )
        for component, report in list(self.t._lag.items()):
            try:
                rows = list(report())
            except Exception as e:  # a report must never break a scrape
                log.debug("checkpoint lag of %s: %r", component, e)
                continue
            for container, cid, nbytes in rows:
                lag.add_metric([component, container, cid], nbytes)
        yield lag
        calls = CounterMetricFamily(
            "collector_docker_api_calls", "Calls to the Docker Engine API (list, inspect, events)", labels=["call"]
        )
        hits = CounterMetricFamily(
            "collector_docker_cache_hits", "Container metadata lookups answered from a cache", labels=["cache"]
        )
        misses = CounterMetricFamily(
            "collector_docker_cache_misses",
            "Container metadata lookups the cache could not answer (asked the API or read a file)",
            labels=["cache"],
        )
        for family, attr, keys in (
            (calls, "calls", ("list", "inspect", "events")),
            (hits, "cache_hits", ("api", "files")),
            (misses, "cache_misses", ("api", "files")),
        ):
            totals = dict.fromkeys(keys, 0)
            for d in list(self.t._docker):
                for k, v in list(getattr(d, attr).items()):
                    totals[k] = totals.get(k, 0) + v
            for k, v in totals.items():
                family.add_metric([k], v)
            yield family
