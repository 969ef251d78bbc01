#!/usr/bin/env python3
"""Records/s received through the forward protocol.

    .venv/bin/python bench/forward.py --records 1000000 --mode packed --per-message 1000

The collector runs in this process (``fluent_forward`` -> ``file`` sink on /dev/shm, no fsync);
the client runs in a separate process: it builds every message first (Docker-shaped records:
``container_id``, ``container_name``, ``source``, ``log``, EventTime), then sends them as fast
as the socket takes them.  The clock runs from the client's first byte to the moment the sink
has written the last record.  ``--mode``: ``message`` (Docker's driver), ``forward``,
``packed``, ``gzip`` (CompressedPackedForward); ``--ack`` asks an ack per message and waits
for all of them; ``--profile`` writes a pyinstrument HTML profile of the collector side.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from collector.codecs.forward import event_time, pack_entries, unpack_all

CID = "f" * 64


def build(n: int, mode: str, per: int, ack: bool) -> list[bytes]:
    t0 = 1714564800
    recs = [
        (
            event_time(t0 + i // 1000, (i % 1000) * 1000),
            {"container_id": CID, "container_name": "/bench", "source": "stdout", "log": f"line {i} " + "x" * 60},
        )
        for i in range(n)
    ]
    out = []
    pk = msgpack.Packer(use_bin_type=True)
    if mode == "message":
        for i, (t, r) in enumerate(recs):
            msg: list = ["bench", t, r]
            if ack:
                msg.append({"chunk": f"m{i}"})
            out.append(pk.pack(msg))
        return out
    for i in range(0, n, per):
        part = recs[i : i + per]
        opt: dict = {"size": len(part)}
        if ack:
            opt["chunk"] = f"c{i}"
        if mode == "forward":
            out.append(pk.pack(["bench", [list(e) for e in part], opt]))
        else:
            data = pack_entries(part)
            if mode == "gzip":
                data = gzip.compress(data, 1)
                opt["compressed"] = "gzip"
            out.append(pk.pack(["bench", data, opt]))
    return out


def client(host: str, port: int, n: int, mode: str, per: int, ack: bool) -> None:
    msgs = build(n, mode, per, ack)
    data = b"".join(msgs)
    s = socket.create_connection((host, port))
    print(f"client: {len(msgs)} messages, {len(data) / 1e6:.1f} MB", file=sys.stderr)
    sys.stderr.flush()
    t0 = time.time()
    print(f"START {t0}", flush=True)
    view = memoryview(data)
    for i in range(0, len(view), 1 << 20):
        s.sendall(view[i : i + (1 << 20)])
    if ack:
        got = 0
        buf = b""
        while got < len(msgs):
            buf += s.recv(1 << 20)
            objs = list(unpack_all(buf))
            if objs and buf:
                # count complete acks; keep a torn tail
                packed = b"".join(msgpack.packb(o) for o in objs)
                got += len(objs)
                buf = buf[len(packed) :]
        print(f"ACKED {time.time()}", flush=True)
    s.close()


async def collector(args: argparse.Namespace) -> None:
    from collector.app import run_pipeline
    from collector.config import validate_config

    out = Path(args.out)
    out.unlink(missing_ok=True)
    state = tempfile.TemporaryDirectory(prefix="fwd-bench-", dir="/dev/shm")
    cfg = validate_config(
        {
            "data_dir": state.name,
            "sources": {"fwd": {"type": "fluent_forward", "listen": ["tcp://127.0.0.1:0"], "heartbeat": False}},
            "sinks": {"out": sink_config(args, out)},
        }
    )
    running: dict = {}

    def ready(p: object) -> None:
        running["p"] = p

    task = asyncio.create_task(run_pipeline(cfg, install_signals=False, on_ready=ready))
    while "p" not in running or running["p"].sources["fwd"].address is None:
        await asyncio.sleep(0.01)
    p = running["p"]
    host, port = p.sources["fwd"].address
    cmd = [sys.executable, __file__, "--client", host, str(port), "--records", str(args.records)]
    cmd += ["--mode", args.mode, "--per-message", str(args.per_message)] + (["--ack"] if args.ack else [])
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = await proc.stdout.readline()
    start = float(line.split()[1])
    tel = p.ctx.telemetry
    while tel.value("collector_events_sent_total") < args.records:
        if proc.returncode not in (None, 0):
            raise SystemExit(f"the client failed ({proc.returncode})")
        await asyncio.sleep(0.01)
    end = time.time()
    rest = await proc.stdout.read()
    await proc.wait()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    p.request_stop()
    await task
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    secs = end - start
    print(
        f"mode={args.mode} records={args.records} per_message={args.per_message} ack={args.ack}: "
        f"{secs:.2f}s, {args.records / secs:,.0f} records/s, collector CPU {cpu:.1f}s "
        f"({cpu / args.records * 1e6:.1f} CPU-s per million), peak RSS {cpu1.ru_maxrss / 1024:.0f} MB"
    )
    if args.ack:
        acked = float(rest.split()[1])
        print(f"all acks received {acked - start:.2f}s after the first byte")
    state.cleanup()
    if args.bulk:
        docs = int(BULK.stats().get("docs", 0))
        BULK.close()
        assert docs == args.records, f"the bulk endpoint counted {docs}, expected {args.records}"
        return
    lines = 0
    with open(out, "rb") as f:
        while chunk := f.read(1 << 24):
            lines += chunk.count(b"\n")
    out.unlink()
    assert lines == args.records, f"{lines} lines in {out}, expected {args.records}"


BULK: Any = None


def sink_config(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """A file on /dev/shm, or (--bulk) the elasticsearch sink into bench/bulk_sink.py."""
    global BULK
    if not args.bulk:
        return {"type": "file", "inputs": ["fwd"], "path": str(out), "fsync": "never"}
    from run import BulkSink  # bench/run.py

    BULK = BulkSink(Path(__file__).resolve().parent / "bulk_sink.py")
    return {"type": "elasticsearch", "inputs": ["fwd"], "hosts": [BULK.url]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--mode", choices=("message", "forward", "packed", "gzip"), default="packed")
    ap.add_argument("--per-message", type=int, default=1000, help="records per Forward/PackedForward message")
    ap.add_argument("--ack", action="store_true", help="ask for an ack per message (chunk option)")
    ap.add_argument("--out", default="/dev/shm/forward-bench.ndjson")
    ap.add_argument("--bulk", action="store_true", help="deliver with the elasticsearch sink to bench/bulk_sink.py")
    ap.add_argument("--profile", action="store_true", help="pyinstrument profile -> forward-bench.html")
    ap.add_argument("--client", nargs=2, metavar=("HOST", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        client(args.client[0], int(args.client[1]), args.records, args.mode, args.per_message, args.ack)
        return
    if args.profile:
        from pyinstrument import Profiler

        prof = Profiler(async_mode="enabled")
        with prof:
            asyncio.run(collector(args))
        Path("forward-bench.html").write_text(prof.output_html())
        print("profile: forward-bench.html")
        return
    asyncio.run(collector(args))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
