"""deploy/monitoring: the Prometheus scrape config and the Grafana dashboard, read by Prometheus's own
config loader and PromQL parser (tests/deploy/promcheck, from the Go module proxy), against the
metrics a real running collector exports, and wired into the stacks' `monitoring` profile."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.test_compose import projects  # noqa: F401 - the fixture: every compose file, loaded
from tests.helpers import REPO, Collector, docker_lines, go_binary, wait_until
from tests.test_telemetry import api_url

MONITORING = REPO / "deploy" / "monitoring"
CONFIG = MONITORING / "prometheus.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "collector.json"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself


def promcheck(*files: Path) -> subprocess.CompletedProcess[bytes]:
    checker = go_binary(REPO / "tests" / "deploy" / "promcheck")
    return subprocess.run([str(checker), *map(str, files)], capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def checked() -> dict:
    res = promcheck(CONFIG, DASHBOARD)
    assert res.returncode == 0, res.stderr.decode()
    return orjson.loads(res.stdout)


def exported(text: str) -> set[str]:
    """Every series name a /metrics page declares (with or without samples yet)."""
    names = set()
    for fam in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "summary": ["_sum", "_count"]}
        for suffix in suffixes.get(fam.type, [""]):
            names.add(fam.name + suffix)
        names.update(s.name for s in fam.samples)
    return names


def test_every_metric_the_dashboard_queries_is_one_a_running_collector_exports(checked, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a-json.log").write_bytes(docker_lines([f"m {i}" for i in range(20)]) + b"{bad\n")
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

        def page() -> str:
            text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
            return text if 'collector_events_sent_total{component="out"} 20.0' in text else ""

        text = wait_until(page, what="the records delivered")
        assert col.stop() == 0
    have = exported(text)
    queried = set(checked["metrics"]) - PROMETHEUS_OWN
    assert queried and all(name.startswith("collector_") for name in queried), queried
    assert not queried - have, f"the dashboard queries metrics the collector does not export: {sorted(queried - have)}"
    # and it shows what the notes ask of it: rates in/out per component, errors and dead letters by
    # reason, buffer fill, checkpoint lag, sink latency
    for name in (
        "collector_events_received_total",
        "collector_events_in_total",
        "collector_events_out_total",
        "collector_events_sent_total",
        "collector_errors_total",
        "collector_dead_letters_total",
        "collector_buffer_bytes",
        "collector_buffer_max_bytes",
        "collector_checkpoint_lag_bytes",
        "collector_sink_request_duration_seconds_bucket",
    ):
        assert name in queried, name
    assert checked["exprs"] >= 20


def test_the_scrape_config_targets_the_collector_service_where_its_api_listens(checked, projects):  # noqa: F811
    (job,) = checked["jobs"]
    assert job == {"job": "collector", "metrics_path": "/metrics", "targets": ["collector:8686"]}
    for file in ("deploy/elk/compose.yaml", "deploy/graylog/compose.yaml"):
        services = projects[file]["services"]
        assert services["collector"]["environment"]["COLLECTOR_API_LISTEN"] == "tcp://0.0.0.0:8686", file
        assert not any(p.get("target") == 8686 for p in services["collector"].get("ports") or []), "never on the host"
        for name in ("prometheus", "grafana"):
            assert services[name]["profiles"] == ["monitoring"], (file, name)
        mounts = {v["target"]: Path(v["source"]) for v in services["prometheus"]["volumes"] if v["type"] == "bind"}
        assert mounts["/etc/prometheus/prometheus.yml"] == CONFIG
        mounts = {v["target"]: Path(v["source"]) for v in services["grafana"]["volumes"] if v["type"] == "bind"}
        assert mounts["/etc/grafana/dashboards"] == DASHBOARD.parent
        assert mounts["/etc/grafana/provisioning"] == MONITORING / "grafana" / "provisioning"
        assert all(p["host_ip"] == "127.0.0.1" for s in ("prometheus", "grafana") for p in services[s]["ports"])


def test_the_checker_rejects_what_prometheus_rejects(tmp_path):
    bad_expr = orjson.loads(DASHBOARD.read_bytes())
    bad_expr["panels"][1]["targets"][0]["expr"] = "sum(rate(collector_events_received_total[5m])"
    (tmp_path / "d.json").write_bytes(orjson.dumps(bad_expr))
    res = promcheck(CONFIG, tmp_path / "d.json")
    assert res.returncode == 1 and b"unclosed left parenthesis" in res.stderr, res.stderr
    (tmp_path / "p.yml").write_text(CONFIG.read_text().replace("scrape_interval: 15s", "scrape_intervall: 15s", 1))
    res = promcheck(tmp_path / "p.yml", DASHBOARD)
    assert res.returncode == 1 and b"scrape_intervall" in res.stderr, res.stderr
