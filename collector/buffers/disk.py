"""The disk buffer of a sink: segment files plus a ledger; survives kill -9.

    <data_dir>/buffers/<sink>/00000001.seg, 00000002.seg, ...   frames, appended
    <data_dir>/buffers/<sink>/ledger.json                       {"segment": n, "offset": o}

A frame is ``<u32 length><u32 crc32>`` + a JSON batch (records, shared fields, ids, tag).
The *writer* takes batches from the sink's inbox, appends them, syncs them (``fsync``
policy), and only then acknowledges them to their sources: from that moment the disk holds
them, so a file checkpoint may move and a forward client may get its ``ack``.
The *reader* hands frames to the sink as batches whose acknowledgement moves the ledger (in
order, see acks.OrderedAcks); segments wholly behind the ledger are deleted.

On start everything after the ledger is replayed (ids are stable, so replays are harmless).
A torn frame at the end of a segment (a crash mid-write) or a frame whose checksum does not
match is reported with its segment, offset and size, the rest of that segment is skipped, and
reading continues with the next segment: corruption costs what it touched, never the buffer.

A full disk is the buffer being full: a frame that does not fit is cut off again (the segment
stays readable), then ``when_full`` decides: ``drop_newest`` drops the batch (counted as
``disk_full``), ``block`` waits (sources pause) until delivered segments are deleted or space
comes back from elsewhere.  A ledger write that fails keeps the last ledger and is retried.

The frame format and reading a buffer's directory without opening it (``inspect``) are in
segments.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import zlib
from collections.abc import Coroutine
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from collector.acks import Ack, OrderedAcks, release
from collector.buffers import BufferConfig
from collector.buffers.memory import Channel
from collector.buffers.segments import HEADER, EncodedDocs, decode_batch, encode_batch, inspect, seg_name
from collector.diskfull import DiskFull, is_disk_full
from collector.event import Batch
from collector.retry import Backoff, RetryConfig
from collector.telemetry import Telemetry

# EncodedDocs and inspect are imported from here (status.py, topology.py, tests)
__all__ = ["DiskBuffer", "EncodedDocs", "inspect"]

log = logging.getLogger("collector.buffers.disk")

INBOX_EVENTS = 8_000
INBOX_BYTES = 16 << 20
# waiting for space that comes back from elsewhere (delivered segments wake the writer at once)
DISK_FULL_RETRY = RetryConfig(initial_backoff=0.1, max_backoff=5.0)


class DiskBuffer:
    def __init__(self, name: str, directory: Path, cfg: BufferConfig, telemetry: Telemetry) -> None:
        self.name = name
        self.dir = directory
        self.cfg = cfg
        self.telemetry = telemetry
        self.inbox = Channel(f"{name}-inbox", INBOX_EVENTS, INBOX_BYTES, "block", producers=0)
        self.reader = _Reader(self)
        # writer state
        self._wseg = 0
        self._wfile: BinaryIO | None = None
        self._wpos = 0
        self._unsynced: list[Ack | None] = []  # acks of batches written, not yet synced
        self._last_sync = 0.0
        self._written = asyncio.Event()
        self.writer_done = False
        # reader/ledger state
        self._ledger = (1, 0)
        self._ledger_dirty = False
        self.acks = OrderedAcks((1, 0), self._on_commit)
        self.bytes_on_disk = 0
        self.events_waiting = 0  # written, not yet delivered (approximate after a restart)
        self._room = asyncio.Event()
        self._room.set()
        self._dropped = telemetry.dropped.labels(name, "buffer_full")
        self._dropped_disk_full = telemetry.dropped.labels(name, "disk_full")
        self._errors = telemetry.errors
        self._full = DiskFull(
            f"the disk buffer of {name!r}",
            "new records are dropped (counted)" if cfg.when_full == "drop_newest" else "the sources wait",
        )
        self._ledger_full = DiskFull(f"the disk buffer ledger of {name!r}", "the last ledger stays valid")
        telemetry.buffer_bytes.labels(name).set_function(lambda: self.bytes_on_disk)
        telemetry.buffer_events.labels(name).set_function(lambda: self.events_waiting + self.inbox.events)

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ledger = self._read_ledger()
        segs = self.segments()
        for n in segs:
            if n < self._ledger[0]:
                (self.dir / seg_name(n)).unlink(missing_ok=True)
        segs = [n for n in segs if n >= self._ledger[0]]
        self.bytes_on_disk = sum((self.dir / seg_name(n)).stat().st_size for n in segs)
        if self.bytes_on_disk:
            self.bytes_on_disk -= self._ledger[1] if segs and segs[0] == self._ledger[0] else 0
            log.info("%s: disk buffer holds %d bytes from before: replaying them first", self.name, self.bytes_on_disk)
        self.acks.reset(self._ledger)
        # new writes go to a fresh segment: never append after a possibly torn tail
        self._wseg = max([*segs, self._ledger[0] - 1]) + 1
        self.reader.start(self._ledger, self._wseg)

    async def close(self) -> None:
        if self._wfile is not None:
            with contextlib.suppress(OSError):
                self._wfile.flush()
                os.fsync(self._wfile.fileno())
            self._wfile.close()
            self._wfile = None
        self.reader.close()
        self._save_ledger(force=True)

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        return [self._write_loop(), self._ledger_loop()]

    def pending_events(self) -> int:
        return self.events_waiting + self.inbox.events

    def stored_records(self) -> int:
        """Records written here and not delivered yet, replayed at the next start (at least 1
        when bytes from an earlier run are left: their count is not known)."""
        return self.events_waiting or (1 if self.bytes_on_disk > 0 else 0)

    def segments(self) -> list[int]:
        out = []
        for p in self.dir.glob("*.seg"):
            with contextlib.suppress(ValueError):
                out.append(int(p.stem))
        return sorted(out)

    # -- ledger ------------------------------------------------------------------------
    def _read_ledger(self) -> tuple[int, int]:
        try:
            d = orjson.loads((self.dir / "ledger.json").read_bytes())
            return int(d["segment"]), int(d["offset"])
        except FileNotFoundError:
            segs = self.segments()
            return (segs[0] if segs else 1), 0
        except (ValueError, KeyError, TypeError) as e:
            segs = self.segments()
            log.error("%s: ledger unreadable (%s): replaying the whole buffer", self.name, e)
            return (segs[0] if segs else 1), 0

    def _on_commit(self, pos: tuple[int, int]) -> None:
        old = self._ledger
        self._ledger = pos
        self._ledger_dirty = True
        if pos[0] > old[0]:
            for n in range(old[0], pos[0]):
                p = self.dir / seg_name(n)
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def _save_ledger(self, force: bool = False) -> None:
        if not (self._ledger_dirty or force):
            return
        self._ledger_dirty = False
        tmp = self.dir / "ledger.json.tmp"
        try:
            tmp.write_bytes(orjson.dumps({"segment": self._ledger[0], "offset": self._ledger[1]}))
        except OSError as e:
            self._ledger_dirty = True  # the last ledger stays, valid: it only replays more
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not is_disk_full(e):
                raise
            self._ledger_full.failed(self.dir / "ledger.json", e)
            return
        os.replace(tmp, self.dir / "ledger.json")
        self._ledger_full.ok()

    async def _ledger_loop(self) -> None:
        while not (self.writer_done and self.reader.finished):
            await asyncio.sleep(0.5)
            self._save_ledger()

    def released(self, nbytes: int, events: int) -> None:
        """A frame was delivered: room on disk again."""
        self.bytes_on_disk -= nbytes
        self.events_waiting = max(0, self.events_waiting - events)
        if self.bytes_on_disk < self.cfg.limit_bytes:
            self._room.set()

    def replayed(self, nbytes: int, events: int, ledger: Ack, ack: Ack) -> None:
        """The callback of a replayed frame's Ack: room on disk, and the ledger may move."""
        self.released(nbytes, events)
        ack.pass_on(ledger)

    # -- writer --------------------------------------------------------------------------
    def _open_segment(self) -> BinaryIO:
        if self._wfile is None:
            # unbuffered: a frame reaches the file or fails now (then it is cut off), never later
            self._wfile = open(self.dir / seg_name(self._wseg), "ab", buffering=0)  # noqa: SIM115
            self._wpos = self._wfile.tell()
        return self._wfile

    def _roll(self) -> None:
        if self._wfile is not None:
            self._wfile.flush()
            os.fsync(self._wfile.fileno())
            self._wfile.close()
        self._wfile = None
        self._wseg += 1

    async def _write_loop(self) -> None:
        cfg = self.cfg
        try:
            while (batch := await self.inbox.recv()) is not None:
                batches = [batch]
                while len(batches) < 64 and (b := self.inbox.recv_nowait()) is not None:
                    batches.append(b)
                for b in batches:
                    if self.bytes_on_disk >= cfg.limit_bytes:
                        if cfg.when_full == "drop_newest":
                            self._dropped.inc(len(b))
                            release(b.ack, failed=len(b))
                            continue
                        self._room.clear()
                        await self._sync()  # what is written so far may be acknowledged meanwhile
                        await self._room.wait()
                    await self._append_or_full(b)
                if cfg.fsync != "interval" or time.monotonic() - self._last_sync >= cfg.fsync_interval:
                    await self._sync()
                elif self._unsynced:
                    self._schedule_sync()
            await self._sync()
        finally:
            self.writer_done = True
            self.reader.wake()

    async def _append_or_full(self, b: Batch) -> None:
        """Append ``b``; on a full disk apply ``when_full`` (drop it, or wait for room and retry)."""
        backoff = Backoff(DISK_FULL_RETRY)
        while True:
            try:
                self._append(b)
            except OSError as e:
                if not is_disk_full(e):
                    raise
                if self.cfg.when_full == "drop_newest":
                    self._dropped_disk_full.inc(len(b))
                    self._full.failed(self.dir, e, len(b))
                    release(b.ack, failed=len(b))
                    return
                self._full.failed(self.dir, e)
                await self._sync()  # what is written so far may be acknowledged, delivered, deleted
                if self._wfile is not None and self._wpos:  # close it: once delivered it is deleted: room
                    self._roll()
                    self.reader.writer_at(self._wseg, 0)
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), backoff.delay())
                continue
            self._full.ok()
            return

    def _append(self, b: Batch) -> None:
        payload = encode_batch(b)
        f = self._open_segment()
        frame = memoryview(HEADER.pack(len(payload), zlib.crc32(payload)) + payload)
        try:
            while frame:
                frame = frame[f.write(frame) or 0 :]
        except OSError:
            os.ftruncate(f.fileno(), self._wpos)  # no torn frame left behind
            raise
        self._wpos += HEADER.size + len(payload)
        self.bytes_on_disk += HEADER.size + len(payload)
        self.events_waiting += len(b)
        self._unsynced.append(b.ack)
        if self._wpos >= self.cfg.segment_bytes:
            f.flush()
            self.reader.writer_at(self._wseg, self._wpos)
            self._roll()

    async def _sync(self) -> None:
        f = self._wfile
        if f is not None:
            f.flush()
            if self.cfg.fsync != "never":
                await asyncio.to_thread(os.fsync, f.fileno())
            self.reader.writer_at(self._wseg, self._wpos)
        self._last_sync = time.monotonic()
        done, self._unsynced = self._unsynced, []
        for ack in done:  # durable now: the source may move on
            release(ack)

    def _schedule_sync(self) -> None:
        loop = asyncio.get_running_loop()

        async def later() -> None:
            await asyncio.sleep(self.cfg.fsync_interval)
            if self._unsynced:
                await self._sync()

        if not getattr(self, "_sync_pending", False):
            self._sync_pending = True
            task = loop.create_task(later())
            task.add_done_callback(lambda _: setattr(self, "_sync_pending", False))


class _Reader:
    """What the sink reads: frames turned back into batches (Channel-like: recv/recv_nowait)."""

    def __init__(self, buf: DiskBuffer) -> None:
        self.buf = buf
        self.seg = 1
        self.pos = 0
        self.file: BinaryIO | None = None
        self.limit: tuple[int, int] = (0, 0)  # (segment, offset) the writer has made readable
        self.replay_until = 0  # segments < this were written before this run
        self._ready = asyncio.Event()
        self.finished = False

    def start(self, ledger: tuple[int, int], first_new_segment: int) -> None:
        self.seg, self.pos = ledger
        self.replay_until = first_new_segment
        self.limit = (first_new_segment, 0)
        if self.buf.bytes_on_disk:
            self._ready.set()

    def writer_at(self, seg: int, pos: int) -> None:
        self.limit = (seg, pos)
        self._ready.set()

    def wake(self) -> None:
        self._ready.set()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def _next_segment(self) -> None:
        self.close()
        self.seg += 1
        self.pos = 0

    def _finish_segment(self) -> None:
        """Read to its end: once its frames are delivered the ledger passes it and it is deleted
        (not only when a frame of the next one is: on a full disk there may never be one)."""
        self.buf.acks.track((self.seg + 1, 0)).done()
        self._next_segment()

    def _skip(self, why: str, size: int) -> None:
        self.buf._errors.labels(self.buf.name, "buffer_corrupt").inc()
        log.error(
            "%s: disk buffer segment %s is damaged at offset %d (%s): skipping its last %d bytes; "
            "records there are lost",
            self.buf.name,
            seg_name(self.seg),
            self.pos,
            why,
            size,
        )
        self.buf.bytes_on_disk -= size
        self.buf.acks.track((self.seg + 1, 0)).done()
        self._next_segment()

    def _read_frame(self) -> Batch | None:
        """The next frame if one is readable now."""
        while True:
            if (self.seg, self.pos) >= self.limit and self.seg >= self.replay_until:
                return None
            path = self.buf.dir / seg_name(self.seg)
            if self.file is None:
                try:
                    self.file = open(path, "rb")  # noqa: SIM115
                except FileNotFoundError:
                    if self.seg < self.limit[0]:
                        self._finish_segment()
                        continue
                    return None
                self.file.seek(self.pos)
            size = os.fstat(self.file.fileno()).st_size
            end = size if self.seg < self.limit[0] or self.seg < self.replay_until else self.limit[1]
            if self.pos >= end:
                if self.seg < self.limit[0]:
                    self._finish_segment()
                    continue
                return None
            head = self.file.read(HEADER.size)
            if len(head) < HEADER.size:
                self._skip("torn frame header", end - self.pos)
                continue
            n, crc = HEADER.unpack(head)
            if self.pos + HEADER.size + n > end:
                self._skip(f"torn frame: {n} bytes announced", end - self.pos)
                continue
            payload = self.file.read(n)
            if zlib.crc32(payload) != crc:
                self._skip("checksum mismatch", end - self.pos)
                continue
            try:
                batch = decode_batch(payload)
            except (ValueError, KeyError, TypeError) as e:
                self._skip(f"undecodable frame: {e}", end - self.pos)
                continue
            self.pos += HEADER.size + n
            ledger = self.buf.acks.track((self.seg, self.pos))
            batch.ack = Ack(partial(self.buf.replayed, HEADER.size + n, len(batch), ledger))
            return batch

    def recv_nowait(self) -> Batch | None:
        return self._read_frame()

    async def recv(self) -> Batch | None:
        while True:
            b = self._read_frame()
            if b is not None:
                return b
            if self.buf.writer_done and (self.seg, self.pos) >= self.limit:
                self.finished = True
                return None
            self._ready.clear()
            await self._ready.wait()
