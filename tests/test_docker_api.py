"""Container metadata from the real Docker Engine API: cached, events followed, reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.docker_api import DockerMetadata, MetadataOptions
from collector.retry import RetryConfig
from tests.conftest import SERVICES, SESSION
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


# -- outages, hangs and recovery (issue 14) ------------------------------------------------------
TINY = RetryConfig(initial_backoff=0.0005, max_backoff=0.001)


class DockerSocketProxy:
    """A unix socket in front of the real engine's, which a test can take away ("gone": the
    socket disappears and open connections are cut, as when dockerd dies) and give back
    ("forward") while the engine keeps running (so containers can be made meanwhile)."""

    def __init__(self, upstream: str, path: Path) -> None:
        self.upstream = upstream.removeprefix("unix://")
        self.path = path
        self.mode = "gone"
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    def set(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
            for c in self._conns:  # what was open dies with the old mode
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
                c.close()
            self._conns.clear()
            if mode == "gone":
                if self._listener is not None:
                    self._listener.close()
                    self._listener = None
                    self.path.unlink(missing_ok=True)
                return
            if self._listener is None:
                s = socket.socket(socket.AF_UNIX)
                s.bind(str(self.path))
                s.listen(64)
                self._listener = s
                threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def close(self) -> None:
        self.set("gone")

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                if self.mode == "gone":  # accepted just before it went away
                    conn.close()
                    return
                self.accepted += 1
                self._conns.append(conn)
                up = socket.socket(socket.AF_UNIX)
                up.connect(self.upstream)
                self._conns.append(up)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxy(docker, tmp_path: Path) -> Iterator[DockerSocketProxy]:
    p = DockerSocketProxy(docker.host, tmp_path / "d.sock")
    p.set("forward")
    yield p
    p.close()


def test_the_api_gone_for_2000_reconnect_attempts_then_back(docker, proxy, caplog):
    """Issue 14: thousands of reconnects in seconds (tiny backoffs): metadata from the cache and
    the files meanwhile, a handful of log lines, and the API used again when it returns."""
    first = docker.run("true", name="outage-first", labels={"team": "a"})

    async def main() -> None:
        meta = DockerMetadata("api", proxy.host, str(docker.root), MetadataOptions(retry=TINY, api_timeout=5))
        await meta.start()
        try:
            assert meta.api_ok and meta.cached(first.id) is not None
            proxy.set("gone")
            await asyncio.to_thread(wait_until, lambda: not meta.api_ok, 20, what="the loss noticed")
            # created while we cannot see the API: its config.v2.json is readable
            during = docker.run("true", name="outage-during", labels={"team": "b"})
            await asyncio.to_thread(wait_until, lambda: meta.reconnect_attempts >= 2000, 120, what="2000 attempts")
            calls = meta.api_calls
            cached = await meta.lookup(first.id)
            assert (cached.name, cached.via, dict(cached.labels)) == ("outage-first", "api", {**LABELS, "team": "a"})
            from_file = await meta.lookup(during.id)
            assert (from_file.name, from_file.via) == ("outage-during", "files")
            assert from_file.labels["team"] == "b"
            ok, why = meta.health()
            assert not ok and proxy.host in why
            proxy.set("forward")
            await asyncio.to_thread(wait_until, lambda: meta.api_ok, 30, what="the API back")
            assert meta.api_calls > calls
            assert meta.cached(during.id) is not None and meta.cached(during.id).via == "api"  # relisted
            after = docker.run("true", name="outage-after")
            await asyncio.to_thread(wait_until, lambda: meta.cached(after.id) is not None, 20, what="events again")
        finally:
            await meta.close()
        said = [r for r in caplog.records if r.name == "collector.docker" and r.levelno >= logging.WARNING]
        assert 1 <= len(said) <= 5, [r.getMessage() for r in said]
        assert "unavailable" in said[0].getMessage() and proxy.host in said[0].getMessage()
        back = [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()]
        assert back and "failed attempts" in back[0], back

    with caplog.at_level(logging.INFO, logger="collector.docker"):
        asyncio.run(main())


LABELS = {"collector-test-session": SESSION}


@pytest.mark.parametrize("stand_in", ["accepts-never-answers", "never-accepts"])
def test_a_hung_api_socket_is_named_and_files_serve_meanwhile(tmp_path, stand_in, caplog):
    """A socket that accepts and never answers, or never accepts: every call times out, the
    warning names it, the files serve, nothing waits longer than api_timeout.

    A stand-in socket: the real engine cannot be made to never accept, and this one needs no
    engine and behaves the same every time. The real engine wedged (SIGSTOP: its socket still
    accepts, nothing answers) is the next test."""
    path = tmp_path / "hung.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.listen(0 if stand_in == "never-accepts" else 64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(s.accept()[0])

    if stand_in == "accepts-never-answers":
        threading.Thread(target=accept, daemon=True).start()
    root = tmp_path / "docker"
    cid = "ab" * 32
    (root / "containers" / cid).mkdir(parents=True)
    (root / "containers" / cid / "config.v2.json").write_text(json.dumps({"Name": "/from-file"}))

    async def main() -> None:
        meta = DockerMetadata("api", f"unix://{path}", str(root), MetadataOptions(api_timeout=0.5, retry=TINY))
        t0 = time.monotonic()
        await meta.start()
        assert time.monotonic() - t0 < 10
        try:
            assert not meta.api_ok
            t0 = time.monotonic()
            info = await meta.lookup(cid)
            assert time.monotonic() - t0 < 2  # not a call to the hung API per lookup
            assert (info.name, info.via) == ("from-file", "files")
            await asyncio.to_thread(wait_until, lambda: meta.reconnect_attempts >= 3, 30)
        finally:
            await meta.close()

    try:
        with caplog.at_level(logging.WARNING, logger="collector.docker"):
            asyncio.run(main())
    finally:
        stop.set()
        s.close()
        for c in held:
            c.close()
    said = [r.getMessage() for r in caplog.records if r.name == "collector.docker"]
    # the first connection waits in the listen backlog either way; once it is full, a socket
    # that never accepts refuses at once (EAGAIN), which is said when its minute comes
    assert said and f"unix://{path} accepts connections but did not answer within api_timeout (0.5s)" in said[0]
    assert len(said) <= 3, said


@contextlib.contextmanager
def wedged(engine_pid: int) -> Iterator[None]:
    """The real dockerd stopped with SIGSTOP: the kernel still accepts connections on its
    socket (the listen backlog) and nothing ever answers: a wedged daemon."""
    os.kill(engine_pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(engine_pid, signal.SIGCONT)


def engine_pid() -> int:
    return int((SERVICES / "dockerd" / "dockerd.pid").read_text())


def test_a_wedged_real_engine_files_meanwhile_then_the_api_again(docker, caplog):
    """Issue 14 as measured: with --metadata api and a wedged daemon the run stalled ~12 s at
    start, then shipped every record with only container.id and logged nothing."""
    known = docker.run("true", name="wedge-known", labels={"team": "w"})

    timeout = 2.0  # api_timeout; the bounds below allow a loaded machine's slack beside it
    slack = 6.0

    async def main() -> None:
        meta = DockerMetadata("api", docker.host, str(docker.root), MetadataOptions(api_timeout=timeout, retry=TINY))
        try:
            with wedged(engine_pid()):
                t0 = time.monotonic()
                await meta.start()
                assert time.monotonic() - t0 < 2 * timeout + slack
                assert not meta.api_ok and meta.last_error_hung
                info = await meta.lookup(known.id)
                assert (info.name, info.via, info.labels.get("team")) == ("wedge-known", "files", "w")
            await asyncio.to_thread(wait_until, lambda: meta.api_ok, 60, what="the engine answering again")
            assert (await meta.lookup(known.id)).via == "api"
            # wedged while followed: the first lookup of an unknown id waits api_timeout at most,
            # then the API is known to be down and files serve without waiting on it
            with wedged(engine_pid()):
                t0 = time.monotonic()
                assert (await meta.lookup("e" * 64)).via == "none"
                assert time.monotonic() - t0 < timeout + slack
                await asyncio.to_thread(wait_until, lambda: not meta.api_ok, slack, what="the API marked down")
                t0 = time.monotonic()
                assert (await meta.lookup(known.id)).name == "wedge-known"
                assert time.monotonic() - t0 < timeout  # served from files: no wait on the API
            await asyncio.to_thread(wait_until, lambda: meta.api_ok, 60, what="the engine answering again")
            later = docker.run("true", name="wedge-later")
            await asyncio.to_thread(wait_until, lambda: meta.cached(later.id) is not None, 20, what="events again")
        finally:
            await meta.close()

    with caplog.at_level(logging.INFO, logger="collector.docker"):
        asyncio.run(main())
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"{docker.host} accepts connections but did not answer" in m for m in said), said


def test_made_up_ids_do_not_turn_into_calls_to_the_engine(docker):
    """A sender inventing container ids (valid hex) gets them looked up at a bounded rate."""
    known = docker.run("true", name="budget-known")

    async def main() -> None:
        meta = DockerMetadata("api", docker.host, str(docker.root))
        await meta.start()
        try:
            calls = meta.api_calls
            t0 = time.monotonic()
            for i in range(5000):
                assert (await meta.lookup(f"{i:064x}")).via == "none"
            elapsed = time.monotonic() - t0
            made = meta.api_calls - calls
            assert made <= 20 + 20 * elapsed + 1, (made, elapsed)
            assert (await meta.lookup(known.id)).name == "budget-known"  # the host's own: cached
        finally:
            await meta.close()

    asyncio.run(main())


def test_a_container_knows_its_own_id_from_what_docker_mounts_into_it(docker, tmp_path):
    """own_container_id, on the /proc/self/mountinfo and cgroup a real container sees (the
    collector in a container must not tail itself). cgroup v2 gives a container "0::/" (a private
    cgroup namespace): the mounts are what tell, and alone suffice."""
    from collector.docker_api import own_container_id

    c = docker.run("cat /proc/self/mountinfo; echo ==== ; cat /proc/self/cgroup")
    mountinfo, cgroup = c.logs(stdout=True, stderr=False).decode().split("====\n")
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text(mountinfo)
    assert own_container_id(docker.root, proc) == c.id
    (proc / "cgroup").write_text(cgroup)
    assert own_container_id(docker.root, proc) == c.id
    (proc / "mountinfo").write_text("")
    assert own_container_id(docker.root, proc) in ("", c.id)  # cgroup v1 names it, v2 does not
    # the host's own mounts of a container's files (its shm, its directory) do not make it "us"
    host = [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if "/containers/" in ln]
    theirs = [
        ln for ln in mountinfo.splitlines() if ln.split()[4] not in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
    ]
    (proc / "mountinfo").write_text("\n".join([*host, *theirs]))
    (proc / "cgroup").write_text("0::/\n")
    assert own_container_id(docker.root, proc) == ""
