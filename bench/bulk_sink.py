#!/usr/bin/env python3
"""A counting Elasticsearch ``_bulk`` endpoint for the benchmark (stdlib only).

    python bench/bulk_sink.py --port 19201 [--stats-file stats.json]

Answers ``GET /`` like Elasticsearch 8 (with ``X-Elastic-Product``), index template calls
with ``{"acknowledged": true}``, and ``POST /_bulk`` by counting the documents (action lines
are every other line) without parsing them, answering a real bulk response (one
``{"create": {"status": 201}}`` item per document). Keep-alive, Content-Length and chunked
bodies, gzip. ``GET /_stats`` returns the counts; ``POST /_reset`` zeroes them.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import re
import resource
import time

ROOT = json.dumps(
    {
        "name": "bench",
        "cluster_name": "bench",
        "cluster_uuid": "bench",
        "version": {"number": "8.15.0", "build_flavor": "default", "lucene_version": "9.11.1"},
        "tagline": "You Know, for Search",
    }
).encode()
ITEM = b'{"create":{"_index":"bench","_id":"x","_version":1,"result":"created","status":201}}'


class Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.docs = self.requests = self.bytes = 0
        self.first = self.last = 0.0
        self.latencies: list[float] = []

    def snapshot(self) -> dict[str, float]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out = {
            "docs": self.docs,
            "requests": self.requests,
            "bytes": self.bytes,
            "first": self.first,
            "last": self.last,
            "cpu_s": ru.ru_utime + ru.ru_stime,
        }
        if self.latencies:
            lat = sorted(self.latencies)
            out.update(
                lat_n=len(lat), lat_p50_ms=lat[len(lat) // 2], lat_p99_ms=lat[int(len(lat) * 0.99)], lat_max_ms=lat[-1]
            )
        return out


STATS = Stats()


LATENCY = False
_LAT = re.compile(rb'"message":"LAT (\d+) ')


def bulk(body: bytes) -> bytes:
    n = body.count(b"\n") // 2
    now = time.time()
    if LATENCY:  # lines written by bench/run.py latency carry their write time (ns)
        STATS.latencies.extend((now * 1e9 - int(m.group(1))) / 1e6 for m in _LAT.finditer(body))
    STATS.first = STATS.first or now
    STATS.last = now
    STATS.docs += n
    STATS.requests += 1
    STATS.bytes += len(body)
    return b'{"took":1,"errors":false,"items":[' + b",".join([ITEM] * n) + b"]}"


def respond(method: str, path: str, body: bytes) -> tuple[int, bytes]:
    if path.split("?", maxsplit=1)[0].endswith("/_bulk"):
        return 200, bulk(body)
    if path.startswith("/_stats"):
        return 200, json.dumps(STATS.snapshot()).encode()
    if path.startswith("/_reset"):
        STATS.reset()
        return 200, b"{}"
    if path in ("/", ""):
        return 200, ROOT
    if method == "GET" and "_template" in path:
        return 404, b'{"error":"not found","status":404}'
    return 200, b'{"acknowledged":true}'


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if "chunked" in headers.get("transfer-encoding", ""):
                chunks = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")
                        break
                    chunks.append(await reader.readexactly(size))
                    await reader.readexactly(2)
                body = b"".join(chunks)
            else:
                body = await reader.readexactly(int(headers.get("content-length", "0")))
            if headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            status, out = respond(method, path, body)
            reason = b"OK" if status == 200 else b"Not Found"
            writer.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nX-Elastic-Product: Elasticsearch\r\n"
                b"Content-Length: %d\r\n\r\n" % (status, reason, 0 if method == "HEAD" else len(out))
            )
            if method != "HEAD":
                writer.write(out)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int, ready: str | None) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, limit=1 << 20)
    if ready:
        with open(ready, "w") as f:
            f.write(str(os.getpid()))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=19201)
    ap.add_argument("--ready-file")
    ap.add_argument("--latency", action="store_true", help="record write-to-arrival delays of LAT lines")
    a = ap.parse_args()
    LATENCY = a.latency
    asyncio.run(main(a.port, a.ready_file))
