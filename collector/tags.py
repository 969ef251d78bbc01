"""Tags: Docker's log tag templates and Fluentd's tag patterns.

* :class:`TagTemplate` renders like Docker's ``--log-opt tag=...``: ``{{.Name}}``,
  ``{{.ID}}`` (12 characters), ``{{.FullID}}``, ``{{.ImageName}}``, ``{{.ImageID}}``,
  ``{{.ImageFullID}}``, ``{{.DaemonName}}``; anything else is literal text.
* :class:`TagPattern` matches like Fluentd's ``<match>``: ``*`` is one tag part (no dot),
  ``**`` zero or more parts, ``{a,b}`` either, and several patterns separated by spaces
  match when any does.  ``log-test-container-*`` matches ``log-test-container-A``;
  ``app.**`` matches ``app``, ``app.web`` and ``app.web.1``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

_FIELD = re.compile(r"\{\{\s*\.(\w+)\s*\}\}")
TEMPLATE_FIELDS = ("Name", "ID", "FullID", "ImageName", "ImageID", "ImageFullID", "DaemonName")


class TagTemplateError(ValueError):
    pass


class TagTemplate:
    def __init__(self, template: str) -> None:
        self.template = template
        unknown = [m.group(1) for m in _FIELD.finditer(template) if m.group(1) not in TEMPLATE_FIELDS]
        if unknown:
            raise TagTemplateError(
                f"unknown field {{{{.{unknown[0]}}}}} in tag template {template!r}; "
                f"known: {', '.join('{{.' + f + '}}' for f in TEMPLATE_FIELDS)}"
            )
        if "{{" in _FIELD.sub("", template):
            raise TagTemplateError(f"cannot parse tag template {template!r}: only {{{{.Field}}}} is supported")
        self.static = _FIELD.search(template) is None

    def render(self, info: Mapping[str, str]) -> str:
        """``info`` holds TEMPLATE_FIELDS; missing ones render empty."""
        if self.static:
            return self.template
        return _FIELD.sub(lambda m: info.get(m.group(1), ""), self.template)

    def __repr__(self) -> str:
        return f"TagTemplate({self.template!r})"


def template_info(container_id: str, name: str = "", image_name: str = "", image_id: str = "") -> dict[str, str]:
    """The fields a tag template can use, from container metadata."""
    img = image_id.removeprefix("sha256:")
    return {
        "ID": container_id[:12],
        "FullID": container_id,
        "Name": name.lstrip("/"),
        "ImageName": image_name,
        "ImageID": img[:12],
        "ImageFullID": image_id,
        "DaemonName": "docker",
    }


class TagPatternError(ValueError):
    pass


def _translate(pat: str) -> str:
    out: list[str] = []
    i, n = 0, len(pat)
    while i < n:
        c = pat[i]
        if pat.startswith("**", i):
            before_dot = bool(out) and out[-1] == r"\."
            after_dot = pat.startswith(".", i + 2)
            if before_dot:  # "a.**" -> "a" then optionally ".anything"
                out.pop()
                out.append(r"(?:\..*)?")
                i += 2
            elif after_dot and not out:  # "**.b" -> optionally "anything." then "b"
                out.append(r"(?:.*\.)?")
                i += 3
            else:
                out.append(".*")
                i += 2
        elif c == "*":
            out.append(r"[^.]*")
            i += 1
        elif c == "{":
            depth, j = 1, i + 1
            while j < n and depth:
                depth += {"{": 1, "}": -1}.get(pat[j], 0)
                j += 1
            if depth:
                raise TagPatternError(f"unbalanced '{{' in tag pattern {pat!r}")
            alts = _split_alternatives(pat[i + 1 : j - 1])
            out.append("(?:" + "|".join(_translate(a) for a in alts) + ")")
            i = j
        elif c == "}":
            raise TagPatternError(f"unbalanced '}}' in tag pattern {pat!r}")
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def _split_alternatives(body: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for c in body:
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
            continue
        depth += {"{": 1, "}": -1}.get(c, 0)
        cur.append(c)
    parts.append("".join(cur))
    return parts


class TagPattern:
    """A compiled Fluentd-style tag pattern (space-separated alternatives)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        alts = pattern.split()
        if not alts:
            raise TagPatternError("empty tag pattern")
        self._re = re.compile("|".join(f"(?:{_translate(a)})" for a in alts) + r"\Z")

    def __call__(self, tag: str) -> bool:
        return self._re.match(tag) is not None

    def __repr__(self) -> str:
        return f"TagPattern({self.pattern!r})"


@lru_cache(maxsize=256)
def tag_pattern(pattern: str) -> TagPattern:
    return TagPattern(pattern)
