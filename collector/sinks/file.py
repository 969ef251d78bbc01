"""Sink ``file``: NDJSON, one record per line, exactly the documents Elasticsearch would receive.

Batches are acknowledged only once written and (with ``fsync: true``, the default) synced:
everything that is available is written, then one fsync, then every batch of the round is
acknowledged, so the cost of fsync is shared by all the records of a busy moment.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, ClassVar, Literal

from pydantic import Field

from collector.acks import release
from collector.buffers import BufferReader
from collector.component import Sink, SinkConfig
from collector.event import Batch

MAX_ROUND_EVENTS = 2048
MAX_ROUND_BYTES = 8 << 20  # a round's records, encoded at once (large records: a few per round)


class FileConfig(SinkConfig):
    type: Literal["file"]
    destination_keys: ClassVar[tuple[str, ...] | None] = ("path",)
    path: str = Field(description="File to append NDJSON records to (created with its directory).")
    fsync: bool = Field(True, description="fsync before acknowledging (what survives a power loss).")


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

    def __init__(self, name: str, config: FileConfig, ctx: Any) -> None:
        super().__init__(name, config, ctx)

    def _write(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        if self.config.fsync:
            os.fsync(fd)

    async def run(self, inbox: BufferReader) -> None:
        path = os.path.expanduser(self.config.path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.mark_reached(f"appending to {path}")
        try:
            while (first := await inbox.recv()) is not None:
                batches = await drain(inbox, first)
                lines = [line for b in batches for line in b.encoded()]
                lines.append(b"")
                data = b"\n".join(lines)
                del lines
                with self.meter.request():
                    await asyncio.to_thread(self._write, fd, data)
                self.meter.delivered(sum(len(b) for b in batches))
                for b in batches:
                    release(b.ack)
        finally:
            os.close(fd)
