"""Wire formats shared by the components: Docker's json-file lines, Fluentd forward, GELF, syslog,
journal export, and the time formatting they share (times.py)."""

from __future__ import annotations


class InputError(ValueError):
    """Input that cannot be accepted. ``reason`` is short and stable: the ``reason`` label of
    ``collector_errors_total`` and the key of the rate-limited log line; ``detail`` says what was
    wrong with this one (for the dead letter and the log)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
