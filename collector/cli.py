"""The command line: argument parsing only; everything else lives in the library.

    collector tail [--tag A] [--paths GLOB]... [--output SPEC] [--once]
    collector receive --listen forward+tcp://127.0.0.1:24224 [--listen gelf+udp://127.0.0.1:12201]
                      [--listen syslog+udp://127.0.0.1:5514] [--output SPEC]
    collector run -c pipeline.yaml [--once] [--data-dir DIR]
    collector validate -c pipeline.yaml...
    collector setup --hosts URL | -c pipeline.yaml [--kibana URL] [--dry-run]
    collector health [--url http://127.0.0.1:8686]
    collector top [--url http://127.0.0.1:8686] [--once]
    collector status [--data-dir DIR]
    collector reload [-c pipeline.yaml | --data-dir DIR]
    collector tap [--url URL] [--component NAME] [--tag PATTERN] [--container NAME] [--limit N]
    collector schema [--format json|markdown] [--write DIR]

Exit codes (every command's ``--help`` says which apply): 0 done, 1 a component failed, 2 bad
usage or configuration (always one message, never a traceback), 3 stopped with records not yet
delivered.

``--output``: ``console`` (default), ``file:PATH``, ``http(s)://host:9200`` (Elasticsearch or
OpenSearch), ``gelf+udp://host:12201``, ``gelf+tcp://host:12201`` or ``gelf+tls://host:12201``
(Graylog).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from collector import __version__
from collector.checkpoints import DataDirError
from collector.config import (
    ConfigError,
    PipelineConfig,
    default_data_dir,
    load_config,
    unreadable_files,
    validate_config,
)
from collector.docker_api import DEFAULT_DOCKER_ROOT
from collector.ownlogs import FORMATS

log = logging.getLogger("collector")

EXIT_USAGE = 2


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


LOG_LEVELS = ("debug", "info", "warning", "error")
EXIT_CODES = """\
exit codes:
  0  done: --once read everything there and delivered it; otherwise stopped by SIGTERM/SIGINT
     (Ctrl-C) after delivering what was in flight
  1  a component failed (the log says which and why)
  2  bad usage or configuration (the message says what and where)
  3  stopped with records not yet delivered: they are read again, or replayed from the disk
     buffer, at the next start"""
ENVIRONMENT = """\
environment:
  COLLECTOR_LOG_LEVEL  default of --log-level
  COLLECTOR_LOG_FORMAT default of --log-format
  DOCKER_HOST          the Docker API (default unix:///var/run/docker.sock)"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written; every option's default said, unless it has none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            "default" not in text
            and action.option_strings
            and default not in (None, False, argparse.SUPPRESS)
            and not isinstance(action, argparse._VersionAction | argparse._HelpAction)
        ):
            text += " (default: %(default)s)"
        return text


def _sub(
    sub: Any, name: str, summary: str, description: str, epilog: str = EXIT_CODES, **kw: Any
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=HelpFormatter,
        **kw,
    )
    # accepted after the subcommand too (``collector tail --log-level debug``); SUPPRESS keeps the
    # value given before it (or from COLLECTOR_LOG_LEVEL) when it is not repeated here
    p.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=argparse.SUPPRESS,
        help="how much to log on stderr (default: $COLLECTOR_LOG_LEVEL or info)",
    )
    p.add_argument(
        "--log-format",
        type=str.lower,
        choices=FORMATS,
        default=argparse.SUPPRESS,
        help="the log on stderr as text or as JSON lines (default: $COLLECTOR_LOG_FORMAT, else text on a "
        "terminal and JSON otherwise)",
    )
    return p


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


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output",
        "-o",
        default="console",
        metavar="SPEC",
        help="where records go: console (readable on a terminal, NDJSON when piped) | file:PATH (NDJSON) | "
        "http(s)://HOST:9200 (Elasticsearch, OpenSearch) | gelf+udp://HOST:12201 | gelf+tcp://HOST:12201 | "
        "gelf+tls://HOST:12201 (Graylog)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help=f"checkpoints, buffers, dead letters; checkpoints are kept per output inside it "
        f"(default: {default_data_dir()})",
    )
    p.add_argument(
        "--metadata",
        choices=("auto", "api", "files"),
        default="auto",
        help="container metadata from the Docker API, from config.v2.json files, or auto (the API when it "
        "answers, the files otherwise)",
    )
    p.add_argument(
        "--docker-root",
        default=DEFAULT_DOCKER_ROOT,
        metavar="DIR",
        help="Docker's data root (its containers/ directory has the logs and config.v2.json files)",
    )
    p.add_argument(
        "--docker-host", metavar="URL", help="Docker API address (default: $DOCKER_HOST or the local socket)"
    )
    p.add_argument(
        "--api",
        metavar="URL",
        help="api.listen: serve GET /health, /ready and /metrics on tcp://HOST:PORT (for `collector top`, "
        "`status`, Prometheus); HOST:PORT means tcp://HOST:PORT, a bare PORT listens on 127.0.0.1 only "
        "(default: off)",
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="collector",
        description="Docker logs to Elasticsearch, OpenSearch, Graylog: nothing lost, nothing duplicated.",
        epilog=f"{EXIT_CODES}\n\n{ENVIRONMENT}\n\n`collector COMMAND --help` says more about each command.",
        formatter_class=HelpFormatter,
    )
    ap.add_argument("--version", action="version", version=f"collector {__version__}")
    ap.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        default=None,
        help="how much to log on stderr, before or after the command (default: $COLLECTOR_LOG_LEVEL or info)",
    )
    ap.add_argument(
        "--log-format",
        type=str.lower,
        choices=FORMATS,
        default=None,
        help="the log on stderr as text or as JSON lines, before or after the command (default: "
        "$COLLECTOR_LOG_FORMAT, else text on a terminal and JSON otherwise)",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = _sub(
        sub,
        "tail",
        "follow every container's json-file log",
        "Follow Docker's json-file logs (through rotation, copytruncate and restarts), add each container's\n"
        "name, image, labels and compose project, and deliver the records to --output.\n\n"
        "Checkpoints belong to the output: trying the console first never consumes what a later run to a\n"
        "file or to Elasticsearch must ship (see --data-dir).",
    )
    t.add_argument(
        "--paths",
        action="append",
        metavar="GLOB",
        help="logs to follow, instead of every container's (repeatable; default: "
        "<docker-root>/containers/*/*-json.log, or /var/log/pods/*/*/*.log with --format cri)",
    )
    t.add_argument(
        "--format",
        choices=("json-file", "cri"),
        default="json-file",
        help="json-file: Docker's json-file logs, with each container's metadata from Docker; cri: "
        "containerd/CRI-O logs as kubelet keeps them, with pod, namespace and container from the path",
    )
    t.add_argument(
        "--tag",
        metavar="TEMPLATE",
        help="tag template, like docker's --log-opt tag: A, {{.Name}}, {{.ID}}, "
        "{{.ImageName}}, {{.FullID}} (default: {{.ID}})",
    )
    t.add_argument(
        "--read-from",
        choices=("beginning", "end"),
        default="beginning",
        help="where to start in a file seen for the first time by this output",
    )
    t.add_argument(
        "--once",
        action="store_true",
        help="read what is there, deliver it, save checkpoints, exit (default: follow until SIGTERM/SIGINT)",
    )
    _common(t)

    r = _sub(
        sub,
        "receive",
        "listen for Docker's fluentd, gelf and syslog log drivers",
        "Receive the Fluentd forward protocol (Docker's fluentd log driver, Fluent Bit, fluent-logger),\n"
        "GELF (Docker's gelf log driver, graypy ...) and/or syslog (Docker's syslog log driver, logger,\n"
        "rsyslog ...), add the container's metadata, deliver the\n"
        "records to --output. Runs until SIGTERM/SIGINT.\n\n"
        "  docker run --log-driver=fluentd --log-opt fluentd-address=localhost:24224 --log-opt tag=app.web ...",
    )
    r.add_argument(
        "--listen",
        action="append",
        metavar="PROTOCOL+URL",
        help="where to receive, repeatable (each protocol's URLs go to one source's `listen`): "
        "forward+tcp://127.0.0.1:24224 or forward+unix:///PATH (the forward protocol, Docker's fluentd driver; "
        "a TCP port also answers UDP heartbeats), gelf+udp://127.0.0.1:12201 or gelf+tcp://127.0.0.1:12201, "
        "syslog+udp://127.0.0.1:5514, syslog+tcp://..., syslog+unix:///PATH or syslog+unixgram:///PATH "
        "(RFC 5424/3164; Docker's syslog driver)",
    )
    _common(r)

    run = _sub(
        sub,
        "run",
        "run a pipeline from a config file",
        "Run the pipeline a YAML file describes (sources, transforms, sinks; docs/configuration.md),\n"
        "until SIGTERM/SIGINT, or with --once until everything there is read and delivered.",
    )
    run.add_argument("-c", "--config", required=True, metavar="FILE", help="pipeline YAML")
    run.add_argument(
        "--once", action="store_true", help="read what is there, deliver it, exit (default: follow until a signal)"
    )
    run.add_argument("--data-dir", metavar="DIR", help="overrides the file's data_dir")

    v = _sub(
        sub,
        "validate",
        "check config files and exit",
        "Check pipeline files without running them: YAML syntax, unknown keys, wrong types, unset\n"
        "environment variables, dangling inputs, cycles. Every problem of every file is listed, each\n"
        "as FILE:LINE: KEY: WHAT.",
        epilog="exit codes:\n  0  every file is valid\n  2  a file has problems (each is listed on stderr)",
    )
    v.add_argument("-c", "--config", required=True, nargs="+", metavar="FILE", help="pipeline YAML file(s)")

    s = _sub(
        sub,
        "setup",
        "install index templates (and Kibana dashboards)",
        "Install what the elasticsearch sink writes into: the index template, component templates and\n"
        "(where the cluster has ILM or ISM) a lifecycle policy; with --kibana, import dashboards/.\n"
        "Idempotent: a second run changes nothing and says so.",
        epilog="exit codes:\n  0  installed (or already there; --dry-run: printed)\n"
        "  1  the engine or Kibana refused or could not be reached\n  2  bad usage",
    )
    where = s.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--hosts",
        action="append",
        metavar="URL",
        help="Elasticsearch/OpenSearch URL (repeatable: the sink's `hosts`)",
    )
    where.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="a pipeline file: set up what each of its elasticsearch sinks writes to, with its hosts, "
        "credentials and TLS (then --data-stream, --user, --password, --api-key, --ca-file and --verify "
        "are not used)",
    )
    s.add_argument("--kibana", metavar="URL", help="also import the dashboards into this Kibana")
    s.add_argument("--dry-run", action="store_true", help="print what would be installed, change nothing")
    s.add_argument("--data-stream", default="logs-docker-default", help="data stream the sink writes to")
    s.add_argument(
        "--replicas", type=int, default=None, help="number_of_replicas in the template (default: the cluster's)"
    )
    s.add_argument("--retention-days", type=int, default=30, help="lifecycle: delete data after N days (ILM/ISM)")
    s.add_argument(
        "--user", default=os.environ.get("COLLECTOR_ES_USER"), help="basic auth user (default: $COLLECTOR_ES_USER)"
    )
    s.add_argument(
        "--password",
        default=os.environ.get("COLLECTOR_ES_PASSWORD"),
        help="basic auth password (default: $COLLECTOR_ES_PASSWORD, better than the command line)",
    )
    s.add_argument(
        "--api-key", default=os.environ.get("COLLECTOR_ES_API_KEY"), help="API key (default: $COLLECTOR_ES_API_KEY)"
    )
    s.add_argument("--ca-file", metavar="FILE", help="CA bundle for https (default: the system's)")
    s.add_argument(
        "--verify",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="verify TLS certificates (--no-verify: do not, for tests only)",
    )

    h = _sub(
        sub,
        "health",
        "ask a running collector whether it is healthy",
        "Ask a running collector's GET /health (its api.listen): for a Docker HEALTHCHECK.",
        epilog="exit codes:\n  0  healthy\n  1  unhealthy, or not reachable\n  2  bad usage",
    )
    h.add_argument(
        "--url",
        default=None,
        help="its api (default: $COLLECTOR_API_LISTEN asked over http://, or http://127.0.0.1:8686)",
    )
    h.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")

    tp = _sub(
        sub,
        "top",
        "watch what flows through a running collector",
        "Per component of a running collector (its API: api.listen, or tail/receive --api): records per\n"
        "second in and out, totals, errors, records dead-lettered, retries, how full each sink's buffer is,\n"
        "and each source's checkpoint lag (bytes in its files not yet delivered); then the lag of each\n"
        "container. Redrawn in place on a terminal until Ctrl-C; --once prints one snapshot.",
        epilog="exit codes:\n  0  printed (or stopped with Ctrl-C)\n  1  the collector's API cannot be reached\n"
        "  2  bad usage",
    )
    tp.add_argument(
        "--url",
        default=None,
        help="its API (default: $COLLECTOR_API_LISTEN asked over http://, or http://127.0.0.1:8686)",
    )
    tp.add_argument("--once", action="store_true", help="print one snapshot and exit (rates over --interval)")
    tp.add_argument(
        "--interval", type=float, default=2.0, help="seconds between refreshes (and over which rates are measured)"
    )

    st = _sub(
        sub,
        "status",
        "what a data directory holds: checkpoints, buffers, dead letters",
        "Read a data directory, whether or not a collector runs on it (nothing is locked or written):\n"
        "per pipeline, each tracked file with its container's name, the offset delivered, the file's size\n"
        "and the lag; each disk buffer's bytes and records; each dead-letter file's entries and reasons;\n"
        "and, when a collector runs on it with its API on, the last delivery of each sink.",
        epilog="exit codes:\n  0  printed\n  2  bad usage, or no such data directory",
    )
    st.add_argument("--data-dir", metavar="DIR", help=f"the data directory (default: {default_data_dir()})")
    st.add_argument(
        "--url",
        default=None,
        help="the running collector's API (default: the one it wrote in DIR/api.json, if it runs with one)",
    )

    tap = _sub(
        sub,
        "tap",
        "print the records passing a component of a running collector, live",
        "Attach to a running collector (its API: api.listen, or tail/receive --api) and print the records\n"
        "a component passes on (for a sink: the records it receives, after its match), as they pass:\n"
        "readable lines on a terminal, NDJSON when piped. Read-only, and it never slows the pipeline:\n"
        "past --rate records per second, or while this command cannot keep up, records are skipped and\n"
        'the count is said on stderr ("sampling: N records skipped").',
        epilog="exit codes:\n  0  --limit records printed, or stopped with Ctrl-C (or the collector stopped)\n"
        "  1  no collector answers there, or it stopped before --limit records\n"
        "  2  bad usage: no such component, a bad --tag pattern",
    )
    tap.add_argument(
        "--url",
        default=None,
        help="its API (default: the one the collector running on --data-dir wrote in DIR/api.json, else "
        "$COLLECTOR_API_LISTEN asked over http://, or http://127.0.0.1:8686)",
    )
    tap.add_argument("--data-dir", metavar="DIR", help=f"where to find api.json (default: {default_data_dir()})")
    tap.add_argument(
        "--component",
        metavar="NAME",
        help="the source, transform (or transform.port) or sink to watch (default: the sink, when there is one)",
    )
    tap.add_argument("--tag", metavar="PATTERN", help="only records whose tag matches (app.**, {a,b}, as match)")
    tap.add_argument(
        "--container", metavar="NAME", help="only records of this container: a name or glob (web-*), or an id prefix"
    )
    tap.add_argument("--limit", type=int, metavar="N", help="exit after N records (default: until Ctrl-C)")
    tap.add_argument(
        "--rate",
        type=int,
        default=1000,
        metavar="N",
        help="at most N records per second are copied; past that, records are skipped and counted (0: as many as "
        "this command keeps up with)",
    )

    rl = _sub(
        sub,
        "reload",
        "make a running collector read its config file again",
        "Send SIGHUP to the collector that runs on a data directory (the one holding its lock): it reads\n"
        "its config file (collector run -c FILE) again. A new config that is invalid is refused, with\n"
        "the reason in its log, and the running pipeline goes on. A valid one replaces the pipeline: the\n"
        "running one drains (sources stop, everything in flight is delivered, checkpoints are saved), then\n"
        "the new one starts in the same process from the same positions, and the API stays up.\n"
        "data_dir and api.listen cannot change on a reload.",
        epilog="exit codes:\n  0  signalled (its log says whether the new config was taken)\n"
        "  1  no collector runs on that data directory\n  2  bad usage, or -c FILE is invalid (nothing signalled)",
    )
    rl.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="the pipeline file it runs: checked first (nothing is signalled when it is invalid), and its data_dir "
        "says which collector",
    )
    rl.add_argument("--data-dir", metavar="DIR", help=f"the data directory it runs on (default: {default_data_dir()})")

    sc = _sub(
        sub,
        "schema",
        "print the configuration's JSON Schema (or its reference page)",
        "Print the JSON Schema of a pipeline file, generated from the code: editors use it for completion\n"
        "and checking. Save it and name it on the first line of a pipeline file:\n\n"
        "  collector schema > collector.schema.json\n"
        "  # yaml-language-server: $schema=collector.schema.json\n\n"
        "--format markdown prints the configuration reference (docs/configuration.md).",
        epilog="exit codes:\n  0  printed (or written)\n  2  bad usage",
    )
    sc.add_argument("--format", choices=("json", "markdown"), default="json", help="what to print")
    sc.add_argument(
        "--write",
        metavar="DIR",
        help="write both into DIR (collector.schema.json, configuration.md) instead of printing: "
        "`collector schema --write docs` regenerates the repository's copies",
    )
    return ap


def health(url: str | None, timeout: float) -> int:
    """``collector health``: 0 when /health says ok, 1 otherwise (what a Docker HEALTHCHECK wants)."""
    import json  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    if url is None:
        from collector.top import default_url  # noqa: PLC0415

        url = default_url()
    target = url.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(target, timeout=timeout) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:  # 503: failing, with the detail in the body
        status, body = e.code, e.read()
    except (OSError, ValueError) as e:
        print(f"collector health: cannot reach {target}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 1
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    ok = status == 200 and answer.get("status") == "ok"
    print(f"{answer.get('status', f'HTTP {status}')} ({target})")
    for name, detail in (answer.get("checks") or {}).items():
        print(f"  {name}: {detail}")
    return 0 if ok else 1


def _run(
    cfg: PipelineConfig, once: bool, source: str = "<config>", reload: Callable[[], PipelineConfig] | None = None
) -> int:
    from collector.app import run_pipeline  # noqa: PLC0415

    problems = unreadable_files(cfg, source)
    if problems:
        raise ConfigError(problems)
    try:
        return asyncio.run(run_pipeline(cfg, once=once, reload=reload))
    except DataDirError as e:
        print(f"collector: {e}", file=sys.stderr)
        return EXIT_USAGE


def log_level(ap: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """--log-level (before or after the command), else $COLLECTOR_LOG_LEVEL, else info."""
    if args.log_level is not None:
        return str(args.log_level)
    env = os.environ.get("COLLECTOR_LOG_LEVEL", "").strip().lower()
    if not env:
        return "info"
    if env not in LOG_LEVELS:
        ap.error(f"COLLECTOR_LOG_LEVEL={env!r}: use one of {', '.join(LOG_LEVELS)}")
    return env


def log_format(ap: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """--log-format (before or after the command), else $COLLECTOR_LOG_FORMAT, else by stderr."""
    if args.log_format is not None:
        return str(args.log_format)
    env = os.environ.get("COLLECTOR_LOG_FORMAT", "").strip().lower()
    if env and env not in FORMATS:
        ap.error(f"COLLECTOR_LOG_FORMAT={env!r}: use one of {', '.join(FORMATS)}")
    return None


def main(argv: list[str] | None = None) -> int:
    from collector import ownlogs  # noqa: PLC0415

    ap = parser()
    args = ap.parse_args(argv)
    ownlogs.setup(log_level(ap, args), log_format(ap, args))
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)  # we report engine trouble ourselves
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    try:
        if args.command == "validate":
            bad = 0
            for path in args.config:
                try:
                    load_config(path)
                    print(f"{path}: ok")
                except ConfigError as e:
                    bad += 1
                    print(str(e), file=sys.stderr)
            return EXIT_USAGE if bad else 0
        if args.command == "run":

            def read() -> PipelineConfig:
                cfg = load_config(args.config)
                if args.data_dir:
                    cfg = cfg.model_copy(update={"data_dir": args.data_dir})
                problems = unreadable_files(cfg, args.config)
                if problems:
                    raise ConfigError(problems)
                return cfg

            return _run(read(), args.once, args.config, reload=read)
        if args.command == "reload":
            return reload(args.config, args.data_dir)
        if args.command == "tail":
            return _run(command_config(tail_config(args), "tail"), args.once)
        if args.command == "receive":
            return _run(command_config(receive_config(args), "receive"), False)
        if args.command == "health":
            return health(args.url, args.timeout)
        if args.command == "top":
            from collector.top import run_top  # noqa: PLC0415

            if args.interval <= 0:
                ap.error("--interval must be more than 0")
            return run_top(args.url, args.once, args.interval)
        if args.command == "status":
            from collector.status import run_status  # noqa: PLC0415

            return run_status(Path(args.data_dir or default_data_dir()), args.url)
        if args.command == "tap":
            from collector.tap import run_tap  # noqa: PLC0415

            if args.limit is not None and args.limit < 1:
                ap.error("--limit must be 1 or more")
            if args.rate < 0:
                ap.error("--rate must be 0 or more")
            data_dir = Path(args.data_dir or default_data_dir()).expanduser()
            return run_tap(args.url, data_dir, args.component, args.tag, args.container, args.limit, args.rate)
        if args.command == "schema":
            return schema(args.format, args.write)
        if args.command == "setup":
            from collector.provision import run_setup  # noqa: PLC0415

            return run_setup(args)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:
        print(f"collector: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `collector ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return EXIT_USAGE


def reload(config: str | None, data_dir: str | None) -> int:
    """``collector reload``: SIGHUP to the collector holding the data directory's lock."""
    import signal  # noqa: PLC0415

    from collector.status import lock_holder  # noqa: PLC0415

    if config:
        try:
            cfg = load_config(config)
        except ConfigError as e:
            print(f"collector reload: not signalled, the running collector goes on unchanged:\n{e}", file=sys.stderr)
            return EXIT_USAGE
    where = Path(data_dir or (cfg.data_dir if config else default_data_dir())).expanduser()
    pid = lock_holder(where)
    if pid is None or pid <= 0:
        print(f"collector reload: no collector runs on the data directory {where}", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        print(f"collector reload: cannot signal pid {pid}: {e.strerror}", file=sys.stderr)
        return 1
    print(
        f"sent SIGHUP to the collector on {where} (pid {pid}): it reads its config file again; its log says "
        "whether the new one was taken or refused, and why"
    )
    return 0


def schema(fmt: str, write_dir: str | None) -> int:
    from collector import schema as gen  # noqa: PLC0415

    if write_dir:
        for path in gen.write(Path(write_dir)):
            print(f"wrote {path}")
        return 0
    sys.stdout.write(gen.schema_text() if fmt == "json" else gen.reference_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
