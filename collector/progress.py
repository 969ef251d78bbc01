"""How a run went: a progress bar for ``--once`` on a terminal, and one summary line at the end.

The bar (rich) shows the bytes read of the bytes present in the files a backfill reads, records
per second and the time left; it is drawn on stderr when stderr is a terminal and the records
do not go to that same terminal (the console output has it). Log lines written meanwhile are
printed above it.

The summary line ends every run, on a terminal or not:

    pipeline ended after 3.2s: 120,000 records in, 120,000 out, 0 dead-lettered (51,234,567 bytes read)

and when a ``--once`` run found nothing to read, it says why and how to start over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import Any

from collector.telemetry import Telemetry

log = logging.getLogger("collector.app")

REFRESH = 0.25  # seconds between updates of the bar


def _console_on_terminal(pipeline: Any) -> bool:
    for sink in pipeline.sinks.values():
        if getattr(sink, "text", False) and getattr(sink, "out", None) is not None:
            with contextlib.suppress(AttributeError, ValueError):
                if sink.out.isatty():
                    return True
    return False


def _progress(pipeline: Any) -> tuple[int, int] | None:
    done = present = 0
    known = False
    for src in pipeline.sources.values():
        p = src.progress()
        if p is not None:
            known = True
            done += p[0]
            present += p[1]
    return (done, present) if known else None


class ProgressBar:
    """The bar of a ``--once`` run (see the module docstring); ``start`` returns None when no bar
    is wanted (stderr is not a terminal, the records go to it, or no source knows its progress)."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self._task: asyncio.Task[None] | None = None
        self._progress: Any = None
        self._swapped: list[tuple[logging.StreamHandler[Any], Any]] = []

    @classmethod
    def start(cls, pipeline: Any) -> ProgressBar | None:
        try:
            tty = sys.stderr.isatty()
        except (AttributeError, ValueError):
            tty = False
        if not tty or _console_on_terminal(pipeline) or _progress(pipeline) is None:
            return None
        bar = cls(pipeline)
        bar._task = asyncio.create_task(bar._run(), name="progress")
        return bar

    async def _run(self) -> None:
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress = Progress(
            TextColumn("[bold]reading"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TextColumn("{task.fields[records]:>12,} records  {task.fields[rate]:>9,.0f}/s"),
            TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=Console(file=sys.stderr),
            transient=False,
            refresh_per_second=8,
        )
        self._progress = progress
        t0 = time.monotonic()
        task = progress.add_task("reading", total=None, records=0, rate=0.0, eta="-:--:--")
        with progress:
            self._log_above()
            try:
                while True:
                    self._update(progress, task, t0)
                    await asyncio.sleep(REFRESH)
            finally:
                self._update(progress, task, t0)
                progress.refresh()
                self._log_back()

    def _update(self, progress: Any, task: Any, t0: float) -> None:
        p = _progress(self.pipeline)
        records = int(self.pipeline.ctx.telemetry.value("collector_events_received_total"))
        elapsed = max(time.monotonic() - t0, 1e-6)
        if p is not None:
            # the time left at the average rate so far (rich's own estimate restarts whenever the
            # total changes, and files being written make it change all the time)
            done, present = p[0], max(p[1], p[0], 1)
            eta = _clock((present - done) / (done / elapsed)) if done else "-:--:--"
            progress.update(task, completed=done, total=present, records=records, rate=records / elapsed, eta=eta)

    def _log_above(self) -> None:
        """Our log handler writes to the stderr it was given: while the bar is drawn, to the
        ``sys.stderr`` rich puts in place (lines go above the bar instead of through it)."""
        for h in logging.getLogger().handlers:
            if isinstance(h, logging.StreamHandler) and h.stream is sys.__stderr__ and sys.stderr is not h.stream:
                self._swapped.append((h, h.setStream(sys.stderr)))

    def _log_back(self) -> None:
        for h, stream in self._swapped:
            h.setStream(stream)
        self._swapped.clear()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# -- the summary line -----------------------------------------------------------------------------------
def summarize(
    telemetry: Telemetry, duration: float, pipeline: Any = None, once: bool = False, nothing_new: str | None = None
) -> tuple[str, dict[str, Any]]:
    """(the line, its figures) at the end of a run."""
    records_in = int(telemetry.value("collector_events_received_total"))
    records_out = int(telemetry.value("collector_events_sent_total"))
    dead = int(telemetry.value("collector_dead_letters_total"))
    dropped = int(telemetry.value("collector_events_dropped_total"))
    errors = int(telemetry.value("collector_errors_total"))
    not_kept = {
        why: n
        for why in ("disk_full", "rotated_out", "rate_limited")
        if (n := int(telemetry.value("collector_dead_letter_dropped_total", reason=why)))
    }
    fields: dict[str, Any] = {
        "duration_s": round(duration, 3),
        "records_in": records_in,
        "records_out": records_out,
        "dead_lettered": dead,
        "dropped": dropped,
        "errors": errors,
        "dead_letters_not_kept": sum(not_kept.values()),
    }
    text = f"pipeline ended after {duration:.1f}s: "
    if once and records_in == 0 and nothing_new:
        return text + nothing_new, fields
    text += f"{records_in:,} records in, {records_out:,} out, {dead:,} dead-lettered"
    extra = []
    if dropped:
        extra.append(f"{dropped:,} dropped")
    if errors:
        extra.append(f"{errors:,} error" + ("s" if errors != 1 else ""))
    if not_kept:  # counted as dead-lettered, but their entries were not written (or deleted since)
        why = ", ".join(f"{n:,} {w.replace('_', ' ')}" for w, n in not_kept.items())
        extra.append(f"dead letters not kept: {why}")
    p = _progress(pipeline) if pipeline is not None and once else None
    if p is not None:
        fields["bytes_read"] = p[0]
        extra.append(f"{p[0]:,} bytes read")
    if extra:
        text += " (" + ", ".join(extra) + ")"
    if once and records_in == 0 and pipeline is not None:
        ends = [n for n, c in pipeline.config.sources.items() if getattr(c, "read_from", None) == "end"]
        if ends:
            text += (
                f"; nothing to read: --read-from end (read_from: end, source {', '.join(ends)}) starts at the end of "
                "files seen for the first time; --read-from beginning reads them whole"
            )
    return text, fields
