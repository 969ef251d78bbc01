"""Create Graylog's global GELF UDP input once, through its REST API (a one-shot compose service).

    GRAYLOG_URL=http://graylog:9000 GRAYLOG_USER=admin GRAYLOG_PASSWORD=admin python3 create_gelf_input.py

Waits until the API answers (Graylog takes a minute to start), then: GET /api/system/inputs; if
a GELF UDP input on GELF_PORT exists, says so and exits 0; otherwise POST /api/system/inputs
(with the `X-Requested-By` header Graylog requires on every write) and exits 0 when Graylog
answers 201 with the new input's id. Any other answer is printed and exits 1.
Standard library only: it runs in the collector image, or anywhere with Python 3.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

GELF_UDP = "org.graylog2.inputs.gelf.udp.GELFUDPInput"


def call(method: str, url: str, auth: str, body: Any = None, timeout: float = 10) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    req.add_header("Accept", "application/json")
    req.add_header("X-Requested-By", "collector")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def main() -> int:
    base = os.environ.get("GRAYLOG_URL", "http://graylog:9000").rstrip("/")
    auth = f"{os.environ.get('GRAYLOG_USER', 'admin')}:{os.environ.get('GRAYLOG_PASSWORD', 'admin')}"
    port = int(os.environ.get("GELF_PORT", "12201"))
    title = os.environ.get("GELF_INPUT_TITLE", "GELF UDP (collector)")
    deadline = time.monotonic() + float(os.environ.get("GRAYLOG_WAIT", "300"))
    while True:
        try:
            status, answer = call("GET", f"{base}/api/system/inputs", auth)
        except OSError as e:  # not up yet: refused, DNS, reset
            status, answer = 0, str(e)
        if status == 200:
            break
        if status in (401, 403):
            print(f"graylog-input: {base} refused the credentials (HTTP {status}): {answer}", file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            print(f"graylog-input: {base} did not answer in time (last: HTTP {status} {answer})", file=sys.stderr)
            return 1
        time.sleep(3)
    for i in answer.get("inputs", []):
        attrs = i.get("attributes") or {}
        if i.get("type") == GELF_UDP and int(attrs.get("port", -1)) == port:
            print(f"graylog-input: GELF UDP input on {port} already there ({i.get('title')}, id {i.get('id')})")
            return 0
    body = {
        "title": title,
        "type": GELF_UDP,
        "global": True,
        "configuration": {
            "bind_address": "0.0.0.0",
            "port": port,
            "recv_buffer_size": 262144,
            "decompress_size_limit": 8388608,
            "number_worker_threads": 2,
        },
    }
    status, answer = call("POST", f"{base}/api/system/inputs", auth, body)
    if status in (200, 201) and isinstance(answer, dict) and answer.get("id"):
        print(f"graylog-input: created {title!r} on udp/{port} (id {answer['id']})")
        return 0
    print(f"graylog-input: Graylog refused the input (HTTP {status}): {answer}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
