"""The pipeline configuration: one YAML file, validated before anything starts.

    data_dir: /var/lib/collector
    sources:
      containers: {type: docker_json_file, paths: ["/var/lib/docker/containers/*/*-json.log"]}
    transforms:
      meta: {type: docker_metadata, inputs: [containers]}
    sinks:
      out: {type: file, inputs: [meta], path: /tmp/out.ndjson}

Components are a discriminated union on ``type`` (registry.py lists them; schema.py turns the
models into the JSON Schema and docs/configuration.md).  Unknown keys, wrong types, unset
variables, duplicate keys, dangling ``inputs`` and cycles are all reported at once, each as
``file:line: key: what`` in the order of the file (:class:`ConfigError`).  ``${VAR}`` and
``${VAR:-default}`` in strings are replaced from the environment.  loading.py reads the file (YAML
with the line of every key, the variables, :class:`ConfigError`); this module has the models.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from collector import registry
from collector.component import TransformConfig
from collector.config.loading import (
    ConfigError,
    Loc,
    _dotted,
    _Found,
    _line_of,
    _load_with_lines,
)
from collector.config.loading import (
    expand_env as expand_env,  # re-exported: tests/test_schema.py imports it from here
)
from collector.deadletter import DeadLetterConfig
from collector.listeners import API_SCHEMES, DEFAULT_API_LISTEN, parse_listen
from collector.retry import RetryConfig
from collector.tags import TagPatternError, tag_pattern

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*\Z")


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
    listen: str = Field(
        DEFAULT_API_LISTEN,
        description="tcp://HOST:PORT of the /health, /ready, /metrics and /tap endpoint: one URL, the address "
        "`collector health`, `top`, `tap` and Prometheus are pointed at (port 0 picks a free one).",
    )

    @field_validator("listen")
    @classmethod
    def _url(cls, v: str) -> str:
        parse_listen(v, API_SCHEMES)
        return v


class RestartConfig(BaseModel):
    """How a crashed sink is restarted."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    retry: RetryConfig = Field(
        default_factory=lambda: RetryConfig(initial_backoff=1.0, max_backoff=60.0, max_elapsed=300.0),
        description="Backoff between restarts; when the sink keeps crashing without delivering anything for "
        "`max_elapsed` seconds, the collector stops with exit code 1.",
    )


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    data_dir: str = Field(
        default_factory=default_data_dir,
        description="Checkpoints, buffers, dead letters. Checkpoints are kept per pipeline (its outputs) "
        "inside it, so pipelines with different outputs can share it (one at a time: it is locked).",
        json_schema_extra={"x-default": "`/var/lib/collector` as root, else `~/.local/state/collector`"},
    )
    sources: dict[str, SourceConfig] = Field(  # type: ignore[valid-type]
        min_length=1, description="Where records come from: name -> source (its `type` and keys)."
    )
    transforms: dict[str, TransformConfigUnion] = Field(  # type: ignore[valid-type]
        default_factory=dict, description="What rewrites them on the way: name -> transform."
    )
    sinks: dict[str, SinkConfigUnion] = Field(  # type: ignore[valid-type]
        min_length=1, description="Where they are delivered: name -> sink."
    )
    docker_root: str = Field(
        "/var/lib/docker",
        description="Docker's data root, for every component of the pipeline: `docker_json_file` follows "
        "`<docker_root>/containers/*/*-json.log` by default, `docker_metadata` reads config.v2.json there.",
    )
    api: ApiConfig | None = Field(None, description="Serve /health and /metrics (off when absent).")
    shutdown_timeout: float = Field(30.0, gt=0, description="Seconds to drain on SIGTERM before giving up.")
    checkpoint_interval: float = Field(1.0, gt=0, description="Seconds between checkpoint writes.")
    restart: RestartConfig = Field(
        default_factory=RestartConfig,
        description="A sink that crashed (an unexpected error; an unreachable destination is retried inside "
        "the sink) is restarted and handed again what it held.",
    )
    dead_letter: DeadLetterConfig = Field(
        default_factory=DeadLetterConfig, description="The disk dead letters may take, per component."
    )

    _lines: dict[tuple[Any, ...], int] = PrivateAttr(default_factory=dict)  # key -> line in its file

    @model_validator(mode="after")
    def _graph(self, info: ValidationInfo) -> PipelineConfig:
        if info.context and info.context.get("graph_checked"):
            return self  # validate_config checked the raw document (with line numbers)
        problems = graph_problems(self.model_dump(include={"sources", "transforms", "sinks"}))
        if problems:
            raise ValueError("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
        return self

    def consumers(self, output: str) -> list[str]:
        return [n for n, c in {**self.transforms, **self.sinks}.items() if output in c.inputs]


def _ports(t: dict[str, object]) -> list[str]:
    """The named outputs of a transform in the raw document, as its config class declares them."""
    type_ = t.get("type")
    if not isinstance(type_, str) or type_ not in registry.TRANSFORMS:
        return []  # the schema reports an unknown type
    config_class: type[TransformConfig] = registry.config_class(registry.TRANSFORMS, type_)
    return config_class.output_ports(t)


def graph_problems(data: Any) -> list[tuple[Loc, str]]:
    """Every problem of the component graph (names, inputs, tag patterns, cycles), each with
    the key it is about.  Works on the raw document too, tolerating parts of the wrong shape
    (the schema reports those), so that one run of ``validate`` reports everything."""
    if not isinstance(data, dict):
        return []
    problems: list[tuple[Loc, str]] = []
    groups: dict[str, dict[str, Any]] = {}
    for section in ("sources", "transforms", "sinks"):
        comps = data.get(section)
        groups[section] = {n: c for n, c in comps.items() if isinstance(c, dict)} if isinstance(comps, dict) else {}
    names: dict[str, str] = {}
    for section, comps in groups.items():
        kind = section[:-1]
        for n in comps:
            if not isinstance(n, str) or not NAME.match(n):
                problems.append(((section, n), f"{kind} name {n!r}: use letters, digits, '_' and '-'"))
            elif n in names:
                problems.append(((section, n), f"{kind} {n!r} has the same name as a {names[n]}"))
            else:
                names[n] = kind
    outputs = set(groups["sources"])
    for n, t in groups["transforms"].items():
        outputs.add(n)
        outputs.update(f"{n}.{port}" for port in _ports(t))
    for section in ("transforms", "sinks"):
        kind = section[:-1]
        for n, c in groups[section].items():
            inputs = c.get("inputs")
            for idx, i in enumerate(inputs if isinstance(inputs, list) else []):
                if not isinstance(i, str):
                    continue
                if i.split(".")[0] in groups["sinks"]:
                    problems.append(((section, n, "inputs", idx), f"{kind} {n!r}: input {i!r} is a sink"))
                elif i not in outputs:
                    hint = "" if "." in i else f" (known: {', '.join(sorted(outputs))})"
                    problems.append(
                        ((section, n, "inputs", idx), f"{kind} {n!r}: input {i!r} is not a source or transform{hint}")
                    )
            match = c.get("match")
            if isinstance(match, str) and match:
                try:
                    tag_pattern(match)
                except TagPatternError as e:
                    problems.append(((section, n, "match"), f"{kind} {n!r}: match: {e}"))
    # cycles among transforms (each reported once, at the transform that closes it)
    transforms = groups["transforms"]
    deps = {
        n: [i.split(".")[0] for i in t.get("inputs") or [] if isinstance(i, str) and i.split(".")[0] in transforms]
        for n, t in transforms.items()
        if isinstance(t.get("inputs") or [], list)
    }
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        if state.get(n) == 2:
            return
        if state.get(n) == 1:
            cycle = [*path[path.index(n) :], n]
            problems.append((("transforms", n, "inputs"), "transforms form a cycle: " + " -> ".join(cycle)))
            return
        state[n] = 1
        for d in deps.get(n, ()):
            visit(d, [*path, n])
        state[n] = 2

    for n in deps:
        visit(n, [])
    return problems


def _clean_loc(loc: Loc, data: Any) -> Loc:
    """``loc`` without the discriminator tags pydantic puts in it."""
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
    return tuple(clean)


def _schema_problem(err: dict[str, Any], data: Any, found: _Found) -> None:
    loc = _clean_loc(tuple(err["loc"]), data)
    if any(loc[: len(u)] == u for u in found.unset):
        return  # its ${VAR} is not set: said already
    typ = err["type"]
    msg = err["msg"]
    if typ == "extra_forbidden":
        parent = _dotted(loc[:-1])
        msg = f"unknown key {loc[-1]!r}" + (f" in {parent}" if parent else "")
        line = _line_of(loc, found.lines)
        found.problems.append((line or 0, f"{found.filename}:{line}: {msg}" if line else f"{found.filename}: {msg}"))
        return
    if typ == "union_tag_invalid":
        msg = f"unknown type {err['input'].get('type')!r}; expected one of {err['ctx']['expected_tags']}"
    elif typ == "union_tag_not_found":
        msg = "missing `type`"
    elif typ == "value_error":
        msg = msg.removeprefix("Value error, ")
    found.add(loc, _line_of(loc, found.lines), msg)


def parse_config(text: str, filename: str = "<config>") -> PipelineConfig:
    found = _Found(filename)
    data = _load_with_lines(text, found)
    if not isinstance(data, dict):
        raise ConfigError([f"{filename}:1: the configuration must be a mapping (sources, transforms, sinks)"])
    return _validate(data, found)


def validate_config(
    data: dict[str, Any], filename: str = "<config>", lines: dict[Loc, int] | None = None
) -> PipelineConfig:
    """A document (from YAML, or built by the command line) checked: every problem at once."""
    return _validate(data, _Found(filename, dict(lines or {})))


def _validate(data: dict[str, Any], found: _Found) -> PipelineConfig:
    for loc, msg in graph_problems(data):
        found.add(loc[:-1] if isinstance(loc[-1], int) else loc, _line_of(loc, found.lines), msg)
    try:
        cfg = PipelineConfig.model_validate(data, context={"graph_checked": True})
    except ValidationError as e:
        for err in e.errors(include_url=False):
            _schema_problem(err, data, found)
        cfg = None
    if found.problems or cfg is None:
        found.problems.sort(key=lambda p: p[0])  # in the order of the file (stable within a line)
        raise ConfigError([text for _, text in found.problems])
    cfg._lines = found.lines
    return cfg


def unreadable_files(cfg: PipelineConfig, filename: str = "<config>") -> list[str]:
    """Files the pipeline names (every ``*_file`` key: certificates, keys, CA bundles) that this
    host cannot read: checked before running (not by ``validate``, which checks the file, not the
    host it will run on), so a missing certificate is a configuration error naming its key
    instead of a component failing with the operating system's words."""
    problems: list[str] = []

    def walk(model: BaseModel, loc: Loc) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            here = (*loc, name)
            if isinstance(value, BaseModel):
                walk(value, here)
            elif isinstance(value, dict):
                for k, v in value.items():
                    if isinstance(v, BaseModel):
                        walk(v, (*here, k))
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    if isinstance(v, BaseModel):
                        walk(v, (*here, i))
            elif name.endswith("_file") and isinstance(value, str):
                try:
                    with open(value, "rb"):
                        pass
                except OSError as e:
                    line = _line_of(here, cfg._lines)
                    where = f"{filename}:{line}" if line else filename
                    problems.append(f"{where}: {_dotted(here)}: cannot read {value}: {e.strerror or e}")

    walk(cfg, ())
    return problems


def load_config(path: str | Path) -> PipelineConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    return parse_config(text, str(path))
