"""The command line as a new user meets it."""

from __future__ import annotations

import signal

from tests.helpers import Collector, wait_until


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
        for hint in ("--docker-root", "--path", "DOCKER_HOST", "waiting"):
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
