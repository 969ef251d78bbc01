"""What the API says about a running collector: its counters against a known workload, GET /ready's
transitions, --api on the quick commands. Real CLI, real Docker engine, Graylog's own GELF input."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import yaml
from fluent import sender

from collector.top import Samples, scrape, total
from tests.deploy.conftest import free_port
from tests.helpers import Collector, docker_lines, read_ndjson, run_cli, wait_until


def tail_with_api(docker: Any, state: Path, out: Path) -> Collector:
    """``collector tail`` of the test engine's containers into ``out``, its API on a free port."""
    return Collector(
        "tail",
        "--docker-root",
        str(docker.root),
        "--data-dir",
        str(state),
        "--output",
        f"file:{out}",
        "--api",
        "127.0.0.1:0",
        env={"DOCKER_HOST": docker.host},
    )


def api_url(data_dir: Path, col: Collector) -> str:
    """The URL a collector started with ``--api 127.0.0.1:0`` wrote into its data directory."""

    def read() -> str:
        assert col.proc is not None and col.proc.poll() is None, col.stderr()
        try:
            return str(orjson.loads((data_dir / "api.json").read_bytes())["url"])
        except (OSError, ValueError):
            return ""

    return str(wait_until(read, what="the API to listen"))


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())
    except OSError:
        return 0, {}


def by_label(s: Samples, name: str, label: str) -> dict[str, float]:
    return {lab[label]: v for lab, v in s.get(name, ())}


def test_counters_move_by_exactly_the_records_of_a_known_workload(docker, tmp_path):
    counts = {f"known-{os.urandom(3).hex()}": n for n in (120, 250, 30)}
    containers = {
        name: docker.run(f'i=0; while [ $i -lt {n} ]; do echo "{name} $i"; i=$((i+1)); done', name=name)
        for name, n in counts.items()
    }
    state, out = tmp_path / "state", tmp_path / "out.ndjson"
    col = tail_with_api(docker, state, out)
    # other tests' containers may be on the engine: count ours, and the totals of everything
    with col.start(tmp_path / "err.log"):
        url = api_url(state, col)
        t0 = time.time()

        def delivered() -> int:
            return sum(1 for d in read_ndjson(out) if d["container"]["name"] in counts)

        wait_until(lambda: delivered() == sum(counts.values()), what="every line delivered")
        everything = len(read_ndjson(out))
        m = wait_until(
            lambda: (s := scrape(url)) and total(s, "collector_events_sent_total") == everything and s,
            what="the counters to catch up",
        )
        assert total(m, "collector_events_received_total", component="containers") == everything
        assert total(m, "collector_events_out_total", component="containers") == everything
        assert total(m, "collector_events_in_total", component="meta") == everything
        assert total(m, "collector_events_out_total", component="meta") == everything
        assert total(m, "collector_events_in_total", component="out") == everything
        assert total(m, "collector_events_sent_total", component="out") == everything
        assert total(m, "collector_dead_letters_total") == 0 and total(m, "collector_errors_total") == 0
        assert total(m, "collector_buffer_events", component="out") == 0
        # every container's lag is 0 once delivered, under its name (the API knows it)
        lag = {lab["container"]: (lab["container_id"], v) for lab, v in m["collector_checkpoint_lag_bytes"]}
        for name, c in containers.items():
            assert lag[name] == (c.id[:12], 0.0), lag
        assert total(m, "collector_docker_api_calls_total", call="list") >= 1
        assert total(m, "collector_docker_api_calls_total", call="events") >= 1
        assert total(m, "collector_docker_cache_hits_total", cache="api") >= 1
        writes = total(m, "collector_sink_request_duration_seconds_count", component="out")
        assert writes >= 1 and total(m, "collector_sink_request_duration_seconds_sum", component="out") > 0
        assert total(m, "collector_sink_requests_in_flight", component="out") == 0
        last = total(m, "collector_sink_last_delivery_timestamp_seconds", component="out")
        assert t0 - 60 < last <= time.time()

        # a known increment: every counter moves by exactly its records
        more = f"known-{os.urandom(3).hex()}"
        docker.run('i=0; while [ $i -lt 77 ]; do echo "more $i"; i=$((i+1)); done', name=more)
        counts[more] = 77
        wait_until(lambda: delivered() == sum(counts.values()), what="the new container's lines")
        m2 = wait_until(
            lambda: (s := scrape(url)) and total(s, "collector_events_sent_total") == everything + 77 and s,
            what="the counters to move",
        )
        for name, component in (
            ("collector_events_received_total", "containers"),
            ("collector_events_out_total", "containers"),
            ("collector_events_in_total", "meta"),
            ("collector_events_out_total", "meta"),
            ("collector_events_in_total", "out"),
            ("collector_events_sent_total", "out"),
        ):
            assert total(m2, name, component=component) - total(m, name, component=component) == 77, name
        assert by_label(m2, "collector_checkpoint_lag_bytes", "container")[more] == 0
        assert col.stop() == 0, col.stderr()


def test_bad_lines_count_as_dead_letters_and_errors_by_reason(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    good = docker_lines([f"good {i}" for i in range(40)])
    bad = b"{not json\n" * 3 + b'{"log": 5, "stream": "stdout", "time": "x"}\n'
    (logs / "app-json.log").write_bytes(good + bad + docker_lines(["last"], start_ns=500))
    state = tmp_path / "state"
    col = Collector(
        "tail",
        "--paths",
        str(logs / "*-json.log"),
        "--data-dir",
        str(state),
        "-o",
        f"file:{tmp_path / 'o'}",
        "--api",
        "0",
    )
    with col.start(tmp_path / "err.log"):
        url = api_url(state, col)
        assert url.startswith("http://127.0.0.1:"), url  # a bare port: loopback only
        m = wait_until(lambda: (s := scrape(url)) and total(s, "collector_events_sent_total") == 41 and s)
        dead = {lab["reason"]: v for lab, v in m["collector_dead_letters_total"]}
        errors = {lab["reason"]: v for lab, v in m["collector_errors_total"] if lab["component"] == "containers"}
        assert sum(dead.values()) == 4 and dead == errors, (dead, errors)
        assert len(read_ndjson(state / "dead-letter" / "containers.ndjson")) == 4
        assert total(m, "collector_events_received_total") == 41
        assert col.stop() == 0


def test_an_api_address_that_cannot_be_used_is_a_usage_error(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli(
            "tail", "--paths", str(tmp_path / "*.log"), "--data-dir", str(tmp_path / "d"), "--api", f"127.0.0.1:{port}"
        )
    assert r.returncode == 2, r.stderr
    assert f"the API cannot listen on tcp://127.0.0.1:{port}" in r.stderr and "--api" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_ready_once_sources_listen_and_sinks_were_reached_and_not_while_draining(graylog_peer, tmp_path):
    forward, gelf = free_port(), free_port()
    state = tmp_path / "state"
    cfg = {
        "data_dir": str(state),
        "sources": {"fwd": {"type": "fluent_forward", "listen": [f"tcp://127.0.0.1:{forward}"]}},
        "sinks": {
            "graylog": {
                "type": "gelf",
                "inputs": ["fwd"],
                "address": f"gelf+tcp://127.0.0.1:{gelf}",
                "retry": {"initial_backoff": 0.2, "max_backoff": 1.0},
            }
        },
        "api": {"listen": "tcp://127.0.0.1:0"},
        "shutdown_timeout": 8,
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    col = Collector("run", "-c", str(tmp_path / "p.yaml"))
    with col.start(tmp_path / "err.log"):
        url = api_url(state, col) + "/ready"
        # the forward source listens, Graylog is not there yet: not ready, and why
        status, body = wait_until(
            lambda: (r := get(url))[1].get("checks", {}).get("source[fwd]", "").startswith("ready") and r
        )
        assert status == 503 and body["status"] == "not ready", body
        assert body["checks"]["source[fwd]"] == f"ready: listening on tcp://127.0.0.1:{forward}"
        assert body["checks"]["sink[graylog]"].startswith("not ready: "), body

        # Graylog's GELF TCP input comes up on that port: ready, without a record sent
        with graylog_peer.decoder("tcp", count=20, port=gelf, timeout=120) as g:
            status, body = wait_until(lambda: (r := get(url))[0] == 200 and r, timeout=60, what="ready")
            assert body == {
                "status": "ready",
                "checks": {
                    "source[fwd]": f"ready: listening on tcp://127.0.0.1:{forward}",
                    "sink[graylog]": body["checks"]["sink[graylog]"],
                },
            }
            assert body["checks"]["sink[graylog]"].startswith(f"ready: tcp://127.0.0.1:{gelf}: connected since"), body
            fluent = sender.FluentSender("app", host="127.0.0.1", port=forward)
            for i in range(20):
                assert fluent.emit("web", {"message": f"m{i}"}), fluent.last_error
            fluent.close()
            assert sorted(int(d["message"][1:]) for d in g.wait().stored()) == list(range(20))

        # Graylog is gone, records wait for it; a stop drains them: not ready meanwhile
        fluent = sender.FluentSender("app", host="127.0.0.1", port=forward)
        for i in range(5):
            assert fluent.emit("web", {"message": f"late {i}"}), fluent.last_error
        fluent.close()
        assert get(url)[0] == 200  # reached once: ready (health says whether it keeps delivering)
        assert col.proc is not None
        col.proc.send_signal(signal.SIGTERM)
        status, body = wait_until(lambda: (r := get(url))[0] == 503 and r, what="not ready while draining")
        assert body["checks"]["pipeline"] == "not ready: stopping (delivering what is in flight)", body
        assert col.proc.wait(60) == 3, col.stderr()  # the late records were not delivered: said by the exit code
