"""Fixtures for the deploy tests: the collector image, built for real (tests/services/images.sh)."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest

from tests.conftest import DockerEngine
from tests.helpers import REPO


@pytest.fixture(scope="session")
def collector_image(docker_engine: DockerEngine) -> str:
    """deploy/Dockerfile built on a locally made Debian base (debootstrap + docker import, cached)."""
    t0 = time.monotonic()
    res = subprocess.run(
        [str(REPO / "tests" / "services" / "images.sh"), "build-collector"],
        capture_output=True,
        text=True,
        timeout=1500,
        env={**os.environ, "DOCKER_HOST": docker_engine.host},
        check=False,
    )
    if res.returncode != 0:
        pytest.fail(f"cannot build the collector image:\n{res.stdout}\n{res.stderr}", pytrace=False)
    print(f"collector image built in {time.monotonic() - t0:.1f}s")
    return res.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
