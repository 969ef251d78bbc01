#!/usr/bin/env python3
"""Syslog messages/s into the syslog source, over UDP and TCP, with the drop counts.

    .venv/bin/python bench/syslog.py --transport udp --messages 500000 --rate 50000
    .venv/bin/python bench/syslog.py --transport tcp --messages 1000000 [--framing octet]

The collector runs in this process (``syslog`` source -> ``file`` sink on /dev/shm, no fsync;
the tag is not looked up as a container); a client process sends messages shaped like Docker's
syslog driver's ``rfc5424micro`` (``<30>1 TIMESTAMP host TAG PID TAG - line``), built before the
clock starts, paced at ``--rate`` messages/s (0: as fast as it can).  The clock runs from the
first message to the last record written; drops (pipeline full) are read from the counters, and
every message must be delivered over TCP.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
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


def build(n: int) -> list[bytes]:
    tags = [os.urandom(6).hex() for _ in range(CONTAINERS)]
    out = []
    for i in range(n):
        tag = tags[i % CONTAINERS]
        sev = 3 if i % 10 == 0 else 6
        ts = f"2024-05-01T12:{(i // 60_000_000) % 60:02d}:{(i // 1_000_000) % 60:02d}.{i % 1_000_000:06d}Z"
        line = f"GET /api/v1/items/{i} 200 0.{i % 997:03d}s user=alice request_id={i:012d} ok"
        out.append(f"<{3 * 8 + sev}>1 {ts} docker-host {tag} 4242 {tag} - {line}\n".encode())
    return out


def client(args: argparse.Namespace) -> None:
    msgs = build(args.messages)
    if args.transport == "tcp":
        octet = args.framing == "octet"
        data = b"".join(b"%d %s" % (len(m), m) for m in msgs) if octet else b"".join(msgs)
        sock = socket.create_connection(("127.0.0.1", args.port))
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


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="syslog-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    source: dict[str, Any] = {
        "type": "syslog",
        "listen": [f"{args.transport}://127.0.0.1:0"],
        "resolve_containers": False,
    }
    sink = {"type": "file", "inputs": ["syslog"], "path": str(tmp / "out.ndjson"), "fsync": "never"}
    cfg = validate_config({"data_dir": str(tmp / "state"), "sources": {"syslog": source}, "sinks": {"out": sink}})
    ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_pipeline(cfg, install_signals=False, on_ready=ready.set_result))
    pipeline = await ready
    src = pipeline.sources["syslog"]
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
        "--framing",
        args.framing,
        "--port",
        port,
        "--messages",
        str(args.messages),
        "--rate",
        str(args.rate),
        stdout=subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    sent = orjson.loads(out)
    last, last_change, t_end = -1.0, time.monotonic(), time.time()
    while True:
        done = tel.value("collector_events_sent_total")
        gone = tel.value("collector_events_dropped_total")
        if done != last:
            last, last_change, t_end = done, time.monotonic(), time.time()
        if done + gone >= args.messages or time.monotonic() - last_change > 3:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(1.2)  # let the kernel's drop count be read
    pipeline.request_stop()
    await task
    used = cpu() - c0
    delivered = int(tel.value("collector_events_sent_total"))
    with open(tmp / "out.ndjson", "rb") as f:
        written = sum(1 for _ in f)
    os.unlink(tmp / "out.ndjson")
    return {
        "transport": args.transport,
        "framing": args.framing if args.transport == "tcp" else "datagram",
        "offered_rate": args.rate or "max",
        "messages": args.messages,
        "client_seconds": round(sent["end"] - sent["start"], 3),
        "delivered": delivered,
        "written": written,
        "seconds": round(t_end - sent["start"], 3),
        "messages_per_s": round(delivered / (t_end - sent["start"])),
        "dropped_pipeline_full": int(tel.value("collector_events_dropped_total", reason="pipeline_full")),
        "dropped_receive_buffer_full": int(tel.value("collector_events_dropped_total", reason="receive_buffer_full")),
        "errors": int(tel.value("collector_errors_total")),
        "collector_cpu_seconds": round(used, 2),
        "cpu_s_per_million": round(used / max(1, delivered) * 1e6, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("role", nargs="?", default="in", choices=("in", "client"))
    ap.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    ap.add_argument("--framing", choices=("newline", "octet"), default="newline")
    ap.add_argument("--messages", type=int, default=500_000)
    ap.add_argument("--rate", type=int, default=0, help="messages/s offered (UDP; 0: as fast as possible)")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    if a.role == "client":
        client(a)
        return
    r = asyncio.run(bench(a))
    print(orjson.dumps(r).decode())
    if a.transport == "tcp" and r["delivered"] != a.messages:
        raise SystemExit(f"TCP delivered {r['delivered']} of {a.messages}")


if __name__ == "__main__":
    main()
