"""The memory channel: drop_newest finalizes what it drops, and says so to the source."""

from __future__ import annotations

import asyncio

from collector.acks import Ack, Status
from collector.buffers.memory import Channel
from collector.event import Batch, Fields


def test_drop_newest_finalizes_the_dropped_batch_as_failed():
    got: list[tuple[int, Status, int]] = []

    def batch(i: int) -> Batch:
        events = [{"message": f"b{i} r{j}"} for j in range(3)]
        return Batch(events, Fields({}), ack=Ack(lambda ack: got.append((i, ack.status, ack.failed))))

    async def main() -> list[bool]:
        ch = Channel("c", max_events=3, when_full="drop_newest")
        taken = [await ch.send(batch(0)), await ch.send(batch(1))]  # the second does not fit
        b = await ch.recv()
        assert b is not None and b.ack is not None
        b.ack.done()
        return taken

    assert asyncio.run(main()) == [True, False]
    assert sorted(got) == [(0, Status.DELIVERED, 0), (1, Status.FAILED, 3)]
