"""The datagram side every UDP/unixgram listener shares (collector/datagrams.py): what waits
undecoded is bounded, batches are taken at max_events or after the timeout, close ends it."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

from collector.datagrams import QUEUE_BYTES, DatagramQueue
from collector.listeners import parse_listen


def test_batches_come_at_max_events_or_after_the_timeout_and_close_ends_them():
    async def main() -> list[int]:
        q = DatagramQueue(max_events=10, timeout=0.05, rcvbuf=1 << 20)
        u = q.open(parse_listen("udp://127.0.0.1:0"))
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sizes = []
        for i in range(25):
            tx.sendto(b"m%d" % i, u.address)
        got: list[bytes] = []
        while len(got) < 25:
            items = await q.take()
            assert items is not None
            sizes.append(len(items))
            got += [d for d, _ in items]
        assert got == [b"m%d" % i for i in range(25)]  # in order, none lost
        q.close()
        assert await q.take() is None
        tx.close()
        return sizes

    sizes = asyncio.run(main())
    assert sum(sizes) == 25 and max(sizes) <= 25


def test_what_waits_undecoded_is_bounded_in_bytes_the_kernel_holds_the_rest(tmp_path: Path):
    """Big datagrams nobody takes: the listener pauses once QUEUE_BYTES wait (a syslog source
    had only a count bound: 4 x 2,000 datagrams of 64 KiB, 512 MB)."""

    async def main() -> tuple[int, bool, int]:
        q = DatagramQueue(max_events=100_000, timeout=1.0, rcvbuf=64 << 20)
        u = q.open(parse_listen(f"unixgram://{tmp_path / 'dgram.sock'}"))
        tx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        tx.setblocking(False)
        big = b"x" * 60_000
        sent = 0
        for _ in range(400):  # 24 MB offered
            try:
                tx.sendto(big, str(tmp_path / "dgram.sock"))
                sent += 1
            except BlockingIOError:  # the kernel's buffer is full: the sender waits (unix) or drops (UDP)
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)
        for _ in range(50):
            await asyncio.sleep(0.01)
        waiting, paused = q.pending_bytes, not u._reading
        items = await q.take()  # taking resumes reading
        resumed = u._reading
        q.close()
        tx.close()
        return waiting, paused and resumed, len(items or [])

    waiting, paused_then_resumed, taken = asyncio.run(main())
    assert QUEUE_BYTES <= waiting < QUEUE_BYTES + 256 * 65536  # at most one read burst past the bound
    assert paused_then_resumed
    assert taken * 60_000 == waiting
