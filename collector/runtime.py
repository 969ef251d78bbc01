"""Running a built topology: one task per component, each watched, a graceful drain, the exit
code, and a reload in place (components restarted one by one while the others keep running).

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

Reload in place (``reconfigure``; app.py decides when, topology.plan_reload): the new instances
are made (and a transform started) before anything stops, then each changed component is
replaced inside its own task, on the same edges:
- a sink: its feed says end-of-input; it delivers what it holds and returns (past
  ``shutdown_timeout`` it is cancelled and what it held is handed again); the new one reads the
  same buffer, so what waits there goes to the new one, once;
- a transform: its inbox read ends (nothing taken from it), it hands over everything it holds
  (``Transform.hand_over``) to its outputs, which stay open; the new one reads the same inbox;
- a source: it stops; once every record it emitted is finalized, the new one starts from the
  checkpoints (what the old one delivered is not read again, the rest is).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Self

from collector.acks import release
from collector.checkpoints import pipeline_identity
from collector.component import Component, Context, Transform
from collector.config import PipelineConfig
from collector.feed import ENDED, TICK, SinkFeed, next_batch
from collector.retry import Backoff
from collector.topology import Topology

log = logging.getLogger("collector.app")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNDELIVERED = 3


@dataclass
class Pipeline(Topology):
    fatal: str | None = None  # the first component task that ended unexpectedly, and why
    restarting: dict[str, str] = field(default_factory=dict)  # sink name -> why it is down
    stop_requested: bool = False
    reloading: bool = False  # stopping to be replaced by a new pipeline (a reload)
    duration: float = 0.0  # seconds the run took (the summary line)
    forced: bool = False  # a second signal: whatever was in flight is abandoned (replayed next time)
    closing: bool = False  # tasks are being cancelled on purpose from here on
    feeds: dict[str, SinkFeed] = field(default_factory=dict)  # sink name -> what it reads
    reconfiguring: asyncio.Task[None] | None = None  # a reload in place under way
    _next: dict[tuple[str, str], tuple[Any, asyncio.Future[None]]] = field(default_factory=dict)  # replacements
    _ending: dict[str, asyncio.Future[None]] = field(default_factory=dict)  # transform name -> its end of input
    _sink_runs: dict[str, asyncio.Future[None]] = field(default_factory=dict)  # the running instance's run()
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, config: PipelineConfig, ctx: Context) -> Self:
        p = super().build(config, ctx)
        for n in config.sinks:
            ctx.telemetry.register_health(f"sink[{n}]", lambda n=n: p._sink_health(n))
        ctx.telemetry.register_health("pipeline", lambda: (p.fatal is None, p.fatal or "running"))
        return p

    def _sink_health(self, name: str) -> tuple[bool, str]:
        if name in self.restarting:
            return False, self.restarting[name]
        return self.sinks[name].health()

    # -- running ---------------------------------------------------------------------------
    async def _run_source(self, name: str) -> None:
        out = self.emitters[name]
        try:
            while True:
                await self.sources[name].run(out)
                swap = self._next.pop(("source", name), None)
                if swap is None:
                    return
                new, done = swap
                inflight = self.source_inflight[name]
                if inflight.records:
                    log.info(
                        "reload: source %r stopped; waiting for its %d record(s) in flight", name, inflight.records
                    )
                while inflight.records and not self.stop_requested:
                    await asyncio.sleep(0.05)
                done.set_result(None)
                if self.stop_requested:
                    return
                self.sources[name] = new
                self.ctx.telemetry.register_ready(f"source[{name}]", new.ready)
                log.info("reload: source %r restarted with its new config, from its checkpoints", name)
        finally:
            out.close()

    async def _run_transform(self, name: str) -> None:
        inbox = self.inboxes[name]
        t = self.transforms[name]
        default = self.emitters[name]
        ports = {port: self.emitters[f"{name}.{port}"] for port in t.output_ports()}
        errors = self.ctx.telemetry.errors.labels(name, "transform_failed")
        loop = asyncio.get_running_loop()
        ending = self._ending[name] = loop.create_future()
        try:
            while True:
                batch = await next_batch(inbox, ending, t.tick_interval)
                if batch is TICK or batch is ENDED or batch is None:
                    outs = await (t.tick() if batch is TICK else t.hand_over() if batch is ENDED else t.finish())
                    for port, b in outs:
                        await (default if port is None else ports[port]).emit(b)
                    if batch is None:
                        break
                    if batch is ENDED:
                        new, done = self._next.pop(("transform", name))
                        new.connected = t.connected
                        t = self.transforms[name] = new
                        ending = self._ending[name] = loop.create_future()
                        done.set_result(None)
                        log.info("reload: transform %r restarted with its new config", name)
                    continue
                try:
                    outs = await t.process(batch)
                except Exception as e:
                    # a bug or a surprise in one batch must not stop the others: set it aside
                    log.exception("transform %r failed on %r; its records go to the dead letter", name, batch)
                    errors.inc()
                    self.ctx.deadletter.records(
                        name, [(f"transform failed: {e!r}", r, {"source": batch.origin}) for r in batch.records()]
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
        nothing delivered in between, the error ends this task: fatal. At a reload in place, the
        new instance takes over from the old one once it returned (or was cancelled)."""
        feed = self.feeds[name] = SinkFeed(self.buffers[name].reader)
        backoff = Backoff(self.config.restart.retry)
        last_error = ""
        sent_before = self._sent(name)
        while True:
            try:
                run = self._sink_runs[name] = asyncio.ensure_future(self.sinks[name].run(feed))
                await run
                if ("sink", name) not in self._next:
                    return
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if ("sink", name) not in self._next or self.closing or (task is not None and task.cancelling()):
                    raise
                # the reload cancelled an old instance that did not finish in time
                again = feed.requeue()
                log.warning(
                    "reload: sink %r stopped before it finished; the %d batch(es) it held go to its successor",
                    name,
                    again,
                )
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
                continue
            new, done = self._next.pop(("sink", name))
            self.sinks[name] = new
            feed.resume()
            done.set_result(None)
            log.info("reload: sink %r restarted with its new config on the same buffer", name)

    def _sent(self, name: str) -> float:
        return self.ctx.telemetry.value("collector_events_sent_total", component=name)

    # -- reload in place -------------------------------------------------------------------
    async def prepare(self, new: PipelineConfig, changed: dict[str, list[str]]) -> dict[tuple[str, str], Component]:
        """The new instances of the changed components, transforms started: raises when one
        cannot be made (the reload is then refused and nothing has changed)."""
        made: dict[tuple[str, str], Component] = {}
        for kind, names in changed.items():
            for n in names:
                made[kind, n] = c = self.new_component(kind, n, new)
                if isinstance(c, Transform):
                    await c.start()
        return made

    async def reconfigure(self, new: PipelineConfig, made: dict[tuple[str, str], Component]) -> None:
        """Replace the ``made`` components by their new instances, each inside its own task (see
        the module's notes); everything else keeps running. Returns once all are replaced."""
        old, self.config = self.config, new
        loop = asyncio.get_running_loop()
        identity, outputs = pipeline_identity(new.sinks.values())
        if identity != pipeline_identity(old.sinks.values())[0] and self.ctx.checkpoints.identity is not None:
            self.ctx.checkpoints.rehome(identity, outputs)
        t = self.ctx.telemetry
        sinks: dict[str, asyncio.Future[None]] = {}
        for (kind, n), obj in made.items():
            was = getattr(old, f"{kind}s")[n].type
            if was != obj.config.type:
                t.component_info.remove(n, kind, was)
                t.component_info.labels(n, kind, obj.config.type).set(1)
            done = loop.create_future()
            self._next[kind, n] = (obj, done)
            if kind == "source":
                self.sources[n].stop()
            elif kind == "transform":
                self._ending[n].set_result(None)
            else:
                self.feeds[n].end()
                sinks[n] = done
        waiting = [d for _, d in self._next.values()]
        if sinks:
            _, late = await asyncio.wait(sinks.values(), timeout=new.shutdown_timeout)
            for n, d in sinks.items():
                if d in late:
                    log.warning(
                        "reload: sink %r still busy after %.0fs (shutdown_timeout); stopping it",
                        n,
                        new.shutdown_timeout,
                    )
                    self._sink_runs[n].cancel()
        await asyncio.gather(*waiting)
        log.info(
            "reloaded in place: %s restarted; everything else kept running", ", ".join(f"{k} {n!r}" for k, n in made)
        )

    # -- watching --------------------------------------------------------------------------
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
            for n in self.sources:
                tasks.append(self._start(self._run_source(n), f"source:{n}", f"source {n!r}"))
            for n in self.transforms:
                tasks.append(self._start(self._run_transform(n), f"transform:{n}", f"transform {n!r}"))
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
            if self.reconfiguring is not None:
                services.append(self.reconfiguring)
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
