"""Acknowledgements: how a source learns that what it emitted is safe, and how it ended.

Every batch carries an :class:`Ack`, a reference count.  Each holder of the batch (a sink, a
disk buffer, a fan-out branch) owns one reference; a holder calls :meth:`Ack.done` once when
the records are *finalized*, saying how: ``done()`` (delivered, written to a disk buffer, or
deliberately dropped by a filter: control flow, counted there), ``done(rejected=n)`` (``n``
records dead-lettered with their reason: kept, never retried) or ``done(failed=n)`` (``n``
records lost on purpose and counted: ``drop_newest`` on a full buffer, a UDP send that
failed).  A batch that is retried is not finalized; if the process stops first, ``done`` is
never called and the source replays it.

When the last reference is released the callback runs with the Ack itself: ``ack.status``
(:class:`Status`, the worst outcome) and ``ack.rejected`` / ``ack.failed`` (records, summed
over the holders: a record two sinks both reject counts twice).  The same Ack groups: one
made with ``holders=n`` completes when ``n`` parts are done, carrying their summed outcome;
:meth:`Ack.pass_on` hands a completed Ack's outcome to the Ack it stands for (the disk
buffer's replayed frame, the forward source's chunk).  A holder may take several references
(the Elasticsearch sink takes one per record) and release them together: ``done(n)``.

Sources that need ordered progress (a file offset, a forward-protocol chunk) use
:class:`OrderedAcks`: it advances only over a contiguous prefix of finalized batches, so
completions that arrive out of order (several bulk requests in flight) never move a
checkpoint past a hole.

Threads: an Ack is done on the thread that made it, the event loop's (no lock on the hot
path).  ``done()`` from another thread raises; a component finalizing from a worker thread
uses :func:`done_threadsafe`, which hands the call to the loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import IntEnum
from functools import partial
from threading import get_ident
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    import asyncio

    from collector.event import Batch

P = TypeVar("P")  # a position: a file offset, a (segment, offset) pair, a cursor


class Status(IntEnum):
    """How a batch's records were finalized; ordered, so a group carries the worst of its parts."""

    DELIVERED = 0  # delivered, stored by a disk buffer, or filtered out on purpose
    REJECTED = 1  # some were dead-lettered: kept with their reason, never retried
    FAILED = 2  # some were lost on purpose and counted (drop_newest, a failed UDP send)


class Ack:
    """A reference-counted completion handle shared by every copy of one batch (or by the parts
    of a group), carrying the outcome its holders reported."""

    __slots__ = ("_callback", "_pending", "_thread", "failed", "rejected")

    def __init__(self, callback: Callable[[Ack], object] | None = None, holders: int = 1) -> None:
        if holders < 1:
            raise ValueError("an Ack needs at least one holder")
        self._pending = holders
        self._callback = callback
        self._thread = get_ident()
        self.rejected = 0  # records dead-lettered by a holder
        self.failed = 0  # records lost on purpose by a holder

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def status(self) -> Status:
        if self.failed:
            return Status.FAILED
        return Status.REJECTED if self.rejected else Status.DELIVERED

    def retain(self, n: int = 1) -> None:
        """Add ``n`` holders (fan-out to ``n`` more consumers, or a split batch)."""
        if self._pending <= 0:
            raise RuntimeError("retain() on a completed Ack")
        self._pending += n

    def done(self, n: int = 1, *, rejected: int = 0, failed: int = 0) -> None:
        """``n`` references are finalized; ``rejected``/``failed`` records among them (see module)."""
        if get_ident() != self._thread:
            raise RuntimeError("Ack.done() from another thread: use acks.done_threadsafe()")
        if not 0 < n <= self._pending:
            raise RuntimeError(f"Ack.done({n}) with {self._pending} reference(s) left: released more often than held")
        if rejected:
            self.rejected += rejected
        if failed:
            self.failed += failed
        self._pending -= n
        if self._pending == 0:
            cb, self._callback = self._callback, None
            if cb is not None:
                cb(self)

    def pass_on(self, to: Ack) -> None:
        """Release one reference of ``to`` with this (completed) Ack's outcome."""
        to.done(rejected=self.rejected, failed=self.failed)

    def then(self, fn: Callable[[Ack], object]) -> None:
        """Also run ``fn`` when the last holder is done (after the callback given at creation)."""
        cb = self._callback
        if cb is None:
            self._callback = fn
        else:

            def both(ack: Ack) -> None:
                cb(ack)
                fn(ack)

            self._callback = both


def release(ack: Ack | None, *, rejected: int = 0, failed: int = 0) -> None:
    """``ack.done(...)`` for a batch that may carry no Ack."""
    if ack is not None:
        ack.done(rejected=rejected, failed=failed)


def done_threadsafe(
    loop: asyncio.AbstractEventLoop, ack: Ack | None, n: int = 1, *, rejected: int = 0, failed: int = 0
) -> None:
    """Finalize from a worker thread: the Ack is done on ``loop``'s thread, soon."""
    if ack is not None:
        loop.call_soon_threadsafe(partial(ack.done, n, rejected=rejected, failed=failed))


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
    moves.  ``rejected`` and ``failed`` sum the outcomes of every batch finalized so far.
    """

    __slots__ = ("_queue", "committed", "failed", "on_commit", "rejected")

    def __init__(self, committed: P, on_commit: Callable[[P], object] | None = None) -> None:
        self.committed = committed
        self.on_commit = on_commit
        self.rejected = 0
        self.failed = 0
        self._queue: deque[_Tracked[P]] = deque()

    def track(self, position: P) -> Ack:
        entry = _Tracked(position)
        self._queue.append(entry)

        def finalize(ack: Ack) -> None:
            if ack.rejected or ack.failed:
                self.rejected += ack.rejected
                self.failed += ack.failed
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

        def finalized(_: Ack) -> None:
            self.records -= n

        if batch.ack is None:
            batch.ack = Ack(finalized)
        else:
            batch.ack.then(finalized)
