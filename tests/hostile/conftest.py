"""Fixtures of the hostile-input suite (see harness.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.harness import Target


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Callable[..., Target]]:
    """``collector(**overrides)`` starts the real collector (see :class:`Target`); every one
    started is stopped at the end of the test."""
    made: list[Target] = []

    def start(**kw: Any) -> Target:
        t = Target(tmp_path / f"collector{len(made)}", **kw)
        made.append(t)
        return t.start()

    yield start
    for t in made:
        t.__exit__(None, None, None)
