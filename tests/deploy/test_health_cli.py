"""`collector health`: the image's HEALTHCHECK command, against a real pipeline's /health."""

from __future__ import annotations

from tests.deploy.conftest import free_port
from tests.helpers import BackgroundPipeline, docker_lines, run_cli


def pipeline(tmp_path, listen: str) -> dict:
    log = tmp_path / "c" / "x-json.log"
    log.parent.mkdir(exist_ok=True)
    log.write_bytes(docker_lines(["a", "b"]))
    return {
        "data_dir": str(tmp_path / "state"),
        "api": {"listen": listen},
        "sources": {"files": {"type": "docker_json_file", "paths": [str(log)]}},
        "sinks": {"out": {"type": "file", "inputs": ["files"], "path": str(tmp_path / "out.ndjson"), "fsync": "never"}},
    }


def test_ok_then_failing_then_gone(tmp_path):
    port = free_port()
    with BackgroundPipeline(pipeline(tmp_path, f"tcp://127.0.0.1:{port}")) as p:
        r = run_cli("health", "--url", f"http://127.0.0.1:{port}")
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.startswith(f"ok (http://127.0.0.1:{port}/health)")
        assert "sink[out]: ok" in r.stdout
        # the default address comes from COLLECTOR_API_LISTEN, as the pipelines' `api.listen` does
        r = run_cli("health", env={"COLLECTOR_API_LISTEN": f"tcp://0.0.0.0:{port}"})
        assert r.returncode == 0, r.stdout + r.stderr
        # a failing check: HTTP 503 from the real endpoint, exit 1 with the detail
        p.telemetry.register_health("sink[es]", lambda: (False, "http://es:9200: connection refused"))
        r = run_cli("health", "--url", f"http://127.0.0.1:{port}/")
        assert r.returncode == 1
        assert r.stdout.startswith("failing")
        assert "sink[es]: failing: http://es:9200: connection refused" in r.stdout
        p.stop()
    r = run_cli("health", "--url", f"http://127.0.0.1:{port}", "--timeout", "2")
    assert r.returncode == 1
    assert "cannot reach" in r.stderr
