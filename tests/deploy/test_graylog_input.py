"""deploy/graylog/create_gelf_input.py against a stand-in for Graylog's REST API.

Graylog cannot run here (no registry to pull it from). This server implements the documented
contract the script relies on, strictly: Basic auth on every call, the `X-Requested-By` header
on writes (Graylog answers 400 without it), GET /api/system/inputs -> {"inputs": [...], "total": N},
POST /api/system/inputs with {title, type, global, configuration} -> 201 {"id": ...}. It is a
stand-in for Graylog, not Graylog: the real stack is covered by the compose checks and the README.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from typing import Any

from tests.helpers import REPO, QuietHandler, StandInServer

SCRIPT = REPO / "deploy" / "graylog" / "create_gelf_input.py"
GELF_UDP = "org.graylog2.inputs.gelf.udp.GELFUDPInput"


class FakeGraylog(StandInServer):
    def __init__(self, password: str = "admin", refuse_post: bool = False) -> None:
        self.password = password
        self.refuse_post = refuse_post
        self.inputs: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        fake = self

        class Handler(QuietHandler):
            def authorized(self) -> bool:
                want = "Basic " + base64.b64encode(f"admin:{fake.password}".encode()).decode()
                if self.headers.get("Authorization") != want:
                    self.answer(401, {"type": "ApiError", "message": "Unauthorized"})
                    return False
                return True

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, dict(self.headers)))
                if not self.authorized():
                    return
                if self.path != "/api/system/inputs":
                    return self.answer(404, {"message": "not found"})
                self.answer(200, {"inputs": fake.inputs, "total": len(fake.inputs)})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.requests.append(("POST", self.path, dict(self.headers)))
                if not self.authorized():
                    return
                if not self.headers.get("X-Requested-By"):
                    return self.answer(400, {"type": "ApiError", "message": "CSRF protection: X-Requested-By"})
                if self.path != "/api/system/inputs" or self.headers.get("Content-Type") != "application/json":
                    return self.answer(415, {"message": "expected application/json on /api/system/inputs"})
                req = json.loads(body)
                cfg = req.get("configuration") or {}
                if fake.refuse_post or req.get("type") != GELF_UDP or not isinstance(cfg.get("port"), int):
                    return self.answer(400, {"type": "ApiError", "message": "Missing or invalid input configuration."})
                new = {
                    "id": uuid.uuid4().hex[:24],
                    "title": req["title"],
                    "type": req["type"],
                    "global": req["global"],
                    "attributes": cfg,
                }
                fake.inputs.append(new)
                self.answer(201, {"id": new["id"]})

        super().__init__(Handler)


def run_script(url: str, password: str = "admin") -> subprocess.CompletedProcess[str]:
    env = {"GRAYLOG_URL": url, "GRAYLOG_USER": "admin", "GRAYLOG_PASSWORD": password, "GRAYLOG_WAIT": "5"}
    return subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_creates_the_global_gelf_udp_input_once():
    g = FakeGraylog()
    try:
        r = run_script(g.url)
        assert r.returncode == 0, r.stderr
        assert "created" in r.stdout
        (inp,) = g.inputs
        assert inp["type"] == GELF_UDP and inp["global"] is True
        assert inp["attributes"]["port"] == 12201 and inp["attributes"]["bind_address"] == "0.0.0.0"
        posts = [h for m, _, h in g.requests if m == "POST"]
        assert posts and posts[0]["X-Requested-By"]
        # a second run (the stack restarted) finds it and creates nothing
        again = run_script(g.url)
        assert again.returncode == 0, again.stderr
        assert "already there" in again.stdout
        assert len(g.inputs) == 1
    finally:
        g.close()


def test_a_refusal_fails_the_one_shot_loudly():
    g = FakeGraylog(refuse_post=True)
    try:
        r = run_script(g.url)
        assert r.returncode == 1
        assert "HTTP 400" in r.stderr and "invalid input configuration" in r.stderr
    finally:
        g.close()


def test_wrong_credentials_fail_at_once():
    g = FakeGraylog(password="secret")
    try:
        r = run_script(g.url, password="admin")
        assert r.returncode == 1
        assert "HTTP 401" in r.stderr
    finally:
        g.close()


def test_an_unreachable_graylog_fails_after_the_wait():
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = run_script(f"http://127.0.0.1:{port}")
    assert r.returncode == 1
    assert "did not answer in time" in r.stderr
