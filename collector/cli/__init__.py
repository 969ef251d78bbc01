"""The command line: argument parsing only (parser.py; quick.py builds the quick commands'
pipelines, commands.py the small commands); everything else lives in the library.

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
import sys
from collections.abc import Callable
from pathlib import Path

from collector import early
from collector.checkpoints import DataDirError
from collector.cli.commands import EXIT_USAGE, health, reload, schema
from collector.cli.parser import LOG_LEVELS, parser
from collector.cli.quick import command_config, receive_config, tail_config
from collector.config import ConfigError, PipelineConfig, default_data_dir, load_config, unreadable_files
from collector.ownlogs import FORMATS

log = logging.getLogger("collector")


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
    if args.command not in ("run", "tail", "receive"):
        early.release()  # only a pipeline acts on a SIGTERM that came while it started
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


__all__ = ["command_config", "main", "parser", "receive_config", "tail_config"]
