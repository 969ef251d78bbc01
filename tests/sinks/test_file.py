"""The ``file`` sink: NDJSON appended, batches acknowledged only once written and synced as
``fsync: always|interval|never`` says (the disk buffer's values, issue 17)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from collector.acks import Ack
from collector.buffers.memory import Channel
from collector.checkpoints import CheckpointStore
from collector.component import Context
from collector.deadletter import DeadLetter
from collector.event import Batch, Fields
from collector.sinks.file import FileConfig, FileSink
from collector.telemetry import Telemetry
from tests.helpers import read_ndjson


class Journal:
    """What happened, in order: writes synced to disk and acknowledgements (os.fsync is the real
    one, watched)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: list[str] = []
        real = os.fsync

        def fsync(fd: int) -> None:
            real(fd)
            self.steps.append("fsync")

        monkeypatch.setattr(os, "fsync", fsync)

    def batch(self, i: int) -> Batch:
        events = [{"@timestamp": "2024-05-01T12:00:00Z", "message": f"line {i}"}]
        return Batch(events, Fields({}), ack=Ack(lambda _: self.steps.append(f"ack {i}")), source="test")


def sink(tmp_path: Path, **config: Any) -> FileSink:
    data_dir = tmp_path / "state"
    telemetry = Telemetry()
    ctx = Context(
        data_dir=data_dir,
        telemetry=telemetry,
        checkpoints=CheckpointStore(data_dir),
        deadletter=DeadLetter(data_dir, telemetry),
    )
    cfg = FileConfig(type="file", inputs=["x"], path=str(tmp_path / "out.ndjson"), **config)
    return FileSink("out", cfg, ctx)


def run(s: FileSink, journal: Journal, n: int) -> None:
    async def main() -> None:
        inbox = Channel("out", max_events=1000, producers=1)
        for i in range(n):
            await inbox.send(journal.batch(i))
        inbox.close()
        await asyncio.wait_for(s.run(inbox), 60)

    asyncio.run(main())


def test_fsync_always_syncs_before_each_acknowledgement(tmp_path, monkeypatch):
    j = Journal(monkeypatch)
    run(sink(tmp_path), j, 5)  # the default
    assert j.steps[0] == "fsync" and sorted(j.steps[1:]) == sorted(f"ack {i}" for i in range(5))
    assert [r["message"] for r in read_ndjson(tmp_path / "out.ndjson")] == [f"line {i}" for i in range(5)]


def test_fsync_never_acknowledges_once_written(tmp_path, monkeypatch):
    j = Journal(monkeypatch)
    run(sink(tmp_path, fsync="never"), j, 5)
    assert "fsync" not in j.steps and len(j.steps) == 5
    assert len(read_ndjson(tmp_path / "out.ndjson")) == 5


def test_fsync_interval_acknowledges_only_after_a_sync_even_when_nothing_more_comes(tmp_path, monkeypatch):
    j = Journal(monkeypatch)
    s = sink(tmp_path, fsync="interval", fsync_interval=0.05)

    async def main() -> None:
        inbox = Channel("out", max_events=1000, producers=1)
        task = asyncio.create_task(s.run(inbox))
        for i in range(3):  # one at a time: rounds closer together than the interval are not synced each
            await inbox.send(j.batch(i))
            while f"ack {i}" not in j.steps:  # acknowledged by the interval's sync, the inbox still open
                await asyncio.sleep(0.01)
        inbox.close()
        await asyncio.wait_for(task, 60)

    asyncio.run(asyncio.wait_for(main(), 60))
    # every acknowledgement comes right after a sync (acks released together follow the same one)
    for k, step in enumerate(j.steps):
        if step.startswith("ack"):
            assert next(s for s in reversed(j.steps[:k]) if not s.startswith("ack")) == "fsync", j.steps
    assert len(read_ndjson(tmp_path / "out.ndjson")) == 3


def test_fsync_is_always_interval_or_never():
    with pytest.raises(ValueError, match="always"):
        FileConfig(type="file", inputs=["x"], path="/tmp/x", fsync=True)  # type: ignore[arg-type]
