"""A bounded in-memory channel of batches (the edge between two components), and the memory
buffer of a sink, which is one such channel.

Bounded by events and by bytes.  When full, ``send`` either waits (``block``: backpressure,
the source stops reading) or drops the batch (``drop_newest``: counted, and the batch is
finalized so a file source does not stall on it).  A batch larger than the whole capacity is
admitted when the channel is empty, so nothing can wedge.

The channel ends when every producer has called :meth:`close`; ``recv`` then drains what is
left and returns None.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import Any, Literal

from collector.acks import release
from collector.buffers import BufferConfig
from collector.event import Batch
from collector.telemetry import Telemetry

WhenFull = Literal["block", "drop_newest"]


class Channel:
    def __init__(
        self,
        name: str,
        max_events: int = 20_000,
        max_bytes: int = 32 << 20,
        when_full: WhenFull = "block",
        producers: int = 1,
    ) -> None:
        self.name = name
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.when_full = when_full
        self._q: deque[Batch] = deque()
        self.events = 0
        self.bytes = 0
        self._producers = producers
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        # statistics
        self.sent_batches = 0
        self.dropped_events = 0
        self.blocked_seconds = 0.0

    def add_producer(self) -> None:
        self._producers += 1

    @property
    def closed(self) -> bool:
        return self._producers <= 0

    def _full(self) -> bool:
        return bool(self._q) and (self.events >= self.max_events or self.bytes >= self.max_bytes)

    async def send(self, batch: Batch) -> bool:
        """Queue ``batch``; False when it was dropped (``drop_newest`` on a full channel)."""
        if self._full():
            if self.when_full == "drop_newest":
                self.dropped_events += len(batch)
                release(batch.ack, failed=len(batch))
                return False
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            while self._full():
                self._not_full.clear()
                await self._not_full.wait()
            self.blocked_seconds += loop.time() - t0
        self._put(batch)
        return True

    def send_nowait(self, batch: Batch) -> bool:
        """Queue without waiting; False (batch untouched) when full."""
        if self._full():
            return False
        self._put(batch)
        return True

    def _put(self, batch: Batch) -> None:
        self._q.append(batch)
        self.events += len(batch)
        self.bytes += batch.nbytes
        self.sent_batches += 1
        self._not_empty.set()

    def has_room(self) -> bool:
        return not self._full()

    async def wait_room(self) -> None:
        while self._full():
            self._not_full.clear()
            await self._not_full.wait()

    async def recv(self) -> Batch | None:
        """The next batch, or None once closed and drained."""
        while not self._q:
            if self.closed:
                return None
            self._not_empty.clear()
            await self._not_empty.wait()
        return self._take()

    def recv_nowait(self) -> Batch | None:
        return self._take() if self._q else None

    def _take(self) -> Batch:
        batch = self._q.popleft()
        self.events -= len(batch)
        self.bytes -= batch.nbytes
        if not self._full():
            self._not_full.set()
        return batch

    def close(self) -> None:
        """One producer is finished."""
        self._producers -= 1
        self._not_empty.set()

    def __len__(self) -> int:
        return len(self._q)


class MemoryBuffer:
    """The in-memory buffer of a sink: one bounded channel (producers write, the sink reads)."""

    def __init__(self, name: str, bcfg: BufferConfig, telemetry: Telemetry) -> None:
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

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
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

    def stored_records(self) -> int:
        """Records kept here across a restart: none (what is in memory is counted in flight)."""
        return 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        self._flush_drops()
