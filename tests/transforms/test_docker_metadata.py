"""The docker_metadata transform and its metadata files: ids checked before any lookup,
bounded caches keyed by the container, unusable config.v2.json reported (never blocking),
labels capped and flagged."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from collector.buffers.disk import EncodedDocs
from collector.checkpoints import CheckpointStore
from collector.codecs.docker_json import DockerLines, LineReader
from collector.component import Context
from collector.deadletter import DeadLetter
from collector.docker_api import (
    ContainerInfo,
    DockerMetadata,
    DockerMetadataService,
    MetadataOptions,
    cap_info,
    read_config_v2,
)
from collector.event import Batch, Fields
from collector.telemetry import Telemetry
from collector.transforms.docker_metadata import DockerMetadataConfig, DockerMetadataTransform
from tests.helpers import docker_line

CID = "c" * 64


def write_config(root: Path, cid: str, doc: Any) -> Path:
    d = root / "containers" / cid
    d.mkdir(parents=True, exist_ok=True)
    p = d / "config.v2.json"
    p.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    return p


class Setup:
    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.root = tmp_path / "docker"
        (self.root / "containers").mkdir(parents=True, exist_ok=True)
        self.telemetry = Telemetry()
        cp = CheckpointStore(tmp_path / "state")
        self.ctx = Context(
            data_dir=tmp_path / "state",
            telemetry=self.telemetry,
            checkpoints=cp,
            deadletter=DeadLetter(tmp_path / "state", self.telemetry),
            docker_root=str(self.root),
        )
        cfg = DockerMetadataConfig.model_validate(
            {"type": "docker_metadata", "inputs": ["x"], "metadata": "files", **config}
        )
        self.t = DockerMetadataTransform("meta", cfg, self.ctx)

    def errors(self, reason: str, component: str = "meta") -> float:
        return self.telemetry.errors.labels(component, reason)._value.get()


def forward_batch(cid: Any, n: int = 1, name: str = "sender-says") -> Batch:
    """What the forward source makes of Docker's fluentd driver records."""
    meta = Fields({"host": {"name": "h"}, "tags": ["docker.app"], "container": {"id": cid, "name": name}})
    return Batch([{"message": f"m{i}"} for i in range(n)], meta, tag="docker.app")


def out_record(outs: list[tuple[str | None, Batch]]) -> dict[str, Any]:
    [(_, b)] = outs
    return next(iter(b.records()))


def test_a_container_is_one_cache_entry_not_one_per_batch(tmp_path: Path) -> None:
    """Row 8: 20,000 batches of one container on a lookup miss added 20,000 entries (+99 MB)."""

    async def main() -> None:
        s = Setup(tmp_path)
        await s.t.start()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20_000):
            out_record(await s.t.process(forward_batch(CID)))
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert len(s.t._cache) == 1
        assert grown < 2 << 20, f"{grown} bytes kept for one container"
        assert s.errors("metadata_missing") == 20_000  # counted per record, never silent
        await s.ctx.aclose()

    asyncio.run(main())


def test_the_caches_are_bounded_by_their_configured_bytes(tmp_path: Path) -> None:
    """Row 8: the per-id file cache had no bound (200k ids kept 587 MB)."""

    async def main() -> None:
        s = Setup(tmp_path, cache_max_bytes=1 << 20)
        await s.t.start()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(50_000):
            await s.t.process(forward_batch(f"{i:064x}"))
        grown = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        docker = s.t.docker
        assert docker is not None
        assert docker._files.currsize <= 1 << 20 and s.t._cache.currsize <= 1 << 20
        assert grown < 8 << 20, f"{grown >> 20} MB kept for 50,000 unknown ids"
        await s.ctx.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("cid", ["../../srv/x", "../" * 10 + "etc", "ab\x00cd", "C" * 64, "c" * 11, "/abs", 12345])
def test_ids_that_are_not_docker_ids_are_never_looked_up(tmp_path: Path, cid: Any, caplog: Any) -> None:
    """Row 6: a peer's id became a path under the Docker root."""

    async def main() -> None:
        s = Setup(tmp_path)
        await s.t.start()
        planted = tmp_path / "srv" / "x"
        planted.mkdir(parents=True)
        (planted / "config.v2.json").write_text(json.dumps({"Name": "/planted", "Config": {"Labels": {"a": "b"}}}))
        with caplog.at_level(logging.WARNING):
            for _ in range(100):
                rec = out_record(await s.t.process(forward_batch(cid)))
        assert rec["container"] == {"id": str(cid), "name": "sender-says"}  # as sent, nothing added
        assert s.errors("bad_container_id") == 100
        warnings = [r for r in caplog.records if "not looked up" in r.getMessage()]
        assert len(warnings) == 1 and "\x00" not in warnings[0].getMessage()
        assert s.t.docker is not None and len(s.t.docker._files) == 0
        await s.ctx.aclose()

    asyncio.run(main())


def test_a_fifo_or_device_config_is_refused_without_blocking(tmp_path: Path, caplog: Any) -> None:
    """Row 6: a FIFO in place of config.v2.json froze the whole collector."""

    async def main() -> None:
        s = Setup(tmp_path)
        await s.t.start()
        d = s.root / "containers" / CID
        d.mkdir()
        os.mkfifo(d / "config.v2.json")
        dev = s.root / "containers" / ("d" * 64)
        dev.mkdir()
        os.mknod(dev / "config.v2.json", 0o600 | 0o020000, os.makedev(1, 5))  # /dev/zero
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                for cid in (CID, "d" * 64):
                    rec = await asyncio.wait_for(s.t.process(forward_batch(cid)), 10)
                    assert out_record(rec)["container"]["id"] == cid
        said = "\n".join(r.getMessage() for r in caplog.records)
        assert "a FIFO, not a regular file" in said  # the device: counted, in the next line of its reason
        assert s.errors("config_v2_unusable", "docker_metadata") == 2  # once per file, not per batch
        await s.ctx.aclose()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b'{"Name": "/x", "Config": ', "not valid JSON"),
        (b"\x00\x00\x00", "not valid JSON"),
        (b'["a list"]', "not a JSON object"),
        (b'{"Name": 5, "Config": [1, 2], "Image": {"a": 1}}', ""),  # wrong shapes: empty fields, no error
        (b'{"Name": "/x", "Config": {"Labels": "nope"}}', ""),
    ],
)
def test_a_malformed_config_is_reported_once(tmp_path: Path, content: bytes, why: str, caplog: Any) -> None:
    async def main() -> None:
        s = Setup(tmp_path)
        await s.t.start()
        write_config(s.root, CID, content)
        with caplog.at_level(logging.WARNING):
            for _ in range(200):
                out_record(await s.t.process(forward_batch(CID)))
        said = [r.getMessage() for r in caplog.records if "config.v2.json: unusable" in r.getMessage()]
        if why:
            assert len(said) == 1 and why in said[0], said
            assert s.errors("config_v2_unusable", "docker_metadata") == 1
        else:
            assert not said
        await s.ctx.aclose()

    asyncio.run(main())


def test_a_huge_config_is_not_read(tmp_path: Path) -> None:
    """Row 12: a 100 MB config.v2.json was read whole on the event loop."""
    root = tmp_path / "docker"
    p = write_config(root, CID, b"")
    with open(p, "wb") as f:
        f.truncate(100 << 20)  # sparse: 100 MB of NULs
    tracemalloc.start()
    info, why = read_config_v2(p.parent, 4 << 20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert info is None and "more than max_file_bytes" in why
    assert peak < 1 << 20


def test_a_symlinked_config_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "docker"
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"Name": "/planted"}))
    d = root / "containers" / CID
    d.mkdir(parents=True)
    (d / "config.v2.json").symlink_to(elsewhere)
    assert read_config_v2(d) == (None, "a symlink (not followed)")


def test_labels_and_fields_are_capped_and_flagged(tmp_path: Path) -> None:
    """Row 12: a 2 MB label was copied into every record (50 lines -> 105 MB)."""

    async def main() -> None:
        s = Setup(tmp_path)
        await s.t.start()
        labels = {
            "big": "x" * (2 << 20),
            "com.docker.compose.project": "p",
            "k" * 300: "long key",
            **{f"l{i}": "v" * 1000 for i in range(100)},
        }
        write_config(s.root, CID, {"Name": "/n" + "é" * 5000, "Config": {"Image": "img:1", "Labels": labels}})
        out = await s.t.process(forward_batch(CID, n=50))
        [(_, b)] = out
        size = sum(len(x) for x in b.encoded())
        assert size < 50 * 80_000, size
        c = next(iter(b.records()))["container"]
        assert c["metadata_truncated"] is True
        assert c["labels"]["big"] == "x" * 4096
        assert c["labels"]["com_docker_compose_project"] == "p" and c["compose"] == {"project": "p"}
        assert "k" * 300 not in str(c["labels"])
        assert len(json.dumps(c["labels"])) < 70_000
        await s.ctx.aclose()

    asyncio.run(main())


def test_cap_info_keeps_what_fits() -> None:
    info = ContainerInfo(id=CID, name="web", image_name="app:1", labels={"a": "b"})
    assert cap_info(info, 4096, 65536) is info
    cut = cap_info(ContainerInfo(id=CID, name="ü" * 10), 9, 65536)
    assert cut.name == "ü" * 4 and cut.truncated and cut.ecs()["container"]["metadata_truncated"] is True


def test_a_short_id_is_resolved_by_the_api_only(tmp_path: Path) -> None:
    """A 12+ hex prefix is a valid reference (the API resolves it); files need the full id."""

    async def main() -> None:
        root = tmp_path / "docker"
        write_config(root, CID, {"Name": "/web"})
        m = DockerMetadata("files", None, str(root), MetadataOptions())
        assert (await m.lookup(CID)).name == "web"
        assert (await m.lookup(CID[:12])).via == "none"
        assert "a short id has no file" in m.why_unknown(CID[:12])

    asyncio.run(main())


def test_files_are_read_again_when_they_change(tmp_path: Path) -> None:
    async def main() -> None:
        root = tmp_path / "docker"
        p = write_config(root, CID, {"Name": "/one"})
        m = DockerMetadata("files", None, str(root), MetadataOptions(file_ttl=0.01))
        assert (await m.lookup(CID)).name == "one"
        write_config(root, CID, {"Name": "/two"})
        os.utime(p, (time.time() + 5, time.time() + 5))
        await asyncio.sleep(0.02)
        assert (await m.lookup(CID)).name == "two"

    asyncio.run(main())


def test_a_file_batch_finds_its_container_dir_through_the_columns_path_without_decoding(tmp_path: Path) -> None:
    """The json-file source's columns say which file they were read from (event.Columns.path,
    a declared member): a container directory outside the docker_root (another glob) is found
    through it, and the batch stays in columns (no dict built per record)."""

    async def main() -> None:
        s = Setup(tmp_path)
        await s.t.start()
        elsewhere = tmp_path / "other-root"
        write_config(elsewhere, CID, {"Name": "/from-beside-the-log", "Config": {"Image": "app:2"}})
        log = elsewhere / "containers" / CID / f"{CID}-json.log"
        parsed = LineReader().parse(docker_line("one\n") + docker_line("two\n"), 0)
        batch = Batch(None, Fields({"container": {"id": CID}}), columns=DockerLines(parsed, str(log)))
        [(_, out)] = await s.t.process(batch)
        assert out.columns is not None  # still columns: the path came from the protocol, not from records
        docs = [json.loads(d) for d in out.encoded()]
        assert [d["container"]["name"] for d in docs] == ["from-beside-the-log"] * 2
        assert [d["message"] for d in docs] == ["one", "two"]

    asyncio.run(main())


def test_every_columns_kind_declares_its_path() -> None:
    """The transform reads ``batch.columns.path`` (event.Columns): each kind of columns has it."""
    parsed = LineReader().parse(docker_line("x\n"), 0)
    assert DockerLines(parsed, "/d/c/c-json.log").path == "/d/c/c-json.log"
    assert EncodedDocs([b'{"message":"x"}']).path is None


def test_the_pipeline_shares_one_metadata_and_closes_it_at_its_end(tmp_path: Path) -> None:
    """Docker is a service the context holds, not part of its contract: the transform, a source
    that names containers (syslog) and a report (json-file lag) reach the same metadata through
    ``ctx.service(DockerMetadataService)``, and the pipeline's end stops its events thread."""

    async def main() -> None:
        # auto against a socket that is not there: the events thread runs, reconnecting
        retry = {"initial_backoff": 0.01, "max_backoff": 0.05}
        s = Setup(tmp_path, metadata="auto", docker_host=f"unix://{tmp_path}/no.sock", retry=retry)
        write_config(s.root, CID, {"Name": "/web"})
        assert not s.ctx._services  # nothing is made before it is asked for
        await s.t.start()
        docker = s.ctx.service(DockerMetadataService)
        assert await docker.pipeline_metadata() is s.t.docker
        assert docker.container_name(CID) == ""  # known to no cache yet: nothing looked up
        out_record(await s.t.process(forward_batch(CID)))
        assert docker.container_name(CID) == "web"
        thread = s.t.docker._thread
        assert thread is not None and thread.is_alive()
        await s.ctx.aclose()
        assert not thread.is_alive()
        assert not s.ctx._services

    asyncio.run(main())
