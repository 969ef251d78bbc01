"""TLS and credentials on the wire, in front of a real engine.

The test engines run without security, so a small HTTPS proxy stands in front of Elasticsearch
8: it terminates TLS with a certificate made here, demands one Authorization header, answers
401 like Elasticsearch otherwise, and forwards everything else to the real node.
"""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.helpers import Collector, EngineProxy, docker_lines, run_once, wait_until

CID = "cd" * 32


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def pipeline(tmp_path: Path, url: str, target: str, **sink: object) -> dict:
    d = tmp_path / "containers" / CID
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{CID}-json.log").write_bytes(docker_lines([f"secure {i}" for i in range(25)]))
    return {
        "data_dir": str(tmp_path / "state"),
        "sources": {"files": {"type": "docker_json_file", "paths": [str(d / "*-json.log")]}},
        "sinks": {
            "es": {
                "type": "elasticsearch",
                "inputs": ["files"],
                "hosts": [url],
                "data_stream": target,
                "retry": {"initial_backoff": 0.1, "max_backoff": 0.5},
                **sink,
            }
        },
        "shutdown_timeout": 2,
    }


@pytest.mark.parametrize(
    ("auth", "header"),
    [
        ({"user": "elastic", "password": "s3cret"}, "Basic " + base64.b64encode(b"elastic:s3cret").decode()),
        ({"api_key": "key-id:key-secret"}, "ApiKey " + base64.b64encode(b"key-id:key-secret").decode()),
        ({"api_key": "ZW5jb2RlZA=="}, "ApiKey ZW5jb2RlZA=="),
        ({"bearer": "token-123"}, "Bearer token-123"),
    ],
)
def test_tls_with_a_ca_file_and_each_kind_of_credentials(es8, es_target, tmp_path, certificate, auth, header):
    cert, key = certificate
    proxy = EngineProxy(es8.url, tls=(cert, key), authorization=header)
    try:
        cfg = pipeline(tmp_path, proxy.url, es_target, auth=auth, tls={"ca_file": str(cert)})
        assert run_once(cfg) == 0
    finally:
        proxy.close()
    assert es8.count(es_target) == 25
    assert {r.authorization for r in proxy.seen} == {header}


def _run_failing(tmp_path: Path, cfg: dict, until: Callable[[str], bool]) -> tuple[int, str]:
    """Run the collector until its log says ``until``, then stop it."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(cfg))
    col = Collector("run", "-c", str(path)).start(tmp_path / "err.log")
    try:
        wait_until(lambda: until(col.stderr()), timeout=60, what="the failure to be said")
    finally:
        rc = col.stop()
    return rc, col.stderr()


def test_an_untrusted_certificate_is_refused_and_said_so(es8, es_target, tmp_path, certificate):
    cert, key = certificate
    proxy = EngineProxy(es8.url, tls=(cert, key), authorization="Bearer t")
    try:
        rc, err = _run_failing(
            tmp_path,
            pipeline(tmp_path, proxy.url, es_target, auth={"bearer": "t"}),
            until=lambda err: "certificate verify failed" in err,
        )
    finally:
        proxy.close()
    assert rc == 3  # nothing delivered, nothing acknowledged: read again next time
    assert proxy.url in err and "TLS error" in err and "certificate verify failed" in err
    assert es8.count(es_target) == 0


def test_wrong_credentials_are_named_retried_and_never_logged(es8, es_target, tmp_path, certificate):
    cert, key = certificate
    proxy = EngineProxy(es8.url, tls=(cert, key), authorization="Basic " + base64.b64encode(b"elastic:right").decode())
    try:
        cfg = pipeline(
            tmp_path,
            proxy.url,
            es_target,
            auth={"user": "elastic", "password": "wrong-pw-4242"},
            tls={"ca_file": str(cert)},
        )
        rc, err = _run_failing(tmp_path, cfg, until=lambda err: "wrong credentials" in err and len(proxy.seen) >= 2)
    finally:
        proxy.close()
    assert rc == 3
    assert "HTTP 401" in err and "wrong credentials" in err and proxy.url in err
    assert "wrong-pw-4242" not in err
    assert len(proxy.seen) >= 2  # it kept trying (with backoff), it did not give up or crash


def test_verify_off_is_possible_but_explicit(es8, es_target, tmp_path, certificate):
    cert, key = certificate
    proxy = EngineProxy(es8.url, tls=(cert, key), authorization="Bearer t")
    try:
        cfg = pipeline(tmp_path, proxy.url, es_target, auth={"bearer": "t"}, tls={"verify": False})
        assert run_once(cfg) == 0
    finally:
        proxy.close()
    assert es8.count(es_target) == 25


def test_server_name_and_fingerprint_of_the_one_client_tls_shape(certificate):
    """Issue 17: the sinks share one `tls` block; `server_name` (GELF's) is checked here too, and
    `fingerprint` pins a self-signed certificate without a CA. The proxy answers 401 before any
    engine is needed: an answer means the TLS handshake passed."""
    import hashlib
    import ssl

    from collector.sinks.elasticsearch.client import EngineClient, EngineUnavailableError
    from collector.sinks.elasticsearch.config import TlsConfig

    cert, key = certificate
    proxy = EngineProxy("http://127.0.0.1:9", tls=(cert, key), authorization="Bearer t")

    def answers(**tls: object) -> bool:
        client = EngineClient([proxy.url], tls=TlsConfig.model_validate(tls), timeout=10)
        try:
            client.request("GET", "/")
            return True
        except EngineUnavailableError:
            return False
        finally:
            client.close()

    pin = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.read_text())).hexdigest()
    try:
        assert answers(ca_file=str(cert))
        assert answers(ca_file=str(cert), server_name="localhost")
        assert not answers(ca_file=str(cert), server_name="elsewhere.example")
        assert answers(fingerprint=pin)
        assert not answers(fingerprint="00" * 32)
    finally:
        proxy.close()
