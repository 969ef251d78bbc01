"""Real clients, beyond Python, through the collector: every record in comes out once.

* fluent-logger-golang v1.9.0 (the forward client Docker's fluentd driver embeds), with each
  of its options: sync and async, RequestAck, MarshalAsJSON (Fluentd's JSON forward mode),
  SubSecondPrecision, TagPrefix, BufferLimit, a Unix socket (tests/peers/fluent-go);
* @fluent-org/logger 1.0.10, Fluentd's official Node.js client, in each event mode, with and
  without acks, milliseconds, EventTime and the shared-key handshake (tests/peers/node-fluent);
* golf, a Go GELF writer that is not Graylog's go-gelf (tests/peers/golf-writer): gzip, zlib,
  uncompressed, chunked, without a host.

Each client sends numbered records; the test counts them by number (none lost, none twice).
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, go_binary
from tests.peers import node_fluent
from tests.sources.test_fluent_forward import forward_pipeline
from tests.sources.test_gelf import gelf_collector

N = 300
HOST = socket.gethostname()


@pytest.fixture(scope="session")
def fluent_go() -> Path:
    return go_binary(REPO / "tests" / "peers" / "fluent-go")


@pytest.fixture(scope="session")
def golf_writer() -> Path:
    return go_binary(REPO / "tests" / "peers" / "golf-writer")


@pytest.fixture(scope="session")
def node_client() -> Path:
    return node_fluent.install()


def run_peer(args: list[str], timeout: float = 120) -> None:
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    assert res.returncode == 0, f"{args[0]} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"


def exactly_once(records: list[dict[str, Any]], n: int, key: str = "seq") -> None:
    seqs = sorted(r[key] for r in records)
    assert seqs == list(range(n)), f"lost {sorted(set(range(n)) - set(seqs))[:10]}, extra {len(seqs) - n}"


# -- fluent-logger-golang -------------------------------------------------------------------------
GO_CASES = {
    "sync": [],
    "async": ["-async"],
    "sync, RequestAck": ["-ack"],
    "async, RequestAck": ["-async", "-ack"],
    "MarshalAsJSON": ["-json"],
    "MarshalAsJSON, RequestAck": ["-json", "-ack"],
    "SubSecondPrecision": ["-subsecond", "-post-with-time"],
    "SubSecondPrecision, RequestAck, async": ["-subsecond", "-ack", "-async"],
    "TagPrefix": ["-prefix", "docker"],
    "BufferLimit, async": ["-async", "-buffer-limit", "65536"],
    "hostname field": ["-hostname", "go-host-1"],
    "Unix socket, RequestAck": ["-unix", "SOCKET", "-ack"],
}


@pytest.mark.parametrize("case", list(GO_CASES))
def test_fluent_logger_golang(tmp_path, fluent_go, case):
    args = list(GO_CASES[case])
    listen: dict[str, Any] = {}
    if "SOCKET" in args:
        sock = tmp_path / "fwd.sock"
        args[args.index("SOCKET")] = str(sock)
        listen = {"listen": f"unix://{sock}"}
    with forward_pipeline(tmp_path, **listen) as run:
        if not listen:
            args += ["-addr", f"127.0.0.1:{run.port}"]
        run_peer([str(fluent_go), "-n", str(N), "-tag", "go.app", *args])
        recs = run.wait_records(N)
        assert run.errors() == 0
    exactly_once(recs, N)
    tag = "docker.go.app" if "TagPrefix" in case else "go.app"
    assert all(r["tags"] == [tag] for r in recs)
    assert all(r["log"]["level"] == "info" for r in recs)  # the client's "info", in the one vocabulary
    expected_host = "go-host-1" if "hostname" in case else HOST
    assert all(r["host"] == {"name": expected_host} for r in recs)
    if "-post-with-time" in args:  # EventTime: nanoseconds kept
        by = {r["seq"]: r for r in recs}
        assert by[0]["@timestamp"] == "2024-05-01T12:00:00.123456789Z"
        assert by[7]["@timestamp"] == "2024-05-01T12:00:07.123456789Z"


# -- @fluent-org/logger (Node.js) -------------------------------------------------------------------
NODE_CASES = {
    "Message": ["--mode", "Message"],
    "Message, ack": ["--mode", "Message", "--ack"],
    "Forward": ["--mode", "Forward", "--flush-interval", "20"],
    "Forward, ack": ["--mode", "Forward", "--ack", "--flush-interval", "20"],
    "PackedForward": ["--mode", "PackedForward"],
    "PackedForward, ack, milliseconds": ["--mode", "PackedForward", "--ack", "--milliseconds"],
    "CompressedPackedForward": ["--mode", "CompressedPackedForward", "--flush-interval", "20"],
    "CompressedPackedForward, ack, EventTime": ["--mode", "CompressedPackedForward", "--ack", "--event-time"],
    "shared key, ack": ["--mode", "PackedForward", "--ack", "--shared-key", "node-secret", "--hostname", "node-7"],
}


@pytest.mark.parametrize("case", list(NODE_CASES))
def test_fluent_org_logger(tmp_path, node_client, case):
    args = NODE_CASES[case]
    source = {"shared_key": "node-secret"} if "--shared-key" in args else {}
    with forward_pipeline(tmp_path, **source) as run:
        send = ["node", str(node_client / "send.js"), "--port", str(run.port), "--n", str(N), "--tag", "node.app"]
        run_peer([*send, *args])
        recs = run.wait_records(N)
        assert run.errors() == 0
    exactly_once(recs, N)
    assert all(r["tags"] == ["node.app"] and r["log"]["level"] == "warning" for r in recs)
    assert all(r["host"] == {"name": "node-7" if "shared key" in case else HOST} for r in recs)
    if "EventTime" in case:
        by = {r["seq"]: r for r in recs}
        assert by[3]["@timestamp"] == "2024-05-01T12:00:03.123456789Z"
    if "milliseconds" in case:
        assert any(not r["@timestamp"].endswith(".000000000Z") for r in recs)


# -- golf (Go GELF writer) ------------------------------------------------------------------------
GOLF_CASES = {
    "gzip": ["-addr", "udp://127.0.0.1:PORT?compress=gzip"],
    "zlib": ["-addr", "udp://127.0.0.1:PORT?compress=zlib"],
    "uncompressed": ["-addr", "udp://127.0.0.1:PORT?compress=none"],
    "chunked (gzip, 6 KB messages, 512-byte chunks)": [
        "-addr",
        "udp://127.0.0.1:PORT?compress=gzip",
        "-size",
        "6000",
        "-chunk-size",
        "512",
    ],
    "no host, level warning": ["-addr", "udp://127.0.0.1:PORT?compress=none", "-no-host", "-level", "4"],
}


@pytest.mark.parametrize("case", list(GOLF_CASES))
def test_golf_gelf_writer(tmp_path, golf_writer, case):
    n = 100  # UDP: a burst small enough for the default receive buffer
    with gelf_collector(tmp_path, listen=("udp",)) as c:
        args = [a.replace("PORT", str(c.ports["udp"])) for a in GOLF_CASES[case]]
        run_peer([str(golf_writer), "-n", str(n), *args])
        recs = c.wait(n)
        errors = c.errors()
    exactly_once(recs, n)
    assert all(r["client"] == "golf" for r in recs)
    if "no host" in case:
        assert errors == {"missing_host": n}
        assert all(r["host"] == {"name": "127.0.0.1"} and r["log"]["flags"] == ["host_from_peer"] for r in recs)
        assert all(r["log"]["level"] == "warning" for r in recs)
    else:
        assert errors == {}
        assert all(r["host"] == {"name": HOST} and r["log"]["level"] == "info" for r in recs)
    if "chunked" in case:
        assert all(len(r["message"]) == 6000 for r in recs)
