"""Docker's gelf log driver -> the collector (real engine, real containers), and on to go-gelf.

The engine runs with --bridge=none; the gelf driver sends from the daemon itself, so
127.0.0.1 reaches the collector.  For TCP the collector must listen before a container starts
(the driver connects when the container is created).
"""

from __future__ import annotations

import socket
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from tests.helpers import Collector, read_ndjson, wait_until
from tests.peers.gelf_reader import GelfReader

IMAGE = "collector-test/busybox:latest"
N = 400
LABELS = {"com.docker.compose.project": "shop", "com.docker.compose.service": "api", "team": "core"}

# every 50th line on stderr; one long, incompressible line: chunked over UDP (~7 KB gzip'd)
WRITER = f"""
i=0
while [ $i -lt {N} ]; do
  if [ $((i % 50)) -eq 0 ]; then echo "seq=$i on stderr" >&2; else echo "seq=$i stdout line"; fi
  i=$((i+1))
done
head -c 7000 /dev/urandom | od -An -tx1 -v | tr -d ' \\n'; echo
echo "last line"
"""


def expected() -> dict[str, list[str]]:
    exp: dict[str, list[str]] = {"stdout": [], "stderr": []}
    for i in range(N):
        if i % 50 == 0:
            exp["stderr"].append(f"seq={i} on stderr")
        else:
            exp["stdout"].append(f"seq={i} stdout line")
    return exp


def free_port() -> int:
    """A port free for both UDP and TCP."""
    while True:
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def listening(col: Collector) -> bool:
    return "receiving GELF on" in col.stderr()


def test_gelf_driver_udp_every_compression_and_tcp(docker, tmp_path):
    port = free_port()
    out = tmp_path / "out.ndjson"
    args = [
        "receive",
        "--listen",
        f"gelf+udp://127.0.0.1:{port}",
        "--listen",
        f"gelf+tcp://127.0.0.1:{port}",
        "--output",
        f"file:{out}",
        "--docker-host",
        docker.host,
        "--metadata",
        "api",
        "--data-dir",
        str(tmp_path / "state"),
    ]
    drivers = {
        "udp-gzip": {"gelf-address": f"udp://127.0.0.1:{port}"},  # Docker's default: gzip
        "udp-zlib": {"gelf-address": f"udp://127.0.0.1:{port}", "gelf-compression-type": "zlib"},
        "udp-none": {"gelf-address": f"udp://127.0.0.1:{port}", "gelf-compression-type": "none"},
        "tcp": {"gelf-address": f"tcp://127.0.0.1:{port}", "tag": "{{.Name}}/{{.ImageName}}"},
    }
    with Collector(*args).start(tmp_path / "collector.log") as col:
        wait_until(lambda: listening(col), timeout=30, what="the collector to listen")
        containers = {
            name: docker.run(WRITER, name=name, labels=LABELS, log_driver="gelf", log_opts=opts, wait=False)
            for name, opts in drivers.items()
        }
        for c in containers.values():
            assert c.wait(timeout=120)["StatusCode"] == 0
        total = len(drivers) * (N + 2)
        wait_until(lambda: len(read_ndjson(out)) >= total, timeout=60, what=f"{total} records")
        assert col.stop() == 0, col.stderr()

    records = read_ndjson(out)
    assert len(records) == total
    got: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        got[r["container"]["name"]][r["stream"]].append(r["message"])
    for name, c in containers.items():
        streams = got[name]
        assert streams["stderr"] == expected()["stderr"], name
        out_lines = streams["stdout"]
        assert sorted(out_lines[:-2]) == sorted(expected()["stdout"]), name  # UDP: order may vary
        assert len(out_lines) == N - N // 50 + 2
        long = [m for m in out_lines if len(m) > 1000]
        assert len(long) == 1 and len(long[0]) == 14000, name
        assert "last line" in out_lines
        rec = next(r for r in records if r["container"]["name"] == name)
        cont = rec["container"]
        assert cont["id"] == c.id
        assert cont["image"]["name"] == IMAGE and cont["image"]["hash"]["all"] == [c.image.id]
        assert cont["labels"]["com_docker_compose_project"] == "shop" and cont["labels"]["team"] == "core"
        assert cont["compose"] == {"project": "shop", "service": "api"}
        tag = f"{name}/{IMAGE}" if name == "tcp" else c.id[:12]
        assert tag in rec["tags"]
        assert rec["docker"]["container"]["command"].startswith("sh -c")
        assert rec["host"]["name"]
        assert rec["@timestamp"].endswith("Z") and len(rec["@timestamp"]) == 27
        err = next(r for r in records if r["container"]["name"] == name and r["stream"] == "stderr")
        assert err["log"]["syslog"]["severity"] == {"code": 3, "name": "error"}


def round_trip_config(tmp_path: Path, port: int, peer: GelfReader, transport: str) -> Path:
    cfg: dict[str, Any] = {
        "data_dir": str(tmp_path / "state"),
        "sources": {"gelf": {"type": "gelf", "listen": [f"udp://127.0.0.1:{port}"]}},
        "transforms": {"meta": {"type": "docker_metadata", "inputs": ["gelf"], "metadata": "api"}},
        "sinks": {
            "graylog": {
                "type": "gelf",
                "inputs": ["meta"],
                "address": f"gelf+{transport}://{peer.udp if transport == 'udp' else peer.tcp}",
            }
        },
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_round_trip_gelf_driver_to_collector_to_go_gelf(docker, tmp_path):
    """Docker's gelf driver -> gelf source -> docker_metadata -> gelf sink -> Graylog's go-gelf."""
    for transport in ("udp", "tcp"):
        port = free_port()
        with GelfReader(udp=transport == "udp", tcp=transport == "tcp") as peer:
            cfg = round_trip_config(tmp_path / transport, port, peer, transport)
            with Collector("run", "-c", str(cfg), env={"DOCKER_HOST": docker.host}).start(
                tmp_path / f"{transport}.log"
            ) as col:
                wait_until(lambda col=col: listening(col), timeout=30, what="the collector to listen")
                c = docker.run(
                    WRITER,
                    name=f"rt-{transport}",
                    labels=LABELS,
                    log_driver="gelf",
                    log_opts={"gelf-address": f"udp://127.0.0.1:{port}", "tag": "rt"},
                )
                msgs = peer.wait_for(N + 2, timeout=60)
                assert col.stop() == 0, col.stderr()
            assert peer.errors() == []
        assert len(msgs) == N + 2
        by_text = {m["short_message"]: m for m in msgs}
        assert set(by_text) >= {*expected()["stdout"], *expected()["stderr"], "last line"}
        m = by_text["seq=0 on stderr"]
        assert m["version"] == "1.1" and m["level"] == 3 and m["_stream"] == "stderr"
        assert m["host"] and isinstance(m["timestamp"], float)
        assert m["_container_id"] == c.id and m["_container_name"] == f"rt-{transport}"
        assert m["_container_image_name"] == IMAGE
        assert m["_container_labels_com_docker_compose_project"] == "shop"
        assert m["_container_compose_service"] == "api"
        assert m["_tag"] == "rt" and "rt" in m["_tags"].split(",")
        assert by_text["seq=1 stdout line"]["level"] == 6
        assert by_text["seq=1 stdout line"]["timestamp"] >= m["timestamp"] - 1
        assert "_id" not in m
