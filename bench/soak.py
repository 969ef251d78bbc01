#!/usr/bin/env python3
"""Soak: a collector that runs for months, compressed into half an hour.

    COLLECTOR_SERVICES_DIR=/tmp/cs .venv/bin/python bench/soak.py --minutes 30 --outage-at 10

One ``collector run`` (json-file + forward + GELF UDP -> Elasticsearch through a disk buffer,
with container metadata from the Docker API) while:

* ``--containers`` real containers on the private Docker engine (tests/services/dockerd.sh) write
  ``--rate`` lines/s together, with ``max-size`` small enough to rotate every few seconds;
* ``--forward-clients`` forward clients each connect, send one chunk (acknowledged, resent with
  the same chunk id until it is), and disconnect, every second;
* a GELF UDP sender sends ``--gelf-rate`` messages/s;
* the search engine (tests/services/elasticsearch.sh) is restarted every ``--restart-every``
  seconds, and with ``--outage-at M`` stopped for real for ``--outage-minutes`` from minute M.

Every ``--sample-every`` seconds it samples the collector's RSS, open fds, threads, disk buffer
(records, bytes) and checkpoint lag (how far the most-behind container's saved checkpoint is
behind the wall clock), prints a row, and at the end a table, the slopes after ``--warmup``
minutes, and lost / duplicated per source, counted by the sequence numbers written into every
line (then read back from the engine). Results (JSON, Markdown table, PNG of RSS and lag) go to
``--out`` (default bench/results/). Exit status 1 when a target is missed:

* lost 0 and duplicated 0 (GELF over UDP: every loss counted as a drop, duplicated 0);
* after warm-up, the RSS slope at most 1 MB per 10 minutes (``rss_slope``: least squares over
  the floor of RSS, its lowest sample of each minute: the collector collects and trims its heap
  every minute and RSS saw-tooths by a few MB with what is in flight; judged on runs of 15
  minutes or more), and in every run, once everything is delivered and a minute has passed, RSS
  back within ``rss_noise`` MB of where it was after warm-up (what a run of minutes can resolve);
  fds and threads constant (within a few: clients come and go);
* the collector exits 0 once everything is delivered.

tests/e2e/test_soak.py runs a 2-minute version in CI with the same assertions (``assess``).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import orjson
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from collector.codecs.forward import pack_entries, pack_message  # noqa: E402
from collector.sinks.elasticsearch.client import EngineClient  # noqa: E402

IMAGE = "collector-test/busybox:latest"
SEQ = re.compile(r"^(\S+) seq=(\d+) ")
PAD = "padding to make the line look like an ordinary log line ..............."


@dataclass
class Options:
    minutes: float = 30.0
    containers: int = 50
    rate: int = 2000  # json-file lines/s, all containers together
    max_size: str = "20k"
    max_file: int = 5
    restart_every: float = 300.0  # seconds between engine restarts (0: never)
    outage_at: float | None = None  # minute at which the engine goes down for real
    outage_minutes: float = 10.0
    forward_clients: int = 2
    forward_rate: int = 20  # records per client per second
    gelf_rate: int = 50  # messages per second
    sample_every: float = 10.0
    warmup: float = 5.0  # minutes left out of the slopes
    rss_slope: float = 1.0  # MB per 10 minutes, after warm-up
    rss_noise: float = 5.0  # MB: how far settled RSS may be from where it was after warm-up
    fd_tolerance: int = 8
    thread_tolerance: int = 2
    catch_up: float = 1800.0  # seconds to deliver the backlog once the load stops
    settle: float = 75.0  # seconds sampled once everything is delivered (more than a housekeeping minute)
    settle_early: bool = False  # stop sampling once RSS is back (the verdict is the same; CI uses it)
    engine: str = "es8"
    state_root: str = "/dev/shm"


@dataclass
class Sample:
    t: float  # seconds since the load started
    rss_mb: float
    fds: int
    threads: int
    buffer_events: int
    buffer_mb: float
    lag_s: float | None
    received: int
    sent: int
    engine_up: bool


@dataclass
class Result:
    options: dict[str, Any]
    command: str
    samples: list[Sample] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)  # engine down from, to (s)
    tallies: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> written, delivered, lost, dup
    gelf_counted_drops: int = 0
    exit_code: int | None = None
    duration: float = 0.0
    written_rate: float = 0.0
    slopes: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


# -- services -------------------------------------------------------------------------------------
class Engine:
    """The search engine, stopped and started through tests/services/elasticsearch.sh."""

    def __init__(self, name: str, url: str | None = None) -> None:
        self.name = name
        self.url = url or self._script("start").splitlines()[-1]
        self.up = True

    def _script(self, *args: str) -> str:
        cmd = [str(REPO / "tests" / "services" / "elasticsearch.sh"), *args, "--engine", self.name]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        if res.returncode != 0:
            raise RuntimeError(f"elasticsearch.sh {' '.join(args)} failed:\n{res.stderr[-3000:]}")
        return res.stdout.strip()

    def stop(self) -> None:
        self.up = False
        self._script("stop")

    def start(self) -> None:
        self.url = self._script("start").splitlines()[-1]
        self.up = True

    def client(self) -> EngineClient:
        return EngineClient([self.url], timeout=120)


def start_dockerd() -> tuple[str, Path]:
    script = str(REPO / "tests" / "services" / "dockerd.sh")
    res = subprocess.run([script, "start"], capture_output=True, text=True, timeout=900, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"dockerd.sh start failed:\n{res.stderr[-3000:]}")
    host = res.stdout.strip().splitlines()[-1].split("=", 1)[1]
    services = Path(os.environ.get("COLLECTOR_SERVICES_DIR", "/tmp/collector-services"))
    return host, services / "dockerd" / "root"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- load -----------------------------------------------------------------------------------------
def writer_script(tag: str, per_second: int) -> str:
    """Bursts of ``<tag> seq=<n> ...`` lines, about ``per_second`` a second, for ever."""
    half = max(1, per_second // 2)
    return (
        f"j=0; while true; do awk -v j=$j 'BEGIN{{for(i=j*{half};i<(j+1)*{half};i++) "
        f'printf "{tag} seq=%d {PAD}\\n", i}}\'; usleep 500000; j=$((j+1)); done'
    )


class ForwardClient(threading.Thread):
    """Connects, sends one chunk, waits for its ack, disconnects: every second. A chunk not
    acknowledged is sent again with the same chunk id (at-least-once; ids make it harmless)."""

    def __init__(self, tag: str, port: int, per_second: int) -> None:
        super().__init__(daemon=True, name=f"forward-{tag}")
        self.tag = tag
        self.port = port
        self.per_second = per_second
        self.stop = threading.Event()
        self.acked = 0  # records acknowledged: seqs 0 .. acked-1
        self.resent = 0
        self.gave_up = 0

    def _send(self, message: bytes, chunk: str) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.settimeout(30)
                s.sendall(message)
                unpacker = msgpack.Unpacker(raw=False)
                while data := s.recv(4096):
                    unpacker.feed(data)
                    for answer in unpacker:
                        if isinstance(answer, dict) and answer.get("ack") == chunk:
                            return True
        except OSError:
            pass
        return False

    def run(self) -> None:
        deadline = None
        while True:
            t0 = time.monotonic()
            if self.stop.is_set():
                deadline = deadline or t0 + 300
                if t0 > deadline:
                    self.gave_up = self.per_second
                    return
            now = int(time.time())
            entries = [
                (now, {"log": f"{self.tag} seq={self.acked + i} {PAD}", "source": "stdout"})
                for i in range(self.per_second)
            ]
            chunk = uuid.uuid4().hex
            message = pack_message(f"soak.{self.tag}", pack_entries(entries), {"chunk": chunk, "size": len(entries)})
            while not self._send(message, chunk):
                self.resent += 1
                time.sleep(1)
                if deadline and time.monotonic() > deadline:
                    self.gave_up = self.per_second
                    return
            self.acked += len(entries)
            if self.stop.is_set():
                return
            time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))


class GelfSender(threading.Thread):
    """GELF over UDP (gzip, like Docker's gelf driver), ``rate`` messages a second in 10 bursts."""

    def __init__(self, tag: str, port: int, rate: int) -> None:
        super().__init__(daemon=True, name=f"gelf-{tag}")
        self.tag = tag
        self.port = port
        self.rate = rate
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        per = max(1, self.rate // 10)
        try:
            while not self.stop.is_set():
                t0 = time.monotonic()
                for _ in range(per):
                    msg = {"version": "1.1", "host": "soak", "short_message": f"{self.tag} seq={self.sent} {PAD}"}
                    sock.sendto(gzip.compress(orjson.dumps(msg), 1), ("127.0.0.1", self.port))
                    self.sent += 1
                time.sleep(max(0.0, 0.1 - (time.monotonic() - t0)))
        finally:
            sock.close()


class EngineChaos(threading.Thread):
    """Restarts the engine every ``every`` seconds; keeps it down for real during the outage."""

    def __init__(self, engine: Engine, t0: float, every: float, outage: tuple[float, float] | None) -> None:
        super().__init__(daemon=True, name="engine-chaos")
        self.engine = engine
        self.t0 = t0
        self.every = every
        self.outage = outage  # (from, to) seconds since t0
        self.stop = threading.Event()
        self.down: list[tuple[float, float]] = []
        self.errors: list[str] = []

    def _now(self) -> float:
        return time.monotonic() - self.t0

    def _down(self, until: Callable[[], bool]) -> None:
        start = self._now()
        self.engine.stop()
        while not until() and not self.stop.is_set():
            time.sleep(0.5)
        self.engine.start()
        self.down.append((start, self._now()))

    def run(self) -> None:
        next_restart = self.every if self.every > 0 else float("inf")
        try:
            while not self.stop.is_set():
                now = self._now()
                if self.outage and self.outage[0] <= now < self.outage[1]:
                    end = self.outage[1]
                    self._down(lambda end=end: self._now() >= end)
                    self.outage = None
                    next_restart = self._now() + self.every if self.every > 0 else next_restart
                elif now >= next_restart:
                    self._down(lambda: True)
                    next_restart += self.every
                self.stop.wait(0.5)
        except Exception as e:  # said in the result, never silently
            self.errors.append(repr(e))
        finally:
            if not self.engine.up:
                self.engine.start()


# -- measuring ------------------------------------------------------------------------------------
def proc_stats(pid: int) -> tuple[float, int, int]:
    """RSS (MB), open fds, threads of ``pid``."""
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd")), threads


def metrics(api: str) -> dict[str, float]:
    """The collector's /metrics, summed per metric name (labels dropped) and per name{component}."""
    out: dict[str, float] = defaultdict(float)
    with urllib.request.urlopen(f"http://{api}/metrics", timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        name = key.split("{", 1)[0]
        out[name] += float(value)
        m = re.search(r'component="([^"]*)"', key)
        if m:
            out[f"{name}{{{m.group(1)}}}"] += float(value)
    return out


def checkpoint_lag(state: Path, source: str = "containers") -> float | None:
    """Seconds between now and the newest saved record of the most-behind container."""
    try:
        doc = orjson.loads(next(state.glob("checkpoints/*.json")).read_bytes())
    except (StopIteration, FileNotFoundError, orjson.JSONDecodeError):
        return None
    newest: dict[str, str] = {}
    for st in doc.get("sources", {}).get(source, {}).values():
        t = st.get("last_time")
        if t and t > newest.get(st.get("live", ""), ""):
            newest[st.get("live", "")] = t
    if not newest:
        return None
    oldest = min(newest.values()).rstrip("Z")  # RFC 3339 with nanoseconds: keep the microseconds
    when = datetime.fromisoformat(oldest[:26]).replace(tzinfo=UTC)
    return max(0.0, time.time() - when.timestamp())


def slope_per_10min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per 10 minutes."""
    if len(points) < 3:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    den = sum((t - mx) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mx) * (v - my) for t, v in points) / den * 600


def tally(engine: Engine, target: str, expected: dict[str, tuple[str, int]]) -> dict[str, dict[str, int]]:
    """Per kind (json-file, forward, gelf): written, delivered, lost, duplicated, by sequence numbers."""
    seen: dict[str, Counter[int]] = defaultdict(Counter)
    c = engine.client()
    try:
        c.request("POST", f"/{target}/_refresh")
        r = c.request(
            "POST", f"/{target}/_search?scroll=5m", {"size": 10_000, "_source": ["message"], "sort": ["_doc"]}
        )
        while r.status == 200 and r.body["hits"]["hits"]:
            for h in r.body["hits"]["hits"]:
                m = SEQ.match(h["_source"].get("message", ""))
                if m:
                    seen[m.group(1)][int(m.group(2))] += 1
            r = c.request("POST", "/_search/scroll", {"scroll": "5m", "scroll_id": r.body["_scroll_id"]})
        if r.status != 200:
            raise RuntimeError(f"reading the documents back failed: {r.status} {r.body}")
    finally:
        c.close()
    out: dict[str, dict[str, int]] = {}
    for tag, (kind, n) in expected.items():
        row = out.setdefault(kind, {"written": 0, "delivered": 0, "lost": 0, "duplicated": 0})
        counts = seen.get(tag, Counter())
        row["written"] += n
        row["delivered"] += sum(1 for i in range(n) if counts[i])
        row["lost"] += sum(1 for i in range(n) if not counts[i])
        row["duplicated"] += sum(v - 1 for v in counts.values() if v > 1)
    return out


def last_seq(log_path: str) -> int:
    """The last sequence number a stopped container wrote (its live file, or the newest rotated)."""
    for p in (log_path, f"{log_path}.1"):
        with contextlib.suppress(FileNotFoundError):
            data = Path(p).read_bytes().rstrip(b"\n")
            if data:
                m = SEQ.match(orjson.loads(data.rsplit(b"\n", 1)[-1])["log"])
                if m:
                    return int(m.group(2))
    return -1


# -- the run --------------------------------------------------------------------------------------
def pipeline(state: Path, root: Path, docker_host: str, es_url: str, target: str, ports: dict[str, int]) -> Path:
    cfg = {
        "data_dir": str(state),
        "sources": {
            "containers": {"type": "docker_json_file", "paths": [str(root / "containers" / "*" / "*-json.log")]},
            "forward": {"type": "fluent_forward", "listen": [f"tcp://127.0.0.1:{ports['forward']}"]},
            "gelf": {"type": "gelf", "listen": [f"udp://127.0.0.1:{ports['gelf']}"]},
        },
        "transforms": {
            "meta": {
                "type": "docker_metadata",
                "inputs": ["containers"],
                "docker_host": docker_host,
            }
        },
        "docker_root": str(root),
        "sinks": {
            "es": {
                "type": "elasticsearch",
                "inputs": ["meta", "forward", "gelf"],
                "hosts": [es_url],
                "data_stream": target,
                "retry": {"initial_backoff": 0.2, "max_backoff": 5.0},
                "buffer": {"type": "disk", "max_bytes": 4 << 30},
            }
        },
        "api": {"listen": f"tcp://127.0.0.1:{ports['api']}"},
        "shutdown_timeout": 120,
    }
    path = state / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_soak(
    opts: Options, docker_host: str, docker_root: Path, engine: Engine, say: Callable[[str], None] = print
) -> Result:
    import docker

    run_id = uuid.uuid4().hex[:8]
    state = Path(opts.state_root) / f"collector-soak-{run_id}"
    state.mkdir(parents=True)
    target = f"logs-docker-soak{run_id}"
    ports = {"forward": free_port(), "gelf": free_port(socket.SOCK_DGRAM), "api": free_port()}
    api = f"127.0.0.1:{ports['api']}"
    cfg = pipeline(state, docker_root, docker_host, engine.url, target, ports)
    result = Result(asdict(opts), " ".join([Path(sys.executable).name, *sys.argv]))
    client = docker.DockerClient(base_url=docker_host, timeout=120)
    containers: list[Any] = []
    err = open(state / "collector.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "collector", "run", "-c", str(cfg)], cwd=REPO, stderr=err, start_new_session=True
    )
    workers: list[Any] = []
    try:
        _wait(lambda: _healthy(api), 60, "the collector's API")
        per = max(1, opts.rate // opts.containers)
        rotation = {"max-size": opts.max_size, "max-file": str(opts.max_file)}
        for k in range(opts.containers):
            containers.append(
                client.containers.run(
                    IMAGE,
                    ["sh", "-c", writer_script(f"c{k}", per)],
                    name=f"soak-{run_id}-{k}",
                    labels={"collector-soak": run_id, "com.docker.compose.project": "soak"},
                    network_mode="none",
                    log_config={"Type": "json-file", "Config": rotation},
                    detach=True,
                )
            )
        t0 = time.monotonic()
        outage = None
        if opts.outage_at is not None:
            outage = (opts.outage_at * 60, (opts.outage_at + opts.outage_minutes) * 60)
        chaos = EngineChaos(engine, t0, opts.restart_every, outage)
        forwards = [ForwardClient(f"f{i}", ports["forward"], opts.forward_rate) for i in range(opts.forward_clients)]
        gelf = GelfSender("g0", ports["gelf"], opts.gelf_rate)
        workers = [chaos, *forwards, gelf]
        for w in workers:
            w.start()
        say(_header())
        end = t0 + opts.minutes * 60
        next_sample = t0
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"the collector exited ({proc.returncode}) during the soak")
            next_sample += opts.sample_every
            time.sleep(max(0.0, next_sample - time.monotonic()))
            s = _sample(proc.pid, api, state, time.monotonic() - t0, engine.up)
            result.samples.append(s)
            say(_row(s))
        # the load stops; everything written must arrive
        result.duration = time.monotonic() - t0
        for c in containers:
            c.kill()
        gelf.stop.set()
        for f in forwards:
            f.stop.set()
        chaos.stop.set()
        for w in workers:
            w.join(600)
        result.outages = chaos.down
        if chaos.errors:
            result.failures.append(f"engine control failed: {chaos.errors}")
        expected: dict[str, tuple[str, int]] = {}
        for k, c in enumerate(containers):
            c.reload()
            expected[f"c{k}"] = ("json-file", last_seq(c.attrs["LogPath"]) + 1)
        for f in forwards:
            expected[f.tag] = ("forward", f.acked)
        expected[gelf.tag] = ("gelf", gelf.sent)
        result.written_rate = sum(n for kind, n in expected.values() if kind == "json-file") / result.duration
        say(f"load stopped after {result.duration:.0f}s; delivering the backlog ...")
        logs = [c.attrs["LogPath"] for c in containers]
        _wait(lambda: _read_to_the_end(state, logs) and _caught_up(api), opts.catch_up, "the backlog to be delivered")
        # then a quiet minute and more (the collector collects and trims its heap every minute):
        # what RSS comes back to, to compare with where it was after warm-up
        say(f"everything delivered after {time.monotonic() - t0:.0f}s; settling for {opts.settle:.0f}s ...")
        settle_end = time.monotonic() + opts.settle
        while time.monotonic() < settle_end:
            s = _sample(proc.pid, api, state, time.monotonic() - t0, engine.up)
            result.samples.append(s)
            say(_row(s))
            if opts.settle_early and rss_back(result, opts):
                break  # assess() judges the lowest settled sample: later ones cannot change its verdict
            time.sleep(opts.sample_every)
        m = metrics(api)
        result.gelf_counted_drops = int(m.get("collector_events_dropped_total{gelf}", 0))
        proc.send_signal(signal.SIGTERM)
        result.exit_code = proc.wait(300)
        result.tallies = tally(engine, target, expected)
    finally:
        for w in workers:
            getattr(w, "stop", threading.Event()).set()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        err.close()
        for c in containers:
            with contextlib.suppress(Exception):
                c.remove(force=True)
        client.close()
        if not engine.up:
            engine.start()
    result.slopes = slopes(result, opts)
    result.failures += assess(result, opts)
    if not result.failures:
        shutil.rmtree(state, ignore_errors=True)
    else:
        say(f"state kept for a look: {state}")
    return result


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{api}/health", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _read_to_the_end(state: Path, logs: list[str]) -> bool:
    """Every container's live file is checkpointed to its end (so the source has read it all)."""
    try:
        doc = orjson.loads(next(state.glob("checkpoints/*.json")).read_bytes())
    except (StopIteration, FileNotFoundError, orjson.JSONDecodeError):
        return False
    at = {st.get("path"): int(st.get("offset", 0)) for st in doc.get("sources", {}).get("containers", {}).values()}
    return all(at.get(p, -1) >= os.path.getsize(p) for p in logs)


def _caught_up(api: str) -> bool:
    """Nothing waits in the buffer and the sink has sent all the sources received (twice in a row)."""
    for _ in range(2):
        m = metrics(api)
        received = m.get("collector_events_received_total", 0)
        done = m.get("collector_events_sent_total", 0) + m.get("collector_events_dropped_total", 0)
        done += m.get("collector_events_rejected_total", 0)
        if m.get("collector_buffer_events", 0) or done < received:
            return False
        time.sleep(3)
    return True


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1)


def _sample(pid: int, api: str, state: Path, t: float, up: bool) -> Sample:
    rss, fds, threads = proc_stats(pid)
    m = metrics(api)
    return Sample(
        t=round(t, 1),
        rss_mb=round(rss, 2),
        fds=fds,
        threads=threads,
        buffer_events=int(m.get("collector_buffer_events", 0)),
        buffer_mb=round(m.get("collector_buffer_bytes", 0) / 1e6, 2),
        lag_s=None if (lag := checkpoint_lag(state)) is None else round(lag, 1),
        received=int(m.get("collector_events_received_total", 0)),
        sent=int(m.get("collector_events_sent_total", 0)),
        engine_up=up,
    )


def _header() -> str:
    return (
        f"{'t (s)':>7} {'RSS MB':>7} {'fds':>4} {'thr':>4} {'buf rec':>8} {'buf MB':>7} "
        f"{'lag s':>6} {'received':>9} {'sent':>9} engine"
    )


def _row(s: Sample) -> str:
    lag = "-" if s.lag_s is None else f"{s.lag_s:.1f}"
    return (
        f"{s.t:7.0f} {s.rss_mb:7.1f} {s.fds:4d} {s.threads:4d} {s.buffer_events:8d} {s.buffer_mb:7.1f} "
        f"{lag:>6} {s.received:9d} {s.sent:9d} {'up' if s.engine_up else 'DOWN'}"
    )


def rss_floor(samples: list[Sample], period: float = 60.0) -> list[tuple[float, float]]:
    """The lowest RSS of each ``period`` (the collector collects and trims its heap every minute:
    between those, RSS saw-tooths by a few MB with what is in flight; the floor is what it keeps)."""
    out: dict[int, tuple[float, float]] = {}
    for s in samples:
        k = int(s.t // period)
        if k not in out or s.rss_mb < out[k][1]:
            out[k] = (s.t, s.rss_mb)
    return [out[k] for k in sorted(out)]


def slopes(result: Result, opts: Options) -> dict[str, float]:
    after = [s for s in result.samples if opts.warmup * 60 <= s.t <= result.duration]
    settled = [s for s in result.samples if s.t > result.duration]
    if not after or not settled:
        return {}
    floor = rss_floor(after)
    third = max(1, len(after) // 3)
    early = min(s.rss_mb for s in after if s.t <= opts.warmup * 60 + 60)
    return {
        "rss_after_warmup_mb": early,
        "rss_settled_mb": min(s.rss_mb for s in settled),
        "rss_settled_growth_mb": round(min(s.rss_mb for s in settled) - early, 2),
        "rss_mb_per_10min": round(slope_per_10min([(s.t, s.rss_mb) for s in after]), 3),
        "rss_floor_mb_per_10min": round(slope_per_10min(floor), 3),
        "rss_floor_growth_mb": round(min(s.rss_mb for s in after[-third:]) - min(s.rss_mb for s in after[:third]), 2),
        "fds_per_10min": round(slope_per_10min([(s.t, s.fds) for s in after]), 3),
        "threads_per_10min": round(slope_per_10min([(s.t, s.threads) for s in after]), 3),
        "rss_start_mb": after[0].rss_mb,
        "rss_end_mb": after[-1].rss_mb,
        "rss_growth_mb": round(after[-1].rss_mb - after[0].rss_mb, 2),
        "fds_range": max(s.fds for s in after) - min(s.fds for s in after),
        "threads_range": max(s.threads for s in after) - min(s.threads for s in after),
        "window_s": round(after[-1].t - after[0].t, 1),
    }


def rss_allowed(sl: dict[str, float], opts: Options) -> float:
    """How far (MB) settled RSS may be above its level after warm-up."""
    return max(opts.rss_noise, opts.rss_slope * sl["window_s"] / 600)


def rss_back(result: Result, opts: Options) -> bool:
    """RSS, once everything was delivered, is back within what assess() allows (so far)."""
    sl = slopes(result, opts)
    return bool(sl) and sl["rss_settled_growth_mb"] <= rss_allowed(sl, opts)


def assess(result: Result, opts: Options) -> list[str]:
    """The targets; each one missed is a line."""
    bad: list[str] = []
    if result.exit_code != 0:
        bad.append(f"the collector exited {result.exit_code}, not 0, once everything was delivered")
    for kind, row in result.tallies.items():
        if row["duplicated"]:
            bad.append(f"{kind}: {row['duplicated']} duplicated")
        if kind == "gelf":
            if row["lost"] > result.gelf_counted_drops:
                bad.append(f"gelf: {row['lost']} lost, only {result.gelf_counted_drops} counted as dropped")
        elif row["lost"]:
            bad.append(f"{kind}: {row['lost']} of {row['written']} lost")
    if not result.tallies:
        bad.append("nothing was counted")
    sl = result.slopes
    if not sl:
        bad.append("no sample after the warm-up")
        return bad
    # what RSS keeps: its floor (lowest of each minute; in between it saw-tooths with what is in
    # flight). A slope means something over a long window only. Every run: once everything is
    # delivered and the heap collected, RSS is back within noise of where it was after warm-up
    if sl["window_s"] >= 900 and sl["rss_floor_mb_per_10min"] > opts.rss_slope:
        bad.append(
            f"the RSS floor grows {sl['rss_floor_mb_per_10min']:.2f} MB per 10 min after warm-up "
            f"(target {opts.rss_slope})"
        )
    allowed = rss_allowed(sl, opts)
    if sl["rss_settled_growth_mb"] > allowed:
        bad.append(
            f"settled, RSS is {sl['rss_settled_mb']:.1f} MB: {sl['rss_settled_growth_mb']:.1f} MB above its "
            f"{sl['rss_after_warmup_mb']:.1f} MB after warm-up (allowed {allowed:.1f})"
        )
    if sl["fds_range"] > opts.fd_tolerance:
        bad.append(f"open fds varied by {sl['fds_range']} after warm-up (tolerance {opts.fd_tolerance})")
    if sl["threads_range"] > opts.thread_tolerance:
        bad.append(f"threads varied by {sl['threads_range']} after warm-up (tolerance {opts.thread_tolerance})")
    return bad


def report(result: Result) -> str:
    lines = [
        "| t (s) | RSS MB | fds | threads | buffer records | buffer MB | checkpoint lag s | received | sent | engine |"
    ]
    lines.append("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for s in result.samples:
        lag = "-" if s.lag_s is None else f"{s.lag_s:.1f}"
        lines.append(
            f"| {s.t:.0f} | {s.rss_mb:.1f} | {s.fds} | {s.threads} | {s.buffer_events} | {s.buffer_mb:.1f} | {lag} "
            f"| {s.received} | {s.sent} | {'up' if s.engine_up else 'DOWN'} |"
        )
    lines += ["", "| source | written | delivered | lost | duplicated |", "| --- | ---: | ---: | ---: | ---: |"]
    for kind, row in result.tallies.items():
        lines.append(f"| {kind} | {row['written']} | {row['delivered']} | {row['lost']} | {row['duplicated']} |")
    sl = result.slopes
    lines += [
        "",
        f"json-file lines written: {result.written_rate:.0f}/s over {result.duration:.0f}s; "
        f"engine down: {', '.join(f'{a:.0f}-{b:.0f}s' for a, b in result.outages) or 'never'}; "
        f"GELF drops counted: {result.gelf_counted_drops}; exit code {result.exit_code}",
    ]
    if sl:
        lines.append(
            f"after warm-up ({sl['window_s']:.0f}s): RSS {sl['rss_start_mb']} -> {sl['rss_end_mb']} MB, "
            f"slope {sl['rss_mb_per_10min']} MB/10min, of its floor {sl['rss_floor_mb_per_10min']} MB/10min; "
            f"settled once delivered {sl['rss_settled_mb']} MB ({sl['rss_settled_growth_mb']:+} MB from "
            f"{sl['rss_after_warmup_mb']} MB after warm-up); fds slope {sl['fds_per_10min']}/10min "
            f"(range {sl['fds_range']}); threads slope {sl['threads_per_10min']}/10min (range {sl['threads_range']})"
        )
    lines += [
        "targets: " + ("all met" if not result.failures else "MISSED: " + "; ".join(result.failures)),
    ]
    return "\n".join(lines)


def plot(result: Result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t / 60 for s in result.samples]
    fig, (ax1, ax2) = plt.subplots(2, 1, sharex=True, figsize=(10, 6.5))
    ax1.plot(t, [s.rss_mb for s in result.samples], color="tab:blue", label="RSS")
    floor = rss_floor(result.samples)
    ax1.plot([a / 60 for a, _ in floor], [b for _, b in floor], "--", color="tab:purple", label="floor")
    ax1.set_ylabel("RSS (MB)")
    ax1.legend(loc="lower right")
    ax1.set_title(
        f"collector soak: {result.options['containers']} containers, {result.written_rate:.0f} lines/s, "
        f"{result.duration / 60:.0f} min"
    )
    ax2.plot(t, [s.lag_s if s.lag_s is not None else float("nan") for s in result.samples], color="tab:green")
    ax2.set_ylabel("checkpoint lag (s)")
    ax3 = ax2.twinx()
    ax3.plot(t, [s.buffer_events for s in result.samples], color="tab:orange", alpha=0.7)
    ax3.set_ylabel("disk buffer (records)", color="tab:orange")
    ax2.set_xlabel("minutes")
    for a, b in result.outages:
        for ax in (ax1, ax2):
            ax.axvspan(a / 60, b / 60, color="red", alpha=0.12, lw=0)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    d = Options()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=d.minutes)
    ap.add_argument("--containers", type=int, default=d.containers)
    ap.add_argument("--rate", type=int, default=d.rate, help="json-file lines/s, all containers together")
    ap.add_argument("--max-size", default=d.max_size, help="json-file max-size of each container")
    ap.add_argument("--max-file", type=int, default=d.max_file)
    ap.add_argument("--restart-every", type=float, default=d.restart_every, help="seconds between engine restarts")
    ap.add_argument("--outage-at", type=float, default=None, help="minute at which the engine goes down for real")
    ap.add_argument("--outage-minutes", type=float, default=d.outage_minutes)
    ap.add_argument("--forward-clients", type=int, default=d.forward_clients)
    ap.add_argument("--forward-rate", type=int, default=d.forward_rate, help="records per client per second")
    ap.add_argument("--gelf-rate", type=int, default=d.gelf_rate, help="GELF UDP messages per second")
    ap.add_argument("--sample-every", type=float, default=d.sample_every)
    ap.add_argument("--warmup", type=float, default=d.warmup, help="minutes left out of the slopes")
    ap.add_argument("--engine", default=d.engine, choices=("es8", "es9", "os2"))
    ap.add_argument("--state-root", default=d.state_root, help="where the data directory goes")
    ap.add_argument("--out", default=str(REPO / "bench" / "results"), help="results directory")
    a = ap.parse_args(argv)
    opts = Options(
        minutes=a.minutes,
        containers=a.containers,
        rate=a.rate,
        max_size=a.max_size,
        max_file=a.max_file,
        restart_every=a.restart_every,
        outage_at=a.outage_at,
        outage_minutes=a.outage_minutes,
        forward_clients=a.forward_clients,
        forward_rate=a.forward_rate,
        gelf_rate=a.gelf_rate,
        sample_every=a.sample_every,
        warmup=a.warmup,
        engine=a.engine,
        state_root=a.state_root,
    )
    docker_host, docker_root = start_dockerd()
    engine = Engine(opts.engine)
    result = run_soak(opts, docker_host, docker_root, engine)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"soak-{int(opts.minutes)}min"
    text = report(result)
    print("\n" + text)
    (out / f"{stem}.md").write_text(f"    {result.command}\n\n{text}\n")
    (out / f"{stem}.json").write_bytes(orjson.dumps(asdict(result), option=orjson.OPT_INDENT_2))
    try:
        plot(result, out / f"{stem}.png")
        print(f"\nwritten: {out / stem}.md, .json, .png")
    except ImportError:  # the table and the JSON are the results; the plot needs the bench extra
        print(f"\nwritten: {out / stem}.md, .json (no .png: pip install -e '.[bench]' for matplotlib)")
    return 1 if result.failures else 0


if __name__ == "__main__":
    sys.exit(main())
