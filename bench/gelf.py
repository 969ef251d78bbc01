#!/usr/bin/env python3
"""GELF messages/s in (source) and out (sink), over UDP and TCP, with the drop counts.

    .venv/bin/python bench/gelf.py in  --transport udp --messages 500000 --rate 50000
    .venv/bin/python bench/gelf.py in  --transport tcp --messages 500000
    .venv/bin/python bench/gelf.py out --transport udp --messages 300000 [--compression gzip]
    .venv/bin/python bench/gelf.py out --transport tcp --messages 300000

``in``: the collector runs in this process (``gelf`` source -> ``file`` sink on /dev/shm, no
fsync); a client process sends Docker-gelf-driver-shaped messages (gzip, like Docker's default;
``--compression`` to change), built before the clock starts, paced at ``--rate`` messages/s
(0: as fast as it can).  The clock runs from the first datagram to the last record written;
the drops (pipeline full, receive buffer full) are read from the collector's counters.

``out``: the sink runs in this process, fed with batches of json-file-shaped records built
beforehand; a receiver process counts datagrams (UDP) or null-terminated frames (TCP).  The
clock runs from the first batch to the last record finalized by the sink.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.app import run_pipeline
from collector.config import validate_config

CONTAINERS = 10


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- client / receiver processes -----------------------------------------------------------------
def build_messages(n: int, compression: str) -> list[bytes]:
    out = []
    cids = [os.urandom(32).hex() for _ in range(CONTAINERS)]
    t0 = 1714564800.0
    for i in range(n):
        c = i % CONTAINERS
        msg = {
            "version": "1.1",
            "host": "bench-host",
            "short_message": f"GET /api/v1/items/{i} 200 0.{i % 997:03d}s user=alice request_id={i:012d} ok",
            "timestamp": t0 + i / 1000,
            "level": 6 if i % 10 else 3,
            "_command": "/app/server --port 8080",
            "_container_id": cids[c],
            "_container_name": f"app-{c}",
            "_created": "2024-05-01T11:00:00.000000000Z",
            "_image_id": "sha256:" + "ab" * 32,
            "_image_name": "registry.example/app:1.2",
            "_tag": cids[c][:12],
        }
        raw = orjson.dumps(msg)
        if compression == "gzip":
            raw = zlib.compress(raw, 1, 31)
        elif compression == "zlib":
            raw = zlib.compress(raw, 1)
        out.append(raw)
    return out


def client(args: argparse.Namespace) -> None:
    msgs = build_messages(args.messages, "none" if args.transport == "tcp" else args.compression)
    if args.transport == "tcp":
        sock = socket.create_connection(("127.0.0.1", args.port))
        data = b"".join(m + b"\0" for m in msgs)
        t0 = time.time()
        sock.sendall(data)
        sock.close()
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(("127.0.0.1", args.port))
        send = sock.send
        t0 = time.time()
        if args.rate:
            step = 500
            per = step / args.rate
            nxt = time.monotonic()
            for i in range(0, len(msgs), step):
                for m in msgs[i : i + step]:
                    send(m)
                nxt += per
                delay = nxt - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        else:
            for m in msgs:
                send(m)
    print(orjson.dumps({"start": t0, "end": time.time()}).decode(), flush=True)


def receiver(args: argparse.Namespace) -> None:
    if args.transport == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)
        sock.bind(("127.0.0.1", 0))
        print(sock.getsockname()[1], flush=True)
        sock.settimeout(5)
        n = 0
        with contextlib.suppress(TimeoutError):
            while True:
                d = sock.recv(65535)
                if d[:2] != b"\x1e\x0f" or d[10] == 0:
                    n += 1
    else:
        srv = socket.create_server(("127.0.0.1", 0))
        print(srv.getsockname()[1], flush=True)
        conn, _ = srv.accept()
        n = 0
        while d := conn.recv(1 << 20):
            n += d.count(b"\0")
    print(n, flush=True)


# -- in: the source --------------------------------------------------------------------------------
async def bench_in(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="gelf-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    source: dict[str, Any] = {"type": "gelf", "listen": [f"{args.transport}://127.0.0.1:0"]}
    if args.rcvbuf is not None:
        source["receive_buffer_bytes"] = args.rcvbuf
    sink: dict[str, Any] = {"type": "file", "inputs": ["gelf"], "path": str(tmp / "out.ndjson"), "fsync": "never"}
    recv = None
    if args.sink != "file":  # relay: gelf in -> gelf out to a counting receiver process
        recv = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "receiver", "--transport", args.sink.split("-")[1], stdout=subprocess.PIPE
        )
        assert recv.stdout is not None
        rport = int(await recv.stdout.readline())
        sink = {"type": "gelf", "inputs": ["gelf"], "address": f"{args.sink.replace('-', '+')}://127.0.0.1:{rport}"}
    cfg = validate_config({"data_dir": str(tmp / "state"), "sources": {"gelf": source}, "sinks": {"out": sink}})
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_pipeline(cfg, install_signals=False, on_ready=ready.set_result))
    pipeline = await ready
    src = pipeline.sources["gelf"]
    while not src.bound:
        await asyncio.sleep(0.01)
    port = src.bound[0].rsplit(":", 1)[1]
    tel = pipeline.ctx.telemetry
    c0 = cpu()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "client",
        "--transport",
        args.transport,
        "--port",
        port,
        "--messages",
        str(args.messages),
        "--rate",
        str(args.rate),
        "--compression",
        args.compression,
        stdout=subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    sent = orjson.loads(out)
    last, last_change = -1.0, time.monotonic()
    while True:
        done = tel.value("collector_events_sent_total")
        gone = tel.value("collector_events_dropped_total")
        if done != last:
            last, last_change, t_end = done, time.monotonic(), time.time()
        if done + gone >= args.messages or time.monotonic() - last_change > 3:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(HOUSEKEEPING_WAIT)  # let the kernel drop counter be read
    pipeline.request_stop()
    await task
    used = cpu() - c0
    delivered = tel.value("collector_events_sent_total")
    if recv is not None:
        assert recv.stdout is not None
        await recv.wait()
    return {
        "sink": args.sink,
        "transport": args.transport,
        "compression": args.compression if args.transport == "udp" else "none",
        "offered_rate": args.rate or "max",
        "messages": args.messages,
        "client_seconds": round(sent["end"] - sent["start"], 3),
        "delivered": int(delivered),
        "seconds": round(t_end - sent["start"], 3),
        "messages_per_s": round(delivered / (t_end - sent["start"])),
        "dropped_pipeline_full": int(tel.value("collector_events_dropped_total", reason="pipeline_full")),
        "dropped_receive_buffer_full": int(tel.value("collector_events_dropped_total", reason="receive_buffer_full")),
        "errors": int(tel.value("collector_errors_total")),
        "collector_cpu_seconds": round(used, 2),
        "rcvbuf": src._udp[0].rcvbuf if src._udp else None,
    }


HOUSEKEEPING_WAIT = 1.2


# -- out: the sink ---------------------------------------------------------------------------------
def build_batches(n: int, per: int) -> list[Any]:
    from collector.event import Batch, Fields

    batches = []
    metas = [
        Fields(
            {
                "host": {"name": "bench-host"},
                "container": {
                    "id": os.urandom(32).hex(),
                    "name": f"app-{c}",
                    "image": {"name": "registry.example/app:1.2", "tag": ["1.2"]},
                    "labels": {"com_docker_compose_project": "shop", "com_docker_compose_service": f"svc{c}"},
                },
                "tags": [f"app-{c}"],
            }
        )
        for c in range(CONTAINERS)
    ]
    for start in range(0, n, per):
        c = (start // per) % CONTAINERS
        events = [
            {
                "@timestamp": f"2024-05-01T12:{(i // 60000) % 60:02d}:{(i // 1000) % 60:02d}.{i % 1000:03d}123456Z",
                "message": f"GET /api/v1/items/{i} 200 0.{i % 997:03d}s user=alice request_id={i:012d} ok",
                "stream": "stderr" if i % 10 == 0 else "stdout",
                "log": {"offset": i * 180, "file": {"path": f"/var/lib/docker/containers/x/x-json.log.{c}"}},
            }
            for i in range(start, min(n, start + per))
        ]
        batches.append(Batch(events, metas[c], tag=f"app-{c}", origin="bench"))
    return batches


async def bench_out(args: argparse.Namespace) -> dict[str, Any]:
    from collector.buffers.memory import Channel
    from collector.checkpoints import CheckpointStore
    from collector.component import Context
    from collector.deadletter import DeadLetter
    from collector.sinks.gelf import GelfSink, GelfSinkConfig
    from collector.telemetry import Telemetry

    recv = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "receiver", "--transport", args.transport, stdout=subprocess.PIPE
    )
    assert recv.stdout is not None
    port = int(await recv.stdout.readline())
    tmp = Path(tempfile.mkdtemp(prefix="gelf-bench-"))
    tel = Telemetry()
    ctx = Context(data_dir=tmp, telemetry=tel, checkpoints=CheckpointStore(tmp), deadletter=DeadLetter(tmp, tel))
    scheme = "gelf+udp" if args.transport == "udp" else "gelf+tcp"
    cfg = GelfSinkConfig(
        type="gelf", inputs=["x"], address=f"{scheme}://127.0.0.1:{port}", compression=args.compression
    )
    sink = GelfSink("out", cfg, ctx)
    batches = build_batches(args.messages, 500)
    inbox = Channel("out", max_events=20_000, producers=1)

    async def feed() -> None:
        for b in batches:
            await inbox.send(b)
        inbox.close()

    c0 = cpu()
    t0 = time.monotonic()
    await asyncio.gather(feed(), sink.run(inbox))
    secs = time.monotonic() - t0
    used = cpu() - c0
    got = int((await recv.stdout.readline()).strip() or 0)
    await recv.wait()
    sent = tel.value("collector_events_sent_total")
    return {
        "transport": args.transport,
        "compression": args.compression if args.transport == "udp" else "none",
        "messages": args.messages,
        "sent": int(sent),
        "received_by_peer": got,
        "seconds": round(secs, 3),
        "messages_per_s": round(sent / secs),
        "send_errors": int(tel.value("collector_errors_total")),
        "sink_cpu_seconds": round(used, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("role", choices=("in", "out", "client", "receiver"))
    ap.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    ap.add_argument("--messages", type=int, default=300_000)
    ap.add_argument("--rate", type=int, default=0, help="(in, udp) messages/s offered; 0: as fast as possible")
    ap.add_argument("--compression", choices=("gzip", "zlib", "none"), default="gzip")
    ap.add_argument("--rcvbuf", type=int, default=None, help="(in, udp) the source's receive_buffer_bytes")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument(
        "--sink", choices=("file", "gelf-udp", "gelf-tcp"), default="file", help="(in) where the records go"
    )
    args = ap.parse_args()
    if args.role == "client":
        client(args)
    elif args.role == "receiver":
        receiver(args)
    else:
        res = asyncio.run(bench_in(args) if args.role == "in" else bench_out(args))
        print(orjson.dumps(res, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
