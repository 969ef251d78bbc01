"""``collector status``: what a data directory holds, whether or not a collector runs.

    <data_dir>/lock                          held (flock) by the collector using the directory
    <data_dir>/api.json                      where its API listens (written at start, removed at exit)
    <data_dir>/checkpoints/<identity>.json   one per pipeline: how far each file was delivered
    <data_dir>/buffers/<sink>/               disk buffers: segment files and their ledger
    <data_dir>/dead-letter/<component>.ndjson[.N]

Read only: it never takes the lock and never writes (checkpoint documents are replaced
atomically, so reading one while a collector runs is safe).  Per pipeline, each tracked file
with its container's name (from ``config.v2.json`` beside the log, else from the running
collector), the offset delivered, the file's size now and the lag between them; each disk
buffer's bytes and records; each dead-letter file's entries; and, when a collector runs with
its API on, the last delivery of each sink (asked from its ``/metrics``).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import orjson

from collector.buffers.disk import inspect as inspect_buffer
from collector.docker_api import read_config_v2
from collector.sources.docker_json_file.files import (
    container_id_of,
    fingerprint_path,
    log_size,
    rotated_siblings,
    salt_of,
)
from collector.top import Samples, Unreachable, columns, scrape, total

API_FILE = "api.json"


def write_api_file(data_dir: Path, url: str | None) -> None:
    """Say where this collector's API listens (``url``), or that it stopped listening (None)."""
    path = Path(data_dir) / API_FILE
    if url is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(orjson.dumps({"url": url, "pid": os.getpid(), "started": time.time()}))
    os.replace(tmp, path)


def lock_held(data_dir: Path) -> bool:
    """Whether a process holds ``<data_dir>/lock``."""
    return lock_holder(data_dir) is not None


def lock_holder(data_dir: Path) -> int | None:
    """The pid of the process holding ``<data_dir>/lock`` (flock), from /proc/locks: probing with
    flock could make a collector starting at that very moment think the directory is taken."""
    try:
        st = os.stat(data_dir / "lock")
        locks = Path("/proc/locks").read_text()
    except OSError:
        return None
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in locks.splitlines():
        f = line.split()
        if "FLOCK" in f and want in f:
            i = f.index(want)
            return int(f[i - 1]) if f[i - 1].isdigit() else -1
    return None


def running_api(data_dir: Path) -> str | None:
    """The API of the collector running on ``data_dir``, if it runs and serves one."""
    if not lock_held(data_dir):
        return None
    try:
        return str(orjson.loads((data_dir / API_FILE).read_bytes())["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- tracked files ---------------------------------------------------------------------------------
@dataclass
class Tracked:
    source: str
    container: str
    container_id: str
    offset: int
    size: int | None  # None: the file is gone
    path: str

    @property
    def lag(self) -> int | None:
        return None if self.size is None else max(0, self.size - self.offset)


def _current(fp: str, entry: dict[str, Any]) -> tuple[str, int | None]:
    """Where the file ``fp`` is now (it may have been rotated since) and its size."""
    live = str(entry.get("live") or entry.get("path") or "")
    path = str(entry.get("path") or live)
    salt = salt_of(live)
    candidates = [path, live, *(p for _, p in rotated_siblings(live))]
    for p in dict.fromkeys(candidates):
        if p and fingerprint_path(p, salt) == fp:
            try:
                return p, log_size(p)
            except OSError:
                break
    return path, None


def _names(live_paths: list[str], known: dict[str, str]) -> dict[str, str]:
    """Container id -> name: from each container's config.v2.json, else what the running collector knows."""
    out: dict[str, str] = {}
    for live in live_paths:
        cid = container_id_of(live)
        if not cid or cid in out:
            continue
        info, _ = read_config_v2(Path(live).parent)
        out[cid] = (info.name if info is not None else "") or known.get(cid[:12], "")
    return out


def tracked_files(doc: dict[str, Any], known: dict[str, str]) -> tuple[list[Tracked], dict[str, Any]]:
    """The files a pipeline's checkpoints track, and its other positions (journald's cursor ...)."""
    rows: list[Tracked] = []
    other: dict[str, Any] = {}
    sources = doc.get("sources") or {}
    lives = [
        str(e.get("live", ""))
        for ns in sources.values()
        if isinstance(ns, dict)
        for e in ns.values()
        if isinstance(e, dict)
    ]
    names = _names(lives, known)
    for source, ns in sources.items():
        if not isinstance(ns, dict):
            continue
        for key, e in ns.items():
            if not isinstance(e, dict) or "offset" not in e:
                other.setdefault(source, {})[key] = e
                continue
            path, size = _current(key, e)
            cid = container_id_of(str(e.get("live", "")))
            name = names.get(cid, "") or (os.path.basename(str(e.get("live", ""))) if not cid else "")
            rows.append(Tracked(source, name or "-", cid[:12] or "-", int(e.get("offset", 0)), size, path))
    rows.sort(key=lambda r: (r.source, r.container, r.path))
    return rows, other


# -- buffers and dead letters ----------------------------------------------------------------------
def disk_buffers(data_dir: Path) -> list[tuple[str, int, int, int]]:
    root = data_dir / "buffers"
    if not root.is_dir():
        return []
    return [(d.name, *inspect_buffer(d)) for d in sorted(root.iterdir()) if d.is_dir()]


def dead_letters(data_dir: Path) -> list[tuple[str, int, int, Counter[str]]]:
    """Per dead-letter file: (name, entries, bytes, entries per reason)."""
    root = data_dir / "dead-letter"
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if not p.is_file() or ".ndjson" not in p.name:
            continue
        reasons: Counter[str] = Counter()
        entries = 0
        try:
            with open(p, "rb") as f:
                for line in f:
                    entries += 1
                    try:
                        reasons[str(orjson.loads(line).get("reason", "?")).split(":", 1)[0][:60]] += 1
                    except (ValueError, AttributeError):
                        reasons["(unreadable line)"] += 1
            out.append((p.name, entries, p.stat().st_size, reasons))
        except OSError as e:
            out.append((p.name, -1, 0, Counter({f"cannot read: {e.strerror}": 1})))
    return out


# -- the command ------------------------------------------------------------------------------------
def _ago(t: float) -> str:
    s = max(0.0, time.time() - t)
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


def _describe_outputs(doc: dict[str, Any]) -> str:
    outs = (doc.get("pipeline") or {}).get("outputs") or []
    parts = []
    for o in outs:
        extra = " ".join(
            f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in o.items()
            if k != "type" and v is not None
        )
        parts.append(f"{o.get('type')} {extra}".strip())
    return "; ".join(parts) or "?"


def run_status(data_dir: Path, url: str | None = None, out: TextIO | None = None) -> int:
    w = out or sys.stdout
    data_dir = data_dir.expanduser()
    if not data_dir.is_dir():
        print(f"collector status: no data directory at {data_dir} (give --data-dir DIR)", file=sys.stderr)
        return 2
    running = lock_held(data_dir)
    url = url or running_api(data_dir)
    metrics: Samples | None = None
    problem = ""
    if url:
        try:
            metrics = scrape(url)
        except Unreachable as e:
            problem = str(e)
    state = "no collector is running"
    if running:
        state = "a collector is running" + (
            f" (API {url})" if metrics is not None else " (its API is off: --api or api.listen)"
        )
    w.write(f"data directory {data_dir}: {state}\n")
    if problem:
        w.write(f"  {problem}\n")
    known = {}
    if metrics is not None:
        known = {
            lab.get("container_id", ""): lab.get("container", "")
            for lab, _ in metrics.get("collector_checkpoint_lag_bytes", ())
        }

    docs = sorted((data_dir / "checkpoints").glob("*.json")) if (data_dir / "checkpoints").is_dir() else []
    legacy = data_dir / "checkpoints.json"
    if legacy.is_file():
        docs.append(legacy)
    if not docs:
        w.write("\ncheckpoints: none yet (nothing has been delivered from this directory)\n")
    for path in docs:
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, ValueError) as e:
            w.write(f"\npipeline {path.stem}: unreadable checkpoints {path}: {e}\n")
            continue
        w.write(f"\npipeline {path.stem}: outputs {_describe_outputs(doc)}\n")
        w.write(f"  checkpoints {path}, saved {_ago(path.stat().st_mtime)}\n")
        rows, other = tracked_files(doc, known)
        if rows:
            cells = [
                [
                    r.container,
                    r.container_id,
                    r.source,
                    f"{r.offset:,}",
                    "gone" if r.size is None else f"{r.size:,}",
                    "-" if r.lag is None else f"{r.lag:,}",
                    r.path,
                ]
                for r in rows
            ]
            table = columns(("CONTAINER", "ID", "SOURCE", "OFFSET", "SIZE", "LAG", "FILE"), cells, {3, 4, 5})
            w.write("".join(f"  {line}\n" for line in table.splitlines()))
            behind = [r for r in rows if r.lag]
            w.write(
                f"  {len(rows)} file(s) of {len({r.container_id for r in rows})} container(s); "
                + (
                    f"{len(behind)} behind by {sum(r.lag or 0 for r in behind):,} bytes\n"
                    if behind
                    else "all delivered\n"
                )
            )
        for source, positions in other.items():
            for key, value in positions.items():
                w.write(f"  source {source}: {key} = {orjson.dumps(value).decode()[:200]}\n")
        if not rows and not other:
            w.write("  nothing tracked\n")

    buffers = disk_buffers(data_dir)
    w.write("\ndisk buffers:" + (" none\n" if not buffers else "\n"))
    if buffers:
        cells = [[name, f"{b:,}", f"{n:,}", str(s)] for name, b, n, s in buffers]
        table = columns(("SINK", "BYTES", "RECORDS", "SEGMENTS"), cells, {1, 2, 3})
        w.write("".join(f"  {line}\n" for line in table.splitlines()))

    letters = dead_letters(data_dir)
    w.write("\ndead letters:" + (" none\n" if not letters else f" {data_dir / 'dead-letter'}\n"))
    if letters:
        cells = [
            [name, "?" if n < 0 else f"{n:,}", f"{b:,}", ", ".join(f"{r} ({c:,})" for r, c in reasons.most_common(4))]
            for name, n, b, reasons in letters
        ]
        table = columns(("FILE", "ENTRIES", "BYTES", "REASONS"), cells, {1, 2})
        w.write("".join(f"  {line}\n" for line in table.splitlines()))

    if metrics is not None:
        sinks = [
            lab["component"] for lab, _ in metrics.get("collector_component_info", ()) if lab.get("kind") == "sink"
        ]
        w.write("\nlast delivery (the running collector):\n")
        cells = []
        for name in sinks:
            last = total(metrics, "collector_sink_last_delivery_timestamp_seconds", component=name)
            sent = total(metrics, "collector_events_sent_total", component=name)
            when = "none yet" if not last else f"{_ago(last)} ({time.strftime('%H:%M:%S', time.localtime(last))})"
            cells.append([name, when, f"{sent:,.0f}"])
        table = columns(("SINK", "LAST DELIVERY", "RECORDS SINCE START"), cells, {2})
        w.write("".join(f"  {line}\n" for line in table.splitlines()))
    return 0
