#!/usr/bin/env python3
"""The benchmark: one command, numbers you can compare.

    .venv/bin/python bench/run.py tail        # json-file -> metadata -> bulk endpoint, 3 runs
    .venv/bin/python bench/run.py tail --format cri   # the same lines as CRI files -> bulk endpoint
    .venv/bin/python bench/run.py floors      # what this machine can do at best
    .venv/bin/python bench/run.py idle        # 1,000 idle containers: CPU, memory, fds over time
    .venv/bin/python bench/run.py latency     # write -> bulk endpoint delay at a steady rate

``tail`` generates the workload once (bench/gen.py: 10 containers x 100,000 lines, 520 MB, in
/dev/shm, because this VM caches little file data), starts a counting bulk endpoint
(bench/bulk_sink.py, or ``--es-sink PATH`` for another one, e.g. the yardstick's es_sink.py),
runs ``collector tail --once`` ``--runs`` times and prints, per run and as medians: lines/s
(process start to exit), CPU seconds per million lines (user + sys, all threads), peak RSS.
``--metadata files|api``: container metadata from config.v2.json, or from a real Docker engine
(tests/services/dockerd.sh; the containers are created there, the logs written under their ids).
``--output file`` writes NDJSON to /dev/shm instead of HTTP; ``--compression gzip``.
``--tap RATE`` runs with the API on and a tap attached to the sink (``collector tap --rate RATE``,
reading as fast as it can): compare with the same command without it.
``--multiline java`` adds the multiline transform on a workload with 5 % of its lines in Java stack
traces (``--traces``; the same workload without ``--multiline`` is the baseline); with ``--output
file`` every joined record's text is checked against the workload (0 differences, or it fails).
Forward, GELF and syslog inputs have their own scripts: bench/forward.py, bench/gelf.py, bench/syslog.py.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import gen  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BulkSink:
    def __init__(self, script: Path, extra: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ready = tempfile.mktemp()
        self.proc = subprocess.Popen(
            [sys.executable, str(script), "--port", str(self.port), "--ready-file", ready, *(extra or [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            if os.path.exists(ready):
                break
            time.sleep(0.05)
        os.unlink(ready)

    def stats(self) -> dict[str, Any]:
        import urllib.request

        for path in ("/_stats", "/_sink/stats"):
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as r:
                    return json.loads(r.read())
            except OSError:
                continue
        return {}

    def reset(self) -> None:
        import urllib.request

        for path in ("/_reset", "/_sink/reset"):
            try:
                urllib.request.urlopen(urllib.request.Request(self.url + path, method="POST"), timeout=5).read()
                return
            except OSError:
                continue

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


def engine_count(url: str, index: str) -> int:
    import urllib.request

    try:
        urllib.request.urlopen(urllib.request.Request(f"{url}/{index}/_refresh", method="POST"), timeout=60).read()
        with urllib.request.urlopen(f"{url}/{index}/_count", timeout=60) as r:
            return int(json.loads(r.read())["count"])
    except OSError:
        return 0


def run_measured(cmd: list[str], env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``cmd``; wall seconds, CPU seconds (user+sys) and peak RSS (MB) of that process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace") if p.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"collector failed ({status}):\n{err[-3000:]}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024}


class TapClient(threading.Thread):
    """``collector tap`` reading as fast as it can (rate: its ``--rate``), attached as soon as the
    collector's API answers; counts what it is shown and what the stream says was skipped."""

    def __init__(self, rate: int) -> None:
        super().__init__(daemon=True)
        self.port = free_port()
        self.rate = rate
        self.seen = 0
        self.skipped = 0
        self.start()

    def run(self) -> None:
        from collector.tap import TapError, open_stream

        deadline = time.monotonic() + 60
        while True:
            try:
                conn, resp = open_stream(f"http://127.0.0.1:{self.port}", {"rate": str(self.rate)})
                break
            except TapError:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.005)
        try:
            while line := resp.readline():
                if line[:1] == b"{":
                    self.seen += 1
                elif line.startswith(b"#skipped "):
                    self.skipped = int(line.split()[1])
        finally:
            conn.close()


def docker_engine() -> str:
    res = subprocess.run(
        [str(REPO / "tests" / "services" / "dockerd.sh"), "start"], capture_output=True, text=True, check=True
    )
    return res.stdout.strip().splitlines()[-1].split("=", 1)[1]


def workload(args: argparse.Namespace) -> tuple[Path, dict[str, Any], str | None]:
    if args.metadata != "api":
        if args.traces:
            out = Path(f"{args.dir}-traces{args.traces:g}")
            return out, gen.generate(out, args.containers, args.lines, traces=args.traces), None
        out = Path(args.dir)
        return out, gen.generate(out, args.containers, args.lines), None
    # real containers on the test engine; their logs written under their ids
    import docker

    host = docker_engine()
    client = docker.DockerClient(base_url=host)
    out = Path(args.dir + "-api")
    names = [f"bench-{gen.APPS[i % len(gen.APPS)][0]}-{i}" for i in range(args.containers)]
    ids = []
    for i, name in enumerate(names):
        try:
            c = client.containers.get(name)
        except docker.errors.NotFound:
            app = gen.APPS[i % len(gen.APPS)]
            c = client.containers.create(
                "collector-test/busybox:latest",
                ["true"],
                name=name,
                labels={"com.docker.compose.project": "shop", "com.docker.compose.service": app[0], "tier": app[2]},
            )
        ids.append(c.id)
    m = gen.generate(out, args.containers, args.lines, seed="api:" + ",".join(ids), ids=ids)
    return out, m, host


def floors(out: Path) -> dict[str, float]:
    """Read + split every line; and orjson-decode every line (one core, files in /dev/shm)."""
    import orjson

    files = sorted(glob.glob(str(out / "containers" / "*" / "*-json.log")))
    t0 = time.process_time()
    n = 0
    for f in files:
        with open(f, "rb") as fh:
            rest = b""
            while chunk := fh.read(1 << 20):
                chunk = rest + chunk
                i = chunk.rfind(b"\n")
                n += chunk.count(b"\n", 0, i + 1)
                lines = chunk[: i + 1].split(b"\n")
                rest = chunk[i + 1 :]
                del lines
    split_s = time.process_time() - t0
    t0 = time.process_time()
    loads = orjson.loads
    for f in files:
        with open(f, "rb") as fh:
            rest = b""
            while chunk := fh.read(1 << 20):
                chunk = rest + chunk
                i = chunk.rfind(b"\n")
                for line in chunk[:i].split(b"\n"):
                    loads(line)
                rest = chunk[i + 1 :]
    decode_s = time.process_time() - t0
    return {"entries": n, "read_split_per_s": n / split_s, "decode_per_s": n / decode_s}


def cmd_tail(args: argparse.Namespace) -> None:
    if args.multiline and not args.traces:
        args.traces = 0.05
    out, manifest, host = workload(args)
    if args.format == "cri":
        if args.metadata == "api" or args.multiline or args.traces or args.compression != "none" or args.config_extra:
            raise SystemExit("--format cri runs on the plain workload: no --metadata api, --multiline, --traces, --set")
        out = Path(f"{out}-cri")
        manifest = gen.to_cri(Path(args.dir), out)
    lines = int(manifest["lines"])
    expect = lines
    if args.multiline:
        expect = int(manifest["records"])  # records once traces are joined
    elif args.traces:  # there `lines` counts the files' lines: Docker's 16 KB parts are rejoined into one
        expect = sum(int(c["entries"]) - int(c["partial"]) for c in manifest["containers"])
    sink = None
    if args.url:  # a real engine: count what it holds afterwards
        target = args.url
    elif args.output == "http":
        sink = BulkSink(Path(args.es_sink) if args.es_sink else HERE / "bulk_sink.py")
        target = sink.url
    else:
        target = f"file:{tempfile.mktemp(dir='/dev/shm', suffix='.ndjson')}"
    rows = []
    before = engine_count(args.url, "logs-docker-default") if args.url else 0
    try:
        for i in range(args.runs):
            state = tempfile.mkdtemp(dir=args.state_dir, prefix="collector-bench-state-")
            if args.format == "cri":  # no Docker metadata: pod, namespace and container from the path
                cmd = tail_command(out, target, state, "--once", fmt="cri")
            else:
                cmd = tail_command(out, target, state, "--once", "--docker-root", str(out), "--metadata", args.metadata)
            if host:
                cmd += ["--docker-host", host]
            if args.compression != "none" or args.config_extra or args.multiline:
                cmd = _with_config(cmd, args, out, target, state, host)
            if sink:
                sink.reset()
            tap = None
            if args.tap is not None:
                tap = TapClient(args.tap)
                cmd += ["--api", f"127.0.0.1:{tap.port}"]
            r = run_measured(cmd)
            if tap is not None:
                tap.join()
                print(f"       tap: {tap.seen:,} records shown, {tap.skipped:,} skipped (--rate {args.tap})")
            delivered = int((sink.stats() if sink else {}).get("docs", expect))
            if args.url:
                delivered = engine_count(args.url, "logs-docker-default") - before
                before += delivered
            shutil.rmtree(state, ignore_errors=True)
            if target.startswith("file:"):
                if args.multiline:
                    delivered = check_texts(Path(target[5:]), manifest)
                os.unlink(target[5:])
            if delivered != expect:
                raise SystemExit(f"run {i + 1}: the sink counted {delivered} documents, expected {expect}")
            row = {
                "run": i + 1,
                "lines_per_s": lines / r["wall"],
                "cpu_s_per_m": r["cpu"] / lines * 1e6,
                "rss_mb": r["rss_mb"],
                "wall_s": r["wall"],
                "cpu_s": r["cpu"],
            }
            rows.append(row)
            print(
                f"run {i + 1}: {row['lines_per_s']:>9,.0f} lines/s  {row['cpu_s_per_m']:5.2f} CPU-s/M lines  "
                f"peak RSS {row['rss_mb']:5.1f} MB  ({r['wall']:.2f}s wall, {r['cpu']:.2f} CPU-s)",
                flush=True,
            )
    finally:
        if sink:
            sink.close()
    med = {k: statistics.median(r[k] for r in rows) for k in ("lines_per_s", "cpu_s_per_m", "rss_mb")}
    print(
        f"median ({args.runs} runs, {lines:,} lines, {manifest['bytes'] / 1e6:.0f} MB, format {args.format}, "
        f"metadata from {'the path' if args.format == 'cri' else args.metadata}, output {args.output}): "
        f"{med['lines_per_s']:,.0f} lines/s, "
        f"{med['cpu_s_per_m']:.2f} CPU-s per million lines, peak RSS {med['rss_mb']:.1f} MB"
    )
    if args.floors:
        f = floors(Path(args.dir) if args.format == "cri" else out)  # the json-file lines either way
        print(
            f"floors (one core): read + split lines {f['read_split_per_s']:,.0f} lines/s; "
            f"orjson decode of every line {f['decode_per_s']:,.0f} lines/s"
        )
    if args.json:
        print(json.dumps({"runs": rows, "median": med}))


def check_texts(path: Path, manifest: dict[str, Any]) -> int:
    """Every record's text against the workload's digest, per container: exits on any difference
    (a lost, duplicated, split or corrupted record); returns the number of records."""
    import orjson

    sums: dict[str, list[int]] = {}  # streamed: this process stays small (a fork copies its size into the
    with open(path, "rb") as f:  # next run's peak RSS until exec)
        for line in f:
            d = orjson.loads(line)
            n, total = gen.digest([d["message"]])
            acc = sums.setdefault(d["container"]["id"], [0, 0])
            acc[0] += n
            acc[1] = (acc[1] + total) % (1 << 64)
    for c in manifest["containers"]:
        got = sums.get(str(c["id"]), [0, 0])
        if got != [c["records"], c["digest"]]:
            raise SystemExit(f"container {c['name']}: {got[0]} records, expected {c['records']}, or their texts differ")
    return sum(n for n, _ in sums.values())


def _with_config(
    cmd: list[str], args: argparse.Namespace, out: Path, target: str, state: str, host: str | None
) -> list[str]:
    import yaml

    sink: dict[str, Any] = {
        "type": "elasticsearch",
        "inputs": ["meta"],
        "hosts": [target],
        "compression": args.compression,
    }
    source: dict[str, Any] = {"type": "docker_json_file", "paths": [str(out / "containers" / "*" / "*-json.log")]}
    for kv in args.config_extra or []:
        k, _, v = kv.partition("=")
        if k.startswith("source."):
            source[k.removeprefix("source.")] = yaml.safe_load(v)
        else:
            sink[k] = yaml.safe_load(v)
    meta: dict[str, Any] = {
        "type": "docker_metadata",
        "inputs": ["logs"],
        "metadata": args.metadata,
    }
    if host:
        meta["docker_host"] = host
    transforms: dict[str, Any] = {"meta": meta}
    if target.startswith("file:"):
        sink = {"type": "file", "inputs": ["meta"], "path": target[5:], "fsync": "never"}
    if args.multiline:
        transforms["ml"] = {"type": "multiline", "inputs": ["meta"], "mode": args.multiline}
        sink["inputs"] = ["ml"]
    cfg = {
        "data_dir": state,
        "docker_root": str(out),
        "sources": {"logs": source},
        "transforms": transforms,
        "sinks": {"es": sink},
    }
    path = Path(state) / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [sys.executable, "-m", "collector", "--log-level", "warning", "run", "-c", str(path), "--once"]


def proc_sample(pid: int) -> tuple[float, float, int]:
    """(CPU seconds, RSS MB, open fds) of a running process."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(parts[11]) + int(parts[12])) / ticks
    rss = int(parts[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return cpu, rss, fds


def tail_command(out: Path, output: str, state: str, *extra: str, fmt: str = "json-file") -> list[str]:
    """``collector tail`` of the generated files under ``out`` into ``output``."""
    glob = str(out / "containers" / "*" / "*-json.log")
    if fmt == "cri":
        glob = str(out / "pods" / "*" / "*" / "*.log")
    head = [sys.executable, "-m", "collector", "--log-level", "warning", "tail", "--format", fmt, "--paths", glob]
    return [*head, "--output", output, "--data-dir", state, *extra]


@contextlib.contextmanager
def follow_collector(
    out: Path, sink_args: list[str] | None = None, root: Path | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], BulkSink]]:
    """``collector tail`` (follow mode) of the files under ``out`` into a counting bulk sink;
    stopped (SIGTERM) and cleaned up on exit."""
    sink = BulkSink(HERE / "bulk_sink.py", sink_args or [])
    state = tempfile.mkdtemp(dir="/dev/shm", prefix="collector-bench-state-")
    extra = ["--metadata", "files"] + (["--docker-root", str(root)] if root is not None else [])
    p = subprocess.Popen(tail_command(out, sink.url, state, *extra), stderr=subprocess.DEVNULL)
    try:
        yield p, sink
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(60)
        sink.close()
        shutil.rmtree(state, ignore_errors=True)


def cmd_idle(args: argparse.Namespace) -> None:
    out = Path(args.dir + f"-idle{args.containers}")
    gen.generate(out, args.containers, 10)
    with follow_collector(out, root=out) as (p, sink):
        deadline = time.time() + 120
        while int(sink.stats().get("docs", 0)) < args.containers * 10 and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(5)
        samples = [proc_sample(p.pid)]
        t0 = time.time()
        print(f"{args.containers} files followed, all read; sampling for {args.seconds}s", flush=True)
        while time.time() - t0 < args.seconds:
            time.sleep(args.interval)
            samples.append(proc_sample(p.pid))
            cpu, rss, fds = samples[-1]
            print(
                f"t={time.time() - t0:6.0f}s  CPU {100 * (cpu - samples[0][0]) / (time.time() - t0):5.2f}% of a "
                f"core  RSS {rss:6.1f} MB  fds {fds}",
                flush=True,
            )
        cpu_pct = 100 * (samples[-1][0] - samples[0][0]) / (time.time() - t0)
        print(
            f"idle, {args.containers} containers: {cpu_pct:.2f}% of a core; RSS {samples[0][1]:.1f} -> "
            f"{samples[-1][1]:.1f} MB; fds {samples[0][2]} -> {samples[-1][2]} over {args.seconds}s"
        )


def cmd_latency(args: argparse.Namespace) -> None:
    """Lines carry their write time; the sink (bulk_sink --latency) records arrival - write."""
    out = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="collector-bench-lat-"))
    files = []
    for i in range(args.containers):
        cid = f"{i:064x}"
        d = out / "containers" / cid
        d.mkdir(parents=True)
        files.append(open(d / f"{cid}-json.log", "ab", buffering=0))  # noqa: SIM115
    try:
        with follow_collector(out, ["--latency"]) as (_, sink):
            time.sleep(3)
            sink.reset()
            per_tick = max(1, args.rate // 100)  # 100 writes of per_tick lines per second
            t0 = time.time()
            n = 0
            while time.time() - t0 < args.seconds:
                now_ns = time.time_ns()
                ts = gen.rfc3339nano(now_ns)
                for k in range(per_tick):
                    f = files[(n + k) % len(files)]
                    f.write(
                        b'{"log":"LAT %d padding padding padding\\n","stream":"stdout","time":"%s"}\n'
                        % (now_ns, ts.encode())
                    )
                n += per_tick
                time.sleep(max(0.0, t0 + n / args.rate - time.time()))
            time.sleep(3)
            st = sink.stats()
            print(
                f"latency at {args.rate:,} lines/s over {args.seconds}s ({st.get('lat_n', 0):,} lines): "
                f"p50 {st.get('lat_p50_ms', 0):.0f} ms, p99 {st.get('lat_p99_ms', 0):.0f} ms, "
                f"max {st.get('lat_max_ms', 0):.0f} ms"
            )
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tail", help="json-file -> bulk, N runs")
    t.add_argument("--dir", default="/dev/shm/collector-bench")
    t.add_argument("--containers", type=int, default=10)
    t.add_argument("--lines", type=int, default=100_000, help="per container")
    t.add_argument("--runs", type=int, default=3)
    t.add_argument("--metadata", choices=("files", "api"), default="files")
    t.add_argument(
        "--format",
        choices=("json-file", "cri"),
        default="json-file",
        help="cri: the same workload written as containerd does (kubelet's layout, 16 KiB P parts), read with "
        "`tail --format cri` (no Docker metadata)",
    )
    t.add_argument("--output", choices=("http", "file"), default="http")
    t.add_argument("--compression", choices=("none", "gzip"), default="none")
    t.add_argument("--es-sink", help="another counting endpoint script (must take --port and --ready-file)")
    t.add_argument(
        "--url", help="a real Elasticsearch/OpenSearch to deliver to instead (data stream logs-docker-default)"
    )
    t.add_argument(
        "--set",
        dest="config_extra",
        action="append",
        metavar="KEY=VALUE",
        help="sink option (--set concurrency=4) or source option (--set source.read_bytes=1048576)",
    )
    t.add_argument(
        "--multiline",
        choices=("java",),
        help="add the multiline transform (this mode) on the workload with --traces of its lines in Java stack "
        "traces; with --output file every record's text is checked against the workload",
    )
    t.add_argument("--traces", type=float, default=0.0, help="share of lines in stack traces (0.05 with --multiline)")
    t.add_argument("--no-floors", dest="floors", action="store_false")
    t.add_argument("--state-dir", default="/dev/shm", help="where the data dir goes (a disk, to measure fsync)")
    t.add_argument("--json", action="store_true")
    t.add_argument(
        "--tap",
        type=int,
        metavar="RATE",
        help="with the API on and a `collector tap` attached to the sink, reading at full speed (its --rate; "
        "0: no limit but its queue): what a tap costs the pipeline",
    )
    i = sub.add_parser("idle", help="many idle containers: CPU, RSS, fds over time")
    i.add_argument("--dir", default="/dev/shm/collector-bench")
    i.add_argument("--containers", type=int, default=1000)
    i.add_argument("--seconds", type=int, default=600)
    i.add_argument("--interval", type=float, default=30)
    lat = sub.add_parser("latency", help="write -> sink delay at a steady rate")
    lat.add_argument("--rate", type=int, default=10_000, help="lines per second")
    lat.add_argument("--seconds", type=int, default=30)
    lat.add_argument("--containers", type=int, default=10)
    f = sub.add_parser("floors", help="read+split and decode rates of this machine")
    f.add_argument("--dir", default="/dev/shm/collector-bench")
    a = ap.parse_args()
    if a.cmd == "tail":
        cmd_tail(a)
    elif a.cmd == "idle":
        cmd_idle(a)
    elif a.cmd == "latency":
        cmd_latency(a)
    else:
        out = Path(a.dir)
        m = gen.generate(out, 10, 100_000)
        r = floors(out)
        print(
            f"{m['lines']:,} lines, {m['bytes'] / 1e6:.0f} MB: read + split {r['read_split_per_s']:,.0f} lines/s, "
            f"orjson decode {r['decode_per_s']:,.0f} lines/s (one core)"
        )


if __name__ == "__main__":
    main()
