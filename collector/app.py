"""Run a pipeline for the life of the process: build it (topology.py), run it (runtime.py),
signals, the API server, the summary line, and reload.

Reload (SIGHUP, ``collector reload``; ``run -c FILE`` only): the file is read and checked again;
an invalid config is refused (logged with its reason, counted as
``collector_errors_total{component="reload",reason="config_invalid"}``) and nothing changes. When
only components' own settings changed (same components, inputs, buffers, pipeline settings:
topology.plan_reload), those components are restarted in place and the others keep running and
keep their place (runtime.py says how each kind hands over: nothing lost, nothing twice). Anything
else replaces the whole pipeline: the running one drains as at a stop, then the new one is built
and started in the same process from the old one's positions. Either way the log says which path
was taken and why; the API server and the counters live for the whole process.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector import early
from collector.checkpoints import CheckpointStore, DataDirError, pipeline_identity
from collector.component import Context
from collector.config import ConfigError, PipelineConfig
from collector.deadletter import DeadLetter
from collector.feed import SinkFeed
from collector.listeners import API_SCHEMES, parse_listen, raise_fd_limit
from collector.progress import ProgressBar, summarize
from collector.ratelog import RateLimitedLog
from collector.runtime import EXIT_FAILED, EXIT_OK, EXIT_UNDELIVERED, Pipeline, housekeeping, tune_gc
from collector.telemetry import Telemetry
from collector.topology import Inlet, ReloadPlan, config_changes, orphan_buffers, plan_reload, reload_problems

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNDELIVERED",
    "Inlet",
    "Pipeline",
    "SinkFeed",
    "config_changes",
    "housekeeping",
    "reload_problems",
    "run_pipeline",
    "tune_gc",
]

log = logging.getLogger("collector.app")


async def _serve(server: asyncio.Server) -> None:
    async with server:
        await server.serve_forever()


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
    valid one that changes only components' own settings restarts those in place (Pipeline.prepare,
    reconfigure); any other replaces the pipeline: the running one drains (sources stop, everything
    in flight is delivered, checkpoints saved), then the new one is built and started in this
    process, from the same positions (its checkpoints start from the old ones, whatever its
    outputs). The API stays up throughout."""
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
        if pipeline.reconfiguring is not None and not pipeline.reconfiguring.done():
            log.warning("reload: the previous one is still under way; send it again once it says 'reloaded'")
            return
        plan = plan_reload(pipeline.config, new)
        said = f"reloading {plan.describe()}; changes: {config_changes(pipeline.config, new)}"
        if plan.whole is None:
            log.info("%s", said)
            pipeline.reconfiguring = asyncio.create_task(reload_in_place(pipeline, new, plan), name="reload")
            return
        reload_to = new
        pipeline.reloading = True
        pipeline.request_stop(f"{said}: the new config is valid; the running pipeline stops first")

    async def reload_in_place(p: Pipeline, new: PipelineConfig, plan: ReloadPlan) -> None:
        try:
            made = await p.prepare(new, plan.changed)
        except Exception as e:
            telemetry.errors.labels("reload", "config_invalid").inc()
            log.error("reload refused, the running pipeline goes on unchanged: a new component cannot start: %r", e)
            return
        try:
            await p.reconfigure(new, made)
        except Exception as e:
            p._fail("reload", e, "failed")

    def api_ended(t: asyncio.Task[Any]) -> None:
        if pipeline is not None and not pipeline.closing and not t.cancelled():
            pipeline._fail("api server", t.exception(), "ended")

    carried: dict[str, dict[str, dict[str, Any]]] | None = None
    orphans_said: set[Path] = set()  # orphan disk buffers are said once each
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
                if early.pending or (signals and reload_to is None):  # came while we started
                    early.pending.clear()
                    signals = max(signals, 1)
                    pipeline.request_stop("stopping on SIGTERM (it came while the collector started)")
                for d, nbytes, records in orphan_buffers(config, data_dir):
                    if d not in orphans_said:
                        orphans_said.add(d)
                        log.warning(
                            "disk buffer %s holds %d record(s) (%d bytes) that no sink reads: no sink named %r with a "
                            "disk buffer in the config (renamed or removed?). Give that sink its old name back to "
                            "deliver them, or delete the directory to drop them",
                            d,
                            records,
                            nbytes,
                            d.name,
                        )
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
