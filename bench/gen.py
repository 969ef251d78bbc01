#!/usr/bin/env python3
"""Docker json-file logs for the benchmark, in Docker's on-disk layout.

    python bench/gen.py /dev/shm/collector-bench --containers 10 --lines 100000

writes ``OUT/containers/<id>/<id>-json.log`` and ``config.v2.json`` (name, image, labels, as
Docker does) and ``OUT/manifest.json`` (what a shipper must deliver). The mix matches the
yardstick's: ~79% short text lines, ~20% JSON application logs, ~1% lines longer than 16 KB
(written as Docker writes them: 16 KB parts, the newline on the last), ~10% on stderr.
Deterministic: the same arguments write the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
import uuid
from pathlib import Path

PART = 16 * 1024
APPS = [
    ("web", "nginx:1.27.2", "frontend"),
    ("api", "registry.example.com/shop/api:4.2.0", "backend"),
    ("checkout", "registry.example.com/shop/checkout:1.8.3", "backend"),
    ("accounts", "registry.example.com/shop/accounts:2.0.1", "backend"),
    ("worker", "python:3.12-slim", "worker"),
    ("cache", "redis:7.4-alpine", "cache"),
    ("db", "postgres:17.0", "db"),
    ("indexer", "registry.example.com/shop/indexer:0.9.0", "worker"),
    ("mailer", "node:22-alpine", "worker"),
    ("gateway", "traefik:v3.2", "frontend"),
]
WORDS = [
    "accepted",
    "connection",
    "from",
    "upstream",
    "request",
    "served",
    "in",
    "ms",
    "cache",
    "hit",
    "miss",
    "for",
    "key",
    "user",
    "session",
    "refreshed",
    "order",
    "placed",
    "payment",
    "captured",
    "retry",
    "scheduled",
    "after",
    "backoff",
    "queue",
    "depth",
    "rows",
    "scanned",
    "index",
    "used",
    "slow",
    "query",
    "lock",
    "wait",
    "released",
    "job",
    "started",
    "finished",
    "with",
    "status",
    "ok",
    "warning",
    "error",
    "deadline",
    "exceeded",
]
LEVELS = ["info"] * 14 + ["debug"] * 3 + ["warn"] * 2 + ["error"]
ODD = ['quote "here"', "back\\slash", "tab\tinside", "<b>&amp;</b>", "\u00fcml\u00e4ut", "\u6f22\u5b57", "\u2603"]


def escape(s: str) -> str:
    """The "log" value as dockerd writes it (Go's encoder: <, >, & escaped; UTF-8 kept)."""
    out = json.dumps(s, ensure_ascii=False)[1:-1]
    return out.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def rfc3339nano(ns: int) -> str:
    sec, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{base}.{frac:09d}".rstrip("0").rstrip(".") + "Z"


def message(rng: random.Random, kind: str, ts: str, seq: int) -> str:
    if kind == "json":
        d = {
            "time": ts,
            "level": rng.choice(LEVELS),
            "msg": " ".join(rng.choices(WORDS, k=rng.randint(3, 9))),
            "seq": seq,
            "latency_ms": round(rng.expovariate(0.05), 2),
            "route": f"/v1/{rng.choice(WORDS)}",
            "status": rng.choice([200, 200, 200, 201, 204, 304, 400, 404, 500]),
        }
        if rng.random() < 0.05:
            d["note"] = rng.choice(ODD)
        return json.dumps(d, ensure_ascii=False, separators=(",", ":"))
    if kind == "long":
        n = rng.randint(PART + 1, 40_000)
        head = f"LONG seq={seq} "
        body = (" ".join(rng.choices(WORDS, k=n // 4)) + " ") * 2
        return (head + body)[:n]
    text = f"{ts[:23].replace('T', ' ')} {rng.choice(LEVELS).upper():5} seq={seq} " + " ".join(
        rng.choices(WORDS, k=rng.randint(4, 24))
    )
    if rng.random() < 0.03:
        text += " " + rng.choice(ODD)
    return text


def java_trace(rng: random.Random, seq: int) -> list[str]:
    """A Java stack trace as an application prints it: one log line per trace line."""
    frames = [
        f"\tat com.example.{rng.choice(['shop', 'orders', 'billing'])}.{rng.choice(WORDS).title()}Service."
        f"{rng.choice(WORDS)}({rng.choice(WORDS).title()}Service.java:{rng.randint(10, 900)})"
        for _ in range(rng.randint(5, 18))
    ]
    head = f"java.lang.IllegalStateException: seq={seq} " + " ".join(rng.choices(WORDS, k=rng.randint(3, 9)))
    tail = ["Caused by: java.io.IOException: " + rng.choice(WORDS), "\tat java.base/java.io.FileOutputStream.write"]
    return [head, *frames, *(tail if rng.random() < 0.5 else []), f"\t... {rng.randint(2, 40)} more"]


def digest(messages: object) -> tuple[int, int]:
    """(records, sum of 64-bit hashes of their texts mod 2**64): equal only if every text is exact."""
    n = total = 0
    for m in messages:  # type: ignore[attr-defined]
        total = (total + int.from_bytes(hashlib.blake2b(m.encode(), digest_size=8).digest(), "little")) % (1 << 64)
        n += 1
    return n, total


def write_container(
    out: Path, idx: int, lines: int, seed: str, cid: str | None = None, traces: float = 0.0
) -> dict[str, object]:
    rng = random.Random(f"{seed}:{idx}")
    cid = cid or hashlib.sha256(f"collector-bench:{seed}:{idx}".encode()).hexdigest()
    app, image, tier = APPS[idx % len(APPS)]
    name = f"{app}-{idx // len(APPS) + 1}"
    d = out / "containers" / cid
    d.mkdir(parents=True, exist_ok=True)
    ns = 1_730_000_000 * 10**9 + idx * 1_000_003
    entries = partial = nbytes = 0
    buf: list[str] = []
    trng = random.Random(f"{seed}:{idx}:traces")
    mean_len = 14.5  # of java_trace(): 1 + (5..18) + 0.5 * 2 + 1
    p_trace = traces / (mean_len - traces * (mean_len - 1))  # so that ``traces`` of the lines are trace lines
    trace_lines = 0
    records: list[str] = []  # what a multiline pipeline must deliver (only with traces)
    seq = 0
    with open(d / f"{cid}-json.log", "w", encoding="utf-8", newline="\n") as f:
        while (seq < lines) if not traces else (entries < lines):
            cur, seq = seq, seq + 1
            ns += rng.randint(20_000, 3_000_000)
            ts = rfc3339nano(ns)
            if traces and trng.random() < p_trace:
                trace = java_trace(trng, cur)[: lines - entries]
                trace_lines += len(trace)
                tail = f'","stream":"stderr","time":"{ts}"}}\n'
                buf.extend('{"log":"' + escape(t + "\n") + tail for t in trace)
                entries += len(trace)
                records.append("\n".join(trace))
                continue
            r = rng.random()
            kind = "long" if r < 0.01 else "json" if r < 0.21 else "text"
            stream = "stderr" if rng.random() < 0.10 else "stdout"
            msg = message(rng, kind, ts, cur)
            if traces:
                records.append(msg)
            tail = f'","stream":"{stream}","time":"{ts}"}}\n'
            raw = msg.encode()
            if len(raw) + 1 <= PART:
                buf.append('{"log":"' + escape(msg + "\n") + tail)
                entries += 1
            else:  # long lines are ASCII: split on bytes, like dockerd
                for off in range(0, len(raw), PART):
                    piece = raw[off : off + PART].decode()
                    last = off + PART >= len(raw)
                    buf.append('{"log":"' + escape(piece + ("\n" if last else "")) + tail)
                    entries += 1
                    partial += not last
            if len(buf) >= 4096:
                chunk = "".join(buf)
                nbytes += len(chunk.encode())
                f.write(chunk)
                buf.clear()
        chunk = "".join(buf)
        nbytes += len(chunk.encode())
        f.write(chunk)
    created = rfc3339nano(1_730_000_000 * 10**9 - 3600 * 10**9)
    (d / "config.v2.json").write_text(
        json.dumps(
            {
                "ID": cid,
                "Name": "/" + name,
                "Created": created,
                "Image": "sha256:" + hashlib.sha256(image.encode()).hexdigest(),
                "State": {"Running": True},
                "Config": {
                    "Hostname": cid[:12],
                    "Image": image,
                    "Labels": {
                        "com.docker.compose.project": "shop",
                        "com.docker.compose.service": app,
                        "com.docker.compose.container-number": str(idx // len(APPS) + 1),
                        "tier": tier,
                    },
                },
            }
        )
    )
    m: dict[str, object] = {
        "id": cid,
        "name": name,
        "image": image,
        "lines": lines,
        "entries": entries,
        "partial": partial,
        "bytes": nbytes,
    }
    if traces:
        m["records"], m["digest"] = digest(records)
        m["trace_lines"] = trace_lines
    return m


def generate(
    out: Path, containers: int, lines: int, seed: str = "1", ids: list[str] | None = None, traces: float = 0.0
) -> dict[str, object]:
    """Write the workload (or reuse it when the manifest says it is the same). ``traces``: the share
    of lines that belong to Java stack traces (each line of a trace one json-file entry, on stderr);
    ``lines`` then counts entries, and the manifest says how many records (and a digest of their
    texts) a multiline pipeline must deliver."""
    manifest = out / "manifest.json"
    want: dict[str, object] = {"containers": containers, "lines": lines, "seed": seed, "version": 2}
    if traces:
        want["traces"] = traces
    if manifest.exists():
        m = json.loads(manifest.read_text())
        if m.get("params") == want:
            return m
    t0 = time.time()
    if (out / "containers").exists():
        shutil.rmtree(out / "containers")
    cs = [write_container(out, i, lines, seed, ids[i] if ids else None, traces) for i in range(containers)]
    m = {"params": want, "containers": cs, "lines": containers * lines, "bytes": sum(int(c["bytes"]) for c in cs)}  # type: ignore[call-overload]
    if traces:
        m["records"] = sum(int(c["records"]) for c in cs)  # type: ignore[call-overload]
        m["trace_lines"] = sum(int(c["trace_lines"]) for c in cs)  # type: ignore[call-overload]
    manifest.write_text(json.dumps(m, indent=1))
    print(
        f"generated {m['lines']} lines, {m['bytes'] / 1e6:.0f} MB in {time.time() - t0:.1f}s -> {out}", file=sys.stderr
    )
    return m


def to_cri(src: Path, out: Path) -> dict[str, object]:
    """The same workload as containerd/CRI-O would have written it, in kubelet's layout
    (``out/pods/<ns>_<pod>_<uid>/<container>/0.log``): each json-file entry becomes one
    ``<time> <stream> <P|F> <message>`` line, Docker's 16 KB parts becoming P parts (containerd
    splits at 16 KiB too). Reused while the source's manifest is unchanged."""
    import orjson

    m = json.loads((src / "manifest.json").read_text())
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("params") == {**m["params"], "format": "cri"}:
        return dict(json.loads(manifest.read_text()))
    t0 = time.time()
    if (out / "pods").exists():
        shutil.rmtree(out / "pods")
    nbytes = 0
    for c in m["containers"]:
        uid = str(uuid.UUID(hex=str(c["id"])[:32]))
        d = out / "pods" / f"shop_{c['name']}_{uid}" / str(c["name"]).split("-")[0]
        d.mkdir(parents=True)
        with open(src / "containers" / c["id"] / f"{c['id']}-json.log", "rb") as f, open(d / "0.log", "wb") as w:
            buf = []
            for line in f:
                e = orjson.loads(line)
                text = e["log"]
                full = text.endswith("\n")
                body = text[:-1] if full else text
                if "\n" in body:
                    raise SystemExit("a message with a newline inside cannot be written as CRI")
                buf.append(f"{e['time']} {e['stream']} {'F' if full else 'P'} {body}\n".encode())
                if len(buf) >= 4096:
                    nbytes += w.write(b"".join(buf))
                    buf.clear()
            nbytes += w.write(b"".join(buf))
    cm = {**m, "params": {**m["params"], "format": "cri"}, "bytes": nbytes}
    manifest.write_text(json.dumps(cm, indent=1))
    print(f"converted to CRI: {nbytes / 1e6:.0f} MB in {time.time() - t0:.1f}s -> {out}", file=sys.stderr)
    return cm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--containers", "-c", type=int, default=10)
    ap.add_argument("--lines", "-n", type=int, default=100_000, help="lines per container")
    ap.add_argument("--seed", default="1")
    ap.add_argument("--traces", type=float, default=0.0, help="share of lines in Java stack traces (0.05)")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    generate(a.out, a.containers, a.lines, a.seed, traces=a.traces)


if __name__ == "__main__":
    main()
