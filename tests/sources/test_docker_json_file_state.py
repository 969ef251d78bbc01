"""The json-file source's registry (state.py): the typed checkpoint record reads the checkpoint
documents the collector wrote before it existed, and a restart resumes at their offsets.

``data/docker_json_file_checkpoints_main.json`` was written by the collector of main at ac3da09
(before the record was typed): ``collector run --once`` with ``include_rotated: true`` over a
container with a rotated file (``r0``, ``r1``) and a live one (``a0``, ``a1`` and the first
bytes of ``a2``, its newline not written yet), the files as :func:`write_files` makes them; its
temporary directory is replaced by ``@ROOT@``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

from collector.checkpoints import CheckpointStore, pipeline_identity
from collector.component import ErrorCounter
from collector.config import validate_config
from collector.sources.docker_json_file.state import FileState, Registry
from collector.telemetry import Telemetry
from tests.helpers import checkpoint_file, docker_lines, file_pipeline, read_ndjson, run_once, run_once_counted

FIXTURE = Path(__file__).parent / "data" / "docker_json_file_checkpoints_main.json"
CID = "ab" * 32
ROTATED_FP, LIVE_FP = "606dedc6999bb045", "24623f3ea1327314"  # the fingerprints in the fixture
CUT = 20  # bytes of the line ``a2`` not written yet when the fixture was made


def write_files(root: Path) -> Path:
    """The container's files exactly as they were when the fixture was written."""
    d = root / "containers" / CID
    d.mkdir(parents=True)
    log = d / f"{CID}-json.log"
    Path(f"{log}.1").write_bytes(docker_lines(["r0", "r1"], start_ns=1))
    log.write_bytes(docker_lines(["a0", "a1"], start_ns=10) + docker_lines(["a2"], start_ns=12)[:-CUT])
    return log


def fixture_for(root: Path) -> dict:
    return orjson.loads(FIXTURE.read_bytes().replace(b"@ROOT@", str(root).encode()))


def install(root: Path, data_dir: Path, cfg: dict) -> tuple[str, list]:
    """Put the fixture where this pipeline's checkpoints are (the name is its outputs' identity)."""
    identity, outputs = pipeline_identity(validate_config(cfg).sinks.values())
    doc = fixture_for(root)
    assert doc["pipeline"]["outputs"] == outputs  # the same pipeline as the one that wrote it
    (data_dir / "checkpoints").mkdir()
    (data_dir / "checkpoints" / f"{identity}.json").write_bytes(orjson.dumps(doc))
    return identity, outputs


def test_the_record_reads_every_entry_main_writes_and_writes_it_back_the_same():
    entries = orjson.loads(FIXTURE.read_bytes())["sources"]["files"]
    assert set(entries) == {ROTATED_FP, LIVE_FP}
    for raw in entries.values():
        assert FileState.from_dict(raw).to_dict() == raw
    rotated, live = FileState.from_dict(entries[ROTATED_FP]), FileState.from_dict(entries[LIVE_FP])
    assert (rotated.offset, rotated.size, rotated.done, rotated.complete) == (146, 146, True, True)
    assert rotated.last_time == "2024-05-01T12:00:00.000000002Z"
    assert (live.offset, live.size, live.done, live.complete) == (146, 199, False, False)
    assert live.path == live.live and rotated.path == f"{live.live}.1"
    # what older entries leave out takes its default (and is not written back)
    assert FileState.from_dict({"live": "x", "path": "x", "offset": 3}).to_dict() == {
        "live": "x",
        "path": "x",
        "offset": 3,
        "size": 0,
    }
    assert FileState.from_dict({"live": "x", "path": "x", "offset": "3", "size": 4.0}).size == 4  # as before


def test_a_checkpoint_written_by_main_resumes_at_its_offsets(tmp_path, data_dir):
    log = write_files(tmp_path)
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(log)], out, data_dir, include_rotated=True)
    identity, outputs = install(tmp_path, data_dir, cfg)

    store = CheckpointStore(data_dir, identity, outputs)
    with store:
        registry = Registry(store, "files", ErrorCounter(Telemetry().errors, "files"))
        assert {fp: registry.get(fp) for fp in (ROTATED_FP, LIVE_FP)} == {
            fp: FileState.from_dict(raw) for fp, raw in fixture_for(tmp_path)["sources"]["files"].items()
        }
        assert registry.knows_stream(str(log))

    # the writer finishes the line it was writing, and goes on
    with open(log, "ab") as f:
        f.write(docker_lines(["a2"], start_ns=12)[-CUT:] + docker_lines(["a3"], start_ns=13))
    assert run_once(cfg) == 0
    recs = read_ndjson(out)
    # nothing before the checkpoints again (the rotated file was done, the live one at 146)
    assert [r["message"] for r in recs] == ["a2", "a3"]
    assert [r["log"]["offset"] for r in recs] == [146, 146 + len(docker_lines(["a2"], start_ns=12))]
    after = orjson.loads(checkpoint_file(data_dir).read_bytes())["sources"]["files"]
    assert after[ROTATED_FP] == fixture_for(tmp_path)["sources"]["files"][ROTATED_FP]  # untouched
    size = log.stat().st_size
    assert after[LIVE_FP] == {
        "live": str(log),
        "path": str(log),
        "offset": size,
        "size": size,
        "last_time": "2024-05-01T12:00:00.000000013Z",
    }


def test_an_unreadable_entry_is_forgotten_and_said(tmp_path, data_dir, caplog):
    """A hand-edited entry (an offset that is not a number) loses its file's place, nothing else
    (the source used to stop on it, with a traceback)."""
    log = write_files(tmp_path)
    out = tmp_path / "out.ndjson"
    cfg = file_pipeline([str(log)], out, data_dir, include_rotated=True)
    identity, _ = install(tmp_path, data_dir, cfg)
    path = data_dir / "checkpoints" / f"{identity}.json"
    doc = orjson.loads(path.read_bytes())
    doc["sources"]["files"][LIVE_FP]["offset"] = "x146"
    path.write_bytes(orjson.dumps(doc))
    caplog.set_level(logging.ERROR, "collector.sources.docker_json_file")
    rc, telemetry = run_once_counted(cfg)
    assert rc == 0
    assert telemetry.value("collector_errors_total", component="files", reason="checkpoint_unreadable") == 1
    # the live file is read again from its start; the rotated one still resumes at its checkpoint
    assert [r["message"] for r in read_ndjson(out)] == ["a0", "a1"]
    said = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(said) == 1 and LIVE_FP in said[0] and "'x146'" in said[0]
    assert orjson.loads(path.read_bytes())["sources"]["files"][LIVE_FP]["offset"] == 146
