"""The command line: argument parsing only; everything else lives in the library.

    collector tail [--tag A] [--path GLOB]... [--output SPEC] [--once]
    collector receive --forward 127.0.0.1:24224 [--gelf udp://127.0.0.1:12201] [--output SPEC]
    collector run -c pipeline.yaml [--once]
    collector validate -c pipeline.yaml
    collector setup --es URL [--kibana URL] [--dry-run]
    collector health [--url http://127.0.0.1:8686]

``--output``: ``console`` (default), ``file:PATH``, ``http(s)://host:9200`` (Elasticsearch or
OpenSearch), ``gelf+udp://host:12201`` or ``gelf+tcp://host:12201`` (Graylog).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any
from urllib.parse import urlsplit

from collector import __version__
from collector.checkpoints import DataDirError
from collector.config import ConfigError, PipelineConfig, default_data_dir, load_config, validate_config

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
        f"unknown output {spec!r}: use console, file:PATH, http(s)://host:9200, gelf+udp://host:12201 "
        "or gelf+tcp://host:12201"
    )


def tail_config(args: argparse.Namespace) -> dict[str, Any]:
    root = args.docker_root
    paths = args.path or [os.path.join(root, "containers", "*", "*-json.log")]
    cfg: dict[str, Any] = {
        "data_dir": args.data_dir or default_data_dir(),
        "sources": {
            "containers": {
                "type": "docker_json_file",
                "paths": paths,
                "docker_root": root,
                "read_from": args.read_from,
            },
        },
        "transforms": {
            "meta": {
                "type": "docker_metadata",
                "inputs": ["containers"],
                "docker_root": root,
                "source": args.metadata,
                "tag": args.tag,
            },
        },
        "sinks": {"out": output_sink(args.output, ["meta"])},
    }
    if args.docker_host:
        cfg["transforms"]["meta"]["docker_host"] = args.docker_host
    if args.tag is None:
        del cfg["transforms"]["meta"]["tag"]
    return cfg


def receive_config(args: argparse.Namespace) -> dict[str, Any]:
    sources: dict[str, Any] = {}
    for i, addr in enumerate(args.forward or []):
        sources[f"forward{i or ''}"] = {"type": "fluent_forward", "listen": addr}
    for i, addr in enumerate(args.gelf or []):
        sources[f"gelf{i or ''}"] = {"type": "gelf", "listen": [addr]}
    if not sources:
        raise ValueError("give --forward HOST:PORT and/or --gelf udp://HOST:PORT")
    cfg: dict[str, Any] = {
        "data_dir": args.data_dir or default_data_dir(),
        "sources": sources,
        "transforms": {"meta": {"type": "docker_metadata", "inputs": list(sources), "source": args.metadata}},
        "sinks": {"out": output_sink(args.output, ["meta"])},
    }
    if args.docker_host:
        cfg["transforms"]["meta"]["docker_host"] = args.docker_host
    return cfg


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--output",
        "-o",
        default="console",
        help="console | file:PATH | http(s)://HOST:9200 | "
        "gelf+udp://HOST:12201 | gelf+tcp://HOST:12201 (default: console)",
    )
    p.add_argument("--data-dir", help=f"checkpoints, buffers, dead letters (default: {default_data_dir()})")
    p.add_argument(
        "--metadata",
        choices=("auto", "api", "files"),
        default="auto",
        help="container metadata from the Docker API, config.v2.json files, or auto",
    )
    p.add_argument("--docker-host", help="Docker API address (default: $DOCKER_HOST or the local socket)")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="collector", description="Docker logs to Elasticsearch, OpenSearch, Graylog.")
    ap.add_argument("--version", action="version", version=f"collector {__version__}")
    ap.add_argument(
        "--log-level",
        default=os.environ.get("COLLECTOR_LOG_LEVEL", "info"),
        choices=("debug", "info", "warning", "error"),
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser(
        "tail",
        help="follow every container's json-file log",
        description=("Follow Docker json-file logs, enrich them with container metadata, deliver them."),
    )
    t.add_argument(
        "--path",
        action="append",
        metavar="GLOB",
        help="json-file logs to follow (repeatable; default: DOCKER_ROOT/containers/*/*-json.log)",
    )
    t.add_argument("--docker-root", default="/var/lib/docker", help="Docker's data root (default /var/lib/docker)")
    t.add_argument(
        "--tag",
        help="tag template, like docker's --log-opt tag: A, {{.Name}}, {{.ID}}, "
        "{{.ImageName}}, {{.FullID}} (default: {{.ID}})",
    )
    t.add_argument(
        "--from",
        dest="read_from",
        choices=("beginning", "end"),
        default="beginning",
        help="where to start in files seen for the first time",
    )
    t.add_argument("--once", action="store_true", help="read what is there, deliver it, save checkpoints, exit")
    _common(t)

    r = sub.add_parser(
        "receive",
        help="listen for Docker's fluentd and gelf log drivers",
        description=("Receive the Fluentd forward protocol and/or GELF, enrich, deliver."),
    )
    r.add_argument(
        "--forward",
        action="append",
        metavar="HOST:PORT",
        help="listen for the forward protocol (e.g. 127.0.0.1:24224; repeatable)",
    )
    r.add_argument(
        "--gelf",
        action="append",
        metavar="URL",
        help="listen for GELF: udp://127.0.0.1:12201 or tcp://127.0.0.1:12201 (repeatable)",
    )
    _common(r)

    run = sub.add_parser("run", help="run a pipeline from a config file")
    run.add_argument("-c", "--config", required=True, help="pipeline YAML")
    run.add_argument("--once", action="store_true", help="read what is there, deliver it, exit")

    v = sub.add_parser("validate", help="check a config file and exit")
    v.add_argument("-c", "--config", required=True, nargs="+", help="pipeline YAML file(s)")

    s = sub.add_parser("setup", help="install index templates (and Kibana dashboards)")
    s.add_argument("--es", required=True, metavar="URL", help="Elasticsearch/OpenSearch URL")
    s.add_argument("--kibana", metavar="URL", help="also import the dashboards into this Kibana")
    s.add_argument("--dry-run", action="store_true", help="print what would be installed")
    s.add_argument("--data-stream", default="logs-docker-default", help="data stream the sink writes to")
    s.add_argument("--replicas", type=int, default=None, help="number_of_replicas in the template")
    s.add_argument("--retention-days", type=int, default=30, help="lifecycle: delete data after N days (ILM/ISM)")
    s.add_argument("--user", default=os.environ.get("COLLECTOR_ES_USER"), help="basic auth user")
    s.add_argument(
        "--password",
        default=os.environ.get("COLLECTOR_ES_PASSWORD"),
        help="basic auth password (better: $COLLECTOR_ES_PASSWORD)",
    )
    s.add_argument("--api-key", default=os.environ.get("COLLECTOR_ES_API_KEY"), help="API key")
    s.add_argument("--ca-certs", help="CA bundle for https")
    s.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")

    h = sub.add_parser("health", help="ask a running collector's GET /health (exit 0 ok, 1 otherwise)")
    h.add_argument("--url", default=None, help="its api (default: http:// + $COLLECTOR_API_LISTEN or 127.0.0.1:8686)")
    h.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    return ap


def health(url: str | None, timeout: float) -> int:
    """``collector health``: 0 when /health says ok, 1 otherwise (what a Docker HEALTHCHECK wants)."""
    import json  # noqa: PLC0415
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    if url is None:
        host, _, port = os.environ.get("COLLECTOR_API_LISTEN", "127.0.0.1:8686").rpartition(":")
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "[::]": "[::1]"}.get(host, host)
        url = f"http://{host}:{port}"
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


def _run(cfg: PipelineConfig, once: bool) -> int:
    from collector.app import run_pipeline  # noqa: PLC0415

    try:
        return asyncio.run(run_pipeline(cfg, once=once))
    except DataDirError as e:
        print(f"collector: {e}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
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
            return _run(load_config(args.config), args.once)
        if args.command == "tail":
            return _run(validate_config(tail_config(args), "collector tail"), args.once)
        if args.command == "receive":
            return _run(validate_config(receive_config(args), "collector receive"), False)
        if args.command == "health":
            return health(args.url, args.timeout)
        if args.command == "setup":
            from collector.setup import run_setup  # noqa: PLC0415

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


if __name__ == "__main__":
    sys.exit(main())
