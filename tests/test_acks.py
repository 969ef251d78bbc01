from __future__ import annotations

import asyncio
import threading

import pytest

from collector.acks import Ack, InFlight, OrderedAcks, Status, done_threadsafe, release
from collector.event import Batch, Fields


def test_ack_fires_once_all_holders_are_done():
    fired: list[Ack] = []
    a = Ack(fired.append)
    a.retain(2)
    a.done()
    a.done()
    assert fired == []
    a.done()
    assert fired == [a] and a.status is Status.DELIVERED
    with pytest.raises(RuntimeError):
        a.done()


def test_the_outcome_reaches_the_callback_summed_over_holders_worst_status_wins():
    fired: list[tuple[Status, int, int]] = []
    a = Ack(lambda ack: fired.append((ack.status, ack.rejected, ack.failed)))
    a.retain(2)  # three holders: a sink delivering, one dead-lettering 2 records, one dropping 1
    a.done()
    a.done(rejected=2)
    assert fired == []
    release(a, failed=1)
    assert fired == [(Status.FAILED, 2, 1)]
    b = Ack(lambda ack: fired.append((ack.status, ack.rejected, ack.failed)))
    b.done(rejected=3)
    assert fired[-1] == (Status.REJECTED, 3, 0)
    assert Status.DELIVERED < Status.REJECTED < Status.FAILED


def test_a_group_completes_when_all_its_parts_do_carrying_their_outcome():
    got: list[Ack] = []
    group = Ack(got.append, holders=3)
    parts = [Ack(lambda ack: ack.pass_on(group)) for _ in range(3)]
    parts[2].done(rejected=1)
    parts[0].done()
    assert got == [] and group.pending == 1
    parts[1].done()
    assert got == [group] and group.status is Status.REJECTED and group.rejected == 1


def test_several_references_released_together():
    """A holder that took one reference per record (the Elasticsearch sink) releases them at once."""
    got: list[Ack] = []
    a = Ack(got.append)
    a.retain(9)  # ten records
    a.done(7)
    a.done(3, rejected=3)
    assert got == [a] and a.rejected == 3


def test_misuse_raises():
    a = Ack()
    with pytest.raises(RuntimeError):
        a.done(2)  # more than it holds
    a.done()
    with pytest.raises(RuntimeError):
        a.done()  # completed
    with pytest.raises(RuntimeError):
        a.retain()
    with pytest.raises(ValueError):
        Ack(holders=0)
    with pytest.raises(RuntimeError):
        Ack().done(0)


def test_done_from_another_thread_raises_and_done_threadsafe_hands_it_to_the_loop():
    """The rule is one: an Ack is done on the loop's thread (no lock on the hot path). A sink's
    worker thread finalizing directly is refused loudly, never a silent race on the count."""

    async def main() -> tuple[list[BaseException], list[tuple[Status, int]], int, int]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[Status, int]] = []
        thread_of: list[int] = []

        def cb(ack: Ack) -> None:
            fired.append((ack.status, ack.rejected))
            thread_of.append(threading.get_ident())

        a = Ack(cb)
        a.retain(2)
        errors: list[BaseException] = []
        pending_after_refusal: list[int] = []

        def worker() -> None:
            try:
                a.done()
            except RuntimeError as e:
                errors.append(e)
            pending_after_refusal.append(a.pending)
            done_threadsafe(loop, a)
            done_threadsafe(loop, a, rejected=5)
            done_threadsafe(loop, None)  # a batch without an Ack: nothing to do

        await asyncio.to_thread(worker)
        assert pending_after_refusal == [3]  # the refused call changed nothing
        a.done()
        while a.pending:
            await asyncio.sleep(0)
        return errors, fired, thread_of[0], threading.get_ident()

    errors, fired, cb_thread, loop_thread = asyncio.run(main())
    assert len(errors) == 1 and "another thread" in str(errors[0])
    assert fired == [(Status.REJECTED, 5)]
    assert cb_thread == loop_thread


def test_ordered_acks_advance_only_over_a_contiguous_prefix():
    commits: list[int] = []
    oa = OrderedAcks(0, commits.append)
    a1, a2, a3 = oa.track(10), oa.track(20), oa.track(30)
    a3.done()
    a2.done()
    assert oa.committed == 0 and commits == []  # 10 is still in flight: a hole
    a1.done()
    assert oa.committed == 30 and commits == [30]


def test_ordered_acks_count_how_their_batches_ended():
    """What a file source can say per file: records dead-lettered or dropped downstream."""
    oa = OrderedAcks(0)
    oa.track(10).done(rejected=2)
    oa.track(20).done()
    oa.track(30).done(failed=1)
    assert (oa.committed, oa.rejected, oa.failed) == (30, 2, 1)


def test_reset_forgets_in_flight_batches():
    oa = OrderedAcks(0)
    old = oa.track(100)
    oa.reset(0)
    new = oa.track(5)
    old.done()  # a late completion from before the reset changes nothing
    assert oa.committed == 0
    new.done()
    assert oa.committed == 5


def test_in_flight_counts_until_finalized_keeping_the_outcome():
    got: list[Ack] = []
    inflight = InFlight()
    b = Batch([{"message": "a"}, {"message": "b"}], Fields({}), ack=Ack(got.append))
    inflight.track(b)
    assert inflight.records == 2
    assert b.ack is not None
    b.ack.done(rejected=1)
    assert inflight.records == 0 and got[0].status is Status.REJECTED
