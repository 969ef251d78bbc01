"""What the quick commands (``tail``, ``receive``) build from their flags: a pipeline config,
checked, its problems naming the flags."""

from __future__ import annotations

import argparse
import re
from typing import Any
from urllib.parse import urlsplit

from collector.config import (
    ConfigError,
    PipelineConfig,
    default_data_dir,
    validate_config,
)


def output_sink(spec: str, inputs: list[str]) -> dict[str, Any]:
    """The sink config for an ``--output`` value."""
    if spec in ("console", "-", "stdout"):
        return {"type": "console", "inputs": inputs}
    if spec.startswith("file:"):
        path = spec[5:]
        if not path:
            raise ValueError("file: needs a path, e.g. file:/tmp/out.ndjson")
        return {"type": "file", "inputs": inputs, "path": path}
    u = urlsplit(spec)
    if u.scheme in ("http", "https"):
        return {"type": "elasticsearch", "inputs": inputs, "hosts": [spec]}
    if u.scheme in ("gelf+udp", "gelf+tcp", "gelf+tls"):
        return {"type": "gelf", "inputs": inputs, "address": spec}
    raise ValueError(
        f"unknown output {spec!r}: use console, file:PATH, http(s)://host:9200, gelf+udp://host:12201, "
        "gelf+tcp://host:12201 or gelf+tls://host:12201"
    )


def tail_config(args: argparse.Namespace) -> dict[str, Any]:
    if args.format == "cri":
        return cri_tail_config(args)
    cfg: dict[str, Any] = {
        "data_dir": args.data_dir or default_data_dir(),
        "docker_root": args.docker_root,
        "sources": {"containers": {"type": "docker_json_file", "read_from": args.read_from}},
        "transforms": {
            "meta": {
                "type": "docker_metadata",
                "inputs": ["containers"],
                "metadata": args.metadata,
                "tag": args.tag,
            },
        },
        "sinks": {"out": output_sink(args.output, ["meta"])},
    }
    if args.paths:
        cfg["sources"]["containers"]["paths"] = args.paths
    if args.docker_host:
        cfg["transforms"]["meta"]["docker_host"] = args.docker_host
    if args.tag is None:
        del cfg["transforms"]["meta"]["tag"]
    if args.api:
        cfg["api"] = {"listen": api_listen(args.api)}
    return cfg


def cri_tail_config(args: argparse.Namespace) -> dict[str, Any]:
    """``tail --format cri``: kubelet's logs, straight to the output. No Docker metadata: no Docker
    engine writes these files; pod, namespace and container come from their paths."""
    for flag, value in (("--tag", args.tag), ("--docker-host", args.docker_host)):
        if value is not None:
            raise ValueError(f"{flag} enriches from Docker, which CRI logs do not come from: leave it out")
    cfg: dict[str, Any] = {
        "data_dir": args.data_dir or default_data_dir(),
        "sources": {
            "containers": {
                "type": "docker_json_file",
                "format": "cri",
                "paths": args.paths or ["/var/log/pods/*/*/*.log"],
                "read_from": args.read_from,
            },
        },
        "sinks": {"out": output_sink(args.output, ["containers"])},
    }
    if args.api:
        cfg["api"] = {"listen": api_listen(args.api)}
    return cfg


# receive --listen PROTOCOL+URL: the source each protocol is received by (and its name in the pipeline)
RECEIVERS = {"forward": "fluent_forward", "gelf": "gelf", "syslog": "syslog"}
LISTEN_FORMS = (
    "forward+tcp://HOST:PORT, forward+unix:///PATH, gelf+udp://HOST:PORT, gelf+tcp://HOST:PORT, "
    "syslog+udp://HOST:PORT, syslog+tcp://HOST:PORT, syslog+unix:///PATH or syslog+unixgram:///PATH"
)


def receive_sources(listen: list[str]) -> dict[str, Any]:
    """``--listen PROTOCOL+URL``...: one source per protocol, listening on each of its URLs (the
    source's ``listen``), as ``--output gelf+udp://`` names a protocol and its transport."""
    sources: dict[str, Any] = {}
    for spec in listen:
        protocol, plus, url = spec.partition("+")
        if not plus or protocol not in RECEIVERS or "://" not in url:
            raise ValueError(f"--listen {spec!r}: use {LISTEN_FORMS}")
        sources.setdefault(protocol, {"type": RECEIVERS[protocol], "listen": []})["listen"].append(url)
    if not sources:
        raise ValueError(f"give --listen, one or more of {LISTEN_FORMS}")
    return sources


def receive_config(args: argparse.Namespace) -> dict[str, Any]:
    sources = receive_sources(args.listen or [])
    meta = {"type": "docker_metadata", "inputs": list(sources), "metadata": args.metadata}
    cfg: dict[str, Any] = {
        "data_dir": args.data_dir or default_data_dir(),
        "docker_root": args.docker_root,
        "sources": sources,
        "transforms": {"meta": meta},
        "sinks": {"out": output_sink(args.output, ["meta"])},
    }
    if args.docker_host:
        cfg["transforms"]["meta"]["docker_host"] = args.docker_host
    if args.api:
        cfg["api"] = {"listen": api_listen(args.api)}
    return cfg


def api_listen(value: str) -> str:
    """``--api``: the ``api.listen`` URL, ``tcp://HOST:PORT`` as given; a bare ``PORT`` or ``:PORT``
    is loopback only (the API says what flows through the collector: it is opened to others only
    when asked)."""
    v = value.strip()
    if v.isdigit():
        v = f":{v}"
    if v.startswith(":"):
        v = "127.0.0.1" + v
    return v if "://" in v else "tcp://" + v


# the keys tail_config/receive_config fill, and the flag that fills each: errors name the flag
FLAG_OF_KEY = (
    (r"sources\.containers\.paths(\.\d+)?", "--paths"),
    (r"sources\.containers\.read_from", "--read-from"),
    (r"sources\.containers\.format", "--format"),
    (r"docker_root", "--docker-root"),
    (r"transforms\.meta\.tag", "--tag"),
    (r"transforms\.meta\.metadata", "--metadata"),
    (r"transforms\.meta\.docker_host", "--docker-host"),
    (r"sources\.(forward|gelf|syslog)\.listen(\.\d+)?", "--listen"),
    (r"sinks\.out(\.[\w.]+)?", "--output"),
    (r"data_dir", "--data-dir"),
    (r"api(\.listen)?", "--api"),
)


def command_config(doc: dict[str, Any], command: str) -> PipelineConfig:
    """The pipeline a command built from its flags, checked; problems name the flags."""
    try:
        return validate_config(doc, f"collector {command}")
    except ConfigError as e:
        problems = []
        for p in e.problems:
            m = re.match(r"(collector \w+): ([\w.\-]+): (.*)", p, re.S)
            flag = next((f for rx, f in FLAG_OF_KEY if m and re.fullmatch(rx, m.group(2))), None)
            problems.append(f"{m.group(1)}: {flag}: {m.group(3)}" if m and flag else p)
        raise ConfigError(problems) from None
