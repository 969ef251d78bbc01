"""The running process: signals, exit codes, the health and metrics endpoint."""

from __future__ import annotations

import signal
import socket
import time
import urllib.error
import urllib.request

import yaml

from tests.helpers import Collector, docker_lines, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path, sink, api_port=None, shutdown_timeout=30):
    d = tmp_path / "logs"
    d.mkdir(exist_ok=True)
    (d / "app-json.log").write_bytes(docker_lines([f"m{i}" for i in range(10)]))
    cfg = {
        "data_dir": str(tmp_path / "state"),
        "sources": {"files": {"type": "docker_json_file", "paths": [str(d / "*-json.log")]}},
        "sinks": {"out": {"inputs": ["files"], **sink}},
        "shutdown_timeout": shutdown_timeout,
    }
    if api_port:
        cfg["api"] = {"listen": f"127.0.0.1:{api_port}"}
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_health_and_metrics_endpoint(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path, {"type": "file", "path": str(tmp_path / "out.ndjson")}, api_port=port)
    with Collector("run", "-c", str(cfg)).start(tmp_path / "err.log") as col:
        url = f"http://127.0.0.1:{port}"
        wait_until(
            lambda: (
                (tmp_path / "out.ndjson").exists() and len((tmp_path / "out.ndjson").read_bytes().splitlines()) == 10
            )
        )
        metrics = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
        assert 'collector_events_received_total{component="files"} 10.0' in metrics
        assert 'collector_events_sent_total{component="out"} 10.0' in metrics
        health = urllib.request.urlopen(url + "/health", timeout=5)
        assert health.status == 200

        r = Collector("health", "--url", url)
        r.start(tmp_path / "health.log")
        assert r.proc.wait(30) == 0
        assert col.stop() == 0


def test_health_fails_when_the_engine_is_unreachable_past_unhealthy_after(tmp_path):
    """Unhealthy means: a sink has failed to deliver for longer than `unhealthy_after` (60 s by
    default; 5 s here), while nothing listens at its address."""
    port = free_port()
    cfg = write_config(
        tmp_path,
        {
            "type": "elasticsearch",
            "hosts": ["http://127.0.0.1:1"],
            "retry": {"initial_backoff": 0.1, "max_backoff": 0.5},
            "unhealthy_after": 5,
        },
        api_port=port,
        shutdown_timeout=1,
    )
    with Collector("run", "-c", str(cfg)).start(tmp_path / "err.log") as col:
        url = f"http://127.0.0.1:{port}/health"
        wait_until(lambda: _status(url) == 200, timeout=20, what="healthy at first")
        wait_until(lambda: "connection refused" in col.stderr(), what="the first failure")
        failing_since = time.monotonic()
        wait_until(lambda: _status(url) == 503, timeout=60, interval=0.2, what="unhealthy")
        assert time.monotonic() - failing_since >= 3  # not at the first failure: after unhealthy_after
        body = _body(url)
        assert "127.0.0.1:1" in body and "refused" in body.lower()
        assert col.stop() == 3  # stopped with records undelivered


def _body(url: str) -> str:
    try:
        return urllib.request.urlopen(url, timeout=5).read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()


def _status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=5).status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def test_a_second_signal_stops_at_once_and_says_records_are_left(tmp_path):
    cfg = write_config(
        tmp_path,
        {
            "type": "elasticsearch",
            "hosts": ["http://127.0.0.1:1"],
            "retry": {"initial_backoff": 0.1, "max_backoff": 0.5},
        },
        shutdown_timeout=60,
    )
    col = Collector("run", "-c", str(cfg)).start(tmp_path / "err.log")
    with col:
        wait_until(lambda: "connection refused" in col.stderr(), what="the sink failing to deliver")
        col.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "delivering what is in flight" in col.stderr(), what="the drain to begin")
        t0 = time.monotonic()
        rc = col.stop(signal.SIGTERM)
    assert time.monotonic() - t0 < 30  # not the 60 s drain deadline
    assert rc == 3
    assert "second signal" in col.stderr()
