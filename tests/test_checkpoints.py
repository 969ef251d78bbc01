from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from collector.checkpoints import CheckpointStore, StateLockedError, pipeline_identity
from collector.config import validate_config


def test_saved_state_survives_a_reopen(tmp_path):
    with CheckpointStore(tmp_path) as s:
        s.namespace("files")["abc"] = {"offset": 42}
        s.touch()
    with CheckpointStore(tmp_path) as s2:
        assert s2.namespace("files") == {"abc": {"offset": 42}}
    doc = json.loads((tmp_path / "checkpoints.json").read_text())
    assert doc["version"] == 1


def test_nothing_is_written_when_nothing_changed(tmp_path):
    s = CheckpointStore(tmp_path)
    s.open()
    assert s.save() is False
    s.namespace("x")["k"] = {"offset": 1}
    s.touch()
    assert s.save() is True
    assert s.save() is False
    s.close()


def test_a_second_process_on_the_same_data_dir_is_refused(tmp_path):
    with CheckpointStore(tmp_path), pytest.raises(StateLockedError, match="another collector"):
        CheckpointStore(tmp_path).open()


def test_a_corrupt_file_is_set_aside_not_fatal(tmp_path):
    (tmp_path / "checkpoints.json").write_text('{"version": 1, "sour')
    with CheckpointStore(tmp_path) as s:
        assert s.namespace("files") == {}
    assert (tmp_path / "checkpoints.json.corrupt").exists()


def test_an_older_snapshot_never_overwrites_a_newer_one(tmp_path):
    s = CheckpointStore(tmp_path)
    s.open()
    s.namespace("f")["k"] = {"offset": 1}
    old = s._snapshot()
    s.namespace("f")["k"] = {"offset": 2}
    new = s._snapshot()
    s._write(*new)
    s._write(*old)  # e.g. a cancelled background save finishing late
    assert json.loads((tmp_path / "checkpoints.json").read_text())["sources"]["f"]["k"]["offset"] == 2
    s._lock_file.close()


def test_a_save_cancelled_before_its_thread_started_is_made_at_close(tmp_path):
    """Shutdown cancels the periodic save; on a busy machine its write may not have reached a
    thread yet and then never runs. The final save must still write the latest state (found
    as duplicates after a restart by the rotation end-to-end test)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(1)
        loop.set_default_executor(pool)
        release = threading.Event()
        busy = loop.run_in_executor(None, release.wait)  # the only worker is taken
        s = CheckpointStore(tmp_path)
        s.open()
        s.namespace("f")["k"] = {"offset": 7}
        s.touch()
        save = asyncio.create_task(s.save_async())
        await asyncio.sleep(0.05)  # the write waits in the executor's queue
        save.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await save
        release.set()
        await busy
        s.close()

    asyncio.run(main())
    assert json.loads((tmp_path / "checkpoints.json").read_text())["sources"]["f"]["k"]["offset"] == 7


# -- checkpoints belong to a pipeline (issue 17) ---------------------------------------------
def _sinks(*sinks: dict) -> list:
    cfg = validate_config(
        {
            "sources": {"s": {"type": "fluent_forward"}},
            "sinks": {f"k{i}": {**k, "inputs": ["s"]} for i, k in enumerate(sinks)},
        }
    )
    return list(cfg.sinks.values())


def test_a_pipeline_is_identified_by_where_its_records_go(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    console = pipeline_identity(_sinks({"type": "console"}))
    to_file = pipeline_identity(_sinks({"type": "file", "path": "out.ndjson"}))
    assert console[0] != to_file[0]
    assert console[0].startswith("console-") and to_file[0].startswith("file-")
    assert to_file[1] == [{"type": "file", "path": str(tmp_path / "out.ndjson")}]
    # names, tuning, buffers and order do not make another pipeline
    tuned = pipeline_identity(_sinks({"type": "file", "path": str(tmp_path / "out.ndjson"), "fsync": "never"}))
    assert tuned[0] == to_file[0]
    both = pipeline_identity(_sinks({"type": "console"}, {"type": "file", "path": "out.ndjson"}))
    assert both[0] == pipeline_identity(_sinks({"type": "file", "path": "out.ndjson"}, {"type": "console"}))[0]
    assert both[0] not in (console[0], to_file[0])
    # the same relative name from another directory is another file
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert pipeline_identity(_sinks({"type": "file", "path": "out.ndjson"}))[0] != to_file[0]


def test_the_outputs_written_beside_the_checkpoints_never_hold_a_secret(tmp_path):
    es = {"type": "elasticsearch", "hosts": ["http://es:9200"], "auth": {"user": "u", "password": "s3cret"}}
    identity, outputs = pipeline_identity(_sinks(es))
    with CheckpointStore(tmp_path, identity, outputs) as s:
        s.namespace("files")["abc"] = {"offset": 1}
        s.touch()
    text = (tmp_path / "checkpoints" / f"{identity}.json").read_text()
    assert "s3cret" not in text and '"data_stream": "logs-docker-default"' in text
    other = pipeline_identity(_sinks({**es, "data_stream": "logs-docker-other"}))[0]
    assert other != identity  # another data stream, another pipeline


def test_two_pipelines_share_a_data_dir_without_sharing_checkpoints(tmp_path):
    with CheckpointStore(tmp_path, "console-1", [{"type": "console"}]) as a:
        a.namespace("files")["abc"] = {"offset": 42}
        a.touch()
    with CheckpointStore(tmp_path, "file-2", [{"type": "file"}]) as b:
        assert b.namespace("files") == {} and b.resumed == 0 and b.nothing_new() is None
    with CheckpointStore(tmp_path, "console-1", [{"type": "console"}]) as a:
        assert a.namespace("files") == {"abc": {"offset": 42}} and a.resumed == 1
        assert "nothing new since the last run of this pipeline (outputs: console): 1 file at its end" in (
            a.nothing_new() or ""
        )
