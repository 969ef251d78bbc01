"""The collector's own log: JSON lines when stderr is not a terminal, text on one, --log-format to
choose (real CLI; the terminal is tmux)."""

from __future__ import annotations

import sys

import orjson

from tests.helpers import Terminal, docker_lines, run_cli


def workload(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a-json.log").write_bytes(docker_lines([f"m {i}" for i in range(30)]) + b"{bad\n")
    return [
        "tail",
        "--paths",
        str(logs / "*-json.log"),
        "--data-dir",
        str(tmp_path / "s"),
        "-o",
        f"file:{tmp_path / 'o'}",
    ]


def test_piped_the_log_is_json_lines_ecs_shaped(tmp_path, monkeypatch):
    monkeypatch.delenv("COLLECTOR_LOG_FORMAT")
    r = run_cli(*workload(tmp_path), "--once")
    assert r.returncode == 0, r.stderr
    docs = [orjson.loads(line) for line in r.stderr.splitlines()]  # every line is one JSON document
    assert docs and all({"@timestamp", "log", "message", "process"} <= set(d) for d in docs), docs
    assert all(d["@timestamp"].endswith("Z") and d["process"]["pid"] > 0 for d in docs)
    levels = {d["log"]["level"] for d in docs}
    assert levels <= {"debug", "info", "warning", "error", "critical"} and "warning" in levels  # the bad line
    bad = next(d for d in docs if d["log"]["level"] == "warning")
    assert bad["log"]["logger"] == "collector.deadletter" and "bad JSON" in bad["message"], bad
    (end,) = [d for d in docs if d["message"].startswith("pipeline ended after")]
    assert end["collector"] | {"duration_s": 0} == {
        "duration_s": 0,
        "records_in": 30,
        "records_out": 30,
        "dead_lettered": 1,
        "dropped": 0,
        "errors": 1,
        "dead_letters_not_kept": 0,
        "bytes_read": (tmp_path / "logs" / "a-json.log").stat().st_size,
    }


def test_log_format_text_wins_over_the_default_and_a_bad_value_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.delenv("COLLECTOR_LOG_FORMAT")
    r = run_cli("--log-format", "text", *workload(tmp_path), "--once")
    assert r.returncode == 0, r.stderr
    assert not r.stderr.lstrip().startswith("{") and " INFO    collector.app: pipeline ended after" in r.stderr
    other = tmp_path / "other"
    other.mkdir()
    r = run_cli(*workload(other), "--log-format", "json", "--once")  # after the command too
    assert r.returncode == 0 and all(line.startswith("{") for line in r.stderr.splitlines()), r.stderr
    r = run_cli("status", "--data-dir", str(tmp_path), env={"COLLECTOR_LOG_FORMAT": "xml"})
    assert r.returncode == 2 and "COLLECTOR_LOG_FORMAT='xml'" in r.stderr, r.stderr


def test_on_a_terminal_the_log_is_text(tmp_path):
    with Terminal(tmp_path) as term:
        term.run("env", "-u", "COLLECTOR_LOG_FORMAT", sys.executable, "-m", "collector", *workload(tmp_path), "--once")
        assert term.exit_code() == 0, term.screen()
        screen = term.screen()
    assert " INFO    collector.app: pipeline ended after" in screen and '{"@timestamp"' not in screen, screen
