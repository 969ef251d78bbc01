"""Source ``journald``: the systemd journal (the system's, or a directory of journal files).

The reader is ``journalctl -o export`` run as a subprocess (``--follow``, ``--after-cursor``),
not the libsystemd bindings (python3-systemd / systemd-python): journalctl is systemd's own,
always-matching reader of its on-disk format, already on every host that has a journal (and in
any image that mounts one, beside the files), needs no C extension built against the host's
libsystemd, and its export format is binary-safe (a MESSAGE with newlines or any bytes comes
through exactly).  A crash of the reader is a restart, never a crash of the collector.

    sources:
      journal:
        type: journald
        directory: /var/log/journal          # default: the system journal
        match: [CONTAINER_ID]                # only entries that have it (Docker's journald driver)

Positions: the journal cursor of the last delivered entry is the checkpoint (moved only when
everything up to it was delivered, like files: acks.py), and reading resumes after it.  Record
ids are a hash of the cursor, so a replay after a crash writes the same ``_id``.

Records (the same shape as the other sources): MESSAGE -> ``message``; the time of the entry
(``SYSLOG_TIMESTAMP`` when it is RFC 3339, as Docker writes it; else the sender's
``_SOURCE_REALTIME_TIMESTAMP``; else ``__REALTIME_TIMESTAMP``) -> ``@timestamp``; ``_HOSTNAME``
-> ``host.name``; PRIORITY -> ``log.level`` and ``log.syslog.severity``; SYSLOG_FACILITY ->
``log.syslog.facility``; SYSLOG_IDENTIFIER -> ``log.syslog.appname``; SYSLOG_PID/_PID ->
``log.syslog.procid``, ``process.pid``; ``_COMM``, ``_EXE`` -> ``process.name``,
``process.executable``; ``_SYSTEMD_UNIT``, ``_TRANSPORT`` -> ``systemd.unit``,
``systemd.transport``; other fields an application sent (no leading ``_``) ->
``journald.custom.<name in lowercase>``.  Docker's journald driver: ``CONTAINER_ID_FULL`` (or
``CONTAINER_ID``; hex only) -> ``container.id``, ``CONTAINER_NAME`` -> ``container.name``,
``IMAGE_NAME`` -> ``container.image.name``, ``CONTAINER_TAG`` -> ``tags`` and the routing tag,
PRIORITY 3/6 -> ``stream`` stderr/stdout; a line Docker split (``CONTAINER_PARTIAL_MESSAGE``)
is rejoined (``CONTAINER_PARTIAL_ID`` when present), and the checkpoint never passes its first
part while the rest is missing.

``match``: ``FIELD=value`` is given to journalctl (the same field repeated: any of the values;
different fields: all; ``+``: or); a bare ``FIELD`` keeps the entries that have it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, field_validator

from collector.acks import OrderedAcks
from collector.codecs.journal_export import Entry, ExportReader, Oversize
from collector.codecs.partial import PartialLine
from collector.component import ComponentConfig, Context, Emitter, Source
from collector.event import Batch, Event, Fields
from collector.retry import Backoff, RetryConfig
from collector.sources.journald.mapping import event, record_id, shared_fields

log = logging.getLogger("collector.sources.journald")

READ_BYTES = 256 << 10
# journalctl ending (a vacuumed journal, a crash) is retried for as long as the collector runs
RESTART = RetryConfig(initial_backoff=1.0, max_backoff=30.0, max_elapsed=None)
_MATCH = re.compile(r"[A-Z0-9_]+(=.*)?\Z|\+\Z", re.S)


class JournaldBatch(ComponentConfig):
    max_events: int = Field(1000, ge=1, le=100_000, description="Entries emitted together at most.")
    max_bytes: int = Field(4 << 20, ge=1024, description="Bytes of messages emitted together at most.")
    timeout: float = Field(0.05, ge=0, le=10, description="Seconds entries may wait for the next ones.")


class JournaldConfig(ComponentConfig):
    type: Literal["journald"]
    directory: str | None = Field(
        None, description="A directory of journal files (`journalctl --directory`); default: the system journal."
    )
    match: list[str] = Field(
        default_factory=list,
        description="`FIELD=value` matches given to journalctl (same field: any value; different fields: all; "
        "`+`: or), and bare `FIELD` names an entry must have (e.g. `CONTAINER_ID`: Docker's containers only).",
    )
    read_from: Literal["beginning", "end"] = Field(
        "beginning", description="Where to start when there is no checkpoint yet."
    )
    journalctl: str = Field("journalctl", description="The journalctl program.")
    tags: list[str] = Field(default_factory=list, description="Static tags added to every record.")
    batch: JournaldBatch = Field(default_factory=JournaldBatch, description="How entries are grouped into batches.")
    max_entry_bytes: int = Field(
        1 << 20, ge=4096, description="An entry larger than this is set aside (dead letter, with its cursor)."
    )
    max_record_bytes: int = Field(
        1 << 20, ge=1024, description="A line Docker split, rejoined, is cut (flagged `truncated`) past this."
    )
    partial_timeout: float = Field(
        10.0, gt=0, description="Seconds the rest of a split line may take; then it is emitted flagged `incomplete`."
    )

    @field_validator("match")
    @classmethod
    def _matches(cls, v: list[str]) -> list[str]:
        for m in v:
            if not _MATCH.match(m):
                raise ValueError(f"match {m!r}: use FIELD=value, FIELD (present) or + (journal field names: A-Z 0-9 _)")
        return v


@dataclass(slots=True)
class _Partial(PartialLine):
    first: tuple[Entry, str]
    prev: Any  # the position just before the first part (where a restart must resume)
    seq: int
    since: float = field(default_factory=time.monotonic)


class JournaldSource(Source):
    config: JournaldConfig

    def __init__(self, name: str, config: JournaldConfig, ctx: Context) -> None:
        super().__init__(name, config, ctx)
        self.state = ctx.checkpoints.namespace(name)
        self.acks = OrderedAcks(None, self._commit)
        t = ctx.telemetry
        self._received = t.received.labels(name)
        self._proc: asyncio.subprocess.Process | None = None
        self._meta: dict[tuple[Any, ...], tuple[Fields, str]] = {}
        self._partials: dict[tuple[str, ...], _Partial] = {}
        self._seq = 0
        self._last: tuple[int, str] | None = None  # the last entry read: (seq, cursor)
        self._present = [m for m in config.match if "=" not in m and m != "+"]

    # -- positions ------------------------------------------------------------------------------
    def _commit(self, pos: Any) -> None:
        if pos is not None:
            self.state["cursor"] = pos[1]
            self.ctx.checkpoints.touch()

    def _safe(self) -> Any:
        """How far a restart may skip: the last entry read, or just before the oldest split line."""
        if not self._partials:
            return self._last
        oldest = min(self._partials.values(), key=lambda p: p.seq)
        return oldest.prev

    # -- the reader process ---------------------------------------------------------------------
    def _command(self, cursor: str | None) -> list[str]:
        c = self.config
        cmd = [c.journalctl, "-o", "export", "--no-pager"]
        if c.directory:
            cmd += ["--directory", c.directory]
        if not self.ctx.once:
            cmd.append("--follow")
        if cursor:
            cmd += ["--after-cursor", cursor]
        elif c.read_from == "end":
            cmd += ["--lines", "0"]
        else:
            cmd.append("--no-tail")
        return cmd + [m for m in c.match if "=" in m or m == "+"]

    async def run(self, out: Emitter) -> None:
        backoff = Backoff(RESTART)
        self._last = (0, self.state["cursor"]) if self.state.get("cursor") else None
        self.acks = OrderedAcks(self._last, self._commit)
        while not self.stopping:
            cursor = self._last[1] if self._last else None
            cmd = self._command(cursor)
            try:
                proc = self._proc = await asyncio.create_subprocess_exec(
                    *cmd,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    stdin=asyncio.subprocess.DEVNULL,
                )
            except OSError as e:
                raise RuntimeError(f"cannot run {cmd[0]}: {e.strerror}") from None
            log.info("%s: reading the journal: %s", self.name, " ".join(cmd))
            self.mark_ready("reading the journal")
            err_task = asyncio.create_task(self._stderr(proc))
            started = time.monotonic()
            try:
                await self._read(proc, out)
            finally:
                _terminate(proc)
                rc = await proc.wait()
                err = await err_task
            if time.monotonic() - started > RESTART.max_backoff:
                backoff.reset()  # it had run for a while: a new run of trouble
            if self.stopping:
                break
            await self._flush_partials(out, force=self.ctx.once)
            if self.ctx.once:
                if rc != 0:
                    raise RuntimeError(f"{cmd[0]} exited with {rc}: {err.strip()[:500]}")
                break
            delay = backoff.delay()
            log.error(
                "%s: journalctl exited with %s (%s); restarting it in %.1fs", self.name, rc, err.strip()[:300], delay
            )
            await asyncio.sleep(delay)

    async def _stderr(self, proc: asyncio.subprocess.Process) -> str:
        assert proc.stderr is not None
        data = await proc.stderr.read(64 << 10)
        while await proc.stderr.read(64 << 10):  # keep draining, keep only the start
            pass
        return data.decode(errors="replace")

    def stop(self) -> None:
        super().stop()
        if self._proc is not None:
            _terminate(self._proc)

    async def _read(self, proc: asyncio.subprocess.Process, out: Emitter) -> None:
        assert proc.stdout is not None
        reader = ExportReader(self.config.max_entry_bytes)
        cfg = self.config.batch
        entries: list[Entry] = []
        nbytes = 0
        deadline: float | None = None
        read = asyncio.ensure_future(proc.stdout.read(READ_BYTES))
        try:
            while True:
                timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
                if self._partials and timeout is None:
                    timeout = self.config.partial_timeout
                done, _ = await asyncio.wait({read}, timeout=timeout)
                if read in done:
                    data = read.result()
                    if not data:
                        break
                    read = asyncio.ensure_future(proc.stdout.read(READ_BYTES))
                    try:
                        parsed = reader.feed(data)
                    except ValueError as e:
                        raise RuntimeError(f"journalctl wrote something unexpected: {e}") from None
                    for e in parsed:
                        if isinstance(e, Oversize):
                            self._oversize(e)
                            continue
                        entries.append(e)
                        nbytes += len(e.get("MESSAGE", b""))
                    if entries and deadline is None:
                        deadline = time.monotonic() + cfg.timeout
                if entries and (
                    len(entries) >= cfg.max_events or nbytes >= cfg.max_bytes or time.monotonic() >= (deadline or 0)
                ):
                    await self._emit(entries, out)
                    entries, nbytes, deadline = [], 0, None
                elif not entries and self._partials:
                    await self._flush_partials(out, force=False)
            if entries:
                await self._emit(entries, out)
        finally:
            if not read.done():
                read.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await read

    def _oversize(self, e: Oversize) -> None:
        cursor = e.fields.get("__CURSOR", b"").decode(errors="replace")
        self.ctx.deadletter.raw(
            self.name,
            "too_large",
            e.fields.get("MESSAGE", b"")[:4096],
            cursor=cursor,
            detail=f"entry of {e.size} bytes > max_entry_bytes ({self.config.max_entry_bytes})",
        )

    # -- entries -> records ---------------------------------------------------------------------
    async def _emit(self, entries: list[Entry], out: Emitter) -> None:
        groups: dict[int, tuple[Fields, str, list[Event], list[str]]] = {}
        for e in entries:
            cursor = e.get("__CURSOR", b"").decode(errors="replace")
            self._seq += 1
            prev = self._last
            self._last = (self._seq, cursor)
            if self._present and not all(f in e for f in self._present):
                continue
            rec = self._rejoin(e, cursor, prev)
            if rec is None:
                continue
            first, rid, text, flags = rec
            meta, tag = self._shared(first)
            ev = event(first, text, flags, "container" in meta.data)
            g = groups.get(id(meta))
            if g is None:
                g = groups[id(meta)] = (meta, tag, [], [])
            g[2].append(ev)
            g[3].append(rid)
        await self._send(groups, out)

    async def _send(self, groups: dict[int, tuple[Fields, str, list[Event], list[str]]], out: Emitter) -> None:
        safe = self._safe()
        if not groups:
            if safe is not None and safe != self.acks.committed:
                self.acks.track(safe).done()  # only filtered-out entries: nothing to wait for
            return
        items = list(groups.values())
        acks = [self.acks.track(safe) for _ in items]
        for (meta, tag, events, ids), ack in zip(items, acks, strict=True):
            self._received.inc(len(events))
            nbytes = sum(len(ev["message"]) for ev in events) + 64 * len(events)
            await out.emit(Batch(events, meta, ids=ids, ack=ack, tag=tag, origin=self.name, nbytes=nbytes))

    def _rejoin(self, e: Entry, cursor: str, prev: Any) -> tuple[Entry, str, str, list[str]] | None:
        """(the first entry, its id, the text, flags) of a complete line; None while parts are missing."""
        text = e.get("MESSAGE", b"")
        try:
            msg = text.decode()
            flags: list[str] = []
        except UnicodeDecodeError:
            msg = text.decode("utf-8", "replace")
            flags = ["invalid_utf8"]
        cid = e.get("CONTAINER_ID_FULL") or e.get("CONTAINER_ID")
        if cid is None:
            return e, record_id(cursor), msg, flags
        pid = e.get("CONTAINER_PARTIAL_ID")
        key = (cid.decode(errors="replace"), pid.decode(errors="replace") if pid else e.get("PRIORITY", b"").decode())
        partial = e.get("CONTAINER_PARTIAL_MESSAGE") == b"true"
        p = self._partials.get(key)
        if p is None and not partial:
            return e, record_id(cursor), msg, flags
        if p is None:
            p = self._partials[key] = _Partial(first=(e, cursor), prev=prev, seq=self._seq)
        p.add(msg, self.config.max_record_bytes)
        if partial:
            return None
        del self._partials[key]
        first, first_cursor = p.first
        fl = ["truncated"] if p.truncated else []
        return first, record_id(first_cursor), p.text(), fl

    async def _flush_partials(self, out: Emitter, force: bool) -> None:
        now = time.monotonic()
        groups: dict[int, tuple[Fields, str, list[Event], list[str]]] = {}
        for key, p in list(self._partials.items()):
            if not force and now - p.since < self.config.partial_timeout:
                continue
            del self._partials[key]
            first, first_cursor = p.first
            meta, tag = self._shared(first)
            fl = ["incomplete"] + (["truncated"] if p.truncated else [])
            g = groups.setdefault(id(meta), (meta, tag, [], []))
            g[2].append(event(first, p.text(), fl, "container" in meta.data))
            g[3].append(record_id(first_cursor))
        if groups:
            await self._send(groups, out)

    def _shared(self, e: Entry) -> tuple[Fields, str]:
        g = e.get
        key = (
            g("_HOSTNAME"),
            g("CONTAINER_ID_FULL") or g("CONTAINER_ID"),
            g("CONTAINER_NAME"),
            g("IMAGE_NAME"),
            g("CONTAINER_TAG"),
        )
        hit = self._meta.get(key)
        if hit is not None:
            return hit
        hit = shared_fields(key, self.ctx.hostname, self.config.tags)
        if len(self._meta) > 10_000:
            self._meta.clear()
        self._meta[key] = hit
        return hit


def _terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to journalctl unless asyncio saw it end; by pid, never ``proc.terminate()``:
    that polls the child (``Popen.send_signal``) and, when journalctl has just ended on its own,
    reaps it under asyncio's child watcher, which then reports exit code 255 ("Unknown child
    process"): a clean end read as a failure in about one run in three. Until asyncio reaps it,
    the pid cannot be reused, so a signal by pid reaches journalctl or its zombie."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
