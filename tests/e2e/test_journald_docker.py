"""Docker's journald log driver -> a real systemd journal -> the journald source (real engine).

The private engine's containers log with ``--log-driver=journald`` into the journal
tests/services/journald.sh runs; the collector reads it (matching the container's name) and
docker_metadata adds what the journal does not carry (labels).  A 40 KB line, which Docker sends
in 16 KB parts (``CONTAINER_PARTIAL_MESSAGE``), comes out whole.
"""

from __future__ import annotations

import uuid

from tests.helpers import read_ndjson, run_once

N = 200
WRITER = f"""
i=0
while [ $i -lt {N} ]; do
  if [ $((i % 10)) -eq 0 ]; then echo "seq=$i on stderr" >&2; else echo "seq=$i stdout  two spaces"; fi
  i=$((i+1))
done
head -c 20000 /dev/zero | tr '\\0' a; head -c 20000 /dev/zero | tr '\\0' b; echo
echo "last line"
"""


def test_docker_journald_driver_into_the_journal_and_out(docker, journal, tmp_path):
    name = f"jd-{uuid.uuid4().hex[:8]}"
    c = docker.run(
        WRITER,
        name=name,
        labels={"com.docker.compose.project": "shop"},
        log_driver="journald",
        log_opts={"tag": "shop.{{.Name}}"},
    )
    out = tmp_path / "out.ndjson"
    cfg = {
        "data_dir": str(tmp_path / "state"),
        "sources": {"journal": {"type": "journald", "directory": str(journal), "match": [f"CONTAINER_NAME={name}"]}},
        "transforms": {
            "meta": {"type": "docker_metadata", "inputs": ["journal"], "metadata": "api", "docker_host": docker.host}
        },
        "sinks": {"out": {"type": "file", "inputs": ["meta"], "path": str(out), "fsync": "never"}},
    }
    expected = [
        ("stderr" if i % 10 == 0 else "stdout", f"seq={i} on stderr" if i % 10 == 0 else f"seq={i} stdout  two spaces")
        for i in range(N)
    ]
    expected += [("stdout", "a" * 20000 + "b" * 20000), ("stdout", "last line")]
    assert run_once(cfg) == 0
    recs = read_ndjson(out)
    assert sorted((r["stream"], r["message"]) for r in recs) == sorted(expected)
    for r in recs:
        assert r["container"]["id"] == c.id and r["container"]["name"] == name
        assert r["container"]["image"]["name"] == "collector-test/busybox:latest"
        assert r["container"]["compose"]["project"] == "shop"  # from docker_metadata
        assert r["tags"] == [f"shop.{name}"] and r["log"]["syslog"]["appname"] == f"shop.{name}"
        assert r["log"]["syslog"]["severity"]["code"] == (3 if r["stream"] == "stderr" else 6)
        assert "flags" not in r["log"]
    # a second run: the cursor is past all of it
    assert run_once(cfg) == 0
    assert len(read_ndjson(out)) == len(expected)
