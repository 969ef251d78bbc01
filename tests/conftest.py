"""Fixtures for the real services: the private Docker engine (tests/services/dockerd.sh).

Nothing here skips: when a service cannot start, the tests that need it fail with the
script's output, because CI must run every test for real.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, SERVICES_DIR
from tests.peers.graylog_peer import GraylogPeer

SERVICES = SERVICES_DIR
# the tests read the collector's log as text (tests/test_ownlogs.py checks JSON, the default when
# stderr is not a terminal): every collector they start inherits this unless a test says otherwise
os.environ.setdefault("COLLECTOR_LOG_FORMAT", "text")
IMAGE = "collector-test/busybox:latest"
SESSION = uuid.uuid4().hex[:12]


@dataclass
class DockerEngine:
    host: str
    root: Path
    client: Any

    @property
    def containers_dir(self) -> Path:
        return self.root / "containers"

    def run(
        self,
        script: str,
        *,
        name: str | None = None,
        labels: dict[str, str] | None = None,
        log_driver: str = "json-file",
        log_opts: dict[str, str] | None = None,
        wait: bool = True,
        timeout: float = 120,
    ) -> Any:
        """Run ``sh -c script`` in a busybox container (no network); wait for it to exit."""
        if name:
            self._remove_stale(name)
        c = self.client.containers.run(
            IMAGE,
            ["sh", "-c", script],
            name=name or f"t-{uuid.uuid4().hex[:8]}",
            labels={**(labels or {}), "collector-test-session": SESSION},
            network_mode="none",
            log_config={"Type": log_driver, "Config": log_opts or {}},
            detach=True,
        )
        if wait:
            res = c.wait(timeout=timeout)
            assert res["StatusCode"] == 0, f"container failed: {res} {c.logs()[-2000:]!r}"
        c.reload()
        return c

    def _remove_stale(self, name: str) -> None:
        """A container of that name left by an earlier, interrupted test session."""
        import docker.errors

        try:
            old = self.client.containers.get(name)
        except docker.errors.NotFound:
            return
        if "collector-test-session" in (old.labels or {}):
            old.remove(force=True)

    def log_path(self, container: Any) -> Path:
        return self.containers_dir / container.id / f"{container.id}-json.log"

    def clean(self) -> None:
        """Remove the containers this test session made (others may share the engine)."""
        import docker.errors

        for c in self.client.containers.list(all=True, filters={"label": f"collector-test-session={SESSION}"}):
            try:
                c.remove(force=True)
            except docker.errors.APIError as e:  # already being removed, or gone
                if e.status_code not in (404, 409):
                    raise


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    import docker

    script = REPO / "tests" / "services" / "dockerd.sh"
    res = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=600, check=False)
    if res.returncode != 0:
        pytest.fail(f"cannot start the test Docker engine:\n{res.stdout}\n{res.stderr}", pytrace=False)
    host = res.stdout.strip().splitlines()[-1].split("=", 1)[1]
    client = docker.DockerClient(base_url=host, timeout=120)
    engine = DockerEngine(host=host, root=SERVICES / "dockerd" / "root", client=client)
    yield engine
    engine.clean()
    client.close()


@pytest.fixture
def docker(docker_engine: DockerEngine) -> Iterator[DockerEngine]:
    """The engine with no containers left from other tests."""
    docker_engine.clean()
    yield docker_engine
    docker_engine.clean()


@pytest.fixture(scope="session")
def journal() -> Path:
    """The directory of a real systemd journal that systemd-cat, logger --journald and Docker's
    journald driver write to (tests/services/journald.sh starts systemd-journald when none runs)."""
    script = REPO / "tests" / "services" / "journald.sh"
    res = subprocess.run([str(script), "start"], capture_output=True, text=True, timeout=120, check=False)
    if res.returncode != 0:
        pytest.fail(f"cannot start systemd-journald:\n{res.stdout}\n{res.stderr}", pytrace=False)
    return Path(res.stdout.strip().splitlines()[-1].split("=", 1)[1])


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "docker" in getattr(item, "fixturenames", ()) or "docker_engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)


@pytest.fixture
def now_ns() -> int:
    return time.time_ns()


@dataclass
class SearchEngine:
    name: str
    url: str

    def client(self) -> Any:
        from collector.sinks.elasticsearch.client import EngineClient

        return EngineClient([self.url], timeout=30)

    def request(self, method: str, path: str, body: Any = None) -> Any:
        c = self.client()
        try:
            return c.request(method, path, body)
        finally:
            c.close()

    def count(self, index: str) -> int:
        """Documents in ``index`` (0 while it does not exist or its shards are still recovering)."""
        self.request("POST", f"/{index}/_refresh")
        r = self.request("GET", f"/{index}/_count")
        if r.status in (404, 503):
            return 0
        assert r.status == 200, r.body
        return int(r.body["count"])

    def search(self, index: str, size: int = 10_000, query: Any = None) -> list[dict[str, Any]]:
        self.request("POST", f"/{index}/_refresh")
        body = {"size": size, "query": query or {"match_all": {}}, "sort": [{"log.offset": "asc"}]}
        r = self.request("POST", f"/{index}/_search", body)
        assert r.status == 200, r.body
        return [{"_id": h["_id"], **h["_source"]} for h in r.body["hits"]["hits"]]

    def script(self, *args: str) -> str:
        res = subprocess.run(
            [str(REPO / "tests" / "services" / "elasticsearch.sh"), *args, "--engine", self.name],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if res.returncode != 0:
            pytest.fail(f"elasticsearch.sh {' '.join(args)} --engine {self.name} failed:\n{res.stderr}", pytrace=False)
        return res.stdout.strip()

    def stop(self) -> None:
        self.script("stop")

    def start(self) -> None:
        self.url = self.script("start").splitlines()[-1]


ENGINES = os.environ.get("COLLECTOR_TEST_ENGINES", "es8,es9,os2").split(",")


@pytest.fixture(scope="session", params=ENGINES)
def search_engine(request: pytest.FixtureRequest) -> SearchEngine:
    """A real Elasticsearch 8, Elasticsearch 9 or OpenSearch 2 node (tests/services/elasticsearch.sh)."""
    e = SearchEngine(request.param, "")
    e.start()
    return e


@pytest.fixture
def es_target() -> str:
    """A data stream name of its own for each test (the test engines cannot delete data streams)."""
    return f"logs-docker-t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def es8() -> SearchEngine:
    """Elasticsearch 8 only (the chaos tests run against one engine, to keep CI short)."""
    e = SearchEngine("es8", "")
    e.start()
    return e


def all_docs(engine: SearchEngine, index: str, fields: list[str]) -> list[dict[str, Any]]:
    """Every document of ``index`` (scroll), with ``_id`` and the given fields."""
    engine.request("POST", f"/{index}/_refresh")
    r = engine.request("POST", f"/{index}/_search?scroll=2m", {"size": 10_000, "_source": fields})
    if r.status == 404:
        return []
    assert r.status == 200, r.body
    out: list[dict[str, Any]] = []
    while True:
        hits = r.body["hits"]["hits"]
        if not hits:
            break
        out.extend({"_id": h["_id"], **h["_source"]} for h in hits)
        r = engine.request("POST", "/_search/scroll", {"scroll": "2m", "scroll_id": r.body["_scroll_id"]})
        assert r.status == 200, r.body
    engine.request("DELETE", "/_search/scroll", {"scroll_id": r.body.get("_scroll_id")})
    return out


@dataclass
class SmallDisk:
    """A tmpfs of its own (we run as root), to fill to the last byte and give space back."""

    path: Path
    filler: Path

    def fill(self) -> None:
        """Take every free byte: the next write anywhere on it fails with ENOSPC."""
        with open(self.filler, "ab", buffering=0) as f:
            chunk = b"\0" * 65536
            while True:
                try:
                    f.write(chunk)  # the last one writes what fits, the next one fails
                except OSError:
                    break
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    cmd = ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the tests run as root): {res.stderr}", pytrace=False)
    try:
        yield SmallDisk(mnt, mnt / "filler")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="session")
def graylog_peer() -> GraylogPeer:
    """Graylog 6.1's own GELF code and client (tests/peers/graylog), built once per session."""
    return GraylogPeer.build()
