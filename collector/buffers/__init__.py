"""Per-sink buffers: memory (a bounded channel) or disk (segment files plus a ledger).

Two contracts, both structural (``typing.Protocol``): a :class:`Buffer` is what the pipeline
owns for each sink (producers write to its ``inbox``, its ``tasks()`` run beside the sink, it is
opened before and closed after the run); a :class:`BufferReader` is the only part a sink sees.
``MemoryBuffer`` (memory.py) and ``DiskBuffer`` (disk.py) are the two implementations.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

if TYPE_CHECKING:
    from collector.buffers.memory import Channel
    from collector.event import Batch


class BufferReader(Protocol):
    """What a sink reads (``Sink.run(inbox)``): batches in order, None once the buffer is closed
    and drained. The sink finalizes each batch (``batch.ack``) once delivered or dead-lettered."""

    async def recv(self) -> Batch | None: ...

    def recv_nowait(self) -> Batch | None: ...


class Buffer(Protocol):
    """What a pipeline owns for each sink: where records wait between the components and the sink."""

    @property
    def inbox(self) -> Channel:
        """Where the upstream components write (a bounded channel: backpressure or drops)."""
        ...

    @property
    def reader(self) -> BufferReader:
        """What the sink reads."""
        ...

    def tasks(self) -> list[Coroutine[Any, Any, None]]:
        """Coroutines that run beside the sink for as long as the pipeline (writers, counters)."""
        ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    def pending_events(self) -> int:
        """Records waiting here now (collector_buffer_events)."""
        ...

    def stored_records(self) -> int:
        """Records kept here across a restart (0 for memory: what is in memory is in flight)."""
        ...


class BufferConfig(BaseModel):
    """How records wait for a sink: in memory, or on disk where they survive a crash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["memory", "disk"] = Field("memory", description="`memory` or `disk`.")
    max_events: int = Field(2048, ge=1, description="(memory) records held before the buffer counts as full.")
    max_bytes: int | None = Field(
        None,
        ge=1 << 16,
        description="Bytes held before full: default 32 MiB in memory, 1 GiB on disk.",
    )
    when_full: Literal["block", "drop_newest"] = Field(
        "block",
        description="`block`: pause the sources (tailing pauses, sockets stop being read); "
        "`drop_newest`: drop what arrives (counted).",
    )
    fsync: Literal["always", "interval", "never"] = Field(
        "interval",
        description="(disk) `always`: fsync before a batch counts as accepted; `interval`: at most every "
        "`fsync_interval` seconds, accepting batches only after it; `never`: leave it to the OS "
        "(survives a process crash, not a power loss).",
    )
    fsync_interval: float = Field(0.2, gt=0, le=10, description="(disk) seconds between fsyncs.")
    segment_bytes: int = Field(32 << 20, ge=1 << 16, description="(disk) size of one segment file.")

    @model_validator(mode="after")
    def _defaults(self) -> BufferConfig:
        if self.max_bytes is None:
            object.__setattr__(self, "max_bytes", (32 << 20) if self.type == "memory" else (1 << 30))
        return self

    @property
    def limit_bytes(self) -> int:
        assert self.max_bytes is not None
        return self.max_bytes
