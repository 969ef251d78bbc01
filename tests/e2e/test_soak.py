"""The short soak: bench/soak.py for 3 minutes, with the assertions of the 30-minute one.

Real containers on the private Docker engine writing 2,000 lines/s with rotation every few
seconds, forward clients connecting and disconnecting every second, GELF over UDP, the search
engine restarted every minute; lost 0, duplicated 0, bounded RSS, constant fds and threads, and
exit code 0 once everything is delivered (``assess`` in bench/soak.py). Marked ``soak``: run it
alone with ``pytest -m soak``.
"""

from __future__ import annotations

import pytest

from bench.soak import Engine, Options, assess, report, run_soak


@pytest.mark.soak
@pytest.mark.timeout(1500)
def test_soak_3_minutes(docker_engine, es8, tmp_path):
    opts = Options(minutes=3, restart_every=60, warmup=1, sample_every=5, state_root=str(tmp_path))
    result = run_soak(opts, docker_engine.host, docker_engine.root, Engine("es8", es8.url))
    print("\n" + report(result))
    assert not result.failures, result.failures  # what assess() found, and engine control errors
    assert result.failures == assess(result, opts)
