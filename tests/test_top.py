"""`collector top` against a real running collector: every component and every container, one
snapshot piped, redrawn in place in a real terminal (tmux)."""

from __future__ import annotations

import os
import re
import sys

from tests.helpers import Collector, Terminal, read_ndjson, run_cli, wait_until
from tests.test_telemetry import api_url, tail_with_api


def test_top_once_prints_every_component_and_container(docker, tmp_path):
    names = {f"top-{os.urandom(3).hex()}": n for n in (50, 150)}
    containers = {
        name: docker.run(f'for i in $(seq 1 {n}); do echo "{name} $i"; done', name=name) for name, n in names.items()
    }
    state, out = tmp_path / "state", tmp_path / "out.ndjson"
    col = tail_with_api(docker, state, out)
    with col.start(tmp_path / "err.log"):
        url = api_url(state, col)
        wait_until(lambda: sum(d["container"]["name"] in names for d in read_ndjson(out)) == 200)
        everything = f"{len(read_ndjson(out)):,}"
        r = run_cli("top", "--url", url, "--once", "--interval", "0.5")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith(f"collector at {url}, ") and lines[0].endswith("(rates over 0.5s)"), lines[0]
        rows = {line.split()[0]: line.split() for line in lines[2:] if line.strip()}
        assert rows["COMPONENT"][:7] == ["COMPONENT", "KIND", "TYPE", "IN/s", "OUT/s", "IN", "OUT"]
        # COMPONENT KIND TYPE IN/s OUT/s IN OUT ERRORS DEAD-LETTERED RETRIES BUFFER... LAG
        assert rows["containers"][1:3] == ["source", "docker_json_file"]
        assert rows["containers"][5:10] == [everything, everything, "0", "0", "0"]
        assert rows["containers"][-2:] == ["0", "B"]  # lag
        assert rows["meta"][1:3] == ["transform", "docker_metadata"] and rows["meta"][5:7] == [everything] * 2
        assert rows["out"][1:3] == ["sink", "file"] and rows["out"][5:7] == [everything] * 2
        assert " ".join(rows["out"][10:]).startswith("0% (0 rec, 0 B)")
        for name, c in containers.items():
            assert rows[name] == [name, c.id[:12], "containers", "0", "B"], r.stdout
        assert col.stop() == 0


def test_top_redraws_in_place_in_a_terminal_until_ctrl_c(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    live = logs / "app-json.log"
    live.write_bytes(b"")
    state = tmp_path / "state"
    col = Collector(
        "tail",
        "--paths",
        str(logs / "*-json.log"),
        "--data-dir",
        str(state),
        "-o",
        f"file:{tmp_path / 'o'}",
        "--api",
        "0",
    )
    with col.start(tmp_path / "err.log"), Terminal(tmp_path) as term:
        url = api_url(state, col)
        term.run(sys.executable, "-m", "collector", "top", "--url", url, "--interval", "0.3")
        titles = set()

        def two_refreshes() -> bool:
            screen = term.screen()
            titles.update(re.findall(r"collector at \S+, (\d\d:\d\d:\d\d)", screen))
            assert screen.count("COMPONENT") <= 1, screen  # redrawn, never appended
            return len(titles) >= 2 and "COMPONENT" in screen

        wait_until(two_refreshes, what="two refreshes")
        term.keys("C-c")
        assert term.exit_code() == 0, term.screen()
        assert col.stop() == 0


def test_top_says_when_the_collector_cannot_be_reached(tmp_path):
    r = run_cli("top", "--url", "http://127.0.0.1:1", "--once")
    assert r.returncode == 1 and "cannot reach http://127.0.0.1:1/metrics" in r.stderr, r.stderr
