"""A --once backfill as a person sees it: the progress bar in a real terminal (tmux), the summary
line on a terminal and in a pipe, and a second run that finds nothing new."""

from __future__ import annotations

import re
import sys

from tests.helpers import Terminal, docker_lines, read_ndjson, run_cli

LINES = 120_000


def backfill(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    with open(logs / "a-json.log", "wb") as f:
        for k in range(LINES // 10_000):
            f.write(docker_lines([f"line {k} {i} " + "x" * 120 for i in range(10_000)], start_ns=k * 10_000))
    (logs / "b-json.log").write_bytes(docker_lines([f"b {i}" for i in range(500)]) + b"{not json\n")
    size = sum(p.stat().st_size for p in logs.iterdir())
    return logs, size


def summary(text: str) -> str:
    found = [line for line in text.splitlines() if "pipeline ended after" in line]
    assert len(found) == 1, text
    return found[0]


def test_the_bar_in_a_terminal_and_the_summary_line(tmp_path):
    logs, size = backfill(tmp_path)
    out = tmp_path / "out.ndjson"
    args = [
        "tail",
        "--paths",
        str(logs / "*-json.log"),
        "--data-dir",
        str(tmp_path / "s"),
        "-o",
        f"file:{out}",
        "--once",
    ]
    with Terminal(tmp_path) as term:
        term.run(sys.executable, "-m", "collector", *args)
        assert term.exit_code() == 0, term.screen()
        screen = term.screen()
    records = LINES + 500
    assert len(read_ndjson(out)) == records
    mib = f"{size / 1048576:.1f}"
    bar = [line for line in screen.splitlines() if line.startswith("reading ")]
    assert len(bar) == 1, screen  # drawn in place, one line
    assert re.search(rf"reading ━+ {re.escape(mib)}/{re.escape(mib)} MiB +{records:,} records +[\d,]+/s", bar[0]), bar
    assert bar[0].rstrip().endswith("ETA 0:00:00"), bar  # done: nothing left
    line = summary(screen)
    assert re.search(
        rf"pipeline ended after \d+\.\ds: {records:,} records in, {records:,} out, 1 dead-lettered "
        rf"\(1 error, {size:,} bytes read\)$",
        line,
    ), line
    # log lines go above the bar, whole
    assert screen.index("following 2 file(s)") < screen.index("reading ")


def test_piped_there_is_no_bar_but_the_same_summary_line_and_a_second_run_says_nothing_is_new(tmp_path):
    logs, size = backfill(tmp_path)
    out = tmp_path / "out.ndjson"
    state = tmp_path / "s"
    args = ["tail", "--paths", str(logs / "*-json.log"), "--data-dir", str(state), "-o", f"file:{out}", "--once"]
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    assert "━" not in r.stderr and "\r" not in r.stderr and "\x1b[" not in r.stderr
    records = LINES + 500
    assert summary(r.stderr).endswith(
        f": {records:,} records in, {records:,} out, 1 dead-lettered (1 error, {size:,} bytes read)"
    )

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    line = summary(again.stderr)
    assert "nothing new since the last run of this pipeline" in line and "2 files at their end" in line, line
    assert "to start over" in line and str(state / "checkpoints") in line, line
    assert len(read_ndjson(out)) == records  # nothing twice


def test_the_console_on_the_terminal_gets_no_bar(tmp_path):
    """The records go to that terminal: a bar would be drawn through them."""
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a-json.log").write_bytes(docker_lines([f"shown {i}" for i in range(50)]))
    args = ["tail", "--paths", str(logs / "*-json.log"), "--data-dir", str(tmp_path / "s"), "--once"]
    with Terminal(tmp_path) as term:
        term.run(sys.executable, "-m", "collector", *args)
        assert term.exit_code() == 0, term.screen()
        screen = term.screen()
    assert "shown 49" in screen and "━" not in screen, screen
    assert "50 records in, 50 out, 0 dead-lettered" in summary(screen)


def test_a_first_run_from_the_end_says_why_it_read_nothing(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a-json.log").write_bytes(docker_lines([f"old {i}" for i in range(5)]))
    r = run_cli(
        "tail",
        "--paths",
        str(logs / "*-json.log"),
        "--data-dir",
        str(tmp_path / "s"),
        "--read-from",
        "end",
        "--once",
        "-o",
        f"file:{tmp_path / 'o'}",
    )
    assert r.returncode == 0, r.stderr
    line = summary(r.stderr)
    assert ": 0 records in, 0 out, 0 dead-lettered" in line, line
    assert "nothing to read: --read-from end (read_from: end, source containers) starts at the end of files" in line, (
        line
    )
    assert "--read-from beginning reads them whole" in line
