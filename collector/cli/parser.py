"""The argument parser of every command: flags, help texts, defaults, exit codes."""

from __future__ import annotations

import argparse
import os
from typing import Any

from collector import __version__
from collector.config import (
    default_data_dir,
)
from collector.docker_api import DEFAULT_DOCKER_ROOT
from collector.ownlogs import FORMATS

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
