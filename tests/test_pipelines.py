"""pipelines/ (and every collector config under deploy/): each one validates, and the ones whose
parts run here run end to end: real containers on the real Docker engine, the real search engine.

The fluentd/GELF/syslog/journald/multiline pipelines are validated here and their parts exercised
by the forward, GELF, syslog, journald and multiline tests (tests/e2e, tests/sources, tests/transforms).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import free_port
from tests.helpers import REPO, read_ndjson, run_cli

PIPELINES = sorted(REPO.glob("pipelines/*.yaml"))


def collector_configs() -> list[Path]:
    """pipelines/*.yaml, and every YAML under deploy/ that is a collector config (has `sources:`)."""
    found = list(PIPELINES)
    for p in sorted(REPO.glob("deploy/**/*.y*ml")):
        data = yaml.safe_load(p.read_text())
        if isinstance(data, dict) and "sources" in data:
            found.append(p)
    return found


CONFIGS = collector_configs()
# the variables the configs read, unset so that what is checked is each file's own defaults
CONFIG_VARS = frozenset(v for p in CONFIGS for v in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", p.read_text()))


def validate(*paths: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARS}
    r = subprocess.run(
        [sys.executable, "-m", "collector", "validate", "-c", *map(str, paths)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    return r.returncode, r.stdout + r.stderr


def test_the_ready_pipelines_are_there():
    names = {p.name for p in PIPELINES}
    assert {"json-file-to-elasticsearch.yaml", "console.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(REPO)) for p in CONFIGS])
def test_every_config_validates(path):
    rc, out = validate(path)
    assert rc == 0, f"`collector validate -c {path.relative_to(REPO)}` failed:\n{out}"
    assert f"{path}: ok" in out


def test_validate_fails_loudly_on_a_broken_pipeline(tmp_path):
    broken = tmp_path / "broken.yaml"
    text = (REPO / "pipelines" / "json-file-to-elasticsearch.yaml").read_text()
    broken.write_text(text.replace("data_stream:", "data_streem:"))
    rc, out = validate(broken)
    assert rc == 2
    assert "unknown key 'data_streem'" in out and str(broken) in out


# -- end to end ---------------------------------------------------------------------------------
WRITER = r"""
echo "starting up"
echo '{"level":"error","msg":"db connection lost"}' >&2
i=0; while [ $i -lt 200 ]; do echo "line $i"; i=$((i+1)); done
echo 'level=warn msg="disk 91% full"' >&2
echo "done"
"""


def expected_lines() -> list[tuple[str, str]]:
    out = [("stdout", "starting up"), ("stderr", '{"level":"error","msg":"db connection lost"}')]
    out += [("stdout", f"line {i}") for i in range(200)]
    out += [("stderr", 'level=warn msg="disk 91% full"'), ("stdout", "done")]
    return out


def test_json_file_to_elasticsearch_end_to_end(docker, search_engine, es_target, tmp_path):
    a = docker.run(WRITER, name=f"pipe-a-{es_target[-6:]}")
    b = docker.run(WRITER, name=f"pipe-b-{es_target[-6:]}", labels={"com.docker.compose.project": "shop"})
    env = {
        "COLLECTOR_DOCKER_ROOT": str(docker.root),
        "DOCKER_HOST": docker.host,
        "COLLECTOR_ES_URL": search_engine.url,
        "COLLECTOR_ES_DATA_STREAM": es_target,
        "COLLECTOR_DATA_DIR": str(tmp_path / "state"),
        "COLLECTOR_API_LISTEN": f"tcp://127.0.0.1:{free_port()}",
    }
    cfg = str(REPO / "pipelines" / "json-file-to-elasticsearch.yaml")
    r = run_cli("run", "-c", cfg, "--once", env=env)
    assert r.returncode == 0, r.stderr
    names = [a.name, b.name]
    docs = search_engine.search(es_target, query={"terms": {"container.name": names}})
    expected = expected_lines()
    for c in (a, b):
        mine = [d for d in docs if d["container"]["name"] == c.name]
        assert sorted((d["stream"], d["message"]) for d in mine) == sorted(expected)
        assert all(d["container"]["id"] == c.id for d in mine)
        levels = {d["message"]: d["log"].get("level") for d in mine}
        assert levels['{"level":"error","msg":"db connection lost"}'] == "error"
        assert levels['level=warn msg="disk 91% full"'] == "warning"  # the regex's "warn", in the one vocabulary
        codes = {d["message"]: d["log"].get("syslog", {}).get("severity", {}).get("code") for d in mine}
        assert codes['level=warn msg="disk 91% full"'] == 4
        assert levels["line 7"] is None
        assert {d["tags"][0] for d in mine} == {c.name}  # tag "{{.Name}}"
    assert {d["container"]["compose"]["project"] for d in docs if d["container"]["name"] == b.name} == {"shop"}
    # run again: checkpoints in COLLECTOR_DATA_DIR, nothing read twice; and _ids are stable anyway
    r = run_cli("run", "-c", cfg, "--once", env=env)
    assert r.returncode == 0, r.stderr
    again = search_engine.search(es_target, query={"terms": {"container.name": names}})
    assert len(again) == len(docs) == 2 * len(expected)


def test_console_pipeline_end_to_end(docker, tmp_path):
    c = docker.run(WRITER, name=f"console-{os.urandom(3).hex()}")
    out = tmp_path / "out.ndjson"
    env = {
        "COLLECTOR_DOCKER_ROOT": str(docker.root),
        "DOCKER_HOST": docker.host,
        "COLLECTOR_DATA_DIR": str(tmp_path / "state"),
        "COLLECTOR_OUT_FILE": str(out),
        "COLLECTOR_READ_FROM": "beginning",
    }
    r = run_cli("run", "-c", str(REPO / "pipelines" / "console.yaml"), "--once", env=env)
    assert r.returncode == 0, r.stderr
    printed = [yaml.safe_load(line) for line in r.stdout.splitlines() if line.strip()]  # NDJSON when piped
    filed = read_ndjson(out)
    for records in (printed, filed):
        mine = [(x["stream"], x["message"]) for x in records if x["container"]["name"] == c.name]
        assert sorted(mine) == sorted(expected_lines())


def test_the_images_default_config_is_the_json_file_to_elasticsearch_pipeline():
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "COPY pipelines/json-file-to-elasticsearch.yaml /etc/collector/collector.yaml" in dockerfile
    cfg = yaml.safe_load((REPO / "pipelines" / "json-file-to-elasticsearch.yaml").read_text())
    assert cfg["api"]["listen"] == "${COLLECTOR_API_LISTEN:-tcp://127.0.0.1:8686}"  # for the HEALTHCHECK
    assert cfg["sinks"]["elasticsearch"]["hosts"] == ["${COLLECTOR_ES_URL:-http://elasticsearch:9200}"]
