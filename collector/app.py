"""Build the topology from a config and run it: one TaskGroup, signals, a graceful drain.

    sources --emit--> [channel] transform --emit--> [buffer] sink
                                                       |
           acks travel back to the sources  <----------+

Stopping (SIGTERM/SIGINT, or the end of ``--once``): sources stop reading and close their
outputs; each transform ends when its inputs are closed and drained; each sink ends when its
buffer is empty and every batch is delivered or dead-lettered.  Past ``shutdown_timeout``
what is left is abandoned *without* being acknowledged, so it is read again at the next start.
A second signal stops at once (same guarantee).  Checkpoints are saved last.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector import registry
from collector.acks import release
from collector.buffers.memory import Channel
from collector.checkpoints import CheckpointStore, pipeline_identity
from collector.component import Context, Emitter, Sink, Source, Transform, split_hostport
from collector.config import PipelineConfig
from collector.deadletter import DeadLetter
from collector.event import Batch
from collector.listeners import raise_fd_limit
from collector.ratelog import RateLimitedLog
from collector.tags import tag_pattern
from collector.telemetry import Telemetry

log = logging.getLogger("collector.app")

TRANSFORM_CHANNEL_EVENTS = 2_048
TRANSFORM_CHANNEL_BYTES = 16 << 20

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNDELIVERED = 3


class MatchingChannel:
    """A sink's input restricted to a tag pattern: other batches are finalized and counted."""

    def __init__(self, inner: Channel, pattern: str, dropped: Any) -> None:
        self.inner = inner
        self.match = tag_pattern(pattern)
        self.dropped = dropped

    async def send(self, batch: Batch) -> bool:
        if self.match(batch.tag):
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
    inboxes: dict[str, Any] = field(default_factory=dict)  # transform/sink name -> Channel
    emitters: dict[str, Emitter] = field(default_factory=dict)  # output ("t" or "t.port") -> Emitter
    buffers: dict[str, Any] = field(default_factory=dict)  # sink name -> buffer (memory Channel or disk)
    failed: list[str] = field(default_factory=list)
    stop_requested: bool = False
    forced: bool = False  # a second signal: whatever was in flight is abandoned (replayed next time)

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
            sink = p.sinks[n] = registry.implementation(registry.SINKS, c.type)(n, c, ctx)
            p.buffers[n] = p._make_buffer(n, c.buffer)
            p.inboxes[n] = p.buffers[n].inbox
            ctx.telemetry.register_health(f"sink[{n}]", sink.health)
        # outputs
        for n in config.sources:
            p.emitters[n] = Emitter(n)
        for n, t in p.transforms.items():
            p.emitters[n] = Emitter(n)
            for port in t.output_ports():
                p.emitters[f"{n}.{port}"] = Emitter(f"{n}.{port}")
        # edges
        for n, c in {**config.transforms, **config.sinks}.items():
            inbox = p.inboxes[n]
            for i in c.inputs:
                target: Any = inbox
                # a sink's `match` (the filter transform has a `match` of its own, counted as filtered)
                match = getattr(c, "match", None) if n in config.sinks else None
                if match:
                    target = MatchingChannel(inbox, match, ctx.telemetry.dropped.labels(n, "unmatched"))
                p.emitters[i].channels.append(target)
                inbox.add_producer()
                if "." in i and hasattr(p.transforms.get(i.split(".")[0]), "connected"):
                    p.transforms[i.split(".")[0]].connected.add(i.split(".", 1)[1])  # type: ignore[attr-defined]
        for n in config.sources:
            if not p.emitters[n].channels:
                log.warning("source %r feeds nothing: its records are read and discarded", n)
        return p

    def _make_buffer(self, name: str, bcfg: Any) -> Any:
        if bcfg.type == "disk":
            from collector.buffers.disk import DiskBuffer  # noqa: PLC0415

            return DiskBuffer(name, self.ctx.data_dir / "buffers" / name, bcfg, self.ctx.telemetry)
        return MemoryBuffer(name, bcfg, self.ctx.telemetry)

    # -- running ---------------------------------------------------------------------------
    async def _run_source(self, name: str, src: Source) -> None:
        out = self.emitters[name]
        try:
            await src.run(out)
        except Exception:
            log.exception("source %r failed; its input is no longer read", name)
            self.failed.append(name)
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
                    release(batch.ack)
                    continue
                for port, b in outs:
                    await (default if port is None else ports[port]).emit(b)
        finally:
            default.close()
            for e in ports.values():
                e.close()

    async def _run_sink(self, name: str, sink: Sink) -> None:
        buf = self.buffers[name]
        backoff = 1.0
        while True:
            try:
                await sink.run(buf.reader)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # what it held is not acknowledged: replayed at the next start
                log.exception("sink %r failed; restarting it in %.0fs", name, backoff)
                self.ctx.telemetry.errors.labels(name, "sink_crashed").inc()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60)

    def request_stop(self, why: str = "stopping: no new input") -> None:
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
        server = None
        if cfg.api is not None:
            host, port = split_hostport(cfg.api.listen)
            server = await ctx.telemetry.serve(host, port)
        saver = asyncio.create_task(ctx.checkpoints.run(cfg.checkpoint_interval), name="checkpoints")
        t0 = time.monotonic()
        upstream: list[asyncio.Task[None]] = []
        downstream: list[asyncio.Task[None]] = []
        try:
            for n, s in self.sources.items():
                upstream.append(asyncio.create_task(self._run_source(n, s), name=f"source:{n}"))
            for n, t in self.transforms.items():
                upstream.append(asyncio.create_task(self._run_transform(n, t), name=f"transform:{n}"))
            for n, b in self.buffers.items():
                upstream.extend(asyncio.create_task(c, name=f"buffer:{n}") for c in b.tasks())
            for n, k in self.sinks.items():
                downstream.append(asyncio.create_task(self._run_sink(n, k), name=f"sink:{n}"))
            everything = upstream + downstream
            # wait for the natural end (``--once``), or a stop request then the drain deadline
            while not all(t.done() for t in everything):
                if self.stop_requested:
                    break
                await asyncio.wait(everything, timeout=0.2)
            if self.stop_requested:
                _, pending = await asyncio.wait(everything, timeout=cfg.shutdown_timeout)
                if pending:
                    left = sum(b.pending_events() for b in self.buffers.values())
                    log.warning(
                        "drain deadline (%.0fs) passed with %d record(s) undelivered: they are not "
                        "acknowledged and will be read again at the next start",
                        cfg.shutdown_timeout,
                        left,
                    )
                    for t in pending:
                        t.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    self.failed.append("drain")
            for t in everything:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    log.error("task %s ended with %r", t.get_name(), t.exception())
                    self.failed.append(t.get_name())
        finally:
            for t in upstream + downstream:
                t.cancel()
            await asyncio.gather(*upstream, *downstream, return_exceptions=True)
            saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
            for b in self.buffers.values():
                await b.close()
            if server is not None:
                server.close()
        log.info("pipeline ended after %.1fs: %s", time.monotonic() - t0, summary(ctx.telemetry))
        if "drain" in self.failed or self.forced:
            return EXIT_UNDELIVERED
        return EXIT_FAILED if self.failed else EXIT_OK


class MemoryBuffer:
    """The in-memory buffer of a sink: one bounded channel (producers write, the sink reads)."""

    def __init__(self, name: str, bcfg: Any, telemetry: Telemetry) -> None:
        self.channel = Channel(name, bcfg.max_events, bcfg.limit_bytes, bcfg.when_full, producers=0)
        telemetry.buffer_events.labels(name).set_function(lambda: self.channel.events)
        telemetry.buffer_bytes.labels(name).set_function(lambda: self.channel.bytes)
        self._dropped = telemetry.dropped.labels(name, "buffer_full")
        self._seen_drops = 0

    @property
    def inbox(self) -> Channel:
        return self.channel

    @property
    def reader(self) -> Channel:
        return self.channel

    def tasks(self) -> list[Any]:
        return [self._count_drops()]

    async def _count_drops(self) -> None:
        while not self.channel.closed or len(self.channel):
            await asyncio.sleep(0.5)
            self._flush_drops()
        self._flush_drops()

    def _flush_drops(self) -> None:
        d = self.channel.dropped_events - self._seen_drops
        if d:
            self._dropped.inc(d)
            self._seen_drops += d

    def pending_events(self) -> int:
        return self.channel.events

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        self._flush_drops()


def summary(t: Telemetry) -> str:
    parts = []
    for label, metric in (
        ("received", "collector_events_received_total"),
        ("sent", "collector_events_sent_total"),
        ("dropped", "collector_events_dropped_total"),
        ("rejected", "collector_events_rejected_total"),
        ("errors", "collector_errors_total"),
    ):
        v = t.value(metric)
        if v or label in ("received", "sent"):
            parts.append(f"{label}={int(v)}")
    return " ".join(parts)


def tune_gc() -> None:
    """Records are acyclic dicts and lists made by the thousand: with the default thresholds the
    cyclic collector runs every 700 allocations and rescans everything alive (measured: 1 µs per
    record). Freeze what startup made and collect young objects less often; cycles are still
    collected."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


async def run_pipeline(
    config: PipelineConfig,
    once: bool = False,
    install_signals: bool = True,
    on_ready: Callable[[Pipeline], Any] | None = None,
) -> int:
    """Run a pipeline to its end; returns the process exit code."""
    soft, hard = raise_fd_limit()  # listeners and followed files need descriptors; the cap stays below it
    log.debug("open-files limit: %d (hard %d)", soft, hard)
    data_dir = Path(config.data_dir).expanduser()
    telemetry = Telemetry()
    checkpoints = CheckpointStore(data_dir, *pipeline_identity(config.sinks.values()))
    checkpoints.open()
    deadletter = DeadLetter(data_dir, telemetry, config.dead_letter)
    ctx = Context(data_dir=data_dir, telemetry=telemetry, checkpoints=checkpoints, deadletter=deadletter, once=once)
    loop = asyncio.get_running_loop()
    pipeline: Pipeline | None = None
    signals = 0
    loop_errors = RateLimitedLog(logging.getLogger("collector.loop"))

    def on_loop_error(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # e.g. "socket.accept() out of system resource": once per message per minute, not per event
        msg = str(context.get("message") or "error in the event loop")
        exc = context.get("exception")
        loop_errors.error(msg[:80], "%s: %r", msg, exc, exc_info=exc)

    loop.set_exception_handler(on_loop_error)

    def on_signal(sig: int) -> None:
        nonlocal signals
        signals += 1
        if pipeline is None:
            return
        if signals == 1:
            why = "interrupted (Ctrl-C)" if sig == signal.SIGINT else f"stopping on {signal.Signals(sig).name}"
            pipeline.request_stop(f"{why}; again to stop at once")
        else:
            log.warning("second signal: stopping now (unacknowledged records are read again next time)")
            pipeline.forced = True
            for task in asyncio.all_tasks(loop):
                if task.get_name().startswith(("sink:", "buffer:", "transform:", "source:")):
                    task.cancel()

    try:
        pipeline = Pipeline.build(config, ctx)
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, on_signal, sig)
        if on_ready is not None:
            on_ready(pipeline)
        tune_gc()
        rc = await pipeline.run()
        if once and rc == EXIT_OK and not telemetry.value("collector_events_received_total"):
            hint = checkpoints.nothing_new()
            if hint:
                log.info("%s", hint)
        return rc
    finally:
        loop.set_exception_handler(None)
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        await ctx.aclose()
        deadletter.close()
        checkpoints.close()
