"""What a component reads (feed.py): a sink's feed ends on demand without taking anything, and a
sink's ``wait_for(inbox.recv(), t)`` timing out in the very moment a batch arrives loses nothing."""

from __future__ import annotations

import asyncio

from collector.buffers.memory import Channel
from collector.event import Batch, Fields
from collector.feed import SinkFeed


def batch(i: int) -> Batch:
    return Batch([{"message": f"m{i}"}], Fields({}), ids=[str(i)], tag="t", source="s")


def test_a_recv_cancelled_as_its_batch_arrives_hands_that_batch_to_the_next_recv():
    async def go() -> list[str]:
        ch = Channel("c", producers=1)
        feed = SinkFeed(ch)
        waiting = asyncio.create_task(feed.recv())
        await asyncio.sleep(0)  # blocked: nothing in the channel
        ch.send_nowait(batch(1))
        await asyncio.sleep(0)  # the channel's reader took it; the feed has not resumed yet
        waiting.cancel()  # as wait_for's timeout does at that moment
        try:
            await waiting
        except asyncio.CancelledError:
            pass
        got = feed.recv_nowait()
        return [] if got is None else got.ids

    assert asyncio.run(go()) == ["1"]


def test_an_ended_feed_reads_end_of_input_and_takes_nothing_then_resumes_in_order():
    async def go() -> tuple[object, list[str]]:
        ch = Channel("c", producers=1)
        feed = SinkFeed(ch)
        waiting = asyncio.create_task(feed.recv())
        await asyncio.sleep(0)
        feed.end()
        ended = await waiting
        ch.send_nowait(batch(1))
        assert await feed.recv() is None and feed.recv_nowait() is None  # ended: nothing taken
        feed.resume()
        ch.send_nowait(batch(2))
        ch.close()
        ids = []
        while (b := await feed.recv()) is not None:
            ids += b.ids
        return ended, ids

    assert asyncio.run(go()) == (None, ["1", "2"])
