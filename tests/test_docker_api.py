"""Container metadata from the real Docker Engine API: cached, events followed, reconnects."""

from __future__ import annotations

import asyncio
import subprocess
import time

from collector.docker_api import DockerMetadata
from tests.helpers import REPO, wait_until


def dockerd(cmd: str) -> None:
    subprocess.run([str(REPO / "tests" / "services" / "dockerd.sh"), cmd], check=True, capture_output=True, timeout=300)


def test_listed_once_then_events_never_a_call_per_record_and_reconnects(docker):
    first = docker.run("true", name="meta-first", labels={"com.docker.compose.project": "p1"})

    async def main() -> None:
        meta = DockerMetadata("api", docker.host, str(docker.root))
        await meta.start()
        try:
            assert meta.api_ok
            calls = meta.api_calls
            for _ in range(10_000):  # 10k records of a known container: no API call
                info = await meta.lookup(first.id)
            assert meta.api_calls == calls
            assert info.name == "meta-first" and info.labels["com.docker.compose.project"] == "p1"
            # created after the start: learned from /events (create -> one inspect)
            later = docker.run("true", name="meta-later")
            await asyncio.to_thread(wait_until, lambda: meta.cached(later.id) is not None, 10)
            assert meta.cached(later.id).name == "meta-later"
            # renamed: the events say so
            later.rename("meta-renamed")
            await asyncio.to_thread(wait_until, lambda: meta.cached(later.id).name == "meta-renamed", 10)
            # the engine goes away: cached metadata still serves, health says why
            await asyncio.to_thread(dockerd, "stop")
            await asyncio.to_thread(wait_until, lambda: not meta.api_ok, 20)
            assert (await meta.lookup(first.id)).name == "meta-first"
            ok, why = meta.health()
            assert not ok and docker.host in why
            # ... and comes back: reconnect with backoff, relist, follow events again
            t0 = time.monotonic()
            await asyncio.to_thread(dockerd, "start")
            await asyncio.to_thread(wait_until, lambda: meta.api_ok, 60)
            assert time.monotonic() - t0 < 60
            again = docker.run("true", name="meta-after-restart")
            await asyncio.to_thread(wait_until, lambda: meta.cached(again.id) is not None, 20)
        finally:
            await meta.close()

    asyncio.run(main())


def test_resolve_a_peer_tag_ids_prefixes_and_nothing_path_like(tmp_path):
    """A syslog tag names a container by full id or 12+ hex prefix (files), never by a path."""
    import asyncio as _asyncio
    import json as _json

    from collector.docker_api import DockerMetadata

    cid = "ab" * 32
    d = tmp_path / "containers" / cid
    d.mkdir(parents=True)
    (d / "config.v2.json").write_text(_json.dumps({"ID": cid, "Name": "/web-1", "Config": {"Image": "app:1"}}))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.v2.json").write_text(_json.dumps({"ID": "x", "Name": "/chosen-by-the-sender"}))

    async def go() -> list[object]:
        meta = DockerMetadata("files", docker_root=str(tmp_path))
        await meta.start()
        refs = [cid, cid[:12], cid[:20], "../elsewhere", "../../elsewhere/", "ABABABABABAB", "web-1", "cd" * 32]
        out = [await meta.resolve(r) for r in refs]
        await meta.close()
        return [(i.id, i.name) if i is not None else None for i in out]

    got = _asyncio.run(go())
    assert got == [(cid, "web-1"), (cid, "web-1"), (cid, "web-1"), None, None, None, None, None]
