"""Sink ``file``: NDJSON, one record per line, exactly the documents Elasticsearch would receive.

Batches are acknowledged only once written and, as ``fsync`` says (the disk buffer's values),
synced: ``always`` (the default): everything that is available is written, then one fsync, then
every batch of the round is acknowledged, so the cost of fsync is shared by all the records of a
busy moment; ``interval``: at most one fsync every ``fsync_interval`` seconds, batches acknowledged
only after it; ``never``: acknowledged once written (survives a crash of the collector, not of the
machine).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import ClassVar, Literal

from pydantic import Field

from collector.acks import release
from collector.buffers import BufferReader
from collector.component import Context, Sink, SinkConfig
from collector.event import Batch

MAX_ROUND_EVENTS = 2048
MAX_ROUND_BYTES = 8 << 20  # a round's records, encoded at once (large records: a few per round)


class FileConfig(SinkConfig):
    type: Literal["file"]
    destination_keys: ClassVar[tuple[str, ...] | None] = ("path",)
    path: str = Field(description="File to append NDJSON records to (created with its directory).")
    fsync: Literal["always", "interval", "never"] = Field(
        "always",
        description="`always`: fsync before acknowledging (what survives a power loss); `interval`: at most "
        "every `fsync_interval` seconds, acknowledging only after it; `never`: acknowledge once written "
        "(survives a collector crash, not a power loss).",
    )
    fsync_interval: float = Field(0.2, gt=0, le=10, description="(fsync: interval) seconds between fsyncs.")


async def drain(
    inbox: BufferReader, first: Batch, limit: int = MAX_ROUND_EVENTS, limit_bytes: int = MAX_ROUND_BYTES
) -> list[Batch]:
    """``first`` plus whatever else is already waiting, up to ``limit`` records and about
    ``limit_bytes``."""
    batches = [first]
    n = len(first)
    size = first.nbytes
    while n < limit and size < limit_bytes:
        b = inbox.recv_nowait()
        if b is None:
            break
        batches.append(b)
        n += len(b)
        size += b.nbytes
    return batches


class FileSink(Sink):
    config: FileConfig

    def __init__(self, name: str, config: FileConfig, ctx: Context) -> None:
        super().__init__(name, config, ctx)

    @staticmethod
    def _write(fd: int, data: bytes, sync: bool) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if sync:
            os.fsync(fd)

    async def run(self, inbox: BufferReader) -> None:
        path = os.path.expanduser(self.config.path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.mark_reached(f"appending to {path}")
        mode = self.config.fsync
        every = self.config.fsync_interval
        unsynced: list[Batch] = []  # (interval) written, acknowledged at the next fsync
        last_sync = time.monotonic()
        try:
            while True:
                wait = None if not unsynced else max(0.0, last_sync + every - time.monotonic())
                try:
                    first = await asyncio.wait_for(inbox.recv(), wait)
                except TimeoutError:  # nothing more came: sync what waits
                    first = None
                if first is None:
                    if unsynced:
                        await asyncio.to_thread(os.fsync, fd)
                        last_sync = time.monotonic()
                        for b in unsynced:
                            release(b.ack)
                        unsynced = []
                        continue  # the inbox says again whether it has ended
                    break
                batches = await drain(inbox, first)
                lines = [line for b in batches for line in b.encoded()]
                lines.append(b"")
                data = b"\n".join(lines)
                del lines
                sync = mode == "always" or (mode == "interval" and time.monotonic() - last_sync >= every)
                with self.meter.request():
                    await asyncio.to_thread(self._write, fd, data, sync)
                self.meter.delivered(sum(len(b) for b in batches))
                if mode == "interval" and not sync:
                    unsynced += batches
                    continue
                if sync:
                    last_sync = time.monotonic()
                for b in [*unsynced, *batches]:
                    release(b.ack)
                unsynced = []
        finally:
            os.close(fd)
