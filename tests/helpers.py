"""Shared test helpers: Docker-format log lines, running the collector, waiting for outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from collector.app import run_pipeline
from collector.config import validate_config

REPO = Path(__file__).resolve().parent.parent
SERVICES_DIR = Path(os.environ.get("COLLECTOR_SERVICES_DIR", "/tmp/collector-services"))
_go_lock = threading.Lock()


def go_binary(source_dir: Path, timeout: float = 900) -> Path:
    """A Go test peer built into ``$COLLECTOR_SERVICES_DIR/bin`` (tests/prepare.d/50-go-peers.sh
    builds them before pytest starts; this builds one again only when it is missing or older than
    its sources, for a local run of a single test file)."""
    import pytest

    binary = SERVICES_DIR / "bin" / source_dir.name
    with _go_lock:
        newest = max(p.stat().st_mtime for p in source_dir.iterdir() if p.suffix in (".go", ".mod", ".sum"))
        if binary.exists() and binary.stat().st_mtime >= newest:
            return binary
        go = shutil.which("go") or ("/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else None)
        if go is None:
            pytest.fail(f"the Go toolchain (go) is needed to build {source_dir}", pytrace=False)
        binary.parent.mkdir(parents=True, exist_ok=True)
        res = subprocess.run(
            [go, "build", "-buildvcs=false", "-o", str(binary), "."],
            cwd=source_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if res.returncode != 0:
            pytest.fail(f"go build of {source_dir} failed:\n{res.stdout}\n{res.stderr}", pytrace=False)
        return binary


def docker_line(log: str, stream: str = "stdout", t: str = "2024-05-01T12:00:00.000000001Z") -> bytes:
    """One line exactly as dockerd's json-file driver writes it."""
    return orjson.dumps({"log": log, "stream": stream, "time": t}) + b"\n"


def docker_lines(messages: list[str], stream: str = "stdout", start_ns: int = 1) -> bytes:
    out = []
    for i, m in enumerate(messages):
        out.append(docker_line(m + "\n", stream, f"2024-05-01T12:00:00.{start_ns + i:09d}Z"))
    return b"".join(out)


def split_like_docker(message: str, stream: str = "stdout", t: str = "2024-05-01T12:00:01Z") -> bytes:
    """A long message split in 16 KiB entries, the newline on the last one (as dockerd does)."""
    raw = message.encode()
    parts = [raw[i : i + 16384] for i in range(0, len(raw), 16384)]
    out = []
    for i, p in enumerate(parts):
        text = p.decode("utf-8", "ignore")
        out.append(docker_line(text + ("\n" if i == len(parts) - 1 else ""), stream, t))
    return b"".join(out)


def cri_line(
    message: str | bytes, stream: str = "stdout", t: str = "2024-05-01T12:00:00.000000001Z", tag: str = "F"
) -> bytes:
    """One line exactly as containerd and CRI-O write it (``<time> <stream> <P|F> <message>``)."""
    raw = message.encode() if isinstance(message, str) else message
    return f"{t} {stream} {tag} ".encode() + raw + b"\n"


def cri_lines(messages: list[str], stream: str = "stdout", start_ns: int = 1) -> bytes:
    return b"".join(cri_line(m, stream, f"2024-05-01T12:00:00.{start_ns + i:09d}Z") for i, m in enumerate(messages))


def split_like_cri(message: str, stream: str = "stdout", t: str = "2024-05-01T12:00:01Z", size: int = 16384) -> bytes:
    """A long message split in ``size``-byte parts (as containerd's 16 KiB buffer does): P parts, an F last."""
    raw = message.encode()
    parts = [raw[i : i + size] for i in range(0, len(raw), size)] or [b""]
    return b"".join(cri_line(p, stream, t, "F" if i == len(parts) - 1 else "P") for i, p in enumerate(parts))


def read_ndjson(path: str | Path) -> list[dict[str, Any]]:
    """The complete lines of an NDJSON file: read while a sink is writing it, the last line may be
    cut short (a write in progress): it is left for the next read."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    whole = data[: data.rfind(b"\n") + 1]
    return [orjson.loads(line) for line in whole.splitlines() if line.strip()]


def checkpoint_file(data_dir: str | Path) -> Path:
    """The checkpoint document of the one pipeline that ran with ``data_dir`` (checkpoints are
    kept per pipeline: ``<data_dir>/checkpoints/<outputs>-<hash>.json``)."""
    found = sorted((Path(data_dir) / "checkpoints").glob("*.json"))
    assert len(found) == 1, f"expected the checkpoints of one pipeline in {data_dir}, found {found}"
    return found[0]


def wait_until(cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")
        time.sleep(interval)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class TcpQueue:
    local_port: int
    remote_port: int
    unacknowledged: int  # bytes sent and not yet acknowledged by the peer (tx_queue)
    unread: int  # bytes received and not yet read by the application (rx_queue)


def tcp_queues(port: int) -> list[TcpQueue]:
    """The established TCP connections on this host with ``port`` at either end, with their
    kernel queues (Linux /proc/net/tcp and tcp6)."""
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            local, remote, state, queues = f[1], f[2], f[3], f[4]
            lport, rport = int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)
            if state == "01" and port in (lport, rport):
                tx, rx = (int(x, 16) for x in queues.split(":"))
                out.append(TcpQueue(lport, rport, tx, rx))
    return out


def unread_bytes(port: int) -> int:
    """Bytes waiting in the receive queues of the connections accepted on ``port``."""
    return sum(q.unread for q in tcp_queues(port) if q.local_port == port)


def metric(api: str, name: str, **labels: str) -> float | None:
    """A sample of a running collector's GET /metrics (``api``: its ``host:port``), summed over
    the labels not given; None while the endpoint does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = urllib.request.urlopen(f"http://{api}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def wait_progressing(value: Callable[[], float], goal: float, stall: float = 60.0, what: str = "") -> float:
    """Wait until ``value()`` reaches ``goal`` for as long as it keeps moving: fails only after
    ``stall`` seconds without progress (a loaded machine is slow, a loss stops the count)."""
    last, moved = value(), time.monotonic()
    while last < goal:
        time.sleep(0.5)
        now = value()
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved > stall:
            raise AssertionError(f"{what or 'the count'} stopped at {last} of {goal} ({stall:.0f}s without progress)")
    return last


def run_once(config: dict[str, Any]) -> int:
    """Run a pipeline in-process with ``--once`` semantics; returns the exit code."""
    cfg = validate_config(config)
    return asyncio.run(run_pipeline(cfg, once=True, install_signals=False))


def run_once_counted(config: dict[str, Any]) -> tuple[int, Any]:
    """``run_once`` that also returns the run's telemetry (its counters, after the end)."""
    cfg = validate_config(config)
    seen: list[Any] = []
    rc = asyncio.run(run_pipeline(cfg, once=True, install_signals=False, on_ready=seen.append))
    assert seen, "the pipeline never started"
    return rc, seen[0].ctx.telemetry


class Collector:
    """The real CLI in a subprocess (``python -m collector ...``)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.args = [sys.executable, "-m", "collector", *args]
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.stderr_path: Path | None = None

    def start(self, stderr_path: Path) -> Collector:
        self.stderr_path = stderr_path
        self._err = open(stderr_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.args, stdout=subprocess.PIPE, stderr=self._err, env=self.env, cwd=self.cwd, start_new_session=True
        )
        return self

    def catches(self, sig: int = signal.SIGTERM) -> bool:
        """The process handles ``sig`` by now (Python installs no handler before it runs our code:
        a signal in its first moments kills it, as any program)."""
        assert self.proc is not None
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return True  # gone: nothing to wait for
        caught = next((line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), "0")
        return bool(int(caught, 16) & (1 << (sig - 1)))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + 30  # a collector started a moment ago (a test that found its work done)
        while sig != signal.SIGKILL and self.proc.poll() is None and not self.catches(sig):
            if time.monotonic() > deadline:
                break  # (a command that never catches it: sent anyway)
            time.sleep(0.005)
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            self._err.close()
        return rc

    def kill9(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self._err.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path else ""

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill9()


def run_cli(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


class BackgroundPipeline:
    """A pipeline running in-process on its own thread and loop (follow mode), stopped on exit."""

    def __init__(self, config: dict[str, Any]) -> None:
        import threading

        self.cfg = validate_config(config)
        self.loop = asyncio.new_event_loop()
        self.pipeline: Any = None
        self.rc: int | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        def ready(p: Any) -> None:
            self.pipeline = p
            self._ready.set()

        try:
            self.rc = self.loop.run_until_complete(run_pipeline(self.cfg, install_signals=False, on_ready=ready))
        finally:
            self._ready.set()

    def __enter__(self) -> BackgroundPipeline:
        """Returns once every source is ready (listening, or done with its first scan), as GET
        /ready would say: what the test writes next is then new to the pipeline, not history."""
        self.thread.start()
        self._ready.wait(30)
        sources = self.pipeline.sources.values() if self.pipeline is not None else ()
        wait_until(
            lambda: not self.thread.is_alive() or all(s.ready()[0] for s in sources),
            60,
            what="the sources to be ready",
        )
        return self

    def stop(self, timeout: float = 60) -> int | None:
        if self.pipeline is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.pipeline.request_stop)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "pipeline did not stop"
        return self.rc

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            self.stop()

    @property
    def telemetry(self) -> Any:
        return self.pipeline.ctx.telemetry


def file_pipeline(paths: list[str], out: Path, data_dir: Path, **source: Any) -> dict[str, Any]:
    """json-file source straight into a file sink."""
    return {
        "data_dir": str(data_dir),
        "sources": {"files": {"type": "docker_json_file", "paths": paths, **source}},
        "sinks": {"out": {"type": "file", "inputs": ["files"], "path": str(out), "fsync": "never"}},
    }


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """Request handler of the stand-in HTTP servers of the tests: no access log, sized replies."""

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def answer(self, status: int, body: Any) -> None:
        self.reply(status, orjson.dumps(body))


class StandInServer:
    """A threaded HTTP(S) server on 127.0.0.1 for ``handler``; ``url``, then ``close()``."""

    def __init__(self, handler: type[QuietHandler], tls: tuple[Path, Path] | None = None) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    authorization: str
    content_encoding: str


class EngineProxy(StandInServer):
    """A small HTTP(S) proxy in front of a real engine that records what arrives on the wire
    (method, path, credentials, content encoding). With ``authorization`` it answers 401 like
    Elasticsearch to any other credentials (the test engines run without security).
    :meth:`refuse_bulk` makes it refuse the next ``_bulk`` requests as an overloaded engine does."""

    def __init__(self, upstream: str, tls: tuple[Path, Path] | None = None, authorization: str | None = None) -> None:
        self.seen: list[SeenRequest] = []
        self.refusals: deque[str] = deque()
        self.refused = 0
        proxy = self

        class Handler(QuietHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                got = self.headers.get("authorization", "")
                encoding = self.headers.get("content-encoding", "")
                proxy.seen.append(SeenRequest(self.command, self.path, got, encoding))
                if authorization is not None and got != authorization:
                    reason = {"type": "security_exception", "reason": "unable to authenticate user"}
                    self.answer(401, {"error": reason, "status": 401})
                    return
                if "_bulk" in self.path and proxy._refuse(self, body):
                    return
                req = urllib.request.Request(upstream + self.path, data=body or None, method=self.command)
                for name in ("content-type", "content-encoding"):
                    if self.headers.get(name):
                        req.add_header(name, self.headers[name])
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        self.reply(r.status, r.read(), r.headers.get("content-type", "application/json"))
                except urllib.error.HTTPError as e:
                    self.reply(e.code, e.read(), e.headers.get("content-type", "application/json"))

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _any

        super().__init__(Handler, tls)

    def refuse_bulk(self, n: int, kinds: tuple[str, ...] = ("503",)) -> None:
        """Refuse the next ``n`` bulk requests, cycling through ``kinds``: ``503`` (unavailable),
        ``429`` (the whole request rejected: queue full) or ``item-429`` (200, every item 429)."""
        self.refusals.extend(kinds[i % len(kinds)] for i in range(n))

    def _refuse(self, h: QuietHandler, body: bytes) -> bool:
        try:
            kind = self.refusals.popleft()
        except IndexError:
            return False
        self.refused += 1
        if kind == "item-429":
            item = {"create": {"status": 429, "error": {"type": "es_rejected_execution_exception", "reason": "full"}}}
            h.answer(200, {"errors": True, "items": [item] * (len(body.splitlines()) // 2)})
        elif kind == "429":
            h.answer(429, {"error": {"type": "es_rejected_execution_exception", "reason": "queue full"}, "status": 429})
        else:
            h.answer(503, {"error": {"type": "unavailable_shards_exception", "reason": "no shards"}, "status": 503})
        return True


class Terminal:
    """A real terminal: a tmux session on a server of its own (its socket in ``directory``)
    running one command; ``screen()`` is what a person would see (tmux capture-pane)."""

    def __init__(self, directory: Path, width: int = 200, height: int = 40) -> None:
        tmux = shutil.which("tmux")
        if tmux is None:
            import pytest

            pytest.fail("tmux is needed (tests/prepare.d/65-tmux.sh installs it)", pytrace=False)
        self.tmux = tmux
        self.socket = directory / "tmux.sock"
        self.width, self.height = width, height

    def _tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.tmux, "-S", str(self.socket), *args], capture_output=True, text=True, check=False)

    def run(self, *argv: str) -> Terminal:
        """Start ``argv``; when it ends the pane says ``EXIT=<code>`` and stays."""
        import shlex

        # as in a person's terminal: the size comes from the terminal, not from a COLUMNS the test
        # runner may have exported; Ctrl-C (keys("C-c")) interrupts the command, not the shell that
        # reports its exit code (a trap, unlike an ignored signal, is not inherited)
        cmd = "env -u COLUMNS -u LINES " + " ".join(shlex.quote(a) for a in argv)
        line = f'trap true INT; {cmd}; echo "EXIT=$?"; sleep 3600'
        res = self._tmux("new-session", "-d", "-x", str(self.width), "-y", str(self.height), "sh", "-c", line)
        assert res.returncode == 0, res.stderr
        return self

    def screen(self) -> str:
        res = self._tmux("capture-pane", "-p", "-J")
        return res.stdout

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def exit_code(self, timeout: float = 120) -> int:
        found = wait_until(
            lambda: [ln for ln in self.screen().splitlines() if ln.startswith("EXIT=")],
            timeout,
            what="the command to end",
        )
        return int(found[0][5:])

    def close(self) -> None:
        self._tmux("kill-server")

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
