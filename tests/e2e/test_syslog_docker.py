"""Docker's syslog log driver -> the collector (real engine, real containers).

Every ``syslog-format`` Docker has (its default, ``rfc3164``, ``rfc5424``, ``rfc5424micro``) over
every transport it has (``udp``, ``tcp``, ``tcp+tls``, ``unix``, ``unixgram``).  The driver
sends from the daemon itself (the engine runs with --bridge=none), so 127.0.0.1 and the test's
unix sockets reach the collector; it connects when the container is created, so the collector
listens first.  The tag (Docker's default ``{{.ID}}``, or ``{{.Name}}``) is resolved to the
container through the engine's API, and docker_metadata adds the name, image and labels.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from tests.e2e.test_gelf_docker import free_port
from tests.helpers import BackgroundPipeline, read_ndjson, wait_until
from tests.sources.test_gelf import make_cert

N = 20
WRITER = f"""
i=0
while [ $i -lt {N} ]; do
  if [ $((i % 5)) -eq 0 ]; then echo "seq=$i on stderr" >&2; else echo "seq=$i stdout  two spaces"; fi
  i=$((i+1))
done
"""
FORMATS = ("", "rfc3164", "rfc5424", "rfc5424micro")
TRANSPORTS = ("udp", "tcp", "tcp+tls", "unix", "unixgram")


def expected() -> list[tuple[str, str]]:
    return sorted(
        ("stderr", f"seq={i} on stderr") if i % 5 == 0 else ("stdout", f"seq={i} stdout  two spaces") for i in range(N)
    )


def test_docker_syslog_driver_every_format_and_transport(docker, tmp_path):
    port = free_port()
    cert, key = make_cert(tmp_path)
    ssock, gsock = str(tmp_path / "syslog.sock"), str(tmp_path / "dev-log")
    out = tmp_path / "out.ndjson"
    cfg = {
        "data_dir": str(tmp_path / "state"),
        "shutdown_timeout": 5,
        "sources": {
            "syslog": {
                "type": "syslog",
                "listen": [
                    f"udp://127.0.0.1:{port}",
                    f"tcp://127.0.0.1:{port}",
                    f"tls://127.0.0.1:{free_port()}",
                    f"unix://{ssock}",
                    f"unixgram://{gsock}",
                ],
                "tls": {"cert_file": cert, "key_file": key},
            }
        },
        "transforms": {
            "meta": {"type": "docker_metadata", "inputs": ["syslog"], "metadata": "api", "docker_host": docker.host}
        },
        "sinks": {"out": {"type": "file", "inputs": ["meta"], "path": str(out), "fsync": "never"}},
    }
    with BackgroundPipeline(cfg) as bp:
        src = bp.pipeline.sources["syslog"]
        wait_until(lambda: len(src.bound) == 5, what="listening")
        tls_port = next(u for u in src.bound if u.startswith("tls:")).rsplit(":", 1)[1]
        address = {
            "udp": f"udp://127.0.0.1:{port}",
            "tcp": f"tcp://127.0.0.1:{port}",
            "tcp+tls": f"tcp+tls://127.0.0.1:{tls_port}",
            "unix": f"unix://{ssock}",
            "unixgram": f"unixgram://{gsock}",
        }
        runs: list[tuple[str, str, str, Any]] = []
        for k, (transport, fmt) in enumerate(itertools.product(TRANSPORTS, FORMATS)):
            opts = {"syslog-address": address[transport], "syslog-facility": "local4"}
            if fmt:
                opts["syslog-format"] = fmt
            if transport == "tcp+tls":
                opts["syslog-tls-ca-cert"] = cert
            tag = "{{.ID}}"
            if k % 4 == 1:
                tag = opts["tag"] = "{{.Name}}"
            c = docker.run(
                WRITER,
                name=f"sys-{k}-{transport.replace('+', '-')}-{fmt or 'default'}",
                labels={"com.docker.compose.project": "shop"},
                log_driver="syslog",
                log_opts=opts,
            )
            runs.append((transport, fmt, tag, c))
        # a tag that names no container: the records keep it, without container fields
        docker.run("echo not a container tag", log_driver="syslog", log_opts={**opts, "tag": "shop.api"})
        total = len(runs) * N + 1
        wait_until(lambda: len(read_ndjson(out)) >= total, timeout=60, what=f"{total} records")
        recs = read_ndjson(out)
    assert len(recs) == total == 20 * N + 1
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in recs:
        by_id.setdefault(r.get("container", {}).get("id", ""), []).append(r)
    for transport, fmt, tag, c in runs:
        mine = by_id.get(c.id, [])
        where = f"{transport} {fmt or 'default'} tag {tag}"
        assert sorted((r["stream"], r["message"]) for r in mine) == expected(), where
        for r in mine:
            assert r["container"]["name"] == c.name, where
            assert r["container"]["compose"]["project"] == "shop", where
            sl = r["log"]["syslog"]
            assert sl["appname"] == (c.id[:12] if tag == "{{.ID}}" else c.name), where
            assert sl["facility"] == {"code": 20, "name": "local4"}, where
            assert sl["severity"]["code"] == (3 if r["stream"] == "stderr" else 6), where
            assert r["tags"] == [sl["appname"]], where
            assert r["host"]["name"] and "flags" not in r["log"], where
            if fmt.startswith("rfc5424"):
                assert sl["msgid"] == sl["appname"] and sl["version"] == "1", where
    orphan = by_id[""]
    assert [(r["message"], r["tags"], r["log"]["syslog"]["appname"]) for r in orphan] == [
        ("not a container tag", ["shop.api"], "shop.api")
    ]
    assert Path(ssock).exists() is False
