"""The collector image, built for real from deploy/Dockerfile, run as the documented sidecar.

    docker run --user 0 --cap-drop ALL --security-opt no-new-privileges --read-only --network host \
      -v /var/lib/docker/containers:/var/lib/docker/containers:ro \
      -v /var/run/docker.sock:/var/run/docker.sock:ro \
      -v collector-state:/var/lib/collector  IMAGE

against the real Docker engine (its other containers are what it tails) and a real search engine.
"""

from __future__ import annotations

import contextlib
import time
import urllib.request
import uuid
from typing import Any

import pytest
from docker import errors as docker_errors

from tests.conftest import ENGINES, SESSION
from tests.deploy.conftest import free_port
from tests.helpers import wait_until

# the image is the same whatever the engine: one is enough (the sink is tested on all of them)
SIDECAR_ENGINE = "es9" if "es9" in ENGINES else ENGINES[0]


def writer(n: int, prefix: str, pause_every: int = 0) -> str:
    pause = f"if [ $((i % {pause_every})) -eq 0 ]; then usleep 20000; fi;" if pause_every else ""
    return (
        f'i=0; while [ $i -lt {n} ]; do echo "{prefix} $i"; {pause} '
        f'if [ $((i % 50)) -eq 0 ]; then echo \'{{"level":"error","msg":"{prefix} failed {{i}}"}}\' >&2; fi; '
        f"i=$((i+1)); done"
    )


def expected(n: int, prefix: str) -> list[tuple[str, str]]:
    out = [("stdout", f"{prefix} {i}") for i in range(n)]
    out += [("stderr", f'{{"level":"error","msg":"{prefix} failed {{i}}"}}') for i in range(0, n, 50)]
    return sorted(out)


def start_sidecar(docker, image: str, volume: str, env: dict[str, str], name: str) -> Any:
    sock = docker.host.removeprefix("unix://")
    return docker.client.containers.run(
        image,
        name=name,
        user="0",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        read_only=True,
        network_mode="host",
        volumes={
            str(docker.containers_dir): {"bind": "/var/lib/docker/containers", "mode": "ro"},
            sock: {"bind": "/var/run/docker.sock", "mode": "ro"},
            volume: {"bind": "/var/lib/collector", "mode": "rw"},
        },
        environment=env,
        labels={"collector-test-session": SESSION},  # removed by the fixture whatever happens
        # the image's own HEALTHCHECK command, asked every second instead of every 30
        healthcheck={"interval": 1_000_000_000, "timeout": 5_000_000_000, "retries": 3, "start_period": 0},
        detach=True,
    )


def running(c: Any) -> bool:
    """True while the sidecar runs; its exit fails the test at once, with its logs."""
    c.reload()
    assert c.status == "running", f"the sidecar exited: {c.attrs['State']}\n{c.logs(tail=40).decode()}"
    return True


def lines_of(search_engine, target: str, names: list[str]) -> dict[str, list[tuple[str, str]]]:
    if search_engine.request("POST", f"/{target}/_refresh").status == 404:  # nothing written yet
        return {}
    docs = search_engine.search(target, query={"terms": {"container.name": names}})
    out: dict[str, list[tuple[str, str]]] = {n: [] for n in names}
    for d in docs:
        out[d["container"]["name"]].append((d["stream"], d["message"]))
    return {n: sorted(v) for n, v in out.items()}


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_the_image_is_configured_as_documented(docker, collector_image):
    cfg = docker.client.images.get(collector_image).attrs["Config"]
    assert cfg["User"] == "10001:0"
    assert cfg["Healthcheck"]["Test"] == ["CMD", "collector", "health"]
    assert "/var/lib/collector" in cfg["Volumes"]
    assert cfg["Cmd"] == ["run", "-c", "/etc/collector/collector.yaml"]
    script = (
        "collector --version && collector validate -c /etc/collector/collector.yaml /etc/collector/pipelines/*.yaml"
        " && python3 -c 'from collector.provision import dashboards_dir; print(dashboards_dir())' && id -u"
    )
    out = docker.client.containers.run(
        collector_image, ["sh", "-c", script], network_mode="none", remove=True, stderr=True
    ).decode()
    assert "/etc/collector/collector.yaml: ok" in out
    assert "/opt/collector/share/collector/dashboards\n" in out  # what `collector setup --kibana` imports
    assert out.strip().endswith("10001")  # the unprivileged default, for the receivers


def test_the_default_user_refuses_to_tail_silently(docker, collector_image):
    """Mounted but unreadable (root:root 0700): a loud exit 2, not a collector that finds nothing."""
    c = docker.client.containers.run(
        collector_image,
        network_mode="none",
        volumes={str(docker.containers_dir): {"bind": "/var/lib/docker/containers", "mode": "ro"}},
        labels={"collector-test-session": SESSION},
        detach=True,
    )
    try:
        assert c.wait(timeout=60)["StatusCode"] == 2
        assert "cannot read /var/lib/docker/containers as uid 10001" in c.logs().decode()
    finally:
        c.remove(force=True)  # its json-file log would otherwise be tailed by later tests


@pytest.mark.parametrize("search_engine", [SIDECAR_ENGINE], indirect=True)
def test_sidecar_ships_every_container_and_resumes_from_its_named_volume(
    docker, collector_image, search_engine, es_target
):
    run = uuid.uuid4().hex[:6]
    names = {k: f"sc-{k}-{run}" for k in ("early", "errors", "late", "downtime")}
    volume = docker.client.volumes.create(f"collector-state-{run}")
    api_port = free_port()
    env = {
        "COLLECTOR_ES_URL": search_engine.url,
        "COLLECTOR_ES_DATA_STREAM": es_target,
        "COLLECTOR_API_LISTEN": f"tcp://127.0.0.1:{api_port}",
    }
    want = {
        names["early"]: expected(300, "early"),
        names["errors"]: expected(60, "errors"),
        names["late"]: expected(150, "late"),
        names["downtime"]: expected(120, "downtime"),
    }
    sidecars: list[Any] = []
    try:
        # written before the sidecar starts: read from the beginning
        docker.run(writer(300, "early"), name=names["early"])
        docker.run(writer(60, "errors"), name=names["errors"], labels={"com.docker.compose.project": "shop"})
        t0 = time.monotonic()
        a = start_sidecar(docker, collector_image, volume.name, env, f"collector-a-{run}")
        sidecars.append(a)
        # a container started while it runs: found and followed
        docker.run(writer(150, "late", pause_every=10), name=names["late"])
        first = [names["early"], names["errors"], names["late"]]
        wait_until(
            lambda: running(a) and lines_of(search_engine, es_target, first) == {n: want[n] for n in first},
            timeout=120,
            interval=1,
            what=f"every line of {first} in {es_target} (sidecar logs: {a.logs(tail=20)!r})",
        )
        shipped_in = time.monotonic() - t0
        # it never tails itself (no feedback loop): its own log, which Docker keeps beside the others
        # it reads, is not shipped, and it says so
        assert f"not reading the log of the container the collector runs in ({a.id[:12]}" in a.logs().decode()
        assert (docker.containers_dir / a.id / f"{a.id}-json.log").stat().st_size > 0
        assert lines_of(search_engine, es_target, [a.name]) == {a.name: []}
        # the HEALTHCHECK: `collector health` inside the container, and Docker's verdict on it
        code, out = a.exec_run(["collector", "health"])
        assert code == 0, out
        assert out.decode().startswith("ok ("), out

        def healthy() -> bool:
            a.reload()
            return a.attrs["State"]["Health"]["Status"] == "healthy"

        wait_until(healthy, timeout=60, interval=0.5, what="Docker to call the sidecar healthy")
        docs = search_engine.search(es_target, query={"term": {"container.name": names["errors"]}})
        assert {d["container"]["compose"]["project"] for d in docs} == {"shop"}
        assert {d["log"].get("level") for d in docs if d["stream"] == "stderr"} == {"error"}
        assert all(d["container"]["image"]["name"] == "collector-test/busybox:latest" for d in docs)

        # stop it (SIGTERM: drain, save checkpoints), write while nothing runs, start a NEW container
        a.stop(timeout=60)
        assert a.wait(timeout=60)["StatusCode"] == 0, a.logs(tail=30)
        a.remove()
        docker.run(writer(120, "downtime"), name=names["downtime"])
        b = start_sidecar(docker, collector_image, volume.name, env, f"collector-b-{run}")
        sidecars.append(b)
        wait_until(
            lambda: running(b) and lines_of(search_engine, es_target, list(want)) == want,
            timeout=120,
            interval=1,
            what=f"the lines written while no collector ran (sidecar logs: {b.logs(tail=20)!r})",
        )
        # state came back from the named volume: B read the new lines, not the old ones again
        wait_until(lambda: metric(api_port, "collector_events_received_total") > 0, timeout=30, what="metrics")
        received = metric(api_port, "collector_events_received_total")
        old = sum(len(want[n]) for n in first)
        assert len(want[names["downtime"]]) <= received < old, received
        b.stop(timeout=60)
        assert b.wait(timeout=60)["StatusCode"] == 0, b.logs(tail=30)
        print(f"sidecar shipped {old} lines of 3 containers in {shipped_in:.1f}s")
    finally:
        for c in sidecars:
            with contextlib.suppress(docker_errors.NotFound):
                c.remove(force=True)
        volume.remove(force=True)
