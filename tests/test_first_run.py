"""A new user's first runs, as issue 17 found them: try the console, then ship for real.

Checkpoints belong to a pipeline (its outputs), not to the data directory: watching the console
first must not consume what a later run to a file (or Elasticsearch) has to ship, and a run that
finds nothing new says so and says how to start over. Real Docker engine, real CLI.
"""

from __future__ import annotations

import os
import signal
import threading

import orjson

from tests.helpers import Collector, read_ndjson, run_cli, wait_until

LINES = 300


def test_the_console_try_out_then_a_file_run_ships_every_record(docker, tmp_path):
    c = docker.run(
        f'i=0; while [ $i -lt {LINES} ]; do echo "line $i"; i=$((i+1)); done', name=f"first-{os.urandom(3).hex()}"
    )
    expected = sorted(f"line {i}" for i in range(LINES))
    state = tmp_path / "state"
    common = ["--tag", "A", "--docker-root", str(docker.root), "--data-dir", str(state)]
    env = {"DOCKER_HOST": docker.host}

    # 1. the console, following, as a new user tries it: Ctrl-C once the lines are on screen
    console = Collector("tail", *common, env=env)
    seen: list[dict] = []
    with console.start(tmp_path / "console.log"):
        assert console.proc is not None and console.proc.stdout is not None
        stdout = console.proc.stdout

        def read() -> None:
            for line in stdout:  # NDJSON: stdout is a pipe here
                seen.append(orjson.loads(line))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        wait_until(lambda: sum(d["container"]["name"] == c.name for d in seen) >= LINES, what="the lines on screen")
        assert console.stop(signal.SIGINT) == 0, console.stderr()
        reader.join(30)
    assert sorted(d["message"] for d in seen if d["container"]["name"] == c.name) == expected
    assert {d["tags"][0] for d in seen} == {"A"}
    err = console.stderr()
    assert "interrupted (Ctrl-C)" in err and "no new input" not in err, err  # Ctrl-C is said as such

    # 2. the real output: every record, although the console showed them all already
    out = tmp_path / "out.ndjson"
    r = run_cli("tail", *common, "--output", f"file:{out}", "--once", env=env)
    assert r.returncode == 0, r.stderr
    assert sorted(d["message"] for d in read_ndjson(out) if d["container"]["name"] == c.name) == expected
    assert "nothing new" not in r.stderr

    # 3. the same again: nothing new, and it says so, with the way to start over
    r = run_cli("tail", *common, "--output", f"file:{out}", "--once", env=env)
    assert r.returncode == 0, r.stderr
    assert len(read_ndjson(out)) == LINES, "nothing is delivered twice"
    hint = next(line for line in r.stderr.splitlines() if "nothing new since the last run of this pipeline" in line)
    assert f"path={out}" in hint and "1 file at its end" in hint and "--data-dir" in hint, hint
    assert str(state / "checkpoints") in hint, hint
