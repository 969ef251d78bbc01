"""``collector top``: what flows through a running collector, per component and per container.

A client of the collector's ``GET /metrics`` (``api.listen``, ``--api``): two scrapes give the
rates. Per component: records per second in and out, the totals, errors, records dead-lettered,
retries, how full a sink's buffer is, and a source's checkpoint lag (bytes present in its files
and not yet delivered); per container, its lag. On a terminal the table is redrawn in place
every ``interval`` seconds until Ctrl-C; ``--once`` prints one snapshot (rates over
``interval``), as does every refresh when the output is not a terminal.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

from collector.listeners import DEFAULT_API_LISTEN, api_url

Samples = dict[str, list[tuple[dict[str, str], float]]]


class Unreachable(Exception):
    """The collector's API did not answer."""


def default_url() -> str:
    """Where ``$COLLECTOR_API_LISTEN`` (tcp://HOST:PORT, as api.listen) is asked (a wildcard
    address on loopback), else port 8686 on loopback."""
    return api_url(os.environ.get("COLLECTOR_API_LISTEN") or DEFAULT_API_LISTEN)


def scrape(url: str, timeout: float = 5.0) -> Samples:
    """Every sample of ``<url>/metrics``, by sample name."""
    target = url.rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as r:
            text = r.read().decode("utf-8", "replace")
    except (OSError, ValueError) as e:
        raise Unreachable(f"cannot reach {target}: {getattr(e, 'reason', e)}") from None
    out: Samples = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name].append((dict(s.labels), float(s.value)))
    return out


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, ()) if all(lab.get(k) == x for k, x in labels.items()))


def has(samples: Samples, name: str, **labels: str) -> bool:
    return any(all(lab.get(k) == x for k, x in labels.items()) for lab, _ in samples.get(name, ()))


@dataclass
class Row:
    component: str
    kind: str
    type: str
    records_in: float = 0.0
    records_out: float = 0.0
    rate_in: float = 0.0
    rate_out: float = 0.0
    errors: float = 0.0
    dead_lettered: float = 0.0
    retries: float = 0.0
    buffer_fill: float | None = None  # 0..1 (sinks)
    buffer_events: float = 0.0
    buffer_bytes: float = 0.0
    lag_bytes: float | None = None  # sources that read files


@dataclass
class Snapshot:
    url: str
    at: float
    interval: float
    rows: list[Row] = field(default_factory=list)
    containers: list[tuple[str, str, str, float]] = field(default_factory=list)  # component, name, id, lag


KIND_ORDER = {"source": 0, "transform": 1, "sink": 2}


def _counts(s: Samples, name: str, kind: str) -> tuple[float, float]:
    records_in = total(
        s, "collector_events_received_total" if kind == "source" else "collector_events_in_total", component=name
    )
    records_out = total(
        s, "collector_events_sent_total" if kind == "sink" else "collector_events_out_total", component=name
    )
    return records_in, records_out


def snapshot(url: str, before: Samples, after: Samples, interval: float) -> Snapshot:
    """Rows from two scrapes ``interval`` seconds apart."""
    snap = Snapshot(url, time.time(), interval)
    for lab, _ in after.get("collector_component_info", ()):
        name, kind = lab.get("component", "?"), lab.get("kind", "?")
        row = Row(name, kind, lab.get("type", "?"))
        row.records_in, row.records_out = _counts(after, name, kind)
        was_in, was_out = _counts(before, name, kind)
        if interval > 0:
            row.rate_in = max(0.0, row.records_in - was_in) / interval
            row.rate_out = max(0.0, row.records_out - was_out) / interval
        row.errors = total(after, "collector_errors_total", component=name)
        row.dead_lettered = total(after, "collector_dead_letters_total", component=name)
        row.retries = total(after, "collector_retries_total", component=name)
        if kind == "sink":
            row.buffer_events = total(after, "collector_buffer_events", component=name)
            row.buffer_bytes = total(after, "collector_buffer_bytes", component=name)
            fills = []
            max_bytes = total(after, "collector_buffer_max_bytes", component=name)
            max_events = total(after, "collector_buffer_max_events", component=name)
            if max_bytes:
                fills.append(row.buffer_bytes / max_bytes)
            if max_events:
                fills.append(row.buffer_events / max_events)
            row.buffer_fill = max(fills) if fills else None
        if has(after, "collector_checkpoint_lag_bytes", component=name):
            row.lag_bytes = total(after, "collector_checkpoint_lag_bytes", component=name)
        snap.rows.append(row)
    snap.rows.sort(key=lambda r: (KIND_ORDER.get(r.kind, 3), r.component))
    for lab, v in after.get("collector_checkpoint_lag_bytes", ()):
        snap.containers.append((lab.get("component", ""), lab.get("container", ""), lab.get("container_id", ""), v))
    snap.containers.sort(key=lambda c: (-c[3], c[1]))
    return snap


# -- rendering ------------------------------------------------------------------------------------
def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 10 or v == 0 else f"{v:.1f}"


HEADERS = (
    "COMPONENT",
    "KIND",
    "TYPE",
    "IN/s",
    "OUT/s",
    "IN",
    "OUT",
    "ERRORS",
    "DEAD-LETTERED",
    "RETRIES",
    "BUFFER",
    "LAG",
)
CONTAINER_HEADERS = ("CONTAINER", "ID", "SOURCE", "LAG")


def component_cells(r: Row) -> list[str]:
    buffer = "-"
    if r.buffer_fill is not None:
        buffer = f"{r.buffer_fill:.0%} ({r.buffer_events:,.0f} rec, {human_bytes(r.buffer_bytes)})"
    return [
        r.component,
        r.kind,
        r.type,
        _rate(r.rate_in),
        _rate(r.rate_out),
        f"{r.records_in:,.0f}",
        f"{r.records_out:,.0f}",
        f"{r.errors:,.0f}",
        f"{r.dead_lettered:,.0f}",
        f"{r.retries:,.0f}",
        buffer,
        "-" if r.lag_bytes is None else human_bytes(r.lag_bytes),
    ]


def container_cells(c: tuple[str, str, str, float]) -> list[str]:
    component, name, cid, lag = c
    return [name or "-", cid or "-", component, human_bytes(lag)]


def columns(headers: tuple[str, ...], rows: list[list[str]], right: set[int]) -> str:
    """Plain aligned columns (numbers right-aligned): readable piped, grep-able."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = []
    for cells in [list(headers), *rows]:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def title(snap: Snapshot) -> str:
    at = time.strftime("%H:%M:%S", time.localtime(snap.at))
    return f"collector at {snap.url}, {at} (rates over {snap.interval:.1f}s)"


def render_text(snap: Snapshot) -> str:
    out = [title(snap), "", columns(HEADERS, [component_cells(r) for r in snap.rows], {3, 4, 5, 6, 7, 8, 9, 11})]
    if snap.containers:
        out += ["", columns(CONTAINER_HEADERS, [container_cells(c) for c in snap.containers], {3})]
    return "\n".join(out) + "\n"


def render_rich(snap: Snapshot) -> Any:
    from rich.console import Group  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    t = Table(title=title(snap), title_justify="left", expand=False)
    for i, h in enumerate(HEADERS):
        t.add_column(h, justify="right" if i in {3, 4, 5, 6, 7, 8, 9, 11} else "left", no_wrap=True)
    for r in snap.rows:
        cells = component_cells(r)
        style = "red" if r.errors or r.dead_lettered else None
        t.add_row(*cells, style=style)
    parts: list[Any] = [t]
    if snap.containers:
        c = Table(expand=False)
        for i, h in enumerate(CONTAINER_HEADERS):
            c.add_column(h, justify="right" if i == 3 else "left", no_wrap=True)
        for row in snap.containers:
            c.add_row(*container_cells(row))
        parts.append(c)
    return Group(*parts)


# -- the command ------------------------------------------------------------------------------------
def run_top(url: str | None, once: bool, interval: float, stream: TextIO | None = None) -> int:
    url = (url or default_url()).rstrip("/")
    out = stream or sys.stdout
    try:
        before = scrape(url)
    except Unreachable as e:
        print(f"collector top: {e}", file=sys.stderr)
        return 1
    if not before.get("collector_component_info"):
        print(f"collector top: {url}/metrics has no collector components (is it a collector?)", file=sys.stderr)
        return 1
    if once or not out.isatty():
        return _plain(url, before, once, interval, out)
    return _live(url, before, interval)


def _plain(url: str, before: Samples, once: bool, interval: float, out: TextIO) -> int:
    try:
        while True:
            t0 = time.monotonic()
            time.sleep(interval)
            try:
                after = scrape(url)
            except Unreachable as e:
                print(f"collector top: {e}", file=sys.stderr)
                return 1
            out.write(render_text(snapshot(url, before, after, time.monotonic() - t0)))
            out.flush()
            if once:
                return 0
            out.write("\n")
            before = after
    except KeyboardInterrupt:
        return 0


def _live(url: str, before: Samples, interval: float) -> int:
    from rich.console import Console  # noqa: PLC0415
    from rich.live import Live  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    console = Console()
    try:
        with Live(Text(f"collector at {url}: measuring rates ..."), console=console, auto_refresh=False) as live:
            live.refresh()
            while True:
                t0 = time.monotonic()
                time.sleep(interval)
                try:
                    after = scrape(url)
                except Unreachable as e:
                    live.update(
                        Text(f"collector top: {e}; trying again every {interval:.0f}s (Ctrl-C to quit)"), refresh=True
                    )
                    continue
                live.update(render_rich(snapshot(url, before, after, time.monotonic() - t0)), refresh=True)
                before = after
    except KeyboardInterrupt:
        return 0
