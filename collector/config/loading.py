"""The configuration file read: YAML with the line of every key, ``${VAR}`` replaced from the
environment, and the problems found on the way, each as ``file:line: key: what``
(:class:`ConfigError`).  The models and their checks are in ``collector/config/__init__.py``."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

log = logging.getLogger("collector.config")

_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Loc = tuple[Any, ...]


class ConfigError(Exception):
    """A configuration that cannot run; ``str()`` lists every problem, one a line, each with the
    file, the line and the key (``file:line: key: what``), in the order of the file."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class _Found:
    """Problems found while reading a document, before the schema is checked."""

    filename: str
    lines: dict[Loc, int] = field(default_factory=dict)
    problems: list[tuple[int, str]] = field(default_factory=list)  # (line, "file:line: key: what")
    unset: set[Loc] = field(default_factory=set)  # values whose ${VAR} was not set: no schema noise

    def add(self, loc: Loc, line: int | None, msg: str) -> None:
        key = _dotted(loc)
        where = f"{self.filename}:{line}" if line else self.filename
        self.problems.append((line or 0, f"{where}: {key + ': ' if key else ''}{msg}"))


def _dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc)


# -- YAML with line numbers ---------------------------------------------------------------------
# A pipeline file has a few hundred values. An alias (``*name``) repeats what its anchor holds, so
# a few hundred bytes can name billions of values ("billion laughs") or a value that contains
# itself: both are refused with a ConfigError instead of exhausting memory or the stack.
MAX_CONFIG_VALUES = 100_000  # values after aliases are expanded
MAX_CONFIG_DEPTH = 64  # nesting of mappings and lists


class _Loader(yaml.SafeLoader):
    pass


def _load_with_lines(text: str, found: _Found) -> Any:
    lines = found.lines
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{found.filename}:{mark.line + 1}" if mark else found.filename
        raise ConfigError([f"{where}: not valid YAML: {getattr(e, 'problem', e)}"]) from None
    except RecursionError:  # the composer recurses once per level
        raise ConfigError([f"{found.filename}: nested deeper than {MAX_CONFIG_DEPTH} levels"]) from None
    if node is None:
        raise ConfigError([f"{found.filename}: empty configuration"])
    loader = _Loader("")
    filename = found.filename
    built = 0
    open_nodes: set[int] = set()  # the nodes being built, outermost first: an alias to one is a loop

    def where(n: yaml.Node) -> str:
        return f"{filename}:{n.start_mark.line + 1}"

    def scalar(n: yaml.Node) -> Any:
        try:
            return loader.construct_object(n, deep=True)
        except yaml.YAMLError as e:
            raise ConfigError([f"{where(n)}: {getattr(e, 'problem', None) or e}"]) from None

    def build(n: yaml.Node, path: Loc) -> Any:
        nonlocal built
        built += 1
        if built > MAX_CONFIG_VALUES:
            raise ConfigError(
                [
                    f"{where(n)}: the configuration expands to more than {MAX_CONFIG_VALUES} values "
                    "(YAML aliases repeat what their anchor holds; write the values out)"
                ]
            )
        if len(path) > MAX_CONFIG_DEPTH:
            raise ConfigError([f"{where(n)}: nested deeper than {MAX_CONFIG_DEPTH} levels"])
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode | yaml.SequenceNode):
            if id(n) in open_nodes:
                raise ConfigError([f"{where(n)}: a YAML alias refers to a value that contains it"])
            open_nodes.add(id(n))
            try:
                if isinstance(n, yaml.SequenceNode):
                    return [build(v, (*path, i)) for i, v in enumerate(n.value)]
                out: dict[Any, Any] = {}
                for k, v in n.value:
                    line = k.start_mark.line + 1
                    if not isinstance(k, yaml.ScalarNode):
                        found.add(path, line, "a key must be a plain value, not a list or mapping")
                        continue
                    key = scalar(k)
                    if key in out:
                        first = lines.get((*path, key))
                        found.add((*path, key), line, f"duplicate key {key!r} (first at line {first})")
                        continue
                    lines[(*path, key)] = line
                    out[key] = build(v, (*path, key))
                return out
            finally:
                open_nodes.discard(id(n))
        value = scalar(n)
        if isinstance(value, str) and "$" in value:
            try:
                value = expand_env(value, "")
            except ConfigError as e:
                found.unset.add(path)
                for problem in e.problems:
                    found.add(path, n.start_mark.line + 1, problem.removeprefix(": "))
        if isinstance(value, str) and "\0" in value:  # no path, address or pattern has one
            found.unset.add(path)
            found.add(path, n.start_mark.line + 1, "a NUL character in the value")
        return value

    return build(node, ())


# Variables the shipped pipelines and deploy/ read before they all became COLLECTOR_* (issue 17):
# one set for an older pipeline still works, with a warning, instead of silently giving the default
RENAMED_ENV = frozenset(
    {
        "ES_URL",
        "ES_DATA_STREAM",
        "ES_PASSWORD",
        "DOCKER_ROOT",
        "READ_FROM",
        "OUT_FILE",
        "FORWARD_LISTEN",
        "TAG_PATTERN",
        "GELF_UDP",
        "GELF_TCP",
        "GRAYLOG_GELF",
    }
)
_said_renamed: set[str] = set()


def _old_env(var: str, where: str) -> str | None:
    """The value of ``var``'s old name (``ES_URL`` for ``COLLECTOR_ES_URL``) when only that is set."""
    old = var.removeprefix("COLLECTOR_")
    if old == var or old not in RENAMED_ENV or old not in os.environ:
        return None
    if var not in _said_renamed:
        _said_renamed.add(var)
        log.warning(
            "%s: %s is not set but %s is: using it; that old name will stop working, set %s instead",
            where,
            var,
            old,
            var,
        )
    return os.environ[old]


def expand_env(value: str, where: str) -> str:
    """``${VAR}`` / ``${VAR:-default}`` in a value replaced from the environment, like Compose
    (after parsing: comments are left alone; a number from the environment is still checked
    as a number by the schema). ``$$`` is a literal ``$``."""
    problems: list[str] = []

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        var, default = m.group(1), m.group(2)
        v = os.environ.get(var)
        if v is None:
            v = _old_env(var, where)
        if v is None:
            if default is None:
                problems.append(f"{where}: environment variable {var} is not set (use ${{{var}:-default}})")
                return ""
            return default
        return v

    out = _ENV.sub(sub, value)
    if problems:
        raise ConfigError(problems)
    return out


def _line_of(loc: Loc, lines: dict[Loc, int]) -> int | None:
    """The line of ``loc``, or of its closest parent that has one."""
    while loc and loc not in lines:
        loc = loc[:-1]
    return lines.get(loc)
