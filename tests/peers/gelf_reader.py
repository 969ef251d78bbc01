"""The Go GELF peer (tests/peers/gelf-reader, Graylog's go-gelf): built once, run per test.

    with GelfReader(tcp=True) as peer:
        ... send to peer.udp / peer.tcp ...
        msgs = peer.wait_for(100)

Built before pytest starts by tests/prepare.d/50-go-peers.sh into ``$COLLECTOR_SERVICES_DIR/bin``
(again by the first test when missing or older than its sources).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from tests.helpers import go_binary

PEER_DIR = Path(__file__).resolve().parent / "gelf-reader"


def build() -> Path:
    return go_binary(PEER_DIR)


class GelfReader:
    """The peer as a subprocess; its decoded messages collected by a thread."""

    def __init__(
        self,
        udp: bool | str = True,
        tcp: bool | str = False,
        tls: tuple[str, str] | None = None,
    ) -> None:
        """``udp``/``tcp``: True for a free port on 127.0.0.1, or "HOST:PORT"; ``tls``: (cert, key)."""
        self.args = [
            str(build()),
            "-udp",
            udp if isinstance(udp, str) else ("127.0.0.1:0" if udp else ""),
            "-tcp",
            tcp if isinstance(tcp, str) else ("127.0.0.1:0" if tcp else ""),
        ]
        if tls is not None:
            self.args += ["-tls-cert", tls[0], "-tls-key", tls[1]]
        self.proc: subprocess.Popen[bytes] | None = None
        self.lines: list[dict[str, Any]] = []
        self.udp = ""
        self.tcp = ""

    def __enter__(self) -> GelfReader:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None
        first = self.proc.stdout.readline()
        if not first:
            raise AssertionError(f"gelf-reader did not start: {self.proc.stderr.read()!r}")  # type: ignore[union-attr]
        ready = orjson.loads(first)
        self.udp = ready.get("udp", "")
        self.tcp = ready.get("tcp", "")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(orjson.loads(line))

    def messages(self) -> list[dict[str, Any]]:
        return [x["message"] for x in list(self.lines) if "message" in x]

    def errors(self) -> list[str]:
        return [x["error"] for x in list(self.lines) if "error" in x]

    def wait_for(self, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.messages()) < n:
            if time.monotonic() > deadline:
                got = len(self.messages())
                raise AssertionError(f"go-gelf decoded {got} of {n} messages; errors: {self.errors()[:5]}")
            time.sleep(0.05)
        return self.messages()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
