"""The pipeline configuration: one YAML file, validated before anything starts.

    data_dir: /var/lib/collector
    sources:
      containers: {type: docker_json_file, paths: ["/var/lib/docker/containers/*/*-json.log"]}
    transforms:
      meta: {type: docker_metadata, inputs: [containers]}
    sinks:
      out: {type: file, inputs: [meta], path: /tmp/out.ndjson}

Components are a discriminated union on ``type`` (registry.py lists them).  Unknown keys,
wrong types, dangling ``inputs`` and cycles are errors that name the file, the line and the
key.  ``${VAR}`` and ``${VAR:-default}`` in strings are replaced from the environment.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from collector import registry
from collector.component import split_hostport
from collector.retry import RetryConfig
from collector.tags import TagPatternError, tag_pattern

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")
_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def default_data_dir() -> str:
    if os.geteuid() == 0:
        return "/var/lib/collector"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "collector")


def _union(table: dict[str, tuple[str, str, str]]) -> Any:
    classes = registry.config_classes(table)
    if len(classes) == 1:
        return classes[0]
    from typing import Union  # noqa: PLC0415

    return Annotated[Union[tuple(classes)], Field(discriminator="type")]  # noqa: UP007


SourceConfig = _union(registry.SOURCES)
TransformConfigUnion = _union(registry.TRANSFORMS)
SinkConfigUnion = _union(registry.SINKS)


class ApiConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    listen: str = Field("127.0.0.1:8686", description="host:port of the /health and /metrics endpoint.")

    @field_validator("listen")
    @classmethod
    def _hostport(cls, v: str) -> str:
        split_hostport(v)
        return v


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: str = Field(default_factory=default_data_dir, description="Checkpoints, buffers, dead letters.")
    sources: dict[str, SourceConfig] = Field(min_length=1)  # type: ignore[valid-type]
    transforms: dict[str, TransformConfigUnion] = Field(default_factory=dict)  # type: ignore[valid-type]
    sinks: dict[str, SinkConfigUnion] = Field(min_length=1)  # type: ignore[valid-type]
    api: ApiConfig | None = Field(None, description="Serve /health and /metrics (off when absent).")
    shutdown_timeout: float = Field(30.0, gt=0, description="Seconds to drain on SIGTERM before giving up.")
    checkpoint_interval: float = Field(1.0, gt=0, description="Seconds between checkpoint writes.")
    restart: RetryConfig = Field(
        default_factory=lambda: RetryConfig(initial_backoff=1.0, max_backoff=60.0, max_elapsed=300.0),
        description="A sink that crashed (an unexpected error; an unreachable destination is retried inside "
        "the sink) is restarted after this backoff and handed again what it held; when it keeps crashing "
        "without delivering anything for `max_elapsed` seconds the collector stops with exit code 1.",
    )

    @model_validator(mode="after")
    def _graph(self) -> PipelineConfig:
        names: dict[str, str] = {}
        for kind, comps in (("source", self.sources), ("transform", self.transforms), ("sink", self.sinks)):
            for n in comps:
                if not NAME.match(n):
                    raise ValueError(f"{kind} name {n!r}: use letters, digits, '_' and '-'")
                if n in names:
                    raise ValueError(f"{kind} {n!r} has the same name as a {names[n]}")
                names[n] = kind
        outputs = set(self.sources)
        for n, t in self.transforms.items():
            outputs.add(n)
            for port in _ports(t):
                outputs.add(f"{n}.{port}")
        for kind, comps in (("transform", self.transforms), ("sink", self.sinks)):
            for n, c in comps.items():
                for i in c.inputs:
                    if i not in outputs:
                        hint = "" if "." in i else f" (known: {', '.join(sorted(outputs))})"
                        raise ValueError(f"{kind} {n!r}: input {i!r} is not a source or transform{hint}")
                    if i.split(".")[0] in self.sinks:
                        raise ValueError(f"{kind} {n!r}: input {i!r} is a sink")
                match = getattr(c, "match", None)
                if match:
                    try:
                        tag_pattern(match)
                    except TagPatternError as e:
                        raise ValueError(f"{kind} {n!r}: match: {e}") from None
        # cycles among transforms
        deps = {
            n: {i.split(".")[0] for i in t.inputs if i.split(".")[0] in self.transforms}
            for n, t in self.transforms.items()
        }
        seen: dict[str, int] = {}

        def visit(n: str, path: list[str]) -> None:
            if seen.get(n) == 2:
                return
            if seen.get(n) == 1:
                raise ValueError("transforms form a cycle: " + " -> ".join([*path, n]))
            seen[n] = 1
            for d in deps[n]:
                visit(d, [*path, n])
            seen[n] = 2

        for n in deps:
            visit(n, [])
        return self

    def consumers(self, output: str) -> list[str]:
        return [n for n, c in {**self.transforms, **self.sinks}.items() if output in c.inputs]


def _ports(t: Any) -> list[str]:
    routes = getattr(t, "routes", None)
    return [*routes, "_unmatched"] if routes else []


class ConfigError(Exception):
    """A configuration that cannot run; ``str()`` lists every problem with file and line."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# -- YAML with line numbers ---------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    pass


def _load_with_lines(text: str, filename: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    lines: dict[tuple[Any, ...], int] = {}
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark else filename
        raise ConfigError([f"{where}: not valid YAML: {getattr(e, 'problem', e)}"]) from None
    if node is None:
        raise ConfigError([f"{filename}: empty configuration"])
    loader = _Loader("")

    def build(n: yaml.Node, path: tuple[Any, ...]) -> Any:
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for k, v in n.value:
                key = loader.construct_object(k, deep=True)
                if key in out:
                    raise ConfigError([f"{filename}:{k.start_mark.line + 1}: duplicate key {key!r}"])
                lines[(*path, key)] = k.start_mark.line + 1
                out[key] = build(v, (*path, key))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [build(v, (*path, i)) for i, v in enumerate(n.value)]
        value = loader.construct_object(n, deep=True)
        if isinstance(value, str) and "$" in value:
            value = expand_env(value, f"{filename}:{n.start_mark.line + 1}")
        return value

    return build(node, ()), lines


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
            if default is None:
                problems.append(f"{where}: environment variable {var} is not set (use ${{{var}:-default}})")
                return ""
            return default
        return v

    out = _ENV.sub(sub, value)
    if problems:
        raise ConfigError(problems)
    return out


def _line_of(loc: tuple[Any, ...], data: Any, lines: dict[tuple[Any, ...], int]) -> tuple[tuple[Any, ...], int]:
    """Drop the discriminator tags pydantic puts in ``loc``; find the closest line."""
    clean: list[Any] = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part not in cur and cur.get("type") == part:
            continue
        clean.append(part)
        cur = (
            cur.get(part)
            if isinstance(cur, dict)
            else (cur[part] if isinstance(cur, list) and isinstance(part, int) and part < len(cur) else None)
        )
    path = tuple(clean)
    while path and path not in lines:
        path = path[:-1]
    return tuple(clean), lines.get(path, 1)


def _format_error(err: dict[str, Any], data: Any, lines: dict[tuple[Any, ...], int], filename: str) -> str:
    loc, line = _line_of(tuple(err["loc"]), data, lines)
    dotted = ".".join(str(p) for p in loc)
    typ = err["type"]
    msg = err["msg"]
    if typ == "extra_forbidden":
        parent = ".".join(str(p) for p in loc[:-1])
        msg = f"unknown key {loc[-1]!r}" + (f" in {parent}" if parent else "")
        return f"{filename}:{line}: {msg}"
    if typ == "union_tag_invalid":
        msg = f"unknown type {err['input'].get('type')!r}; expected one of {err['ctx']['expected_tags']}"
    elif typ == "union_tag_not_found":
        msg = "missing `type`"
    elif typ == "value_error":
        msg = msg.removeprefix("Value error, ")
    return f"{filename}:{line}: {dotted + ': ' if dotted else ''}{msg}"


def parse_config(text: str, filename: str = "<config>") -> PipelineConfig:
    data, lines = _load_with_lines(text, filename)
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}:1: the configuration must be a mapping (sources, transforms, sinks)"])
    return validate_config(data, filename, lines)


def validate_config(
    data: dict[str, Any], filename: str = "<config>", lines: dict[tuple[Any, ...], int] | None = None
) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(
            [_format_error(err, data, lines or {}, filename) for err in e.errors(include_url=False)]
        ) from None


def load_config(path: str | Path) -> PipelineConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    return parse_config(text, str(path))
