"""Graylog 6.1's own GELF code as a test peer (tests/peers/graylog): built once, run per test.

    peer = GraylogPeer.build()                    # the `graylog_peer` session fixture does this
    with peer.decoder("udp", count=100) as g:     # Graylog's GelfChunkAggregator + GelfCodec
        ... send GELF to g.address ...
    g.stored(), g.errors(), g.summary               # what Graylog would index, what it refused
    peer.send("udp", "127.0.0.1:12201", messages)   # Graylog's gelfclient as a sender
    peer.input_request(body)                        # a REST body read by Graylog's request classes

The build (tests/peers/graylog/build.sh, Maven) is cached under $COLLECTOR_SERVICES_DIR and also
run by tests/prepare.d/45-graylog-peer.sh, so a test never waits for a download.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

PEER_DIR = Path(__file__).resolve().parent / "graylog"
GRAYLOG_VERSION = "6.1.4"
GELFCLIENT_VERSION = "1.5.1"
_lock = threading.Lock()
JVM = ["-Xss1m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Dfile.encoding=UTF-8"]


@dataclass
class GraylogPeer:
    java: str
    classpath: str

    @classmethod
    def build(cls) -> GraylogPeer:
        with _lock:
            res = subprocess.run([str(PEER_DIR / "build.sh")], capture_output=True, text=True, timeout=900, check=False)
        if res.returncode != 0:
            pytest.fail(f"building the Graylog peer failed:\n{res.stderr[-4000:]}", pytrace=False)
        java, classpath = res.stdout.strip().splitlines()[-2:]
        return cls(java, classpath)

    def command(self, tool: str, *args: str) -> list[str]:
        return [self.java, *JVM, "-cp", self.classpath, f"collector.peers.graylog.{tool}", *args]

    def decoder(self, transport: str, count: int, timeout: float = 60, port: int = 0) -> GraylogDecoder:
        return GraylogDecoder(self, transport, count, timeout, port)

    def send(
        self,
        transport: str,
        address: str,
        messages: list[dict[str, Any]],
        compression: str = "gzip",
        gap_ms: int = 3,
    ) -> int:
        """Send ``messages`` with Graylog's gelfclient; returns how many it handed over (all, or it failed)."""
        with tempfile.NamedTemporaryFile("wb", suffix=".ndjson", delete=False) as f:
            f.write(b"".join(orjson.dumps(m) + b"\n" for m in messages))
        try:
            args = [f"--{transport}", address, "--messages", f.name, "--compression", compression]
            res = subprocess.run(
                self.command("GelfSend", *args, "--gap-ms", str(gap_ms)),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        finally:
            os.unlink(f.name)
        if res.returncode != 0:
            raise AssertionError(f"gelfclient failed ({res.returncode}): {res.stderr[-3000:]}")
        return int(orjson.loads(res.stdout.strip().splitlines()[-1])["sent"])

    def input_request(self, body: bytes, input_id: str = "0123456789abcdef01234567") -> dict[str, Any]:
        """``body`` read as Graylog's InputsResource.create reads it: {"status": 201|400|404, ...}.

        201 comes with ``created`` and ``summary`` (Graylog's InputCreated and InputSummary for
        ``input_id``, serialised by Graylog's ObjectMapper), ``unknown_keys`` and ``wrong_type``.
        """
        with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
            f.write(body)
        try:
            res = subprocess.run(
                self.command("InputRequest", "input-create", f.name, "--id", input_id),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        finally:
            os.unlink(f.name)
        if res.returncode != 0:
            raise AssertionError(f"the Graylog request check failed: {res.stderr[-3000:]}")
        answer: dict[str, Any] = orjson.loads(res.stdout.strip().splitlines()[-1])
        return answer


class GraylogDecoder:
    """gelf-decode as a subprocess: listening once entered; ``wait()`` until it wrote ``count`` lines."""

    def __init__(self, peer: GraylogPeer, transport: str, count: int, timeout: float, port: int = 0) -> None:
        self.peer = peer
        self.port = port
        self.transport = transport
        self.count = count
        self.timeout = timeout
        self._dir = tempfile.TemporaryDirectory(prefix="graylog-decode-")
        self.out = Path(self._dir.name) / "decoded.ndjson"
        self.proc: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.summary: dict[str, Any] = {}
        self.stderr = ""
        self._lines: list[dict[str, Any]] | None = None

    def __enter__(self) -> GraylogDecoder:
        args = [f"--{self.transport}", str(self.port), "--count", str(self.count), "--out", str(self.out)]
        self.proc = subprocess.Popen(
            self.peer.command("GelfDecode", *args, "--timeout", str(int(self.timeout))),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            raise AssertionError(f"gelf-decode did not start: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
        self.address = orjson.loads(first)["listening"].split("://", 1)[1]
        return self

    def wait(self) -> GraylogDecoder:
        """Until gelf-decode exits: ``count`` lines written, or its timeout (an AssertionError)."""
        assert self.proc is not None
        out, err = self.proc.communicate(timeout=self.timeout + 30)
        self.stderr = err.decode(errors="replace")
        lines = out.decode().strip().splitlines()
        self.summary = orjson.loads(lines[-1])["summary"] if lines else {}
        self._lines = self._read()
        if self.proc.returncode != 0:
            raise AssertionError(
                f"Graylog's decoder got {len(self.lines())} of {self.count} messages (exit {self.proc.returncode}); "
                f"summary {self.summary}; errors {self.errors()[:3]}; stderr {self.stderr[-2000:]}"
            )
        return self

    def lines(self) -> list[dict[str, Any]]:
        return self._lines if self._lines is not None else self._read()

    def _read(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [orjson.loads(x) for x in self.out.read_bytes().splitlines() if x.strip()]

    def stored(self) -> list[dict[str, Any]]:
        return [x["stored"] for x in self.lines() if "stored" in x]

    def errors(self) -> list[str]:
        return [x["error"] for x in self.lines() if "error" in x]

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._dir.cleanup()
