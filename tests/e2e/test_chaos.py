"""Nothing lost, nothing duplicated: real containers, a real Elasticsearch, real crashes.

Each scenario prints (and appends to ``$COLLECTOR_CHAOS_REPORT`` when set) a row:
written / delivered / lost / duplicated, and asserts lost = 0 and duplicated = 0, counting
distinct per-container sequence numbers embedded in the lines (not just documents).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson
import yaml

from tests.conftest import all_docs
from tests.helpers import Collector, checkpoint_file, docker_lines, wait_progressing, wait_until

SEQ = re.compile(r"^(\S+) seq=(\d+) ")
# the engine outage of test_engine_down_mid_run: the writers keep writing through it (10 s of
# bursts) and the sink retries about 5 times at its 2 s max_backoff; a longer outage only repeats
# those retries (the soak and bench/soak.py --outage-at keep the engine down for minutes)
OUTAGE_S = 10


def paced_writer(tag: str, lines: int, chunks: int, pause_us: int) -> str:
    """A busybox script printing ``<tag> seq=<n> ...`` lines in ``chunks`` bursts."""
    per = lines // chunks
    return (
        f"j=0; while [ $j -lt {chunks} ]; do "
        f"awk -v j=$j 'BEGIN{{for(i=j*{per};i<(j+1)*{per};i++) "
        f'printf "{tag} seq=%d padding to make the line look like a log line ..........\\n", i}}\'; '
        f"usleep {pause_us}; j=$((j+1)); done"
    )


def pipeline(
    tmp_path: Path,
    root: Path,
    es_url: str,
    target: str,
    buffer: dict[str, Any] | None = None,
    paths: list[str] | None = None,
    docker_host: str | None = None,
) -> Path:
    cfg: dict[str, Any] = {
        "data_dir": str(tmp_path / "state"),
        "sources": {
            "logs": {"type": "docker_json_file", "paths": paths or [str(root / "containers" / "*" / "*-json.log")]}
        },
        "sinks": {
            "es": {
                "type": "elasticsearch",
                "inputs": ["logs"],
                "hosts": [es_url],
                "data_stream": target,
                "retry": {"initial_backoff": 0.2, "max_backoff": 2.0},
                "buffer": buffer or {"type": "memory"},
            }
        },
        "shutdown_timeout": 20,
    }
    if docker_host:
        cfg["transforms"] = {
            "meta": {
                "type": "docker_metadata",
                "inputs": ["logs"],
                "docker_host": docker_host,
            }
        }
        cfg["docker_root"] = str(root)
        cfg["sinks"]["es"]["inputs"] = ["meta"]
    p = tmp_path / "pipeline.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def tally(engine: Any, target: str, expected: dict[str, int]) -> dict[str, Any]:
    """written / delivered / lost / duplicated from the documents in the engine."""
    everything = all_docs(engine, target, ["message", "container.name", "log.file.path"])
    docs, foreign = [], []
    seen: dict[str, Counter[int]] = defaultdict(Counter)
    for d in everything:
        m = SEQ.match(d["message"])
        if m and m.group(1) in expected:
            seen[m.group(1)][int(m.group(2))] += 1
            docs.append(d)
        else:  # another container's lines (the engine may run others): not ours to count
            foreign.append(d)
    if foreign:
        print("\nnot from this scenario's writers:", [(d.get("container"), d["message"][:80]) for d in foreign[:5]])
    written = sum(expected.values())
    lost = sum(1 for tag, n in expected.items() for i in range(n) if seen[tag][i] == 0)
    duplicated = sum(c - 1 for counts in seen.values() for c in counts.values() if c > 1)
    distinct = sum(len(c) for c in seen.values())
    return {
        "written": written,
        "documents": len(docs),
        "delivered": distinct,
        "lost": lost,
        "duplicated": duplicated,
        "distinct_ids": len({d["_id"] for d in docs}),
        "missing": {tag: [i for i in range(n) if seen[tag][i] == 0] for tag, n in expected.items()},
    }


def report(name: str, row: dict[str, Any], **extra: Any) -> None:
    row = {"scenario": name, **{k: v for k, v in row.items() if k != "missing"}, **extra}
    print("\nCHAOS", orjson.dumps(row).decode())
    path = os.environ.get("COLLECTOR_CHAOS_REPORT")
    if path:
        with open(path, "ab") as f:
            f.write(orjson.dumps(row) + b"\n")


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def kill9_at(
    kills: list[float], col: Collector, cfg: Path, log: Path, rng: random.Random, min_pause: float
) -> Collector:
    """kill -9 the collector at each time in ``kills`` (seconds from now, sorted); start it again
    with ``cfg`` after a random pause of ``min_pause``-1 s. Returns the collector running at the end."""
    t0 = time.monotonic()
    for at in kills:
        time.sleep(max(0.0, at - (time.monotonic() - t0)))  # (the scenario: a kill at a random moment)
        col.kill9()
        time.sleep(rng.uniform(min_pause, 1.0))  # (the scenario: down for a random while)
        col = Collector("run", "-c", str(cfg)).start(log)
    return col


def test_kill_9_at_random_moments(docker, es8, es_target, tmp_path):
    seed = int(os.environ.get("COLLECTOR_CHAOS_SEED", time.time()))
    rng = random.Random(seed)
    cfg = pipeline(
        tmp_path,
        docker.root,
        es8.url,
        es_target,
        buffer={"type": "disk", "max_bytes": 256 << 20, "fsync": "interval"},
        docker_host=docker.host,
    )
    per, n = 25_000, 4  # written over 7.5 s, the window of the kills (the collector busy all along)
    expected = {f"k{c}": per for c in range(n)}
    col = Collector("run", "-c", str(cfg)).start(tmp_path / "collector.log")
    try:
        containers = [docker.run(paced_writer(f"k{c}", per, 50, 150_000), name=f"k{c}", wait=False) for c in range(n)]
        kills = sorted(rng.uniform(0.5, 9.0) for _ in range(3))
        print(f"\nCOLLECTOR_CHAOS_SEED={seed}: kills at {[round(k, 2) for k in kills]} s")  # (shown on a failure)
        col = kill9_at(kills, col, cfg, tmp_path / "collector.log", rng, 0.0)
        for c in containers:
            assert c.wait(timeout=120)["StatusCode"] == 0
        wait_progressing(lambda: es8.count(es_target), per * n, what="records in Elasticsearch")
        assert col.stop() == 0, col.stderr()[-3000:]
    finally:
        col.__exit__()
    row = tally(es8, es_target, expected)
    report("kill -9 x3 (disk buffer)", row, seed=seed, kills_at_s=[round(k, 2) for k in kills])
    assert row["lost"] == 0, {k: v[:20] for k, v in row["missing"].items()}
    assert row["duplicated"] == 0
    assert row["documents"] == row["written"]


def test_engine_down_mid_run(docker, es8, es_target, tmp_path):
    cfg = pipeline(tmp_path, docker.root, es8.url, es_target)
    per, n = 25_000, 2
    expected = {f"d{c}": per for c in range(n)}
    with Collector("run", "-c", str(cfg)).start(tmp_path / "collector.log") as col:
        containers = [docker.run(paced_writer(f"d{c}", per, 50, 200_000), name=f"d{c}", wait=False) for c in range(n)]
        wait_until(lambda: es8.count(es_target) > 1000, timeout=60, what="first records")
        es8.stop()
        down = time.monotonic()
        try:
            time.sleep(OUTAGE_S)  # (the scenario: the engine is down this long)
        finally:
            es8.start()
        outage = time.monotonic() - down
        for c in containers:
            assert c.wait(timeout=120)["StatusCode"] == 0
        wait_progressing(lambda: es8.count(es_target), per * n, what="records in Elasticsearch")
        assert col.stop() == 0
        assert "cannot reach" in col.stderr()  # the outage was reported, not silent
    row = tally(es8, es_target, expected)
    report(f"engine down {OUTAGE_S} s", row, outage_s=round(outage, 1))
    assert row["lost"] == 0, {k: v[:20] for k, v in row["missing"].items()}
    assert row["duplicated"] == 0


def test_rotation_under_load_while_the_collector_is_stopped(docker, es8, es_target, tmp_path):
    """Two containers rotate (max-file 3) while the collector is down for a few seconds: the one
    with room (max-size 50m) loses nothing; the one that rotates through all its files during the
    stop loses lines, and that loss must be reported with the container and a byte range or
    time window, never silent."""
    cfg = pipeline(tmp_path, docker.root, es8.url, es_target)
    per = 40_000
    col = Collector("run", "-c", str(cfg)).start(tmp_path / "collector.log")
    try:
        _rotation_run(docker, es8, es_target, cfg, col, per, tmp_path)
    finally:
        col.__exit__()


def seqs_delivered(engine: Any, target: str, tag: str) -> set[int]:
    """The sequence numbers of ``tag``'s lines in the engine."""
    out = set()
    for d in all_docs(engine, target, ["message"]):
        m = SEQ.match(d["message"])
        if m and m.group(1) == tag:
            out.add(int(m.group(2)))
    return out


def first_seq_on_disk(docker: Any, container: Any) -> int | None:
    """The sequence number of the first line of the oldest log file Docker still keeps."""
    files = sorted(
        docker.containers_dir.joinpath(container.id).glob(f"{container.id}-json.log*"),
        key=lambda p: -int(p.name.rsplit(".", 1)[1]) if p.name[-1].isdigit() else 0,
    )
    for f in files:
        try:
            with open(f, "rb") as fh:
                first = fh.readline()
        except OSError:  # rotated away meanwhile
            continue
        m = SEQ.match(orjson.loads(first)["log"]) if first.endswith(b"\n") else None
        if m:
            return int(m.group(2))
    return None


def _rotation_run(docker, es8, es_target, cfg, col, per, tmp_path):
    # files rotated before the collector's first look are history, by design (not read): the
    # writers start once it has looked (on a loaded machine it looked after "tight" had rotated,
    # and the lines of those files were counted as a third, unreported run of lost lines)
    wait_until(
        lambda: re.search(r"following \d+ file\(s\)|no file matches", col.stderr()),
        timeout=120,
        what="the collector's first look at the containers",
    )
    roomy = docker.run(
        paced_writer("roomy", per, 40, 150_000), name="roomy", wait=False, log_opts={"max-size": "50m", "max-file": "3"}
    )
    tight = docker.run(
        paced_writer("tight", per, 40, 150_000),
        name="tight",
        wait=False,
        log_opts={"max-size": "100k", "max-file": "3"},
    )
    wait_until(
        lambda: seqs_delivered(es8, es_target, "roomy") and seqs_delivered(es8, es_target, "tight"),
        timeout=120,
        interval=0.5,
        what="the first lines of both writers",
    )
    assert col.stop() == 0
    read = max(seqs_delivered(es8, es_target, "tight"))
    # while the collector is stopped, "tight" rotates through all of its three files: wait until
    # the oldest file it keeps starts past what was read (lines in between are gone for good)
    wait_until(
        lambda: (first_seq_on_disk(docker, tight) or 0) > read + 1,
        timeout=120,
        interval=0.1,
        what="tight to rotate past what was read",
    )
    with Collector("run", "-c", str(cfg)).start(tmp_path / "collector.log") as again:
        first_after_stop = first_seq_on_disk(docker, tight) or 0  # (at most what the collector finds)
        for c in (roomy, tight):
            assert c.wait(timeout=120)["StatusCode"] == 0
        # the last line of each writer is in its live file, which is never lost: once both are
        # in, everything that is still on disk has been read
        wait_until(
            lambda: (
                per - 1 in seqs_delivered(es8, es_target, "roomy")
                and per - 1 in seqs_delivered(es8, es_target, "tight")
            ),
            timeout=120,
            interval=1,
            what="the last lines of both writers",
        )
        assert again.stop() == 0
        logs = again.stderr()
    row = tally(es8, es_target, {"roomy": per, "tight": per})
    tight_missing = row["missing"]["tight"]
    reported = [line for line in logs.splitlines() if "LOST DATA" in line and tight.id[:12] in line]
    report(
        "rotation (max-file 3) while stopped",
        row,
        loss_reports=len(reported),
        loss_report=reported[0][-300:] if reported else "",
    )
    assert row["duplicated"] == 0
    assert row["missing"]["roomy"] == [], row["missing"]["roomy"][:20]
    # tight lost lines, by construction: those after what was read before the stop and before the
    # oldest file left when the collector came back (and maybe more: at 100 KB a file it can outrun
    # a collector on a busy machine while it runs too); each run of lost lines is said
    gone = set(range(read + 1, first_after_stop))
    assert gone and gone <= set(tight_missing), (read, first_after_stop, tight_missing[:20])
    runs = sum(1 for i, n in enumerate(tight_missing) if i == 0 or tight_missing[i - 1] != n - 1)
    assert len(reported) >= runs, f"{runs} runs of lost lines, {len(reported)} said: {reported}"


def test_copytruncate_of_a_plain_file_under_load(es8, es_target, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    log = plain / "app.log"
    cfg = pipeline(tmp_path, tmp_path, es8.url, es_target, paths=[str(plain / "*.log")])
    total = 30_000
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while n < total and not stop.is_set():
            lines = [
                f"plain seq={i} padding to make the line look like a log line .........." for i in range(n, n + 500)
            ]
            with open(log, "ab") as f:
                f.write(docker_lines(lines, start_ns=n + 1))
            n += 500
            if n % 3000 == 0:  # logrotate copytruncate: shift copies, copy, empty in place
                # `rotate 20`: a collector seconds behind on a loaded CI machine still finds its
                # copy; one behind by more copies than are kept loses lines by design (reported:
                # tests/sources/test_docker_json_file.py::test_copytruncate_past_the_last_copy_is_reported)
                for i in range(19, 0, -1):
                    if os.path.exists(f"{log}.{i}"):
                        os.replace(f"{log}.{i}", f"{log}.{i + 1}")
                shutil.copyfile(log, f"{log}.1")
                with open(log, "r+b") as f:
                    f.truncate(0)
            time.sleep(0.1)  # (the writer's pace) ~5,000 lines/s: copytruncate is for modest writers

    log.write_bytes(b"")
    with Collector("run", "-c", str(cfg)).start(tmp_path / "collector.log") as col:
        # copies made before the collector's first look are history, by design (not read): the
        # writer starts once it follows the file (it took longer than the first copy, 0.6 s, to
        # start on a loaded machine, and the test lost exactly those 3,000 lines)
        wait_until(lambda: "following 1 file(s)" in col.stderr(), timeout=120, what="the collector following the file")
        t = threading.Thread(target=writer)
        t.start()
        t.join(120)
        try:
            wait_progressing(lambda: es8.count(es_target), total, what="records in Elasticsearch")
        except AssertionError as e:
            said = col.stderr().splitlines()
            raise AssertionError(f"{e}; the collector's last lines: {said[-30:]}") from None
        assert col.stop() == 0
    row = tally(es8, es_target, {"plain": total})
    report("copytruncate every 3000 lines", row)
    assert row["lost"] == 0, {k: v[:20] for k, v in row["missing"].items()}
    assert row["duplicated"] == 0


def test_full_disk_buffer_pauses_tailing_with_bounded_memory(docker, es8, es_target, tmp_path):
    cfg = pipeline(
        tmp_path, docker.root, es8.url, es_target, buffer={"type": "disk", "max_bytes": 4 << 20, "fsync": "interval"}
    )
    per, n = 50_000, 2
    expected = {f"f{c}": per for c in range(n)}
    col = Collector("run", "-c", str(cfg)).start(tmp_path / "collector.log")
    try:
        _full_buffer_run(docker, es8, es_target, tmp_path, col, per, n, expected)
    finally:
        col.__exit__()


def _full_buffer_run(docker, es8, es_target, tmp_path, col, per, n, expected):
    try:
        # the collector is up and delivering (its sink prepared against the engine) before the outage
        docker.run('echo "f-warm seq=0 first"', name="f-warm")
        wait_until(lambda: es8.count(es_target) >= 1, timeout=60, what="the first record delivered")
        es8.stop()
        containers = [docker.run(paced_writer(f"f{c}", per, 10, 50_000), name=f"f{c}", wait=False) for c in range(n)]
        for c in containers:
            assert c.wait(timeout=120)["StatusCode"] == 0
        seg_dir = tmp_path / "state" / "buffers" / "es"
        peak = 0

        def full() -> bool:  # (sampling the collector's memory all along)
            nonlocal peak
            peak = max(peak, rss_kb(col.proc.pid))
            return sum(p.stat().st_size for p in seg_dir.glob("*.seg")) >= (4 << 20) - (1 << 20)

        wait_until(full, timeout=60, interval=0.2, what="the disk buffer to fill up")
        t_end = time.monotonic() + 5
        while time.monotonic() < t_end:  # engine down, the buffer full: memory must stay flat meanwhile
            peak = max(peak, rss_kb(col.proc.pid))
            time.sleep(0.2)  # (sampling pace)
        buf = sum(p.stat().st_size for p in seg_dir.glob("*.seg"))
        cp = orjson.loads(checkpoint_file(tmp_path / "state").read_bytes())["sources"]["logs"]
        writers = {str(docker.log_path(c)) for c in containers}
        read_bytes = sum(v["offset"] for v in cp.values() if v["live"] in writers)
        log_bytes = sum(docker.log_path(c).stat().st_size for c in containers)
        assert buf <= (4 << 20) + (2 << 20), buf  # the disk buffer respects its limit (one batch of slack)
        assert read_bytes < log_bytes  # tailing paused: the files are not read to their end
    finally:
        es8.start()
    wait_until(lambda: es8.count(es_target) >= per * n, timeout=180, interval=1, what="all records")
    assert col.stop() == 0
    row = tally(es8, es_target, expected)
    report("disk buffer (4 MiB) full, engine down", row, peak_rss_mb=round(peak / 1024, 1))
    assert row["lost"] == 0, {k: v[:20] for k, v in row["missing"].items()}
    assert row["duplicated"] == 0
    assert peak < 250 * 1024, f"RSS {peak} KB"


class AckingForwardClient:
    """An at-least-once forward client (what Fluent Bit's Require_ack_response does): every
    message carries a chunk id, is kept until its ack arrives, and is sent again with the same
    chunk id after a reconnect."""

    def __init__(self, port: int, messages: list[bytes], chunks: list[str], window: int = 8) -> None:
        self.port = port
        self.messages = messages
        self.chunks = chunks
        self.window = window
        self.acked: set[str] = set()
        self.resent = 0
        self.reconnects = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import socket

        import msgpack

        pending: list[int] = []  # indexes sent, not acked
        nxt = 0
        while len(self.acked) < len(self.messages):
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                time.sleep(0.2)  # (a client's reconnection pace)
                continue
            unpacker = msgpack.Unpacker(raw=False)
            try:
                for i in pending:  # resend what was never acknowledged, same chunk ids
                    sock.sendall(self.messages[i])
                    self.resent += 1
                while len(self.acked) < len(self.messages):
                    while nxt < len(self.messages) and len(pending) < self.window:
                        sock.sendall(self.messages[nxt])
                        pending.append(nxt)
                        nxt += 1
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("closed")
                    unpacker.feed(data)
                    for answer in unpacker:
                        self.acked.add(answer["ack"])
                    pending = [i for i in pending if self.chunks[i] not in self.acked]
            except OSError:
                self.reconnects += 1
                time.sleep(0.2)  # (a client's reconnection pace)
            finally:
                sock.close()
        self.done.set()


def test_forward_source_kill_9_with_a_chunk_acking_client(es8, es_target, tmp_path):
    import base64
    import socket

    import msgpack

    seed = int(os.environ.get("COLLECTOR_CHAOS_SEED", time.time()))
    rng = random.Random(seed)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = {
        "data_dir": str(tmp_path / "state"),
        "sources": {"fwd": {"type": "fluent_forward", "listen": [f"tcp://127.0.0.1:{port}"]}},
        "sinks": {
            "es": {
                "type": "elasticsearch",
                "inputs": ["fwd"],
                "hosts": [es8.url],
                "data_stream": es_target,
                "retry": {"initial_backoff": 0.2, "max_backoff": 2.0},
                "batch": {"timeout": 0.2},
            }
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    per_msg, n_msgs = 100, 500  # a stream of 15 s or more here, the kills within its first 6 s
    messages, chunks = [], []
    t = int(time.time())
    for m in range(n_msgs):
        chunk = base64.b64encode(os.urandom(16)).decode()
        entries = b"".join(
            msgpack.packb([t, {"log": f"fwd seq={m * per_msg + i} padding to make it look like a log line ...."}])
            for i in range(per_msg)
        )
        messages.append(msgpack.packb(["chaos.fwd", entries, {"chunk": chunk, "size": per_msg}]))
        chunks.append(chunk)
    col = Collector("run", "-c", str(path)).start(tmp_path / "collector.log")
    client = AckingForwardClient(port, messages, chunks)
    try:
        client.thread.start()
        # the kills start once the stream flows: three kills in the first 3 s could all land before
        # the listener took its first connection (seed 1796023597: 0 reconnects, nothing felt)
        wait_until(lambda: client.acked, timeout=60, what="the first chunk acknowledged")
        kills = sorted(rng.uniform(0.5, 6.0) for _ in range(3))
        print(f"\nCOLLECTOR_CHAOS_SEED={seed}: kills at {[round(k, 2) for k in kills]} s")  # (shown on a failure)
        col = kill9_at(kills, col, path, tmp_path / "collector.log", rng, 0.1)
        assert client.done.wait(180), f"acked {len(client.acked)} of {n_msgs}"
        assert col.stop() == 0
    finally:
        col.__exit__()
    row = tally(es8, es_target, {"fwd": per_msg * n_msgs})
    report(
        "forward, chunk acks, kill -9 x3", row, seed=seed, resent_messages=client.resent, reconnects=client.reconnects
    )
    assert row["lost"] == 0, {k: v[:20] for k, v in row["missing"].items()}
    assert row["duplicated"] == 0
    assert client.reconnects >= 1  # the crashes were felt (a kill during a reconnect counts once)
