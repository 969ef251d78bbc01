"""The console sink: what a person trying the collector out reads."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import orjson

from collector.event import Batch, Fields
from collector.sinks.console import ConsoleConfig, ConsoleSink
from collector.telemetry import Telemetry


class Tty(io.BytesIO):
    def isatty(self) -> bool:
        return True


def sink(stream: io.BytesIO, **cfg: object) -> ConsoleSink:
    config = ConsoleConfig.model_validate({"type": "console", "inputs": ["x"], **cfg})
    return ConsoleSink("out", config, SimpleNamespace(telemetry=Telemetry()), stream=stream)


def batch() -> Batch:
    meta = Fields({"container": {"id": "c" * 64, "name": "shop-web-1"}, "tags": ["A"]})
    events = [
        {"@timestamp": "2024-05-01T12:00:01.250000000Z", "message": "ready", "stream": "stdout"},
        {"@timestamp": "2024-05-01T12:00:01.251000000Z", "message": "disk full", "stream": "stderr"},
    ]
    return Batch(events, meta, tag="A")


def test_a_terminal_shows_time_container_tag_and_stream_before_the_message():
    """Issue 17: the tag was hidden, so `--tag A` (or a fluentd tag) could not be checked."""
    out = sink(Tty(), color=False).render(batch()).decode()
    assert out.splitlines() == [
        "12:00:01.250 shop-web-1           A            stdout ready",
        "12:00:01.251 shop-web-1           A            stderr disk full",
    ]


def test_colours_on_a_terminal_keep_the_same_columns():
    lines = sink(Tty()).render(batch()).decode().splitlines()
    assert "\x1b[31mstderr" in lines[1]  # stderr in red
    assert [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines] == sink(Tty(), color=False).render(
        batch()
    ).decode().splitlines()


def test_piped_it_is_ndjson_the_documents_elasticsearch_gets():
    out = sink(io.BytesIO()).render(batch())
    docs = [orjson.loads(line) for line in out.splitlines()]
    assert [d["message"] for d in docs] == ["ready", "disk full"]
    assert docs[0]["container"]["name"] == "shop-web-1" and docs[0]["tags"] == ["A"]
