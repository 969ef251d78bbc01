"""The small commands: ``health``, ``reload``, ``schema``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from collector.config import (
    ConfigError,
    default_data_dir,
    load_config,
)

EXIT_USAGE = 2


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
