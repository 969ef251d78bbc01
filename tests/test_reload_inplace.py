"""A reload in place (runtime.Pipeline.prepare / reconfigure, as SIGHUP does it when only components'
own settings changed): the changed component is replaced inside its own task, every other
component keeps running (the very same task and instance), and the records flowing meanwhile
are delivered once each, none lost."""

from __future__ import annotations

import asyncio
import copy
import socket
from pathlib import Path
from typing import Any

from collector.config import validate_config
from collector.topology import plan_reload
from tests.helpers import BackgroundPipeline, docker_line, free_port, read_ndjson, wait_progressing, wait_until
from tests.test_reload import Writer, seqs


def pipeline_doc(tmp_path: Path, transform: dict[str, Any] | None = None) -> dict[str, Any]:
    """json-file source -> (a transform) -> two file sinks, a and b."""
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    (logs / "app-json.log").touch()
    feed = "t" if transform else "files"
    doc: dict[str, Any] = {
        "data_dir": str(tmp_path / "state"),
        "sources": {"files": {"type": "docker_json_file", "paths": [str(logs / "*-json.log")]}},
        "sinks": {
            n: {"type": "file", "inputs": [feed], "path": str(tmp_path / f"{n}.ndjson"), "fsync": "never"}
            for n in ("a", "b")
        },
    }
    if transform:
        doc["transforms"] = {"t": {"inputs": ["files"], **transform}}
    return doc


def reload_in_place(bg: BackgroundPipeline, doc: dict[str, Any]) -> dict[str, list[str]]:
    """What SIGHUP does on a plan in place; returns what was restarted."""
    p = bg.pipeline
    new = validate_config(doc)
    plan = plan_reload(p.config, new)
    assert plan.whole is None, plan.whole

    async def go() -> None:
        await p.reconfigure(new, await p.prepare(new, plan.changed))

    asyncio.run_coroutine_threadsafe(go(), bg.loop).result(120)
    return plan.changed


def snapshot(bg: BackgroundPipeline) -> dict[str, Any]:
    """The running pipeline's tasks and component instances (by identity)."""
    p = bg.pipeline
    return {
        "tasks": {t.get_name(): t for t in p._tasks},
        "components": {**p.sources, **{f"t:{n}": t for n, t in p.transforms.items()}, **p.sinks},
    }


def run_reload(tmp_path: Path, doc: dict[str, Any], change: Any, restarted: str) -> tuple[dict[str, Any], int]:
    """Run ``doc`` while a writer appends ``seq N`` lines, reload in place with ``change`` applied to
    a copy of it, check that only ``restarted`` (a key of snapshot's components) is a new instance
    and that every task is the same one, still running; returns the config after and the count."""
    with BackgroundPipeline(doc) as bg:
        writer = Writer(tmp_path / "logs" / "app-json.log")
        wait_until(lambda: len(read_ndjson(tmp_path / "b.ndjson")) >= 300, what="records before the reload")
        before = snapshot(bg)
        new = copy.deepcopy(doc)
        change(new)
        reload_in_place(bg, new)
        after = snapshot(bg)
        assert after["tasks"] == before["tasks"]  # the same task objects: nothing restarted at task level
        assert not any(t.done() for t in after["tasks"].values())
        for name, obj in before["components"].items():
            if name == restarted:
                assert after["components"][name] is not obj, name
            else:
                assert after["components"][name] is obj, name  # kept running, untouched
        seen = len(read_ndjson(tmp_path / "a.ndjson"))
        wait_until(lambda: len(read_ndjson(tmp_path / "a.ndjson")) >= seen + 300, what="records after the reload")
        total = writer.stop()
        wait_progressing(lambda: len(read_ndjson(tmp_path / "a.ndjson")), total, what="every record in a")
        wait_progressing(lambda: len(read_ndjson(tmp_path / "b.ndjson")), total, what="every record in b")
        assert bg.stop() == 0
    return new, total


def test_a_changed_sink_takes_over_its_buffer_while_the_source_and_the_other_sink_keep_running(tmp_path):
    doc = pipeline_doc(tmp_path)

    def change(d: dict[str, Any]) -> None:
        d["sinks"]["b"]["path"] = str(tmp_path / "b2.ndjson")

    # the new b writes elsewhere: b then b2 hold every record once, in order
    with BackgroundPipeline(doc) as bg:
        writer = Writer(tmp_path / "logs" / "app-json.log")
        wait_until(lambda: len(read_ndjson(tmp_path / "b.ndjson")) >= 300, what="records before the reload")
        before = snapshot(bg)
        new = copy.deepcopy(doc)
        change(new)
        assert reload_in_place(bg, new) == {"sink": ["b"]}
        after = snapshot(bg)
        assert after["tasks"] == before["tasks"] and not any(t.done() for t in after["tasks"].values())
        assert after["components"]["files"] is before["components"]["files"]
        assert after["components"]["a"] is before["components"]["a"]
        assert after["components"]["b"] is not before["components"]["b"]
        wait_until(lambda: len(read_ndjson(tmp_path / "b2.ndjson")) >= 300, what="records in the new b")
        total = writer.stop()
        wait_progressing(lambda: len(read_ndjson(tmp_path / "a.ndjson")), total, what="every record in a")
        count = lambda: len(read_ndjson(tmp_path / "b.ndjson")) + len(read_ndjson(tmp_path / "b2.ndjson"))  # noqa: E731
        wait_progressing(count, total, what="every record in b and b2")
        assert bg.stop() == 0
    assert seqs(tmp_path / "a.ndjson") == list(range(total))
    old, new_b = seqs(tmp_path / "b.ndjson"), seqs(tmp_path / "b2.ndjson")
    assert old + new_b == list(range(total))  # none lost, none twice, in order
    assert old and new_b
    # the positions moved with the pipeline's new identity (where records go): a restart with the
    # new config goes on where the reload left off, nothing read again
    with BackgroundPipeline(new) as bg:
        with open(tmp_path / "logs" / "app-json.log", "ab") as f:
            f.write(docker_line(f"seq {total}\n"))
        wait_until(lambda: len(read_ndjson(tmp_path / "a.ndjson")) > total, what="the record after the restart")
        wait_until(lambda: len(read_ndjson(tmp_path / "b2.ndjson")) > len(new_b), what="the record after the restart")
        assert bg.stop() == 0
    assert seqs(tmp_path / "b2.ndjson") == [*new_b, total]


def test_a_changed_transform_hands_over_what_it_holds(tmp_path):
    # multiline holds each record until the next one starts: the one held at the reload must come out
    doc = pipeline_doc(tmp_path, {"type": "multiline", "mode": "pattern", "start_pattern": "^seq", "timeout": 0.5})

    def change(d: dict[str, Any]) -> None:
        d["transforms"]["t"]["timeout"] = 0.3

    _, total = run_reload(tmp_path, doc, change, "t:t")
    assert seqs(tmp_path / "a.ndjson") == list(range(total))
    assert seqs(tmp_path / "b.ndjson") == list(range(total))


def test_a_changed_source_restarts_from_its_checkpoints(tmp_path):
    doc = pipeline_doc(tmp_path)

    def change(d: dict[str, Any]) -> None:
        d["sources"]["files"]["paths"].append(str(tmp_path / "other" / "*-json.log"))

    _, total = run_reload(tmp_path, doc, change, "files")
    assert seqs(tmp_path / "a.ndjson") == list(range(total))
    assert seqs(tmp_path / "b.ndjson") == list(range(total))


def test_what_a_reload_in_place_can_do_and_what_needs_the_whole_pipeline(tmp_path):
    doc = pipeline_doc(tmp_path)
    old = validate_config(doc)

    def plan(change: Any) -> Any:
        d = copy.deepcopy(doc)
        change(d)
        return plan_reload(old, validate_config(d))

    p = plan(lambda d: d["sinks"]["a"].update(fsync="always"))
    assert p.whole is None and p.changed == {"sink": ["a"]}
    assert "in place: restarting sink 'a'" in p.describe()
    assert plan(lambda d: d["sinks"].pop("b")).whole == "sinks added or removed"
    disk = plan(lambda d: d["sinks"]["a"].update(buffer={"type": "disk"}))
    assert disk.whole == "the buffer or match of sink 'a' changed"
    assert plan(lambda d: d.update(shutdown_timeout=5)).whole == "pipeline settings changed"
    assert "the whole pipeline (pipeline settings changed)" in plan(lambda d: d.update(shutdown_timeout=5)).describe()


def test_a_changed_source_starts_again_only_once_what_it_emitted_is_finalized(tmp_path):
    # multiline holds the last record (unacknowledged) until its timeout: the old source's records
    # are then still in flight when it stops; its successor waits for them, else it would read the
    # held one again from the checkpoint (a duplicate)
    doc = pipeline_doc(tmp_path, {"type": "multiline", "mode": "pattern", "start_pattern": "^seq", "timeout": 3})
    log = tmp_path / "logs" / "app-json.log"
    with BackgroundPipeline(doc) as bg:
        log.write_bytes(b"".join(docker_line(f"seq {i}\n") for i in range(100)))
        wait_until(lambda: len(read_ndjson(tmp_path / "a.ndjson")) == 99, what="all but the held record")
        assert bg.pipeline.source_inflight["files"].records > 0  # the batch of the held record
        new = copy.deepcopy(doc)
        new["sources"]["files"]["paths"].append(str(tmp_path / "other" / "*-json.log"))
        assert reload_in_place(bg, new) == {"source": ["files"]}
        with open(log, "ab") as f:
            f.write(b"".join(docker_line(f"seq {i}\n") for i in range(100, 200)))
        wait_until(lambda: len(read_ndjson(tmp_path / "b.ndjson")) >= 200, 60, what="every record")
        assert bg.stop() == 0
    assert seqs(tmp_path / "a.ndjson") == list(range(200))
    assert seqs(tmp_path / "b.ndjson") == list(range(200))


def test_a_sink_that_cannot_deliver_is_replaced_past_the_shutdown_timeout_and_its_records_go_to_the_new_one(
    tmp_path, caplog
):
    # the everyday reason to reload a sink: its address is wrong. The old one retries forever; past
    # shutdown_timeout it is stopped and what it held goes to its successor, nothing lost or twice
    doc = pipeline_doc(tmp_path)
    doc["shutdown_timeout"] = 1
    dead = f"http://127.0.0.1:{free_port()}"
    doc["sinks"]["b"] = {"type": "elasticsearch", "inputs": ["files"], "hosts": [dead], "mode": "index"}
    log = tmp_path / "logs" / "app-json.log"
    with BackgroundPipeline(doc) as bg:
        log.write_bytes(b"".join(docker_line(f"seq {i}\n") for i in range(500)))
        wait_until(lambda: len(read_ndjson(tmp_path / "a.ndjson")) == 500, what="the records in a")
        wait_until(lambda: bg.pipeline.buffers["b"].pending_events() == 500, what="the records waiting for b")
        new = copy.deepcopy(doc)
        new["sinks"]["b"] = {"type": "file", "inputs": ["files"], "path": str(tmp_path / "b2.ndjson")}
        assert reload_in_place(bg, new) == {"sink": ["b"]}
        with open(log, "ab") as f:
            f.write(b"".join(docker_line(f"seq {i}\n") for i in range(500, 600)))
        wait_until(lambda: len(read_ndjson(tmp_path / "b2.ndjson")) >= 600, 60, what="every record in the new b")
        wait_until(lambda: len(read_ndjson(tmp_path / "a.ndjson")) >= 600, 60, what="every record in a")
        assert bg.stop() == 0
    assert seqs(tmp_path / "a.ndjson") == list(range(600))
    assert sorted(seqs(tmp_path / "b2.ndjson")) == list(range(600))
    assert "reload: sink 'b' still busy after 1s (shutdown_timeout); stopping it" in caplog.text


def test_a_changed_listener_listens_again_on_its_port(tmp_path):
    port = free_port()
    doc = {
        "data_dir": str(tmp_path / "state"),
        "sources": {"fwd": {"type": "fluent_forward", "listen": [f"tcp://127.0.0.1:{port}"], "tags": ["a"]}},
        "sinks": {"out": {"type": "file", "inputs": ["fwd"], "path": str(tmp_path / "out.ndjson")}},
    }
    with BackgroundPipeline(doc) as bg:
        old = bg.pipeline.sources["fwd"]
        new = copy.deepcopy(doc)
        new["sources"]["fwd"]["tags"] = ["b"]
        assert reload_in_place(bg, new) == {"source": ["fwd"]}
        src = bg.pipeline.sources["fwd"]
        assert src is not old and old.stopping
        wait_until(lambda: src.ready()[0], what="the new listener")
        assert src.bound == [f"tcp://127.0.0.1:{port}"]
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # accepted
        assert bg.stop() == 0
