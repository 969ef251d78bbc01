"""Every compose file under deploy/, loaded as `docker compose config` loads it.

The `docker compose` plugin is not installed here (and no registry is reachable to pull images),
so tests/deploy/composecheck runs the Compose Specification's reference loader
(github.com/compose-spec/compose-go, what Docker Compose v2 is built on, fetched from the Go module
proxy): schema validation, interpolation, every profile, the consistency checks (undefined
volumes/networks/services). On top of it, what the loader cannot know: files the stacks mount or
build from exist in this repository, pipelines the services run exist, and the tailing sidecars
are set up as deploy/README.md says.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from tests.helpers import REPO, go_binary

COMPOSE_FILES = sorted(REPO.glob("deploy/**/compose.yaml"))
CHECKER = REPO / "tests" / "deploy" / "composecheck"


def compose_config(*files: Path | str) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STACK_", "GRAYLOG_", "ES_"))}
    return subprocess.run(
        [str(go_binary(CHECKER)), *map(str, files)], cwd=CHECKER, capture_output=True, timeout=600, env=env, check=False
    )


@pytest.fixture(scope="module")
def projects() -> dict[str, dict[str, Any]]:
    res = compose_config(*COMPOSE_FILES)
    assert res.returncode == 0, res.stderr.decode()
    out = orjson.loads(res.stdout)
    return {str(Path(f).relative_to(REPO)): p for f, p in out.items()}


def test_there_are_the_three_paths(projects):
    assert set(projects) == {"deploy/elk/compose.yaml", "deploy/graylog/compose.yaml"}
    elk = projects["deploy/elk/compose.yaml"]["services"]
    assert {"elasticsearch", "kibana", "setup", "collector"} <= set(elk)
    assert elk["collector-forward"]["profiles"] == ["fluentd"]  # the fluentd log-driver path
    graylog = projects["deploy/graylog/compose.yaml"]["services"]
    assert {"mongodb", "opensearch", "graylog", "graylog-input", "collector"} <= set(graylog)
    for stack in (elk, graylog):  # Prometheus and Grafana: optional (tests/deploy/test_monitoring.py)
        assert stack["prometheus"]["profiles"] == stack["grafana"]["profiles"] == ["monitoring"]


def test_the_checker_rejects_what_docker_compose_rejects(tmp_path):
    bad = {
        "unknown-key.yaml": "services:\n  a:\n    image: x\n    restrat: always\n",
        "undefined-volume.yaml": "services:\n  a:\n    image: x\n    volumes: [nope:/data]\n",
        "undefined-dependency.yaml": "services:\n  a:\n    image: x\n    depends_on: [b]\n",
        "missing-variable.yaml": "services:\n  a:\n    image: ${NOT_SET_ANYWHERE:?must be set}\n",
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        res = compose_config(tmp_path / name)
        assert res.returncode != 0, name
        assert name in res.stderr.decode(), res.stderr.decode()


def services(projects):
    for file, p in projects.items():
        for name, s in p["services"].items():
            yield file, name, s


def test_what_the_stacks_mount_and_build_from_exists(projects):
    for file, name, s in services(projects):
        for v in s.get("volumes") or []:
            if v["type"] == "bind" and v["source"].startswith(str(REPO)):
                assert Path(v["source"]).exists(), f"{file}: {name} mounts {v['source']}, which does not exist"
        if "build" in s:
            ctx = Path(s["build"]["context"])
            assert (ctx / s["build"]["dockerfile"]).is_file(), f"{file}: {name}"
            assert (ctx / s["build"]["dockerfile"]).resolve() == REPO / "deploy" / "Dockerfile"


def test_the_pipelines_the_services_run_exist(projects):
    seen = 0
    for file, name, s in services(projects):
        cmd = s.get("command") or []
        if s["image"] == "collector:local" and "-c" in cmd:
            path = cmd[cmd.index("-c") + 1]
            assert path.startswith("/etc/collector/pipelines/"), f"{file}: {name} runs {path}"
            local = REPO / "pipelines" / Path(path).name  # the image copies pipelines/ there
            assert local.is_file(), f"{file}: {name} runs {path}, but pipelines/{local.name} does not exist"
            seen += 1
    assert seen >= 2


def test_the_image_healthcheck_is_off_where_the_pipeline_has_no_api(projects):
    """`collector health` asks the pipeline's `api.listen`: a pipeline without `api:` is never healthy."""
    for file, name, s in services(projects):
        if s["image"] != "collector:local" or s.get("restart") == "no":  # one-shots end before it matters
            continue
        cmd = s.get("command") or ["run", "-c", "/etc/collector/collector.yaml"]
        if cmd[:2] != ["run", "-c"]:
            continue
        pipeline = "json-file-to-elasticsearch.yaml" if cmd[2].endswith("/collector.yaml") else Path(cmd[2]).name
        has_api = "api" in (yaml.safe_load((REPO / "pipelines" / pipeline).read_text()) or {})
        disabled = (s.get("healthcheck") or {}).get("disable", False)
        assert has_api != disabled, f"{file}: {name} runs {pipeline} ({has_api=}) with healthcheck {disabled=}"


def test_tailing_sidecars_are_root_without_capabilities_and_keep_state_in_a_named_volume(projects):
    tailers = 0
    for file, name, s in services(projects):
        mounts = {v["target"]: v for v in s.get("volumes") or []}
        if "/var/lib/docker/containers" not in mounts:
            continue
        tailers += 1
        where = f"{file}: {name}"
        assert mounts["/var/lib/docker/containers"]["read_only"], where
        assert mounts["/var/run/docker.sock"]["read_only"], where
        assert mounts["/var/lib/collector"]["type"] == "volume", f"{where}: state must live in a named volume"
        assert s["user"] == "0" and s["cap_drop"] == ["ALL"] and s["read_only"], where
        assert "no-new-privileges:true" in s["security_opt"], where
    assert tailers == 2


def test_fluentd_driver_containers_reach_a_published_receiver(projects):
    for file, p in projects.items():
        published = {
            int(port["published"])
            for s in p["services"].values()
            for port in s.get("ports") or []
            if port.get("host_ip") == "127.0.0.1"
        }
        for name, s in p["services"].items():
            logging = s.get("logging") or {}
            if logging.get("driver") != "fluentd":
                continue
            # the driver runs in dockerd, on the host: the address is the host's, not a service name
            host, port = logging["options"]["fluentd-address"].rsplit(":", 1)
            assert host == "127.0.0.1" and int(port) in published, f"{file}: {name}"


def test_laptop_stacks_publish_on_loopback_only(projects):
    for file, name, s in services(projects):
        for port in s.get("ports") or []:
            assert port.get("host_ip") == "127.0.0.1", f"{file}: {name} publishes {port} beyond this machine"
