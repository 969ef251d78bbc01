"""One vocabulary (issue 17): one key per concept across every component, flags named like the
keys they set, every environment variable the collector reads named ``COLLECTOR_*``.

The tests walk the models (every component's config, found through the registry, and the
pipeline's own keys), the command line's parser and the ready configs. Today's known
violations are listed below, each pointing at issue 17, whose renames (part B) empty the lists.
Each test fails when a NEW violation appears, and when a listed one is fixed but still listed
(then delete its line: the list only shrinks).
"""

from __future__ import annotations

import argparse
import re
import typing
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from pydantic import BaseModel, SecretStr

from collector import cli, registry
from collector.config import ApiConfig, PipelineConfig
from collector.retry import RetryConfig
from tests.helpers import REPO
from tests.test_pipelines import collector_configs


# -- walking the models --------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    component: str  # "sink gelf", "source fluent_forward", "pipeline"
    path: tuple[str, ...]  # ("tls", "ca_file")
    annotation: Any

    @property
    def name(self) -> str:
        return self.path[-1]

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def _models_in(ann: Any) -> list[type[BaseModel]]:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [ann]
    return [m for a in typing.get_args(ann) for m in _models_in(a)]


def _walk(component: str, model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[Key]:
    keys: list[Key] = []
    for name, f in model.model_fields.items():
        key = Key(component, (*prefix, name), f.annotation)
        keys.append(key)
        if component == "pipeline" and name in ("sources", "transforms", "sinks"):
            continue  # the components are walked on their own
        for sub in _models_in(f.annotation):
            keys += _walk(component, sub, key.path)
    return keys


def all_keys() -> list[Key]:
    keys = _walk("pipeline", PipelineConfig)
    for kind, table in (("source", registry.SOURCES), ("transform", registry.TRANSFORMS), ("sink", registry.SINKS)):
        for type_, cls in zip(table, registry.config_classes(table), strict=True):
            keys += _walk(f"{kind} {type_}", cls)
    return keys


def _optional(ann: Any) -> Any:
    """``X | None`` -> ``X``."""
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) in (typing.Union, type(int | None)) and len(args) == 1:
        return args[0]
    return ann


# -- the concepts: one key each, one shape each ------------------------------------------------
# concept -> (the one key, a pattern of other names for it: a key matching it outside that key's own block)
NAMES: dict[str, tuple[str, str]] = {
    "retry": ("retry", r"backoff|retr(y|ies)"),
    "batch": ("batch", r"batch|round"),
    "listen": ("listen", r"^(bind|bind_\w+|\w+_listen|listen_\w+|listen_address(es)?)$"),
    "tls": ("tls", r"^(ssl|ssl_\w+|\w+_tls|tls_\w+|ca_certs?|insecure)$"),
    "dead letter": ("dead_letter", r"deadletter|dead_letters"),
    "bytes read at a time": ("read_bytes", r"^read_\w+_bytes$|^read_chunk\w*$"),
}
BATCH_KEYS = {"max_events", "max_bytes", "timeout"}
LISTEN_SHAPE = list[str]  # URLs: tcp://, udp://, tls://, unix://
# ... but the API is one HTTP endpoint that `health`, `top`, `tap`, `status` and Prometheus are
# pointed at, so its listen is one URL (tcp://HOST:PORT), not a list (test_the_api_listens_on_one_url)
ONE_LISTEN = {("pipeline", "api.listen")}
FSYNC_SHAPE = Literal["always", "interval", "never"]
SECRET = re.compile(r"(^|_)(password|passphrase|secret|token|bearer|api_key|shared_key)$")
DECLARED_ONCE = ("docker_root",)  # a host setting: one place per pipeline, not one per component


def violations() -> set[str]:
    keys = all_keys()
    found: set[str] = set()
    for concept, (one, aliases) in NAMES.items():
        for k in keys:
            inside = one in k.path[:-1]
            if k.name != one and not inside and re.search(aliases, k.name):
                found.add(f"{k.component}: {k.dotted} is {concept}: name it {one}")
    for k in keys:
        ann = _optional(k.annotation)
        if k.name == "retry" and ann is not RetryConfig:
            found.add(f"{k.component}: retry is not collector.retry.RetryConfig")
        if k.name == "batch":
            fields = set(_models_in(ann)[0].model_fields) if _models_in(ann) else set()
            if fields != BATCH_KEYS:
                found.add(f"{k.component}: batch has {sorted(fields)}, not {sorted(BATCH_KEYS)}")
        if k.name == "listen" and (k.component, k.dotted) not in ONE_LISTEN and ann != LISTEN_SHAPE:
            found.add(f"{k.component}: {k.dotted} is {getattr(ann, '__name__', ann)}, not a list of URLs")
        if (k.component, k.dotted) in ONE_LISTEN and ann is not str:
            found.add(f"{k.component}: {k.dotted} is {getattr(ann, '__name__', ann)}, not one URL")
        if k.name == "fsync" and ann != FSYNC_SHAPE:
            found.add(f"{k.component}: {k.dotted} is {getattr(ann, '__name__', ann)}, not always|interval|never")
        if SECRET.search(k.name) and ann is not SecretStr:
            found.add(f"{k.component}: {k.dotted} is a secret: make it a secret string")
    # tls: one shape for listeners (sources, the api), one for clients (sinks)
    for side, members in (("server", ("source", "pipeline")), ("client", ("sink", "transform"))):
        shapes = {
            k: {n: str(f.annotation) for n, f in _models_in(_optional(k.annotation))[0].model_fields.items()}
            for k in keys
            if k.name == "tls" and k.component.split()[0] in members and _models_in(_optional(k.annotation))
        }
        every = {n for shape in shapes.values() for n in shape}
        for k, shape in shapes.items():
            for n in sorted(every - set(shape)):
                found.add(f"{k.component}: {k.dotted} ({side}) has no {n}, which another {side} tls has")
            for n, t in shape.items():
                if any(other.get(n, t) != t for other in shapes.values()):
                    found.add(f"{k.component}: {k.dotted}.{n} ({side}) has another type than elsewhere")
    for name in DECLARED_ONCE:
        where = sorted({k.component for k in keys if k.name == name})
        if len(where) > 1:
            found.update(f"{c}: {name} is declared by {', '.join(where)}: declare it once" for c in where)
    return found


# Today's violations, found by the test below: each is issue 17 (part B, the renames). Delete a
# line when its rename lands; never add one (name the new key as the table above says instead).
KNOWN_VIOLATIONS: set[str] = set()


def _check(found: set[str], known: set[str], what: str) -> None:
    new = sorted(found - known)
    fixed = sorted(known - found)
    assert not new, f"new {what} (use the one name; see issue 17):\n  " + "\n  ".join(new)
    assert not fixed, f"fixed, so delete these lines from the known {what}:\n  " + "\n  ".join(fixed)


def test_one_key_and_one_shape_per_concept_across_all_components():
    _check(violations(), KNOWN_VIOLATIONS, "vocabulary violations")


def test_the_api_listens_on_one_url():
    """api.listen is a URL like every listen (tcp://HOST:PORT), one of them: a host:port is refused."""
    assert ApiConfig().listen == "tcp://127.0.0.1:8686"
    assert ApiConfig(listen="tcp://[::1]:0").listen == "tcp://[::1]:0"
    for bad in ("127.0.0.1:8686", "udp://127.0.0.1:8686", "tcp://127.0.0.1"):
        with pytest.raises(ValueError, match="tcp://HOST:PORT"):
            ApiConfig(listen=bad)


def test_the_walk_sees_every_component_and_nested_key():
    """The check above is only as good as the walk: it must reach nested blocks of every kind."""
    keys = {(k.component, k.dotted) for k in all_keys()}
    for expected in (
        ("sink elasticsearch", "retry.max_backoff"),
        ("sink elasticsearch", "batch.max_events"),
        ("sink file", "buffer.fsync"),
        ("source fluent_forward", "users.password"),
        ("source gelf", "tls.cert_file"),
        ("pipeline", "api.listen"),
        ("pipeline", "docker_root"),
    ):
        assert expected in keys, expected
    components = {k.component for k in all_keys()}
    assert len(components) == 1 + len(registry.SOURCES) + len(registry.TRANSFORMS) + len(registry.SINKS)


# -- flags are named like the keys they set ------------------------------------------------------
# A flag is named like the key it sets (`--read-from` sets read_from), or like the block it fills
# whole when that block has one key (`--api URL` makes `api: {listen: URL}`).
FLAG_OK = {"output", "once", "log_level", "help"}  # not config keys: a sink spec, a run mode, logging
# what a flag is given in the check below, and what it puts in the config (a sentinel by default):
# `receive --listen PROTOCOL+URL` puts the URL in that protocol's source's listen
FLAG_SAMPLES = {("receive", "listen"): ("forward+tcp://sentinel.invalid:1", "tcp://sentinel.invalid:1")}
SETUP_FLAGS = {  # `setup` builds no pipeline: the elasticsearch sink key each of its flags stands for
    "hosts": "hosts",
    "data_stream": "data_stream",
    "user": "user",
    "password": "password",
    "api_key": "api_key",
    "ca_file": "ca_file",
    "verify": "verify",
}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    ap = cli.parser()
    return dict(next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices)


def _paths_of(doc: Any, value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if doc == value:
        return [path]
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _paths_of(v, value, (*path, k))]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _paths_of(v, value, (*path, i))]
    return []


def flag_violations() -> set[str]:
    found: set[str] = set()
    subs = _subparsers()
    builders = {"tail": cli.tail_config, "receive": cli.receive_config}
    for command, build in builders.items():
        sub = subs[command]
        base = sub.parse_args(["--listen", "forward+tcp://127.0.0.1:1"] if command == "receive" else [])
        for action in sub._actions:
            if not action.option_strings or action.dest in FLAG_OK:
                continue
            flag = max(action.option_strings, key=len)
            given, sentinel = FLAG_SAMPLES.get((command, action.dest), (f"SENTINEL-{action.dest}",) * 2)
            args = argparse.Namespace(**vars(base))
            setattr(args, action.dest, [given] if isinstance(action, argparse._AppendAction) else given)
            doc = build(args)
            name = flag.removeprefix("--").replace("-", "_")
            for path in _paths_of(doc, sentinel):
                names = [p for p in path if isinstance(p, str)]
                key = names[-1]
                block: Any = doc
                for p in path[:-1]:
                    block = block[p]
                whole_block = len(names) > 1 and name == names[-2] and isinstance(block, dict) and len(block) == 1
                if name != key and not whole_block:
                    found.add(f"{command} {flag} sets {key}")
    for dest, key in SETUP_FLAGS.items():
        # --verify/--no-verify is one flag: the key's name, and its negation
        flag = next(
            max((o for o in a.option_strings if not o.startswith("--no-")), key=len)
            for a in subs["setup"]._actions
            if a.dest == dest
        )
        if flag.removeprefix("--").replace("-", "_") != key:
            found.add(f"setup {flag} sets {key}")
    return found


KNOWN_FLAG_VIOLATIONS: set[str] = set()


def test_flags_are_named_like_the_keys_they_set():
    _check(flag_violations(), KNOWN_FLAG_VIOLATIONS, "flag/key mismatches")


# -- environment variables ------------------------------------------------------------------------
ENV_OK = {"DOCKER_HOST", "XDG_STATE_HOME"}  # Docker's own, and where state goes by the XDG convention
_ENV_READ = re.compile(
    r"""os\.(?:environ\.get|getenv)\(\s*["']([A-Z_][A-Z0-9_]*)["']|os\.environ\[\s*["']([A-Z_][A-Z0-9_]*)"""
)
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def env_violations() -> set[str]:
    found: set[str] = set()
    for py in sorted((REPO / "collector").rglob("*.py")):
        for m in _ENV_READ.finditer(py.read_text()):
            var = m.group(1) or m.group(2)
            if not var.startswith("COLLECTOR_") and var not in ENV_OK:
                found.add(f"{py.relative_to(REPO)} reads {var}")
    for cfg in collector_configs():
        for var in sorted(set(_ENV_REF.findall(cfg.read_text()))):
            if not var.startswith("COLLECTOR_") and var not in ENV_OK:
                found.add(f"{cfg.relative_to(REPO)} reads {var}")
    return found


KNOWN_ENV_VIOLATIONS: set[str] = set()


def test_every_environment_variable_the_collector_reads_is_named_collector():
    _check(env_violations(), KNOWN_ENV_VIOLATIONS, "environment variables outside COLLECTOR_*")
