"""docs/architecture.md stays true: its "how to add a sink" example is the real file sink, and the
names it tells a newcomer to use exist with the signatures it shows."""

from __future__ import annotations

import asyncio
import inspect
import re
from pathlib import Path
from types import SimpleNamespace

import orjson

from collector import registry
from collector.acks import Ack, OrderedAcks, Status, done_threadsafe
from collector.buffers import Buffer, BufferConfig, BufferReader
from collector.buffers.disk import DiskBuffer
from collector.buffers.memory import MemoryBuffer
from collector.component import Context, Sink, SinkConfig, TransformConfig
from collector.deadletter import DeadLetter
from collector.event import Batch, Fields
from collector.sinks.file import FileConfig, FileSink
from collector.telemetry import SinkMeter, Telemetry
from collector.transforms.route import RouteConfig

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_every_quoted_line_of_the_walk_through_is_in_the_code_it_names():
    code = {
        line.strip()
        for path in ("collector/sinks/file.py", "collector/registry.py")
        for line in (REPO / path).read_text().splitlines()
    }
    quoted = [
        line.strip()
        for block in python_blocks(DOC.read_text())
        for line in block.splitlines()
        if line.strip() and not line.strip().startswith("...")
    ]
    assert len(quoted) >= 15  # the config, run() and the registry row
    assert [line for line in quoted if line not in code] == []


def test_the_names_and_signatures_the_page_uses_exist():
    run = inspect.signature(Sink.run)
    assert list(run.parameters) == ["self", "inbox"] and run.parameters["inbox"].annotation == "BufferReader"
    assert inspect.signature(FileSink.run).parameters["inbox"].annotation == "BufferReader"
    assert {"recv", "recv_nowait"} <= set(dir(BufferReader))
    assert {"inbox", "reader", "tasks", "open", "close", "pending_events", "stored_records"} <= set(dir(Buffer))
    for impl in (MemoryBuffer, DiskBuffer):  # both buffers offer the whole protocol (inbox, reader: attributes)
        assert {"tasks", "open", "close", "pending_events", "stored_records"} <= set(dir(impl))
    assert list(inspect.signature(DeadLetter.records).parameters) == ["self", "component", "items"]
    assert list(inspect.signature(DeadLetter.raw).parameters)[:4] == ["self", "component", "reason", "data"]
    assert callable(Context.error_counter) and callable(Context.docker)
    assert callable(SinkMeter.delivered) and callable(SinkMeter.request)
    assert callable(OrderedAcks.track) and callable(Ack.retain) and callable(Ack.pass_on) and callable(done_threadsafe)
    assert list(inspect.signature(Ack.done).parameters) == ["self", "n", "rejected", "failed"]
    assert list(inspect.signature(Ack).parameters) == ["callback", "holders"]
    assert [s.name for s in Status] == ["DELIVERED", "REJECTED", "FAILED"]
    assert issubclass(FileConfig, SinkConfig) and FileConfig.model_config["extra"] == "forbid"
    assert all(f.description for n, f in FileConfig.model_fields.items() if n != "type")
    assert registry.SINKS["file"] == ("collector.sinks.file", "FileConfig", "FileSink")
    # output ports are declared by the config class, for the raw document and the model alike
    assert TransformConfig.output_ports({}) == []
    assert RouteConfig.output_ports({"routes": {"web": "web.**"}}) == ["web", "_unmatched"]
    assert RouteConfig.output_ports({"routes": "not a mapping"}) == []


def test_the_example_sink_writes_every_record_before_it_acknowledges_it(tmp_path):
    out = tmp_path / "sub" / "out.ndjson"
    config = FileConfig.model_validate({"type": "file", "inputs": ["x"], "path": str(out)})
    telemetry = Telemetry()
    sink = FileSink("out", config, SimpleNamespace(telemetry=telemetry))  # type: ignore[arg-type]
    buffer = MemoryBuffer("out", BufferConfig(), telemetry)
    acked: list[tuple[int, int]] = []  # (batch, lines in the file when it was acknowledged)

    def batch(i: int) -> Batch:
        events = [{"@timestamp": "2024-05-01T12:00:00.000000000Z", "message": f"b{i} r{j}"} for j in range(3)]

        def finalized(ack: Ack) -> None:
            assert ack.status is Status.DELIVERED
            acked.append((i, len(out.read_bytes().splitlines())))

        return Batch(events, Fields({"tags": ["t"]}), ack=Ack(finalized))

    async def main() -> None:
        inbox = buffer.inbox
        inbox.add_producer()
        for i in range(5):
            assert await inbox.send(batch(i))
        inbox.close()
        await sink.run(buffer.reader)

    asyncio.run(main())
    docs = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert [d["message"] for d in docs] == [f"b{i} r{j}" for i in range(5) for j in range(3)]
    assert sorted(i for i, _ in acked) == list(range(5))
    assert all(lines >= 3 * (i + 1) for i, lines in acked)  # written before acknowledged
    assert sink.ready()[0] and telemetry.value("collector_events_sent_total", component="out") == 15


def test_one_acknowledgement_family():
    """acks.Ack is the only reference count a batch's completion goes through: no component keeps
    its own (the forward source's chunk acks, the disk buffer's frames and the Elasticsearch
    sink's per-record count were three more before issue 16)."""
    offenders = []
    for path in sorted((REPO / "collector").rglob("*.py")):
        if path.name == "acks.py":
            continue
        text = path.read_text()
        if re.search(r"^class \w*\(Ack\)|^class \w*Ack\b|\.remaining -= 1", text, re.M):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
