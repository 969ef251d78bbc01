"""Acknowledgements: how a source learns that what it emitted is safe.

Every batch carries an :class:`Ack`.  Each holder of the batch (a sink, a disk buffer, a
fan-out branch) owns one reference; a holder calls :meth:`Ack.done` exactly once when the
records are *finalized*: delivered, written to a disk buffer, dead-lettered with their reason,
or deliberately dropped by a filter (control flow, counted).  A batch that is retried is not
finalized; if the process stops first, ``done`` is never called and the source replays it.

When the last reference is released the source's callback runs.  Sources that need ordered
progress (a file offset, a forward-protocol chunk) use :class:`OrderedAcks`: it advances
only over a contiguous prefix of finalized batches, so completions that arrive out of order
(several bulk requests in flight) never move a checkpoint past a hole.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from collector.event import Batch

P = TypeVar("P")  # a position: a file offset, a (segment, offset) pair, a cursor


class Status(Enum):
    DELIVERED = "delivered"
    RETRY = "retry"
    REJECTED = "rejected"


class Ack:
    """A reference-counted completion handle shared by every copy of one batch."""

    __slots__ = ("_callback", "_pending", "rejected")

    def __init__(self, callback: Callable[[], object] | None = None) -> None:
        self._pending = 1
        self._callback = callback
        self.rejected = 0  # records finalized by dead-lettering rather than delivery

    @property
    def pending(self) -> int:
        return self._pending

    def retain(self, n: int = 1) -> None:
        """Add ``n`` holders (fan-out to ``n`` more consumers, or a split batch)."""
        if self._pending <= 0:
            raise RuntimeError("retain() on a completed Ack")
        self._pending += n

    def done(self) -> None:
        """One holder has finalized its records."""
        self._pending -= 1
        if self._pending == 0:
            cb, self._callback = self._callback, None
            if cb is not None:
                cb()
        elif self._pending < 0:
            raise RuntimeError("Ack.done() called more often than retained")

    def then(self, fn: Callable[[], object]) -> None:
        """Also run ``fn`` when the last holder is done (after the callback given at creation)."""
        cb = self._callback
        if cb is None:
            self._callback = fn
        else:

            def both() -> None:
                cb()
                fn()

            self._callback = both


def release(ack: Ack | None) -> None:
    if ack is not None:
        ack.done()


class _Tracked(Generic[P]):
    __slots__ = ("done", "position")

    def __init__(self, position: P) -> None:
        self.position = position
        self.done = False


class OrderedAcks(Generic[P]):
    """Contiguous progress over a sequence of batches finalized in any order.

    ``track(position)`` registers the next batch, which ends at ``position`` (an offset, a
    sequence number); it returns the Ack to attach to that batch.  ``committed`` is the
    position after the longest prefix of finalized batches; ``on_commit`` runs whenever it
    moves.
    """

    __slots__ = ("_queue", "committed", "on_commit")

    def __init__(self, committed: P, on_commit: Callable[[P], object] | None = None) -> None:
        self.committed = committed
        self.on_commit = on_commit
        self._queue: deque[_Tracked[P]] = deque()

    def track(self, position: P) -> Ack:
        entry = _Tracked(position)
        self._queue.append(entry)

        def finalize() -> None:
            entry.done = True
            self._advance()

        return Ack(finalize)

    def _advance(self) -> None:
        q = self._queue
        moved = False
        while q and q[0].done:
            self.committed = q.popleft().position
            moved = True
        if moved and self.on_commit is not None:
            self.on_commit(self.committed)

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def reset(self, committed: P) -> None:
        """Forget what is in flight (e.g. the file was truncated) and restart at ``committed``."""
        for entry in self._queue:
            entry.done = True  # late completions become no-ops on an emptied queue
        self._queue = deque()
        self.committed = committed


class InFlight:
    """Records the sources emitted that are not finalized yet: what exit code 3 is about.

    Every batch leaving a source is counted here (given an Ack when it has none), and uncounted
    when its last holder finalizes it; what is left when the process stops was not delivered.
    """

    __slots__ = ("records",)

    def __init__(self) -> None:
        self.records = 0

    def track(self, batch: Batch) -> None:
        n = len(batch)
        self.records += n

        def finalized() -> None:
            self.records -= n

        if batch.ack is None:
            batch.ack = Ack(finalized)
        else:
            batch.ack.then(finalized)
