"""A line a logging driver split into parts, being rejoined: the one rule every reader of
Docker's split lines shares (json-file and CRI files, the forward protocol's ``partial_*``
fields, the journal's ``CONTAINER_PARTIAL_*``).

Docker splits a line longer than 16 KiB; its parts are kept until the last one arrives, up to
``max_bytes`` of UTF-8 in all.  What goes past the cap is cut at a character boundary and the
line is marked ``truncated``; later parts are ignored (they still end the line).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, kw_only=True)
class PartialLine:
    parts: list[str] = field(default_factory=list)
    size: int = 0  # bytes kept so far (UTF-8)
    truncated: bool = False

    def add(self, text: str, max_bytes: int) -> bool:
        """Keep ``text`` within ``max_bytes`` in all; False when it was cut or ignored."""
        if self.truncated:
            return False
        room = max_bytes - self.size
        n = len(text)
        if n <= room and (n * 4 <= room or len(text.encode()) <= room):
            self.parts.append(text)
            self.size += n if text.isascii() else len(text.encode())
            return True
        self.parts.append(text.encode()[: max(room, 0)].decode("utf-8", "ignore"))
        self.size = max_bytes
        self.truncated = True
        return False

    def text(self) -> str:
        return "".join(self.parts)
