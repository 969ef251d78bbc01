"""The elasticsearch sink and `collector setup` against real engines: ES 8, ES 9, OpenSearch 2."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.conftest import all_docs
from tests.helpers import (
    BackgroundPipeline,
    EngineProxy,
    checkpoint_file,
    docker_lines,
    read_ndjson,
    run_cli,
    run_once,
    wait_until,
)

CID = "ef" * 32


def write_log(tmp_path, messages, start_ns=1):
    d = tmp_path / "containers" / CID
    d.mkdir(parents=True, exist_ok=True)
    log = d / f"{CID}-json.log"
    with open(log, "ab") as f:
        f.write(docker_lines(messages, start_ns=start_ns))
    return log


def es_pipeline(tmp_path, engine, target, hosts=None, transforms=None, **sink):
    src = "files"
    cfg = {
        "data_dir": str(tmp_path / "state"),
        "sources": {"files": {"type": "docker_json_file", "paths": [str(tmp_path / "containers/*/*-json.log")]}},
        "transforms": transforms or {},
        "sinks": {
            "es": {
                "type": "elasticsearch",
                "inputs": [list(transforms)[-1] if transforms else src],
                "hosts": hosts or [engine.url],
                "data_stream": target,
                "batch": {"timeout": 0.2},
                "retry": {"initial_backoff": 0.2, "max_backoff": 2},
                **sink,
            }
        },
    }
    return cfg


def test_records_land_once_with_stable_ids_and_a_replay_adds_nothing(search_engine, es_target, tmp_path):
    write_log(tmp_path, [f"line {i}" for i in range(500)])
    cfg = es_pipeline(tmp_path, search_engine, es_target)
    assert run_once(cfg) == 0
    assert search_engine.count(es_target) == 500
    # replay everything (as after losing the checkpoints): same ids, 409s, no duplicates
    checkpoint_file(tmp_path / "state").unlink()
    assert run_once(cfg) == 0
    assert search_engine.count(es_target) == 500
    docs = search_engine.search(es_target)
    assert [d["message"] for d in docs] == [f"line {i}" for i in range(500)]
    assert len({d["_id"] for d in docs}) == 500
    assert docs[0]["@timestamp"] == "2024-05-01T12:00:00.000000001Z"
    ds = search_engine.request("GET", f"/_resolve/index/{es_target}").body
    assert ds["data_streams"][0]["name"] == es_target  # a real data stream, from our template


def test_a_mapping_conflict_dead_letters_one_record_and_the_rest_are_indexed(search_engine, es_target, tmp_path):
    parse = {"p": {"type": "parse", "inputs": ["files"], "format": "json"}}
    write_log(tmp_path, [orjson.dumps({"status": 200, "i": 0}).decode()])
    cfg = es_pipeline(tmp_path, search_engine, es_target, transforms=parse)
    assert run_once(cfg) == 0
    lines = [orjson.dumps({"status": 200 + i, "i": i}).decode() for i in range(1, 50)]
    lines[20] = orjson.dumps({"status": {"not": "a number"}, "i": 21}).decode()
    write_log(tmp_path, lines, start_ns=100)
    assert run_once(cfg) == 0
    assert search_engine.count(es_target) == 49
    (dl,) = read_ndjson(tmp_path / "state" / "dead-letter" / "es.ndjson")
    assert "exception" in dl["reason"] and "status" in dl["reason"]
    assert dl["record"]["json"] == {"status": {"not": "a number"}, "i": 21}
    assert dl["record"]["message"] == lines[20]
    # and the checkpoint moved past it: a rerun delivers nothing new, rejects nothing new
    assert run_once(cfg) == 0
    assert len(read_ndjson(tmp_path / "state" / "dead-letter" / "es.ndjson")) == 1


def test_engine_stopped_mid_run_nothing_lost_nothing_duplicated(search_engine, es_target, tmp_path):
    log = write_log(tmp_path, [f"before {i}" for i in range(200)])
    cfg = es_pipeline(tmp_path, search_engine, es_target)
    with BackgroundPipeline(cfg) as bg:
        wait_until(lambda: search_engine.count(es_target) == 200, timeout=60, what="first 200")
        size = log.stat().st_size
        wait_until(lambda: _offset(tmp_path) == size, what="the checkpoint over the first 200")
        search_engine.stop()
        try:
            write_log(tmp_path, [f"during {i}" for i in range(300)], start_ns=1000)
            # the sink retries with backoff meanwhile, and the checkpoint does not move
            wait_until(lambda: bg.telemetry.value("collector_retries_total") >= 3, what="retries")
            assert bg.telemetry.value("collector_events_received_total") == 500
            assert _offset(tmp_path) == size
        finally:
            search_engine.start()
        write_log(tmp_path, [f"after {i}" for i in range(100)], start_ns=5000)
        wait_until(lambda: search_engine.count(es_target) >= 600, timeout=90, what="all 600 records")
        assert bg.stop() == 0
    docs = search_engine.search(es_target)
    assert len(docs) == 600
    assert len({d["_id"] for d in docs}) == 600
    assert [d["message"] for d in docs] == (
        [f"before {i}" for i in range(200)] + [f"during {i}" for i in range(300)] + [f"after {i}" for i in range(100)]
    )


def _offset(tmp_path) -> int:
    try:
        cp = orjson.loads(checkpoint_file(tmp_path / "state").read_bytes())["sources"]["files"]
    except (AssertionError, OSError, ValueError):
        return -1
    return sum(v["offset"] for v in cp.values())


def test_failover_to_the_next_host(search_engine, es_target, tmp_path):
    write_log(tmp_path, [f"f {i}" for i in range(50)])
    dead = "http://127.0.0.1:1"
    cfg = es_pipeline(tmp_path, search_engine, es_target, hosts=[dead, search_engine.url])
    assert run_once(cfg) == 0
    assert search_engine.count(es_target) == 50


def test_templated_data_stream_per_compose_project(search_engine, tmp_path):
    project = f"shop{int(time.time() * 1000) % 10**9}"
    d = tmp_path / "containers" / CID
    d.mkdir(parents=True)
    (d / "config.v2.json").write_bytes(
        orjson.dumps(
            {
                "ID": CID,
                "Name": "/web-1",
                "Config": {"Image": "nginx:1", "Labels": {"com.docker.compose.project": project}},
            }
        )
    )
    (d / f"{CID}-json.log").write_bytes(docker_lines(["a", "b"]))
    meta = {"m": {"type": "docker_metadata", "inputs": ["files"], "metadata": "files"}}
    cfg = es_pipeline(tmp_path, search_engine, "logs-docker-{{container.compose.project}}", transforms=meta)
    cfg["docker_root"] = str(tmp_path)
    assert run_once(cfg) == 0
    assert search_engine.count(f"logs-docker-{project}") == 2
    (doc, _) = search_engine.search(f"logs-docker-{project}")
    assert doc["container"]["name"] == "web-1" and doc["container"]["compose"]["project"] == project


def test_index_mode_writes_dated_indices(search_engine, tmp_path):
    prefix = f"collector-idx-{int(time.time() * 1000) % 10**9}"
    write_log(tmp_path, ["x", "y", "z"])
    cfg = es_pipeline(tmp_path, search_engine, "unused")
    cfg["sinks"]["es"].update(mode="index", index=f"{prefix}-%Y.%m.%d")
    del cfg["sinks"]["es"]["data_stream"]
    assert run_once(cfg) == 0
    assert search_engine.count(f"{prefix}-2024.05.01") == 3


def test_unreachable_engine_message_names_the_host_and_never_the_password(tmp_path):
    write_log(tmp_path, ["secret stays secret"])
    cfg = {
        "data_dir": str(tmp_path / "state"),
        "sources": {"files": {"type": "docker_json_file", "paths": [str(tmp_path / "containers/*/*-json.log")]}},
        "sinks": {
            "es": {
                "type": "elasticsearch",
                "inputs": ["files"],
                "hosts": ["http://127.0.0.1:1"],
                "auth": {"user": "elastic", "password": "hunter2-s3cret"},
                "retry": {"initial_backoff": 0.1, "max_backoff": 0.2},
            }
        },
        "shutdown_timeout": 2,
    }
    import yaml

    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    from tests.helpers import Collector

    col = Collector("run", "-c", str(cfg_path)).start(tmp_path / "err.log")
    wait_until(lambda: "connection refused" in col.stderr(), what="the failure said")
    rc = col.stop()
    err = col.stderr()
    assert rc == 3  # stopped with records undelivered: they will be read again
    assert "http://127.0.0.1:1" in err and "connection refused" in err
    assert "hunter2" not in err
    cp = orjson.loads(checkpoint_file(tmp_path / "state").read_bytes())["sources"]["files"]
    assert all(v["offset"] == 0 for v in cp.values())  # the place is kept


def test_setup_installs_templates_idempotently(search_engine):
    r1 = run_cli("setup", "--hosts", search_engine.url)
    assert r1.returncode == 0, r1.stderr
    r2 = run_cli("setup", "--hosts", search_engine.url)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.count(": unchanged") == 3, r2.stdout
    assert "neither ILM nor ISM" in r2.stdout  # the test engines have no lifecycle plugin: said plainly
    t = search_engine.request("GET", "/_index_template/logs-docker").body["index_templates"][0]["index_template"]
    assert t["index_patterns"] == ["logs-docker-*"] and "data_stream" in t
    dry = run_cli("setup", "--hosts", search_engine.url, "--dry-run", "--replicas", "0")
    assert dry.returncode == 0 and "would PUT /_index_template/logs-docker" in dry.stdout
    settings = search_engine.request("GET", "/_component_template/collector-docker-settings").body
    assert "number_of_replicas" not in orjson.dumps(settings).decode()  # dry run changed nothing


@pytest.mark.parametrize("cli", [True])
def test_collector_tail_output_url_with_real_containers(docker, search_engine, tmp_path, cli):
    c = docker.run(
        'i=0; while [ $i -lt 120 ]; do echo "to-es $i"; i=$((i+1)); done',
        labels={"com.docker.compose.project": "esdemo"},
    )
    args = [
        "tail",
        "--docker-root",
        str(docker.root),
        "--docker-host",
        docker.host,
        "--output",
        search_engine.url,
        "--data-dir",
        str(tmp_path / "s"),
        "--once",
    ]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    q = {"term": {"container.id": c.id}}
    wait_until(lambda: len(search_engine.search("logs-docker-default", query=q)) == 120, timeout=30)
    docs = search_engine.search("logs-docker-default", query=q)
    assert sorted(d["message"] for d in docs) == sorted(f"to-es {i}" for i in range(120))
    assert docs[0]["container"]["name"] == c.name
    assert docs[0]["container"]["image"]["name"] == "collector-test/busybox:latest"
    assert docs[0]["container"]["labels"]["com_docker_compose_project"] == "esdemo"
    r = run_cli(*args)  # a second --once adds nothing
    assert r.returncode == 0
    assert len(search_engine.search("logs-docker-default", query=q)) == 120


def test_gzip_compressed_requests(search_engine, es_target, tmp_path):
    write_log(tmp_path, [f"zipped {i}" for i in range(300)])
    proxy = EngineProxy(search_engine.url)  # to see the requests as they travel
    try:
        cfg = es_pipeline(tmp_path, search_engine, es_target, hosts=[proxy.url], compression="gzip", concurrency=3)
        assert run_once(cfg) == 0
    finally:
        proxy.close()
    assert search_engine.count(es_target) == 300
    bulks = [r for r in proxy.seen if "_bulk" in r.path]
    assert bulks and {r.content_encoding for r in bulks} == {"gzip"}


# -- long outages, compressed in time: thousands of retries in seconds -------------------------------
def test_an_engine_refusing_2000_bulk_requests_then_recovering_gets_every_record_once(es8, es_target, tmp_path):
    """503, 429 and per-item 429 for 2,100 retries (hours at the default backoff) then recovery.
    Before the one retry policy, attempt ~1,024 raised OverflowError in the bulk task: nothing was
    ever delivered and the run still ended as if it had been."""
    write_log(tmp_path, [f"outage {i}" for i in range(1_000)])
    proxy = EngineProxy(es8.url)
    proxy.refuse_bulk(2_100, ("503", "429", "item-429"))
    cfg = es_pipeline(
        tmp_path,
        es8,
        es_target,
        hosts=[proxy.url],
        concurrency=1,
        retry={"initial_backoff": 0.0005, "max_backoff": 0.002},
    )
    try:
        rc = run_once(cfg)
    finally:
        proxy.close()
    assert proxy.refused == 2_100
    assert rc == 0
    docs = all_docs(es8, es_target, ["message"])
    assert sorted(d["message"] for d in docs) == sorted(f"outage {i}" for i in range(1_000))
    assert len({d["_id"] for d in docs}) == 1_000


def test_max_elapsed_gives_up_on_records_into_the_dead_letter(es8, es_target, tmp_path):
    """`retry.max_elapsed` set: what still fails after that long is set aside with the last error."""
    log = write_log(tmp_path, [f"unsent {i}" for i in range(20)])
    proxy = EngineProxy(es8.url)
    proxy.refuse_bulk(10**6, ("503",))  # the engine answers, but never takes a bulk request
    retry = {"initial_backoff": 0.01, "max_backoff": 0.05, "max_elapsed": 0.5}
    cfg = es_pipeline(tmp_path, es8, es_target, hosts=[proxy.url], retry=retry)
    try:
        assert run_once(cfg) == 0
    finally:
        proxy.close()
    assert proxy.refused >= 2
    dl = read_ndjson(tmp_path / "state" / "dead-letter" / "es.ndjson")
    assert sorted(d["record"]["message"] for d in dl) == sorted(f"unsent {i}" for i in range(20))
    assert all(d["reason"].startswith("retries_exhausted") and "503" in d["reason"] for d in dl)
    cp = orjson.loads(checkpoint_file(tmp_path / "state").read_bytes())["sources"]["files"]
    assert [v["offset"] for v in cp.values()] == [log.stat().st_size]  # finalized: never tried again
