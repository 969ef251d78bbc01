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
