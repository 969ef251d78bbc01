"""The disk buffer: durable before acknowledged, replayed after a crash, corruption is not fatal."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

from collector.acks import Ack, Status
from collector.buffers import BufferConfig
from collector.buffers.disk import DiskBuffer
from collector.event import Batch, Fields
from collector.telemetry import Telemetry


def batch(i: int, n: int = 3, acked: list | None = None) -> Batch:
    ack = Ack(lambda _: acked.append(i)) if acked is not None else None
    events = [{"message": f"b{i} r{j}", "@timestamp": "2024-05-01T00:00:00Z"} for j in range(n)]
    return Batch(
        events, Fields({"container": {"id": "c"}}), ids=[f"{i}-{j}" for j in range(n)], ack=ack, tag=f"t{i}", source="s"
    )


def make(tmp_path, **cfg) -> DiskBuffer:
    return DiskBuffer("sink", tmp_path / "buf", BufferConfig(type="disk", **cfg), Telemetry())


async def drain(buf: DiskBuffer, ack: bool = True) -> list[Batch]:
    out = []
    while (b := await buf.reader.recv()) is not None:
        out.append(b)
        if ack:
            b.ack.done()
    return out


def run(coro):
    return asyncio.run(coro)


def test_batches_round_trip_and_sources_are_acked_once_on_disk(tmp_path):
    async def main():
        buf = make(tmp_path, fsync="always")
        await buf.open()
        buf.inbox.add_producer()
        acked: list[int] = []
        tasks = [asyncio.create_task(c) for c in buf.tasks()]
        for i in range(5):
            await buf.inbox.send(batch(i, acked=acked))
        buf.inbox.close()
        got = await drain(buf)
        await asyncio.gather(*tasks)
        await buf.close()
        return acked, got

    acked, got = run(main())
    assert acked == [0, 1, 2, 3, 4]
    assert [b.events[0]["message"] for b in got] == [f"b{i} r0" for i in range(5)]
    # replayed as the documents the sink would have sent: shared fields merged in, ids kept
    assert next(got[2].records()) == {
        "message": "b2 r0",
        "@timestamp": "2024-05-01T00:00:00Z",
        "container": {"id": "c"},
    }
    assert got[2].encoded()[0] == b'{"message":"b2 r0","@timestamp":"2024-05-01T00:00:00Z","container":{"id":"c"}}'
    assert got[2].ids == ["2-0", "2-1", "2-2"]
    assert got[2].tag == "t2"
    # delivered everything: the ledger is at the end, nothing is replayed
    assert run(_replay_only(tmp_path)) == []


async def _replay_only(tmp_path) -> list[str]:
    buf = make(tmp_path)
    await buf.open()
    buf.inbox.add_producer()
    buf.inbox.close()  # nothing new: only what the disk holds
    tasks = [asyncio.create_task(c) for c in buf.tasks()]
    got = await drain(buf)
    await asyncio.gather(*tasks)
    await buf.close()
    return [b.events[0]["message"] for b in got]


def test_unacknowledged_batches_are_replayed_after_a_restart(tmp_path):
    async def first():
        buf = make(tmp_path)
        await buf.open()
        buf.inbox.add_producer()
        tasks = [asyncio.create_task(c) for c in buf.tasks()]
        for i in range(4):
            await buf.inbox.send(batch(i))
        buf.inbox.close()
        got = []
        while (b := await buf.reader.recv()) is not None:
            got.append(b)
        got[0].ack.done()  # delivered: batch 0; 2 also, but 1 is still in flight -> ledger stops after 0
        got[2].ack.done()
        await asyncio.gather(*tasks)
        await buf.close()

    run(first())
    assert run(_replay_only(tmp_path)) == ["b1 r0", "b2 r0", "b3 r0"]


WRITER = textwrap.dedent("""
    import asyncio, sys
    sys.path.insert(0, sys.argv[2])
    from tests.buffers.test_disk import batch, make
    from pathlib import Path
    async def main():
        buf = make(Path(sys.argv[1]), fsync="always")
        await buf.open()
        buf.inbox.add_producer()
        acked = []
        tasks = [asyncio.create_task(c) for c in buf.tasks()]
        i = 0
        while True:
            await buf.inbox.send(batch(i, 50, acked))
            await asyncio.sleep(0)
            if acked:
                print(acked[-1], flush=True)
            i += 1
    asyncio.run(main())
""")


def test_survives_kill_9_everything_acknowledged_to_sources_is_replayed(tmp_path):
    from tests.helpers import REPO

    p = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(REPO)], stdout=subprocess.PIPE, text=True)
    last = -1
    for line in p.stdout:
        last = int(line)
        if last >= 300:
            break
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    replayed = run(_replay_only(tmp_path))
    numbers = [int(m.split()[0][1:]) for m in replayed]
    assert numbers[: last + 1] == list(range(last + 1))  # every batch a source saw acknowledged is there


def test_a_torn_tail_is_reported_and_skipped_not_fatal(tmp_path, caplog):
    async def fill():
        buf = make(tmp_path)
        await buf.open()
        buf.inbox.add_producer()
        tasks = [asyncio.create_task(c) for c in buf.tasks()]
        for i in range(3):
            await buf.inbox.send(batch(i))
        buf.inbox.close()
        await tasks[0]
        await buf.close()
        for t in tasks[1:]:
            t.cancel()

    run(fill())
    seg = sorted((tmp_path / "buf").glob("*.seg"))[-1]
    data = seg.read_bytes()
    seg.write_bytes(data[:-10])  # the last frame was being written when the machine died
    caplog.set_level("ERROR")
    assert run(_replay_only(tmp_path)) == ["b0 r0", "b1 r0"]
    assert any("damaged" in r.getMessage() and seg.name in r.getMessage() for r in caplog.records)


def test_a_corrupt_frame_costs_its_segment_not_the_buffer(tmp_path):
    async def fill(start):
        buf = make(tmp_path, segment_bytes=1 << 16)
        await buf.open()
        buf.inbox.add_producer()
        tasks = [asyncio.create_task(c) for c in buf.tasks()]
        for i in range(start, start + 2):
            await buf.inbox.send(batch(i))
        buf.inbox.close()
        await tasks[0]
        await buf.close()
        for t in tasks[1:]:
            t.cancel()

    run(fill(0))
    run(fill(10))  # a second run writes a second segment
    segs = sorted((tmp_path / "buf").glob("*.seg"))
    assert len(segs) == 2
    raw = bytearray(segs[0].read_bytes())
    raw[20] ^= 0xFF  # flip a byte inside the first frame
    segs[0].write_bytes(bytes(raw))
    assert run(_replay_only(tmp_path)) == ["b10 r0", "b11 r0"]


def test_when_full_block_pauses_the_producer_until_delivery_frees_room(tmp_path):
    async def main():
        buf = make(tmp_path, max_bytes=1 << 16, fsync="never")
        await buf.open()
        buf.inbox.add_producer()
        tasks = [asyncio.create_task(c) for c in buf.tasks()]
        big = [batch(i, 100) for i in range(200)]  # ~10 KB each: more than the inbox and the disk hold
        sent = 0

        async def produce():
            nonlocal sent
            for b in big:
                await buf.inbox.send(b)
                sent += 1
            buf.inbox.close()

        prod = asyncio.create_task(produce())
        deadline = time.monotonic() + 60
        while buf.bytes_on_disk < (1 << 16) - 20_000:  # until the disk part is full
            assert time.monotonic() < deadline, f"the buffer did not fill up: {buf.bytes_on_disk} bytes"
            await asyncio.sleep(0.01)
        for _ in range(200):  # the producer gets every chance to go on, and cannot
            await asyncio.sleep(0)
        stalled_at = sent
        for _ in range(200):
            await asyncio.sleep(0)
        assert sent == stalled_at < 200  # blocked: the disk is full and nothing is delivered
        assert buf.bytes_on_disk <= (1 << 16) + 20_000
        got = await drain(buf)
        await prod
        await asyncio.gather(*tasks)
        await buf.close()
        return got

    assert len(run(main())) == 200


def test_when_full_drop_newest_counts_what_it_drops(tmp_path):
    async def main():
        tel = Telemetry()
        buf = DiskBuffer(
            "sink",
            tmp_path / "buf",
            BufferConfig(type="disk", max_bytes=1 << 16, when_full="drop_newest", fsync="never"),
            tel,
        )
        await buf.open()
        buf.inbox.add_producer()
        tasks = [asyncio.create_task(c) for c in buf.tasks()]
        acked: list[tuple[int, Status, int]] = []  # batch, how it ended, records failed
        for i in range(40):
            b = batch(i, 100)
            b.ack = Ack(lambda ack, i=i: acked.append((i, ack.status, ack.failed)))
            await buf.inbox.send(b)
        buf.inbox.close()
        await tasks[0]
        dropped = tel.value("collector_events_dropped_total", reason="buffer_full")
        got = await drain(buf)
        await asyncio.gather(*tasks)
        await buf.close()
        return dropped, got, acked

    dropped, got, acked = run(main())
    assert dropped > 0
    assert dropped + sum(len(b) for b in got) == 40 * 100
    assert len(acked) == 40  # dropped batches are finalized too: a file source does not stall
    # and the source hears which: stored ones delivered (to the buffer), dropped ones failed
    kept = {int(b.tag[1:]) for b in got}
    assert sorted(i for i, st, _ in acked if st is Status.DELIVERED) == sorted(kept)
    assert {(st, n) for i, st, n in acked if i not in kept} == {(Status.FAILED, 100)}


# -- a full disk ----------------------------------------------------------------------------------
def test_a_full_disk_blocks_then_delivered_segments_make_room(small_disk, caplog):
    """Less room on the disk than the data: the writer waits (sources pause), segments already
    delivered are deleted and writing resumes; no torn frame, nothing lost, in order. It died
    with OSError [Errno 28] and everything behind it stalled."""
    small_disk.fill()
    os.truncate(small_disk.filler, small_disk.filler.stat().st_size - 200_000)  # 200 kB left
    tel = Telemetry()
    cfg = BufferConfig(type="disk", segment_bytes=1 << 16, fsync="never")
    buf = DiskBuffer("sink", small_disk.path / "buf", cfg, tel)

    async def main():
        await buf.open()
        buf.inbox.add_producer()
        tasks = [asyncio.create_task(c) for c in buf.tasks()]
        acked: list[int] = []

        async def produce():
            for i in range(300):
                await buf.inbox.send(batch(i, 50, acked))
            buf.inbox.close()

        producer = asyncio.create_task(produce())
        while os.statvfs(small_disk.path).f_bavail > 0 and not tasks[0].done():  # full, nothing delivered yet
            await asyncio.sleep(0.01)
        got = await drain(buf)
        await asyncio.gather(producer, *tasks)
        await buf.close()
        return got, acked

    caplog.set_level("INFO")
    got, acked = run(main())
    assert [b.events[0]["message"] for b in got] == [f"b{i} r0" for i in range(300)]
    assert acked == list(range(300))
    assert tel.value("collector_errors_total", reason="buffer_corrupt") == 0
    assert caplog.text.count("DISK FULL: cannot write the disk buffer of 'sink'") == 1
    assert "disk space is back: writing the disk buffer of 'sink' again" in caplog.text


def test_a_full_disk_with_drop_newest_drops_and_counts_then_resumes(small_disk):
    small_disk.fill()
    tel = Telemetry()
    cfg = BufferConfig(type="disk", when_full="drop_newest", fsync="never")
    buf = DiskBuffer("sink", small_disk.path / "buf", cfg, tel)

    async def main():
        await buf.open()
        buf.inbox.add_producer()
        tasks = [asyncio.create_task(c) for c in buf.tasks()]
        acked: list[int] = []
        for i in range(10):
            await buf.inbox.send(batch(i, 50, acked))
        while len(acked) < 10:
            await asyncio.sleep(0.01)
        dropped = tel.value("collector_events_dropped_total", reason="disk_full")
        small_disk.free()
        for i in range(10, 20):
            await buf.inbox.send(batch(i, 50, acked))
        buf.inbox.close()
        got = await drain(buf)
        await asyncio.gather(*tasks)
        await buf.close()
        return dropped, got, acked

    dropped, got, acked = run(main())
    assert dropped == 500
    assert [b.events[0]["message"] for b in got] == [f"b{i} r0" for i in range(10, 20)]
    assert acked == list(range(20))  # dropped batches are finalized: a file source does not stall
