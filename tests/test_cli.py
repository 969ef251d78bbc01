"""The command line as a new user meets it."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collector import cli
from tests.deploy.conftest import free_port
from tests.helpers import Collector, run_cli, wait_until


def test_tail_on_a_host_without_docker_says_what_is_missing_in_one_line(tmp_path):
    """No data root, no socket: one line naming both and what to do; it still waits for containers."""
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    root = tmp_path / "no-docker-root"
    c = Collector("tail", "--tag", "A", "--docker-root", str(root), "--data-dir", str(tmp_path / "d"), env=env)
    with c.start(tmp_path / "stderr.log"):
        line = wait_until(
            lambda: [x for x in c.stderr().splitlines() if "no Docker data root" in x], what="the explanation"
        )[0]
        assert f"{root}/containers does not exist" in line
        assert f"no Docker socket at {tmp_path}/no-docker.sock" in line
        for hint in ("--docker-root", "--paths", "DOCKER_HOST", "waiting"):
            assert hint in line, line
        assert c.proc is not None and c.proc.poll() is None, "it waits for containers"
        # it then picks up a container that appears (what waiting promises)
        logdir = root / "containers" / ("a" * 64)
        logdir.mkdir(parents=True)
        (logdir / f"{'a' * 64}-json.log").write_bytes(
            b'{"log":"hello\\n","stream":"stdout","time":"2024-05-01T12:00:00Z"}\n'
        )
        out = wait_until(lambda: c.proc.stdout.readline() if c.proc and c.proc.stdout else b"", what="the record")
        assert b"hello" in out
        assert c.stop(signal.SIGINT) == 0
    err = c.stderr()
    assert "Traceback" not in err and "Connection aborted" not in err, err
    assert len([x for x in err.splitlines() if "WARNING" in x or "ERROR" in x]) == 1, err


# -- issue 17: the command line explains itself -------------------------------------------------
COMMANDS = {  # subcommand -> the exit codes its --help must explain (the README's 0, 1, 2, 3)
    "tail": "0123",
    "receive": "0123",
    "run": "0123",
    "validate": "02",
    "setup": "012",
    "health": "012",
    "top": "012",
    "status": "02",
    "tap": "012",
    "reload": "012",
    "schema": "02",
}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    ap = cli.parser()
    action = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_is_tested_here():
    assert set(_subparsers()) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_has_a_description_the_defaults_and_the_exit_codes(command, monkeypatch):
    for var in ("COLLECTOR_ES_USER", "COLLECTOR_ES_PASSWORD", "COLLECTOR_ES_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    r = run_cli(command, "--help", env={"COLUMNS": "100"})
    assert r.returncode == 0, r.stderr
    text = r.stdout
    _usage, _, rest = text.partition("\n\n")
    description = rest.split("options:")[0].strip()
    assert len(description) > 40, f"`collector {command} --help` has no description:\n{text}"
    flat = " ".join(text.split())
    sub = _subparsers()[command]
    for action in sub._actions:
        if not action.option_strings or action.default in (None, False, argparse.SUPPRESS):
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        assert f"default: {action.default}" in flat, f"{action.option_strings[0]}: its default is not in --help"
    assert "exit codes:" in text, text
    codes = text.split("exit codes:")[1]
    for code in COMMANDS[command]:
        assert f"\n  {code}  " in codes, f"`collector {command} --help` does not explain exit code {code}"


def test_a_bad_log_level_in_the_environment_is_a_usage_error_not_a_traceback(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("sources: {f: {type: fluent_forward}}\nsinks: {o: {type: console, inputs: [f]}}\n")
    r = run_cli("validate", "-c", str(cfg), env={"COLLECTOR_LOG_LEVEL": "verbose"})
    assert r.returncode == 2
    assert "Traceback" not in r.stderr, r.stderr
    assert "usage: collector" in r.stderr and "COLLECTOR_LOG_LEVEL='verbose'" in r.stderr, r.stderr
    assert run_cli("validate", "-c", str(cfg), env={"COLLECTOR_LOG_LEVEL": "DEBUG"}).returncode == 0


def test_log_level_works_before_and_after_the_subcommand(tmp_path):
    log = tmp_path / "c-json.log"
    log.write_bytes(b'{"log":"hello\\n","stream":"stdout","time":"2024-05-01T12:00:00Z"}\n')
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path / 'state'}\n"
        f"sources: {{f: {{type: docker_json_file, paths: ['{log}']}}}}\n"
        f"sinks: {{o: {{type: file, inputs: [f], path: {tmp_path / 'out.ndjson'}}}}}\n"
    )
    for args in (
        ["--log-level", "warning", "run", "-c", str(cfg), "--once"],
        ["run", "-c", str(cfg), "--once", "--log-level", "warning"],
        ["--log-level", "debug", "run", "-c", str(cfg), "--once", "--log-level", "warning"],  # the last one wins
    ):
        r = run_cli(*args, env={"COLLECTOR_LOG_LEVEL": "debug"})
        assert r.returncode == 0, (args, r.stderr)
        assert " INFO " not in r.stderr and " DEBUG " not in r.stderr, (args, r.stderr)
    r = run_cli("run", "-c", str(cfg), "--once", "--log-level", "debug", env={"COLLECTOR_LOG_LEVEL": "error"})
    assert r.returncode == 0 and " DEBUG " in r.stderr, r.stderr


def test_a_data_dir_that_cannot_be_used_is_a_configuration_error(tmp_path):
    (tmp_path / "a-file").write_text("")
    cfg = tmp_path / "p.yaml"
    cfg.write_text("sources: {f: {type: fluent_forward}}\nsinks: {o: {type: console, inputs: [f]}}\n")
    r = run_cli("run", "-c", str(cfg), "--once", "--data-dir", str(tmp_path / "a-file" / "state"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert f"cannot use the data directory {tmp_path / 'a-file' / 'state'}" in r.stderr


def test_receive_takes_docker_root_and_never_names_a_data_root_that_is_not_there(tmp_path):
    root = tmp_path / "no-docker-root"
    port = free_port()
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    args = [
        "receive",
        "--listen",
        f"forward+tcp://127.0.0.1:{port}",
        "--docker-root",
        str(root),
        "--log-level",
        "debug",
    ]
    c = Collector(*args, "--data-dir", str(tmp_path / "d"), "-o", f"file:{tmp_path / 'out.ndjson'}", env=env)
    with c.start(tmp_path / "stderr.log"):
        wait_until(lambda: "listening for the forward protocol" in c.stderr(), what="the listener")
        wait_until(lambda: "no Docker data root" in c.stderr(), what="the metadata source's answer")
        assert c.stop(signal.SIGTERM) == 0
    err = c.stderr()
    assert str(root) not in err and "/var/lib/docker" not in err, err


def test_a_bad_flag_value_is_reported_with_the_flag_not_the_internal_key(tmp_path):
    r = run_cli("tail", "--tag", "{{.Nmae}}", "--once", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and r.stderr.startswith("collector tail: --tag: unknown field {{.Nmae}}"), r.stderr
    r = run_cli("receive", "--listen", "forward+tcp://nowhere", "--listen", "gelf+udp://x", "--data-dir", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        "collector receive: --listen: 'tcp://nowhere': expected tcp://HOST:PORT",
        "collector receive: --listen: 'udp://x': expected udp://HOST:PORT",
    ], r.stderr
    r = run_cli("receive", "--listen", "syslog+unix://relative", "--data-dir", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == [
        "collector receive: --listen: 'unix://relative': expected unix:///absolute/path"
    ], r.stderr
    r = run_cli("receive", "--listen", "udp://127.0.0.1:5514", "--data-dir", str(tmp_path))
    assert r.returncode == 2 and r.stderr.startswith("collector: --listen 'udp://127.0.0.1:5514': use "), r.stderr


def test_a_certificate_that_cannot_be_read_is_a_configuration_error_naming_its_key(tmp_path):
    """It was a component failure (exit 1) with a traceback and no file name."""
    cfg = tmp_path / "p.yaml"
    cfg.write_text(
        f"data_dir: {tmp_path / 'state'}\n"
        "sources:\n"
        "  f:\n"
        "    type: fluent_forward\n"
        "    listen: [tls://127.0.0.1:0]\n"
        f"    tls: {{cert_file: {tmp_path}/nope.pem, key_file: {tmp_path}/nope.key}}\n"
        "sinks: {o: {type: console, inputs: [f]}}\n"
    )
    r = run_cli("run", "-c", str(cfg))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"{cfg}:6: sources.f.tls.cert_file: cannot read {tmp_path}/nope.pem: No such file or directory" in r.stderr
    assert run_cli("validate", "-c", str(cfg)).returncode == 0  # validate checks the file, not this host


def test_every_output_the_cli_accepts_is_named_in_its_help_and_errors():
    """`--output gelf+tls://` worked, but neither --help nor the error for a bad value said so."""
    r = run_cli("tail", "--output", "ftp://x", "--once")
    assert r.returncode == 2
    helptext = " ".join(run_cli("tail", "--help", env={"COLUMNS": "100"}).stdout.split())
    for spec in ("console", "file:", "http(s)://", "gelf+udp://", "gelf+tcp://", "gelf+tls://"):
        assert spec in r.stderr, (spec, r.stderr)
        assert spec in helptext, spec


def test_receive_listen_names_protocol_and_transport_and_groups_them_per_source():
    """`--listen PROTOCOL+URL` as `--output gelf+udp://`: each protocol's URLs are one source's listen."""
    args = cli.parser().parse_args(
        [
            *("receive", "--listen", "forward+tcp://127.0.0.1:24224", "--listen", "forward+unix:///run/f.sock"),
            *("--listen", "gelf+udp://127.0.0.1:12201", "--listen", "gelf+tcp://127.0.0.1:12201"),
            *("--listen", "syslog+unixgram:///dev/log"),
        ]
    )
    doc = cli.receive_config(args)
    assert {name: (s["type"], s["listen"]) for name, s in doc["sources"].items()} == {
        "forward": ("fluent_forward", ["tcp://127.0.0.1:24224", "unix:///run/f.sock"]),
        "gelf": ("gelf", ["udp://127.0.0.1:12201", "tcp://127.0.0.1:12201"]),
        "syslog": ("syslog", ["unixgram:///dev/log"]),
    }
    assert doc["transforms"]["meta"]["inputs"] == ["forward", "gelf", "syslog"]
    cli.command_config(doc, "receive")  # and it is a valid pipeline


def test_a_sigterm_while_the_collector_starts_stops_it_cleanly(tmp_path):
    """`docker stop` right after `docker start`: the signal comes while Python imports; it used to
    kill the process by the signal (exit -15, seen in the chaos tests), now it is acted on as soon as
    the pipeline exists: a clean stop, exit 0."""
    root = tmp_path / "docker" / "containers"
    root.mkdir(parents=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "collector",
            "tail",
            "--docker-root",
            str(tmp_path / "docker"),
            "--data-dir",
            str(tmp_path / "state"),
            "-o",
            f"file:{tmp_path / 'out.ndjson'}",
        ],
        stderr=subprocess.PIPE,
    )
    status = Path(f"/proc/{proc.pid}/status")
    term = 1 << (signal.SIGTERM - 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the first moment SIGTERM is caught: the early handler
        caught = next((line for line in status.read_text().splitlines() if line.startswith("SigCgt:")), "")
        if caught and int(caught.split()[1], 16) & term:
            break
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert "it came while the collector started" in err.decode()


def test_a_collector_stopped_the_moment_it_started_stops_cleanly(tmp_path):
    """What the chaos tests do when they find their work already done: stop a collector started a
    moment ago. The helper waits until the process catches SIGTERM (Python cannot before it runs
    our first line); from then on the stop is clean, exit 0 (it was -15 in 2 of 26 chaos runs)."""
    (tmp_path / "docker" / "containers").mkdir(parents=True)
    for _ in range(5):
        col = Collector(
            "tail", "--docker-root", str(tmp_path / "docker"), "--data-dir", str(tmp_path / "state"), "-o", "console"
        ).start(tmp_path / "err.log")
        assert col.stop() == 0, (tmp_path / "err.log").read_text()
