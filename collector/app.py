"""Build the topology from a config and run it: one task per component, each watched, signals,
a graceful drain.

    sources --emit--> [channel] transform --emit--> [buffer] sink
                                                       |
           acks travel back to the sources  <----------+

Stopping (SIGTERM/SIGINT, or the end of ``--once``): sources stop reading and close their
outputs; each transform ends when its inputs are closed and drained; each sink ends when its
buffer is empty and every batch is delivered or dead-lettered.  Past ``shutdown_timeout``
what is left is abandoned *without* being acknowledged, so it is read again at the next start.
A second signal stops at once (same guarantee).  Checkpoints are saved last.

No silent death: every task (each source, transform, buffer and sink, the checkpoint saver, the
API server) is watched.  One that ends with an error, or that should run for as long as the
pipeline and ends anyway, is fatal: its error is logged once with its traceback, ``/health``
says so (503), the pipeline stops as above and the process exits 1.  A sink that crashes is first
restarted (``restart``) and handed again what it held.  Exit codes are derived from what is
true at the end: 3 when records the sources emitted are not finalized, or wait in a disk buffer.

Reload (SIGHUP, ``collector reload``; ``run -c FILE`` only): the file is read and checked again;
an invalid config is refused (logged with its reason, counted as
``collector_errors_total{component="reload",reason="config_invalid"}``) and nothing changes. A
valid one replaces the whole pipeline: the running one drains as at a stop, then the new one is
built and started in the same process from the old one's positions; the API server and the
counters live for the whole process. Components whose config did not change are restarted too
(simple and safe; a listener is closed for that moment and its clients reconnect).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from collector import registry
from collector.acks import Ack, InFlight, release
from collector.buffers import Buffer, BufferConfig, BufferReader
from collector.buffers.disk import DiskBuffer
from collector.buffers.memory import Channel, MemoryBuffer
from collector.checkpoints import CheckpointStore, DataDirError, pipeline_identity
from collector.component import Context, Emitter, Sink, Source, Transform
from collector.config import ConfigError, PipelineConfig
from collector.deadletter import DeadLetter
from collector.event import Batch
from collector.listeners import API_SCHEMES, parse_listen, raise_fd_limit
from collector.progress import ProgressBar, summarize
from collector.ratelog import RateLimitedLog
from collector.retry import Backoff
from collector.tags import tag_pattern
from collector.tap import Tap, TapHub
from collector.telemetry import Telemetry

log = logging.getLogger("collector.app")

TRANSFORM_CHANNEL_EVENTS = 2_048
TRANSFORM_CHANNEL_BYTES = 16 << 20

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNDELIVERED = 3


class Inlet:
    """An edge into a transform or sink: counts what arrives (collector_events_in_total) and, for
    a sink with ``match``, lets only matching tags through (the others are finalized and counted)."""

    def __init__(
        self, inner: Channel, counted: Counter, pattern: str | None = None, dropped: Counter | None = None
    ) -> None:
        self.inner = inner
        self.counted = counted
        self.match = tag_pattern(pattern) if pattern else None
        self.dropped = dropped
        self.taps: list[Tap] = []  # `collector tap` on the sink this edge feeds (tap.py)

    async def send(self, batch: Batch) -> bool:
        if self.match is None or self.match(batch.tag):
            if self.taps:
                for tap in self.taps:
                    tap.offer(batch)
            self.counted.inc(len(batch))
            return await self.inner.send(batch)
        self.dropped.inc(len(batch))
        release(batch.ack)
        return False

    def has_room(self) -> bool:
        return self.inner.has_room()

    async def wait_room(self) -> None:
        await self.inner.wait_room()

    def close(self) -> None:
        self.inner.close()


@dataclass
class Pipeline:
    config: PipelineConfig
    ctx: Context
    sources: dict[str, Source] = field(default_factory=dict)
    transforms: dict[str, Transform] = field(default_factory=dict)
    sinks: dict[str, Sink] = field(default_factory=dict)
    inboxes: dict[str, Channel] = field(default_factory=dict)  # transform/sink name -> its inbox
    emitters: dict[str, Emitter] = field(default_factory=dict)  # output ("t" or "t.port") -> Emitter
    buffers: dict[str, Buffer] = field(default_factory=dict)  # sink name -> its buffer (memory or disk)
    inflight: InFlight = field(default_factory=InFlight)  # records emitted by sources, not finalized yet
    fatal: str | None = None  # the first component task that ended unexpectedly, and why
    restarting: dict[str, str] = field(default_factory=dict)  # sink name -> why it is down
    stop_requested: bool = False
    reloading: bool = False  # stopping to be replaced by a new pipeline (a reload)
    duration: float = 0.0  # seconds the run took (the summary line)
    forced: bool = False  # a second signal: whatever was in flight is abandoned (replayed next time)
    closing: bool = False  # tasks are being cancelled on purpose from here on
    taps: TapHub = field(default_factory=TapHub)  # GET /tap: where `collector tap` attaches
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def build(cls, config: PipelineConfig, ctx: Context) -> Pipeline:
        p = cls(config, ctx)
        for n, c in config.sources.items():
            p.sources[n] = registry.implementation(registry.SOURCES, c.type)(n, c, ctx)
        for n, c in config.transforms.items():
            p.transforms[n] = registry.implementation(registry.TRANSFORMS, c.type)(n, c, ctx)
            p.inboxes[n] = Channel(n, TRANSFORM_CHANNEL_EVENTS, TRANSFORM_CHANNEL_BYTES, producers=0)
        for n, c in config.sinks.items():
            p.sinks[n] = p._new_sink(n)
            p.buffers[n] = p._make_buffer(n, c.buffer)
            p.inboxes[n] = p.buffers[n].inbox
            ctx.telemetry.register_health(f"sink[{n}]", lambda n=n: p._sink_health(n))
        ctx.telemetry.register_health("pipeline", lambda: (p.fatal is None, p.fatal or "running"))
        # outputs
        out = ctx.telemetry.events_out
        for n in config.sources:
            p.emitters[n] = Emitter(n, inflight=p.inflight, counter=out.labels(n))
        for n, t in p.transforms.items():
            p.emitters[n] = Emitter(n, counter=out.labels(n))
            for port in t.output_ports():
                p.emitters[f"{n}.{port}"] = Emitter(f"{n}.{port}", counter=out.labels(n))
        # edges
        for n, c in {**config.transforms, **config.sinks}.items():
            inbox = p.inboxes[n]
            for i in c.inputs:
                # a sink's `match` (the filter transform has a `match` of its own, counted as filtered)
                match = getattr(c, "match", None) if n in config.sinks else None
                dropped = ctx.telemetry.dropped.labels(n, "unmatched") if match else None
                target = Inlet(inbox, ctx.telemetry.events_in.labels(n), match, dropped)
                if n in config.sinks:
                    p.taps.add(n, "sink", target)
                p.emitters[i].channels.append(target)
                inbox.add_producer()
                upstream, dot, port = i.partition(".")
                if dot:
                    p.transforms[upstream].connected.add(port)
        for out_name, emitter in p.emitters.items():
            n = out_name.split(".", 1)[0]
            kind = "source" if n in config.sources else "transform"
            p.taps.add(n, kind, emitter)
            if "." in out_name:
                p.taps.add(out_name, kind, emitter)
        ctx.telemetry.streams["/tap"] = p.taps.serve
        for n in config.sources:
            if not p.emitters[n].channels:
                log.warning("source %r feeds nothing: its records are read and discarded", n)
        p._instrument()
        return p

    def _instrument(self) -> None:
        """What the API reports about the components: their kind and type, buffer limits, and
        readiness (GET /ready: sources listening, sinks that reached their destination)."""
        t = self.ctx.telemetry
        for kind, table in (("source", self.config.sources), ("transform", self.config.transforms)):
            for n, c in table.items():
                t.component_info.labels(n, kind, c.type).set(1)
                t.events_out.labels(n)
        for n, c in self.config.sinks.items():
            t.component_info.labels(n, "sink", c.type).set(1)
            if c.buffer.type == "memory":
                t.buffer_max_events.labels(n).set(c.buffer.max_events)
            t.buffer_max_bytes.labels(n).set(c.buffer.limit_bytes)
            t.last_delivery.labels(n)
            t.request_duration.labels(n)
            t.requests_in_flight.labels(n)
        for n in [*self.config.transforms, *self.config.sinks]:
            t.events_in.labels(n)
        for n, src in self.sources.items():
            t.register_ready(f"source[{n}]", src.ready)
        for n in self.sinks:
            t.register_ready(f"sink[{n}]", lambda n=n: self.sinks[n].ready())  # a restarted sink is a new one

    def _new_sink(self, name: str) -> Sink:
        c = self.config.sinks[name]
        return registry.implementation(registry.SINKS, c.type)(name, c, self.ctx)  # type: ignore[no-any-return]

    def _sink_health(self, name: str) -> tuple[bool, str]:
        if name in self.restarting:
            return False, self.restarting[name]
        return self.sinks[name].health()

    def _make_buffer(self, name: str, bcfg: BufferConfig) -> Buffer:
        if bcfg.type == "disk":
            return DiskBuffer(name, self.ctx.data_dir / "buffers" / name, bcfg, self.ctx.telemetry)
        return MemoryBuffer(name, bcfg, self.ctx.telemetry)

    # -- running ---------------------------------------------------------------------------
    async def _run_source(self, name: str, src: Source) -> None:
        out = self.emitters[name]
        try:
            await src.run(out)
        finally:
            out.close()

    async def _run_transform(self, name: str, t: Transform) -> None:
        inbox = self.inboxes[name]
        default = self.emitters[name]
        ports = {port: self.emitters[f"{name}.{port}"] for port in t.output_ports()}
        errors = self.ctx.telemetry.errors.labels(name, "transform_failed")
        interval = t.tick_interval
        try:
            while True:
                try:
                    if interval is None:
                        batch = await inbox.recv()
                    else:
                        async with asyncio.timeout(interval):
                            batch = await inbox.recv()  # cancellation-safe: a batch is taken only when returned
                except TimeoutError:
                    for port, b in await t.tick():
                        await (default if port is None else ports[port]).emit(b)
                    continue
                if batch is None:
                    for port, b in await t.finish():
                        await (default if port is None else ports[port]).emit(b)
                    break
                try:
                    outs = await t.process(batch)
                except Exception as e:
                    # a bug or a surprise in one batch must not stop the others: set it aside
                    log.exception("transform %r failed on %r; its records go to the dead letter", name, batch)
                    errors.inc()
                    self.ctx.deadletter.records(
                        name, [(f"transform failed: {e!r}", r, {"source": batch.source}) for r in batch.records()]
                    )
                    release(batch.ack, rejected=len(batch))
                    continue
                for port, b in outs:
                    await (default if port is None else ports[port]).emit(b)
        finally:
            default.close()
            for e in ports.values():
                e.close()

    async def _run_sink(self, name: str) -> None:
        """Run the sink; when it crashes, restart a new one (``restart`` backoff) and hand it what
        the crashed one held, so nothing is orphaned; past ``restart.max_elapsed`` of crashes with
        nothing delivered in between, the error ends this task: fatal."""
        feed = SinkFeed(self.buffers[name].reader)
        backoff = Backoff(self.config.restart.retry)
        last_error = ""
        sent_before = self._sent(name)
        while True:
            try:
                await self.sinks[name].run(feed)
                return
            except Exception as e:
                if self._sent(name) > sent_before:
                    backoff.reset()  # it had worked since the last restart: a new run of trouble
                delay = backoff.delay()
                if self.closing:
                    raise
                if backoff.expired:
                    how = f"kept failing for {backoff.elapsed:.0f}s ({backoff.attempts} crashes)"
                    self._fail(f"sink {name!r}", e, how, traceback=repr(e) != last_error)
                    return
                self.ctx.telemetry.errors.labels(name, "sink_crashed").inc()
                again = feed.requeue()
                self.restarting[name] = f"crashed ({e!r}); restarting in {delay:.1f}s"
                first = repr(e) != last_error
                last_error = repr(e)
                log.error(
                    "sink %r %s; restarting it in %.1fs with the %d batch(es) it held",
                    name,
                    "failed" if first else f"failed again ({e!r})",
                    delay,
                    again,
                    exc_info=e if first else None,
                )
                await asyncio.sleep(delay)
                sent_before = self._sent(name)
                self.sinks[name] = self._new_sink(name)
                del self.restarting[name]

    def _sent(self, name: str) -> float:
        return self.ctx.telemetry.value("collector_events_sent_total", component=name)

    def _start(
        self, coro: Coroutine[Any, Any, None], task_name: str, name: str, service: bool = False
    ) -> asyncio.Task[None]:
        """A task whose unexpected end is fatal (``service``: it must not end at all)."""
        task = asyncio.create_task(coro, name=task_name)

        def ended(t: asyncio.Task[None]) -> None:
            if self.closing:
                return
            if t.cancelled():
                self._fail(name, None, "was cancelled")
            elif (e := t.exception()) is not None:
                self._fail(name, e, "failed")
            elif service:
                self._fail(name, None, "ended")

        task.add_done_callback(ended)
        return task

    def _fail(self, name: str, error: BaseException | None, how: str, traceback: bool = True) -> None:
        """A component task ended unexpectedly: said once, loudly, with its traceback (unless that
        was logged already); fatal."""
        self.ctx.telemetry.errors.labels(name, "component_failed").inc()
        if self.fatal is not None:  # a consequence of the first failure, most likely
            log.error("%s also %s: %r", name, how, error)
            return
        self.fatal = f"{name} {how}" + (f": {error!r}" if error is not None else "")
        log.error(
            "%s; stopping (exit code 1): records not delivered yet are read again at the next start",
            self.fatal if not traceback else f"{name} {how}",
            exc_info=error if traceback else None,
        )
        self.request_stop("stopping after that failure")

    def force_stop(self) -> None:
        """A second signal: stop at once (unacknowledged records are read again next time)."""
        self.forced = True
        self.closing = True
        for task in self._tasks:
            task.cancel()

    def request_stop(self, why: str = "stopping: no new input") -> None:
        self.ctx.telemetry.draining = True
        if not self.stop_requested:
            self.stop_requested = True
            log.info("%s; delivering what is in flight", why)
        for s in self.sources.values():
            s.stop()

    async def run(self) -> int:
        cfg = self.config
        ctx = self.ctx
        for t in self.transforms.values():
            await t.start()
        for b in self.buffers.values():
            await b.open()
        services: list[asyncio.Task[None]] = []
        saver = ctx.checkpoints.run(cfg.checkpoint_interval)
        services.append(self._start(saver, "checkpoints", "checkpoint saver", service=True))
        services.append(self._start(housekeeping(), "housekeeping", "housekeeping", service=True))
        t0 = time.monotonic()
        tasks = self._tasks
        try:
            for n, s in self.sources.items():
                tasks.append(self._start(self._run_source(n, s), f"source:{n}", f"source {n!r}"))
            for n, t in self.transforms.items():
                tasks.append(self._start(self._run_transform(n, t), f"transform:{n}", f"transform {n!r}"))
            for n, b in self.buffers.items():
                tasks.extend(self._start(c, f"buffer:{n}", f"buffer of {n!r}") for c in b.tasks())
            for n in self.sinks:
                tasks.append(self._start(self._run_sink(n), f"sink:{n}", f"sink {n!r}"))
            # wait for the natural end (``--once``), or a stop request (a signal, a failure) then the drain
            while not all(t.done() for t in tasks) and not self.stop_requested:
                await asyncio.wait(tasks, timeout=0.2)
            if self.stop_requested:
                _, pending = await asyncio.wait(tasks, timeout=cfg.shutdown_timeout)
                if pending:
                    log.warning(
                        "drain deadline (%.0fs) passed with %d record(s) undelivered (%s still busy): they "
                        "are not acknowledged, or stay in the disk buffer, and are delivered after the next start",
                        cfg.shutdown_timeout,
                        self.inflight.records + sum(b.stored_records() for b in self.buffers.values()),
                        ", ".join(sorted({t.get_name() for t in pending})),
                    )
        finally:
            await self.taps.close("reload" if self.reloading else "stop")
            self.closing = True
            for t in tasks + services:
                t.cancel()
            await asyncio.gather(*tasks, *services, return_exceptions=True)
            for n, b in self.buffers.items():
                try:
                    await b.close()
                except Exception as e:
                    self._fail(f"buffer of {n!r}", e, "failed to close")
        self.duration = time.monotonic() - t0
        left = self.inflight.records
        stored = sum(b.stored_records() for b in self.buffers.values())
        if left or stored:
            log.warning(
                "%d record(s) not delivered%s: read again at the next start",
                left + stored,
                f" ({stored} kept in disk buffers)" if stored else "",
            )
        if self.fatal is not None:
            return EXIT_FAILED
        return EXIT_UNDELIVERED if left or stored else EXIT_OK


async def _serve(server: asyncio.Server) -> None:
    async with server:
        await server.serve_forever()


class SinkFeed:
    """What a sink reads: its buffer, plus the batches a crashed instance took and never
    finalized, handed first to the next instance (at-least-once: ids make replays harmless).

    Without it they were orphaned: never acknowledged, so the source's checkpoint stayed behind
    them for the life of the process while its ordered acks queued everything after them. The
    price: batches a sink has taken stay referenced until finalized (the Elasticsearch sink
    keeps only their encoded items): measured, peak RSS 66 -> 71 MB in bench/run.py tail."""

    def __init__(self, reader: BufferReader) -> None:
        self.reader = reader
        self.taken: dict[int, tuple[Batch, Ack]] = {}  # handed out, not finalized yet, in order
        self.again: deque[Batch] = deque()
        self._next = 0

    def _track(self, batch: Batch) -> Batch:
        inner = batch.ack
        if inner is None:
            return batch
        key = self._next
        self._next += 1
        self.taken[key] = (batch, inner)

        def finalized(ack: Ack) -> None:
            if self.taken.pop(key, None) is not None:  # a late completion by a crashed sink: not twice
                ack.pass_on(inner)

        batch.ack = Ack(finalized)
        return batch

    def requeue(self) -> int:
        """The sink crashed: what it held goes first to the next one. Returns how many batches."""
        held = list(self.taken.values())
        self.taken.clear()
        for b, inner in held:
            b.ack = inner
        self.again.extendleft(b for b, _ in reversed(held))
        return len(held)

    async def recv(self) -> Batch | None:
        if self.again:
            return self._track(self.again.popleft())
        b = await self.reader.recv()
        return None if b is None else self._track(b)

    def recv_nowait(self) -> Batch | None:
        if self.again:
            return self._track(self.again.popleft())
        b = self.reader.recv_nowait()
        return None if b is None else self._track(b)


def report_end(pipeline: Pipeline, checkpoints: CheckpointStore, once: bool) -> None:
    """The summary line of a run (progress.summarize); a ``--once`` run that found nothing new says
    so, and how to start over."""
    hint = checkpoints.nothing_new() if once else None
    text, fields = summarize(pipeline.ctx.telemetry, pipeline.duration, pipeline, once, hint)
    log.info("%s", text, extra={"fields": fields})


class ApiError(DataDirError):
    """The API cannot listen where asked (a configuration problem: exit code 2)."""


async def start_api(cfg: PipelineConfig, ctx: Context) -> asyncio.Server | None:
    """Serve /health, /ready and /metrics when ``api.listen`` is set, and say where in the data
    directory (``collector status`` finds a running collector's API there)."""
    if cfg.api is None:
        return None
    li = parse_listen(cfg.api.listen, API_SCHEMES)
    try:
        server = await ctx.telemetry.serve(li.host, li.port)
    except OSError as e:
        raise ApiError(f"the API cannot listen on {cfg.api.listen}: {e.strerror or e} (api.listen, --api)") from None
    bound = server.sockets[0].getsockname()
    where = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound[0], bound[0])
    url = f"http://[{where}]:{bound[1]}" if ":" in where else f"http://{where}:{bound[1]}"
    log.info("API on %s (GET /health, /ready, /metrics, /tap)", url)
    announce_api(ctx.data_dir, url)
    return server


def announce_api(data_dir: Path, url: str | None) -> None:
    """Write (or, with None, remove) ``<data_dir>/api.json``: where the running collector's API is."""
    from collector.status import write_api_file  # noqa: PLC0415

    write_api_file(data_dir, url)


def tune_gc() -> None:
    """Records are acyclic dicts and lists made by the thousand: with the default thresholds the
    cyclic collector runs every 700 allocations and rescans everything alive (measured: 1 µs per
    record). Freeze what startup made and collect young objects less often; cycles are still
    collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


GC_INTERVAL = 60.0  # seconds between full collections (see housekeeping)


async def housekeeping() -> None:
    """With tune_gc's thresholds a full collection waits for millions of allocations: hours when
    little flows. Reference cycles (asyncio keeps one per closed connection: a transport and its
    socket) pile up meanwhile, and the heap keeps what a backlog replayed after an outage used.
    So: one full collection a minute (objects frozen at start are not scanned: milliseconds),
    then the freed heap pages go back to the system (malloc_trim). Measured with bench/soak.py
    (engine restarted every 40 s): RSS grew 52 -> 92 MB in 6 minutes; with this it returns to
    54-55 MB every minute."""
    trim = _malloc_trim()
    while True:
        await asyncio.sleep(GC_INTERVAL)
        gc.collect()
        if trim is not None:
            trim(0)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes  # noqa: PLC0415

        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def config_changes(old: PipelineConfig, new: PipelineConfig) -> str:
    """What a reload changes, said in a few words (``sink out changed, transform meta added``)."""
    said = []
    for kind, a, b in (
        ("source", old.sources, new.sources),
        ("transform", old.transforms, new.transforms),
        ("sink", old.sinks, new.sinks),
    ):
        for name in sorted(set(a) | set(b)):
            if name not in b:
                said.append(f"{kind} {name} removed")
            elif name not in a:
                said.append(f"{kind} {name} added")
            elif a[name] != b[name]:
                said.append(f"{kind} {name} changed")
    rest = old.model_dump(exclude={"sources", "transforms", "sinks"}) != new.model_dump(
        exclude={"sources", "transforms", "sinks"}
    )
    return ", ".join(said + (["pipeline settings changed"] if rest else [])) or "no change"


def reload_problems(old: PipelineConfig, new: PipelineConfig) -> list[str]:
    """What a reload cannot change in a running process (a restart can)."""
    problems = []
    if Path(new.data_dir).expanduser() != Path(old.data_dir).expanduser():
        problems.append(f"data_dir changed ({old.data_dir} -> {new.data_dir}): that needs a restart")
    if (new.api and new.api.listen) != (old.api and old.api.listen):
        problems.append("api.listen changed: that needs a restart (the API stays up across a reload)")
    return problems


async def run_pipeline(
    config: PipelineConfig,
    once: bool = False,
    install_signals: bool = True,
    on_ready: Callable[[Pipeline], object] | None = None,
    reload: Callable[[], PipelineConfig] | None = None,
) -> int:
    """Run a pipeline to its end; returns the process exit code.

    ``reload`` reads the config again (SIGHUP, ``collector reload``): it raises ConfigError when the
    new config is invalid, which is refused (said, counted) while the running pipeline goes on. A
    valid one replaces the pipeline: the running one drains (sources stop, everything in flight is
    delivered, checkpoints saved), then the new one is built and started in this process, from the
    same positions (its checkpoints start from the old ones, whatever its outputs), and the API
    stays up throughout."""
    soft, hard = raise_fd_limit()  # listeners and followed files need descriptors; the cap stays below it
    log.debug("open-files limit: %d (hard %d)", soft, hard)
    telemetry = Telemetry()  # one for the life of the process: counters go on across reloads
    loop = asyncio.get_running_loop()
    pipeline: Pipeline | None = None
    server: asyncio.Server | None = None
    api_task: asyncio.Task[None] | None = None
    data_dir = Path(config.data_dir).expanduser()
    signals = 0
    reload_to: PipelineConfig | None = None
    loop_errors = RateLimitedLog(logging.getLogger("collector.loop"))

    def on_loop_error(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # e.g. "socket.accept() out of system resource": once per message per minute, not per event
        msg = str(context.get("message") or "error in the event loop")
        exc = context.get("exception")
        loop_errors.error(msg[:80], "%s: %r", msg, exc, exc_info=exc)

    loop.set_exception_handler(on_loop_error)

    def on_signal(sig: int) -> None:
        nonlocal signals, reload_to
        signals += 1
        reload_to = None  # a stop wins over a reload
        if pipeline is None:
            return
        pipeline.reloading = False
        if signals == 1:
            why = "interrupted (Ctrl-C)" if sig == signal.SIGINT else f"stopping on {signal.Signals(sig).name}"
            pipeline.request_stop(f"{why}; again to stop at once")
        else:
            log.warning("second signal: stopping now (unacknowledged records are read again next time)")
            pipeline.force_stop()

    def on_hup() -> None:
        nonlocal reload_to
        if pipeline is None or pipeline.stop_requested:
            log.warning("SIGHUP: not reloading, the pipeline is stopping")
            return
        if reload is None or once:
            why = "--once runs are not reloaded" if once else "started without a config file (collector run -c FILE)"
            log.warning("SIGHUP: nothing to reload: %s", why)
            return
        try:
            new = reload()
            problems = reload_problems(pipeline.config, new)
            if problems:
                raise ConfigError(problems)
        except ConfigError as e:
            telemetry.errors.labels("reload", "config_invalid").inc()
            log.error("reload refused, the running pipeline goes on unchanged: %s", "; ".join(e.problems))
            return
        if new == pipeline.config:
            log.info("reload: the config has not changed; nothing to do")
            return
        reload_to = new
        pipeline.reloading = True
        pipeline.request_stop(
            f"reloading ({config_changes(pipeline.config, new)}): the new config is valid; the running pipeline "
            "stops first"
        )

    def api_ended(t: asyncio.Task[Any]) -> None:
        if pipeline is not None and not pipeline.closing and not t.cancelled():
            pipeline._fail("api server", t.exception(), "ended")

    carried: dict[str, dict[str, dict[str, Any]]] | None = None
    started = time.monotonic()
    try:
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal, sig)
            loop.add_signal_handler(signal.SIGHUP, on_hup)
        while True:
            checkpoints = CheckpointStore(data_dir, *pipeline_identity(config.sinks.values()))
            checkpoints.open()
            if carried is not None:
                checkpoints.adopt(carried)
            deadletter = DeadLetter(data_dir, telemetry, config.dead_letter)
            ctx = Context(
                data_dir=data_dir,
                telemetry=telemetry,
                checkpoints=checkpoints,
                deadletter=deadletter,
                once=once,
                docker_root=config.docker_root,
            )
            try:
                pipeline = Pipeline.build(config, ctx)
                if server is None:
                    server = await start_api(config, ctx)
                    if server is not None:
                        api_task = asyncio.create_task(_serve(server), name="api")
                        api_task.add_done_callback(api_ended)
                if on_ready is not None:
                    on_ready(pipeline)
                tune_gc()
                bar = ProgressBar.start(pipeline) if once else None
                try:
                    rc = await pipeline.run()
                finally:
                    if bar is not None:
                        await bar.stop()
                if not await checkpoints.save_final(within=config.shutdown_timeout):
                    rc = rc or EXIT_FAILED  # delivered, but the place is not saved: said, and not 0
                if reload_to is None or pipeline.fatal is not None or pipeline.forced:
                    if carried is not None:  # reloaded: the summary covers every pipeline of the process
                        pipeline.duration = time.monotonic() - started
                    report_end(pipeline, checkpoints, once and rc == EXIT_OK)
                    return rc
                carried = checkpoints.snapshot()
            finally:
                await ctx.aclose()
                deadletter.close()
                checkpoints.close()
            log.info(
                "reloaded: the old pipeline delivered what it had%s; starting the new one",
                "" if rc == EXIT_OK else " except records read again now (its drain deadline passed)",
            )
            config, reload_to, signals = reload_to, None, 0
            telemetry.new_pipeline()
    finally:
        loop.set_exception_handler(None)
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
        if api_task is not None:
            api_task.cancel()
            await asyncio.gather(api_task, return_exceptions=True)
        if server is not None:
            announce_api(data_dir, None)
