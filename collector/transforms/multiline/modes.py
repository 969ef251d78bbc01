"""The modes of the multiline transform: each classifies a line as it comes, from the state the
record being built is in: ``(state, line) -> (action, new state)``.

Actions: ``START`` begins a record, ``CONT`` continues the one being built, ``SINGLE`` is a record
of its own, ``HOLD`` (a blank line) continues it only if a later line does."""

from __future__ import annotations

import re
from typing import Any

START, CONT, SINGLE, HOLD = range(4)

_JAVA_CONT = re.compile(r"\s+at |\s+\.\.\. \d+ (?:more|common frames omitted)|\s*(?:Caused by|Suppressed): ")
_NODE_CONT = re.compile(r"\s+at |\s+\.\.\. \d+ more")
_PY_TB = "Traceback (most recent call last):"
_PY_CHAIN = (
    "During handling of the above exception, another exception occurred:",
    "The above exception was the direct cause of the following exception:",
)
_GO_START = re.compile(r"panic: |fatal error: |goroutine \d+ \[")
_GO_CONT = re.compile(r"\t|goroutine \d+ \[|created by |\[signal |exit status \d+$|[^\s(]+\(.*\)(?: \.\.\.)?$")


# -- modes: (state, line) -> (action, new state) -------------------------------------------------
def _java(state: Any, line: str) -> tuple[int, Any]:
    return (CONT if _JAVA_CONT.match(line) else START), None


def _node(state: Any, line: str) -> tuple[int, Any]:
    return (CONT if _NODE_CONT.match(line) else START), None


def _python(state: Any, line: str) -> tuple[int, Any]:
    if line.rstrip() == _PY_TB:
        return (CONT if state == "chain" else START), "tb"
    if state == "tb":
        if not line:
            return HOLD, "tb"
        return CONT, ("tb" if line[:1] in (" ", "\t") else "exc")
    if state in ("exc", "chain"):
        if not line:
            return HOLD, state
        if state == "exc" and line.rstrip() in _PY_CHAIN:
            return CONT, "chain"
    return SINGLE, None


def _go(state: Any, line: str) -> tuple[int, Any]:
    if state == "go":
        if not line:
            return HOLD, "go"
        if _GO_CONT.match(line):
            return CONT, "go"
        if line.startswith(("panic: ", "fatal error: ")):
            return START, "go"
        return SINGLE, None
    if _GO_START.match(line):
        return START, "go"
    return SINGLE, None


def _pattern(start: re.Pattern[str] | None, cont: re.Pattern[str] | None) -> Any:
    def classify(state: Any, line: str) -> tuple[int, Any]:
        if start is not None and start.search(line):
            return START, None
        if cont is not None:
            if cont.search(line):
                return CONT, None
            return (SINGLE if start is not None else START), None
        return CONT, None

    return classify
