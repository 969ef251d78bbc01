"""deploy/graylog/create_gelf_input.py against Graylog's REST contract, read by Graylog's own classes.

A whole Graylog server cannot run here (its OpenSearch storage module is not published where we
can reach it, and no MongoDB is: see the README).  This small HTTP server does what the script
relies on (Basic auth on every call, the `X-Requested-By` header on writes, which Graylog answers
400 without), and hands every POST /api/system/inputs body to Graylog 6.1.4's own code
(tests/peers/graylog, InputRequest): Graylog's ObjectMapper binds it to its InputCreateRequest,
the input type's configuration fields check it (MessageInput.checkConfiguration), and the answers
(201 with InputCreated, the InputSummary a later GET lists, or Graylog's 400/404) are Graylog's
classes serialised by Graylog's ObjectMapper.  So the contract is Graylog's, not ours.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from typing import Any

from tests.helpers import REPO, QuietHandler, StandInServer
from tests.peers.graylog_peer import GraylogPeer

SCRIPT = REPO / "deploy" / "graylog" / "create_gelf_input.py"
GELF_UDP = "org.graylog2.inputs.gelf.udp.GELFUDPInput"


class FakeGraylog(StandInServer):
    def __init__(self, peer: GraylogPeer, password: str = "admin", refuse_post: bool = False) -> None:
        self.password = password
        self.refuse_post = refuse_post
        self.inputs: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.checked: list[dict[str, Any]] = []  # Graylog's reading of each POST body
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
                if fake.refuse_post:  # as Graylog answers a ConfigurationException
                    return self.answer(400, {"type": "ApiError", "message": "Missing or invalid input configuration."})
                graylog = peer.input_request(body, uuid.uuid4().hex[:24])
                fake.checked.append(graylog)
                if graylog["status"] != 201:
                    return self.answer(graylog["status"], {"type": "ApiError", "message": graylog["message"]})
                fake.inputs.append(graylog["summary"])
                self.answer(201, graylog["created"])

        super().__init__(Handler)


def run_script(url: str, password: str = "admin") -> subprocess.CompletedProcess[str]:
    env = {"GRAYLOG_URL": url, "GRAYLOG_USER": "admin", "GRAYLOG_PASSWORD": password, "GRAYLOG_WAIT": "5"}
    return subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_creates_the_global_gelf_udp_input_once(graylog_peer):
    g = FakeGraylog(graylog_peer)
    try:
        r = run_script(g.url)
        assert r.returncode == 0, r.stderr
        assert "created" in r.stdout
        (inp,) = g.inputs
        assert inp["type"] == GELF_UDP and inp["global"] is True
        assert inp["attributes"]["port"] == 12201 and inp["attributes"]["bind_address"] == "0.0.0.0"
        (graylog,) = g.checked
        assert graylog["request"]["title"] == "GELF UDP (collector)" and graylog["request"]["node"] is None
        # every configuration key is one Graylog's GELF UDP input has, with a value of its type
        assert graylog["unknown_keys"] == [] and graylog["wrong_type"] == []
        assert set(graylog["request"]["configuration"]) <= set(graylog["fields"])
        posts = [h for m, _, h in g.requests if m == "POST"]
        assert posts and posts[0]["X-Requested-By"]
        # a second run (the stack restarted) finds it and creates nothing
        again = run_script(g.url)
        assert again.returncode == 0, again.stderr
        assert "already there" in again.stdout
        assert len(g.inputs) == 1
    finally:
        g.close()


def test_a_refusal_fails_the_one_shot_loudly(graylog_peer):
    g = FakeGraylog(graylog_peer, refuse_post=True)
    try:
        r = run_script(g.url)
        assert r.returncode == 1
        assert "HTTP 400" in r.stderr and "invalid input configuration" in r.stderr
    finally:
        g.close()


def test_wrong_credentials_fail_at_once(graylog_peer):
    g = FakeGraylog(graylog_peer, password="secret")
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


def test_graylogs_own_check_refuses_what_it_cannot_read(graylog_peer):
    """The checker is Graylog's: a port given as a string, a missing field, an unknown type are refused."""
    base = {"title": "t", "type": GELF_UDP, "global": True, "configuration": {"bind_address": "0.0.0.0", "port": 12201}}
    assert graylog_peer.input_request(json.dumps(base).encode())["status"] == 201
    as_string = {**base, "configuration": {"bind_address": "0.0.0.0", "port": "12201"}}
    refused = graylog_peer.input_request(json.dumps(as_string).encode())
    assert refused["status"] == 400 and refused["message"] == "Missing or invalid input configuration."
    assert '"port"' in refused["cause"]
    no_bind = {**base, "configuration": {"port": 12201}}
    assert graylog_peer.input_request(json.dumps(no_bind).encode())["status"] == 400
    typo = {**base, "configuration": {"bind_address": "0.0.0.0", "port": 12201, "recv_bufer_size": 1}}
    assert graylog_peer.input_request(json.dumps(typo).encode())["unknown_keys"] == ["recv_bufer_size"]
    other = {**base, "type": "org.graylog2.inputs.gelf.udp.GELFUDPInputs"}
    assert graylog_peer.input_request(json.dumps(other).encode())["status"] == 404
    assert graylog_peer.input_request(b'{"title": 1, "global": "maybe"}')["status"] == 400
