"""The Node.js forward client peer (tests/peers/node-fluent: @fluent-org/logger, Fluentd's own).

Installed by tests/prepare.d/55-node-peers.sh into ``$COLLECTOR_SERVICES_DIR/node/node-fluent``
(``npm ci`` from the lock file); :func:`install` runs that same script (it returns at once when
the install is current), so a single test file run by hand works too.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from tests.helpers import REPO, SERVICES_DIR

SCRIPT = REPO / "tests" / "prepare.d" / "55-node-peers.sh"
_lock = threading.Lock()


def install() -> Path:
    """The directory holding send.js and its node_modules."""
    with _lock:
        if shutil.which("node") is None:
            pytest.fail("Node.js (node, npm) is needed for the @fluent-org/logger peer", pytrace=False)
        res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=600, check=False)
        if res.returncode != 0:
            pytest.fail(f"{SCRIPT} failed:\n{res.stdout}\n{res.stderr}", pytrace=False)
        return SERVICES_DIR / "node" / "node-fluent"
